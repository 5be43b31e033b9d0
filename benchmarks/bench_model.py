"""Benchmark: training the conversion model and scoring leads for 1 M users.

Uses the data of the feature benchmark (benchmarks/bench_features.py generates it once
under benchmarks/.data/: 100 M events, 1 M users, 90 days; ``--quick``: 2 M events, 20 k
users) and the features that benchmark computed for its last two snapshot days
(``user_features`` and ``account_features``, about 700 k active users a day). Each phase
runs in a fresh subprocess, so its peak RSS is its own:

* train:    ``train()`` as the conversion_model asset runs it (algorithm chosen by a
            user-grouped cross-validation inside the training part, calibrated gradient
            boosting and logistic regression fitted and evaluated on the holdout,
            permutation importance) on a training set of ``--train-rows`` user rows
            (default 1 M): the two days' feature rows joined with their account's, spread
            over 8 weekly snapshots by a hash of the user id (6 train, 2 holdout, a 7-day
            embargo) and labelled by a planted logistic rule of invites, integrations,
            projects and basics tickets plus noise (the data has no conversions of its
            own). Reported: seconds, rows/s, peak RSS and the holdout ROC AUC.
* score:    ``score_day()`` for every active user of the newest day (probability,
            percentile, tier, reasons for leads above cold, account scores, routes), the
            proposed rule's verdict evaluated on the 100 M events, with the model the
            train phase saved. Reported: seconds per step, rows/s, peak RSS.
* baseline: the straightforward reasons (an ablation: one prediction over all rows per
            signal, rows read one by one), the implementation scoring used before, on a slice
            of the leads; the ratio against the same slice explained by ``explain()`` is
            reported with the method ``explain()`` used. A logistic regression's closed form
            must give the same reasons; gradient boosting's path attribution answers a
            different question, so the share of leads whose first reason is the same is
            reported instead.

Writes benchmarks/results/model.json (model-quick.json with --quick) and prints a table.

    python benchmarks/bench_model.py --quick     # 20 k users
    python benchmarks/bench_model.py             # 1 M users (run bench_features.py first, or it generates)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bench_features as BF  # noqa: E402

SNAPSHOTS = 8
EMBARGO_DAYS = 7
RULE = {"match": "any", "conditions": [
    {"event": "Teammate Invited", "threshold": 2, "within_days_of_signup": 14},
    {"event": "Integration Connected", "threshold": 1, "within_days_of_signup": 30},
    {"event": "Project Created", "threshold": 3, "within_days_of_signup": 14}],
    "unless": [{"event": "Support Ticket Opened", "threshold": 3, "within_days_of_signup": 21}]}


def scratch_path(db: Path) -> Path:
    return db.with_name(db.stem + "-model.duckdb")


def feature_frame_sql(days: str) -> str:
    """User feature rows of ``days`` (a SQL predicate on u.snapshot_date) with their account's
    features as acct_* (the shape of training_set without the label columns)."""
    from pql_pipeline.defs.features.sql import account_table_columns, user_table_columns
    from pql_pipeline.lib.engine import sql_ident

    spec = BF.feature_spec()
    ucols = [c for c, _ in user_table_columns(spec.signals)]
    acols = [c for c, _ in account_table_columns(spec.signals) if c not in ("snapshot_date", "account_id",
                                                                              "definition_hash")]
    sel = [f"u.{sql_ident(c)}" for c in ucols] + [f"a.{sql_ident(c)} AS {sql_ident('acct_' + c)}" for c in acols]
    return (f"SELECT {', '.join(sel)} FROM src.user_features AS u LEFT JOIN src.account_features AS a "
            f"ON a.account_id = u.account_id AND a.snapshot_date = u.snapshot_date WHERE {days}")


def connect(db: Path):
    """The scratch database (training set, model) with the benchmark data attached read-only
    and its event tables visible under the warehouse's names."""
    import duckdb

    conn = duckdb.connect(str(scratch_path(db)))
    conn.execute("SET TimeZone = 'UTC'")
    conn.execute(f"SET memory_limit = '{BF.MEMORY_LIMIT}'")
    conn.execute(f"SET threads = {BF.THREADS}")
    conn.execute(f"ATTACH '{db}' AS src (READ_ONLY)")
    for t in ("validated_events", "identity_links"):
        conn.execute(f"CREATE OR REPLACE VIEW {t} AS SELECT * FROM src.{t}")
    return conn


