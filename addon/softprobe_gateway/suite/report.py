"""`suite run --report PATH`: the run as one standalone HTML page a person reads (in a browser or as
a CI artifact): the summary, every case with its status and time, and for each failed case the
differences, expected against actual side by side (status, headers, the body by JSONPath), the
mocks it registered and the request it sent.

One file, nothing fetched: the style is inline and the page has no script at all, which its
Content-Security-Policy enforces. Case data is hostile input (recorded bodies and headers, names
from suite files): every value is escaped, bodies are cut at `MAX_BODY` characters and at most
`MAX_DETAILED` failed cases are shown in full, so a suite of thousands of cases writes a page of
bounded size, a part at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any

from softprobe_gateway.suite.results import CaseResult, DiffEntry, HttpMessage, MockUsed, SuiteResult

MAX_BODY = 32 * 1024  # characters of one body shown
MAX_VALUE = 2000  # characters of one value in a table cell
MAX_DETAILED = 500  # failed cases shown in full; every case has its row
_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'none'; base-uri 'none'"

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:16px 24px}
header h1{margin:0 0 4px;font-size:20px}
header p{margin:0;color:#c8ccd6}
main{padding:16px 24px;max-width:1400px}
.totals{display:flex;gap:12px;margin:0 0 16px}
.totals div{background:#fff;border:1px solid #dde1e8;border-radius:6px;padding:8px 14px}
.totals b{display:block;font-size:22px}
table{border-collapse:collapse;width:100%;background:#fff;margin:0 0 12px}
th,td{border:1px solid #dde1e8;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef0f4;font-weight:600}
td{word-break:break-word}
code,pre{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
pre{margin:0;white-space:pre-wrap;word-break:break-word;max-height:480px;overflow:auto}
.status{font-weight:700;border-radius:4px;padding:1px 6px;font-size:12px;white-space:nowrap}
.passed{background:#dcf5e3;color:#135c2a}.failed{background:#fde2e1;color:#8a1c17}.skipped{background:#eceef2;color:#4b5262}
section.case{background:#fff;border:1px solid #dde1e8;border-left:4px solid #c9302c;border-radius:6px;padding:12px 16px;margin:0 0 16px}
section.case h2{font-size:16px;margin:0 0 6px}
section.case h3{font-size:14px;margin:12px 0 6px}
.failure{color:#8a1c17;margin:0 0 8px}
.side{display:grid;grid-template-columns:1fr 1fr;gap:8px}
.side>div{border:1px solid #dde1e8;border-radius:4px;padding:6px;background:#fbfbfc;min-width:0}
.side h4{margin:0 0 4px;font-size:12px;color:#4b5262}
table.diffs td.expected,table.diffs td.actual{width:36%}table.compare td{width:42%}
tr.differs td.expected{background:#fff4d6}tr.differs td.actual{background:#fde2e1}
.notes{color:#4b5262}
"""


