"""Benchmark: point-in-time features (``compute_features``) for one snapshot day.

Synthesizes (once, cached under benchmarks/.data/) the tables the features read --
validated_events (with identify and group calls), identity_links, account_memberships,
validated_partitions, users_history, accounts_history -- directly in DuckDB SQL from hashes
of row numbers (deterministic for a seed), then measures, each in a fresh subprocess so that
its peak RSS is that work's alone (DuckDB memory_limit and 2 threads, the pipeline's
warehouse settings):

* cold:     ``compute_features`` for the last day of the data (user and account features)
            with no feature tables and no feature cache (what the run builds is timed);
* daily:    the same with the feature cache the cold run left, the snapshot day's
            partition validated again (a new version) and the previous day's features
            computed first (not timed; it leaves the state a daily run advances), as in a
            daily run; its output is compared with the cold run's;
* floor:    read-only queries timing less than any implementation of the snapshot must do
            (extracting the properties the signals read, counting every user's active
            days, every user signal in one cheapened pass; see ``worker_floor``), to set
            the target against;
* slice:    the cold run on a consistent slice of the users (every table restricted to
            the users whose id is below a bound), about ``--baseline-events`` events;
* baseline: a straightforward pandas implementation of the same user features (the
            signal definitions of signals.yaml interpreted with groupby / json.loads) on
            that slice, measured in the same run, so the result is a ratio rather than
            a machine-dependent number. Its output is compared with the slice's
            ``user_features`` column by column; disagreements are printed.

Writes benchmarks/results/features.json (features-quick.json with --quick) and prints
markdown tables, with per-statement seconds, RSS and spill. Generation time is reported
but is not part of any measurement. CPU used by other processes during a measurement is
reported and warned about: on a 2-core machine it slows the measurement down.

    python benchmarks/bench_features.py --quick        # 2 M events, 20 k users (CI smoke run)
    python benchmarks/bench_features.py                # 100 M events, 1 M users, 90 days
    python benchmarks/bench_features.py --profile      # + DuckDB profile (EXPLAIN ANALYZE) per statement
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from pql_pipeline.defs.features.features import compute_features  # noqa: E402
from pql_pipeline.defs.features.sql import ACTIVITY_TYPES, FeatureSpec, user_table_columns  # noqa: E402
from pql_pipeline.lib.contracts import load_contract  # noqa: E402
from pql_pipeline.lib.engine import json_path, sql_literal  # noqa: E402
from pql_pipeline.settings import PROJECT_ROOT, WarehouseSettings, load_settings  # noqa: E402
from pql_pipeline.signals import load_signals  # noqa: E402

CONTRACTS = PROJECT_ROOT / "data_contracts"
DATA = HERE / ".data"
GEN_VERSION = 2  # bump when the synthesized data changes (part of the cache key)
START = dt.date(2026, 1, 1)
MEMORY_LIMIT = WarehouseSettings().memory_limit  # the pipeline's default
THREADS = 2

# ------------------------------------------------------------------ synthetic data
# Event mix of the regular events: (kind, event_type, event_name, share)
MIX = [
    ("feature", "track", "Feature Used", 0.40),
    ("session_start", "track", "Session Started", 0.15),
    ("session_end", "track", "Session Ended", 0.15),
    ("report", "track", "Report Run", 0.15),
    ("project", "track", "Project Created", 0.04),
    ("error", "track", "Error Shown", 0.03),
    ("page", "page", None, 0.02),
    ("invite", "track", "Teammate Invited", 0.015),
    ("ticket", "track", "Support Ticket Opened", 0.015),
    ("onboarding", "track", "Onboarding Step Completed", 0.015),
    ("identify", "identify", None, 0.006),
    ("group", "group", None, 0.004),
    ("integration", "track", "Integration Connected", 0.005),
]
# once per user at signup (in this order, one second apart), and once for subscribers
LIFECYCLE = [("signup", "track", "Signed Up"), ("signup_identify", "identify", None),
             ("signup_group", "group", None), ("subscription", "track", "Subscription Started")]
KINDS = [(k, t, n) for k, t, n, _ in MIX] + LIFECYCLE
K = {k: i for i, (k, _, _) in enumerate(KINDS)}
FEATURE_NAMES = ["dashboards", "filters", "search", "comments", "kanban_view", "export_csv", "share_link",
                 "templates", "timeline_view", "calendar_view", "automations", "custom_fields", "notifications",
                 "api_keys"]
REPORT_TYPES = ["usage", "funnel", "retention", "cohort", "revenue", "custom"]
TEMPLATES = ["blank", "product_roadmap", "sprint_board", "marketing_campaign", "crm_pipeline", "okr_tracker"]
ERRORS = ["E_TIMEOUT", "E_SYNC_CONFLICT", "E_RENDER", "E_PERMISSION", "E_RATE_LIMIT", "E_UPLOAD_FAILED"]
ERROR_MESSAGES = ["The request timed out.", "Your changes conflict with a newer version.",
                  "Something went wrong while rendering this view.", "You do not have permission.",
                  "Too many requests.", "The file could not be uploaded."]
PAGES = ["Dashboard", "Projects", "Reports", "Settings", "Billing"]
ROLES = ["member", "member", "member", "editor", "viewer", "admin", "owner"]
TICKET_CATEGORIES = ["basics", "billing", "bug", "feature_request"]
PRIORITIES = ["low", "normal", "normal", "high", "urgent"]
ONBOARDING_STEPS = ["create_workspace", "set_up_profile", "create_first_project", "invite_team",
                    "connect_integration"]
INTEGRATIONS = ["slack", "github", "google_drive", "jira", "hubspot", "salesforce", "zapier", "figma",
                "microsoft_teams"]
SIGNUP_METHODS = ["email", "email", "google", "google", "github", "microsoft"]
INDUSTRIES = ["software", "marketing_agency", "ecommerce", "media", "finance", "healthcare", "manufacturing",
              "education", "nonprofit"]
COUNTRIES = ["US", "US", "US", "GB", "DE", "FR", "NL", "CA", "IN", "BR", "AU", "ES", "SE", "JP"]
ACCOUNT_PLANS = ["free"] * 12 + ["trial"] * 4 + ["starter"] * 2 + ["pro", "enterprise"]
PAID = {"starter": 12.0, "pro": 29.0, "enterprise": 59.0}
LATE_SHARE = 0.03  # events whose partition is the day after their timestamp
CHURN_SHARE = 0.3  # users inactive for the last 60 days (when the data spans more than 61 days)
SUBSCRIBE_SHARE = 0.05
UNLINKED_SHARE = 0.02  # users whose anonymous pre-signup events are never linked
ANON_SHARE = 0.3  # share of a user's signup-day events sent before they identified


def sql_list(xs) -> str:
    return "[" + ", ".join(sql_literal(str(x)) for x in xs) + "]"


def pick(lst: list, u01: str) -> str:
    """Element of a SQL list literal chosen by a uniform [0, 1) expression."""
    return f"{sql_list(lst)}[1 + CAST(floor(({u01}) * {len(lst)}) AS INTEGER)]"


def data_key(events: int, users: int, days: int, seed: int) -> str:
    return f"features-g{GEN_VERSION}-e{events}-u{users}-d{days}-s{seed}"


def make_conn(path: Path, memory_limit: str = "8GB"):
    import duckdb

    conn = duckdb.connect(str(path))
    conn.execute("SET TimeZone = 'UTC'")
    conn.execute(f"SET memory_limit = '{memory_limit}'")
    conn.execute(f"SET threads = {os.cpu_count() or 2}")
    return conn


def create_tables(conn) -> None:
    from pql_pipeline.lib.warehouse import ensure_tables

    ensure_tables(conn, load_contract(CONTRACTS / "validated_events.odcs.yaml"), "validated_events",
                  "identity_links", "account_memberships")
    ensure_tables(conn, load_contract(CONTRACTS / "users.odcs.yaml"), "users_history")
    ensure_tables(conn, load_contract(CONTRACTS / "accounts.odcs.yaml"), "accounts_history")


class Gen:
    """SQL expressions of the synthetic data, all functions of row numbers and the seed."""

    def __init__(self, seed: int):
        self.seed = seed

    def r(self, key: str, salt: int) -> str:
        """Uniform [0, 1) from a hash of (key, seed, salt)."""
        return f"((hash({key}, {self.seed * 1000 + salt}) >> 11) * 1.1102230246251565e-16)"

    uid = "printf('usr_%012d', u)"
    acc = "printf('acc_%010d', acct)"

    def anon(self) -> str:
        s = self.seed
        return (f"printf('%08x-%04x-4%03x-a%03x-%012d', hash(u, {s}, 1) % 4294967296, hash(u, {s}, 2) % 65536, "
                f"hash(u, {s}, 3) % 4096, hash(u, {s}, 4) % 4096, u)")

    def role(self) -> str:  # of user u
        return pick(ROLES, self.r("u", 27))

    def user_traits(self, with_role: bool = True) -> str:
        extra = f", 'role', {self.role()}" if with_role else ""
        return f"json_object('email', 'user' || u || '@example.com', 'name', 'User ' || u{extra})"

    def account(self) -> dict[str, str]:  # attributes of account acct
        h1, h2, h3, h4, h5 = (self.r("acct", 30 + k) for k in range(5))
        log_uniform = "round(exp(ln({lo}) + {h} * (ln({hi}) - ln({lo}))))"
        return {
            "size_segment": f"CASE WHEN {h1} < 0.35 THEN 'solo' WHEN {h1} < 0.75 THEN 'smb' "
                            f"WHEN {h1} < 0.93 THEN 'mid_market' ELSE 'enterprise' END",
            "employees": f"CAST(CASE WHEN {h1} < 0.35 THEN 1 "
                         f"WHEN {h1} < 0.75 THEN {log_uniform.format(lo=2, hi=51, h=h2)} "
                         f"WHEN {h1} < 0.93 THEN {log_uniform.format(lo=51, hi=1001, h=h2)} "
                         f"ELSE {log_uniform.format(lo=1001, hi=50001, h=h2)} END AS BIGINT)",
            "industry": pick(INDUSTRIES, h3), "country": pick(COUNTRIES, h4), "plan": pick(ACCOUNT_PLANS, h5),
        }

    def account_traits(self) -> str:
        a = self.account()
        return (f"json_object('name', 'Company ' || acct, 'employees', {a['employees']}, 'industry', "
                f"{a['industry']}, 'country', {a['country']}, 'plan', {a['plan']})")


def generate(path: Path, events: int, users: int, days: int, seed: int) -> dict:
    """Write the source tables into a new DuckDB file at ``path``.

    Users: signup day uniform over the period; 70 % stay active to the end, 30 % (when the
    period is longer than 61 days) sign up and stop within its first days - 60 days, so
    they are idle for the last 60 days. A user is active on a day of their lifetime with a
    per-user probability (0.1 .. 0.6, always on the signup day); events are spread over the
    active user-days in proportion to a heavy-tailed per-user intensity (Pareto, capped at
    50x) times per-day noise, so the total is ``events``. Every regular event is one of
    ``MIX``; on the signup day 30 % of a user's track / page events are anonymous (resolved
    through identity_links, except for 2 % of users who are never linked). Each user has a
    Signed Up event, an identify call (traits incl. role) and a group call (the account's
    traits: employees, industry, country, plan) at signup, later identify calls (10 %
    without the role) and group calls, and 5 % a Subscription Started. 3 % of events
    arrive a day late (partition_date = day + 1). Users belong to one of users/4 accounts
    (one membership each); users_history and accounts_history hold one version per user /
    account with the same traits.
    """
    tmp = path.with_suffix(".tmp.duckdb")
    for p in (tmp, Path(str(tmp) + ".wal")):
        p.unlink(missing_ok=True)
    accounts = max(1, users // 4)
    epoch0 = int(dt.datetime.combine(START, dt.time(), dt.timezone.utc).timestamp())
    churn = days > 61
    g = Gen(seed)
    r = g.r
    n_life = 3  # lifecycle events every user has
    t0 = time.perf_counter()
    conn = make_conn(tmp)
    create_tables(conn)
    conn.execute(f"""
