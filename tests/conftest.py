import sys
from pathlib import Path

import pytest

# The tests share `support.py` (real servers and the mitmdump process) as a plain module.
sys.path.insert(0, str(Path(__file__).parent))

from support import OtlpBackend, echo_upstream  # noqa: E402


@pytest.fixture
def upstream():
    """A loopback HTTP upstream whose answers depend on the path (see support.upstream_reply)."""
    with echo_upstream() as server:
        yield server


@pytest.fixture
def backend():
    """A loopback OTLP backend that decodes what the gateway exports."""
    with OtlpBackend() as server:
        yield server
