"""Entry script: `mitmdump -s addon/softprobe_addon.py --set softprobe_config=config/gateway.yaml`."""

from softprobe_gateway.addon import SoftprobeAddon
from softprobe_gateway.memory import Reclaim

addons = [Reclaim(), SoftprobeAddon()]  # Reclaim first: its `load` sets the worker's allocator env