CREATE TEMP TABLE g_users AS
WITH h AS (
  SELECT range AS u, {r('range', 1)} AS h1, {r('range', 2)} AS h2, {r('range', 3)} AS h3, {r('range', 4)} AS h4,
         {r('range', 5)} AS h5, {r('range', 7)} AS h7, {r('range', 8)} AS h8, {r('range', 9)} AS h9,
         {r('range', 10)} AS h10
  FROM range({users})
), c AS (
  SELECT *, ({'TRUE' if churn else 'FALSE'} AND h1 < {CHURN_SHARE}) AS churned FROM h
), s AS (
  SELECT *, CAST(CASE WHEN churned THEN floor(h2 * ({days} - 60)) ELSE floor(h2 * {days}) END AS BIGINT) AS s FROM c
)
SELECT u, s,
       CAST(CASE WHEN churned THEN s + floor(h3 * ({days} - 60 - s)) ELSE {days} - 1 END AS BIGINT) AS e,
       0.1 + 0.5 * h4 AS act,
       least(50.0, 1.0 / sqrt(greatest(h5, 1e-12))) AS intensity,
       CAST(hash(u, {seed * 1000 + 6}) % {accounts} AS BIGINT) AS acct,
       h7 < {SUBSCRIBE_SHARE} AS subscribes, h8 AS h_sub, h9 >= {UNLINKED_SHARE} AS linked,
       CAST(floor(h10 * 86000) AS BIGINT) AS signup_sec
FROM s""")
    n_subs = conn.execute("SELECT count(*) FILTER (WHERE subscribes) FROM g_users").fetchone()[0]
    n_reg = events - n_life * users - n_subs
    if n_reg < users:
        raise SystemExit(f"--events must be well above {n_life + 1} x --users "
                         f"(got {events:,} events for {users:,} users)")
    # active user-days, their weights, and each one's range of event numbers [i0, i1)
    conn.execute(f"""
CREATE TEMP TABLE g_ud AS
SELECT u, d, s, acct, intensity * (0.3 + 1.4 * {r('u * 4096 + d', 12)}) AS w
FROM (SELECT u, s, acct, act, intensity, unnest(range(s, e + 1)) AS d FROM g_users)
WHERE d = s OR {r('u * 4096 + d', 11)} < act""")
    conn.execute(f"""
