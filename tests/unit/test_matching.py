"""Matching and miss diffs as pure functions: canonical forms, ignored fields, field-level diffs."""

from __future__ import annotations

import base64
import json
import os

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st
from softprobe_gateway.store.matching import (
    CANONICAL_VERSION,
    MAX_PARTS,
    Ignore,
    diff,
    parse_request,
    summarize,
)


def form(path: str = "/p", body: str = "", content_type: str = "application/json",
         ignore: tuple[str, ...] = (), method: str = "POST", host: str = "api:80"):
    return parse_request(method, host, path, content_type, body, Ignore.parse(ignore))


def test_fingerprint_ignores_json_layout_query_order_and_case_of_method_and_host() -> None:
    a = form("/p?a=1&b=2", '{"x": [1, {"y": 2, "z": 3}], "w": null}')
    b = parse_request("post", "API:80", "/p?b=2&a=1", "application/json; charset=utf-8",
                      '{"w":null,"x":[1,{"z":3,"y":2}]}', Ignore())
    assert a.fingerprint() == b.fingerprint()


def test_fingerprint_keeps_list_order_and_value_types() -> None:
    assert form(body='[1, 2]').fingerprint() != form(body='[2, 1]').fingerprint()
    assert form(body='{"n": 1}').fingerprint() != form(body='{"n": "1"}').fingerprint()


def test_ignore_names_anywhere_and_dotted_paths_through_lists() -> None:
    ignore = ("ts", "items.id")
    a = form("/p?ts=1", '{"ts": 1, "items": [{"id": 1, "sku": "a"}], "deep": {"ts": 5}}', ignore=ignore)
    b = form("/p?ts=2", '{"ts": 2, "items": [{"id": 9, "sku": "a"}], "deep": {"ts": 6}}', ignore=ignore)
    assert a.fingerprint() == b.fingerprint()
    c = form("/p", '{"items": [{"id": 1, "sku": "b"}]}', ignore=ignore)
    assert a.fingerprint() != c.fingerprint()
    # a dotted path is anchored at the root: `id` elsewhere still counts
    assert form(body='{"id": 1}', ignore=ignore).fingerprint() != form(body='{"id": 2}', ignore=ignore).fingerprint()


def test_form_bodies_compare_like_queries() -> None:
    ct = "application/x-www-form-urlencoded"
    assert form(body="a=1&b=2", content_type=ct).fingerprint() == form(body="b=2&a=1", content_type=ct).fingerprint()
    assert diff(form(body="a=1&b=2", content_type=ct), form(body="a=1&b=3", content_type=ct)) == [
        "body.b: recorded '2', got '3'"]


def test_invalid_json_and_binary_bodies_compare_as_recorded() -> None:
    assert form(body="{not json").fingerprint() == form(body="{not json").fingerprint()
    assert form(body="AAEC", content_type="application/octet-stream").fingerprint() != \
        form(body="AAED", content_type="application/octet-stream").fingerprint()


def test_diff_names_each_differing_field() -> None:
    recorded = form("/pay?page=1&lang=en", '{"amount": 10, "card": {"last4": "1234"}}')
    got = form("/pay?page=2&extra=y", '{"amount": 12, "card": {}, "new": true}', method="PUT")
    assert diff(recorded, got) == [
        "method: recorded 'POST', got 'PUT'",
        "query.extra: not recorded, got 'y'",
        "query.lang: recorded 'en', missing",
        "query.page: recorded '1', got '2'",
        "body.amount: recorded 10, got 12",
        "body.card.last4: recorded '1234', missing",
        "body.new: not recorded, got true",
    ]
    assert diff(recorded, recorded) == []


def test_diff_of_text_bodies_and_summary_cap() -> None:
    lines = diff(form(body="hello", content_type="text/plain"), form(body="", content_type="text/plain"))
    assert lines == ["body: recorded 'hello' (text, 5 chars), got no body"]
    many = [f"line {n}" for n in range(20)]
    assert summarize(many)[-1] == "... and 13 more differences" and len(summarize(many)) == 8


# -- multipart/form-data ----------------------------------------------------------------------

# Two `curl -F note=x -F file=@a.txt` uploads (curl 7.88.1), as sent: only the boundary differs.
CURL_UPLOADS = [(f"multipart/form-data; boundary=------------------------{b}",
                 f'--------------------------{b}\r\nContent-Disposition: form-data; name="note"\r\n\r\nx\r\n'
                 f'--------------------------{b}\r\nContent-Disposition: form-data; name="file"; '
                 f'filename="a.txt"\r\nContent-Type: text/plain\r\n\r\nhello world!\r\n'
                 f'--------------------------{b}--\r\n'.encode()) for b in ("bfe1536b9d3c338b", "ad0f6a71b85d4c97")]


