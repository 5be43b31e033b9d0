"""The project's SQLite event log (``lib/instance_storage.py``) records what Dagster's own
records: the same runs on two real instance homes, one configured by the project's
dagster.yaml, one by Dagster's default, give the same events, partitions, asset records and
check records; range runs go through the batched path."""

from __future__ import annotations

import collections
import shutil
from pathlib import Path

import dagster as dg
import pytest

from pql_pipeline.lib import instance_storage

ROOT = Path(__file__).resolve().parents[2]
DAYS = dg.DailyPartitionsDefinition(start_date="2026-01-01", end_date="2026-01-08")
FAIL_ON = "2026-01-05"


@dg.asset(partitions_def=DAYS, backfill_policy=dg.BackfillPolicy.single_run())
def upstream(context) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"days": len(context.partition_keys)})


@dg.asset(partitions_def=DAYS, backfill_policy=dg.BackfillPolicy.single_run(), deps=[upstream],
          check_specs=[dg.AssetCheckSpec("rows", asset="downstream")])
def downstream(context):
    yield dg.MaterializeResult(metadata={"last": context.partition_keys[-1]})
    yield dg.AssetCheckResult(check_name="rows", passed=True)


@dg.asset(partitions_def=DAYS, backfill_policy=dg.BackfillPolicy.single_run(), deps=[downstream])
def fragile(context) -> None:
    if FAIL_ON in context.partition_keys:
        raise RuntimeError("planted failure")


DEFS = dg.Definitions(assets=[upstream, downstream, fragile],
                      jobs=[dg.define_asset_job("days", selection=[upstream, downstream, fragile], partitions_def=DAYS)])


def home_with(tmp_path: Path, name: str, yaml_text: str, monkeypatch) -> dg.DagsterInstance:
    home = tmp_path / name
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml_text)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return dg.DagsterInstance.get()


def runs(instance: dg.DagsterInstance) -> dict:
    """Everything the two storages must agree on, free of ids and timestamps."""
    job = DEFS.resolve_job_def("days")
    rows = []      # the assets' rows (the UI's "latest materialization") after each run
    for first, last in (("2026-01-01", "2026-01-03"), ("2026-01-04", "2026-01-06"), ("2026-01-06", "2026-01-07"),
                        ("2026-01-02", "2026-01-02")):
        tags = ({"dagster/partition": first} if first == last else
                {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last})
        job.execute_in_process(instance=instance, raise_on_error=False, tags=tags)
        newest = instance.get_runs()[0].run_id
        rows.append([(r.asset_entry.asset_key.to_user_string(), r.asset_entry.last_run_id == newest,
                      r.asset_entry.last_materialization_record.partition_key
                      if r.asset_entry.last_materialization_record else None)
                     for r in instance.get_asset_records()])
    out: dict = {"events": [], "assets": {}, "rows": rows}
    for run in reversed(instance.get_runs()):
        types = collections.Counter(
            (r.dagster_event.event_type_value, r.dagster_event.partition) for r in instance.all_logs(run.run_id)
            if r.dagster_event and r.dagster_event.asset_key)
        out["events"].append((run.status.value, sorted(types.items(), key=str)))
    storage = instance.event_log_storage
    for asset in ("upstream", "downstream", "fragile"):
        key = dg.AssetKey(asset)
        latest = instance.get_latest_materialization_event(key)
        record = instance.get_asset_records([key])
        attempts = storage.get_latest_asset_partition_materialization_attempts_without_materializations(key)
        out["assets"][asset] = {
            "materialized": sorted(instance.get_materialized_partitions(key)),
            "latest_partition": latest.dagster_event.partition if latest else None,
            "latest_metadata": dict(latest.asset_materialization.metadata) if latest else None,
            "has_record": bool(record),
            "attempts_without_materialization": sorted(attempts),
        }
    check = dg.AssetCheckKey(dg.AssetKey("downstream"), "rows")
    out["checks"] = sorted(
        ((r.partition, r.status.value) for r in storage.get_asset_check_execution_history(check, limit=100)), key=str)
    return out


@pytest.fixture
def batches(monkeypatch):
    seen = []
    real = instance_storage.SqliteEventLogStorage._store_asset_events

    def spy(self, events):
        seen.append(len(events))
        return real(self, events)

    monkeypatch.setattr(instance_storage.SqliteEventLogStorage, "_store_asset_events", spy)
    return seen


