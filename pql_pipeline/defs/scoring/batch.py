"""Scoring a range of days: candidates, batches, the model's outputs, routes and writes.

``score_days`` is what the ``pql_scores`` asset runs. Days are taken in batches of
``features.snapshot_batch_days`` (the candidates' keys in one query, the proposed rule's
verdicts in one pass over the events), and each batch is cut into groups of consecutive days
whose candidates fit ``scoring.batch_rows`` (``row_groups``): a group is read in one query,
goes through the model together, is finished and routed together (each day against the
accounts sales worked the days before it) and written at once. A group whose candidates
changed between the key query and the read (another writer) stops the run, nothing of the
group written.
"""

import datetime as dt
import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pql_pipeline.defs.features.specs import signal_set
from pql_pipeline.defs.features.training import feature_rows_sql
from pql_pipeline.defs.model.assets import load_proposed_rule
from pql_pipeline.defs.model.training import prepare, proposed_rule_hits, reference_values
from pql_pipeline.defs.scoring.scoring import (
    ACCOUNT_COLUMNS,
    ScoringSpec,
    account_routes,
    account_scores,
    contribution_matrix,
    explainable,
    finish_account_routes,
    percentile,
    route,
    sales_rows,
    segment_of,
    tell,
    tier_of,
)
from pql_pipeline.lib.warehouse import registered, release_memory, replace_rows, table_exists
from pql_pipeline.settings import Settings

NO_SINGLE_REASON = "high overall likelihood from many signals together; no single one stands out"
SCORE_COLUMNS = [
    ("snapshot_date", "DATE"), ("user_id", "VARCHAR"), ("account_id", "VARCHAR"), ("probability", "DOUBLE"),
    ("percentile", "DOUBLE"), ("tier", "VARCHAR"), ("is_pql", "BOOLEAN"), ("rule_fired", "BOOLEAN"),
    ("milestones_hit", "VARCHAR"),
    ("reasons", "JSON"), ("reason_text", "VARCHAR"), ("caveat_text", "VARCHAR"), ("model_version", "VARCHAR"),
    ("segment", "VARCHAR"), ("route", "VARCHAR"), ("route_note", "VARCHAR"), ("scored_at", "TIMESTAMPTZ"),
]


def scoring_spec(settings: Settings) -> ScoringSpec:
    r = settings.scoring.routing
    return ScoringSpec(
        tiers=tuple(sorted(settings.scoring.tiers.items(), key=lambda t: -t[1])),
        pql_threshold=settings.model.pql_threshold, reasons=settings.scoring.reasons,
        segments=tuple((s.name, s.max_employees) for s in settings.segments) or ScoringSpec.segments,
        sales_segments=tuple(r.sales_segments), sales_tiers=tuple(r.sales_tiers), nudge_tiers=tuple(r.nudge_tiers),
        max_nudges_per_account=r.max_nudges_per_account, suppress_days=r.suppress_days)


def candidates_sql(signals, day: dt.date, last: dt.date | None = None) -> str:
    """The free users with a feature row on ``day`` (through ``last``: by day, then user;
    paying users and users of paying accounts are excluded, as in training), built by the
    query that builds the training rows (``feature_rows_sql``)."""
    return feature_rows_sql(signals, f"u.snapshot_date BETWEEN DATE '{day.isoformat()}' AND "
                                     f"DATE '{(last or day).isoformat()}' AND l.label_status <> 'excluded_paying'"
                            ) + "\nORDER BY u.snapshot_date, u.user_id"


def by_day(frame: pd.DataFrame, days: list[dt.date]) -> dict[dt.date, pd.DataFrame]:
    """A frame of several days (ordered by day, then user) cut into one frame per day of ``days``."""
    dates = pd.to_datetime(frame["snapshot_date"]).dt.date.to_numpy() if len(frame) else np.array([])
    out = {}
    for d in days:
        part = frame[dates == d] if len(frame) else frame
        out[d] = part.reset_index(drop=True)
    return out


