"""Redaction of recorded data: fields by name and path, value patterns, structure kept, hashing."""

from __future__ import annotations

import json
import random
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from softprobe_gateway.capture.prefilter import FOLD_AT_ONCE
from softprobe_gateway.capture.redaction import SALT_ENV, Redactor
from softprobe_gateway.capture.secret_rules import luhn
from softprobe_gateway.config.loader import load_config
from softprobe_gateway.config.schema import ConfigError, RedactionConfig

MASK = "[REDACTED]"
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
VISA = "4111111111111111"


def redactor(**config: Any) -> Redactor:
    environ = {SALT_ENV: "test-salt"} if config.get("mode") == "hash" and "salt" not in config else {}
    return Redactor(RedactionConfig(**config), environ=environ)


def redact_json(doc: Any, r: Redactor | None = None) -> Any:
    return json.loads((r or redactor()).body(json.dumps(doc), JSON))


def random_card(length: int, valid: bool, rng: random.Random) -> str:
    """A `length`-digit number starting with 4 whose Luhn check passes or fails as asked."""
    body = "4" + "".join(rng.choice("0123456789") for _ in range(length - 2))
    good = next(d for d in "0123456789" if luhn(body + d))
    return body + (good if valid else str((int(good) + 1 + rng.randrange(9)) % 10))


# -- fields -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [
    "password", "Password", "new_password", "confirmPassword", "passwd", "secret", "client_secret",
    "token", "access_token", "refresh_token", "accessToken", "api_key", "apiKey", "api-key",
    "card_number", "cardNumber", "CARD-NUMBER", "pan", "cvv", "cvc", "CVC2",
])
def test_default_fields_are_masked_in_json_forms_and_queries(name: str) -> None:
    r = redactor()
    assert redact_json({name: "s3cr3t", "user": "bob"}) == {name: MASK, "user": "bob"}
    assert r.body(f"{name}=s3cr3t&user=bob", FORM) == f"{name}={MASK}&user=bob"
    assert r.query(f"/login?user=bob&{name}=s3cr3t") == f"/login?user=bob&{name}={MASK}"


@pytest.mark.parametrize("name", ["user", "company", "span", "max_tokens", "tokens", "page", "number", "passage"])
def test_ordinary_fields_are_kept(name: str) -> None:
    assert redact_json({name: "value"}) == {name: "value"}


def test_dotted_paths_match_from_the_root_and_wildcards_anywhere() -> None:
    r = redactor(fields=["user.pin", "*card.number"])
    doc = {"user": {"pin": "1234", "name": "bob"}, "other": {"user": {"pin": "5678"}},
           "payment": {"card": {"number": "x", "holder": "bob"}}, "card": {"number": "y"}}
    assert redact_json(doc, r) == {
        "user": {"pin": MASK, "name": "bob"}, "other": {"user": {"pin": "5678"}},
        "payment": {"card": {"number": MASK, "holder": "bob"}}, "card": {"number": MASK}}


def test_the_default_card_path_covers_a_stripe_style_card_object() -> None:
    doc = {"payment": {"card": {"number": "4000 0000 0000 0000", "exp_month": 12, "cvc": 123}}}
    assert redact_json(doc) == {"payment": {"card": {"number": MASK, "exp_month": 12, "cvc": MASK}}}


def test_array_items_are_transparent_in_paths_and_every_item_is_redacted() -> None:
    r = redactor(fields=["orders.card.number", "password"])
    doc = {"orders": [{"card": {"number": "a"}}, {"card": {"number": "b"}}, {"id": 3}],
           "users": [[{"password": "p1"}], [{"password": "p2", "id": 1}]]}
    assert redact_json(doc, r) == {
        "orders": [{"card": {"number": MASK}}, {"card": {"number": MASK}}, {"id": 3}],
        "users": [[{"password": MASK}], [{"password": MASK, "id": 1}]]}


