"""The README's quick start and the record-then-replay walkthrough, run as written; and the
documentation's links, commands and options, checked.

The commands are read from the pages (the README's `quickstart` markers, docs/lookups-and-replay.md's
`walkthrough` markers), so the two cannot drift, and typed one by one into a real bash, as a user
would in a terminal, in a copy of the repository sharing this checkout's .venv. They use the
README's fixed loopback ports (8080, 8000, 9090): when something else holds one, the test is
skipped, saying which.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from softprobe_gateway.config.loader import load_config

from testkit.support import LOOPBACK, ROOT, connectable, wait_for

PORTS = (8080, 8000, 9090)  # the gateway, the example upstream, the gateway's admin port
SESSION_LIMIT = 30.0  # seconds for one command (a gateway start included)


README = ROOT / "README.md"
LOOKUPS = ROOT / "docs" / "lookups-and-replay.md"  # the walkthrough's page


def sh_blocks(marker: str, page: Path = README) -> list[list[str]]:
    """The ```sh blocks between `<!-- marker:start -->` and `<!-- marker:end -->` of `page`, as
    commands."""
    section = page.read_text().split(f"<!-- {marker}:start -->", 1)[1]
    section = section.split(f"<!-- {marker}:end -->", 1)[0]
    return [[line for line in block.split("```", 1)[0].splitlines() if line.strip()]
            for block in section.split("```sh\n")[1:]]


