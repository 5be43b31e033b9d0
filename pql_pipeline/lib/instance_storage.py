"""Dagster's SQLite event log, without the per-event connection cost.

Dagster's ``SqliteEventLogStorage`` builds a new SQLAlchemy engine for every event it
writes (an engine's compiled-statement cache dies with it, so every INSERT is compiled
again) and commits with ``synchronous=FULL``. A range run over N days writes one
materialization event per partitioned asset and day, so on a long history those writes
were most of a run's time (profile in docs/performance.md).

This subclass writes the batches Dagster forms (a run's planned materializations, a step's
per-partition materializations; it sets ``DAGSTER_EVENT_BATCH_SIZE`` unless the user did)
in one transaction per shard instead of two per event: the same rows, per partition, so
partition status, in-progress and failed partitions stay what Dagster shows. It keeps one
engine per shard (the index and the few newest runs; still ``NullPool``, so no connection
outlives its transaction and a forked process inherits nothing open) and sets
``synchronous=NORMAL``, SQLite's recommended setting in WAL mode, which Dagster's shards
use: a power loss can lose the last transactions, never corrupt the file. Same files,
same schema, same locks: an instance home written by Dagster's own class is read by this
one and the reverse. ``dagster.yaml`` selects it; its files are under the instance's
folder, ``history/runs`` (where Dagster's default puts them), unless ``base_dir`` is set.
On Postgres (the production choice) it is not used.

A range run gives each partition's materialization the whole range's metadata (Dagster 1.13
has no metadata per partition for a single-run range: dagster-io/dagster#18123), so a
550-day range wrote its charts 550 times (about 70 KB an event for ``pql_scores``). Within
a batch, a large entry (over ``KEEP_ONCE_CHARS`` characters) that the newest partition's
event repeats is kept on that event only, the UI's "latest materialization"; the other
days' events say where it is. Small entries (row counts, versions) stay on every event.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import groupby

import sqlalchemy as db
from dagster import DagsterEventType, Field, MetadataValue, StringSource
from dagster._core.storage.event_log.sqlite import sqlite_event_log as base
from dagster._core.storage.sqlalchemy_compat import db_result
from dagster._serdes import ConfigurableClassData

# run shards whose engines are kept (a run writes to its own shard and the index)
KEEP_RUN_ENGINES = 4
# events Dagster buffers before handing them to store_event_batch (a batch also ends with its step's
# or run's last planned event); read by Dagster from the environment of the process writing events
EVENT_BATCH_SIZE = "1000"
# a range's metadata entry longer than this is kept on its newest partition's event only
KEEP_ONCE_CHARS = 2_000


class SqliteEventLogStorage(base.SqliteEventLogStorage):
    """``dagster._core.storage.event_log.SqliteEventLogStorage`` with one engine per shard."""

    def __init__(self, base_dir: str | None = None, inst_data: ConfigurableClassData | None = None):
        self._engines: OrderedDict[str, db.engine.Engine] = OrderedDict()
        # every process that writes events through this storage (the CLI, the webserver creating
        # runs, a run worker) builds it first; a value the user set is kept
        os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", EVENT_BATCH_SIZE)
        if base_dir is None:
            # the instance's folder (DAGSTER_HOME, or the folder DagsterInstance.from_config was
            # given) is known once the instance registers itself, before any event is read or written
            self._inst_data, self._instance_weakref = inst_data, None
            return
        super().__init__(base_dir, inst_data=inst_data)

    def register_instance(self, instance) -> None:
        if not hasattr(self, "_base_dir"):
            # where Dagster's default SQLite storage keeps event logs
            super().__init__(os.path.join(instance.root_directory, "history", "runs", ""), inst_data=self._inst_data)
        super().register_instance(instance)

    @classmethod
    def config_type(cls):
        return {"base_dir": Field(StringSource, is_required=False)}

    @classmethod
    def from_config_value(cls, inst_data, config_value):  # ty: ignore[invalid-method-override]
        return cls(inst_data=inst_data, **config_value)

    def _engine(self, shard: str) -> db.engine.Engine:
        engine = self._engines.get(shard)
        if engine is not None:
            self._engines.move_to_end(shard)
            return engine
        engine = db.create_engine(self.conn_string_for_shard(shard), poolclass=db.pool.NullPool,
                                  connect_args={"timeout": base.SQLITE_BUSY_TIMEOUT_SECONDS})
        db.event.listen(engine, "connect", _synchronous_normal)
        if shard not in self._initialized_dbs:
            self._initdb(engine)
            self._initialized_dbs.add(shard)
        self._engines[shard] = engine
        runs = [s for s in self._engines if s != base.INDEX_SHARD_NAME]
        for old in runs[:-KEEP_RUN_ENGINES]:
            self._engines.pop(old).dispose()
        return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator[db.engine.Connection]:
        with self._db_lock:
            engine = self._engine(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    def store_event_batch(self, events) -> None:
        """Consecutive asset events of one run in one transaction per shard; others one by one."""
        for run_id, group in groupby(events, key=lambda e: e.run_id if _asset_event(e) else None):
            if run_id is None:
                for event in group:
                    self.store_event(event)
            else:
                self._store_asset_events(list(group))

    def _store_asset_events(self, events: list) -> None:
        """What ``store_event`` does for each asset event, in two transactions for all of them."""
        if len(events) < 2:
            for event in events:
                self.store_event(event)
            return
        events = once_per_range(events)
        statements = [self.prepare_insert_event(event) for event in events]
        with self.run_connection(events[0].run_id) as conn:
            for statement in statements:
                conn.execute(statement)
        with self.index_transaction() as conn:
            ids = []
            for statement in statements:
                with db_result(conn, statement) as result:
                    ids.append(result.inserted_primary_key[0])
            self._store_asset_event_tags(conn, events, ids)
            # the asset's row keeps the newest event of each type: every column ends with the value
            # of the last event that writes it, so the last event of each (asset, type) is enough
            last = {(e.dagster_event.asset_key, e.dagster_event_type): i for i, e in enumerate(events)}
            for i in sorted(last.values()):
                self._store_asset_event(conn, events[i], ids[i])

    def dispose(self) -> None:
        while self._engines:
            self._engines.popitem()[1].dispose()
        super().dispose()


def once_per_range(events: list) -> list:
    """``events`` with each large metadata entry that a range run repeats on every partition's
    materialization kept on the newest partition's event only (see the module's docstring)."""
    ranges: dict[tuple, list[int]] = {}
    for i, e in enumerate(events):
        if e.dagster_event_type == DagsterEventType.ASSET_MATERIALIZATION and e.dagster_event.partition:
            ranges.setdefault((e.run_id, e.step_key, e.dagster_event.asset_key), []).append(i)
    out = list(events)
    for rows in ranges.values():
        if len(rows) < 2:
            continue
        newest = max(rows, key=lambda i: events[i].dagster_event.partition)
        kept = events[newest].asset_materialization.metadata
        large = {k for k, v in kept.items() if _chars(v) > KEEP_ONCE_CHARS}
        if not large:
            continue
        where = events[newest].dagster_event.partition
        for i in rows:
            if i == newest:
                continue
            event = events[i]
            slim = {k: MetadataValue.text(f"the range run's {k}: kept once, on partition {where}")
                    if k in large and v == kept[k] else v
                    for k, v in event.asset_materialization.metadata.items()}
            data = event.dagster_event.event_specific_data
            data = data._replace(materialization=data.materialization.with_metadata(slim))
            out[i] = event._replace(dagster_event=event.dagster_event._replace(event_specific_data=data))
    return out


def _chars(value) -> int:
    """About how long a metadata value is when stored."""
    v = getattr(value, "value", value)
    if isinstance(v, str):
        return len(v)
    if isinstance(v, (dict, list)):
        return len(json.dumps(v, default=str))
    return 0


def _asset_event(event) -> bool:
    return bool(event.is_dagster_event and event.dagster_event_type in base.ASSET_EVENTS
                and event.dagster_event.asset_key)


def _synchronous_normal(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
