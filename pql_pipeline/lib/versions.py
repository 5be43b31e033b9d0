"""Code versions derived from each asset's definition.

An asset's ``code_version`` is its logic version (bumped in code when its SQL or Python
changes meaning, with the signal definitions' hash where they matter), followed by a hash of
what else defines its rows: the configuration keys it reads and the data contracts it
writes or reads. Changing one of those marks exactly the assets that depend on it as
changed ("unsynced" in the UI); operational settings (rate limits, batch sizes, memory)
change no row and are left out.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

import yaml

from pql_pipeline.settings import Settings, contracts_dir

# asset -> (configuration keys, contracts) that define its rows
DEFINITIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "raw_events": (("source.pattern", "source.format", "validation.contract"), ("raw_events", "segment_events")),
    "validated_events": (("validation",), ("segment_events", "validated_events")),
    "quarantined_events": (("validation",), ("segment_events", "validated_events")),
    "duplicate_events": (("validation",), ("segment_events", "validated_events")),
    "users": (("segments",), ("users", "validated_events")),
    "accounts": (("segments",), ("accounts", "validated_events")),
    "user_features": (("features.active_within_days", "segments"), ("features",)),
    "account_features": (("features.active_within_days", "segments", "labels.paid_plans"), ("features",)),
    "conversion_labels": (("labels",), ("conversion_labels",)),
    "training_set": (("training", "labels"), ("training_set",)),
    "account_training_set": (("training", "labels"), ("training_set",)),
    "activation_milestones": (("milestones", "labels"), ("activation_milestones",)),
    "conversion_model": (("model", "training", "labels.horizon_days"), ("training_set",)),
    "pql_performance": (("model", "labels.horizon_days"), ("training_set",)),
    "pql_scores": (("scoring", "segments", "model.pql_threshold", "model.pinned_version"), ()),
    "pql_account_scores": (("scoring", "segments", "model.pql_threshold", "model.pinned_version"), ()),
    "pql_history": (("scoring",), ()),
    "drift_report": (("monitoring.drift", "monitoring.stream", "monitoring.performance", "monitoring.incident"), ()),
    "crm_sync": (("activation.crm.destination", "activation.crm.base_url", "activation.crm.company_id_property",
                  "activation.crm.contact_id_property", "activation.crm.sync_companies",
                  "activation.crm.sync_contacts"), ()),
    "in_app_nudges": (("activation.in_app.enabled", "activation.in_app.channel", "activation.in_app.event_name",
                       "activation.in_app.cap_days", "activation.in_app.intercom_url",
                       "activation.in_app.webhook_url"), ()),
}


def setting(settings: Settings, dotted: str):
    value = settings
    for part in dotted.split("."):
        value = getattr(value, part)
    if isinstance(value, list):
        return [v.model_dump(mode="json") if hasattr(v, "model_dump") else v for v in value]
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


@lru_cache(maxsize=64)
def contract_digest(path: Path, mtime_ns: int) -> str:
    """The contract's content (parsed: comments and layout do not count)."""
    content = yaml.safe_load(path.read_text())
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def definition_hash(settings: Settings, asset: str) -> str | None:
    """Short hash of the configuration and contracts that define ``asset``'s rows (None for
    an asset this module does not know)."""
    if asset not in DEFINITIONS:
        return None
    keys, contracts = DEFINITIONS[asset]
    parts = {"settings": {k: setting(settings, k) for k in keys}, "contracts": {}}
    for name in contracts:
        path = contracts_dir() / f"{name}.odcs.yaml"
        parts["contracts"][name] = contract_digest(path, path.stat().st_mtime_ns)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def code_version(settings: Settings, asset: str, logic: str | None) -> str | None:
    """``logic`` (the asset's own version, e.g. ``1-<signals hash>``) plus its definition hash."""
    h = definition_hash(settings, asset)
    if h is None:
        return logic
    return f"{logic or '1'}+{h}"
