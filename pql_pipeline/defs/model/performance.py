"""Backtest of the PQL definitions over past snapshots (``pql_performance``).

Every labelled snapshot of ``training_set`` is scored by each definition: the scoring model
(PQL = probability at or above ``model.pql_threshold``), the proposed milestone rule and the
classic rule. Per snapshot and definition: users, PQLs and the PQL rate, conversions,
the conversion rate of PQLs and of the others and their ratio (lift; PLG teams expect
2-5x), precision and recall (the share of all conversions the PQLs caught). Snapshots the
model was trained on are marked ``in_sample``: its figures there are optimistic, the
out-of-sample ones are the evidence.
"""

from __future__ import annotations

import pandas as pd

from pql_pipeline.defs.model.training import classic_rule_scores, load_frame, prepare, proposed_rule_scores

COLUMNS = [
    ("snapshot_date", "DATE"), ("definition", "VARCHAR"), ("in_sample", "BOOLEAN"), ("users", "BIGINT"),
    ("pqls", "BIGINT"), ("pql_rate", "DOUBLE"), ("conversions", "BIGINT"), ("pql_conversions", "BIGINT"),
    ("conversion_rate_pql", "DOUBLE"), ("conversion_rate_other", "DOUBLE"), ("lift", "DOUBLE"),
    ("precision", "DOUBLE"), ("recall", "DOUBLE"), ("model_version", "VARCHAR"),
]


def backtest(conn, row: dict, model, threshold: float, classic_rule: dict, proposed_rule: dict | None,
) -> pd.DataFrame:
    df = load_frame(conn)
    if df.empty:
        return pd.DataFrame(columns=[c for c, _ in COLUMNS])
    flags = {"model": model.predict_proba(prepare(df, row["features"]["numeric"],
                                                  row["features"]["categorical"]))[:, 1] >= threshold}
    if classic_rule:
        flags["classic_rule"] = classic_rule_scores(df, classic_rule) > 0
    if proposed_rule and proposed_rule.get("conditions"):
        flags["proposed_rule"] = proposed_rule_scores(conn, df, proposed_rule) > 0
    y = df["label"].astype(bool).to_numpy()
    out = []
    for name, f in flags.items():
        for snap, idx in df.groupby("snapshot_date").indices.items():
            fy, yy = f[idx], y[idx]
            pql, other = yy[fy], yy[~fy]
            rate_p = float(pql.mean()) if len(pql) else None
            rate_o = float(other.mean()) if len(other) else None
            out.append({
                "snapshot_date": snap, "definition": name, "in_sample": snap <= row["train_end"],
                "users": len(idx), "pqls": int(fy.sum()), "pql_rate": round(float(fy.mean()), 5),
                "conversions": int(yy.sum()), "pql_conversions": int(pql.sum()),
                "conversion_rate_pql": None if rate_p is None else round(rate_p, 5),
                "conversion_rate_other": None if rate_o is None else round(rate_o, 5),
                "lift": round(rate_p / rate_o, 3) if rate_p is not None and rate_o else None,
                "precision": None if rate_p is None else round(rate_p, 5),
                "recall": round(float(pql.sum() / yy.sum()), 5) if yy.sum() else None,
                "model_version": row["version"]})
    return pd.DataFrame(out)[[c for c, _ in COLUMNS]]


def summary(perf: pd.DataFrame) -> list[dict]:
    """Per definition, over the out-of-sample snapshots: pooled rates, lift, precision, recall."""
    rows = []
    for name, g in perf[~perf["in_sample"].astype(bool)].groupby("definition"):
        users, pqls, conv, pconv = (int(g[c].sum()) for c in ("users", "pqls", "conversions", "pql_conversions"))
        rate_p = pconv / pqls if pqls else None
        rate_o = (conv - pconv) / (users - pqls) if users > pqls else None
        rows.append({"definition": name, "snapshots": len(g), "users": users,
                     "pql_rate": round(pqls / users, 4) if users else None,
                     "conversion_pql": None if rate_p is None else round(rate_p, 4),
                     "conversion_other": None if rate_o is None else round(rate_o, 4),
                     "lift": round(rate_p / rate_o, 2) if rate_p is not None and rate_o else None,
                     "recall": round(pconv / conv, 4) if conv else None})
    return rows
