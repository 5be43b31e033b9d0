import dagster as dg

from pql_pipeline.definitions import (
    ACTIVATION_JOB,
    DAILY_JOB,
    FEATURES_JOB,
    INGEST_JOB,
    MODEL_JOB,
    PIPELINE_JOB,
    RETRAIN_JOB,
    SCORING_JOB,
    defs,
)

INGEST = {"raw_events", "validated_events", "quarantined_events", "duplicate_events", "users", "accounts"}
FEATURES = {"user_features", "account_features", "conversion_labels", "training_set", "account_training_set",
            "activation_milestones"}
MODEL = {"conversion_model", "pql_scores", "pql_account_scores", "pql_history", "pql_performance"}
ACTIVATION = {"crm_sync", "in_app_nudges"}
MONITORING = {"drift_report", "pql_report"}


def test_definitions_load_and_list_the_pipeline():
    dg.Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    assert keys == INGEST | FEATURES | MODEL | ACTIVATION | MONITORING
    for job in (INGEST_JOB, FEATURES_JOB, PIPELINE_JOB, MODEL_JOB, SCORING_JOB, ACTIVATION_JOB, DAILY_JOB, RETRAIN_JOB):
        assert defs.resolve_job_def(job) is not None


def test_every_asset_reads_as_a_stage_of_the_pipeline():
    """Group = stage = the pql/stage tag; an owner, kinds (the engine and the destination) and a
    description on every asset, so the asset graph in the UI reads as the pipeline."""
    stages = {"ingest": INGEST, "features": FEATURES, "model": MODEL, "scoring": MODEL, "monitoring": MONITORING,
              "activation": ACTIVATION}
    kinds = {}
    for spec in defs.resolve_all_asset_specs():
        name = spec.key.to_user_string()
        assert name in stages[spec.group_name] and spec.tags["pql/stage"] == spec.group_name, name
        assert spec.owners == ["team:data-engineering"] and len(spec.description or "") > 60, name
        assert "duckdb" in spec.kinds, name
        kinds[name] = set(spec.kinds)
    assert {"sklearn"} <= kinds["conversion_model"] and {"hubspot"} <= kinds["crm_sync"]
    assert {"intercom"} <= kinds["in_app_nudges"] and {"html"} <= kinds["pql_report"]


def test_the_report_follows_the_scores_but_not_the_drift_gates():
    graph = defs.resolve_asset_graph()
    report = dg.AssetKey("pql_report")
    assert dg.AssetKey("drift_report") not in graph.get(report).parent_keys
    assert {dg.AssetKey("pql_history"), dg.AssetKey("pql_scores")} <= graph.get(report).parent_keys
    for job in (SCORING_JOB, DAILY_JOB):
        assert report in defs.resolve_job_def(job).asset_layer.selected_asset_keys, job


def test_every_asset_has_checks_and_the_gates_block():
    graph = defs.resolve_asset_graph()
    checks = {(k.asset_key.to_user_string(), k.name): graph.get_check_spec(k) for k in graph.asset_check_keys}
    for asset in (INGEST | FEATURES | MODEL | ACTIVATION | MONITORING) - {"pql_history"}:
        assert any(a == asset for a, _ in checks), f"{asset} has no check"
    for gate in ("auc_floor", "beats_rules", "calibration", "no_dominant_feature"):
        assert checks[("conversion_model", gate)].blocking, gate
    assert checks[("pql_scores", "scores_valid")].blocking
    assert checks[("pql_account_scores", "account_scores_valid")].blocking
    assert checks[("crm_sync", "crm_sync_reconciles")].blocking
    assert not checks[("drift_report", "crm_sync_timely")].blocking
    # a tracking outage, and severe drift of the model's top features, hold the outputs; the rest warns
    assert checks[("drift_report", "event_stream_stable")].blocking
    assert not checks[("drift_report", "feature_drift")].blocking
    assert checks[("drift_report", "top_feature_drift")].blocking
    assert not checks[("drift_report", "prediction_drift")].blocking
    assert not checks[("drift_report", "performance_decay")].blocking
    assert checks[("pql_scores", "pql_volume")].blocking
    assert not checks[("pql_performance", "pql_lift")].blocking
    for gate in ("reconciliation", "quarantine_rate", "validated_events_contract"):
        assert checks[("validated_events", gate)].blocking, gate
    assert not checks[("raw_events", "raw_events_volume")].blocking
    assert checks[("training_set", "leakage_guard")].blocking
    assert checks[("conversion_labels", "label_base_rate")].blocking
    assert checks[("user_features", "user_features_contract")].blocking
    assert not checks[("user_features", "user_features_null_rates")].blocking


def test_partitioned_assets_share_one_partitions_definition_and_single_run_backfills():
    graph = defs.resolve_asset_graph()
    parts = set()
    for key in ("raw_events", "validated_events", "quarantined_events", "user_features", "account_features",
                "conversion_labels"):
        node = graph.get(dg.AssetKey(key))
        parts.add(node.partitions_def)
        assert node.backfill_policy == dg.BackfillPolicy.single_run()
    assert len(parts) == 1
