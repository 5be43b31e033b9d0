"""Score history: one row per stretch of days a user kept the same verdict.

``pql_history`` answers "when did this user (or account) become a PQL, and why": a row is
opened (``valid_from``) when a user is first scored or their tier, PQL flag, route or model
version changes, and closed (``valid_to``, exclusive) when the next one opens or the user
is no longer scored (became paying, went idle). The row keeps the probability, percentile
and reasons of its first day.

The history is a function of ``pql_scores``: updating it from day D replays every scored day
from D on, after removing what an earlier replay wrote from D on, so re-scoring or
backfilling any range leaves the same table as scoring every day once in order.
"""

from __future__ import annotations

import datetime as dt

HISTORY = "pql_history"
VERSIONED = ("tier", "is_pql", "route", "model_version")   # a change in any of these opens a new row
COLUMNS = [
    ("user_id", "VARCHAR"), ("account_id", "VARCHAR"), ("valid_from", "DATE"), ("valid_to", "DATE"),
    ("tier", "VARCHAR"), ("is_pql", "BOOLEAN"), ("route", "VARCHAR"), ("model_version", "VARCHAR"),
    ("probability", "DOUBLE"), ("percentile", "DOUBLE"), ("reason_text", "VARCHAR"), ("caveat_text", "VARCHAR"),
    ("segment", "VARCHAR"),
]


def update_history(conn, first_day: dt.date, scored_days: list[dt.date] = ()) -> dict:
    """Replay ``pql_scores`` from ``first_day`` on into ``pql_history`` (one transaction):
    every day with scores, and every day of ``scored_days`` (days scored just now, which close
    the rows of users they did not score even if they scored nobody)."""
    from pql_pipeline.lib.warehouse import ensure_columns

    ensure_columns(conn, HISTORY, COLUMNS)
    days = sorted({r[0] for r in conn.execute("SELECT DISTINCT snapshot_date FROM pql_scores "
                                              "WHERE snapshot_date >= ?", [first_day]).fetchall()}
                  | {d for d in scored_days if d >= first_day})
    carried = [c for c, _ in COLUMNS if c not in ("valid_from", "valid_to")]
    changed = " OR ".join(f"h.{c} IS DISTINCT FROM s.{c}" for c in VERSIONED)
    opened = closed = 0
    conn.execute("BEGIN TRANSACTION")
    try:
        # undo what an earlier replay wrote from first_day on
        conn.execute(f"DELETE FROM {HISTORY} WHERE valid_from >= ?", [first_day])
        conn.execute(f"UPDATE {HISTORY} SET valid_to = NULL WHERE valid_to >= ?", [first_day])
        for day in days:
            closed += conn.execute(f"""
                UPDATE {HISTORY} AS h SET valid_to = ?
                WHERE h.valid_to IS NULL AND NOT EXISTS (
                    SELECT 1 FROM pql_scores AS s
                    WHERE s.snapshot_date = ? AND s.user_id = h.user_id AND NOT ({changed}))""",
                                   [day, day]).fetchall()[0][0]
            opened += conn.execute(f"""
                INSERT INTO {HISTORY} ({', '.join(carried)}, valid_from, valid_to)
                SELECT {', '.join('s.' + c for c in carried)}, ?, NULL FROM pql_scores AS s
                WHERE s.snapshot_date = ? AND NOT EXISTS (
                    SELECT 1 FROM {HISTORY} AS h WHERE h.user_id = s.user_id AND h.valid_to IS NULL)""",
                                   [day, day]).fetchall()[0][0]
        conn.execute("COMMIT")
    except Exception:
        conn.execute("ROLLBACK")
        raise
    return {"days_replayed": len(days), "rows_opened": opened, "rows_closed": closed}
