"""Softprobe's published schemas (`spec/schemas/` of the public `softprobe/hybrid` repository,
vendored unchanged in `schemas/` beside this module, see tests/schemas/README.md): a case file, a
rules document (the control API's rules request, each rule `rule.schema.json`), checked with
jsonschema. The errors come back as readable lines, each naming where in the document it is."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

HERE = Path(__file__).resolve().parent / "schemas"
CASE, RULES = "case.schema.json", "session-rules.request.schema.json"
MAX_ERRORS = 50  # a file wrong everywhere is not reported line by line beyond this


@cache
def _validator(name: str) -> Draft202012Validator:
    schemas = {path.name: json.loads(path.read_text()) for path in HERE.glob("*.json")}
    resources = [(schema["$id"], Resource.from_contents(schema)) for schema in schemas.values()]
    return Draft202012Validator(schemas[name], registry=Registry().with_resources(resources))


def errors(document: Any, schema: str) -> list[str]:
    """Where `document` breaks the schema, one line each (`$.traces[0].resourceSpans: ...`)."""
    found = sorted(_validator(schema).iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{e.json_path}: {e.message}" for e in found[:MAX_ERRORS]]


def rules_document(document: Any) -> Any:
    """A rules file as the control API takes it: a bare list of rules is `{"rules": [...]}`."""
    return {"rules": document} if isinstance(document, list) else document