CREATE TEMP TABLE g_pos AS
WITH c AS (
  SELECT *, sum(w) OVER (ORDER BY d, u ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS cw,
         sum(w) OVER () AS tw
  FROM g_ud
), e AS (SELECT *, CAST(floor({n_reg} * cw / tw) AS BIGINT) AS i1 FROM c)
SELECT u, d, s, acct, COALESCE(lag(i1) OVER (ORDER BY d, u), 0) AS i0, i1 FROM e""")
    user_days = conn.execute("SELECT count(*) FROM g_pos").fetchone()[0]

    cum, cuts = 0.0, []
    for *_, share in MIX:
        cum += share
        cuts.append(cum)
    kind_case = "CASE " + " ".join(f"WHEN hk < {c!r} THEN {k}" for k, c in enumerate(cuts[:-1])) + \
        f" ELSE {len(MIX) - 1} END"
    props = {
        K["feature"]: f"json_object('feature', {sql_list(FEATURE_NAMES)}[1 + CAST((floor(pow(hv, 1.7) * "
                      f"{len(FEATURE_NAMES)}) + u % 3) % {len(FEATURE_NAMES)} AS INTEGER)])",
        K["session_start"]: "json_object('session_id', 'ses_' || i)",
        K["session_end"]: "json_object('session_id', 'ses_' || (i - 1), 'duration_seconds', "
                          "round(2 + 1800 * pow(hv, 3), 1))",
        K["report"]: f"json_object('report_type', {pick(REPORT_TYPES, 'hv')}, 'duration_ms', "
                     "CAST(floor(50 + 5000 * hv2) AS INTEGER))",
        K["project"]: f"json_object('project_id', 'prj_' || i, 'template', {pick(TEMPLATES, 'hv')})",
        K["error"]: f"json_object('error_code', {pick(ERRORS, 'hv')}, 'message', {pick(ERROR_MESSAGES, 'hv')})",
        K["page"]: f"json_object('path', '/' || lower({pick(PAGES, 'hv')}), 'title', {pick(PAGES, 'hv')})",
        K["invite"]: "json_object('invitee_email', 'invitee' || CAST(floor(hv * 6) AS INTEGER) || '.' || u || "
                     f"'@example.com', 'role', {pick(ROLES[:-1], 'hv2')})",
        K["ticket"]: f"json_object('category', {pick(TICKET_CATEGORIES, 'hv')}, 'priority', {pick(PRIORITIES, 'hv2')})",
        K["onboarding"]: "json_object('step', 1 + CAST(floor(hv * 5) AS INTEGER), 'step_name', "
                         f"{pick(ONBOARDING_STEPS, 'hv')})",
        K["integration"]: f"json_object('integration', {pick(INTEGRATIONS, 'hv')})",
        K["signup"]: f"json_object('method', {pick(SIGNUP_METHODS, 'hv')}, 'plan', 'free')",
        K["subscription"]: f"json_object('plan', {pick(list(PAID), 'hv')}, 'mrr', "
                           f"{sql_list(list(PAID.values())).replace(chr(39), '')}[1 + CAST(floor(hv * 3) AS INTEGER)]"
                           " * (1 + CAST(floor(hv2 * 10) AS INTEGER)), 'billing_period', "
                           "CASE WHEN hv2 < 0.3 THEN 'annual' ELSE 'monthly' END)",
    }
    props_case = "CASE kind " + " ".join(f"WHEN {k} THEN {v}" for k, v in props.items()) + " END"
    traits_case = (f"CASE kind WHEN {K['signup_identify']} THEN {g.user_traits()} "
                   f"WHEN {K['identify']} THEN CASE WHEN hv < 0.1 THEN {g.user_traits(False)} "
                   f"ELSE {g.user_traits()} END "
                   f"WHEN {K['group']} THEN {g.account_traits()} WHEN {K['signup_group']} THEN {g.account_traits()} "
                   "END")
    name_case = (f"CASE WHEN kind = {K['page']} THEN {pick(PAGES, 'hv')} "
                 f"ELSE {sql_list([n or '' for _, _, n in KINDS])}[kind + 1] END")
    calls = f"({K['identify']}, {K['group']}, {K['signup_identify']}, {K['signup_group']})"
    groups = f"({K['group']}, {K['signup_group']})"
    insert = f"""
INSERT INTO validated_events BY NAME
SELECT DATE '{START}' + CAST(pd AS INTEGER) AS partition_date, 'msg_' || i AS message_id,
       {sql_list([t for _, t, _ in KINDS])}[kind + 1] AS event_type,
       CASE WHEN kind IN {calls} THEN NULL ELSE {name_case} END AS event_name,
       CASE WHEN is_anon THEN NULL ELSE {g.uid} END AS user_id, {g.anon()} AS anonymous_id,
       CASE WHEN is_anon THEN NULL ELSE {g.uid} END AS resolved_user_id,
       CASE WHEN kind IN {groups} THEN {g.acc} END AS group_id,
       CASE WHEN is_anon THEN NULL ELSE {g.acc} END AS account_id,
       to_timestamp({epoch0} + ts) AS event_ts,
       to_timestamp({epoch0} + greatest(ts + 2, pd * 86400 + hv2 * 3600)) AS received_at,
       to_timestamp({epoch0} + ts) AS sent_at,
       CASE WHEN kind IN {calls} THEN NULL ELSE {props_case} END AS properties,
       CASE WHEN kind IN {calls} THEN {traits_case} END AS traits,
       'dt=' || CAST(DATE '{START}' + CAST(pd AS INTEGER) AS VARCHAR) || '/events-0000.jsonl' AS source_file,
       i AS line_no
FROM (
  SELECT u, acct, i, pd, kind, is_anon AND kind NOT IN {calls} AS is_anon, ts,
         {r('i', 22)} AS hv, {r('i', 23)} AS hv2
  FROM (
    SELECT u, acct, i, d + CAST({r('i', 20)} < {LATE_SHARE} AS BIGINT) AS pd,
           {kind_case.replace('hk', r('i', 21))} AS kind,
           (d = s AND {r('i', 24)} < {ANON_SHARE}) AS is_anon,
           d * 86400 + floor({r('i', 25)} * 86400000) / 1000.0 AS ts
    FROM (SELECT u, d, s, acct, unnest(range(i0, i1)) AS i FROM g_pos WHERE d = $p OR d = $p - 1)
    UNION ALL
    SELECT u, acct, {n_reg} + k * {users} + u AS i, s AS pd, {K['signup']} + k AS kind, FALSE AS is_anon,
           s * 86400 + signup_sec + k AS ts
    FROM g_users, range({n_life}) AS t(k) WHERE s = $p
    UNION ALL
    SELECT u, acct, {n_reg + n_life * users} + u AS i, sd AS pd, {K['subscription']} AS kind, FALSE AS is_anon,
           sd * 86400 + floor({r('u', 26)} * 86400) AS ts
    FROM (SELECT *, s + CAST(floor(h_sub * (e - s + 1)) AS BIGINT) AS sd FROM g_users WHERE subscribes)
    WHERE sd = $p
  ) WHERE pd = $p
)"""
    # one INSERT per partition day, so the table is clustered by partition_date like the real one
    for p in range(days + 1):
        conn.execute(insert, {"p": p})
        if p % 10 == 0 or p == days:
            print(f"  partition {p + 1}/{days + 1} written ({time.perf_counter() - t0:.0f}s)", flush=True)

    signup_ts = f"to_timestamp({epoch0} + s * 86400 + signup_sec)"
    conn.execute(f"""
INSERT INTO identity_links BY NAME
SELECT DATE '{START}' + CAST(s AS INTEGER) AS partition_date, {g.anon()} AS anonymous_id, {g.uid} AS user_id,
       {signup_ts} AS linked_at
FROM g_users WHERE linked""")
    conn.execute(f"""
INSERT INTO account_memberships BY NAME
SELECT DATE '{START}' + CAST(s AS INTEGER) AS partition_date, {g.uid} AS user_id, {g.acc} AS account_id,
       {signup_ts} + INTERVAL 2 SECOND AS joined_at
FROM g_users""")
    conn.execute(f"""
INSERT INTO users_history BY NAME
SELECT {g.uid} AS user_id, 1 AS version, {signup_ts} + INTERVAL 1 SECOND AS valid_from, NULL AS valid_to,
       TRUE AS is_current, 'user' || u || '@example.com' AS email, 'User ' || u AS name, {g.role()} AS role,
       {signup_ts} AS created_at, {g.user_traits()} AS traits, 'msg_' || ({n_reg + users} + u) AS message_id
FROM g_users""")
    a = g.account()
    conn.execute(f"""
INSERT INTO accounts_history BY NAME
WITH fs AS (SELECT acct, min(s * 86400 + signup_sec) AS t, arg_min(u, s * 86400 + signup_sec) AS u
            FROM g_users GROUP BY acct)
SELECT {g.acc} AS account_id, 1 AS version, to_timestamp({epoch0} + COALESCE(fs.t + 2, 0)) AS valid_from,
       NULL AS valid_to, TRUE AS is_current, 'Company ' || acct AS name, {a['employees']} AS employees,
       {a['industry']} AS industry, {a['country']} AS country, {a['plan']} AS plan,
       {a['size_segment']} AS size_segment, {g.account_traits()} AS traits,
       COALESCE('msg_' || ({n_reg + 2 * users} + fs.u), 'none') AS message_id
FROM (SELECT range AS acct FROM range({accounts})) LEFT JOIN fs USING (acct)""")
    counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in
              ("validated_events", "identity_links", "account_memberships", "users_history", "accounts_history")}
    conn.execute("DROP TABLE g_pos")
    conn.execute("DROP TABLE g_ud")
    conn.execute("DROP TABLE g_users")
    conn.execute("CHECKPOINT")
    conn.close()
    tmp.rename(path)
    return {"generation_seconds": round(time.perf_counter() - t0, 1), "rows": counts, "user_days": user_days,
            "accounts": accounts, "subscribers": n_subs}


def ensure_partition_versions(path: Path) -> None:
    """``validated_partitions`` (one version per validated partition, as validation records
    them), if the validated_events contract defines it and the data does not have it yet:
    the feature cache only uses partitions whose version it knows."""
    from pql_pipeline.lib.contracts import ContractError
    from pql_pipeline.lib.warehouse import ensure_tables, table_exists

    contract = load_contract(CONTRACTS / "validated_events.odcs.yaml")
    try:
        contract.object("validated_partitions")
    except ContractError:
        return
    conn = make_conn(path)
    try:
        if not table_exists(conn, "validated_partitions"):
            ensure_tables(conn, contract, "validated_partitions")
            conn.execute("""
INSERT INTO validated_partitions BY NAME
SELECT partition_date, 'bench-' || CAST(partition_date AS VARCHAR) AS version,
       CAST(partition_date AS TIMESTAMPTZ) + INTERVAL 26 HOUR AS validated_at, count(*) AS validated_rows
FROM validated_events GROUP BY partition_date""")
            conn.execute("CHECKPOINT")
    finally:
        conn.close()


def ensure_data(events: int, users: int, days: int, seed: int) -> tuple[Path, dict]:
    path = DATA / f"{data_key(events, users, days, seed)}.duckdb"
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        ensure_partition_versions(path)
        meta = json.loads(meta_path.read_text())
        meta["cached"] = True
        return path, meta
    DATA.mkdir(parents=True, exist_ok=True)
    print(f"generating {events:,} events for {users:,} users over {days} days into {path} ...", flush=True)
    meta = generate(path, events, users, days, seed)
    ensure_partition_versions(path)
    meta["file_bytes"] = path.stat().st_size
    meta_path.write_text(json.dumps(meta, indent=2))
    meta["cached"] = False
    print(f"generated in {meta['generation_seconds']}s ({meta['file_bytes'] / 2**30:.2f} GiB)", flush=True)
    return path, meta


def slice_bound(users: int, events: int, baseline_events: int) -> int:
    return max(1, min(users, math.ceil(users * baseline_events / events)))


def ensure_slice(src: Path, n_users: int) -> Path:
    """The users with index < n_users and everything that belongs to them (a consistent subset)."""
    path = src.with_name(f"{src.stem}-slice{n_users}.duckdb")
    if path.exists():
        ensure_partition_versions(path)
        return path
    tmp = path.with_suffix(".tmp.duckdb")
    tmp.unlink(missing_ok=True)
    bound = f"usr_{n_users:012d}"
    conn = make_conn(tmp)
    create_tables(conn)
    conn.execute(f"ATTACH '{src}' AS src (READ_ONLY)")
    conn.execute(f"INSERT INTO identity_links SELECT * FROM src.identity_links WHERE user_id < '{bound}'")
    conn.execute(f"""
INSERT INTO validated_events SELECT * FROM src.validated_events
WHERE resolved_user_id < '{bound}'
   OR (resolved_user_id IS NULL AND anonymous_id IN (SELECT anonymous_id FROM identity_links))""")
    conn.execute(f"INSERT INTO account_memberships SELECT * FROM src.account_memberships WHERE user_id < '{bound}'")
    conn.execute(f"INSERT INTO users_history SELECT * FROM src.users_history WHERE user_id < '{bound}'")
    conn.execute("INSERT INTO accounts_history SELECT * FROM src.accounts_history WHERE account_id IN "
                 "(SELECT account_id FROM account_memberships)")
    conn.execute("DETACH src")
    conn.execute("CHECKPOINT")
    conn.close()
    tmp.rename(path)
    ensure_partition_versions(path)
    return path


# ------------------------------------------------------------------ measured work (subprocesses)

def feature_spec() -> FeatureSpec:
    settings = load_settings()
    return FeatureSpec(signals=load_signals(settings.signals_path),
                       conversion_events=tuple(settings.labels.conversion_events),
                       active_within_days=settings.features.active_within_days,
                       paid_plans=tuple(settings.labels.paid_plans))


def _status_mib(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mib() -> float:
    return _status_mib("VmRSS") or 0.0


def peak_rss_mib() -> float:
    """Peak RSS of this process. On Linux VmHWM, the high-water mark of this process's own
    address space: ``ru_maxrss`` is not used because it carries over the parent's peak through
    fork + exec, so a worker started by a parent that generated the data would report the
    generator's memory."""
    hwm = _status_mib("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class CpuClock:
    """CPU seconds used by this process and by everything else on the machine between
    ``start`` and ``stop``: other work on a 2-core machine slows a measurement down, so
    the figure is reported with it (``other_cpu_seconds``)."""

    def _read(self) -> tuple[float, float]:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        own = ru.ru_utime + ru.ru_stime
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:9]]
            busy = (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
        except OSError:
            busy = own
        return own, busy

    def start(self) -> None:
        self._own, self._busy = self._read()

    def stop(self) -> dict:
        own, busy = self._read()
        own_s, busy_s = own - self._own, busy - self._busy
        return {"cpu_seconds": round(own_s, 1), "other_cpu_seconds": round(max(0.0, busy_s - own_s), 1)}


def dir_bytes(path: str) -> int:
    total = 0
    try:
        for e in os.scandir(path):
            try:
                total += e.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                pass
    except (FileNotFoundError, NotADirectoryError):
        pass
    return total


class Sampler(threading.Thread):
    """Samples the process RSS and the size of DuckDB's spill directory while a statement runs."""

    def __init__(self, temp_dir: str, every: float = 0.1):
        super().__init__(daemon=True)
        self.temp_dir, self.every = temp_dir, every
        self.max_rss = self.max_temp = 0.0
        self._halt = threading.Event()

    def reset(self) -> tuple[float, float]:
        out = (self.max_rss, self.max_temp)
        self.max_rss = self.max_temp = 0.0
        return out

    def run(self) -> None:
        while not self._halt.wait(self.every):
            self.max_rss = max(self.max_rss, rss_mib())
            self.max_temp = max(self.max_temp, dir_bytes(self.temp_dir) / 2**20)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def profile_text(profile: dict, min_seconds: float = 0.05) -> str:
    """DuckDB's JSON profile as an indented operator tree: CPU seconds (summed over threads),
    output rows and the operator's main detail; subtrees cheaper than ``min_seconds`` folded."""
    q, sysinfo = profile.get("query", {}), profile.get("system", {})
    out = [f"{q.get('total_time', 0):.2f}s wall, {q.get('cpu_time', 0):.2f}s operator CPU, peak buffer memory "
           f"{sysinfo.get('peak_buffer_memory', 0) / 2**20:,.0f} MiB, peak spill "
           f"{sysinfo.get('peak_temp_dir_size', 0) / 2**20:,.0f} MiB",
           f"SQL: {' '.join(str(q.get('sql', '')).split())[:300]}"]

    def total(op) -> float:
        return op.get("operator_timing", op.get("timing", 0.0)) + sum(total(c) for c in op.get("children", []))

    def walk(op, depth: int) -> None:
        t = op.get("operator_timing", op.get("timing", 0.0))
        rows = op.get("operator_cardinality", op.get("intermediate_rows", 0))
        info = op.get("extra_info") or {}
        detail = "; ".join(f"{k}: {' '.join(str(v).split())}" for k, v in info.items()
                           if k not in ("Estimated Cardinality",))[:240]
        name = op.get("operator_name") or op.get("operator_type") or op.get("type", "?")
        out.append(f"{'  ' * depth}{name.strip()}  {t:.2f}s  {rows:,} rows  (subtree {total(op):.2f}s)  {detail}")
        for c in op.get("children", []):
            if total(c) >= min_seconds:
                walk(c, depth + 1)
            else:
                out.append(f"{'  ' * (depth + 1)}... ({c.get('operator_name') or c.get('type', '?')} subtree "
                           f"{total(c):.2f}s)")

    for op in profile.get("operator", profile.get("children", [])):
        walk(op, 0)
    return "\n".join(out)


class TimedConnection:
    """Passes every ``execute`` through to DuckDB and records its seconds, RSS and spill size;
    with ``profile_dir`` also writes DuckDB's profile (EXPLAIN ANALYZE) of each statement, as
    JSON and as an indented operator tree (``NN.txt``), with its SQL (``NN.sql``)."""

    def __init__(self, conn, sampler: Sampler, profile_dir: Path | None = None):
        self.conn, self.sampler, self.profile_dir = conn, sampler, profile_dir
        self.statements: list[dict] = []

    def execute(self, sql: str, *args):
        profiled = self.profile_dir is not None and sql.lstrip().upper().startswith(("CREATE", "INSERT", "DELETE"))
        n = len(self.statements)
        if profiled:
            (self.profile_dir / f"{n:02d}.sql").write_text(sql)
            self.conn.execute("PRAGMA enable_profiling = 'json'")
            self.conn.execute(f"SET profiling_output = '{self.profile_dir / f'{n:02d}.json'}'")
        self.sampler.reset()
        t = time.perf_counter()
        try:
            return self.conn.execute(sql, *args)
        finally:
            secs = time.perf_counter() - t
            if profiled:
                self.conn.execute("PRAGMA disable_profiling")
                js = self.profile_dir / f"{n:02d}.json"
                if js.exists():
                    (self.profile_dir / f"{n:02d}.txt").write_text(profile_text(json.loads(js.read_text())))
            rss, tmp = self.sampler.reset()
            self.statements.append({"sql": " ".join(sql.split())[:90], "seconds": round(secs, 3),
                                    "max_rss_mib": round(max(rss, rss_mib())), "max_spill_mib": round(tmp)})

    def __getattr__(self, name):
        return getattr(self.conn, name)


def up_to(snapshot: dt.date) -> str:
    """The condition of the validated events a snapshot covers (the measure of events/s)."""
    end = (snapshot + dt.timedelta(days=1)).isoformat()
    return f"partition_date <= DATE '{snapshot}' AND event_ts < TIMESTAMPTZ '{end} 00:00:00+00'"


def count_events(conn, snapshot: dt.date) -> int:
    return conn.execute(f"SELECT count(*) FROM validated_events WHERE {up_to(snapshot)}").fetchone()[0]


CACHE_TABLES = ("feature\\_cache\\_%", "feature\\_state\\_%")  # the feature cache's and states' tables


def cache_tables(conn) -> list[str]:
    like = " OR ".join(f"table_name LIKE '{p}' ESCAPE '\\'" for p in CACHE_TABLES)
    return [r[0] for r in conn.execute(
        f"SELECT table_name FROM duckdb_tables() WHERE NOT temporary AND ({like})").fetchall()]


def output_paths(db: Path) -> tuple[Path, Path]:
    return DATA / f"{db.stem}-cold-user.parquet", DATA / f"{db.stem}-cold-account.parquet"


def compare_tables(conn, table: str, ref: Path, keys: list[str]) -> dict:
    """Rows and columns of ``table`` that differ from the parquet copy ``ref`` (doubles within 1.5e-6)."""
    types = dict(conn.execute(f"SELECT column_name, data_type FROM information_schema.columns "
                              f"WHERE table_name = '{table}'").fetchall())
    on = " AND ".join(f"a.{k} = b.{k}" for k in keys)
    counts = conn.execute(f"SELECT (SELECT count(*) FROM {table}), (SELECT count(*) FROM '{ref}'), "
                          f"(SELECT count(*) FROM {table} AS a JOIN '{ref}' AS b ON {on})").fetchone()
    bad = {}
    for c, t in types.items():
        if c in keys or c == "definition_hash":
            continue
        a, b = f'a."{c}"', f'b."{c}"'
        cond = (f"NOT ({a} IS NULL AND {b} IS NULL) AND ({a} IS NULL OR {b} IS NULL OR abs({a} - {b}) > 1.5e-6)"
                if t == "DOUBLE" else f"{a} IS DISTINCT FROM {b}")
        n = conn.execute(f"SELECT count(*) FROM {table} AS a JOIN '{ref}' AS b ON {on} WHERE {cond}").fetchone()[0]
        if n:
            bad[c] = n
    return {"rows": counts[0], "reference_rows": counts[1], "matched": counts[2], "differing_columns": bad,
            "identical": counts[0] == counts[1] == counts[2] and not bad}


def descendants_peak_rss_mib() -> int:
    """Sum of the peak RSS (VmHWM) of this process's live descendants (Spark's JVM)."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parent[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    mine, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, pp in parent.items() if pp in frontier} - mine
        mine |= frontier
    kib = 0
    for pid in mine:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    kib += int(line.split()[1])
        except OSError:
            continue
    return round(kib / 1024)


def worker_duckdb(db: Path, snapshot: dt.date, profile_dir: Path | None, memory_limit: str = MEMORY_LIMIT,
                  scenario: str = "cold", save_output: bool = False) -> dict:
    """``cold``: no feature tables, feature cache or state (whatever the run builds is timed).
    ``daily``: the cache left by a cold run, with the snapshot day's partition validated
    again (a new version) and the previous day computed first (not timed), as in a daily
    run; the output is compared with the cold run's."""
    from pql_pipeline.lib.warehouse import Warehouse

    spec = feature_spec()
    wh = Warehouse(database=str(db), memory_limit=memory_limit, threads=THREADS)
    with wh.get_connection() as conn:
        # the state the scenario starts from (not timed)
        conn.execute("DROP TABLE IF EXISTS user_features")
        conn.execute("DROP TABLE IF EXISTS account_features")
        if scenario in ("cold", "spark"):
            for t in cache_tables(conn):
                conn.execute(f'DROP TABLE "{t}"')
        else:
            conn.execute("UPDATE validated_partitions SET version = version || '+rerun' "
                         "WHERE partition_date = (SELECT max(partition_date) FROM validated_partitions "
                         f"WHERE partition_date <= DATE '{snapshot}')")
            # yesterday's run (not timed): its features and the state it keeps
            compute_features(conn, spec, [snapshot - dt.timedelta(days=1)])
            conn.execute("DELETE FROM user_features")
            conn.execute("DELETE FROM account_features")
            if scenario == "daily_history":   # the same day computed from the history (no kept aggregates)
                for t in cache_tables(conn):
                    if t.startswith("feature_state"):
                        conn.execute(f'DROP TABLE "{t}"')
        conn.execute("CHECKPOINT")
        n_events = count_events(conn, snapshot)
    load = os.getloadavg()[0]
    with wh.get_connection() as conn:
        temp_dir = conn.execute("SELECT current_setting('temp_directory')").fetchone()[0]
        if profile_dir:
            shutil.rmtree(profile_dir, ignore_errors=True)
            profile_dir.mkdir(parents=True)
        sampler = Sampler(temp_dir)
        sampler.start()
        rss_before = rss_mib()
        timed = TimedConnection(conn, sampler, profile_dir)
        clock = CpuClock()
        clock.start()
        spark = jvm_start = None
        if scenario == "spark":
            # the same statements on Spark in local mode (features.engine: spark), inputs staged
            # from this warehouse as Parquet (timed: a first run stages every partition)
            from pql_pipeline.lib.spark import SparkFeatures
            from pql_pipeline.settings import SparkSettings

            staging = DATA / "spark-staging" / db.stem
            shutil.rmtree(staging, ignore_errors=True)
            t = time.perf_counter()
            spark = SparkFeatures(SparkSettings(master=f"local[{THREADS}]", conf={"spark.driver.memory": "3g"}),
                                  str(staging))
            jvm_start = time.perf_counter() - t
        t = time.perf_counter()
        run = compute_features(timed if spark is None else conn, spec, [snapshot], spark=spark)
        secs = time.perf_counter() - t
        cpu = clock.stop()
        sampler.stop()
        jvm_peak = None
        if spark is not None:
            jvm_peak = descendants_peak_rss_mib()  # while the JVM lives: its VmHWM
            spark.spark.stop()
            shutil.rmtree(DATA / "spark-staging" / db.stem, ignore_errors=True)
        cache = cache_tables(conn)
        check = None
        user_ref, account_ref = output_paths(db)
        if save_output:
            conn.execute(f"COPY user_features TO '{user_ref}' (FORMAT parquet)")
            conn.execute(f"COPY account_features TO '{account_ref}' (FORMAT parquet)")
        if scenario not in ("cold",) and user_ref.exists():
            check = {"user_features": compare_tables(conn, "user_features", user_ref, ["snapshot_date", "user_id"]),
                     "account_features": compare_tables(conn, "account_features", account_ref,
                                                        ["snapshot_date", "account_id"])}
    return {"scenario": scenario, "feature_cache": bool(cache),
            "cache_partitions_built": getattr(run, "cache_partitions_built", None),
            "incremental": (getattr(run, "incremental", None) or [None])[0], "same_as_cold": check,
            "events": n_events, "seconds": round(secs, 3), "events_per_s": round(n_events / secs),
            "user_rows": run.user_rows, "account_rows": run.account_rows,
            "peak_rss_mib": round(peak_rss_mib()), "rss_before_mib": round(rss_before),
            # Spark's JVM is a child process: its own peak
            **({"jvm_start_seconds": round(jvm_start, 2), "staging": getattr(run, "staging", None),
                "jvm_peak_rss_mib": jvm_peak}
               if scenario == "spark" else {}),
            "load_average_before": round(load, 2), **cpu,
            "max_spill_mib": max((s["max_spill_mib"] for s in timed.statements), default=0),
            "statements": timed.statements}


def worker_floor(db: Path, snapshot: dt.date, memory_limit: str = MEMORY_LIMIT) -> dict:
    """What this machine needs for less than any implementation computing the snapshot from
    the events must do, each in the cheapest form found, with the warehouse's settings
    (read-only queries; nothing is kept):

    - ``parse_history``: extract the properties the value signals read (features used,
      invitee e-mails, session seconds, ticket category, integration) from the events of
      those signals up to the snapshot (every event scanned), parsing each event's JSON
      once per property;
    - ``user_active_days``: count every user's distinct UTC days with an event up to the
      snapshot (one signal), as per-user OR-ed bit masks of integer days;
    - ``user_signals_one_pass``: one scan and one aggregate per user for every user signal
      but traits, made cheaper than they are: distinct counts count values instead of
      distinct values, windows from signup cover the whole history;
    - ``parse_day``: ``parse_history`` on the snapshot day's own partition (what a daily run
      cannot avoid before it has anything to aggregate).

    All of them group by the stored user ids: no anonymous event is attributed through
    identity links, no account is rolled up, and nothing is written.
    """
    from pql_pipeline.lib.warehouse import Warehouse

    spec = feature_spec()
    signals = [s for s in spec.signals.signals if s.kind != "trait"]
    # one column per (event, property) read: each event's JSON is parsed once per property
    values: dict[tuple[str, str], str] = {}
    for s in signals:
        for p in sorted({p for p in (s.prop, s.detail_property) if p} | set(s.where or {})):
            if s.event:
                values.setdefault((s.event, p), f"v{len(values)}")
    upto = up_to(snapshot)
    wh = Warehouse(database=str(db), memory_limit=memory_limit, threads=THREADS)
    out: dict = {"properties_read": [list(k) for k in values], "load_average_before": round(os.getloadavg()[0], 2)}
    with wh.get_connection() as conn:
        # integer days from the first event's day; one 64-bit mask per 64 days
        d0 = conn.execute(f"SELECT min(epoch_ms(event_ts) // 86400000) FROM validated_events "
                          f"WHERE {upto}").fetchone()[0]
        if d0 is None:  # no event up to the snapshot
            d0 = (snapshot - dt.date(1970, 1, 1)).days
        snap = (snapshot - dt.date(1970, 1, 1)).days - d0
        day = f"(epoch_ms(event_ts) // 86400000 - {d0})"
        words = snap // 64 + 1
        masks = ", ".join(
            f"bit_or(CASE WHEN {day} // 64 = {w} THEN 1::UBIGINT << ({day} % 64)::UBIGINT ELSE 0::UBIGINT END) AS w{w}"
            for w in range(words))
        days = " + ".join(f"bit_count(w{w})" for w in range(words))
        parsed = ", ".join(f"CASE WHEN event_name = {sql_literal(e)} THEN json_extract_string(properties, "
                           f"{json_path(p)}) END AS {c}" for (e, p), c in values.items())
        source = f"(SELECT *{', ' + parsed if parsed else ''} FROM validated_events WHERE {upto})"
        activity = f"event_type IN ({', '.join(sql_literal(t) for t in ACTIVITY_TYPES)})"

        def cond(s, window: int | None = None, before: int = 0) -> str:
            c = [f"event_name = {sql_literal(s.event)}"] if s.event else [activity]
            c += [f"{values[(s.event, k)]} = {sql_literal(str(v).lower() if isinstance(v, bool) else str(v))}"
                  for k, v in (s.where or {}).items()]
            if window:
                c += [f"{day} > {snap - before - window}", f"{day} <= {snap - before}"]
            return " AND ".join(c)

        aggs = []
        for s in signals:
            w, v = s.window_days, values.get((s.event, s.prop)) if s.prop else None
            if s.kind == "count":
                aggs.append(f"count(*) FILTER (WHERE {cond(s, w)})")
            elif s.kind == "distinct_count":   # values counted, not distinct values: less work
                aggs.append(f"count({v}) FILTER (WHERE {cond(s, w)})")
            elif s.kind == "first_time":
                detail = values.get((s.event, s.detail_property)) if s.detail_property else "event_ts"
                aggs.append(f"arg_min({detail}, event_ts) FILTER (WHERE {cond(s)})")
            elif s.kind == "session_length":
                aggs.append(f"avg(TRY_CAST({v} AS DOUBLE)) FILTER (WHERE {cond(s, w)})")
            elif s.kind == "share":
                aggs.append(f"avg(CASE WHEN TRY_CAST({v} AS DOUBLE) < {s.below} THEN 1.0 ELSE 0.0 END) "
                            f"FILTER (WHERE {cond(s, w)})")
            elif s.kind == "recency":
                aggs.append(f"max(event_ts) FILTER (WHERE {cond(s)})")
            elif s.kind == "trend":
                p = s.period_days or 7
                aggs += [f"count(*) FILTER (WHERE {cond(s, p)})", f"count(*) FILTER (WHERE {cond(s, p, p)})"]
            # active_days: from the masks
        aggs = [f"{a} AS a{i}" for i, a in enumerate(aggs)]
        all_parsed = " + ".join(f"count({c})" for c in values.values()) or "0"
        queries = {
            "parse_history": f"SELECT count(*), {all_parsed} FROM {source}",
            "user_active_days": f"SELECT count(*), sum({days}) FROM (SELECT user_id, {masks} "
                                f"FROM validated_events WHERE {upto} GROUP BY user_id)",
            # (every aggregate is used, or DuckDB drops it from the plan)
            "user_signals_one_pass": f"SELECT count(*), sum({days}), "
                                     f"{' + '.join(f'count(a{i})' for i in range(len(aggs))) or '0'} "
                                     f"FROM (SELECT {', '.join(['user_id', masks, *aggs])} FROM {source} "
                                     f"GROUP BY user_id)",
            "parse_day": f"SELECT count(*), {all_parsed} FROM {source} WHERE partition_date = DATE '{snapshot}'",
        }
        out["signals_in_one_pass"] = len(signals)
        for name, sql in queries.items():
            t = time.perf_counter()
            row = conn.execute(sql).fetchone()
            out[name] = {"seconds": round(time.perf_counter() - t, 3), "rows": row[0], "amount": row[1],
                         **({"non_null_aggregates": row[2]} if len(row) > 2 else {})}
    return out


# ---- the pandas baseline

def _jstr(v):
    """json_extract_string semantics for a parsed top-level value."""
    if v is None or isinstance(v, str):
        return v
    return json.dumps(v, separators=(",", ":"))


def pandas_user_features(ev, links, members, spec: FeatureSpec, snapshot: dt.date):
    """User features for one snapshot, straightforwardly in pandas, from the same signal definitions.

    ``ev``: validated_events (resolved_user_id, anonymous_id, event_type, event_name, event_ts,
    partition_date, message_id, properties and traits as JSON text); the other frames are the
    tables of the same names. A signal's ``event`` is a track event's name. Point in time for one
    snapshot S: an event counts if it happened
    and arrived by S; an anonymous event belongs to the user of its anonymous id's earliest
    link (by linked_at, then user id) among the links that arrived by S; traits are the latest
    identify call's (by timestamp, then message id) that carries the trait.
    """
    import numpy as np
    import pandas as pd

    sigs = spec.signals
    S = pd.Timestamp(snapshot)
    end = pd.Timestamp(snapshot + dt.timedelta(days=1), tz="UTC")

    def day_of(col):
        return pd.to_datetime(col).astype("datetime64[us]")

    ev = ev.assign(partition_date=day_of(ev["partition_date"]))
    ev = ev[(ev["partition_date"] <= S) & (ev["event_ts"] < end)]
    # anonymous events resolved through the first link of their anonymous id known by the snapshot
    lk = links.assign(partition_date=day_of(links["partition_date"]))
    lk = lk[lk["partition_date"] <= S].sort_values(["linked_at", "user_id"])
    lk = lk.groupby("anonymous_id").agg(link_user=("user_id", "first"), link_day=("partition_date", "min"))
    known = ev[ev["resolved_user_id"].notna()].rename(columns={"resolved_user_id": "user_id"})
    known = known.assign(avail_day=known["partition_date"])
    anon = ev[ev["resolved_user_id"].isna()].drop(columns="resolved_user_id").join(lk, on="anonymous_id",
                                                                                  how="inner")
    anon = anon.rename(columns={"link_user": "user_id"})
    anon["avail_day"] = np.maximum(anon["link_day"], anon["partition_date"])
    e = pd.concat([known, anon.drop(columns="link_day")], ignore_index=True)
    e["day"] = e["event_ts"].dt.tz_convert("UTC").dt.tz_localize(None).dt.normalize().astype("datetime64[us]")
    e = e[(e["day"] <= S) & (e["avail_day"] <= S)].reset_index(drop=True)
    e["age"] = (S - e["day"]).dt.days
    e["activity"] = e["event_type"].isin(ACTIVITY_TYPES)

    # spine: users active within active_within_days, with their signup day
    first_day = e.groupby("user_id")["day"].min()
    signup_day = first_day
    if sigs.signup_event:
        signup_day = e[e["event_name"] == sigs.signup_event].groupby("user_id")["day"].min() \
            .reindex(first_day.index).fillna(first_day)
    last_active = e[e["activity"]].groupby("user_id")["day"].max()
    users = last_active[last_active > S - pd.Timedelta(days=spec.active_within_days)].index
    e = e[e["user_id"].isin(users)].reset_index(drop=True)
    e["since_signup"] = (e["day"] - e["user_id"].map(signup_day)).dt.days

    # properties the signals read, parsed once per event that needs them
    keys_by_event: dict[str, set[str]] = {}
    for s in [*sigs.signals, *sigs.account_signals]:
        if s.kind == "trait":
            continue
        keys = {k for k in (s.prop, s.detail_property) if k} | set((s.where or {}).keys())
        if keys:
            keys_by_event.setdefault(s.event, set()).update(keys)
    all_keys = sorted(set().union(*keys_by_event.values())) if keys_by_event else []
    mask = e["event_name"].isin([k for k in keys_by_event if k]) if None not in keys_by_event else e["activity"]
    parsed = [json.loads(x) if isinstance(x, str) else None for x in e.loc[mask, "properties"]]
    for key in all_keys:
        col = pd.Series(None, index=e.index, dtype=object)
        col[mask] = [_jstr(d.get(key)) if isinstance(d, dict) else None for d in parsed]
        e["p_" + key] = col

    def cond(s):
        m = ((e["event_type"] == "track") & (e["event_name"] == s.event)) if s.event else e["activity"]
        for key, value in (s.where or {}).items():
            col = e["p_" + key]
            if isinstance(value, bool):
                m = m & (col == ("true" if value else "false"))
            elif isinstance(value, (int, float)):
                m = m & (pd.to_numeric(col, errors="coerce") == float(value))
            else:
                m = m & (col == value)
        return m

    def window(s):
        if s.window_days:
            return e["age"] < s.window_days
        if s.within_days_of_signup:
            return (e["since_signup"] >= 0) & (e["since_signup"] < s.within_days_of_signup)
        return pd.Series(True, index=e.index)

    def per_user(series, fill=None):
        out = series.reindex(users)
        return out if fill is None else out.fillna(fill)

    out = pd.DataFrame(index=users)
    out.index.name = "user_id"
    out["snapshot_date"] = S
    g = e.groupby("user_id")
    out["signup_date"] = per_user(signup_day)
    out["days_since_signup"] = (S - out["signup_date"]).dt.days
    out["is_paying"] = per_user(e[e["event_name"].isin(spec.conversion_events)].groupby("user_id").size(), 0) > 0
    identifies = e[e["event_type"] == "identify"]
    mem = members.assign(partition_date=day_of(members["partition_date"]))
    mem = mem[(mem["joined_at"].dt.tz_convert("UTC").dt.tz_localize(None).dt.normalize() <= S)
              & (mem["partition_date"] <= S)].sort_values("joined_at")
    out["account_id"] = per_user(mem.groupby("user_id")["account_id"].last())

    for s in sigs.signals:
        if s.kind == "count":
            out[s.name] = per_user(e[cond(s) & window(s)].groupby("user_id").size(), 0)
        elif s.kind == "distinct_count":
            v = e["p_" + s.prop]
            out[s.name] = per_user(v[cond(s) & window(s) & v.notna()].groupby(e["user_id"]).nunique(), 0)
        elif s.kind == "first_time":
            sub = e[cond(s) & window(s)]
            out[s.name] = per_user(sub.groupby("user_id").size(), 0) > 0
            if s.detail_property:
                firsts = sub.sort_values(["event_ts", "message_id"]).drop_duplicates("user_id")
                out[s.name + "_detail"] = per_user(firsts.set_index("user_id")["p_" + s.detail_property])
        elif s.kind == "active_days":
            out[s.name] = per_user(e[e["activity"] & window(s)].groupby("user_id")["day"].nunique(), 0)
        elif s.kind in ("session_length", "share"):
            v = pd.to_numeric(e["p_" + s.prop], errors="coerce")
            sel = cond(s) & window(s)
            n = per_user(v[sel & v.notna()].groupby(e["user_id"]).size(), 0)
            if s.kind == "session_length":
                num = per_user(v[sel].groupby(e["user_id"]).sum(), 0)
            else:
                num = per_user(v[sel & (v < s.below)].groupby(e["user_id"]).size(), 0)
            out[s.name] = (num / n.where(n > 0)).round(6)
        elif s.kind == "recency":
            last = e[cond(s) if s.event else e["activity"]].groupby("user_id")["day"].max()
            out[s.name] = (S - per_user(last)).dt.days
        elif s.kind == "trend":
            p = s.period_days or 7
            sel = cond(s) if s.event else e["activity"]
            cur = per_user(e[sel & (e["age"] < p)].groupby("user_id").size(), 0)
            prev = per_user(e[sel & (e["age"] >= p) & (e["age"] < 2 * p)].groupby("user_id").size(), 0)
            out[s.name] = ((cur - prev) / np.maximum(prev, 1)).round(6)
        elif s.kind == "trait":
            calls = identifies.assign(value=[_jstr(json.loads(t).get(s.prop)) if isinstance(t, str) else None
                                             for t in identifies["traits"]])
            latest = calls[calls["value"].notna()].sort_values(["event_ts", "message_id"]) \
                .drop_duplicates("user_id", keep="last").set_index("user_id")["value"]
            if s.type == "number":
                latest = pd.to_numeric(latest, errors="coerce")
            elif s.type == "boolean":
                latest = latest.str.lower().map({"true": True, "false": False, "1": True, "0": False})
            out[s.name] = per_user(latest)
    out["max_event_ts"] = per_user(g["event_ts"].max())
    return out.reset_index()


def worker_pandas(db: Path, snapshot: dt.date, frame_out: Path) -> dict:
    import duckdb

    spec = feature_spec()
    rss_before = rss_mib()
    clock = CpuClock()
    clock.start()
    t0 = time.perf_counter()
    conn = duckdb.connect(str(db), read_only=True)
    conn.execute("SET TimeZone = 'UTC'")
    ev = conn.execute("SELECT resolved_user_id, anonymous_id, event_type, event_name, event_ts, partition_date, "
                      "message_id, CAST(properties AS VARCHAR) AS properties, CAST(traits AS VARCHAR) AS traits "
                      "FROM validated_events").df()
    links = conn.execute("SELECT anonymous_id, user_id, linked_at, partition_date FROM identity_links").df()
    members = conn.execute("SELECT user_id, account_id, joined_at, partition_date FROM account_memberships").df()
    n_events = count_events(conn, snapshot)
    conn.close()
    t1 = time.perf_counter()
    out = pandas_user_features(ev, links, members, spec, snapshot)
    t2 = time.perf_counter()
    cpu = clock.stop()
    out.to_parquet(frame_out)
    return {"events": n_events, "read_seconds": round(t1 - t0, 3), "compute_seconds": round(t2 - t1, 3),
            "seconds": round(t2 - t0, 3), "events_per_s": round(n_events / (t2 - t0)), "user_rows": len(out),
            "peak_rss_mib": round(peak_rss_mib()), "rss_before_mib": round(rss_before), **cpu}


def run_worker(*args: str) -> dict:
    out = DATA / f".worker-{os.getpid()}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", *args, "--worker-out", str(out)]
    subprocess.run(cmd, check=True)
    result = json.loads(out.read_text())
    out.unlink()
    return result


