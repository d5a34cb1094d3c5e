"""A `~` in a session id names a replay run (`<recorded>~<run>`, docs/protocol.md): the one channel
a run has through the service under test, so a service's own id with a `~` cannot be told from
one. Against a real gateway exporting to a real `softprobe serve`: the store says so, once, when
it keeps such a session as a run of a recording it does not hold; a real run of a held recording
is said nothing of. And `har import --session` refuses an id that would be taken for a run."""

from __future__ import annotations

import json
from pathlib import Path

from testkit.cli import run
from testkit.recording import FAST_EXPORT
from testkit.serve import KEY, Backend
from testkit.support import Gateway, echo_upstream, wait_for

SAID = "is kept as a replay run of"


def test_a_service_session_id_with_a_tilde_is_said_once_where_it_is_stored(tmp_path: Path, capsys) -> None:
    config = {"sp_backend_url": "", "export": FAST_EXPORT}
    with echo_upstream() as upstream, Backend(tmp_path / "serve.db", KEY) as serve:
        config["sp_backend_url"] = serve.url

        def stored(session: str) -> int:
            answer = serve.client.get(f"/api/sessions/{session}")
            return len(answer.json()["exchanges"]) if answer.status_code == 200 else 0
        with Gateway(config, tmp_path, env={"SOFTPROBE_PUBLIC_KEY": KEY}) as gw, gw.client() as client:
            for session in ("team~alpha", "checkout", "team~alpha"):
                assert client.get(f"{upstream.url}/json", headers={"x-softprobe-session-id": session}).status_code == 200
            wait_for(lambda: stored("checkout") and stored("team~alpha") == 2)
            run_of_checkout = "checkout~1f2c21bf"  # as `softprobe replay` names a run
            assert client.get(f"{upstream.url}/json", headers={"x-softprobe-session-id": run_of_checkout}).status_code == 200
            wait_for(lambda: stored(run_of_checkout))
    said = [line for line in serve.log.read_text().splitlines() if SAID in line]
    assert said == ["softprobe: session 'team~alpha' is kept as a replay run of 'team' (a `~` in a session id "
                    "names one, <recorded>~<run>), a session this store does not hold: `softprobe runs` lists it, "
                    "`softprobe sessions` leaves it out. A service's own session ids must not contain `~`"], said
    # What the operator sees, as the line says: the recording listed, both runs apart.
    code, out, _ = run(capsys, "--json", "sessions", "--db", tmp_path / "serve.db")
    listed = json.loads(out)
    assert code == 0 and [s["id"] for s in listed["sessions"]] == ["checkout"] and listed["runsHidden"] == 2, out


def test_har_import_refuses_a_session_id_that_names_a_run(tmp_path: Path, capsys) -> None:
    har = tmp_path / "empty.har"
    har.write_text(json.dumps({"log": {"version": "1.2", "creator": {"name": "t", "version": "1"}, "entries": []}}))
    code, _, err = run(capsys, "har", "import", har, "--db", tmp_path / "x.db", "--session", "team~alpha")
    assert code == 2 and err.strip().endswith(
        "argument --session: 'team~alpha': a `~` in a session id names a replay run (<recorded>~<run>); "
        "a recording's id must not contain one"), err
    assert not (tmp_path / "x.db").exists()
    assert run(capsys, "har", "import", har, "--db", tmp_path / "x.db", "--session", "team-alpha")[0] == 0
