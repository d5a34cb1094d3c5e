"""OTLP JSON lines in a file (`sp_backend_url: file:PATH`): exports only, no lookups."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from google.protobuf.json_format import MessageToJson
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from softprobe_gateway.backends.contract import SendError
from softprobe_gateway.config.schema import Config, ConfigError
from softprobe_gateway.store.model import MissedLookup


class FileBackend:
    def __init__(self, config: Config) -> None:
        self.path = config.local_path

    def describe(self) -> str:
        return f"OTLP JSON lines in {self.path}"

    def sink(self) -> FileSink:
        try:
            return FileSink(self.path)
        except OSError as e:
            raise ConfigError(f"key 'sp_backend_url': cannot open {self.path}: {e.strerror}") from None

    def lookups(self, on_miss: Callable[[MissedLookup], None]):
        raise ConfigError("key 'enable_inject': a file: backend cannot answer lookups")

    def missing(self, spans: list[tuple[bytes, bytes]]) -> int:
        return len(spans)  # a line may have been written before the worker died: not looked for


class FileSink:
    """Appends each batch as one line of OTLP JSON: useful with no backend at all."""

    concurrency = 1

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = self.path.open("a", encoding="utf-8")

    def send(self, batch: TracesData) -> int:
        line = MessageToJson(batch, indent=None) + "\n"
        try:
            self.file.write(line)
            self.file.flush()
        except OSError as e:
            raise SendError(f"cannot write {self.path}: {e.strerror}") from None
        return len(line)

    def settle(self) -> None:
        pass

    def explain_misses(self, missed: list[MissedLookup]) -> None:
        pass

    def close(self) -> None:
        self.file.close()
