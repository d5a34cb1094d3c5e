"""The architecture, enforced: the import contracts of pyproject.toml (`[tool.importlinter]`)
hold, and no module grows past what a reader takes in at once."""

from __future__ import annotations

import subprocess

from testkit.support import BIN, ROOT

PACKAGE = ROOT / "addon" / "softprobe_gateway"
MAX_MODULE_LINES = 400  # issue 19: "no module over about 400 lines"; one that outgrows it is two concerns


def test_the_import_contracts_hold() -> None:
    done = subprocess.run([str(BIN / "lint-imports"), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
                          cwd=ROOT / "addon", capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_no_module_is_over_about_400_lines() -> None:
    sizes = {str(path.relative_to(PACKAGE)): len(path.read_text().splitlines())
             for path in PACKAGE.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES} == {}
