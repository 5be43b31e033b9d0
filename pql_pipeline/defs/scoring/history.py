"""Score history: one row per stretch of days a user or an account kept the same verdict.

``pql_history`` answers "when did this account (or user) become a PQL, and why": a row is
opened (``valid_from``) when an entity is first scored or its tier, PQL flag, route or model
version changes, and closed (``valid_to``, exclusive) when the next one opens or the entity
is no longer scored (became paying, went idle). The row keeps the probability, percentile
and reasons of its first day. Users come from ``pql_scores`` (``entity_type = 'user'``),
accounts from ``pql_account_scores`` (``'account'``); ``entity_id`` is the user or account id.

The history is a function of the score tables: updating it from day D replays every scored
day from D on, after removing what an earlier replay wrote from D on, so re-scoring or
backfilling any range leaves the same table as scoring every day once in order.
"""

from __future__ import annotations

import datetime as dt

HISTORY = "pql_history"
VERSIONED = ("tier", "is_pql", "route", "model_version")   # a change in any of these opens a new row
COLUMNS = [
    ("entity_type", "VARCHAR"), ("entity_id", "VARCHAR"),
    ("user_id", "VARCHAR"), ("account_id", "VARCHAR"), ("valid_from", "DATE"), ("valid_to", "DATE"),
    ("tier", "VARCHAR"), ("is_pql", "BOOLEAN"), ("route", "VARCHAR"), ("model_version", "VARCHAR"),
    ("probability", "DOUBLE"), ("percentile", "DOUBLE"), ("reason_text", "VARCHAR"), ("caveat_text", "VARCHAR"),
    ("segment", "VARCHAR"),
]
_VALUES = ("tier", "is_pql", "route", "model_version", "probability", "percentile", "reason_text", "caveat_text",
           "segment")


def _sources(conn) -> str:
    """The scored entities of every day as one relation with the history's columns."""
    from pql_pipeline.lib.warehouse import table_exists

    parts = [f"SELECT snapshot_date, 'user' AS entity_type, user_id AS entity_id, user_id, account_id, "
             f"{', '.join(_VALUES)} FROM pql_scores"]
    if table_exists(conn, "pql_account_scores"):
        parts.append(f"SELECT snapshot_date, 'account', account_id, NULL, account_id, {', '.join(_VALUES)} "
                     "FROM pql_account_scores")
    return " UNION ALL ".join(parts)


