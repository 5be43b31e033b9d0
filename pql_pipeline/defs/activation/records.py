"""What the CRM receives: HubSpot companies (accounts) and contacts (users) built from a
day's scores.

Companies: every account routed to sales that day, and every account synced before that
is still scored (so its tier, flag and reasons stay current when it cools down). Contacts:
the users routed to sales that day (an account's contacts), and the ones synced before
that are still scored. Only ``pql_*`` properties and the id property are written, so
nothing a salesperson edits in HubSpot (name, owner, lifecycle stage) is overwritten. The
score is sent in whole percent (0.87) and ``pql_scored_on`` (the day of the values) does not
count as a change by itself, so a lead whose verdict did not change is not sent again.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd

from pql_pipeline.defs.activation import ledger as L
from pql_pipeline.lib.engine import sql_literal
from pql_pipeline.lib.warehouse import table_exists

VOLATILE = ("pql_scored_on",)   # sent with a record, but not a change on its own


def _synced_keys(conn, destination: str, object_type: str) -> str:
    """Keys the destination's ledger knows (``destination`` as the ledger names it)."""
    return (f"SELECT record_key FROM {L.LEDGER} WHERE destination = {sql_literal(destination)} "
            f"AND object_type = {sql_literal(object_type)}")


def _frame(df: pd.DataFrame, key: str, id_col: str, props: dict[str, str], day: dt.date) -> pd.DataFrame:
    records = df.rename(columns={key: "record_key"})
    records["id_value"] = df[id_col]
    records["properties"] = [{p: (None if pd.isna(row[c]) else row[c]) for p, c in props.items()}
                             for _, row in df.iterrows()]
    records["snapshot_date"] = day
    return records[["record_key", "id_value", "properties", "snapshot_date"]]


def company_records(conn, day: dt.date, destination: str, id_property: str) -> pd.DataFrame:
    L.ensure_tables(conn)
    if not table_exists(conn, "pql_account_scores"):
        return pd.DataFrame(columns=["record_key", "id_value", "properties", "snapshot_date"])
    df = conn.execute(f"""
        SELECT a.account_id, round(a.probability, 2) AS score, a.tier, a.is_pql, a.reason_text, a.caveat_text,
               a.pql_users, a.top_user_id, s.milestones_hit, a.model_version, a.segment, a.route,
               CAST(a.snapshot_date AS VARCHAR) AS scored_on
        FROM pql_account_scores AS a
        LEFT JOIN pql_scores AS s ON s.snapshot_date = a.snapshot_date AND s.user_id = a.top_user_id
        WHERE a.snapshot_date = ?
          AND (a.route = 'sales' OR a.account_id IN ({_synced_keys(conn, destination, 'companies')}))
        ORDER BY a.account_id""", [day]).df()
    props = {id_property: "account_id", "pql_score": "score", "pql_tier": "tier", "pql_is_pql": "is_pql",
             "pql_reasons": "reason_text", "pql_caveats": "caveat_text", "pql_users": "pql_users",
             "pql_top_user_id": "top_user_id", "pql_milestones": "milestones_hit", "pql_segment": "segment",
             "pql_route": "route",
             "pql_model_version": "model_version", "pql_scored_on": "scored_on"}
    return _frame(df, "account_id", "account_id", props, day)


def contact_records(conn, day: dt.date, destination: str, id_property: str) -> pd.DataFrame:
    L.ensure_tables(conn)
    if not table_exists(conn, "pql_scores"):
        return pd.DataFrame(columns=["record_key", "id_value", "properties", "snapshot_date"])
    email = "u.email" if table_exists(conn, "users") else "CAST(NULL AS VARCHAR)"
    users = "LEFT JOIN users AS u ON u.user_id = s.user_id" if table_exists(conn, "users") else ""
    df = conn.execute(f"""
        SELECT s.user_id, {email} AS email, s.account_id, round(s.probability, 2) AS score, s.tier, s.is_pql,
               s.reason_text, s.caveat_text, s.milestones_hit, s.model_version, s.route,
               CAST(s.snapshot_date AS VARCHAR) AS scored_on
        FROM pql_scores AS s {users}
        WHERE s.snapshot_date = ? AND (s.route = 'sales' OR s.user_id IN ({_synced_keys(conn, destination, 'contacts')}))
        ORDER BY s.user_id""", [day]).df()
    props = {"email": "email", "pql_user_id": "user_id", "pql_account_id": "account_id", "pql_score": "score",
             "pql_tier": "tier", "pql_is_pql": "is_pql", "pql_reasons": "reason_text", "pql_caveats": "caveat_text",
             "pql_milestones": "milestones_hit", "pql_route": "route", "pql_model_version": "model_version",
             "pql_scored_on": "scored_on"}
    if id_property not in props:
        props[id_property] = "user_id"
    id_col = props[id_property]
    return _frame(df, "user_id", id_col, props, day)
