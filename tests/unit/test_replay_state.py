"""The replay state machine over plain data (no SQL), and the OTLP module's independence."""

from __future__ import annotations

import subprocess
import sys

import pytest
from softprobe_gateway.decisions.tracecontext import own_sessions, run_session
from softprobe_gateway.store.positions import CasePositions, Cue, Replays

from testkit.support import ROOT


class Recorded:
    """Recordings as a list of (session, fingerprint); a recording's id is its position from 1."""

    def __init__(self, *rows: tuple[str, str]) -> None:
        self.rows = list(rows)

    def has(self, fingerprint: str, session_id: str) -> bool:
        return (session_id, fingerprint) in self.rows

    def latest_session(self, fingerprint: str) -> str | None:
        return next((s for s, f in reversed(self.rows) if f == fingerprint), None)

    def last_id(self) -> int:
        return len(self.rows)


def test_positions_advance_per_lookup_session_and_request() -> None:
    replays, recorded = Replays("prefer", 60), Recorded(("s1", "a"), ("s1", "a"), ("s1", "b"))
    assert [replays.next("s1", "a", recorded) for _ in range(3)] == [Cue("s1", 3, n) for n in range(3)]
    assert replays.next("s1", "b", recorded) == Cue("s1", 3, 0)
    assert replays.next("s2", "a", recorded) == Cue("s1", 3, 0)  # another lookup session: its own walk


def test_recordings_made_after_a_walk_began_are_not_part_of_it() -> None:
    replays, recorded = Replays("prefer", 60), Recorded(("s1", "a"))
    assert replays.next("s1", "a", recorded) == Cue("s1", 1, 0)
    recorded.rows.append(("s1", "a"))  # e.g. the replay's own export
    assert replays.next("s1", "a", recorded) == Cue("s1", 1, 1)


def test_session_scopes_and_the_bound_fallback() -> None:
    recorded = Recorded(("run1", "a"), ("run1", "b"), ("run2", "a"), ("mine", "c"), ("run2", "c"))
    prefer = Replays("prefer", 60)
    assert prefer.next("mine", "c", recorded).session == "mine"  # its own first
    assert prefer.next("mine", "b", recorded).session == "run1"  # the latest that has it, then bound
    assert prefer.next("mine", "a", recorded).session == "run1"  # bound beats the latest (run2)
    only = Replays("only", 60)
    assert only.next("mine", "c", recorded).session == "mine" and only.next("mine", "a", recorded) is None
    assert Replays("any", 60).next("mine", "c", recorded).session == "run2"  # the latest, whoever's
    assert prefer.next("mine", "never-recorded", recorded) is None


def test_a_replay_run_answers_from_the_recorded_session_with_positions_of_its_own() -> None:
    """`<recorded>~<run>` (what `softprobe replay` sends): the recorded session's answers, from the
    first one for every run, however recently another run walked them."""
    recorded = Recorded(("s1", "a"), ("s1", "a"), ("s1", "b"), ("later", "a"), ("team~x", "c"))
    for scope in ("prefer", "only"):
        replays = Replays(scope, 60)
        assert [replays.next("s1~run1", "a", recorded) for _ in range(3)] == [
            Cue("s1", 5, 0), Cue("s1", 5, 1), Cue("s1", 5, 2)]  # the third: past the end, repeats the last
        assert replays.next("s1~run2", "a", recorded) == Cue("s1", 5, 0)  # right after: from the first
        assert replays.next("s1~run1", "b", recorded) == Cue("s1", 5, 0)
        assert replays.next("s1", "a", recorded) == Cue("s1", 5, 0)  # the plain id: a walk of its own too
        assert replays.next("team~x", "c", recorded).session == "team~x"  # an id recorded with a '~' itself
        assert replays.next("team~x~run1", "c", recorded).session == "team~x"  # the part before the last '~'
    prefer = Replays("prefer", 60)  # a request the recording lacks: the latest, as for any session
    assert prefer.next("other~run1", "a", recorded).session == "later"
    assert Replays("only", 60).next("other~run1", "a", recorded) is None
    assert Replays("any", 60).next("s1~run1", "a", recorded).session == "later"


def test_run_session_ids() -> None:
    assert run_session("sp-session-1", "ab12") == "sp-session-1~ab12"
    assert [own_sessions(s) for s in ("s~r", "a~b~r", "plain", "~r", "s~")] == [
        ("s~r", "s"), ("a~b~r", "a~b"), ("plain",), ("~r",), ("s~",)]
    with pytest.raises(ValueError, match="no valid session id with a run id"):
        run_session("x" * 250, "ab12cd34")  # beyond 256 characters the gateway would cut the run id off


def test_an_idle_lookup_session_starts_over() -> None:
    now = [0.0]
    replays, recorded = Replays("prefer", 10, clock=lambda: now[0]), Recorded(("s1", "a"))
    assert [replays.next("s1", "a", recorded).position for _ in range(2)] == [0, 1]
    now[0] = 10.5
    assert replays.next("s1", "a", recorded).position == 0


def test_state_is_bounded_oldest_forgotten_first() -> None:
    replays = Replays("prefer", 0, max_replays=2, max_sequences=2)
    recorded = Recorded(("s", "a"), ("s", "b"), ("s", "c"))
    for session in ("x", "y", "x", "z"):  # y is the least recently used when z arrives
        replays.next(session, "a", recorded)
    assert replays.next("x", "a", recorded).position == 2 and replays.next("y", "a", recorded).position == 0
    for fingerprint in "abc":  # x's walk of "a" is forgotten when a third request starts
        replays.next("x", fingerprint, recorded)
    assert replays.next("x", "a", recorded).position == 0


def test_otlp_is_a_protocol_module_and_backend_readers_need_no_capture() -> None:
    """Importing the OTLP encoding, or the store and its readers, loads no redaction or
    decompression (and the OTLP module nothing else of the gateway)."""
    code = ("import sys; import softprobe_gateway.otlp as o; first = sorted(m for m in sys.modules "
            "if m.startswith('softprobe_gateway.')); "
            "import softprobe_gateway.store.store, softprobe_gateway.formats.spans; "
            "print(first, sorted(m for m in ('softprobe_gateway.capture', 'softprobe_gateway.capture.redaction', "
            "'brotlicffi', 'zstandard') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                          cwd=ROOT, check=True)
    assert done.stdout.strip() == "['softprobe_gateway.otlp'] []"


def test_case_positions_count_per_request_and_start_over_at_a_new_revision() -> None:
    cases = CasePositions()
    assert [cases.next("sess_a", 1, "f") for _ in range(3)] == [0, 1, 2]
    assert cases.next("sess_a", 1, "g") == 0 and cases.next("sess_b", 1, "f") == 0
    assert cases.next("sess_a", 2, "f") == 0  # the case was replaced: its answers from the first
    cases.forget("sess_a")
    assert cases.next("sess_a", 2, "f") == 0 and cases.next("sess_b", 1, "f") == 1