def update_history(conn, first_day: dt.date, scored_days: list[dt.date] = ()) -> dict:
    """Replay the score tables from ``first_day`` on into ``pql_history`` (one transaction):
    every day with scores, and every day of ``scored_days`` (days scored just now, which close
    the rows of entities they did not score even if they scored nobody)."""
    from pql_pipeline.lib.warehouse import ensure_columns, table_exists

    if table_exists(conn, HISTORY) and "entity_type" not in {
            r[0] for r in conn.execute(f"DESCRIBE {HISTORY}").fetchall()}:
        # a history of users only (before accounts were scored): rebuilt from the first scored day
        conn.execute(f"DROP TABLE {HISTORY}")
        first_day = min(first_day, conn.execute("SELECT min(snapshot_date) FROM pql_scores").fetchall()[0][0]
                        or first_day)
    ensure_columns(conn, HISTORY, COLUMNS)
    conn.execute(f"CREATE OR REPLACE TEMP VIEW hx_scores AS {_sources(conn)}")
    days = sorted({r[0] for r in conn.execute("SELECT DISTINCT snapshot_date FROM hx_scores "
                                              "WHERE snapshot_date >= ?", [first_day]).fetchall()}
                  | {d for d in scored_days if d >= first_day})
    carried = [c for c, _ in COLUMNS if c not in ("valid_from", "valid_to")]
    key = "entity_type, entity_id"
    same_as = lambda a, b: " AND ".join(f"{a}.{c} IS NOT DISTINCT FROM {b}.{c}" for c in VERSIONED)  # noqa: E731
    opened = closed = 0
    conn.execute("BEGIN TRANSACTION")
    try:
        # undo what an earlier replay wrote from first_day on
        conn.execute(f"DELETE FROM {HISTORY} WHERE valid_from >= ?", [first_day])
        conn.execute(f"UPDATE {HISTORY} SET valid_to = NULL WHERE valid_to >= ?", [first_day])
        if days:
            # The replay in a few set-based steps. Day i of the replay (``days``) keeps an entity's
            # open row when the entity is scored on it with the verdict of day i - 1; a stretch of
            # such days is one row, from its first day to the replay day after its last (open if
            # that is the last day). A row open before the replay (from an earlier run) goes on
            # while the stretch that starts on the first day has its verdict.
            conn.execute("CREATE OR REPLACE TEMP TABLE hx_days AS SELECT unnest(?::DATE[]) AS day, "
                         "unnest(range(?)) AS i", [days, len(days)])
            conn.execute(f"""
                CREATE OR REPLACE TEMP TABLE hx_stretch AS
                WITH s AS (
                    SELECT s.*, d.i FROM hx_scores AS s JOIN hx_days AS d ON d.day = s.snapshot_date
                ), marked AS (
                    SELECT s.*, CASE
                        WHEN lag(i) OVER w IS NULL THEN NOT (i = 0 AND EXISTS (
                            SELECT 1 FROM {HISTORY} AS o WHERE o.valid_to IS NULL AND o.entity_type = s.entity_type
                              AND o.entity_id = s.entity_id AND {same_as('o', 's')}))
                        ELSE i <> lag(i) OVER w + 1 OR {' OR '.join(f'lag({c}) OVER w IS DISTINCT FROM {c}'
                                                                    for c in VERSIONED)}
                        END AS starts
                    FROM s WINDOW w AS (PARTITION BY {key} ORDER BY i)
                ), numbered AS (
                    SELECT *, sum(CAST(starts AS INTEGER)) OVER (PARTITION BY {key} ORDER BY i
                                                                ROWS UNBOUNDED PRECEDING) AS stretch
                    FROM marked
                )
                SELECT n.*, e.day AS ends
                FROM (SELECT *, max(i) OVER (PARTITION BY {key}, stretch) AS last_i FROM numbered) AS n
                LEFT JOIN hx_days AS e ON e.i = n.last_i + 1
                WHERE n.starts OR n.stretch = 0""")
            # rows open before the replay: closed where no stretch goes on with their verdict
            closed += conn.execute(f"""
                UPDATE {HISTORY} AS h SET valid_to = coalesce(c.ends, ?)
                FROM (SELECT DISTINCT o.entity_type, o.entity_id, s.ends, s.stretch
                      FROM {HISTORY} AS o LEFT JOIN hx_stretch AS s
                        ON s.entity_type = o.entity_type AND s.entity_id = o.entity_id AND s.stretch = 0
                      WHERE o.valid_to IS NULL) AS c
                WHERE h.valid_to IS NULL AND h.entity_type = c.entity_type AND h.entity_id = c.entity_id
                  AND (c.stretch IS NULL OR c.ends IS NOT NULL)""", [days[0]]).fetchall()[0][0]
            opened, ended = conn.execute("SELECT count(*), count(ends) FROM hx_stretch WHERE starts").fetchall()[0]
            closed += ended
            conn.execute(f"""
                INSERT INTO {HISTORY} ({', '.join(carried)}, valid_from, valid_to)
                SELECT {', '.join(carried)}, snapshot_date, ends FROM hx_stretch WHERE starts""")
        conn.execute("COMMIT")
    except Exception:
        conn.execute("ROLLBACK")
        raise
    finally:
        conn.execute("DROP VIEW IF EXISTS hx_scores")
        conn.execute("DROP TABLE IF EXISTS hx_days")
        conn.execute("DROP TABLE IF EXISTS hx_stretch")
    return {"days_replayed": len(days), "rows_opened": opened, "rows_closed": closed}