def ensure_training_set(conn, rows: int, seed: int) -> dict:
    """training_set: ``rows`` feature rows of the benchmark's snapshot days, spread over
    weekly snapshots by a hash of the user id, with a planted label."""
    from pql_pipeline.lib.warehouse import table_exists

    if table_exists(conn, "training_set") and conn.execute("SELECT count(*) FROM training_set").fetchall()[0][0] == rows:
        return {"cached": True}
    t = time.time()
    last = conn.execute("SELECT max(snapshot_date) FROM src.user_features").fetchall()[0][0]
    base = feature_frame_sql("TRUE")
    def u01(salt: str) -> str:
        return f"((hash(user_id || '{salt}{seed}' || CAST(snapshot_date AS VARCHAR)) % 1000000) / 1e6)"

    logit = ("-3.2 + 1.6 * CAST(coalesce(teammates_invited, 0) >= 2 AS INTEGER)"
             " + 1.2 * CAST(coalesce(integration_connected, FALSE) AS INTEGER)"
             " + 0.8 * CAST(coalesce(projects_first_14d, 0) >= 3 AS INTEGER)"
             " - 1.0 * CAST(coalesce(basics_tickets, 0) >= 3 AS INTEGER)"
             " + 0.02 * least(coalesce(active_days_total, 0), 40)")
    conn.execute(f"""
        CREATE OR REPLACE TABLE training_set AS
        WITH f AS ({base}), s AS (
            SELECT *, {u01('order')} AS _order, {u01('draw')} AS _draw, {u01('noise')} AS _noise FROM f)
        SELECT * EXCLUDE (snapshot_date, _order, _draw, _noise),
               CAST(DATE '{last}' - INTERVAL (7 * (hash(user_id) % {SNAPSHOTS})) DAY AS DATE) AS snapshot_date,
               _draw < 1 / (1 + exp(-({logit} + 1.5 * (_noise - 0.5)))) AS label,
               CAST(NULL AS TIMESTAMPTZ) AS converted_at, CAST(NULL AS DATE) AS label_window_start,
               CAST(NULL AS DATE) AS label_window_end
        FROM s ORDER BY _order LIMIT {rows}""")
    n, pos = conn.execute("SELECT count(*), count(*) FILTER (WHERE label) FROM training_set").fetchall()[0]
    return {"cached": False, "seconds": round(time.time() - t, 1), "rows": n, "positives": pos}


def worker_train(db: Path, rows: int, seed: int) -> dict:
    import joblib

    from pql_pipeline.defs.model.training import ModelSpec, prepare, reference_values, train

    conn = connect(db)
    prep = ensure_training_set(conn, rows, seed)
    spec = ModelSpec(embargo_days=EMBARGO_DAYS, seed=seed,
                     classic_rule=(("active_days_total", 14), ("projects_first_14d", 3), ("teammates_invited", 2)))
    clock = BF.CpuClock()
    clock.start()
    t = time.time()
    result = train(conn, spec, None)
    seconds = time.time() - t
    cpu = clock.stop()
    train_rows, hold_rows = len(result.split.train), len(result.split.holdout)
    model_path = scratch_path(db).with_suffix(".joblib")
    ref = reference_values(prepare(result.split.train, result.numeric, result.categorical), result.numeric,
                           result.categorical)
    joblib.dump({"model": result.model, "numeric": result.numeric, "categorical": result.categorical,
                 "reference": ref}, model_path)
    return {"prepare": prep, "seconds": round(seconds, 1), "train_rows": train_rows, "holdout_rows": hold_rows,
            "rows_per_s": round((train_rows + hold_rows) / seconds), "algorithm": result.algorithm,
            "roc_auc": result.metrics["roc_auc"],
            "selection_roc_auc": {k: v["selection_roc_auc"] for k, v in result.candidates.items()},
            "classic_rule_roc_auc": result.baselines["classic_rule"]["roc_auc"],
            "features": len(result.features), "steps": result.seconds, "peak_rss_mib": round(BF.peak_rss_mib()), **cpu}