def test_same_records_as_dagsters_sqlite_storage(tmp_path, monkeypatch, batches):
    monkeypatch.delenv("DAGSTER_EVENT_BATCH_SIZE", raising=False)
    with home_with(tmp_path, "dagster_default", "telemetry:\n  enabled: false\n", monkeypatch) as inst:
        assert type(inst.event_log_storage).__module__.startswith("dagster.")
        expected = runs(inst)
    assert not batches
    shutil.copy(ROOT / "dagster.yaml", tmp_path / "project.yaml")
    with home_with(tmp_path, "project", (tmp_path / "project.yaml").read_text(), monkeypatch) as inst:
        assert isinstance(inst.event_log_storage, instance_storage.SqliteEventLogStorage)
        got = runs(inst)
    assert got == expected
    # the failed range left its days planned but not materialized, as Dagster's storage does
    assert got["assets"]["fragile"]["attempts_without_materialization"] == ["2026-01-04", "2026-01-05"]
    assert ("upstream", True, "2026-01-07") in got["rows"][2] and ("upstream", True, "2026-01-02") in got["rows"][3]
    assert got["assets"]["downstream"]["materialized"] == [f"2026-01-0{d}" for d in range(1, 8)]
    # range runs wrote their planned and materialized days as batches of one transaction each
    assert max(batches) >= 3
    assert sum(n for n in batches if n > 1) >= 2 * 3 * 3


def test_engines_are_reused_and_bounded(tmp_path, monkeypatch):
    shutil.copy(ROOT / "dagster.yaml", tmp_path / "project.yaml")
    with home_with(tmp_path, "project", (tmp_path / "project.yaml").read_text(), monkeypatch) as inst:
        storage = inst.event_log_storage
        job = DEFS.resolve_job_def("days")
        for day in range(1, 8):
            job.execute_in_process(instance=inst, raise_on_error=False, tags={"dagster/partition": f"2026-01-0{day}"})
            index = storage._engines.get("index")
            assert index is not None and index is storage._engines["index"]
        assert len(storage._engines) <= instance_storage.KEEP_RUN_ENGINES + 1
        assert len(inst.get_runs()) == 7
        # an evicted run's shard is still read (a new engine is made for it)
        first = inst.get_runs()[-1]
        assert any(r.dagster_event and r.dagster_event.is_step_materialization for r in inst.all_logs(first.run_id))


@pytest.mark.parametrize("dagster_home", [None, "another"])
def test_an_instance_opened_by_its_folder_keeps_its_events_there(tmp_path, monkeypatch, dagster_home):
    """``DagsterInstance.from_config(folder)`` (scripts, notebooks, tests): the folder, whether
    DAGSTER_HOME is unset or names another instance."""
    if dagster_home:
        monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / dagster_home))
    else:
        monkeypatch.delenv("DAGSTER_HOME", raising=False)
    home = tmp_path / "elsewhere"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as inst:
        assert isinstance(inst.event_log_storage, instance_storage.SqliteEventLogStorage)
        result = DEFS.resolve_job_def("days").execute_in_process(
            instance=inst, raise_on_error=False, tags={"dagster/partition": "2026-01-01"})
        assert result.success
    assert (home / "history" / "runs" / f"{result.run_id}.db").exists()
    assert not (tmp_path / "another").exists()
    with dg.DagsterInstance.from_config(str(home)) as inst:
        assert inst.get_materialized_partitions(dg.AssetKey("upstream")) == {"2026-01-01"}


CHART = "![chart](data:image/png;base64," + "A" * 5_000 + ")"


@dg.asset(partitions_def=DAYS, backfill_policy=dg.BackfillPolicy.single_run())
def charted(context) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"rows": len(context.partition_keys), "chart": dg.MetadataValue.md(CHART),
                                          "table": dg.MetadataValue.md("| a |\n|---|\n| 1 |")})


def test_a_ranges_large_metadata_is_stored_once(tmp_path, monkeypatch):
    """A range run repeats its metadata on every partition's materialization; a large entry is
    kept on the newest partition's (the latest materialization the UI shows) and the other
    days name it; small entries stay on every day, and a one-day run keeps everything."""
    shutil.copy(ROOT / "dagster.yaml", tmp_path / "project.yaml")
    defs = dg.Definitions(assets=[charted])
    with home_with(tmp_path, "project", (tmp_path / "project.yaml").read_text(), monkeypatch) as inst:
        job = defs.resolve_implicit_global_asset_job_def()
        assert job.execute_in_process(instance=inst, tags={"dagster/asset_partition_range_start": "2026-01-01",
                                                           "dagster/asset_partition_range_end": "2026-01-04"}).success
        key = dg.AssetKey("charted")
        latest = inst.get_latest_materialization_event(key)
        assert latest.dagster_event.partition == "2026-01-04"
        assert latest.asset_materialization.metadata["chart"].value == CHART
        by_day = {r.partition_key: r.asset_materialization.metadata
                  for r in inst.fetch_materializations(key, limit=10).records}
        assert sorted(by_day) == ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04"]
        for day in ("2026-01-01", "2026-01-02", "2026-01-03"):
            assert by_day[day]["chart"].value == "the range run's chart: kept once, on partition 2026-01-04"
            assert by_day[day]["rows"].value == 4 and by_day[day]["table"].value == "| a |\n|---|\n| 1 |"
        assert job.execute_in_process(instance=inst, partition_key="2026-01-02").success
        assert inst.get_latest_materialization_event(key).asset_materialization.metadata["chart"].value == CHART
