"""features.engine: spark computes the same features as DuckDB, from the same SQL.

Spark runs in local mode (pyspark, the optional ``spark`` extra that ``make test``
installs; Java 17). Results are compared value by value with the DuckDB engine's rows:
exactly for keys, integers, flags, dates, timestamps and text; floating-point values to
1e-9 relative, or within one unit of the 6th decimal where the stored value is rounded
to 6 decimals (the two engines add the same numbers in a different order, which can move
an average across a rounding boundary).
"""

import datetime as dt
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pql_pipeline.defs.features.features import compute_features
from pql_pipeline.lib.spark import MANIFEST, SparkFeatures
from pql_pipeline.settings import DEFAULT_CONFIG, SparkSettings
from pql_pipeline_tests.defs.features.conftest import spec

# the hand-built history of the cache tests: late arrivals, an anonymous id identified
# later, trait changes, windows and signup-relative signals
from pql_pipeline_tests.defs.features.test_cache import DAYS, SIGS, history, versions  # noqa: F401
from pql_pipeline_tests.pipeline import generated_pipeline, make_pipeline, materialized

ROUNDING_UNIT = 1.000001e-6
# several shuffle partitions and adaptive execution, as users run Spark (a result that
# depends on partitioning must show here); no web UI
SPARK_TEST_CONF = {"spark.sql.shuffle.partitions": "4", "spark.default.parallelism": "2",
                   "spark.driver.memory": "1g", "spark.ui.enabled": "false"}


@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    s = SparkFeatures(SparkSettings(master="local[2]", conf=SPARK_TEST_CONF),
                      str(tmp_path_factory.mktemp("spark_staging")))
    yield s
    s.spark.stop()  # the JVM's memory back for the worker's other tests


def rows(conn, table: str) -> list[dict]:
    cur = conn.execute(f"SELECT * FROM {table} ORDER BY ALL")
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def differences(expected: list[dict], got: list[dict], key: tuple[str, ...]) -> list[str]:
    """Value-by-value differences (floats to 1e-9 relative), as readable lines."""
    out = []
    exp = {tuple(r[k] for k in key): r for r in expected}
    act = {tuple(r[k] for k in key): r for r in got}
    out += [f"missing {k}" for k in sorted(set(exp) - set(act), key=str)[:5]]
    out += [f"unexpected {k}" for k in sorted(set(act) - set(exp), key=str)[:5]]
    for k in sorted(set(exp) & set(act), key=str):
        for col, want in exp[k].items():
            have = act[k].get(col)
            if isinstance(want, float) and isinstance(have, float):
                # values are stored rounded to 6 decimals: a sum in another order can move an
                # average across a rounding boundary, by one unit of the last decimal
                same = (math.isnan(want) and math.isnan(have)) or math.isclose(want, have, rel_tol=1e-9) or (
                    round(want, 6) == want and abs(want - have) <= ROUNDING_UNIT)
            else:
                same = want == have and type(want) is type(have)
            if not same:
                out.append(f"{k} {col}: duckdb {want!r} spark {have!r}")
    return out


def test_the_hand_built_history_has_a_signal_of_every_kind():
    """So that the engines are compared on every kind of signal the configuration accepts."""
    from pql_pipeline.signals import ACCOUNT_KINDS, USER_KINDS

    assert {s.kind for s in SIGS.signals} == set(USER_KINDS)
    assert {s.kind for s in SIGS.account_signals} == set(ACCOUNT_KINDS)


def test_spark_gives_duckdbs_features_on_the_hand_built_history(history, fconn, spark):  # noqa: F811
    versions(fconn, *DAYS)
    compute_features(fconn, spec(SIGS), DAYS)  # DuckDB, feature cache and advanced state as in production
    duck = {t: rows(fconn, t) for t in ("user_features", "account_features")}
    assert len(duck["user_features"]) > 10 and duck["account_features"]
    run = compute_features(fconn, spec(SIGS), DAYS, spark=spark)
    assert run.staging["partitions_staged"] == len(DAYS)
    assert run.user_rows == len(duck["user_features"]) and run.account_rows == len(duck["account_features"])
    assert differences(duck["user_features"], rows(fconn, "user_features"), ("snapshot_date", "user_id")) == []
    assert differences(duck["account_features"], rows(fconn, "account_features"), ("snapshot_date", "account_id")) == []
    # the Spark run left no relation and no result file behind; the staged inputs stay for the next run
    assert not list(Path(spark.root, "results").glob("*/*"))
    assert sorted(p.name for p in Path(spark.root, "validated_events").iterdir()) == [
        f"{d.isoformat()}.parquet" for d in DAYS]
    assert not spark.spark.catalog.tableExists("fx_user_features")


def test_staging_rewrites_only_partitions_validated_again(history, fconn, spark, world):  # noqa: F811
    versions(fconn, *DAYS)
    first = compute_features(fconn, spec(SIGS), DAYS, spark=spark)
    # the module's staging may hold these days from another test's warehouse: what counts is
    # that the second run reuses every partition and a new version is staged again
    assert first.staging["partitions_staged"] + first.staging["partitions_reused"] == len(DAYS)
    again = compute_features(fconn, spec(SIGS), DAYS, spark=spark)
    assert again.staging == {"partitions_staged": 0, "partitions_reused": len(DAYS), "from_catalog": []}
    before = {r["user_id"]: r["projects"] for r in rows(fconn, "user_features")
              if r["snapshot_date"] == dt.date(2026, 3, 9)}
    # validation rebuilds 03-05 with one more project for u2: only that partition is staged again
    world.track("2026-03-05 15:00", "Project Created", user="u2")
    versions(fconn, dt.date(2026, 3, 5), version="v2")
    third = compute_features(fconn, spec(SIGS), DAYS, spark=spark)
    assert third.staging["partitions_staged"] == 1 and third.staging["partitions_reused"] == len(DAYS) - 1
    after = {r["user_id"]: r["projects"] for r in rows(fconn, "user_features")
             if r["snapshot_date"] == dt.date(2026, 3, 9)}
    assert after["u2"] == before["u2"] + 1 and after["u1"] == before["u1"]
    assert fconn.execute(f"SELECT version FROM {MANIFEST} WHERE partition_date = DATE '2026-03-05'"
                         ).fetchall() == [("v2",)]


