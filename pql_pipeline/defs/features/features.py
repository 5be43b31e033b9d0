"""Running the feature computation: ``compute_features`` writes user_features and
account_features for a list of snapshot days, in batches, each batch's statements built by
``sql.py`` and fed from the feature cache (``cache.py``) or advanced from the previous day's
state (``state.py``) where those are usable.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pql_pipeline.defs.features import state
from pql_pipeline.defs.features.cache import (
    all_numbered_sources,
    cached_sql,
    masks_sql,
    narrow_sources,
    number_values,
    refresh_cache,
)
from pql_pipeline.defs.features.sql import (
    WAREHOUSE,
    FeatureSpec,
    Sources,
    account_features_sql,
    account_table_columns,
    account_traits,
    account_values_sql,
    distinct_signals,
    events_sql,
    links_sql,
    members_sql,
    snapshots_sql,
    traits_sql,
    traits_state_sql,
    user_agg_signup_sql,
    user_agg_sql,
    user_day_sql,
    user_features_sql,
    user_firsts_sql,
    user_table_columns,
    user_traits,
    user_values_sql,
    value_sources,
    window_masks_sql,
)
from pql_pipeline.lib.engine import DuckDBEngine, sql_literal
from pql_pipeline.lib.warehouse import ensure_columns, replace_rows, table_exists

# ------------------------------------------------------------------ running a batch

def _chunks(days: list[dt.date], size: int) -> list[list[dt.date]]:
    days = sorted(set(days))
    return [days[i:i + size] for i in range(0, len(days), size)]


@dataclass
class FeatureRun:
    snapshot_days: list[dt.date]
    user_rows: int = 0
    account_rows: int = 0
    schema_changes: list[str] | None = None
    cache_partitions_built: int = 0
    # snapshots advanced from the previous day's state, with what changed
    incremental: list[dict] | None = None
    # features.engine spark: the inputs staged for Spark (partitions written / reused)
    staging: dict | None = None


def compute_features(conn, spec: FeatureSpec, snapshot_days: list[dt.date], batch_days: int = 31,
                     use_cache: bool = True, spark=None) -> FeatureRun:
    """(Re)compute user_features and account_features for ``snapshot_days``.

    Idempotent: the snapshot days' rows are deleted and inserted in one transaction
    per batch of ``batch_days`` days. With ``spark`` (a ``lib.spark.SparkFeatures``) the
    same statements run on Spark, from the inputs it stages, and its result rows are
    stored here exactly as DuckDB's would be."""
    ucols = user_table_columns(spec.signals)
    acols = account_table_columns(spec.signals)
    run = FeatureRun(snapshot_days=sorted(set(snapshot_days)))
    run.schema_changes = ensure_columns(conn, "user_features", ucols) + ensure_columns(conn, "account_features", acols)
    if spark is not None:
        eng = spark.engine
        run.staging = spark.stage(conn, max(run.snapshot_days))
    else:
        eng = DuckDBEngine(conn)
    outputs = (("user_features", ucols, "fx_user_features"), ("account_features", acols, "fx_account_features"))
    try:
        for batch in _chunks(snapshot_days, batch_days):
            built = build_feature_temps(eng, spec, batch, use_cache=use_cache and spark is None)
            run.cache_partitions_built += built["cache_partitions_built"]
            if built["incremental"] is not None:
                run.incremental = [*(run.incremental or []), {"snapshot_date": batch[0], **built["incremental"]}]
            days = ", ".join("?" for _ in batch)
            sources = {tmp: tmp for _, _, tmp in outputs}
            if spark is not None:
                files = spark.results([tmp for _, _, tmp in outputs])
                sources = {tmp: f"read_parquet({sql_literal(path)})" for tmp, path in files.items()}
            for table, cols, tmp in outputs:
                replace_rows(conn, table, [c for c, _ in cols], sources[tmp], f"snapshot_date IN ({days})", batch)
            run.user_rows += conn.execute(f"SELECT count(*) FROM {sources['fx_user_features']}").fetchall()[0][0]
            run.account_rows += conn.execute(f"SELECT count(*) FROM {sources['fx_account_features']}").fetchall()[0][0]
            if spark is not None:
                spark.clean_results()
    except BaseException:
        try:  # leave no relations behind; the error that stopped the run is the one to report
            drop_feature_temps(eng)
            if spark is not None:
                spark.clean_results()
        except Exception:
            pass
        raise
    drop_feature_temps(eng)
    return run


EMPTY_VALUES = ("SELECT CAST(NULL AS VARCHAR) AS user_id, CAST(NULL AS VARCHAR) AS signal, "
                "CAST(NULL AS VARCHAR) AS value, CAST(NULL AS DATE) AS day, CAST(NULL AS DATE) AS avail_day, "
                "CAST(NULL AS DATE) AS until_day WHERE FALSE")
EMPTY_FIRSTS = ("SELECT CAST(NULL AS VARCHAR) AS user_id, CAST(NULL AS VARCHAR) AS signal, "
                "CAST(NULL AS VARCHAR) AS value, CAST(NULL AS TIMESTAMPTZ) AS event_ts, "
                "CAST(NULL AS VARCHAR) AS message_id, CAST(NULL AS DATE) AS day, CAST(NULL AS DATE) AS avail_day, "
                "CAST(NULL AS DATE) AS until_day WHERE FALSE")


