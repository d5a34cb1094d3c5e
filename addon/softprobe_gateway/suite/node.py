"""JavaScript and TypeScript hook files through one Node process per run, speaking the protocol of
Softprobe's CLI sidecar: newline-delimited JSON on stdin/stdout, `{"ready": true}` first (here with
the hook names it loaded, `{"ready": false, "error": ...}` when a file does not load), then
`{"id", "hook", "kind", "payload"}` requests answered by `{"id", "result"}` or `{"id", "error"}`.
Calls from the run's threads are multiplexed by id. `console.log` inside a hook goes to stderr
(stdout is the protocol's), as Softprobe's guide asks.

TypeScript: Node's own type stripping (`--experimental-strip-types`, Node 22.6+) when the Node on
PATH has it; otherwise the `tsx` loader, installed once from the npm registry into
`$SOFTPROBE_CACHE_DIR` (default `~/.cache/softprobe`) and loaded with `node --import`.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, TextIO

TS_SUFFIXES = (".ts", ".mts", ".cts", ".tsx")
JS_SUFFIXES = (".js", ".mjs", ".cjs", *TS_SUFFIXES)
TSX = "tsx@4"
CALL_TIMEOUT_S, READY_TIMEOUT_S, INSTALL_TIMEOUT_S = 30.0, 20.0, 300.0

SIDECAR = r"""
import path from 'node:path';
import readline from 'node:readline';
import { pathToFileURL } from 'node:url';

const send = (message) => process.stdout.write(JSON.stringify(message) + '\n');
console.log = (...args) => console.error(...args);
const byName = new Map();
const add = (name, fn) => { byName.set(name, [...(byName.get(name) || []), fn]); };
const qualified = [];
try {
  for (const file of process.argv.slice(2)) {
    const module = await import(pathToFileURL(path.resolve(file)).href);
    const base = path.basename(file).replace(/\.[^.]+$/, '');
    const exports = { ...(module.default && typeof module.default === 'object' ? module.default : {}), ...module };
    for (const [name, value] of Object.entries(exports)) {
      if (typeof value !== 'function' || name === 'default') continue;
      add(`${base}.${name}`, value); add(name, value); qualified.push(`${base}.${name}`);
    }
  }
} catch (error) {
  send({ ready: false, error: String((error && error.stack) || error) });
  process.exit(1);
}
send({ ready: true, hooks: qualified });
readline.createInterface({ input: process.stdin }).on('line', async (line) => {
  let request;
  try { request = JSON.parse(line); } catch { return; }
  try {
    const found = byName.get(request.hook) || [];
    if (found.length !== 1) {
      throw new Error(found.length ? `hook "${request.hook}" is exported by more than one --hooks file: qualify it as FILE.${request.hook}`
                                   : `hook "${request.hook}" not found in any --hooks file`);
    }
    const result = await found[0](request.payload);
    send({ id: request.id, result: result === undefined ? null : result });
  } catch (error) {
    send({ id: request.id, error: (error && error.message) || String(error) });
  }
});
"""


class NodeError(RuntimeError):
    """Node could not run the hook files (missing, a file that does not load, the loader not installed)."""


class Sidecar:
    """The Node process holding the run's JS/TS hook files."""

    def __init__(self, files: list[Path], stderr: TextIO = sys.stderr) -> None:
        node = shutil.which("node")
        if node is None:
            raise NodeError("JavaScript/TypeScript hooks need Node on PATH (node not found)")
        self._dir = tempfile.mkdtemp(prefix="softprobe-sidecar-")
        script = Path(self._dir) / "suite-sidecar.mjs"
        script.write_text(SIDECAR)
        args = [node, "--no-warnings", *typescript_flags(node, files), str(script), *map(str, files)]
        self._process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True, encoding="utf-8", bufsize=1)
        self._pending: dict[str, Future] = {"ready": Future()}
        self._lock, self._next = threading.Lock(), 0
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._relay, args=(stderr,), daemon=True).start()
        try:
            ready = self._pending["ready"].result(READY_TIMEOUT_S)
        except FutureTimeout:
            self.close()
            raise NodeError(f"the hook sidecar did not say ready within {READY_TIMEOUT_S:.0f} s") from None
        if not ready.get("ready"):
            self.close()
            raise NodeError(f"hook files did not load: {ready.get('error') or 'the sidecar exited'}")
        self.names: list[str] = list(ready.get("hooks") or [])

    def call(self, name: str, kind: str, payload: dict[str, Any]) -> Any:
        """The hook's result; RuntimeError with the hook's own message when it throws."""
        future: Future = Future()
        with self._lock:
            self._next += 1
            ident = str(self._next)
            self._pending[ident] = future
            try:
                self._process.stdin.write(json.dumps({"id": ident, "hook": name, "kind": kind, "payload": payload},
                                                     default=str) + "\n")
                self._process.stdin.flush()
            except (OSError, ValueError):
                self._pending.pop(ident, None)
                raise RuntimeError("the hook sidecar has exited") from None
        try:
            reply = future.result(CALL_TIMEOUT_S)
        except FutureTimeout:
            raise RuntimeError(f"timed out after {CALL_TIMEOUT_S:.0f} s") from None
        if "error" in reply:
            raise RuntimeError(str(reply["error"]))
        return reply.get("result")

    def _read(self) -> None:
        for line in self._process.stdout:
            try:
                reply = json.loads(line)
            except ValueError:
                continue
            ident = "ready" if "ready" in reply and "id" not in reply else str(reply.get("id"))
            with self._lock:
                future = self._pending.pop(ident, None)
            if future is not None:
                future.set_result(reply)
        with self._lock:
            pending, self._pending = self._pending, {}
        for ident, future in pending.items():
            future.set_result({"ready": False} if ident == "ready" else {"error": "the hook sidecar exited"})

    def _relay(self, stderr: TextIO) -> None:
        for line in self._process.stderr:
            print(f"sidecar: {line.rstrip()}", file=stderr)

    def close(self) -> None:
        try:
            self._process.stdin.close()
        except OSError:
            pass
        try:
            self._process.wait(2)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        shutil.rmtree(self._dir, ignore_errors=True)