def upload(files: dict | None = None, data: dict | None = None, ignore: tuple[str, ...] = ()):
    """The request httpx sends for these files and fields (a fresh random boundary each time),
    parsed as the backend gets it: the body base64, the content type with its boundary."""
    request = httpx.Request("POST", "http://api/upload", files=files, data=data)
    return raw_upload(request.headers["content-type"], request.read(), ignore)


def raw_upload(content_type: str, body: bytes, ignore: tuple[str, ...] = ()):
    return form("/upload", base64.b64encode(body).decode(), content_type, ignore)


def urllib3_style(fields: list[tuple[str, tuple[str, bytes, str] | str]]) -> tuple[str, bytes]:
    """What `urllib3.encode_multipart_formdata` (behind requests' `files=`) writes: a random
    hex boundary, no content type for plain fields (urllib3 is not installed in .venv)."""
    boundary = os.urandom(16).hex()
    body = b""
    for name, value in fields:
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"'.encode()
        if isinstance(value, tuple):
            body += f'; filename="{value[0]}"\r\nContent-Type: {value[2]}\r\n\r\n'.encode() + value[1]
        else:
            body += b"\r\n\r\n" + value.encode()
        body += b"\r\n"
    return f"multipart/form-data; boundary={boundary}", body + f"--{boundary}--\r\n".encode()


FILES = {"file": ("a.txt", b"hello world!", "text/plain"), "image": ("p.png", bytes(range(256)), "image/png")}
DATA = {"note": "x", "tags": ["a", "b"]}


def test_multipart_uploads_differing_only_in_the_boundary_match() -> None:
    a, b = upload(FILES, DATA), upload(FILES, DATA)
    assert a.body_kind == "multipart" and a.fingerprint() == b.fingerprint()
    assert diff(a, b) == []
    (ct_a, body_a), (ct_b, body_b) = CURL_UPLOADS
    assert raw_upload(ct_a, body_a).fingerprint() == raw_upload(ct_b, body_b).fingerprint()
    fields = [("note", "x"), ("file", ("a.txt", b"\x00\xff binary", "application/octet-stream"))]
    assert raw_upload(*urllib3_style(fields)).fingerprint() == raw_upload(*urllib3_style(fields)).fingerprint()


def test_multipart_parts_are_a_sorted_set_but_same_name_parts_keep_their_order() -> None:
    fields = [("note", "x"), ("file", ("a.txt", b"data", "text/plain")), ("tag", "1"), ("tag", "2")]
    shuffled = [fields[1], fields[2], fields[0], fields[3]]
    assert raw_upload(*urllib3_style(fields)).fingerprint() == raw_upload(*urllib3_style(shuffled)).fingerprint()
    swapped = [fields[0], fields[1], fields[3], fields[2]]
    assert diff(raw_upload(*urllib3_style(fields)), raw_upload(*urllib3_style(swapped))) == [
        "body.part[tag][0]: recorded '1', got '2'", "body.part[tag][1]: recorded '2', got '1'"]


def test_multipart_changes_of_content_filename_type_or_field_are_misses_naming_the_part() -> None:
    recorded = upload(FILES, DATA)
    changes = {
        "body.part[file].content: recorded 12 bytes (sha256 7509e5bda0c7), got 14 bytes (sha256 a5f4396b4554)":
            ({**FILES, "file": ("a.txt", b"hello world!!!", "text/plain")}, DATA),
        "body.part[file].filename: recorded 'a.txt', got 'b.txt'":
            ({**FILES, "file": ("b.txt", b"hello world!", "text/plain")}, DATA),
        "body.part[image].content-type: recorded 'image/png', got 'image/gif'":
            ({**FILES, "image": ("p.png", bytes(range(256)), "image/gif")}, DATA),
        "body.part[note]: recorded 'x', got 'y'": (FILES, {**DATA, "note": "y"}),
        "body.part[tags][1]: recorded 'b', missing": (FILES, {**DATA, "tags": ["a"]}),
        "body.part[extra]: not recorded, got 'z'": (FILES, {**DATA, "extra": "z"}),
        "body.part[image]: recorded file 'p.png', 256 bytes (sha256 40aff2e9d2d8), missing":
            ({"file": FILES["file"]}, DATA),
    }
    for line, (files, data) in changes.items():
        got = upload(files, data)
        assert got.fingerprint() != recorded.fingerprint()
        assert diff(recorded, got) == [line]


def test_multipart_ignore_drops_parts_and_json_parts_compare_structurally() -> None:
    ignore = ("nonce", "meta.ts")
    a = upload({"meta": ("m.json", b'{"a": 1, "b": [1, 2], "ts": 5}', "application/json")},
               {"nonce": "1", "note": "x"}, ignore)
    b = upload({"meta": ("m.json", b'{"ts": 6, "b": [1, 2], "a": 1}', "application/json")},
               {"nonce": "2", "note": "x"}, ignore)
    assert a.fingerprint() == b.fingerprint()
    c = upload({"meta": ("m.json", b'{"a": 2, "b": [1, 2]}', "application/json")}, {"note": "x"}, ignore)
    assert diff(a, c) == ["body.part[meta].content.a: recorded 1, got 2"]