# ------------------------------------------------------------------ agreement check

def compare(slice_db: Path, frame: Path, snapshot: dt.date, spec: FeatureSpec) -> dict:
    """Column-by-column agreement of the pandas baseline with compute_features on the slice."""
    import duckdb
    import numpy as np
    import pandas as pd

    conn = duckdb.connect(str(slice_db), read_only=True)
    conn.execute("SET TimeZone = 'UTC'")
    db = conn.execute(f"SELECT * FROM user_features WHERE snapshot_date = DATE '{snapshot}'").df()
    conn.close()
    pdf = pd.read_parquet(frame)
    cols = [c for c, _ in user_table_columns(spec.signals)
            if c not in ("snapshot_date", "max_partition_date", "definition_hash")]
    m = db.merge(pdf, on="user_id", how="outer", suffixes=("_db", "_pd"), indicator=True)
    result = {"rows_duckdb": len(db), "rows_pandas": len(pdf),
              "only_duckdb": int((m["_merge"] == "left_only").sum()),
              "only_pandas": int((m["_merge"] == "right_only").sum()), "columns": {}, "examples": {}}
    both = m[m["_merge"] == "both"]
    for c in cols:
        if c == "user_id":
            continue
        a, b = both[c + "_db"], both[c + "_pd"]
        if c in ("signup_date",):
            a, b = pd.to_datetime(a), pd.to_datetime(b)
        if c == "max_event_ts":
            a = pd.to_datetime(a, utc=True)
            b = pd.to_datetime(b, utc=True)
        na = a.isna().to_numpy() & b.isna().to_numpy()
        try:
            fa, fb = a.astype("float64").to_numpy(), b.astype("float64").to_numpy()
            # both sides round doubles to 6 decimals; sums in another order may round one unit apart
            eq = np.isclose(fa, fb, rtol=0, atol=1.5e-6)
        except (TypeError, ValueError):
            eq = (a.astype(object).to_numpy() == b.astype(object).to_numpy())
        bad = ~(eq | na)
        result["columns"][c] = int(bad.sum())
        if bad.any():
            ex = both.loc[bad, ["user_id", c + "_db", c + "_pd"]].head(3)
            result["examples"][c] = [[str(x) for x in row] for row in ex.itertuples(index=False)]
    result["disagreements"] = sum(result["columns"].values()) + result["only_duckdb"] + result["only_pandas"]
    result["columns_compared"] = len(result["columns"])
    return result


