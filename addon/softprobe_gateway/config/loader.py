"""Reading the YAML config file into the schema: one error line naming the key and the file.

A key given twice, invalid YAML, a file that is not UTF-8 or nested too deeply, and every value
the schema refuses (`validate`) stop start-up, or are rejected on reload. No silent fallbacks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import typing
from pathlib import Path
from typing import Any

import yaml

from softprobe_gateway.config.schema import PUBLIC_KEY_ENV, Config, ConfigError
from softprobe_gateway.config.validate import build

CONFIG_ENV = "SOFTPROBE_CONFIG"


def load_config(path: str | os.PathLike[str] | None, environ: typing.Mapping[str, str] = os.environ) -> Config:
    """Read and validate the YAML at `path` (None: all defaults); env overrides the public key."""
    return ConfigFile(str(path) if path else None).load(environ)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping: PyYAML would keep the last
    silently (a second `store:` once pruned the first one's recordings). Merge keys (`<<`) still
    override as YAML says."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} given twice in one mapping", key_node.start_mark)
                seen.add(key)
            except TypeError:  # an unhashable key: the base class reports it
                pass
        return super().construct_mapping(node, deep)


class ConfigFile:
    """A config file as loaded: its content digest, and its identity on disk to notice edits
    (an in-place write, or a Kubernetes ConfigMap update swapping the `..data` symlink)."""

    def __init__(self, path: str | None, overrides: typing.Mapping[str, Any] | None = None) -> None:
        self.path = path
        self.overrides = dict(overrides or {})  # {dotted key: value}, from mitmproxy options
        self.source = path or "<defaults>"
        self.digest = ""
        self._signature = self._stat()

    def load(self, environ: typing.Mapping[str, str] = os.environ) -> Config:
        data: Any = {}
        if self.path:
            try:
                raw = Path(self.path).read_bytes()
            except OSError as e:
                raise ConfigError(f"{self.source}: cannot read config file: {e.strerror or e}") from None
            self.digest = hashlib.sha256(raw).hexdigest()[:16]
            try:
                data = yaml.load(raw.decode("utf-8"), Loader=_UniqueKeyLoader)
            except UnicodeDecodeError:
                raise ConfigError(f"{self.source}: config file is not UTF-8") from None
            except RecursionError:
                raise ConfigError(f"{self.source}: config file is nested too deeply") from None
            except yaml.YAMLError as e:
                mark = getattr(e, "problem_mark", None)
                line = f" (line {mark.line + 1})" if mark else ""
                raise ConfigError(f"{self.source}: invalid YAML{line}: {getattr(e, 'problem', e)}") from None
            if data is None:
                data = {}
        if self.overrides and isinstance(data, dict):
            data = _merge(data, _nest(self.overrides))
        try:
            config = build(Config, data, "")
        except ConfigError as e:
            raise ConfigError(f"{self.source}: {e}") from None
        except RecursionError:
            raise ConfigError(f"{self.source}: config file is nested too deeply") from None
        key = environ.get(PUBLIC_KEY_ENV, "")
        return dataclasses.replace(config, public_key=key) if key else config

    def changed(self) -> bool:
        """True once per change of the file on disk since the last call (or since loading)."""
        current = self._stat()
        if current == self._signature:
            return False
        self._signature = current
        return True

    def _stat(self) -> tuple[int, ...] | None:
        if not self.path:
            return None
        try:
            st = os.stat(self.path)  # follows symlinks: a swapped ConfigMap is a new inode
        except OSError:
            return None
        return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


def check_override(key: str, value: Any) -> None:
    """Validate one dotted key's value on its own (ConfigError naming the key)."""
    build(Config, _nest({key: value}), "")


def _nest(flat: typing.Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        *parents, last = dotted.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return nested


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`, mapping by mapping; a section of `base` that is not a mapping is kept,
    so that its error is still reported."""
    merged = dict(base)
    for key, value in top.items():
        below = merged.get(key)
        if isinstance(value, dict) and below is not None:
            merged[key] = _merge(below, value) if isinstance(below, dict) else below
        else:
            merged[key] = value
    return merged
