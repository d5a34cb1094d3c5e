"""`softprobe case export` of several sessions at once into a directory (`SESSION...` or `--all`),
from a real store file: one case file per session, named safely whatever the session id (it comes
from a request header), sessions with nothing recorded left out, and the files importable again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from softprobe_gateway.config.schema import StoreConfig
from softprobe_gateway.store.model import Fields, Recording
from softprobe_gateway.store.store import Store

from testkit.cli import run

HOSTILE = "../../etc/evil session"


def exchange(session: str, n: int, answered_by: str = "") -> Recording:
    return Recording(session_id=session, trace_id=f"{n:032x}", span_id=f"{n:016x}", parent_span_id="", service="svc",
                     direction="outbound", kind="client", method="GET", host="api:80", path=f"/item/{n}", status=200,
                     error=False, start_ns=n * 1000, end_ns=n * 1000 + 500,
                     request_headers=Fields([(":method", "GET"), (":path", f"/item/{n}")]),
                     response_headers=Fields([("content-type", "application/json")]), request_body="",
                     response_body=json.dumps({"n": n}), answered_by=answered_by)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "recorded.db"
    with Store(StoreConfig(path=str(path))) as store:
        store.add([exchange("shop-1", 1), exchange("shop-1", 2), exchange("shop-2", 3),
                   exchange(HOSTILE, 4), exchange("replayed", 5, answered_by="hit")])
    return path


def test_all_sessions_into_a_directory_each_its_own_file(db: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cases"
    code, said, err = run(capsys, "case", "export", "--all", "--db", db, "-o", out)
    assert code == 0, err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["_.._etc_evil_session.case.json", "shop-1.case.json", "shop-2.case.json"]
    assert all(p.resolve().parent == out.resolve() for p in out.iterdir())  # nothing written outside it
    assert json.loads((out / "_.._etc_evil_session.case.json").read_text())["caseId"] == HOSTILE
    assert f"{out}/shop-1.case.json: case shop-1, 2 exchanges in 2 traces" in said
    assert "session replayed: nothing recorded (1 answered by the gateway): left out" in err
    imported = tmp_path / "again.db"
    code, said, err = run(capsys, "case", "import", "--db", imported, *sorted(out.iterdir()))
    assert code == 0, err
    with Store(StoreConfig(path=str(imported)), read_only=True) as store:
        assert sorted(s.id for s in store.sessions(size=10).sessions) == sorted([HOSTILE, "shop-1", "shop-2"])


def test_sessions_named_on_the_command_line_and_into_an_existing_directory(db: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "some"
    code, _, err = run(capsys, "case", "export", "shop-1", "shop-2", "--db", db, "-o", out)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["shop-1.case.json", "shop-2.case.json"]
    code, _, err = run(capsys, "case", "export", "shop-2", "--db", db, "-o", out, "--json")
    assert code == 0, err  # one session and -o naming a directory: into it, not over it
    assert json.loads((out / "shop-2.case.json").read_text())["caseId"] == "shop-2"


@pytest.mark.parametrize("argv, message", [
    (["shop-1", "shop-2"], "several sessions go into a directory: -o DIRECTORY"),
    ([], "name a session (several, or --all, with -o DIRECTORY)"),
    (["--all", "shop-1", "-o", "x"], "--all takes no SESSION"),
])
def test_what_cannot_be_exported_so_is_said_with_exit_2(db: Path, tmp_path: Path, capsys, argv, message) -> None:
    code, _, err = run(capsys, "case", "export", "--db", db, *argv)
    assert code == 2 and message in err


def test_a_file_in_the_way_of_the_directory_is_refused(db: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "taken").write_text("mine")
    code, _, err = run(capsys, "case", "export", "--all", "--db", db, "-o", tmp_path / "taken")
    assert code == 2 and (tmp_path / "taken").read_text() == "mine"
