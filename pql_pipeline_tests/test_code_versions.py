"""Code versions follow each asset's definition: after a real materialization, changing one
signal's configuration marks the feature assets and what is defined by the signals as
changed ("unsynced" in the UI), and leaves the ingest assets alone; a contract or a setting
marks exactly the assets it defines."""

import datetime as dt
import shutil

import dagster as dg
import pytest
import yaml
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest

from pql_pipeline.definitions import build_definitions
from pql_pipeline.defs.ingest.generator import GeneratorConfig, generate_events
from pql_pipeline.lib.versions import DEFINITIONS
from pql_pipeline.settings import PROJECT_ROOT
from pql_pipeline_tests.pipeline import make_pipeline, run_all

SIGNAL_DEFINED = {"user_features", "account_features", "training_set", "account_training_set",
                  "activation_milestones", "conversion_model", "pql_performance", "pql_scores", "pql_account_scores"}


def statuses(defs: dg.Definitions, instance: dg.DagsterInstance, day: str) -> dict[str, StaleStatus]:
    graph = defs.resolve_asset_graph()
    resolver = CachingStaleStatusResolver(instance, graph, LoadingContextForTest(instance))
    out = {}
    for key in graph.materializable_asset_keys:
        partition = day if graph.get(key).partitions_def is not None else None
        out[key.to_user_string()] = resolver.get_status(key, partition)
    return out


@pytest.mark.slow
def test_changing_a_signal_marks_the_features_and_not_the_events(tmp_path, monkeypatch):
    generate_events(GeneratorConfig(n_accounts=20, days=10, start_date=dt.date(2026, 3, 2), seed=3,
                                    dirty_fraction=0.0), tmp_path / "events")
    p = make_pipeline(monkeypatch, tmp_path / "events", tmp_path / "wh" / "pql.duckdb")
    day = "2026-03-11"
    assert run_all(p, "2026-03-02", day).success
    before = statuses(p.defs, p.instance, day)
    assert before["validated_events"] == before["user_features"] == StaleStatus.FRESH

    # one signal's window changes in a copy of signals.yaml
    signals = yaml.safe_load((PROJECT_ROOT / p.settings.features.signals).read_text())
    signals["signals"][0]["window_days"] = 21
    changed = tmp_path / "signals.yaml"
    changed.write_text(yaml.safe_dump(signals, sort_keys=False))
    settings = p.settings.model_copy(update={"features": p.settings.features.model_copy(
        update={"signals": str(changed)})})
    after = statuses(build_definitions(settings), p.instance, day)
    stale = {k for k, v in after.items() if v == StaleStatus.STALE}
    materialized = {k for k, v in before.items() if v == StaleStatus.FRESH}
    # the assets the signals define and that were materialized; never the events or the labels
    assert stale == SIGNAL_DEFINED & materialized
    assert {"user_features", "account_features", "training_set"} <= stale
    assert not stale & {"raw_events", "validated_events", "quarantined_events", "users", "accounts",
                        "conversion_labels"}

    # a label setting marks the labels and what is built from them, not the features
    labels = p.settings.model_copy(update={"labels": p.settings.labels.model_copy(update={"horizon_days": 14})})
    after = statuses(build_definitions(labels), p.instance, day)
    stale = {k for k, v in after.items() if v == StaleStatus.STALE}
    assert "conversion_labels" in stale and "training_set" in stale
    assert not stale & {"validated_events", "user_features", "account_features"}


def test_a_contract_change_reaches_exactly_its_assets(tmp_path, monkeypatch):
    from pql_pipeline.lib import versions

    base = {a: versions.definition_hash(_settings(), a) for a in DEFINITIONS}
    copy = tmp_path / "data_contracts"
    shutil.copytree(PROJECT_ROOT / "data_contracts", copy)
    contract = yaml.safe_load((copy / "conversion_labels.odcs.yaml").read_text())
    contract["version"] = "1.1.0"
    (copy / "conversion_labels.odcs.yaml").write_text(yaml.safe_dump(contract, sort_keys=False))
    monkeypatch.chdir(tmp_path)                       # contracts_dir() prefers ./data_contracts
    after = {a: versions.definition_hash(_settings(), a) for a in DEFINITIONS}
    assert {a for a in DEFINITIONS if after[a] != base[a]} == {"conversion_labels"}
    # a comment or a re-indented file is not a definition change
    text = (copy / "validated_events.odcs.yaml").read_text()
    (copy / "validated_events.odcs.yaml").write_text("# reviewed\n" + text)
    assert versions.definition_hash(_settings(), "validated_events") == base["validated_events"]


def test_operational_settings_change_no_version():
    from pql_pipeline.lib import versions

    s = _settings()
    crm = s.activation.crm.model_copy(update={"rate_limit_requests": 10, "concurrency": 1, "batch_size": 50})
    faster = s.model_copy(update={"activation": s.activation.model_copy(update={"crm": crm}),
                                  "warehouse": s.warehouse.model_copy(update={"memory_limit": "8GB"})})
    assert all(versions.definition_hash(faster, a) == versions.definition_hash(s, a) for a in DEFINITIONS)
    routing = s.scoring.routing.model_copy(update={"suppress_days": 7})
    rerouted = s.model_copy(update={"scoring": s.scoring.model_copy(update={"routing": routing})})
    assert {a for a in DEFINITIONS if versions.definition_hash(rerouted, a) != versions.definition_hash(s, a)} == {
        "pql_scores", "pql_account_scores", "pql_history"}


def _settings():
    from pql_pipeline.settings import load_settings

    return load_settings()
