"""Where a capture session's case is written (`store.captures.CaptureCases`): a request's `out`
only inside the capture directory, the operator's template anywhere, placeholders filled in."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from softprobe_gateway.store.captures import CaptureCases

NOW = datetime(2026, 12, 3, 15, 4, 5, tzinfo=timezone.utc)


def test_out_is_taken_inside_the_capture_directory(tmp_path: Path) -> None:
    cases = CaptureCases(root=tmp_path)
    assert cases.path("run.case.json", "sess_1", NOW) == tmp_path / "run.case.json"
    assert cases.path(str(tmp_path / "a" / "{sessionId}.json"), "sess_1", NOW) == tmp_path / "a" / "sess_1.json"
    assert cases.path(f"file://{tmp_path}/b.json", "sess_1", NOW) == tmp_path / "b.json"
    assert cases.path(f"file://localhost{tmp_path}/c%20d.json", "sess_1", NOW) == tmp_path / "c d.json"


@pytest.mark.parametrize("out, why", [
    ("../x.json", "outside the capture directory"), ("/etc/x.json", "outside the capture directory"),
    ("link/x.json", "outside the capture directory"), ("a/../../x.json", "outside the capture directory"),
    ("x.txt", ".json file"), ("s3://bucket/x.json", "only file:// URLs"),
    ("file://elsewhere/x.json", "another host"),
])
def test_out_naming_a_file_elsewhere_is_refused(tmp_path: Path, out: str, why: str) -> None:
    root = tmp_path / "cases"
    root.mkdir()
    (root / "link").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(ValueError, match=why):
        CaptureCases(root=root).path(out, "sess_1", NOW)


def test_the_template_is_the_operators_anywhere_and_without_it_nothing_is_written(tmp_path: Path) -> None:
    template = str(tmp_path.parent / "{mode}-{sessionId}-{ts}.case.json")
    assert CaptureCases(template, root=tmp_path).path("", "sess_1", NOW) == \
        tmp_path.parent / "capture-sess_1-20261203T150405Z.case.json"
    assert CaptureCases(root=tmp_path).path("", "sess_1", NOW) is None