def rule_hits(conn, settings: Settings, frames: dict[dt.date, pd.DataFrame]) -> dict[dt.date, tuple]:
    """The proposed rule's verdict and milestones for the candidates of several days at once
    (the events are resolved once for the batch, not once per day)."""
    rule = load_proposed_rule(settings) or {}
    days = [d for d, f in frames.items() if not f.empty]
    if not days:
        return {}
    both = pd.concat([frames[d].assign(snapshot_date=d) for d in days], ignore_index=True)
    fired, hits = proposed_rule_hits(conn, both, rule)
    out, start = {}, 0
    for d in days:
        n = len(frames[d])
        out[d] = (fired[start:start + n], hits[start:start + n])
        start += n
    return out


class SalesWorked:
    """The accounts routed to sales per day, for the suppression window of a run's days:
    the days before the run as written, the run's days as ``record``-ed while a group of
    days is routed (before its rows are written)."""

    def __init__(self, conn, days: list[dt.date], suppress_days: int):
        self.suppress_days, self.by_day = suppress_days, {}
        if not suppress_days or not days:
            return
        run = set(days)
        for table in ("pql_scores", "pql_account_scores"):
            if table_exists(conn, table):
                for day, account in conn.execute(
                        f"SELECT DISTINCT snapshot_date, account_id FROM {table} WHERE route = 'sales' "
                        "AND account_id IS NOT NULL AND snapshot_date >= ? AND snapshot_date < ?",
                        [days[0] - dt.timedelta(days=suppress_days), days[-1]]).fetchall():
                    if day not in run:
                        self.by_day.setdefault(day, set()).add(account)

    def record(self, days: list[dt.date], sales: pd.DataFrame) -> None:
        """The accounts of ``sales`` (snapshot_date, account_id) are the ones sales works on
        each of ``days`` (a day without a row: none)."""
        found = {d: set() for d in days}
        for day, account in zip(sales["snapshot_date"], sales["account_id"]):
            if account is not None and account == account:
                found[day].add(account)
        self.by_day.update(found)

    def mask(self, days: pd.Series, accounts: pd.Series) -> np.ndarray:
        """Per row: was its account worked by sales in the window before the row's day."""
        out = np.zeros(len(days), dtype=bool)
        if not self.suppress_days or not len(days):
            return out
        for day, rows in pd.Series(np.arange(len(days))).groupby(days.to_numpy()).indices.items():
            worked = self.before(day)
            if worked:
                out[rows] = accounts.iloc[rows].isin(worked).to_numpy()
        return out

    def before(self, day: dt.date) -> set[str]:
        """As ``worked_by_sales(conn, day, suppress_days)`` once the days before are written."""
        if not self.suppress_days:
            return set()
        lo = day - dt.timedelta(days=self.suppress_days)
        return set().union(*(a for d, a in self.by_day.items() if lo <= d < day))


def worked_by_sales(conn, day: dt.date, suppress_days: int) -> set[str]:
    """Accounts routed to sales (on their own score or through a user) in the
    ``suppress_days`` before ``day``, as written."""
    return SalesWorked(conn, [day], suppress_days).before(day)