# ------------------------------------------------------------------ main

def machine() -> dict:
    import duckdb
    import pandas as pd

    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "ram_gib": round(mem, 1), "python": platform.python_version(),
            "duckdb": duckdb.__version__, "pandas": pd.__version__, "platform": platform.platform()}


def code_version() -> dict:
    """The commit and the features stage measured (it changes often; results are tied to it):
    a hash of pql_pipeline/defs/features/*.py and pql_pipeline/lib/*.py as they are on disk."""
    import hashlib

    pkg = PROJECT_ROOT / "pql_pipeline"
    files = sorted([*(pkg / "defs" / "features").glob("*.py"), *(pkg / "lib").glob("*.py")])
    digest = hashlib.sha256(b"".join(f.name.encode() + f.read_bytes() for f in files)).hexdigest()[:16]

    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=PROJECT_ROOT, capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    changes = git("status", "--porcelain", "--", "pql_pipeline/defs/features", "pql_pipeline/lib")
    return {"commit": git("rev-parse", "--short", "HEAD"), "uncommitted_changes": bool(changes),
            "features_code_sha256": digest}


def fmt_rate(x: float) -> str:
    return f"{x / 1e6:.2f} M events/s" if x >= 1e6 else f"{x / 1e3:.0f} k events/s"