def test_tables_the_cluster_already_has_are_read_from_its_catalog(history, fconn, spark, tmp_path):  # noqa: F811
    versions(fconn, *DAYS)
    compute_features(fconn, spec(SIGS), DAYS)
    duck = rows(fconn, "user_features")
    # the cluster's copy of the events: a table in Spark's catalog, not staged from the warehouse
    lake = tmp_path / "lake_events.parquet"
    fconn.execute(f"COPY validated_events TO '{lake}' (FORMAT parquet)")
    spark.spark.read.parquet(str(lake)).createOrReplaceTempView("lake_events")
    on_catalog = SparkFeatures(SparkSettings(master="local[2]", conf=SPARK_TEST_CONF,
                                             tables={"validated_events": "lake_events"}), spark.root)
    run = compute_features(fconn, spec(SIGS), DAYS, spark=on_catalog)
    assert run.staging == {"partitions_staged": 0, "partitions_reused": 0, "from_catalog": ["validated_events"]}
    assert differences(duck, rows(fconn, "user_features"), ("snapshot_date", "user_id")) == []


def test_an_unknown_catalog_table_or_engine_is_refused_with_the_names_to_use():
    with pytest.raises(ValueError, match="unknown table.*validated_events"):
        SparkSettings(tables={"events": "lake.events"})
    from pql_pipeline.settings import FeatureSettings
    with pytest.raises(ValueError, match="'duckdb' or 'spark'"):
        FeatureSettings(engine="polars")


def test_a_missing_java_is_a_sentence_not_a_stack_trace(tmp_path):
    # a fresh process (this one's JVM is running), with no Java on PATH or JAVA_HOME
    code = ("from pql_pipeline.lib.spark import SparkFeatures, SparkUnavailable\n"
            "from pql_pipeline.settings import SparkSettings\n"
            "try:\n"
            f"    SparkFeatures(SparkSettings(master='local[1]'), {str(tmp_path)!r})\n"
            "except SparkUnavailable as e:\n"
            "    print('REFUSED:', e)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("JAVA_HOME", "SPARK_HOME")}
    env["PATH"] = str(Path(sys.executable).parent)
    env["JAVA_HOME"] = str(tmp_path / "no-java")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "REFUSED:" in out.stdout, (out.stdout, out.stderr[-2000:])
    message = out.stdout.split("REFUSED:", 1)[1]
    assert "Java 17" in message and "local[1]" in message
    assert "Traceback" not in message


@pytest.mark.slow
def test_the_features_asset_on_spark_equals_duckdb_on_generated_data(tmp_path, monkeypatch):
    """The generated demo data through the real graph: DuckDB first, then the features asset
    again with features.engine: spark over the same range; its checks pass and every
    feature row is the same."""
    p, result, report, mp = generated_pipeline(tmp_path, n_accounts=120, days=40)
    try:
        assert result.success
        duck = {t: p.query(f"SELECT * FROM {t} ORDER BY ALL") for t in ("user_features", "account_features")}
        names = {t: [r[0] for r in p.query(f"DESCRIBE {t}")] for t in duck}
        assert len(duck["user_features"]) > 1000
        config = yaml.safe_load(Path(DEFAULT_CONFIG).read_text())
        config["features"]["engine"] = "spark"
        config["features"]["spark"] = {"master": "local[2]", "conf": SPARK_TEST_CONF}
        (tmp_path / "spark.yaml").write_text(yaml.safe_dump(config))
        monkeypatch.setenv("PQL_CONFIG", str(tmp_path / "spark.yaml"))
        sp = make_pipeline(monkeypatch, tmp_path / "events", tmp_path / "wh" / "pql.duckdb")
        assert sp.settings.features.engine == "spark"
        run = sp.defs.resolve_job_def("build_features").execute_in_process(
            instance=sp.instance, raise_on_error=False,
            tags={"dagster/asset_partition_range_start": report.partitions[0],
                  "dagster/asset_partition_range_end": report.partitions[-1]})
        assert run.success
        assert {"user_features", "account_features"} <= materialized(run)
        failed = [k for k, ev in sp.checks(run).items() if not ev.passed and k.split(":")[0] in duck]
        assert failed == []
        meta = {e.asset_key.to_user_string(): e.event_specific_data.materialization.metadata
                for e in run.get_asset_materialization_events()}
        assert meta["user_features"]["engine"].value == "spark"
        assert meta["user_features"]["spark_partitions_staged"].value == len(report.partitions)
        for t, key in (("user_features", ("snapshot_date", "user_id")),
                       ("account_features", ("snapshot_date", "account_id"))):
            got = [dict(zip(names[t], r)) for r in sp.query(f"SELECT * FROM {t} ORDER BY ALL")]
            want = [dict(zip(names[t], r)) for r in duck[t]]
            assert differences(want, got, key) == []
        # staged beside the warehouse, not in the working directory
        assert (tmp_path / "wh" / "spark_staging" / "validated_events").is_dir()
    finally:
        mp.undo()
        from pyspark.sql import SparkSession

        active = SparkSession.getActiveSession()
        if active is not None:
            active.stop()
