"""The run's hooks (`--hooks FILE`, repeatable or comma-separated), by name as a suite names them:
`FILE.function` (the file's name without its extension, as Softprobe's CLI exposes them) or the bare
function name when one file alone defines it.

Python files are imported in this process; a hook is called with keyword arguments (the payload's
keys in snake_case: `request`, `env`, `captured_response`, ...; Softprobe's Python SDK's convention,
`def unmask_card(request, env, **_)`), only those it accepts unless it takes `**kwargs`.
JavaScript and TypeScript files run in one Node sidecar (`node.py`) with the payload as it is.

A hook that is missing, throws, or returns the wrong shape raises HookError with the hook's own
message: the runner fails that case with it, never the run.
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import re
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from softprobe_gateway.suite.node import JS_SUFFIXES, NodeError, Sidecar

KINDS = ("request", "mock_response", "assert_body", "assert_headers")
_IDENTIFIER = re.compile(r"\W")
_loaded = itertools.count()  # each file its own module name, however many runs one process makes


class HookError(RuntimeError):
    """A hook that could not be called or failed; the message names it."""


class HookFileError(ValueError):
    """A `--hooks` file that cannot be loaded (a bad flag value: the run does not start)."""


class Hooks:
    """Every hook of the run's files; `call` is safe from the run's threads."""

    def __init__(self, files: list[str | Path], stderr: TextIO = sys.stderr) -> None:
        self._python: dict[str, list[Callable[..., Any]]] = {}
        self._node_names: dict[str, int] = {}
        self._sidecar: Sidecar | None = None
        self._lock = threading.Lock()
        paths = [Path(f) for f in files]
        for path in paths:
            if not path.is_file():
                raise HookFileError(f"--hooks {path}: no such file")
            if path.suffix not in (".py", *JS_SUFFIXES):
                raise HookFileError(f"--hooks {path}: a .py, .js, .mjs, .cjs or .ts file expected")
        for path in (p for p in paths if p.suffix == ".py"):
            self._load_python(path)
        scripts = [p for p in paths if p.suffix in JS_SUFFIXES]
        if scripts:
            try:
                self._sidecar = Sidecar(scripts, stderr)
            except NodeError as e:
                raise HookFileError(f"--hooks: {e}") from None
            for name in self._sidecar.names:
                for key in (name, name.split(".", 1)[1]):
                    self._node_names[key] = self._node_names.get(key, 0) + 1

    def names(self) -> set[str]:
        """Every name a suite may use (for `suite validate`)."""
        return set(self._python) | set(self._node_names)

    def has(self, name: str) -> bool:
        return name in self._python or name in self._node_names

    def call(self, name: str, kind: str, payload: dict[str, Any]) -> Any:
        """Run hook `name` of `kind` on `payload` and return what it returned."""
        found = self._python.get(name, [])
        count = len(found) + self._node_names.get(name, 0)
        if count == 0:
            raise HookError(f'hook "{name}" not found in any --hooks file')
        if count > 1:
            raise HookError(f'hook "{name}" is defined by more than one --hooks file: qualify it as FILE.{name}')
        try:
            if found:
                return _call_python(found[0], payload)
            assert self._sidecar is not None
            return self._sidecar.call(name, kind, payload)
        except HookError:
            raise
        except Exception as e:  # the hook's own failure, whatever it raised
            raise HookError(f'hook "{name}" failed: {type(e).__name__ + ": " if found else ""}{e}') from None

    def close(self) -> None:
        if self._sidecar is not None:
            self._sidecar.close()
            self._sidecar = None

    def _load_python(self, path: Path) -> None:
        module_name = f"softprobe_suite_hooks_{next(_loaded)}_{_IDENTIFIER.sub('_', path.stem)}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise HookFileError(f"--hooks {path}: not importable")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # a hook file's import error is the flag's fault: named, no traceback
            raise HookFileError(f"--hooks {path}: {type(e).__name__}: {e}") from None
        for name, value in vars(module).items():
            if inspect.isfunction(value) and value.__module__ == module_name and not name.startswith("_"):
                for key in (f"{path.stem}.{name}", name):
                    self._python.setdefault(key, []).append(value)

    def __enter__(self) -> Hooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _call_python(function: Callable[..., Any], payload: dict[str, Any]) -> Any:
    arguments = {_snake(k): v for k, v in payload.items()}
    parameters = inspect.signature(function).parameters.values()
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        accepted = {p.name for p in parameters}
        arguments = {k: v for k, v in arguments.items() if k in accepted}
    return function(**arguments)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
