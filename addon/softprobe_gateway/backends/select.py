"""The backend `sp_backend_url` names: the one place the kinds are told apart."""

from __future__ import annotations

from softprobe_gateway.backends.contract import Backend
from softprobe_gateway.backends.embedded import EmbeddedBackend
from softprobe_gateway.backends.file import FileBackend
from softprobe_gateway.backends.http import HttpBackend
from softprobe_gateway.config.schema import Config

KINDS = {"http": HttpBackend, "file": FileBackend, "store": EmbeddedBackend}


def backend_for(config: Config) -> Backend:
    return KINDS[config.backend_kind](config)
