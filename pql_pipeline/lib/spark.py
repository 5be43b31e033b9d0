"""Apache Spark as the engine of the feature SQL (``features.engine: spark``).

The feature statements are the ones DuckDB runs (``features.build_feature_temps``),
transpiled by SQLGlot to Spark SQL (``engine.render(sql, "spark")``); this module only
gives Spark what DuckDB has locally:

- the inputs: the warehouse tables the features read (validated events, identity links,
  account memberships) written as Parquet under ``features.spark.staging``, one file per
  validated partition, rewritten only when validation gives the partition a new version
  (``spark_staged_partitions`` in the warehouse remembers which version each file holds);
  or tables the cluster already has (``features.spark.tables``);
- an engine with DuckDBEngine's interface (``temp`` / ``view`` / ``drop`` / ``df``), so the
  same code builds the same relations;
- the results written back as Parquet, which the warehouse reads and stores exactly as
  the DuckDB engine's rows (delete-then-insert per snapshot day).

pyspark is the optional ``spark`` extra (``pip install 'pql-pipeline[spark]'``, Java 17+);
it is imported only when the engine is used.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import uuid
import warnings
from pathlib import Path

from pql_pipeline.lib.engine import render
from pql_pipeline.lib.warehouse import table_exists, transaction

# the validated-event columns the feature SQL reads (features.events_sql); staged files hold
# only these, and a change to the list restages every partition
EVENT_COLUMNS = ("partition_date", "message_id", "event_type", "event_name", "resolved_user_id", "anonymous_id",
                 "account_id", "event_ts", "properties", "traits")
STAGE_FORMAT = hashlib.sha256(("1|" + ",".join(EVENT_COLUMNS)).encode()).hexdigest()[:12]
MANIFEST = "spark_staged_partitions"
WHOLE_TABLES = ("identity_links", "account_memberships")  # small: staged whole on every run
# Spark settings the results depend on; a user's conf cannot change them
FIXED_CONF = {
    "spark.sql.session.timeZone": "UTC",                       # calendar days are UTC days
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",  # read back by DuckDB as instants
    "spark.sql.ansi.enabled": "false",                          # TRY_CAST semantics: NULL, not an error
}
DEFAULT_CONF = {"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "8"}


class SparkUnavailable(RuntimeError):
    """features.engine is spark but pyspark (or Java) cannot be used here."""


def _is_uri(path: str) -> bool:
    return "://" in path


def session(settings):
    """A SparkSession for ``settings`` (features.spark): master, app name, the user's conf,
    and the settings the results depend on."""
    try:
        with warnings.catch_warnings():
            # pyspark warns about pandas versions it has not been tested with; the engine
            # exchanges data through Parquet, not pandas
            warnings.simplefilter("ignore", FutureWarning)
            from pyspark.sql import SparkSession
    except ImportError as e:
        raise SparkUnavailable(
            "features.engine is 'spark' but pyspark is not installed: install the spark extra "
            "(pip install 'pql-pipeline[spark]'; it needs Java 17 or newer), or set features.engine: duckdb"
        ) from e
    builder = SparkSession.builder.master(settings.master).appName(settings.app_name)
    for key, value in {**DEFAULT_CONF, **settings.conf, **FIXED_CONF}.items():
        builder = builder.config(key, value)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return builder.getOrCreate()
    except Exception as e:  # the JVM did not start: say what to check, without the conf values
        raise SparkUnavailable(
            f"could not start Spark (master {settings.master!r}): {type(e).__name__}: {str(e).splitlines()[0][:300]}. "
            "Spark needs Java 17 or newer on PATH (or JAVA_HOME) and a reachable master"
        ) from e


class SparkEngine:
    """Runs rendered SQL on a SparkSession, with DuckDBEngine's interface: ``temp`` keeps
    a relation's rows (persisted, computed once), ``view`` keeps its query."""

    dialect = "spark"

    def __init__(self, spark):
        self.spark = spark
        self.conn = None  # no DuckDB connection: callers that need one must not be handed this engine
        self._persisted: dict[str, object] = {}

    def temp(self, name: str, select_sql: str) -> None:
        from pyspark import StorageLevel

        self.drop(name)
        frame = self.spark.sql(render(select_sql, self.dialect)).persist(StorageLevel.MEMORY_AND_DISK)
        frame.count()  # computed now, once, as a DuckDB temp table is
        frame.createOrReplaceTempView(name)
        self._persisted[name] = frame

    def view(self, name: str, select_sql: str) -> None:
        self.drop(name)
        self.spark.sql(render(select_sql, self.dialect)).createOrReplaceTempView(name)

    def drop(self, *names: str) -> None:
        for n in names:
            frame = self._persisted.pop(n, None)
            if frame is not None:
                frame.unpersist()
            self.spark.catalog.dropTempView(n)

    def df(self, select_sql: str):
        return self.spark.sql(render(select_sql, self.dialect)).toPandas()

    def write_parquet(self, name: str, path: str) -> None:
        self.spark.table(name).write.mode("overwrite").parquet(path)