class Terminal:
    """One bash, fed one command at a time like a terminal; output and status per command."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.shell = subprocess.Popen(["bash"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, cwd=cwd, env=env, text=True,
                                      start_new_session=True)
        self.transcript: list[str] = []

    def run(self, command: str) -> tuple[str, int]:
        marker = f"__done_{uuid.uuid4().hex}__"
        self.shell.stdin.write(f"{command}\necho {marker} $?\n")
        self.shell.stdin.flush()
        lines: list[str] = []
        deadline = time.monotonic() + SESSION_LIMIT
        while time.monotonic() < deadline:
            line = self.shell.stdout.readline()
            if not line:
                break
            if marker in line:  # after output that did not end its line (curl's), or alone
                before, _, status = line.partition(marker)
                output = "".join(lines) + before
                self.transcript.append(f"$ {command}\n{output}")
                return output, int(status)
            lines.append(line)
        raise AssertionError(f"{command!r} did not finish:\n{''.join(lines)}\n" + "\n".join(self.transcript))

    def until(self, command: str, check: Callable[[str], bool], timeout: float = 10.0) -> str:
        """Run `command` again until its output passes `check`, as a user would once more
        (exports reach the store a moment after the answer)."""
        deadline = time.monotonic() + timeout
        while True:
            output, status = self.run(command)
            if status == 0 and check(output):
                return output
            if time.monotonic() > deadline:
                raise AssertionError(f"{command!r} never showed what the docs say:\n{output}")
            time.sleep(0.2)

    def close(self) -> None:
        if self.shell.poll() is None:
            os.killpg(self.shell.pid, signal.SIGKILL)  # its background jobs share its group
        self.shell.wait()


@pytest.fixture
def checkout(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A copy of the repository as a user has it, with this checkout's installed programs."""
    busy = [port for port in PORTS if connectable(port)]
    if busy:
        pytest.skip(f"the README's ports {busy} are in use on this machine")
    repo = tmp_path / "softprobe-gateway"
    repo.mkdir()
    for name in ("Makefile", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, repo / name)  # copy2 keeps mtimes: make sees .venv up to date
    for name in ("addon", "config", "docs", "examples"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    # This checkout's installed programs, behind a stamp newer than the copied pyproject.toml:
    # `make run` must find the venv up to date, never reinstall the package from the copy.
    (repo / ".venv").mkdir()
    (repo / ".venv" / "bin").symlink_to(ROOT / ".venv" / "bin")
    (repo / ".venv" / ".installed").touch()
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(HOME=str(tmp_path), PYTHONUNBUFFERED="1")  # mitmproxy's CA in a fresh ~/.mitmproxy
    env.pop("SOFTPROBE_CONFIG", None)
    return repo, env


def test_quick_start_as_written(checkout) -> None:
    repo, env = checkout
    (gateway_block, client_block) = sh_blocks("quickstart")
    (make_run,) = gateway_block
    gateway = subprocess.Popen(["bash", "-c", make_run.split("#", 1)[0]], cwd=repo, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    terminal = Terminal(repo, env)
    try:
        wait_for(lambda: gateway.poll() is not None or _ready(), 60)
        assert gateway.poll() is None, gateway.stdout.read()
        upstream, call, sessions, show, metrics = client_block
        assert terminal.run(upstream)[1] == 0
        wait_for(lambda: connectable(8000))
        output, status = terminal.run(call)
        assert status == 0 and '"flight": "SP101"' in output
        table = terminal.until(sessions, lambda out: "quickstart" in out)
        (row,) = [line.split() for line in table.splitlines() if line.startswith("quickstart")]
        assert row[1] == "default-service" and row[-2:] == ["1", "0"]  # one exchange, no error
        timeline = terminal.until(show, lambda out: "->" in out)
        assert timeline.startswith("session quickstart  service default-service  1 exchanges, 0 errors")
        step = re.search(r"\+0\.000s  ([0-9a-f]{8})  outbound GET 127\.0\.0\.1:8000/flights\?from=SFO&to=JFK  -> 200",
                         timeline)
        # The README's sample is the output as it is, but for times, durations and the id; the
        # size it shows is the body's that curl printed.
        assert step and shape(timeline) == shape(sample_output()), timeline
        body = re.search(r'\{"flights": .*?\]\}', output).group()
        assert f"response (JSON, {len(body.encode())} bytes):" in timeline, timeline
        # "`softprobe show 9c1f` shows that one exchange in full"
        exchange = terminal.until(f".venv/bin/softprobe show {step.group(1)[:4]}", lambda out: "exchange" in out)
        assert exchange.startswith(f"exchange {step.group(1)}") and "< content-type: application/json" in exchange
        counters = terminal.run(metrics)[0]
        assert "softprobe_exchanges_seen_total 1.0" in counters
        assert "softprobe_exchanges_recorded_total 1.0" in counters

        # "A `python3 -m http.server` directory listing is a page, so it is proxied but not recorded."
        listing = "python3 -m http.server 8001 --bind 127.0.0.1 --directory config >/dev/null 2>&1 &"
        terminal.run(listing)
        wait_for(lambda: connectable(8001))
        assert terminal.run("curl -s -x http://127.0.0.1:8080 http://127.0.0.1:8001/")[0].startswith("<!DOCTYPE")
    finally:
        terminal.close()
        if gateway.poll() is None:
            os.killpg(gateway.pid, signal.SIGINT)  # Ctrl-C in its terminal
        output = gateway.communicate(timeout=30)[0]
    assert gateway.returncode in (0, -signal.SIGINT, 130, 2), output
    skipped = [line for line in output.splitlines() if "not recording" in line]
    assert len(skipped) == 1 and "not recording GET http://127.0.0.1:8001/: it is a static resource" in skipped[0]
    assert "(text/html" in skipped[0] and "Traceback" not in output, output


def sample_output() -> str:
    """The README's sample of `softprobe show quick`: the quick start's block that is no command."""
    section = README.read_text().split("<!-- quickstart:start -->", 1)[1]
    return re.search(r"\n```\n(session .*?)\n```\n", section, re.S).group(1)


def shape(output: str) -> str:
    """`softprobe show` output without what differs from run to run: times, durations, ids."""
    output = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}", "TIME", output.strip())
    output = re.sub(r"\d+\.\d ms", "N ms", output)
    return re.sub(r"(\+\d+\.\d{3}s +)[0-9a-f]{8}", r"\1ID", output)


def _ready() -> bool:
    try:
        with socket.create_connection((LOOPBACK, 9090), timeout=0.5) as s:
            s.sendall(b"GET /readyz HTTP/1.0\r\n\r\n")
            return s.makefile("rb").read().startswith(b"HTTP/1.0 200")
    except OSError:
        return False


def test_record_then_replay_walkthrough_as_written(checkout) -> None:
    repo, env = checkout
    ((*commands,),) = sh_blocks("walkthrough", LOOKUPS)
    terminal = Terminal(repo, env)
    outputs: list[str] = []
    try:
        for command in commands:
            if "softprobe show flights-1" in command:
                output = terminal.until(command, lambda out: "->" in out)
            elif "softprobe misses" in command:
                output = terminal.until(command, lambda out: "to=SEA" in out)
            else:
                output, status = terminal.run(command)
                assert status == 0, "\n".join(terminal.transcript)
            outputs.append(output)
    finally:
        terminal.close()
    # The gateways write to the same terminal (`make run &`), curl its progress meter: look for
    # what the walkthrough names, among the rest.
    transcript = "\n".join(terminal.transcript)
    assert "ready" in outputs[2].splitlines() and "ready" in outputs[7].splitlines(), transcript
    recorded, replayed = (re.search(r'\{"flights": .*?\]\}', out) for out in (outputs[3], outputs[8]))
    assert recorded and '"flight": "SP101"' in recorded.group(), transcript
    assert replayed and replayed.group() == recorded.group(), transcript  # the upstream is gone
    assert "GET 127.0.0.1:8000/flights?from=SFO&to=JFK  -> 200" in outputs[4], transcript
    assert ("softprobe strict replay: no recorded answer for GET 127.0.0.1:8000/flights?from=SFO&to=SEA "
            "(lookup miss)") in outputs[9], transcript
    closest = re.search(r"closest: ([0-9a-f]{8}) GET 127\.0\.0\.1:8000/flights\?from=SFO&to=JFK in session flights-1",
                        outputs[10])
    assert closest, transcript
    assert "query.to: recorded 'JFK', got 'SEA'" in outputs[10], transcript
    assert 'softprobe_lookups_total{outcome="hit"} 1.0' in outputs[11], transcript
    assert 'softprobe_lookups_total{outcome="miss"} 1.0' in outputs[11], transcript
    assert "Traceback" not in transcript, transcript
    # "`softprobe show flights-2` lists it with `[answered by the gateway: hit]`"
    show = subprocess.run([".venv/bin/softprobe", "show", "flights-2"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=30)
    assert "-> 200" in show.stdout and "[answered by the gateway: hit]" in show.stdout, show.stdout
    # the closest recording's id is the one `softprobe show` takes
    show = subprocess.run([".venv/bin/softprobe", "show", closest.group(1)], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=30)
    assert show.stdout.startswith(f"exchange {closest.group(1)}") and "session flights-1" in show.stdout, show.stdout


# -- the documentation as a whole: README.md and docs/*.md ------------------------------------

PAGES = (README, *sorted((ROOT / "docs").glob("*.md")))
# Where code, manifests and configs may point a reader at a page (comments, docstrings, messages).
REFERRING = ("addon", "bench", "config", "examples", "k8s", "Dockerfile", "Makefile")


def outside_code(text: str) -> str:
    """`text` without its fenced blocks and code spans (neither holds links or headings)."""
    prose, fence = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence:
            prose.append(line)
    return re.sub(r"`[^`]*`", "", "\n".join(prose))


def headings(page: Path) -> list[str]:
    prose, fence = [], False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and (m := re.match(r"#{1,6} (.+?)\s*$", line)):
            prose.append(m.group(1))
    return prose


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: the text (a link's text, no markup) in lower case, punctuation
    dropped, spaces to '-', and '-1', '-2'... after a repeated one."""
    out: set[str] = set()
    repeats: dict[str, int] = {}
    for heading in headings(page):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        n = repeats[slug] = repeats.get(slug, -1) + 1
        out.add(f"{slug}-{n}" if n else slug)
    return out


def broken(page: Path, target: str) -> str | None:
    """Why `target`, linked from `page`, does not resolve (None when it does)."""
    path, _, anchor = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    if not file.exists():
        return f"{page.relative_to(ROOT)}: {target}: no such file"
    if anchor and file.suffix == ".md" and anchor not in anchors(file):
        return f"{page.relative_to(ROOT)}: {target}: no heading #{anchor} in {file.relative_to(ROOT)}"
    return None


def test_every_relative_link_and_anchor_in_the_docs_resolves() -> None:
    links = {page: re.findall(r"\]\(([^)\s]+)\)", outside_code(page.read_text())) for page in PAGES}
    assert len(links[README]) > 20 and sum(map(len, links.values())) > 80  # the pattern finds them
    relative = [(page, t) for page, targets in links.items() for t in targets
                if not re.match(r"[a-z]+:", t)]
    assert [why for page, target in relative if (why := broken(page, target))] == []


def test_every_page_is_reachable_from_the_readme() -> None:
    linked = {(README.parent / t.partition("#")[0]).resolve()
              for t in re.findall(r"\]\((docs/[^)#\s]+)", README.read_text())}
    assert set(PAGES[1:]) <= linked, set(PAGES[1:]) - linked


def test_every_page_named_in_code_and_manifests_exists_with_its_section() -> None:
    """`docs/performance.md#lookups`, `README "Data flow"`, `docs/protocol.md, 'What is recorded'`
    in a comment, docstring or message: the page, the anchor and the section named are there."""
    paths = [p for name in REFERRING for p in [ROOT / name, *(ROOT / name).rglob("*")]]
    files = [p for p in paths if p.is_file() and p.suffix not in (".png", ".pyc", ".db")
             and not any(part == "__pycache__" or part.endswith(".egg-info") for part in p.parts)
             and p.parent.name != "schemas"]  # Softprobe's schemas, vendored unchanged, name its own docs/
    found, wrong = 0, []
    for file in files:
        text = file.read_text(errors="replace")
        for m in re.finditer(r"\b(README(?:\.md)?|docs/[\w.-]+\.md)(#[\w-]+)?(?:,? [\"']([^\"'\n]+)[\"'])?", text):
            found += 1
            page = ROOT / (m.group(1) if m.group(1).endswith(".md") else "README.md")
            where = f"{file.relative_to(ROOT)}: {m.group()}"
            if m.group(2) and (why := broken(ROOT / "README.md", page.relative_to(ROOT).as_posix() + m.group(2))):
                wrong.append(f"{where}: {why}")
            elif not page.exists():
                wrong.append(f"{where}: no such page")
            elif m.group(3) and not any(m.group(3).lower() in h.lower() for h in headings(page)):
                wrong.append(f"{where}: no section {m.group(3)!r} in {page.relative_to(ROOT)}")
    assert found and not wrong, "\n".join(wrong)


def test_every_documented_make_target_is_in_the_readme() -> None:
    """The Makefile's targets with a `##` description are the commands a user meets."""
    targets, described = [], False
    for line in (ROOT / "Makefile").read_text().splitlines():
        if line.startswith("## "):
            described = True
        elif (m := re.match(r"([\w-]+):", line)) and described:
            targets.append(m.group(1))
            described = False
        elif not line.startswith(".PHONY"):
            described = False
    assert {"run", "test", "bench", "demo"} <= set(targets)
    assert [t for t in targets if f"`make {t}" not in README.read_text()] == []


def test_the_options_table_lists_every_option_and_its_key() -> None:
    from softprobe_gateway.proxy.options import OPTIONS

    rows = re.findall(r"^\| `(softprobe_\w+)` \| `([\w.]+)` \|", README.read_text(), re.MULTILINE)
    assert sorted(rows) == sorted((o.name, o.key) for o in OPTIONS)


def test_every_config_snippet_in_the_readme_is_a_valid_config(tmp_path: Path) -> None:
    """The README's ```yaml blocks are gateway configs: each loads, as the gateway would load it
    (a key misspelt or out of range would stop start-up with one line)."""
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), re.DOTALL)
    assert blocks, "the README shows a config"
    for i, block in enumerate(blocks):
        path = tmp_path / f"readme-{i}.yaml"
        path.write_text(block)
        load_config(str(path))
    sampling = load_config(str(tmp_path / "readme-0.yaml")).sampling  # the production sampling example
    assert (sampling.rate, sampling.max_bytes_per_s) == (0.01, 5_000_000)


def test_make_run_on_a_taken_port_says_port_before_starting(checkout) -> None:
    repo, env = checkout
    with socket.socket() as holder:  # what holds the port: another proxy, an earlier `make run`
        holder.bind((LOOPBACK, 0))
        holder.listen()
        port = holder.getsockname()[1]
        run = subprocess.run(["make", "run", f"PORT={port}"], cwd=repo, env=env, capture_output=True, text=True,
                             timeout=SESSION_LIMIT)
    assert run.returncode != 0, run.stdout
    assert f"make run: port {port} on 127.0.0.1 is taken: stop what holds it, or choose another with " \
           "make run PORT=8081" in run.stderr.splitlines(), run.stderr
    assert "mitmdump" not in run.stdout + run.stderr and "regular@" not in run.stderr  # never started
