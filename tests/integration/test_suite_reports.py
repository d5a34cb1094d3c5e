"""The suite's reports read as their readers read them: the JUnit XML validated against the JUnit
schema CI systems read (`tests/data/junit/junit.xsd`, by xmlschema, a real XSD validator), and the
HTML report opened in Debian's Chromium driven by Playwright: a screenshot taken, the failed case's
side-by-side diff found on the page, the hostile case data shown as text and never run.

The run is a SuiteResult as the runner fills it (plain data), with what a hostile recording can hold
in every field the reports print."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
import xmlschema

from softprobe_gateway.suite import junit, report
from softprobe_gateway.suite.results import CaseResult, DiffEntry, HttpMessage, MockUsed, SuiteResult
from testkit.browser import chromium

XSD = Path(__file__).resolve().parents[1] / "data" / "junit" / "junit.xsd"
DOC = Path(__file__).resolve().parents[2] / "docs" / "suites.md"
HOSTILE = "<script>window.__pwned=1;alert(1)</script><img src=x onerror=\"window.__pwned=2\">"


def hostile_run() -> SuiteResult:
    expected = HttpMessage(status=200, headers={"content-type": "application/json", "x-note": HOSTILE},
                           body='{"flight": "SP101", "price": 329, "note": "' + HOSTILE.replace('"', '\\"') + '"}')
    actual = HttpMessage(status=201, headers={"content-type": "text/plain", "x-note": "fine\x1b[31m"},
                         body='{"flight": "SP101", "price": 349, "note": "ok\\u0000"}')
    failed = CaseResult(
        case_id="checkout-" + HOSTILE, name="checkout-" + HOSTILE, path="cases/a&b\x00.case.json",
        status="failed", duration_ms=312, failure="body $.price: expected 329, got 349 (+2 more)",
        diffs=(DiffEntry("status", "", 200, 201, "differs"),
               DiffEntry("header", "content-type", "^application/json", "text/plain", "does not match"),
               DiffEntry("body", "$.price", 329, 349, "differs"),
               DiffEntry("body", "$.note", HOSTILE, "ok\x00", "differs", source="assertNote")),
        mocks=(MockUsed("fragment", {"direction": "outbound", "pathPrefix": "/fragment"}, "case+hook rewriteDep",
                        HttpMessage(status=200, body='{"dep": "' + HOSTILE.replace('"', "'") + '"}'), 10, "many"),),
        request=HttpMessage(method="GET", url="http://127.0.0.1:1/hello?" + HOSTILE, headers={"x-h": HOSTILE}),
        response=actual, expected=expected, session_id="sess-1",
        notes=("noise: ignored $.generatedAt (differed between two replays of the same version)",))
    passed = CaseResult(case_id="happy", name="happy", path="cases/happy.case.json", status="passed", duration_ms=41)
    skipped = CaseResult(case_id="later", name="", path="cases/later.case.json", status="skipped", duration_ms=0,
                         notes=("not run: --fail-fast after a failure",))
    return SuiteResult("checkout-nightly", "suites/checkout.suite.yaml", (passed, failed, skipped), 1234)


def test_the_junit_xml_is_valid_by_the_junit_schema_with_case_ids_and_paths(tmp_path: Path) -> None:
    path = tmp_path / "out" / "junit.xml"
    junit.write(hostile_run(), path)
    xmlschema.XMLSchema(XSD).validate(str(path))  # raises with the offending element when it is not
    top = ET.parse(path).getroot()
    assert (top.tag, top.get("name"), top.get("tests"), top.get("failures"), top.get("skipped"), top.get("time")) == \
        ("testsuites", "checkout-nightly", "3", "1", "1", "1.234")
    cases = top.findall("./testsuite/testcase")
    assert [(c.get("name"), c.get("classname"), c.get("time")) for c in cases] == [
        ("happy", "cases/happy.case.json", "0.041"),
        ("checkout-" + HOSTILE, "cases/a&b\ufffd.case.json", "0.312"),  # NUL is not XML: replaced
        ("later", "cases/later.case.json", "0.000")]
    failure = cases[1].find("failure")
    assert failure is not None and failure.get("message") == "body $.price: expected 329, got 349 (+2 more)"
    assert failure.get("type") == "status-mismatch"
    assert "body $.price: expected 329, got 349" in (failure.text or "")
    assert '(assertNote)' in (failure.text or "")
    assert cases[2].find("skipped").get("message") == "not run: --fail-fast after a failure"
    assert "noise: ignored $.generatedAt" in cases[1].find("system-out").text


def test_the_junit_example_of_the_docs_is_what_the_writer_writes(tmp_path: Path) -> None:
    (example,) = re.findall(r"^```xml\n(.*?)^```$", DOC.read_text(), re.DOTALL | re.MULTILINE)
    body = DiffEntry("body", "$.message", "hello", "bye", "differs", source="helloShape")
    path = "../../spec/examples/cases/fragment-happy-path.case.json"
    run = SuiteResult("fragment-hooks-cli", "suites/fragment.suite.yaml", (
        CaseResult("happy-path", "happy-path", path, "failed", 24, session_id="sess_1", diffs=(body,),
                   failure='body $.message (helloShape): expected "hello", got "bye"'),
        CaseResult("fragment-down", "fragment-down", path, "passed", 22, session_id="sess_2")), 61)
    assert junit.document(run) == example
    (tmp_path / "example.xml").write_text(example)
    xmlschema.XMLSchema(XSD).validate(str(tmp_path / "example.xml"))


def test_junit_of_a_run_that_passed_has_no_failure_elements(tmp_path: Path) -> None:
    run = SuiteResult("s", "s.suite.yaml", (CaseResult("a", "", "a.case.json", "passed", 5),), 5)
    junit.write(run, tmp_path / "j.xml")
    xmlschema.XMLSchema(XSD).validate(str(tmp_path / "j.xml"))
    assert ET.parse(tmp_path / "j.xml").getroot().find(".//failure") is None


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with chromium() as launched:
        yield launched


def test_the_html_report_in_chromium_shows_the_failed_cases_diff_side_by_side(browser, tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    report.write(hostile_run(), path)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    dialogs: list[str] = []
    fetched: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("request", lambda r: fetched.append(r.url))
    page.goto(path.as_uri())
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert page.inner_text("#totals").split() == ["3", "total", "1", "passed", "1", "failed", "1", "skipped"]
    rows = page.locator("#cases tbody tr")
    assert rows.count() == 3
    assert [rows.nth(i).locator("td").first.inner_text() for i in range(3)] == ["passed", "failed", "skipped"]
    assert rows.nth(0).locator("td").nth(3).inner_text() == "41 ms"

    page.click("#cases a")  # the failed case's link goes to its section
    assert page.evaluate("location.hash") == "#case-1"
    section = page.locator("section#case-1")
    assert section.is_visible()
    price = section.locator("table.diffs tr", has_text="$.price")
    assert [price.locator("td").nth(i).inner_text() for i in range(4)] == ["body", "$.price", "329", "349"]
    status = section.locator("table.compare tr.differs", has_text="status")
    assert status.locator("td.expected").inner_text() == "200" and status.locator("td.actual").inner_text() == "201"
    expected_box = section.locator(".side > div").nth(0).bounding_box()
    actual_box = section.locator(".side > div").nth(1).bounding_box()
    assert expected_box and actual_box and actual_box["x"] > expected_box["x"] + expected_box["width"] - 1
    assert abs(actual_box["y"] - expected_box["y"]) < 1  # side by side, not one under the other
    assert '"price": 329' in section.locator(".side > div").nth(0).inner_text()
    assert '"price": 349' in section.locator(".side > div").nth(1).inner_text()
    mock = section.locator("table.mocks tbody tr")
    assert mock.count() == 1 and "case+hook rewriteDep" in mock.inner_text()
    assert "noise: ignored $.generatedAt" in section.inner_text()

    # Hostile data is text: shown as written, never run, nothing fetched.
    assert HOSTILE in section.locator("h2").inner_text()
    assert HOSTILE in section.locator("table.diffs tr", has_text="$.note").inner_text()
    assert page.evaluate("window.__pwned") is None and dialogs == []
    assert page.locator("section#case-1 script, section#case-1 img").count() == 0
    assert fetched == [path.as_uri()]
    page.close()


def test_a_report_of_thousands_of_cases_with_big_bodies_stays_bounded() -> None:
    body = '{"blob": "' + "x" * 1_000_000 + '"}'
    case = CaseResult("c", "", "c.case.json", "failed", 1, failure="body $.blob differs",
                      diffs=(DiffEntry("body", "$.blob", "x" * 1_000_000, "y", "differs"),),
                      response=HttpMessage(status=200, body=body), expected=HttpMessage(status=200, body=body))
    html = report.page(SuiteResult("big", "big.suite.yaml", (case,) * 20, 1))
    assert len(html) < 20 * (2 * report.MAX_BODY + report.MAX_VALUE + 4000)
    assert "more characters)" in html


def test_past_the_detailed_cases_failed_ones_keep_their_row_only(tmp_path: Path) -> None:
    cases = tuple(CaseResult(f"c{i}", "", f"c{i}.case.json", "failed", 1, failure="status: expected 200, got 500",
                             diffs=(DiffEntry("status", "", 200, 500, "differs"),))
                  for i in range(report.MAX_DETAILED + 3))
    report.write(SuiteResult("many", "many.suite.yaml", cases, 1), tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    assert html.count('<section class="case"') == report.MAX_DETAILED
    assert html.count('<tr class="failed">') == report.MAX_DETAILED + 3
    assert html.count('<a href="#case-') == report.MAX_DETAILED
    assert "3 more failed cases are in the table above without their details" in html
    stamp = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC")  # written in parts, the same page
    assert stamp.sub("T", html) == stamp.sub("T", report.page(SuiteResult("many", "many.suite.yaml", cases, 1)))