def test_a_secret_object_keeps_its_shape_with_every_value_masked() -> None:
    doc = {"secret": {"a": "x", "b": [1, 2.5, None, True], "c": {}}, "keep": 1}
    assert redact_json(doc) == {"secret": {"a": MASK, "b": [MASK, MASK, None, True], "c": {}}, "keep": 1}


def test_extra_fields_add_to_the_defaults_and_fields_replaces_them() -> None:
    assert redact_json({"ssn": "1", "password": "2"}, redactor(extra_fields=["ssn"])) == {"ssn": MASK, "password": MASK}
    assert redact_json({"ssn": "1", "password": "2"}, redactor(fields=["ssn"])) == {"ssn": MASK, "password": "2"}


def test_bracketed_form_fields_are_paths() -> None:
    body = "card%5Bnumber%5D=4000000000000002&card[cvc]=123&items[0][token]=t&amount=10"
    assert redactor().body(body, FORM) == f"card%5Bnumber%5D={MASK}&card[cvc]={MASK}&items[0][token]={MASK}&amount=10"


def test_untouched_form_pairs_keep_their_exact_encoding() -> None:
    body = "q=a+b%2Fc&empty=&flag&password=p%40ss+word&x=%E2%82%AC"
    assert redactor().body(body, FORM) == f"q=a+b%2Fc&empty=&flag&password={MASK}&x=%E2%82%AC"


