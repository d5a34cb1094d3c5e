"""The `softprobe` CLI run in-process, its output captured."""

from __future__ import annotations

from softprobe_gateway.cli.main import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err
