"""Span builders and a store fixture: recorded and lookup spans as the gateway exports them."""

from __future__ import annotations

import dataclasses
import itertools
import os
import sqlite3
from pathlib import Path

import psycopg
import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status, TracesData
from softprobe_gateway.config.schema import StoreConfig
from softprobe_gateway.store.store import Store

_ids = itertools.count(1)


_clock = itertools.count(1_700_000_000_000_000_000, 1_000_000)


def _kv(key: str, value: str | int) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def request_attributes(method: str, host: str, path: str, body: str, session: str,
                       content_type: str, span_type: str) -> list[KeyValue]:
    attrs = {
        "sp.service.name": "checkout", "sp.traffic.direction": "outbound", "sp.span.type": span_type,
        "sp.session.id": session, "http.request.header.:method": method,
        "http.request.header.:path": path, "http.request.header.:authority": host,
        "http.request.header.:scheme": "http", "http.request.header.user-agent": "pytest",
        "url.path": path, "url.host": host,
    }
    if content_type:
        attrs["http.request.header.content-type"] = content_type
    if body:
        attrs["http.request.body"] = body
    return [_kv(k, v) for k, v in attrs.items()]


def extract_span(method: str = "GET", host: str = "api.test:80", path: str = "/items",
                 body: str = "", session: str = "s1", status: int = 200, answer: str = '{"ok":true}',
                 content_type: str = "", answer_type: str = "application/json") -> Span:
    """A recorded exchange, as the gateway exports it."""
    start = next(_clock)
    attrs = request_attributes(method, host, path, body, session, content_type, "extract")
    attrs += [_kv("http.response.header.:status", str(status)),
              _kv("http.response.header.content-type", answer_type),
              _kv("http.response.status_code", status)]
    if answer:
        attrs.append(_kv("http.response.body", answer))
    n = next(_ids)
    return Span(name=path.split("?")[0], trace_id=n.to_bytes(16, "big"), span_id=n.to_bytes(8, "big"),
                kind=Span.SPAN_KIND_CLIENT, start_time_unix_nano=start, end_time_unix_nano=start + 500_000,
                attributes=attrs,
                status=Status(code=Status.STATUS_CODE_ERROR if status >= 500 else Status.STATUS_CODE_UNSET))


def answered(span: Span, by: str) -> Span:
    """`span` as an exchange the gateway answered itself (`by`: hit, mock, refusal)."""
    span.attributes.append(_kv("sp.answered_by", by))
    return span


def traces(*spans: Span) -> TracesData:
    resource = Resource(attributes=[_kv("service.name", "checkout"),
                                    _kv("sp.resource.type", "sp-envoy-proxy")])
    return TracesData(resource_spans=[ResourceSpans(resource=resource,
                                                    scope_spans=[ScopeSpans(spans=list(spans))])])


def inject(method: str = "GET", host: str = "api.test:80", path: str = "/items", body: str = "",
           session: str = "s1", content_type: str = "") -> TracesData:
    """A lookup request: one CLIENT inject span with the request half of the attributes."""
    span = Span(name=path.split("?")[0], trace_id=os.urandom(16), span_id=os.urandom(8),
                kind=Span.SPAN_KIND_CLIENT,
                attributes=request_attributes(method, host, path, body, session, content_type, "inject"))
    return traces(span)


def answer_of(result: TracesData | None) -> tuple[int, str] | None:
    """(status, body) of a lookup answer's first span."""
    if result is None:
        return None
    attrs = {kv.key: kv.value for kv in result.resource_spans[0].scope_spans[0].spans[0].attributes}
    return attrs["http.response.status_code"].int_value, attrs["http.response.body"].string_value


class Stores:
    """Stores of one engine on one database, for a test: `open_store(**options)` opens one (closed
    when the test ends), `config` says where, `execute` changes its tables behind the store's back."""

    def __init__(self, engine: str, base: StoreConfig) -> None:
        self.engine, self.base = engine, base
        self.opened: list[Store] = []

    def config(self, **options) -> StoreConfig:
        return dataclasses.replace(self.base, **options)

    def __call__(self, **options) -> Store:
        store = Store(self.config(**options))
        self.opened.append(store)
        return store

    def execute(self, statement: str) -> None:
        if self.engine == "sqlite":
            with sqlite3.connect(self.base.path) as db:
                db.execute(statement)
            db.close()
        else:
            with psycopg.connect(self.base.url, autocommit=True) as db:
                db.execute(statement)


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request, tmp_path: Path):
    """The store's behaviour on both engines: a file of its own, or a database of its own."""
    if request.param == "sqlite":
        base = StoreConfig(path=str(tmp_path / "sp.db"))
    else:
        base = StoreConfig(url=request.getfixturevalue("postgres").database(migrated=True))
    stores = Stores(request.param, base)
    yield stores
    for store in stores.opened:
        store.close()