def test_headers_by_name_url_headers_by_query_others_by_value() -> None:
    r = redactor()
    assert r.header("X-API-Key", "k-123") == MASK
    assert r.header("token", "abc") == MASK and r.header("X-Access-Token", "abc") == MASK
    assert r.header("x-forwarded-for", "10.0.0.1") == "10.0.0.1"
    assert r.header("Location", "https://app.example/cb?code=1&access_token=abc") == \
        f"https://app.example/cb?code=1&access_token={MASK}"
    assert r.header("location", "https://app.example/cb#access_token=abc&token_type=bearer") == \
        f"https://app.example/cb#access_token={MASK}&token_type=bearer"
    assert r.header(":path", "/pay?card_number=4111111111111111&amount=5") == f"/pay?card_number={MASK}&amount=5"
    assert r.header("x-debug", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc") == f"Bearer {MASK}"


def test_query_without_secrets_is_returned_as_is() -> None:
    path = "/search?q=hello+world&page=2&sort=-price"
    assert redactor().query(path) is path


# -- value patterns -----------------------------------------------------------------------


def test_luhn_valid_cards_are_masked_and_random_digits_failing_luhn_are_kept() -> None:
    rng = random.Random(7)
    r = redactor()
    for length in (13, 15, 16, 19):
        card = random_card(length, valid=True, rng=rng)
        assert r.body(f"paid with {card}.", "text/plain") == f"paid with {MASK}."
        number = random_card(length, valid=False, rng=rng)
        assert r.body(f"order {number}.", "text/plain") == f"order {number}."


@pytest.mark.parametrize("text, expected", [
    ("4111 1111 1111 1111", MASK),
    ("4111-1111-1111-1111", MASK),
    ("3782 822463 10005", MASK),  # Amex, 15 digits
    ("card 4111 1111 1111 1111 12/25", f"card {MASK} 12/25"),  # a trailing number is not the card
    ("x4111111111111111", "x4111111111111111"),  # inside a word (hex ids)
    ("41111111111111110000", "41111111111111110000"),  # 20 digits: not a card
    ("1700000000004", "1700000000004"),  # an epoch-ms timestamp: Luhn-valid, but no issuer starts with 1
    ("4111  1111 1111 1111", "4111  1111 1111 1111"),  # double separators are not a card's grouping
])
def test_card_shapes(text: str, expected: str) -> None:
    assert redactor().body(text, "text/plain") == expected


def test_cards_inside_json_strings_and_numbers_keep_the_json_valid() -> None:
    doc = {"note": f"card {VISA} thanks", "n": int(VISA), "ok": 12}
    assert redact_json(doc) == {"note": f"card {MASK} thanks", "n": MASK, "ok": 12}


def test_bearer_tokens_keep_their_scheme() -> None:
    r = redactor()
    assert r.body("auth was Bearer abc.def-ghi_jkl== then", "text/plain") == f"auth was Bearer {MASK} then"
    assert r.body("the bearer of bad news", "text/plain") == "the bearer of bad news"


def test_configured_patterns_replace_their_groups_or_the_whole_match() -> None:
    r = redactor(patterns=[r"\b\d{3}-\d{2}-\d{4}\b", r"session=(\w+)"])
    assert r.body("ssn 123-45-6789 session=abc123 end", "text/plain") == f"ssn {MASK} session={MASK} end"


def test_overlapping_matches_are_replaced_once() -> None:
    r = redactor(patterns=[r"Bearer \S+ tail"])
    assert r.body("x Bearer abcdefghij tail y", "text/plain") == f"x {MASK} y"


def test_rules_can_be_turned_off() -> None:
    text = f"Bearer abcdefghijkl {VISA}"
    assert redactor(luhn_cards=False, bearer_tokens=False).body(text, "text/plain") == text
    off = redactor(enabled=False)
    assert off.body('{"password": "x"}', JSON) == '{"password": "x"}'
    assert off.query("/?token=x") == "/?token=x" and off.header("token", "x") == "x"


def test_bodies_that_are_neither_json_nor_form_get_value_patterns_only() -> None:
    text = f"password=hunter2 card={VISA}"
    assert redactor().body(text, "text/plain") == f"password=hunter2 card={MASK}"


# -- structure ----------------------------------------------------------------------------


def test_unchanged_json_is_returned_byte_for_byte() -> None:
    text = '{\n  "a": 1.10,  "b": "\\u00e9"\n}'
    assert redactor().body(text, JSON) is text


def test_json_is_recognized_by_content_type_suffix_or_by_its_first_character() -> None:
    r = redactor()
    for ct in ("application/json; charset=utf-8", "application/vnd.api+json", "text/plain", None):
        assert json.loads(r.body('{"token": "t"}', ct)) == {"token": MASK}


def test_truncated_json_still_has_its_secret_members_masked() -> None:
    whole = json.dumps({"user": "bob", "password": "hunter2", "items": ["x"] * 50, "token": "abcdef"})
    cut = whole[: whole.index("abcdef") + 3]  # cut inside the token's value, as the size cap does
    out = redactor().body(cut, JSON)
    assert "hunter2" not in out and "abc" not in out and '"password": "[REDACTED]"' in out
    assert out.endswith('"token": "[REDACTED]"')


def test_lone_surrogate_escapes_stay_escaped_so_the_text_encodes_as_utf8() -> None:
    out = redactor().body('{"a": "\\ud800", "password": "x"}', JSON)
    out.encode("utf-8")
    assert json.loads(out) == {"a": "\ud800", "password": MASK}


@pytest.mark.parametrize("text", ['{"a": NaN, "password": "x"}', '{"a": 1e999, "password": "x"}'])
def test_non_standard_numbers_are_never_rewritten_as_invalid_json(text: str) -> None:
    out = redactor().body(text, JSON)
    assert "x" not in out.replace("[REDACTED]", "") and "Infinity" not in out


def test_deeply_nested_json_falls_back_without_raising() -> None:
    text = '{"password": "hunter2", "deep": ' + "[" * 100_000 + "]" * 100_000 + "}"
    assert "hunter2" not in redactor().body(text, JSON)


def shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text() | st.sampled_from([VISA, "4111 1111 1111 1111", "Bearer abcdefghijkl", "p@ss"]),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(
        st.text(max_size=8) | st.sampled_from(["password", "token", "cvv", "card", "number", "payment"]),
        children, max_size=5),
    max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(json_values, st.sampled_from(["mask", "hash"]))
def test_any_json_document_stays_valid_json_of_the_same_shape(doc: Any, mode: str) -> None:
    text = json.dumps(doc)
    out = redactor(mode=mode).body(text, JSON)
    assert shape(json.loads(out)) == shape(doc)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=10), st.text(max_size=20)), max_size=8))