def routed(conn, spec: ScoringSpec, day: dt.date | None, users: pd.DataFrame,
           accounts: pd.DataFrame, worked: "set[str] | SalesWorked | None" = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Users and accounts with their routes (sales accounts and their contacts first, then
    nudges with suppression by the accounts sales works, and the per-account cap). ``worked``:
    the accounts sales worked in the days before ``day`` (else read from the days written
    before), or, for rows of several days (snapshot_date), a SalesWorked that learns each
    day's sales accounts here, before the nudges of the days after it are suppressed."""
    sales, contacts = account_routes(accounts, users, spec)
    if isinstance(worked, SalesWorked):
        keys = ["snapshot_date", "account_id"]
        worked.record(sorted(set(users["snapshot_date"])),
                      pd.concat([users.loc[sales_rows(users, spec, contacts), keys], accounts.loc[sales, keys]]))
        worked = worked.mask(users["snapshot_date"], users["account_id"])
    elif worked is None:
        worked = worked_by_sales(conn, day, spec.suppress_days)
    users = route(users, spec, worked, contacts)
    return users, finish_account_routes(accounts, users, sales)


def row_groups(days: list[dt.date], rows: dict[dt.date, int], batch_rows: int) -> list[list[dt.date]]:
    """``days`` (in order) cut into runs of consecutive days with at most ``batch_rows`` rows
    together; a day with more rows than that is a group of its own."""
    groups: list[list[dt.date]] = []
    size = 0
    for day in days:
        if not groups or size + rows[day] > batch_rows:
            groups.append([])
            size = 0
        groups[-1].append(day)
        size += rows[day]
    return groups


def model_outputs(settings: Settings, row: dict, model, reference: dict,
                  frame: pd.DataFrame) -> tuple[np.ndarray, list[list[dict]]]:
    """The candidates' probabilities and each row's reasons (a row's reasons read only its own
    values, so the rows of many days go through the model together: a prediction call costs
    far more than a row, and a day of a small product has few rows)."""
    spec, sigs = scoring_spec(settings), signal_set(settings)
    numeric, categorical = row["features"]["numeric"], row["features"]["categorical"]
    missing = [c for c in numeric + categorical if c not in frame.columns]
    if missing:
        raise ValueError(f"model {row['version']} uses features that user_features no longer has: {missing}; "
                         "retrain (materialize conversion_model) or pin a model trained on the current signals")
    x = prepare(frame.reset_index(drop=True), numeric, categorical)
    p = model.predict_proba(x)[:, 1]
    # reasons are worked out for the leads anyone acts on (a tier above cold, or a PQL)
    floor = min([t for _, t in spec.tiers] + [spec.pql_threshold])
    act = np.flatnonzero(p >= floor)
    cols = explainable(list(sigs.signals), list(sigs.account_signals), x.columns)
    reasons: list[list[dict]] = [[] for _ in range(len(frame))]
    if len(act) and cols:
        mat = contribution_matrix(model, x.iloc[act], p[act], [c for c, _, _ in cols], reference)
        for i, r in zip(act, tell(mat, frame.iloc[act], cols, spec.reasons, spec.min_contribution)):
            reasons[i] = r
    return p, reasons


def score_frame(conn, settings: Settings, frame: pd.DataFrame, row: dict, rule: tuple,
                predicted: tuple[np.ndarray, list[list[dict]]],
                worked: "set[str] | SalesWorked | None" = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score the candidates of one or more days (``frame``: snapshot_date, then user, as
    candidates_sql orders them) with ``rule``'s verdicts and the model's ``predicted``
    probabilities and reasons for them; returns the user rows and the account rows. Each day
    is ranked, scored and routed on its own (see ``routed`` for ``worked``)."""
    spec = scoring_spec(settings)
    if frame.empty:
        return pd.DataFrame(columns=[c for c, _ in SCORE_COLUMNS]), pd.DataFrame(columns=[c for c, _ in ACCOUNT_COLUMNS])
    p, reasons = predicted
    days = pd.to_datetime(frame["snapshot_date"]).dt.date
    out = pd.DataFrame({"snapshot_date": days.to_numpy(), "user_id": frame["user_id"].to_numpy(),
                        "account_id": frame["account_id"].to_numpy(), "probability": np.round(p, 6)})
    out["percentile"] = np.round(percentile(out, ["snapshot_date"]), 6)
    out["tier"] = tier_of(p, spec.tiers)
    out["is_pql"] = p >= spec.pql_threshold
    fired, hits = rule
    out["rule_fired"] = fired > 0
    out["milestones_hit"] = ["; ".join(h) or None for h in hits]
    out["reasons"] = [json.dumps(r) if r else "[]" for r in reasons]
    out["reason_text"] = ["; ".join(x["text"] for x in r if x["polarity"] == "positive") or None for r in reasons]
    # a PQL whose probability rests on no single signal (values at their typical level, many small
    # effects) still tells sales why it is on the list
    out.loc[(out["is_pql"] | (out["tier"] != "cold")) & out["reason_text"].isna(), "reason_text"] = NO_SINGLE_REASON
    out["caveat_text"] = ["; ".join(x["text"] for x in r if x["polarity"] == "negative") or None for r in reasons]
    out["model_version"] = row["version"]
    out["segment"] = segment_of(frame.get("acct_employees", pd.Series(np.nan, index=frame.index)),
                                spec.segments).to_numpy()
    accounts = account_scores(out, reasons, spec)
    out, accounts = routed(conn, spec, days.iloc[0] if days.nunique() == 1 else None, out, accounts, worked)
    now = dt.datetime.now(dt.timezone.utc)
    out["scored_at"] = now
    accounts = accounts.assign(model_version=row["version"], scored_at=now,
                               reasons=[json.dumps(r) if r else "[]" for r in accounts["reasons"]])
    return out[[c for c, _ in SCORE_COLUMNS]], accounts[[c for c, _ in ACCOUNT_COLUMNS]]


def score_day(conn, settings: Settings, day: dt.date, row: dict, model, reference: dict,
              frame: pd.DataFrame | None = None, rule: tuple | None = None,
              worked: set[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score one day's candidates (``frame``, else read) with ``rule``'s verdicts (else
    evaluated); routing suppresses the accounts sales worked in the days before (``worked``,
    else read from pql_scores: then score and write days in date order)."""
    frame = conn.execute(candidates_sql(signal_set(settings), day)).df() if frame is None else frame
    if frame.empty:
        return score_frame(conn, settings, frame, row, (), ())
    frame = frame.assign(snapshot_date=day)
    rule = rule if rule is not None else rule_hits(conn, settings, {day: frame})[day]
    return score_frame(conn, settings, frame, row, rule, model_outputs(settings, row, model, reference, frame),
                       worked)


def _write_days(conn, days: list[dt.date], users: pd.DataFrame, accounts: pd.DataFrame) -> None:
    """Replace the rows of ``days`` (consecutive) with their scored users and accounts, one
    statement pair per table (a day without candidates loses its old rows)."""
    for table, columns, frame in (("pql_scores", SCORE_COLUMNS, users), ("pql_account_scores", ACCOUNT_COLUMNS,
                                                                          accounts)):
        with registered(conn, "fx_scored", frame):
            replace_rows(conn, table, [c for c, _ in columns], "fx_scored", "snapshot_date BETWEEN ? AND ?",
                         [days[0], days[-1]])


def _day_summaries(days: list[dt.date], users: pd.DataFrame, accounts: pd.DataFrame) -> list[dict]:
    """One summary row per day of ``days`` (zeros for a day without candidates)."""
    u = users.assign(n=1, pql=users["is_pql"].astype(int), nudged=(users["route"] == "in_app").astype(int)) \
        .groupby("snapshot_date")[["n", "pql", "nudged"]].sum()
    a = accounts.assign(n=1, pql=accounts["is_pql"].astype(int), sales=(accounts["route"] == "sales").astype(int)) \
        .groupby("snapshot_date")[["n", "pql", "sales"]].sum()
    out = []
    for day in days:
        nu, pu, nudged = (int(v) for v in u.loc[day]) if day in u.index else (0, 0, 0)
        na, pa, sales = (int(v) for v in a.loc[day]) if day in a.index else (0, 0, 0)
        out.append({"snapshot": str(day), "users scored": nu, "PQL users": pu, "accounts": na, "PQL accounts": pa,
                    "accounts to sales": sales, "users nudged": nudged})
    return out


def reroute_following(conn, spec: ScoringSpec, last_day: dt.date) -> int:
    """Re-derive the routes of the days already scored after ``last_day`` whose suppression
    window reaches back to it (a re-scored past day can change which accounts sales worked);
    scores, tiers and reasons stay. Returns how many user and account routes changed."""
    if not spec.suppress_days:
        return 0
    days = [r[0] for r in conn.execute(
        "SELECT DISTINCT snapshot_date FROM pql_scores WHERE snapshot_date > ? AND snapshot_date <= ? ORDER BY 1",
        [last_day, last_day + dt.timedelta(days=spec.suppress_days)]).fetchall()]
    changed = 0
    for day in days:
        users = conn.execute("SELECT user_id, account_id, segment, tier, probability, route, route_note "
                             "FROM pql_scores WHERE snapshot_date = ?", [day]).df()
        accounts = conn.execute("SELECT account_id, segment, tier, top_user_id, route, route_note "
                                "FROM pql_account_scores WHERE snapshot_date = ?", [day]).df()
        new_users, new_accounts = routed(conn, spec, day, users.drop(columns=["route", "route_note"]),
                                         accounts.drop(columns=["route", "route_note"]))
        for table, key, old, new in (("pql_scores", "user_id", users, new_users),
                                     ("pql_account_scores", "account_id", accounts, new_accounts)):
            diff = old.merge(new[[key, "route", "route_note"]], on=key, suffixes=("", "_new"))
            diff = diff[(diff["route"] != diff["route_new"])
                        | (diff["route_note"].fillna("") != diff["route_note_new"].fillna(""))]
            if diff.empty:
                continue
            with registered(conn, "fx_routes", diff[[key, "route_new", "route_note_new"]]):
                conn.execute(f"UPDATE {table} AS t SET route = r.route_new, route_note = r.route_note_new "
                             f"FROM fx_routes AS r WHERE t.snapshot_date = ? AND t.{key} = r.{key}", [day])
            changed += len(diff)
    return changed


def training_reference(conn, row: dict) -> dict:
    """Typical input values of the rows the model was trained on (the ablation baseline), as the
    registry recorded them at training (training_set changes as time goes by)."""
    if row.get("reference"):
        return {k: (np.nan if v is None else v) for k, v in row["reference"].items()}
    frame = conn.execute("SELECT * FROM training_set WHERE label IS NOT NULL AND snapshot_date BETWEEN ? AND ?",
                         [row["train_start"], row["train_end"]]).df()
    numeric, categorical = row["features"]["numeric"], row["features"]["categorical"]
    return reference_values(prepare(frame, numeric, categorical), numeric, categorical)


@dataclass
class ScoredRange:
    users: int = 0                 # user rows written
    accounts: int = 0              # account rows written
    per_day: list[dict] = field(default_factory=list)     # one summary row per day, in order
    groups: list[list[dt.date]] = field(default_factory=list)   # the groups as scored, in order
    rerouted: int = 0              # routes of later days changed (``reroute_following``)


class CandidatesChanged(RuntimeError):
    """The candidates of a group changed between reading their keys and reading their rows."""


def score_days(conn, settings: Settings, days: list[dt.date], row: dict, model, reference: dict) -> ScoredRange:
    """Score, route and write ``days`` (sorted) with the scoring model ``row`` / ``model``;
    then re-route the days already scored after them that their sales accounts reach."""
    out = ScoredRange()
    spec = scoring_spec(settings)
    worked = SalesWorked(conn, days, spec.suppress_days)
    step = settings.features.snapshot_batch_days
    for batch in (days[i:i + step] for i in range(0, len(days), step)):
        keys = by_day(conn.execute(f"SELECT snapshot_date, user_id, signup_date FROM "
                                   f"({candidates_sql(signal_set(settings), batch[0], batch[-1])}) "
                                   "ORDER BY snapshot_date, user_id").df(), batch)
        rules = rule_hits(conn, settings, {d: k.drop(columns="snapshot_date") for d, k in keys.items()})
        release_memory(conn)
        for group in row_groups(batch, {d: len(k) for d, k in keys.items()}, settings.scoring.batch_rows):
            frame = conn.execute(candidates_sql(signal_set(settings), group[0], group[-1])).df()
            expected = pd.concat([keys[d] for d in group], ignore_index=True)
            if not frame["user_id"].equals(expected["user_id"]):
                raise CandidatesChanged(f"the candidates of {group[0]}..{group[-1]} changed while scoring; run again")
            scored = [d for d in group if len(keys[d])]
            rule = (np.concatenate([rules[d][0] for d in scored]),
                    [h for d in scored for h in rules[d][1]]) if scored else ((), ())
            predicted = model_outputs(settings, row, model, reference, frame) if len(frame) else ()
            out_users, out_accounts = score_frame(conn, settings, frame, row, rule, predicted, worked)
            out.per_day += _day_summaries(group, out_users, out_accounts)
            out.users += len(out_users)
            out.accounts += len(out_accounts)
            out.groups.append(group)
            _write_days(conn, group, out_users, out_accounts)
    out.rerouted = reroute_following(conn, spec, days[-1])
    return out