def naive_explain(model, x, raw, signals, reference, top=3, min_contribution=0.005, account_signals=None):
    """Reasons as scoring first worked them out: one prediction over every row per signal,
    then the rows read one by one (the baseline of the score phase)."""
    import numpy as np
    import pandas as pd

    from pql_pipeline.defs.scoring.scoring import _text, explainable

    p = model.predict_proba(x)[:, 1]
    cols = explainable(signals, account_signals or [], x.columns)
    mat = np.empty((len(x), len(cols)))
    x2 = x.copy()
    for j, (col, _, _) in enumerate(cols):
        kept = x2[col].copy()
        x2[col] = reference.get(col, np.nan)
        mat[:, j] = p - model.predict_proba(x2)[:, 1]
        x2[col] = kept
    reasons = []
    for i in range(len(x)):
        pos = [(mat[i, j], j) for j, (_, s, _) in enumerate(cols) if s.polarity == "positive" and mat[i, j] > 0]
        neg = [(mat[i, j], j) for j, (_, s, _) in enumerate(cols)
               if s.polarity == "negative" and mat[i, j] <= -min_contribution]
        pos.sort(reverse=True)
        chosen = [t for t in pos if t[0] >= min_contribution][:top] or pos[:1]
        row, told = [], set()
        for c, j in chosen + sorted(neg)[:top]:
            col, s, prefix = cols[j]
            if s.name in told:
                continue
            told.add(s.name)
            value = raw.iloc[i][col]
            detail_col = f"{s.name}_detail"
            detail = raw.iloc[i][detail_col] if not prefix and detail_col in raw.columns else None
            row.append({"signal": col, "polarity": s.polarity,
                        "value": None if pd.isna(value) else (value.item() if hasattr(value, "item") else value),
                        "contribution": round(float(c), 4), "text": prefix + _text(s, value, detail)})
        reasons.append(row)
    return p, reasons


def worker_score(db: Path, baseline_rows: int) -> dict:
    import joblib
    import numpy as np

    from pql_pipeline.defs.features.specs import signal_set
    from pql_pipeline.defs.model.training import prepare, proposed_rule_hits
    from pql_pipeline.defs.scoring.batch import score_day
    from pql_pipeline.defs.scoring.scoring import explain, explainable, linear_ablation, tree_attribution
    from pql_pipeline.lib.warehouse import release_memory
    from pql_pipeline.settings import load_settings

    saved = joblib.load(scratch_path(db).with_suffix(".joblib"))
    model, ref = saved["model"], saved["reference"]
    settings = load_settings()
    conn = connect(db)
    day = conn.execute("SELECT max(snapshot_date) FROM src.user_features").fetchall()[0][0]
    steps = {}
    clock = BF.CpuClock()
    clock.start()
    t0 = time.time()
    keys = conn.execute(f"SELECT user_id, signup_date FROM src.user_features WHERE snapshot_date = DATE '{day}' "
                        "ORDER BY user_id").df()
    rule = proposed_rule_hits(conn, keys.assign(snapshot_date=day), RULE)
    release_memory(conn)   # as the asset does after the events scan
    steps["proposed rule over the events"] = time.time() - t0
    t = time.time()
    frame = conn.execute(feature_frame_sql(f"u.snapshot_date = DATE '{day}'") + " ORDER BY u.user_id").df()
    steps["read features"] = time.time() - t
    t = time.time()
    row = {"version": "bench", "features": {"numeric": saved["numeric"], "categorical": saved["categorical"]}}
    users, accounts = score_day(conn, settings, day, row, model, ref, frame, rule)
    steps["score, explain, accounts, route"] = time.time() - t
    seconds = time.time() - t0
    cpu = clock.stop()
    explained = int((users["reasons"] != "[]").sum())

    # the same leads' reasons, straightforward vs explain(), on a slice
    sigs = signal_set(settings)
    x = prepare(frame, saved["numeric"], saved["categorical"])
    p = model.predict_proba(x)[:, 1]
    leads = np.flatnonzero(p >= min(t for _, t in settings.scoring.tiers.items()))[:baseline_rows]
    xs, raw = x.iloc[leads], frame.iloc[leads]
    args = (list(sigs.signals), ref, settings.scoring.reasons)
    t = time.time()
    _, fast = explain(model, xs, raw, *args, account_signals=list(sigs.account_signals))
    fast_s = time.time() - t
    t = time.time()
    _, slow = naive_explain(model, xs, raw, *args, account_signals=list(sigs.account_signals))
    slow_s = time.time() - t
    head, cols = xs.iloc[:64], [c for c, _, _ in explainable(args[0], list(sigs.account_signals), xs.columns)]
    method = ("closed form" if linear_ablation(model, head, p[leads][:64], cols, ref) is not None
              else "path attribution" if tree_attribution(model, head, p[leads][:64], cols, ref) is not None
              else "ablation")

    def first(reasons):
        return reasons[0]["signal"] if reasons and reasons[0]["polarity"] == "positive" else None

    same_first = sum(first(a) == first(b) for a, b in zip(fast, slow)) / max(len(leads), 1)
    return {"day": str(day), "users": len(users), "accounts": len(accounts), "explained_leads": explained,
            "pqls": int(users["is_pql"].sum()), "seconds": round(seconds, 1), "rows_per_s": round(len(users) / seconds),
            "steps": {k: round(v, 1) for k, v in steps.items()}, "peak_rss_mib": round(BF.peak_rss_mib()), **cpu,
            "baseline": {"leads": len(leads), "explain_seconds": round(fast_s, 2),
                         "straightforward_seconds": round(slow_s, 2),
                         "explain_leads_per_s": round(len(leads) / fast_s),
                         "straightforward_leads_per_s": round(len(leads) / slow_s),
                         "speedup": round(slow_s / fast_s, 1), "method": method, "same_reasons": fast == slow,
                         "same_first_reason": round(same_first, 4)}}