def test_any_form_stays_a_form_with_the_same_keys(pairs: list[tuple[str, str]]) -> None:
    body = urlencode(pairs)
    out = redactor().body(body, FORM)
    assert [k for k, _ in parse_qsl(out, keep_blank_values=True)] == \
        [k for k, _ in parse_qsl(body, keep_blank_values=True)]


# -- the bytes prefilter -----------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(json_values, st.booleans(), st.sampled_from([JSON, "text/plain", FORM]))
@example({"": "411111111111 1111"}, False, FORM)  # a card whose space the form encodes as `+`
def test_a_body_the_prefilter_passes_over_is_one_redaction_would_not_change(
        doc: Any, ascii_only: bool, content_type: str) -> None:
    text = json.dumps(doc, ensure_ascii=ascii_only)
    if content_type == FORM:
        text = urlencode(doc if isinstance(doc, dict) else {"v": json.dumps(doc)})
    r = redactor()
    for body in (text, text + " " * FOLD_AT_ONCE):  # small bodies are folded at once, large ones checked per byte first
        if not r.may_redact(body.encode("utf-8", "surrogatepass")):
            assert r.body(body, content_type) == body


@pytest.mark.parametrize("text", [
    '{"pass\\u0077ord": "hunter2"}',          # a JSON escape spells the name
    '{"to\u212aen": "abc"}',                  # the Kelvin sign lower-cases to an ASCII k
    '{"n": "4111-1111 1111-1111"}',            # a card with separators
    '{"h": "BEARER abcdefghijklmnop"}',
    '{"Access_Token": "x"}',
    "password=hunter%32",
])
def test_the_prefilter_keeps_every_body_that_redaction_changes(text: str) -> None:
    r = redactor()
    content_type = FORM if "=" in text and "{" not in text else JSON
    assert r.body(text, content_type) != text
    assert r.may_redact(text.encode())


def test_the_prefilter_passes_over_plain_large_bodies_unless_a_pattern_is_configured() -> None:
    big = b'{"data":"' + b"x" * 1_000_000 + b'"}'
    assert not redactor().may_redact(big)
    assert not redactor(enabled=False).may_redact(b'{"password": "x"}')
    assert redactor(patterns=["x{5}"]).may_redact(big)


def test_header_verdicts_are_kept_per_name_within_a_bound() -> None:
    r = redactor()
    assert r.header("X-Api-Key", "k1") == MASK and r.header("x-trace", "t") == "t"
    for i in range(3000):  # names a client chose: the kept verdicts stay bounded, and right
        assert r.header(f"x-custom-{i}", "v") == "v"
    assert r.header("X-Api-Key", "k2") == MASK and r.header("X-Auth-Token", "t") == MASK


# -- hashing ------------------------------------------------------------------------------


def test_hash_mode_is_stable_keyed_and_correlates_equal_values() -> None:
    r = redactor(mode="hash")
    first = redact_json({"password": "hunter2", "other": {"token": "hunter2"}, "pw2": {"password": "else"}}, r)
    again = redact_json({"password": "hunter2"}, redactor(mode="hash"))
    assert first["password"] == first["other"]["token"] == again["password"]
    assert first["password"].startswith("sha256:") and len(first["password"]) == len("sha256:") + 16
    assert first["pw2"]["password"] != first["password"]
    other_salt = Redactor(RedactionConfig(mode="hash"), environ={SALT_ENV: "another"})
    assert redact_json({"password": "hunter2"}, other_salt)["password"] != first["password"]