def test_multipart_as_text_and_empty_filename_and_other_part_headers() -> None:
    ct, body = CURL_UPLOADS[0]
    as_text = form("/upload", body.decode(), ct)  # a source that sent the body as text
    assert as_text.body_kind == "multipart" and as_text.fingerprint() == raw_upload(ct, body).fingerprint()
    # an empty file input (`filename=""`) is not a plain field; unknown part headers don't count
    empty_file = b'--b\r\nContent-Disposition: form-data; name="f"; filename=""\r\n\r\n\r\n--b--\r\n'
    field = b'--b\r\nContent-Disposition: form-data; name="f"\r\nX-Other: 1\r\n\r\n\r\n--b--\r\n'
    assert raw_upload("multipart/form-data; boundary=b", empty_file).fingerprint() != \
        raw_upload("multipart/form-data; boundary=b", field).fingerprint()
    assert diff(raw_upload("multipart/form-data; boundary=b", empty_file),
                raw_upload("multipart/form-data; boundary=b", field)) == [
        "body.part[f].filename: recorded '', missing", "body.part[f].content: recorded 0 bytes "
        "(sha256 e3b0c44298fc), got ''"]


def test_malformed_multipart_bodies_compare_as_recorded() -> None:
    ct, body = CURL_UPLOADS[0]
    malformed = {
        "no boundary parameter": ("multipart/form-data", body),
        "cut at the capture cap": (ct, body[:150]),
        "no closing delimiter": (ct, body.rsplit(b"\r\n--", 1)[0]),
        "no delimiter at all": (ct, b"just text"),
        "garbage after a delimiter": (ct, body.replace(b"a.txt\"\r\n", b"a.txt\"\r\nno colon\r\n")),
        "no blank line after headers": ("multipart/form-data; boundary=b",
                                        b"--b\r\nContent-Disposition: form-data; name=x\r\n--b--"),
        "over MAX_PARTS parts": ("multipart/form-data; boundary=b",
                                 b"--b\r\n\r\nx\r\n" * (MAX_PARTS + 1) + b"--b--"),
    }
    for what, (content_type, raw) in malformed.items():
        parsed = raw_upload(content_type, raw)
        assert (parsed.body_kind, parsed.body) == ("text", base64.b64encode(raw).decode()), what
        assert diff(parsed, raw_upload(content_type, raw)) == [], what
    [line] = diff(raw_upload(ct, body[:150]), raw_upload(ct, body))
    assert line.startswith("body: recorded 'LS0t") and line.endswith("(text, 200 chars), got multipart, 2 parts")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.sampled_from(["b", "", "a b", '"q"', "-"]))
def test_arbitrary_bytes_as_a_multipart_body_never_raise(noise: bytes, boundary: str) -> None:
    ct = f"multipart/form-data; boundary={boundary}"
    # mixed with the delimiters and headers, so that many examples get past the first checks
    for raw in (noise, b"--b\r\n" + noise, b"--b\r\nContent-Disposition: form-data; name=" + noise + b"\r\n--b--",
                b"--b\r\n\r\n" + noise + b"\r\n--b--\r\n"):
        for body in (base64.b64encode(raw).decode(), raw.decode("utf-8", "replace")):
            parsed = form("/upload", body, ct)
            parsed.fingerprint()
            diff(parsed, form("/upload", body, ct + "x"))


def test_deeply_nested_json_compares_as_recorded() -> None:
    body = "[" * 100_000 + "]" * 100_000
    assert form(body=body).body_kind == "text" and form(body=body).fingerprint()
    assert form(body=body, content_type="multipart/form-data; boundary=b").body_kind == "text"
    part = f'--b\r\nContent-Disposition: form-data; name="j"\r\nContent-Type: application/json\r\n\r\n{body}\r\n--b--'
    assert raw_upload("multipart/form-data; boundary=b", part.encode()).body == (
        ("j", None, "application/json", "text", body),)


def test_form_bodies_ignore_order_and_charset() -> None:
    plain = form(body="a=1&b=2&a=0", content_type="application/x-www-form-urlencoded")
    charset = form(body="b=2&a=0&a=1", content_type="application/x-www-form-urlencoded; charset=UTF-8")
    assert plain.body_kind == charset.body_kind == "form" and plain.fingerprint() == charset.fingerprint()


def test_signature_carries_the_canonical_version() -> None:
    """A store records the signature with its fingerprints: a new canonical form must change it."""
    assert json.loads(Ignore.parse(["a", "b.c"]).signature) == [CANONICAL_VERSION, ["a"], ["b.c"]]
    assert CANONICAL_VERSION >= 2  # 2: multipart bodies part by part