def run_worker(*args: str) -> dict:
    out = BF.DATA / f".model-worker-{time.time_ns()}.json"
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", *args, "--worker-out", str(out)],
                   check=True)
    res = json.loads(out.read_text())
    out.unlink()
    return res


def report(r: dict) -> str:
    t, s, b = r["train"], r["score"], r["score"]["baseline"]
    lines = [
        "| phase | rows | seconds | rows/s | peak RSS | notes |", "|---|---|---|---|---|---|",
        f"| train | {t['train_rows']:,} train + {t['holdout_rows']:,} holdout | {t['seconds']} | {t['rows_per_s']:,} "
        f"| {t['peak_rss_mib']:,} MiB | {t['algorithm']} chosen (CV {t['selection_roc_auc']}), holdout ROC AUC "
        f"{t['roc_auc']} vs classic rule {t['classic_rule_roc_auc']}; {t['features']} inputs; "
        + ", ".join(f"{k} {v}s" for k, v in t["steps"].items()) + " |",
        f"| score | {s['users']:,} users, {s['accounts']:,} accounts | {s['seconds']} | {s['rows_per_s']:,} "
        f"| {s['peak_rss_mib']:,} MiB | reasons for {s['explained_leads']:,} leads above cold; "
        + ", ".join(f"{k} {v}s" for k, v in s["steps"].items()) + " |",
        f"| reasons baseline | {b['leads']:,} leads | {b['straightforward_seconds']} vs {b['explain_seconds']} "
        f"| {b['straightforward_leads_per_s']:,} vs {b['explain_leads_per_s']:,} | | explain() is "
        f"{b['speedup']}x the straightforward reasons ({b.get('method', 'ablation')}); same reasons: "
        f"{b['same_reasons']}, same first reason for {b.get('same_first_reason', 1.0):.1%} of leads |",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = BF.parser(__doc__)
    ap.add_argument("--train-rows", type=int, default=1_000_000)
    ap.add_argument("--baseline-rows", type=int, default=3_000)
    ap.add_argument("--quick", action="store_true", help="2 M events, 20 k users")
    ap.add_argument("--score-only", action="store_true",
                    help="measure the score phase again with the model of the last train phase (kept in the results)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--worker", choices=["train", "score"], help=argparse.SUPPRESS)
    ap.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message="The inplace keyword")
    if args.worker:
        res = (worker_train(args.db, args.train_rows, args.seed) if args.worker == "train"
               else worker_score(args.db, args.baseline_rows))
        args.worker_out.write_text(json.dumps(res, default=str))
        return
    if args.quick:
        args.events, args.users, args.train_rows, args.baseline_rows = 2_000_000, 20_000, 20_000, 500
    out = args.out or HERE / "results" / ("model-quick.json" if args.quick else "model.json")
    db, meta = BF.ensure_data(args.events, args.users, args.days, args.seed)
    import duckdb

    with duckdb.connect(str(db), read_only=True) as c:
        have = {r[0] for r in c.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    if "user_features" not in have:
        sys.exit(f"{db.name} has no user_features yet: run benchmarks/bench_features.py"
                 + (" --quick" if args.quick else "") + " first (it computes them)")
    common = ["--db", str(db), "--train-rows", str(args.train_rows), "--seed", str(args.seed),
              "--baseline-rows", str(args.baseline_rows)]
    if args.score_only:
        res = {"train": json.loads(out.read_text())["train"]}
    else:
        print(f"training on {args.train_rows:,} rows of {db.name} ...", flush=True)
        res = {"train": run_worker("train", *common)}
        print(f"  {res['train']['seconds']}s", flush=True)
    print("scoring the newest day ...", flush=True)
    res["score"] = run_worker("score", *common)
    res.update({"data": {"events": args.events, "users": args.users, "days": args.days, "seed": args.seed,
                         "quick": args.quick},
                "machine": BF.machine(), "code": BF.code_version(),
                "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str))
    print(report(res))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