def test_hash_mode_correlates_across_json_form_query_and_headers() -> None:
    r = redactor(mode="hash")
    hashed = r.secret(VISA)
    assert redact_json({"card_number": VISA}, r)["card_number"] == hashed
    assert r.body(f"card_number={VISA}", FORM) == f"card_number={hashed}"
    assert r.query(f"/p?pan={VISA}") == f"/p?pan={hashed}"
    assert r.body(f"card {VISA}", "text/plain") == f"card {hashed}"
    assert r.header("cvv", VISA) == hashed


def test_the_salt_comes_from_the_environment_first_and_hash_mode_requires_one() -> None:
    from_config = Redactor(RedactionConfig(mode="hash", salt="a"), environ={})
    from_env = Redactor(RedactionConfig(mode="hash", salt="b"), environ={SALT_ENV: "a"})
    assert from_config.secret("x") == from_env.secret("x")
    with pytest.raises(ConfigError, match="redaction.mode.*SOFTPROBE_REDACTION_SALT"):
        Redactor(RedactionConfig(mode="hash"), environ={})


# -- config -------------------------------------------------------------------------------


def test_config_keys_load_and_are_validated(tmp_path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text("redaction:\n  mode: hash\n  extra_fields: [ssn]\n  patterns: ['\\d{3}-\\d{2}']\n")
    config = load_config(path, environ={})
    assert config.redaction.mode == "hash" and config.redaction.extra_fields == ("ssn",)
    assert config.redaction.fields == RedactionConfig().fields
    for text, key in [("redaction:\n  patterns: ['(']\n", "redaction.patterns[0]"),
                      ("redaction:\n  mode: scramble\n", "redaction.mode"),
                      ("redaction:\n  luhn: true\n", "redaction.luhn")]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
            load_config(path, environ={})
    with pytest.raises(ConfigError, match=r"redaction.extra_fields\[1\]"):
        redactor(extra_fields=["ok", "a..b"])


# -- cost ---------------------------------------------------------------------------------


def test_a_megabyte_body_is_redacted_in_linear_time() -> None:
    records = [{"id": i, "email": f"user{i}@example.com", "note": "nothing secret here at all",
                "tags": ["a", "b"], "ts": 1_700_000_000_000 + i} for i in range(8000)]
    text = json.dumps(records)
    r = redactor()
    started = time.perf_counter()
    assert r.body(text, JSON) is text
    clean = time.perf_counter() - started
    started = time.perf_counter()
    r.body(text.replace('"note"', '"password"'), JSON)
    r.body("4 " * 500_000, "text/plain")
    r.body("&".join(f"k{i}=v{i}" for i in range(100_000)), FORM)
    assert len(text) > 1_000_000 and clean < 1.0 and time.perf_counter() - started < 5.0


def test_header_fields_left_clean_are_remembered_and_secrets_never_are() -> None:
    """The worker remembers fields the redaction leaves as they are (the same host or content
    type on every exchange): only those, bounded, and a secret is redacted every time."""
    from softprobe_gateway.capture.encoding import CLEAN_FIELDS_MAX, Capture
    from softprobe_gateway.capture.exchange import Message
    from softprobe_gateway.config.schema import CaptureConfig

    capture = Capture(CaptureConfig(), RedactionConfig())
    fields = ((b"Host", b"api.example"), (b"X-Note", b"card 4111 1111 1111 1111"))
    for _ in range(2):
        headers, _ = capture.message_attributes("request", Message(fields, None))
        assert dict(headers) == {"http.request.header.host": "api.example",
                                 "http.request.header.x-note": f"card {MASK}"}
    assert capture._clean == {("host", "api.example")}
    for i in range(CLEAN_FIELDS_MAX + 10):  # unique values (ids, dates) never grow it past its bound
        capture.message_attributes("request", Message(((b"X-Request-Id", f"r{i}".encode()),), None))
    assert len(capture._clean) <= CLEAN_FIELDS_MAX