def build_feature_temps(eng: DuckDBEngine, spec: FeatureSpec, days: list[dt.date], src: Sources = WAREHOUSE,
                        use_cache: bool = True) -> dict:
    """Compute the snapshot days' rows into temp tables fx_user_features / fx_account_features.

    With the cache (the warehouse's own tables only), resolved events of partitions whose
    per-day measures are cached are read from the cache; the rest (partitions not cached,
    anonymous events) from validated_events, once: their day rows, values, first
    occurrences and trait calls are kept in temp tables. A single day whose previous day's
    state is usable is advanced from it (``state.py``); the state of the batch's last days
    is saved. Returns ``cache_partitions_built`` and, if the day was advanced, ``incremental``
    with its counts."""
    last = max(days)
    eng.temp("fx_snapshots", snapshots_sql(days))
    out: dict = {"cache_partitions_built": 0, "incremental": None}
    # the cache needs partition versions from validation and the warehouse's own tables
    cached = use_cache and src == WAREHOUSE and table_exists(eng.conn, "validated_partitions")
    uncached: list[dt.date] = []
    if cached:
        out["cache_partitions_built"] = refresh_cache(eng, spec, last)
        uncached = [r[0] for r in eng.conn.execute(
            "SELECT DISTINCT partition_date FROM validated_events WHERE partition_date <= ? "
            "EXCEPT SELECT partition_date FROM fx_cached ORDER BY 1", [last]).fetchall()]
        eng.temp("fx_links", links_sql(last, src))
        eng.temp("fx_events", events_sql(last, src, only_partitions=uncached, links="fx_links"))
    else:
        eng.temp("fx_cached", "SELECT CAST(NULL AS DATE) AS partition_date WHERE FALSE")
        eng.temp("fx_events", events_sql(last, src))

    def with_cache(name: str, raw: str | None, empty: str, kind: str) -> None:
        if not cached:
            eng.temp(name, raw or empty)
            return
        # the raw part and the cached anonymous rows, resolved once, are small: a temp table;
        # the cached rows resolved at validation are read in place
        eng.temp(f"{name}_raw", f"{raw or empty} UNION ALL {cached_sql(spec, kind, anonymous=True)}")
        eng.view(name, f"SELECT * FROM {name}_raw UNION ALL {cached_sql(spec, kind)}")

    with_cache("fx_user_day", user_day_sql(spec), "", "user_day")
    with_cache("fx_user_values", user_values_sql(spec), EMPTY_VALUES, "user_values")
    bitmap: frozenset[str] = frozenset()
    if cached:
        # values of few distinct values are counted from per-day masks of them (cache.py)
        number_values(eng.conn, "SELECT signal, value FROM fx_user_values_raw")
        eng.temp("fx_user_masks_raw", masks_sql("fx_user_values_raw"))
        eng.view("fx_user_masks", f"SELECT * FROM fx_user_masks_raw UNION ALL {cached_sql(spec, 'user_masks')}")
        narrow, numbered = narrow_sources(eng.conn), all_numbered_sources(eng.conn)
        bitmap = frozenset(k for k in value_sources(spec) if k in narrow or k not in numbered)
    with_cache("fx_user_firsts", user_firsts_sql(spec), EMPTY_FIRSTS, "user_firsts")
    with_cache("fx_traits", traits_sql(), "", "traits")
    eng.drop("fx_events")
    eng.temp("fx_members", members_sql(src))
    # a state is only saved for (and advanced from) a day all of whose partitions are cached
    # at a version, so that a change to any of them is seen
    first_uncached = min(uncached, default=None)
    saveable = [d for d in sorted(days)[-state.KEEP:] if cached and (first_uncached is None or d < first_uncached)]
    fingerprints = {d: state.fingerprint(eng.conn, d) for d in saveable}
    if (cached and len(days) == 1 and (first_uncached is None or first_uncached >= last)
            and state.usable(eng.conn, spec, last)):
        out["incremental"] = state.advance(eng, spec, last, src.account_memberships, bitmap)
        state.drop_temps(eng)
    else:
        eng.temp("fx_user_agg0", user_agg_sql(spec))
        eng.temp("fx_user_wmasks", window_masks_sql(distinct_signals(spec), bitmap, since=min(days)))
        eng.temp("fx_user_agg", user_agg_signup_sql(spec, bitmap=bitmap, since=min(days),
                                                    window_masks="fx_user_wmasks"))
        eng.drop("fx_user_agg0")
        eng.temp("fx_account_values", account_values_sql(spec, bitmap=bitmap, since=min(days),
                                                         window_masks="fx_user_wmasks"))
        eng.drop("fx_user_wmasks")
        eng.temp("fx_user_traits", traits_state_sql(user_traits(spec), "identify", "user_id"))
        eng.temp("fx_account_traits", traits_state_sql(account_traits(spec), "group", "account_id"))
    if fingerprints:
        state.save(eng, spec, fingerprints)
    eng.temp("fx_user_features", user_features_sql(spec))
    eng.temp("fx_account_features", account_features_sql(spec))
    return out


TEMPS = ("fx_user_features", "fx_account_features", "fx_user_agg", "fx_user_agg0", "fx_members", "fx_account_values",
         "fx_user_traits", "fx_account_traits", "fx_user_wmasks",
         "fx_user_masks", "fx_user_masks_raw",
         "fx_user_day", "fx_user_values", "fx_user_firsts", "fx_traits", "fx_user_day_raw", "fx_user_values_raw",
         "fx_user_firsts_raw", "fx_traits_raw", "fx_events", "fx_links", "fx_cached", "fx_snapshots")


def drop_feature_temps(eng: DuckDBEngine) -> None:
    eng.drop(*TEMPS)
