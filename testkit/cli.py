"""The `softprobe` CLI run in-process, its output captured."""

from __future__ import annotations

from softprobe_gateway.cli.main import main


def run(capsys, *argv: object) -> tuple[int, str, str]:
    """`softprobe ARGV` (paths and numbers as their text): exit code, stdout, stderr."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err
