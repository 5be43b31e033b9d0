"""Fixtures for the feature / label tests: a real DuckDB warehouse file with the input
tables created from the contracts, and a small factory that writes hand-made rows so
every expected feature value can be worked out by hand.

Timestamps given as strings without an offset are UTC; a string with an offset
(``2026-03-10 20:30:00-05:00``) is that instant. ``partition_date`` (the day the row was
received) defaults to the UTC date of the timestamp.
"""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest

from pql_pipeline.defs.features.features import compute_features
from pql_pipeline.defs.features.sql import FeatureSpec
from pql_pipeline.lib.contracts import load_contract
from pql_pipeline.lib.warehouse import ensure_tables
from pql_pipeline.signals import SignalSet
from pql_pipeline_tests.conftest import CONTRACTS

UTC = dt.timezone.utc
_OFFSET = re.compile(r"([+-]\d\d(:?\d\d)?|Z)$")


def D(s: str) -> dt.date:
    return dt.date.fromisoformat(s)


def utc(ts: str | dt.datetime) -> dt.datetime:
    """An aware datetime: strings without an offset are read as UTC."""
    if isinstance(ts, dt.datetime):
        return ts if ts.tzinfo else ts.replace(tzinfo=UTC)
    s = ts.strip().replace("T", " ")
    if not _OFFSET.search(s):
        s += "+00:00"
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00")).astimezone(UTC)


def signals(*user: dict, accounts: list[dict] | None = None, signup_event: str | None = None) -> SignalSet:
    return SignalSet.model_validate({"signup_event": signup_event, "signals": list(user),
                                     "account_signals": accounts or []})


def spec(sigs: SignalSet, conversion=("Plan Upgraded",), **kw) -> FeatureSpec:
    return FeatureSpec(signals=sigs, conversion_events=tuple(conversion), **kw)


class World:
    """Writes rows of validated_events (events, identify and group calls), identity_links
    and account_memberships exactly as the ingest stage would hold them."""

    def __init__(self, conn):
        self.conn = conn
        self.n = 0

    # ------------------------------------------------------------------ events
    def event(self, ts, name: str | None = None, user: str | None = "u1", *, type: str = "track",
              anon: str | None = None, resolved: str | None = "<user>", pdate: str | dt.date | None = None,
              account: str | None = None, group: str | None = None, props: dict | None = None,
              traits: dict | None = None) -> str:
        self.n += 1
        when = utc(ts)
        part = D(pdate) if isinstance(pdate, str) else (pdate or when.date())
        mid = f"m{self.n:05d}"
        self.conn.execute(
            "INSERT INTO validated_events (partition_date, message_id, event_type, event_name, user_id, anonymous_id, "
            "resolved_user_id, group_id, account_id, event_ts, received_at, properties, traits, source_file, line_no) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [part, mid, type, name, user, anon, user if resolved == "<user>" else resolved, group,
             account if account is not None else group, when,
             dt.datetime.combine(part, dt.time(12), UTC), json.dumps(props or {}),
             json.dumps(traits) if traits is not None else None, f"events/{part}.jsonl", self.n])
        return mid

    def track(self, ts, name: str, user: str | None = "u1", **kw) -> str:
        return self.event(ts, name, user, **kw)

    def anon_track(self, ts, name: str, anon: str, **kw) -> str:
        """An anonymous event not resolved at validation (its identify came later)."""
        return self.event(ts, name, None, anon=anon, resolved=None, **kw)

    # ------------------------------------------------------------------ identities, memberships
    def link(self, anon: str, user: str, pdate: str, linked_at: str | None = None) -> None:
        self.conn.execute("INSERT INTO identity_links VALUES (?, ?, ?, ?)",
                          [D(pdate), anon, user, utc(linked_at or f"{pdate} 12:00:00")])

    def member(self, user: str, account: str, joined_at: str, pdate: str | None = None) -> None:
        when = utc(joined_at)
        self.conn.execute("INSERT INTO account_memberships VALUES (?, ?, ?, ?)",
                          [D(pdate) if pdate else when.date(), user, account, when])

    # ------------------------------------------------------------------ traits (identify / group calls)
    def user_versions(self, user: str, *versions: tuple) -> None:
        """Identify calls: (timestamp, traits[, received day]) in order."""
        for v in versions:
            self.event(v[0], None, user, type="identify", traits=v[1], pdate=v[2] if len(v) > 2 else None)

    def account_versions(self, account: str, *versions: tuple) -> None:
        """Group calls for ``account``: (timestamp, traits[, received day]) in order."""
        for v in versions:
            self.event(v[0], None, f"admin-of-{account}", type="group", group=account, traits=v[1],
                       pdate=v[2] if len(v) > 2 else None)


@pytest.fixture
def fconn(conn):
    """The conftest warehouse connection (session in UTC) plus the trait history tables."""
    ensure_tables(conn, load_contract(CONTRACTS / "users.odcs.yaml"), "users_history")
    ensure_tables(conn, load_contract(CONTRACTS / "accounts.odcs.yaml"), "accounts_history")
    return conn


@pytest.fixture
def world(fconn) -> World:
    return World(fconn)


# ------------------------------------------------------------------ reading results

def user_rows(conn, day: str | dt.date | None = None, cols: str = "*") -> list[dict]:
    return _rows(conn, "user_features", "user_id", day, cols)


def account_rows(conn, day: str | dt.date | None = None, cols: str = "*") -> list[dict]:
    return _rows(conn, "account_features", "account_id", day, cols)


def _rows(conn, table: str, key: str, day, cols: str) -> list[dict]:
    where = "" if day is None else f" WHERE snapshot_date = DATE '{day}'"
    cur = conn.execute(f"SELECT {cols} FROM {table}{where} ORDER BY snapshot_date, {key}")
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def one_user(conn, day, user: str = "u1") -> dict:
    rows = [r for r in user_rows(conn, day) if r["user_id"] == user]
    assert len(rows) == 1, f"expected one user_features row for {user} at {day}, got {rows}"
    return rows[0]


def features_at(conn, sigs: SignalSet, day: str, user: str = "u1", **spec_kw) -> dict:
    """Compute features for one snapshot day and return the user's row."""
    compute_features(conn, spec(sigs, **spec_kw), [D(day)])
    return one_user(conn, day, user)


def table_dump(conn, table: str) -> list[tuple]:
    """Every column of every row, as text, in a stable order (byte-level comparison)."""
    cols = [c for c, in conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position",
        [table]).fetchall()]
    text = ", ".join(f'CAST("{c}" AS VARCHAR)' for c in cols)
    return conn.execute(f"SELECT {text} FROM {table} ORDER BY ALL").fetchall()