def table(r: dict) -> str:
    p, d, dd, sl, b, cmp_ = (r["parameters"], r["duckdb"], r.get("duckdb_daily"), r["duckdb_slice"], r["baseline"],
                             r["agreement"])
    cold = (f", cold: no feature cache yet (the run builds it for {d['cache_partitions_built']} partitions)"
            if d.get("feature_cache") else "")
    lines = [
        "| | value |", "|---|---|",
        f"| data | {d['events']:,} events up to the snapshot, {p['users']:,} users, {p['days']} days "
        f"({r['data']['rows']['accounts_history']:,} accounts) |",
        f"| generation (cached, not measured) | {r['data']['generation_seconds']} s |",
        f"| compute_features, one snapshot (user + account features){cold} | {d['seconds']:.1f} s, "
        f"**{fmt_rate(d['events_per_s'])}** (target ≥ 20 M/s) |",
        f"| rows produced | {d['user_rows']:,} user rows, {d['account_rows']:,} account rows |",
        f"| peak RSS of the process (DuckDB memory_limit {p['memory_limit']}, {THREADS} threads) | "
        f"**{d['peak_rss_mib'] / 1024:.2f} GiB** (target ≤ 4 GiB; {d['rss_before_mib']} MiB before the run; "
        f"spill peak {d['max_spill_mib']:,} MiB) |",
    ]
    if dd:
        same = all(v["identical"] for v in dd["same_as_cold"].values()) if dd["same_as_cold"] else False
        lines.append(
            f"| daily run: feature cache up to date but for the snapshot's partition "
            f"({dd['cache_partitions_built']} rebuilt) | {dd['seconds']:.1f} s, **{fmt_rate(dd['events_per_s'])}** "
            f"of history covered, peak RSS **{dd['peak_rss_mib'] / 1024:.2f} GiB**; output "
            f"{'identical to the cold run' if same else 'DIFFERS from the cold run'} |")
    dh = r.get("duckdb_daily_from_history")
    if dh:
        lines.append(f"| the same daily run from the history (previous day's aggregates not kept) | "
                     f"{dh['seconds']:.1f}s, {fmt_rate(dh['events_per_s'])} |")
    fl = r.get("floor")
    if fl:
        lines.append(
            f"| floor, less than any implementation must do (read-only queries, same settings): extracting the "
            f"properties the signals read from {fl['parse_history']['amount']:,} events, one parse each; counting "
            f"every user's active days; **every user signal but traits in one scan and one aggregate**, made "
            f"cheaper (values counted for distinct counts, signup windows over all history, stored user ids, no "
            f"account, nothing written) | {fl['parse_history']['seconds']:.1f} s; "
            f"{fl['user_active_days']['seconds']:.1f} s; **{fl['user_signals_one_pass']['seconds']:.1f} s** "
            f"(20 M events/s allows {d['events'] / 20e6:.1f} s for everything) |")
    daily_ratio = f" (daily run: {r['speedup_daily_vs_baseline']:.1f}x)" if dd else ""
    agree = "identical" if cmp_["disagreements"] == 0 else f"{cmp_['disagreements']} disagreements"
    lines += [
        f"| compute_features on the {sl['events']:,}-event slice | {sl['seconds']:.2f} s, "
        f"{fmt_rate(sl['events_per_s'])} |",
        f"| pandas baseline, same slice (user features only) | {b['seconds']:.1f} s "
        f"(read {b['read_seconds']:.1f} s + compute {b['compute_seconds']:.1f} s), "
        f"{fmt_rate(b['events_per_s'])}, peak RSS {b['peak_rss_mib'] / 1024:.2f} GiB |",
        f"| ratio full run / baseline | **{r['speedup_vs_baseline']:.1f}x**{daily_ratio} |",
        f"| ratio on the same slice | {r['speedup_same_slice']:.1f}x |",
        f"| baseline agreement ({cmp_['columns_compared']} columns, {cmp_['rows_duckdb']:,} users) | {agree} |",
    ]
    if p.get("profiled"):
        lines.append("| note | profiled run: DuckDB profiling overhead included, not a measurement |")
    return "\n".join(lines)