def write(result: SuiteResult, path: str | Path) -> None:
    """Write the page (parent directories made), replacing the file, a part at a time."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", encoding="utf-8") as f:
        for part in _parts(result, None):
            f.write(part + "\n")


def page(result: SuiteResult, now: datetime | None = None) -> str:
    """The whole report as one HTML document."""
    return "".join(part + "\n" for part in _parts(result, now))


def _parts(result: SuiteResult, now: datetime | None) -> Iterator[str]:
    when = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M:%S UTC")
    failed = [(index, case) for index, case in enumerate(result.cases) if case.status == "failed"]
    yield from (
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>{_e(result.name)}: {'passed' if result.ok else f'{result.failed} failed'}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<header><h1>suite {_e(result.name)}</h1><p>{_e(result.path)} &middot; {when} &middot; "
        f"{result.duration_ms / 1000:.2f} s</p></header><main>",
        _totals(result),
        *(f'<p class="notes">{_e(note)}</p>' for note in result.notes),
        _summary_table(result, {index for index, _ in failed[:MAX_DETAILED]}))
    if failed:
        yield "<h2>Failed cases</h2>"
        yield from (_failed_case(index, case) for index, case in failed[:MAX_DETAILED])
    if len(failed) > MAX_DETAILED:
        yield (f'<p class="notes" id="more">{len(failed) - MAX_DETAILED} more failed cases are in the table above '
               f"without their details (the first {MAX_DETAILED} have them): --json and --junit hold every one.</p>")
    yield "</main></body></html>"


def _totals(result: SuiteResult) -> str:
    cells = (("total", result.total), ("passed", result.passed), ("failed", result.failed),
             ("skipped", result.skipped))
    inner = "".join(f'<div class="{name}"><b>{count}</b>{name}</div>' for name, count in cells)
    return f'<div class="totals" id="totals">{inner}</div>'


def _summary_table(result: SuiteResult, detailed: set[int]) -> str:
    rows = ["<table id=\"cases\"><thead><tr><th>status</th><th>case</th><th>path</th><th>time</th>"
            "<th>failure, notes</th></tr></thead><tbody>"]
    for index, case in enumerate(result.cases):
        label = _e(case.case_id)
        if index in detailed:
            label = f'<a href="#case-{index}">{label}</a>'
        said = " ".join(x for x in (_e(case.failure), *(f'<span class="notes">{_e(n)}</span>' for n in case.notes)) if x)
        rows.append(f'<tr class="{case.status}"><td><span class="status {case.status}">{case.status}</span></td>'
                    f"<td>{label}</td><td><code>{_e(case.path)}</code></td><td>{case.duration_ms} ms</td>"
                    f"<td>{said}</td></tr>")
    rows.append("</tbody></table>")
    return "".join(rows)


def _failed_case(index: int, case: CaseResult) -> str:
    parts = [f'<section class="case" id="case-{index}">',
             f"<h2>{_e(case.case_id)} <span class=\"status failed\">failed</span> "
             f"<small>{case.duration_ms} ms</small></h2>",
             f"<p><code>{_e(case.label)}</code>" + (f" &middot; session <code>{_e(case.session_id)}</code>"
                                                    if case.session_id else "") + "</p>",
             f'<p class="failure">{_e(case.failure)}</p>']
    if case.diffs:
        parts += ["<h3>Differences</h3>", _diff_table(case.diffs)]
    if case.expected is not None or case.response is not None:
        parts += ["<h3>Expected and actual</h3>", _side_by_side(case.expected, case.response)]
    if case.mocks:
        parts += ["<h3>Mocks used</h3>", _mocks_table(case.mocks)]
    if case.request is not None:
        parts += ["<h3>Request sent</h3>", _request(case.request)]
    parts += [f'<p class="notes">{_e(note)}</p>' for note in case.notes]
    parts.append("</section>")
    return "\n".join(parts)


def _diff_table(diffs: tuple[DiffEntry, ...]) -> str:
    rows = ['<table class="diffs"><thead><tr><th>what</th><th>where</th><th>expected</th><th>actual</th>'
            "<th>why</th></tr></thead><tbody>"]
    for d in diffs:
        why = "; ".join(x for x in (d.reason, f"hook {d.source}" if d.source else "") if x)
        rows.append(f'<tr class="differs"><td>{_e(d.what)}</td><td><code>{_e(d.where or "-")}</code></td>'
                    f'<td class="expected"><pre>{_value(d.expected)}</pre></td>'
                    f'<td class="actual"><pre>{_value(d.actual)}</pre></td><td>{_e(why)}</td></tr>')
    rows.append("</tbody></table>")
    return "".join(rows)


def _side_by_side(expected: HttpMessage | None, actual: HttpMessage | None) -> str:
    """Status and headers as rows (a row whose sides differ marked), then both bodies."""
    want = expected or HttpMessage()
    got = actual or HttpMessage()
    rows = ['<table class="compare"><thead><tr><th></th><th>expected (recorded)</th><th>actual</th></tr></thead><tbody>',
            _row("status", want.status, got.status)]
    for name in sorted(set(want.headers) | set(got.headers)):
        rows.append(_row(name, want.headers.get(name), got.headers.get(name)))
    rows.append("</tbody></table>")
    bodies = (f'<div class="side"><div><h4>expected body</h4><pre>{_body(want.body)}</pre></div>'
              f'<div><h4>actual body</h4><pre>{_body(got.body)}</pre></div></div>')
    return "".join(rows) + bodies


def _row(name: str, expected: Any, actual: Any) -> str:
    marked = ' class="differs"' if expected != actual else ""
    return (f"<tr{marked}><th><code>{_e(name)}</code></th><td class=\"expected\">{_cell(expected)}</td>"
            f'<td class="actual">{_cell(actual)}</td></tr>')


def _mocks_table(mocks: tuple[MockUsed, ...]) -> str:
    rows = ['<table class="mocks"><thead><tr><th>name</th><th>match</th><th>source</th><th>answer</th>'
            "</tr></thead><tbody>"]
    for m in mocks:
        extra = ", ".join(f"{k} {v}" for k, v in (("priority", m.priority), ("consume", m.consume),
                                                  ("latencyMs", m.latency_ms)) if v is not None)
        rows.append(f"<tr><td>{_e(m.name or '-')}</td><td><pre>{_value(m.match)}</pre></td>"
                    f"<td>{_e(m.source)}{'<br>' + _e(extra) if extra else ''}</td>"
                    f"<td>{m.response.status or 200}<pre>{_body(m.response.body)}</pre></td></tr>")
    rows.append("</tbody></table>")
    return "".join(rows)


def _request(request: HttpMessage) -> str:
    headers = "\n".join(f"{name}: {value}" for name, value in request.headers.items())
    text = f"{request.method} {request.url}\n{headers}"
    return f"<pre>{_e(_cut(text, MAX_BODY))}</pre>" + (f"<pre>{_body(request.body)}</pre>" if request.body else "")


def _body(body: str) -> str:
    """A body for reading: JSON indented, cut at MAX_BODY, escaped."""
    if not body:
        return '<span class="notes">(empty)</span>'
    try:
        body = json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except ValueError:
        pass
    return _e(_cut(body, MAX_BODY))


def _value(value: Any) -> str:
    """A value of a diff (JSON as JSON; None, an absent side, as a dash)."""
    if value is None:
        return "-"
    text = value if isinstance(value, str) else json.dumps(value, indent=1, ensure_ascii=False, default=str)
    return _e(_cut(text, MAX_VALUE))


def _cell(value: Any) -> str:
    return '<span class="notes">absent</span>' if value is None else _e(_cut(str(value), MAX_VALUE))


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"\n... ({len(text) - limit} more characters)"


def _e(text: Any) -> str:
    return escape(str(text), quote=True)
