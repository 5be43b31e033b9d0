"""users / accounts dimensions (current + SCD-2 history) from identify and group calls.

Traits are partial updates in Segment's spec, so each version holds the traits merged
over all calls so far (later values win). A call that changes nothing does not make a
new version. The tables are rebuilt from ``validated_events`` in full: identify and
group calls are a tiny share of events, and a full rebuild is trivially idempotent and
correct after any backfill.
"""

from __future__ import annotations

import duckdb

from pql_pipeline.lib.engine import sql_literal
from pql_pipeline.settings import Segment


def _segment_case(segments: list[Segment], col: str = "employees") -> str:
    if not segments:
        return "'unknown'"
    whens = []
    for s in segments:
        name = sql_literal(s.name)
        if s.max_employees is None:
            whens.append(f"ELSE {name}")
        else:
            whens.append(f"WHEN {col} <= {int(s.max_employees)} THEN {name}")
    return f"CASE WHEN {col} IS NULL THEN 'unknown' {' '.join(whens)} END"


def _history_sql(entity: str, key: str, event_type: str, key_expr: str, typed: dict[str, str]) -> str:
    """SCD-2 history of merged traits for identify (users) or group (accounts) calls."""
    typed_cols = ", ".join(f"{expr} AS {name}" for name, expr in typed.items())
    return f"""
        CREATE OR REPLACE TABLE {entity}_history AS
        WITH calls AS (
            SELECT {key_expr} AS {key}, event_ts, message_id,
                   coalesce(traits, '{{}}'::JSON) AS traits
            FROM validated_events
            WHERE event_type = '{event_type}' AND {key_expr} IS NOT NULL
        ), merged AS (
            SELECT {key}, event_ts, message_id,
                   list_reduce(list(traits) OVER w, lambda a, b: json_merge_patch(a, b)) AS merged
            FROM calls
            WINDOW w AS (PARTITION BY {key} ORDER BY event_ts, message_id
                         ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
        ), changes AS (
            SELECT *, lag(CAST(merged AS VARCHAR)) OVER (PARTITION BY {key} ORDER BY event_ts, message_id) AS prev
            FROM merged
        ), versions AS (
            SELECT {key}, event_ts AS valid_from, message_id, CAST(merged AS JSON) AS traits,
                   row_number() OVER (PARTITION BY {key} ORDER BY event_ts, message_id) AS version
            FROM changes WHERE prev IS NULL OR prev <> CAST(merged AS VARCHAR)
        )
        SELECT {key}, version, valid_from,
               lead(valid_from) OVER (PARTITION BY {key} ORDER BY version) AS valid_to,
               lead(valid_from) OVER (PARTITION BY {key} ORDER BY version) IS NULL AS is_current,
               {typed_cols}, traits, message_id
        FROM versions
        ORDER BY {key}, version
    """


def _ts(path: str) -> str:
    return f"TRY_CAST(json_extract_string(traits, '{path}') AS TIMESTAMPTZ)"


def _str(path: str) -> str:
    return f"NULLIF(trim(json_extract_string(traits, '{path}')), '')"


def build_users(conn: duckdb.DuckDBPyConnection) -> int:
    conn.execute(_history_sql("users", "user_id", "identify", "resolved_user_id", {
        "email": _str("$.email"), "name": _str("$.name"), "role": _str("$.role"),
        "created_at": _ts("$.created_at"),
    }))
    conn.execute("""
        CREATE OR REPLACE TABLE users AS
        WITH seen AS (
            SELECT resolved_user_id AS user_id, min(event_ts) AS first_seen_at, max(event_ts) AS last_seen_at
            FROM validated_events WHERE resolved_user_id IS NOT NULL GROUP BY ALL
        ), acct AS (
            SELECT resolved_user_id AS user_id, max_by(group_id, (event_ts, message_id)) AS account_id
            FROM validated_events WHERE event_type = 'group' AND resolved_user_id IS NOT NULL
              AND group_id IS NOT NULL GROUP BY ALL
        )
        SELECT s.user_id, h.email, h.name, h.role, h.created_at, a.account_id, h.traits,
               s.first_seen_at, s.last_seen_at, h.valid_from AS updated_at, coalesce(h.version, 0) AS version
        FROM seen s
        LEFT JOIN users_history h ON h.user_id = s.user_id AND h.is_current
        LEFT JOIN acct a ON a.user_id = s.user_id
        ORDER BY s.user_id
    """)
    return conn.execute("SELECT count(*) FROM users").fetchall()[0][0]


def build_accounts(conn: duckdb.DuckDBPyConnection, segments: list[Segment]) -> int:
    employees = ("TRY_CAST(TRY_CAST(json_extract_string(traits, '$.employees') AS DOUBLE) AS BIGINT)")
    conn.execute(_history_sql("accounts", "account_id", "group", "group_id", {
        "name": _str("$.name"), "employees": employees, "industry": _str("$.industry"),
        "country": f"upper({_str('$.country')})", "plan": _str("$.plan"),
    }))
    conn.execute(f"""
        ALTER TABLE accounts_history ADD COLUMN size_segment VARCHAR;
        UPDATE accounts_history SET size_segment = {_segment_case(segments)};
        CREATE OR REPLACE TABLE accounts_history AS
        SELECT account_id, version, valid_from, valid_to, is_current, name, employees, industry, country, plan,
               size_segment, traits, message_id
        FROM accounts_history ORDER BY account_id, version;
    """)
    conn.execute("""
        CREATE OR REPLACE TABLE accounts AS
        WITH members AS (
            SELECT account_id, count(DISTINCT user_id) AS user_count FROM account_memberships GROUP BY ALL
        ), seen AS (
            SELECT account_id, min(event_ts) AS first_seen_at FROM validated_events
            WHERE account_id IS NOT NULL GROUP BY ALL
        )
        SELECT h.account_id, h.name, h.employees, h.industry, h.country, h.plan, h.size_segment,
               coalesce(m.user_count, 0) AS user_count, h.traits,
               least(s.first_seen_at, first.valid_from) AS first_seen_at, h.valid_from AS updated_at, h.version
        FROM accounts_history h
        JOIN accounts_history first ON first.account_id = h.account_id AND first.version = 1
        LEFT JOIN members m ON m.account_id = h.account_id
        LEFT JOIN seen s ON s.account_id = h.account_id
        WHERE h.is_current
        ORDER BY h.account_id
    """)
    return conn.execute("SELECT count(*) FROM accounts").fetchall()[0][0]
