"""Fixtures every tier shares; the helpers themselves live in the test kit (`testkit/`)."""

import pytest

from testkit.recording import recording  # noqa: F401 (a fixture)
from testkit.postgres import postgres  # noqa: F401 (a fixture)
from testkit.spans import open_store  # noqa: F401 (a fixture)
from testkit.support import OtlpBackend, echo_upstream


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
