"""Redaction of secrets in what the gateway records: passwords, tokens, card numbers, CVVs.

It applies to recorded data only (span attributes and lookup requests, everything that leaves
the process), never to the traffic proxied between client and upstream. Fields are found by
name or dotted path inside JSON, form and query data and their values replaced in place, so
the data keeps its structure (JSON stays JSON of the same shape, a form stays a form); values
that look like secrets (a Luhn-valid card number, a bearer token, configured patterns) are
replaced wherever they occur. `mode: hash` replaces a secret with a keyed hash instead of a
mask, so equal secrets still correlate across recordings and replays without being readable.

What is a secret is said in `secret_rules`, the check on a body's raw bytes that lets most
bodies skip all of this in `prefilter`; this module applies them to headers, URLs, forms and
JSON. A `Redactor` is compiled once per config. Its methods are pure functions of strings, linear in
their input, safe to share between threads, and return their input unchanged (the same
object) when nothing matched.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote_plus, unquote_plus

from softprobe_gateway.capture.prefilter import Prefilter
from softprobe_gateway.capture.secret_rules import BEARER, Cards, Fields, Pattern
from softprobe_gateway.config.schema import ConfigError, RedactionConfig

SALT_ENV = "SOFTPROBE_REDACTION_SALT"
FORM = "application/x-www-form-urlencoded"
# Header values that are URLs: their query (and fragment, for OAuth implicit-flow redirects)
# is redacted like a request's query.
URL_HEADERS = frozenset({":path", "location", "content-location", "referer"})
# One `"key": value` member of a JSON text that does not parse (a body cut at the size cap):
# a string value may run to the end of the text.
JSON_MEMBER = re.compile(
    r'"((?:[^"\\]|\\.){1,256})"\s*:\s*("(?:[^"\\]|\\.)*(?:"|\\?\Z)|-?[0-9][0-9.eE+-]*)')
PAIR_SAFE = "[]:"  # kept readable in a replaced form or query value: `[REDACTED]`, `sha256:...`
SPARSE_JSON = 256  # at most one '"' per this many characters: a JSON text is mostly values


def _finite(literal: str) -> float:
    value = float(literal)
    if value in (float("inf"), float("-inf")):
        raise ValueError("number out of range")  # json.dumps would write the invalid `Infinity`
    return value


def _not_json(literal: str) -> Any:
    raise ValueError(f"{literal} is not JSON")


class Redactor:
    """The redaction rules of one config, compiled."""

    def __init__(self, config: RedactionConfig, environ: Mapping[str, str] = os.environ) -> None:
        self.enabled = config.enabled
        self.mask = config.mask
        self.fields = Fields(
            [(f"redaction.fields[{i}]", f) for i, f in enumerate(config.fields)]
            + [(f"redaction.extra_fields[{i}]", f) for i, f in enumerate(config.extra_fields)])
        self.values: list[Pattern | Cards] = [Pattern(re.compile(p)) for p in config.patterns]
        if config.bearer_tokens:
            self.values.append(Pattern(BEARER, min_length=15, hint="bearer"))
        if config.luhn_cards:
            self.values.append(Cards())
        self.shortest = min((rule.min_length for rule in self.values), default=0)
        self.prefilter = Prefilter(self.fields.hints, patterns=bool(config.patterns),
                                   luhn_cards=config.luhn_cards, bearer_tokens=config.bearer_tokens)
        self.key: bytes | None = None
        if config.mode == "hash":
            salt = environ.get(SALT_ENV) or config.salt
            if not salt:
                # Unkeyed, a 3-digit CVV or a common password is undone by trying every candidate.
                raise ConfigError(f"key 'redaction.mode': hash needs a salt "
                                  f"(redaction.salt or the {SALT_ENV} environment variable)")
            self.key = salt.encode("utf-8")

    # -- the interface ----------------------------------------------------------------------

    def may_redact(self, raw: bytes) -> bool:
        """False when nothing in this (decoded) body can be redacted, decided on its bytes: most
        bodies, above all large ones, then skip parsing and every pattern scan (`prefilter`)."""
        return self.enabled and self.prefilter.may_match(raw)

    def body(self, text: str, content_type: str | None) -> str:
        """A text body: JSON and form fields by name, then value patterns everywhere."""
        if not self.enabled or not text:
            return text
        mime = (content_type or "").split(";", 1)[0].strip().lower()
        if mime == FORM:
            return self._pairs(text)
        if "json" not in mime and text.lstrip()[:1] not in ("{", "["):
            return self._values(text)  # no field names outside JSON and forms
        # Few strings in much text (a large blob): parsing and walking is cheaper than scanning
        # the text for every field name. Otherwise most bodies are decided by the scans alone.
        # The scans read the text as written: a `\u` escape can spell a name they miss.
        sparse = text.count('"') < len(text) // SPARSE_JSON
        if (not sparse and "\\u" not in text and not self.fields.may_occur(text)
                and not self._has_values(text)):
            return text
        redacted = self._json(text)
        return redacted if redacted is not None else self._values(self._json_members(text))

    def header(self, name: str, value: str) -> str:
        """A header (or pseudo-header) value: secret by name (an `x-` prefix ignored), a URL's
        query, or value patterns."""
        if not self.enabled:
            return value
        lower = name.lower()
        if lower in URL_HEADERS:
            return self.query(value)
        if self.fields.matches((lower.removeprefix("x-"),)):  # `X-Access-Token` is `access_token`
            return self.secret(value)
        return self._values(value)

    def query(self, path_with_query: str) -> str:
        """A path or URL: query and fragment parameters by name, value patterns in the rest."""
        if not self.enabled:
            return path_with_query
        rest, hash_, fragment = path_with_query.partition("#")
        path, mark, query = rest.partition("?")
        parts = (self._values(path), self._pairs(query), self._pairs(fragment))
        if parts[0] is path and parts[1] is query and parts[2] is fragment:
            return path_with_query
        return f"{parts[0]}{mark}{parts[1]}{hash_}{parts[2]}"

    def secret(self, value: str) -> str:
        """What a secret is recorded as: the mask, or `sha256:` and 16 hex digits of its keyed hash."""
        if self.key is None:
            return self.mask
        digest = hmac.new(self.key, value.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return f"sha256:{digest.hexdigest()[:16]}"

    # -- structures -------------------------------------------------------------------------

    def _has_values(self, text: str) -> bool:
        return any(True for rule in self.values for _ in rule.spans(text))

    def _values(self, text: str) -> str:
        """Every value-pattern match replaced; overlapping matches are replaced as one."""
        if len(text) < self.shortest or not self.values:
            return text
        spans = sorted(span for rule in self.values for span in rule.spans(text))
        merged: list[list[int]] = []
        for start, end in spans:
            if merged and start < merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            elif end > start:
                merged.append([start, end])
        if not merged:
            return text
        out, last = [], 0
        for start, end in merged:
            out += (text[last:start], self.secret(text[start:end]))
            last = end
        out.append(text[last:])
        return "".join(out)

    def _pairs(self, text: str) -> str:
        """Form or query pairs with secret values replaced; other pairs kept byte for byte."""
        if not text:
            return text
        pieces = text.split("&")
        changed = False
        for i, piece in enumerate(pieces):
            raw_key, sep, raw_value = piece.partition("=")
            if not sep:
                new = self._values(piece)
                changed, pieces[i] = changed or new is not piece, new
                continue
            value = unquote_plus(raw_value)
            if self.fields.matches(_pair_path(unquote_plus(raw_key))):
                new = self.secret(value)
            elif (new := self._values(value)) is value:
                continue
            pieces[i] = f"{raw_key}={quote_plus(new, safe=PAIR_SAFE)}"
            changed = True
        return "&".join(pieces) if changed else text

    def _json(self, text: str) -> str | None:
        """Redacted JSON (re-serialized compactly), the text itself when nothing matched, or None
        when it is not JSON (or nested too deep to walk)."""
        try:
            walk = _JsonWalk(self)
            doc = walk.node(json.loads(text, parse_float=_finite, parse_constant=_not_json), ())
            if not walk.changed:
                return text
            out = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
        except (ValueError, RecursionError):
            return None
        try:
            out.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates from `\ud800` escapes: keep them escaped
            out = json.dumps(doc, separators=(",", ":"))
        return out

    def _json_members(self, text: str) -> str:
        """JSON that does not parse (cut at the size cap): secret `"name": value` members found
        textually, their values replaced by a JSON string."""
        def member(m: re.Match[str]) -> str:
            if not self.fields.matches((m[1],)):
                return m[0]
            value = m[2].strip('"')  # a string cut at the end of the text has no closing quote
            return f"{m[0][:m.start(2) - m.start()]}{json.dumps(self.secret(value))}"
        return JSON_MEMBER.sub(member, text)


def _pair_path(key: str) -> tuple[str, ...]:
    """`card[number]` and `card.number` are the path (card, number); list indexes are dropped."""
    if "." not in key and "[" not in key:
        return (key,)
    segments = tuple(s for s in re.split(r"[.\[\]]", key) if s and not s.isdigit())
    return segments or (key,)


class _JsonWalk:
    """One walk over a parsed JSON document, replacing secrets in place."""

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor
        self.changed = False
        self.secret_paths: dict[tuple[str, ...], bool] = {}  # arrays of records repeat their keys

    def secret(self, path: tuple[str, ...]) -> bool:
        known = self.secret_paths.get(path)
        if known is None:
            known = self.secret_paths[path] = self.redactor.fields.matches(path)
        return known

    def node(self, value: Any, path: tuple[str, ...]) -> Any:
        if isinstance(value, dict):
            for key, item in value.items():
                sub = path + (key,)
                if self.secret(sub):
                    self.changed = True
                    value[key] = self.scrub(item)
                else:
                    value[key] = self.node(item, sub)
            return value
        if isinstance(value, list):
            for i, item in enumerate(value):
                value[i] = self.node(item, path)
            return value
        if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
            text = value if isinstance(value, str) else str(value)
            redacted = self.redactor._values(text)
            if redacted is not text:
                self.changed = True
                return redacted
        return value

    def scrub(self, value: Any) -> Any:
        """Every scalar under a secret field replaced, containers kept (null and booleans say nothing)."""
        if isinstance(value, dict):
            return {k: self.scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.scrub(v) for v in value]
        if value is None or isinstance(value, bool):
            return value
        return self.redactor.secret(value if isinstance(value, str) else json.dumps(value))