def statements_table(stmts: list[dict]) -> str:
    lines = ["| seconds | max RSS MiB | spill MiB | statement |", "|---:|---:|---:|---|"]
    for s in stmts:
        if s["seconds"] >= 0.05:
            lines.append(f"| {s['seconds']:.2f} | {s['max_rss_mib']:,} | {s['max_spill_mib']:,} | `{s['sql'][:70]}` |")
    return "\n".join(lines)


def parser(doc: str) -> argparse.ArgumentParser:
    """The arguments that name the generated data set (shared by the benchmarks that use it)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000_000)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--seed", type=int, default=7)
    return ap


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--baseline-events", type=int, default=5_000_000)
    ap.add_argument("--quick", action="store_true", help="2 M events, 20 k users, 500 k baseline events")
    ap.add_argument("--profile", action="store_true",
                    help="also write DuckDB's profile of every statement of the full run to "
                         "benchmarks/results/features-profile/ (slower; the figures are then not the measurement)")
    ap.add_argument("--memory-limit", default=MEMORY_LIMIT,
                    help=f"DuckDB memory_limit of the measured runs (default {MEMORY_LIMIT}, the pipeline's setting)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--worker", choices=["duckdb", "pandas"], help=argparse.SUPPRESS)
    ap.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--snapshot", type=dt.date.fromisoformat, help=argparse.SUPPRESS)
    ap.add_argument("--frame", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--profile-dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--scenario", choices=["cold", "daily", "daily_history", "spark", "floor"], default="cold",
                    help=argparse.SUPPRESS)
    ap.add_argument("--spark", action="store_true",
                    help="also run the snapshot on Spark in local mode (features.engine: spark; the spark extra)")
    ap.add_argument("--save-output", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    # DuckDB's DataFrame conversion triggers a pandas deprecation warning (not ours)
    warnings.filterwarnings("ignore", message="The inplace keyword")
    if args.worker:
        if args.worker == "duckdb" and args.scenario == "floor":
            res = worker_floor(args.db, args.snapshot, args.memory_limit)
        elif args.worker == "duckdb":
            res = worker_duckdb(args.db, args.snapshot, args.profile_dir, args.memory_limit, args.scenario,
                                args.save_output)
        else:
            res = worker_pandas(args.db, args.snapshot, args.frame)
        args.worker_out.write_text(json.dumps(res, default=str))
        return

    if args.quick:
        args.events, args.users, args.baseline_events = 2_000_000, 20_000, 500_000
    out = args.out or HERE / "results" / ("features-quick.json" if args.quick else "features.json")
    db, meta = ensure_data(args.events, args.users, args.days, args.seed)
    snapshot = START + dt.timedelta(days=args.days - 1)
    n_slice = slice_bound(args.users, args.events, args.baseline_events)
    slice_db = ensure_slice(db, n_slice)
    spec = feature_spec()
    code_at_start = code_version()
    profile_dir = HERE / "results" / "features-profile" if args.profile else None

    print(f"compute_features on {db.name}, snapshot {snapshot} ...", flush=True)
    full_args = ["duckdb", "--db", str(db), "--snapshot", snapshot.isoformat(), "--memory-limit", args.memory_limit]
    if profile_dir:
        full_args += ["--profile-dir", str(profile_dir)]
    full = run_worker(*full_args, "--save-output")
    print(f"  {full['seconds']:.1f}s, {full['events_per_s']:,} events/s, peak RSS {full['peak_rss_mib']:,} MiB"
          + (f", feature cache built for {full['cache_partitions_built']} partitions" if full["feature_cache"] else ""),
          flush=True)
    daily = daily_history = None
    if full["feature_cache"]:
        print("compute_features as a daily run (feature cache up to date but for the snapshot's partition) ...",
              flush=True)
        daily = run_worker(*[a for a in full_args if a != "--profile-dir" and a != str(profile_dir)],
                           "--scenario", "daily")
        same = daily["same_as_cold"]
        print(f"  {daily['seconds']:.1f}s, {daily['events_per_s']:,} events/s, peak RSS {daily['peak_rss_mib']:,} MiB, "
              f"{daily['cache_partitions_built']} partition(s) rebuilt; output "
              + ("identical to the cold run" if same and all(v["identical"] for v in same.values())
                 else f"DIFFERS from the cold run: {same}"), flush=True)
        print("the same daily run computed from the history (without the previous day's aggregates) ...", flush=True)
        daily_history = run_worker(*[a for a in full_args if a != "--profile-dir" and a != str(profile_dir)],
                                   "--scenario", "daily_history")
        same = daily_history["same_as_cold"]
        print(f"  {daily_history['seconds']:.1f}s, {daily_history['events_per_s']:,} events/s; output "
              + ("identical to the cold run" if same and all(v["identical"] for v in same.values())
                 else f"DIFFERS from the cold run: {same}"), flush=True)
    spark_run = None
    if args.spark:
        print("compute_features on Spark (local mode, inputs staged as Parquet) ...", flush=True)
        spark_run = run_worker(*[a for a in full_args if a != "--profile-dir" and a != str(profile_dir)],
                               "--scenario", "spark")
        same = spark_run["same_as_cold"]
        print(f"  {spark_run['seconds']:.1f}s ({spark_run['jvm_start_seconds']}s JVM start before), "
              f"{spark_run['events_per_s']:,} events/s, JVM peak RSS {spark_run['jvm_peak_rss_mib']:,} MiB; output "
              + ("identical to DuckDB's" if same and all(v["identical"] for v in same.values())
                 else f"differs from DuckDB's in: { {t: v['differing_columns'] for t, v in same.items()} }"),
              flush=True)
    print("the floor: less than any implementation computing the snapshot from the events must do ...", flush=True)
    floor = run_worker("duckdb", "--db", str(db), "--snapshot", snapshot.isoformat(), "--memory-limit",
                       args.memory_limit, "--scenario", "floor")
    print(f"  extracting the properties the signals read {floor['parse_history']['seconds']:.1f}s; counting users' "
          f"active days {floor['user_active_days']['seconds']:.1f}s; every user signal in one pass "
          f"{floor['user_signals_one_pass']['seconds']:.1f}s; extracting the snapshot day's "
          f"{floor['parse_day']['seconds']:.2f}s", flush=True)
    print(f"compute_features on the slice of {n_slice:,} users ...", flush=True)
    sl = run_worker("duckdb", "--db", str(slice_db), "--snapshot", snapshot.isoformat(),
                    "--memory-limit", args.memory_limit)
    print(f"  {sl['seconds']:.2f}s, {sl['events_per_s']:,} events/s", flush=True)
    print("pandas baseline on the slice ...", flush=True)
    frame = DATA / f"baseline-{slice_db.stem}.parquet"
    base = run_worker("pandas", "--db", str(slice_db), "--snapshot", snapshot.isoformat(), "--frame", str(frame))
    print(f"  {base['seconds']:.1f}s, {base['events_per_s']:,} events/s", flush=True)
    for name, res in (("full run", full), ("daily run", daily), ("slice run", sl), ("baseline", base)):
        if res is None:
            continue
        if res["other_cpu_seconds"] > 0.05 * res["seconds"] * (os.cpu_count() or 1):
            print(f"WARNING: other processes used {res['other_cpu_seconds']} CPU seconds during the {name} "
                  f"({res['seconds']} s wall): its figures are pessimistic; rerun on an idle machine", flush=True)
    agreement = compare(slice_db, frame, snapshot, spec)
    if agreement["disagreements"]:
        print(f"BASELINE DISAGREES with compute_features on the slice: rows only in DuckDB "
              f"{agreement['only_duckdb']}, only in pandas {agreement['only_pandas']}", flush=True)
        for c, n in agreement["columns"].items():
            if n:
                print(f"  {c}: {n} users differ, e.g. (user, duckdb, pandas) {agreement['examples'][c]}")
    else:
        print(f"baseline agrees with compute_features on all {agreement['columns_compared']} columns "
              f"for {agreement['rows_duckdb']:,} users", flush=True)

    result = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "code": code_at_start,
        "parameters": {"events": args.events, "users": args.users, "days": args.days, "seed": args.seed,
                       "snapshot": snapshot.isoformat(), "baseline_events": args.baseline_events,
                       "slice_users": n_slice, "memory_limit": args.memory_limit, "threads": THREADS,
                       "quick": args.quick, "profiled": args.profile},
        "data": meta,
        "duckdb": full,
        "duckdb_daily": daily,
        "duckdb_daily_from_history": daily_history,
        "spark": spark_run,
        "floor": floor,
        "duckdb_slice": sl,
        "baseline": base,
        "speedup_vs_baseline": round(full["events_per_s"] / base["events_per_s"], 2),
        "speedup_daily_vs_baseline": round(daily["events_per_s"] / base["events_per_s"], 2) if daily else None,
        "speedup_same_slice": round(sl["events_per_s"] / base["events_per_s"], 2),
        "agreement": agreement,
        "targets": {"events_per_s": 20_000_000, "peak_rss_gib": 4.0,
                    "events_per_s_met": full["events_per_s"] >= 20_000_000,
                    "peak_rss_met": full["peak_rss_mib"] / 1024 <= 4.0,
                    "daily_events_per_s_met": daily["events_per_s"] >= 20_000_000 if daily else None,
                    "daily_peak_rss_met": daily["peak_rss_mib"] / 1024 <= 4.0 if daily else None},
    }
    if code_version() != code_at_start:
        result["code_changed_during_run"] = code_version()
        print(f"WARNING: the features module changed during the run ({code_at_start} -> {code_version()}): "
              "the workers may have measured different versions; rerun", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print()
    print(table(result))
    print()
    print("Statements of the full run:")
    print(statements_table(full["statements"]))
    if daily:
        print("\nStatements of the daily run:")
        print(statements_table(daily["statements"]))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
