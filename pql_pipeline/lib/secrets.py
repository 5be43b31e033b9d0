"""Keeping secrets out of everything the pipeline stores or prints.

A destination may quote a request back in an error body (its ``Authorization`` header, a
signature); alert texts may carry a check's message. ``redact`` removes, before such a text
is stored (ledger, rejections, run metadata) or logged:

- the values of the pipeline's secret variables (``SECRET_ENV``) and any secret passed in,
  as written and as JSON or URL encoding would quote them;
- ``Bearer <token>`` / ``Basic <credentials>`` of any token, and ``sha256=<hex>`` signatures;
- Slack webhook URLs (the URL is the credential).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from urllib.parse import quote

SECRET_ENV = ("HUBSPOT_ACCESS_TOKEN", "INTERCOM_ACCESS_TOKEN", "PQL_WEBHOOK_SECRET", "PQL_ALERT_WEBHOOK_URL")
REDACTED = "[redacted]"
MIN_SECRET_LENGTH = 6     # shorter values would redact ordinary words
_SCHEMES = re.compile(r"(?i)\b(bearer|basic|token)(\s+|\\u0020|%20)[A-Za-z0-9._~+/=\\-]+")
_SIGNATURE = re.compile(r"(?i)\bsha256=[0-9a-f]{16,}")
_SLACK = re.compile(r"https://hooks\.slack\.com/\S+")


def _forms(secret: str) -> set[str]:
    """How a value can appear in an answer: verbatim, JSON-escaped, URL-encoded."""
    return {secret, json.dumps(secret)[1:-1], quote(secret, safe=""), quote(secret)}


def redact(text, secrets: Iterable[str | None] = ()) -> str:
    """``text`` without secret values, credentials in authorization schemes, signatures or
    webhook URLs. ``secrets``: values known to the caller (a client's token) besides the
    environment's secret variables."""
    out = "" if text is None else str(text)
    values = [(os.environ.get(name) or "").strip() for name in SECRET_ENV] + [(s or "").strip() for s in secrets]
    # longest first, so a secret containing another is removed whole
    for value in sorted({v for v in values if len(v) >= MIN_SECRET_LENGTH}, key=len, reverse=True):
        for form in sorted(_forms(value), key=len, reverse=True):
            out = out.replace(form, REDACTED)
    out = _SCHEMES.sub(lambda m: f"{m.group(1)} {REDACTED}", out)
    out = _SIGNATURE.sub(f"sha256={REDACTED}", out)
    return _SLACK.sub("[redacted webhook]", out)