class SparkFeatures:
    """The Spark side of a feature run: staging the inputs, the engine, the result files."""

    def __init__(self, settings, staging: str):
        """``settings``: features.spark; ``staging``: where inputs and results are written
        (``Settings.spark_staging``)."""
        self.settings = settings
        self.root = staging
        self.spark = session(settings)
        self.engine = SparkEngine(self.spark)

    # ------------------------------------------------------------------ paths
    def _path(self, *parts: str) -> str:
        if _is_uri(self.root):
            return "/".join([self.root.rstrip("/"), *parts])
        return str(Path(self.root, *parts))

    def _makedirs(self, path: str) -> None:
        if not _is_uri(path):
            Path(path).mkdir(parents=True, exist_ok=True)

    def _remove(self, path: str) -> None:
        if not _is_uri(path):
            p = Path(path)
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()

    # ------------------------------------------------------------------ inputs
    def stage(self, conn, last_day: dt.date) -> dict:
        """Make the feature inputs readable by Spark under their warehouse names; returns
        what was staged (partitions written, reused)."""
        out = {"partitions_staged": 0, "partitions_reused": 0, "from_catalog": sorted(self.settings.tables)}
        for name, table in self.settings.tables.items():
            self.spark.table(table).createOrReplaceTempView(name)
        if "validated_events" not in self.settings.tables:
            out.update(self._stage_events(conn, last_day))
        for name in WHOLE_TABLES:
            if name in self.settings.tables:
                continue
            path = self._path(name, "all.parquet")
            self._makedirs(self._path(name))
            self._copy(conn, f"SELECT * FROM {name}", path)
            self.spark.read.parquet(path).createOrReplaceTempView(name)
        return out

    def _copy(self, conn, select_sql: str, path: str) -> None:
        """Write ``select_sql``'s rows to ``path`` as one Parquet file, replacing it as a whole
        (a local file is written beside it and renamed, so Spark never reads half a file)."""
        if _is_uri(path):
            conn.execute(f"COPY ({select_sql}) TO '{path}' (FORMAT parquet)")
            return
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        try:
            conn.execute(f"COPY ({select_sql}) TO '{tmp}' (FORMAT parquet)")
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _stage_events(self, conn, last_day: dt.date) -> dict:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {MANIFEST} (partition_date DATE, version VARCHAR, "
                     "stage_format VARCHAR, root VARCHAR, staged_at TIMESTAMPTZ)")
        if not table_exists(conn, "validated_partitions"):
            raise SparkUnavailable("features.engine is 'spark' but the warehouse has no validated_partitions yet: "
                                   "materialize validated_events first")
        wanted = conn.execute("""
            SELECT v.partition_date, v.version, m.version IS NOT DISTINCT FROM v.version AND m.partition_date IS NOT NULL
            FROM validated_partitions AS v
            LEFT JOIN spark_staged_partitions AS m
              ON m.partition_date = v.partition_date AND m.stage_format = ? AND m.root = ?
            WHERE v.partition_date <= ? ORDER BY 1""", [STAGE_FORMAT, self.root, last_day]).fetchall()
        folder = self._path("validated_events")
        self._makedirs(folder)
        cols = ", ".join(EVENT_COLUMNS)
        staged = reused = 0
        for day, version, current in wanted:
            path = self._path("validated_events", f"{day.isoformat()}.parquet")
            if current and (_is_uri(path) or os.path.exists(path)):
                reused += 1
                continue
            self._copy(conn, f"SELECT {cols} FROM validated_events WHERE partition_date = DATE '{day.isoformat()}'",
                       path)
            with transaction(conn):
                conn.execute(f"DELETE FROM {MANIFEST} WHERE partition_date = ? AND root = ?", [day, self.root])
                conn.execute(f"INSERT INTO {MANIFEST} VALUES (?, ?, ?, ?, now())",
                             [day, version, STAGE_FORMAT, self.root])
            staged += 1
        # a file of a partition no longer validated (or past the day) is never read
        files = [self._path("validated_events", f"{d.isoformat()}.parquet") for d, _, _ in wanted]
        if files:
            self.spark.read.parquet(*files).createOrReplaceTempView("validated_events")
        else:
            self.spark.createDataFrame([], self._empty_events_schema()).createOrReplaceTempView("validated_events")
        return {"partitions_staged": staged, "partitions_reused": reused}

    def _empty_events_schema(self):
        return ("partition_date DATE, message_id STRING, event_type STRING, event_name STRING, "
                "resolved_user_id STRING, anonymous_id STRING, account_id STRING, event_ts TIMESTAMP, "
                "properties STRING, traits STRING")

    # ------------------------------------------------------------------ results
    def results(self, names: list[str]) -> dict[str, str]:
        """Write the named relations as Parquet; returns name -> a path pattern DuckDB reads."""
        run = uuid.uuid4().hex[:12]
        out = {}
        for name in names:
            path = self._path("results", run, name)
            self.engine.write_parquet(name, path)
            out[name] = f"{path}/*.parquet"
        self._last_results = self._path("results", run)
        return out

    def clean_results(self) -> None:
        path = getattr(self, "_last_results", None)
        if path:
            self._remove(path)
            self._last_results = None