def typescript_flags(node: str, files: list[Path]) -> list[str]:
    """What lets `node` import the TypeScript files among `files` (none when there are none)."""
    if not any(f.suffix in TS_SUFFIXES for f in files):
        return []
    if _strips_types(node):
        return ["--experimental-strip-types"]
    return ["--import", tsx_loader().as_uri()]


def _strips_types(node: str) -> bool:
    probe = subprocess.run([node, "--experimental-strip-types", "--no-warnings", "-e", "const x: number = 1"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


def cache_dir() -> Path:
    return Path(os.environ.get("SOFTPROBE_CACHE_DIR") or Path.home() / ".cache" / "softprobe")


def tsx_loader() -> Path:
    """tsx's ESM loader, installed from the npm registry on first use (one install at a time)."""
    home = cache_dir() / "node" / TSX.replace("@", "-")
    loader = _loader_in(home)
    if loader is not None:
        return loader
    home.parent.mkdir(parents=True, exist_ok=True)
    with open(home.parent / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        loader = _loader_in(home)
        if loader is not None:
            return loader
        npm = shutil.which("npm")
        if npm is None:
            raise NodeError("TypeScript hooks on this Node need the tsx loader, and npm is not on PATH to install it")
        staging = Path(tempfile.mkdtemp(prefix="tsx-", dir=home.parent))
        done = subprocess.run([npm, "install", "--prefix", str(staging), "--no-audit", "--no-fund",
                               "--no-save", "--loglevel=error", TSX], capture_output=True, text=True,
                              timeout=INSTALL_TIMEOUT_S)
        if done.returncode != 0 or _loader_in(staging) is None:
            shutil.rmtree(staging, ignore_errors=True)
            raise NodeError(f"npm install {TSX} failed: {(done.stderr or done.stdout).strip()[-500:]}")
        shutil.rmtree(home, ignore_errors=True)
        os.replace(staging, home)
    return _loader_in(home) or home


def _loader_in(prefix: Path) -> Path | None:
    package = prefix / "node_modules" / "tsx" / "package.json"
    try:
        entry = json.loads(package.read_text())["exports"]["."]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if isinstance(entry, dict):
        entry = entry.get("import") or entry.get("default")
        entry = entry.get("default") if isinstance(entry, dict) else entry
    loader = package.parent / str(entry)
    return loader if loader.is_file() else None


if __name__ == "__main__":  # `make test`: the TypeScript loader in place before any test needs it
    found = shutil.which("node")
    if found is None:
        sys.exit("node is not on PATH")
    if _strips_types(found):
        print(f"{found} strips TypeScript types itself: no loader needed")
    else:
        print(f"TypeScript hooks load with {tsx_loader()}")
