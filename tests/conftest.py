import sys
from pathlib import Path

# The tests share `support.py` (real servers and the mitmdump process) as a plain module.
sys.path.insert(0, str(Path(__file__).parent))
