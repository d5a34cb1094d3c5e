"""Test a new version of the travel demo's front service with the session `run_demo.py` recorded.

Starts a gateway in strict replay mode on the demo's store: it answers the front service's calls
to the airline from the recording (the airline is not even running). Starts the front service,
or a new version of it (`--front FILE`), with that gateway as its egress proxy. Then runs
`softprobe replay` against it and exits with its status; options this script does not know
(`--ignore`, `--junit`...) are passed on to `softprobe replay`. With `--case FILE` the recording
comes from a case file instead, imported into a fresh store, as a CI job would do.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import yaml
from run_demo import BIN, HERE, LOOPBACK, ROOT, free_port, started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, required=True, help="the --workdir run_demo.py recorded into")
    parser.add_argument("--front", type=Path, default=HERE / "app" / "front.py",
                        help="the front service's version under test (default: the unchanged one)")
    parser.add_argument("--case", type=Path, help="replay this case file (imported into a fresh store)")
    args, replay_options = parser.parse_known_args()
    work = args.workdir
    demo = json.loads((work / "demo.json").read_text())
    softprobe = shutil.which("softprobe", path=str(BIN)) or "softprobe"
    db, source = work / "softprobe.db", demo["session"]
    if args.case:
        db, source = work / "replay.db", str(args.case)
        for stale in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            stale.unlink(missing_ok=True)
        subprocess.run([softprobe, "case", "import", source, "--db", str(db)], check=True)
    gateway, front = free_port(), free_port()
    config = {"sp_backend_url": "", "service_name": "front", "admin_listen": "", "store": {"path": str(db)},
              # Strict: a call with no recording gets a 404, never the airline. A test, so a slow
              # answer beats a false difference: a lookup may take 2 s (the default is 300 ms).
              "enable_inject": True, "lookup": {"on_miss": "reject", "timeout_ms": 2000}}
    (work / "replay.yaml").write_text(yaml.safe_dump(config))
    clean = {k: "" for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}
    with ExitStack() as stack:
        stack.enter_context(started([
            str(BIN / "mitmdump"), "-s", str(ROOT / "addon" / "softprobe_addon.py"),
            "--mode", f"regular@{LOOPBACK}:{gateway}", "--set", f"softprobe_config={work / 'replay.yaml'}",
            "--set", f"confdir={work / 'mitmproxy'}", "--set", "flow_detail=0",
        ], gateway, work / "replay-gateway.log", **clean))
        stack.enter_context(started([sys.executable, str(args.front), "--host", LOOPBACK, "--port", str(front)],
                                    front, work / "replay-front.log", AIRLINE_URL=demo["airline_url"],
                                    EGRESS_PROXY=f"http://{LOOPBACK}:{gateway}"))
        command = [softprobe, "replay", source, "--db", str(db), "--target", f"http://{LOOPBACK}:{front}",
                   *replay_options]
        print(f"$ {shlex.join(command)}", flush=True)
        return subprocess.run(command).returncode


if __name__ == "__main__":
    sys.exit(main())
