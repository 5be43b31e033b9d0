"""The destinations' published OpenAPI schemas (reduced fragments in ``openapi/``, each
naming its source, commit, version and licence), as JSON-Schema validators for the test
stand-ins: every body the pipeline sends, and every answer a stand-in gives, must be valid."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from jsonschema import Draft202012Validator, FormatChecker

OPENAPI = Path(__file__).parent / "openapi"
INTERCOM = "intercom_2.15_data_events.json"
HUBSPOT = "hubspot_crm_v3_batch_upsert.json"


@functools.cache
def document(file: str) -> dict:
    return json.loads((OPENAPI / file).read_text())


@functools.cache
def validator(file: str, schema: str) -> Draft202012Validator:
    return Draft202012Validator({**document(file), "$ref": f"#/schemas/{schema}"}, format_checker=FormatChecker())


def problems(file: str, schema: str, body) -> list[str]:
    """What makes ``body`` invalid against ``schema`` of ``file`` (empty: valid)."""
    return [f"{'/'.join(map(str, e.absolute_path)) or '<body>'}: {e.message}"
            for e in validator(file, schema).iter_errors(body)]


def intercom_version() -> str:
    """The Intercom-Version the vendored spec describes (its default)."""
    return document(INTERCOM)["schemas"]["intercom_version"]["default"]
