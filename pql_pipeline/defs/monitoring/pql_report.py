"""The PQL report: one static HTML page for a growth team, built from the warehouse.

What it holds, for one scored day:

- **today's PQLs**: counts by tier and route (users and accounts), the accounts going to
  sales with their contacts and reasons, the users getting an in-app nudge with theirs, and
  why other PQLs got no route;
- **the active PQL definition**: the model's tiers and PQL threshold, the routing rules, the
  rule proposed by milestone discovery and the classic rule, and the backtest comparing
  them out of sample (lift of PQLs over the rest; product-led teams expect 2-5x);
- **the model card**: version, algorithm, training and holdout windows, metrics, gates,
  top features, lift by decile and calibration;
- **data health**: quarantine rate per day and by rule, the day's reconciliation, and the
  drift report of the day (verdicts, feature drift).

Charts are PNG ``data:`` URIs and the style is inline: the file opens from disk in any
browser, with no server and no network. Every value read from events (ids, reasons) is
HTML-escaped by the template engine (Jinja2 with autoescaping).

``gather`` reads the warehouse into a plain dict, ``render`` turns it into HTML, and
``write_report`` does both and writes the dated file and, for the newest scored day, the
stable ``pql_report.html``; the asset and the tests call them.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from pathlib import Path

import pandas as pd

from pql_pipeline.defs.model import performance as P
from pql_pipeline.defs.model import registry as R
from pql_pipeline.lib import charts as C
from pql_pipeline.lib.trends import day_probabilities, pqls_by_day, quarantine_by_day
from pql_pipeline.lib.warehouse import table_exists
from pql_pipeline.settings import Settings

REPORT_NAME = "pql_report.html"
TOP_ROWS = 50
LIFT_EXPECTED = (2.0, 5.0)


def reports_dir(settings: Settings) -> Path:
    """Reports are written next to the warehouse file (``warehouse/reports/``)."""
    return settings.warehouse_path.parent / "reports"


def report_path(settings: Settings, day: dt.date | None = None) -> Path:
    """The stable path of the newest report, or the dated report of ``day``."""
    name = REPORT_NAME if day is None else f"pql_report_{day.isoformat()}.html"
    return reports_dir(settings) / name


def _records(df: pd.DataFrame) -> list[dict]:
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in df.to_dict("records")]


def _chart(draw, alt: str, problems: list[str]) -> dict:
    """A chart for the template: its data URI, or the sentence saying why it is missing."""
    png, error = C.draw_safely(draw)
    if png is not None:
        return {"alt": alt, "src": C.data_uri(png)}
    problems.append(f"chart '{alt}' could not be drawn: {error}")
    return {"alt": alt, "error": error}


def newest_scored_day(conn) -> dt.date | None:
    if not table_exists(conn, "pql_scores"):
        return None
    return conn.execute("SELECT max(snapshot_date) FROM pql_scores").fetchall()[0][0]


def gather(conn, settings: Settings, day: dt.date) -> dict:
    """Everything the report shows for ``day``, read from the warehouse."""
    problems: list[str] = []
    s = settings.scoring
    data: dict = {"day": day.isoformat(), "generated_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                  "problems": problems, "tiers": dict(s.tiers), "pql_threshold": settings.model.pql_threshold,
                  "routing": {"sales_segments": list(s.routing.sales_segments), "sales_tiers": list(s.routing.sales_tiers),
                              "nudge_tiers": list(s.routing.nudge_tiers),
                              "max_nudges_per_account": s.routing.max_nudges_per_account,
                              "suppress_days": s.routing.suppress_days},
                  "lift_expected": LIFT_EXPECTED}
    data.update(_pqls(conn, day, dict(s.tiers), problems))
    data.update(_definition(conn, settings))
    data.update(_model_card(conn, settings, problems))
    data.update(_health(conn, settings, day, problems))
    return data


def _pqls(conn, day: dt.date, tiers_config: dict[str, float], problems: list[str]) -> dict:
    if not table_exists(conn, "pql_scores"):
        return {"scored": False}
    users = conn.execute("""
        SELECT tier, route, count(*) AS users, count(*) FILTER (WHERE is_pql) AS pqls
        FROM pql_scores WHERE snapshot_date = ? GROUP BY ALL""", [day]).df()
    if users.empty:
        return {"scored": False}
    accounts = conn.execute("""
        SELECT tier, route, count(*) AS accounts, count(*) FILTER (WHERE is_pql) AS pqls
        FROM pql_account_scores WHERE snapshot_date = ? GROUP BY ALL""", [day]).df()
    sales = conn.execute(f"""
        SELECT account_id, segment, probability, tier, users_scored, pql_users, top_user_id, reason_text,
               caveat_text
        FROM pql_account_scores WHERE snapshot_date = ? AND route = 'sales'
        ORDER BY probability DESC, account_id LIMIT {TOP_ROWS}""", [day]).df()
    contacts = conn.execute("""
        SELECT account_id, string_agg(user_id, ', ' ORDER BY probability DESC, user_id) AS contacts
        FROM pql_scores WHERE snapshot_date = ? AND route = 'sales' GROUP BY ALL""", [day]).df()
    sales = sales.merge(contacts, on="account_id", how="left")
    nudges = conn.execute(f"""
        SELECT user_id, account_id, segment, probability, tier, reason_text, caveat_text
        FROM pql_scores WHERE snapshot_date = ? AND route = 'in_app'
        ORDER BY probability DESC, user_id LIMIT {TOP_ROWS}""", [day]).df()
    unrouted = conn.execute("""
        SELECT coalesce(route_note, 'below the tiers that are routed') AS why, count(*) AS pqls
        FROM pql_scores WHERE snapshot_date = ? AND is_pql AND route = 'none'
        GROUP BY ALL ORDER BY pqls DESC""", [day]).df()
    new = None
    if table_exists(conn, "pql_history"):
        new = conn.execute("""
            SELECT count(*) FILTER (WHERE entity_type = 'account'), count(*) FILTER (WHERE entity_type = 'user')
            FROM pql_history WHERE is_pql AND valid_from = ?""", [day]).fetchall()[0]
    tiers = sorted(set(users["tier"]), key=lambda t: {"hot": 0, "warm": 1, "cold": 2}.get(t, 3))
    routes = sorted(set(users["route"]) | set(accounts["route"]),
                    key=lambda r: {"sales": 0, "in_app": 1, "none": 2}.get(r, 3))

    def matrix(frame: pd.DataFrame, value: str) -> list[dict]:
        return [{"tier": t, **{r: int(frame.loc[(frame["tier"] == t) & (frame["route"] == r), value].sum())
                                for r in routes}} for t in tiers]

    days, by_route = pqls_by_day(conn, day)
    probabilities = day_probabilities(conn, day)
    model_versions = [v for (v,) in conn.execute(
        "SELECT DISTINCT model_version FROM pql_scores WHERE snapshot_date = ?", [day]).fetchall()]
    return {
        "scored": True,
        "scored_users": int(users["users"].sum()), "pql_users": int(users["pqls"].sum()),
        "scored_accounts": int(accounts["accounts"].sum()), "pql_accounts": int(accounts["pqls"].sum()),
        "sales_accounts": int(accounts.loc[accounts["route"] == "sales", "accounts"].sum()),
        "nudged_users": int(users.loc[users["route"] == "in_app", "users"].sum()),
        "new_pql_accounts": None if new is None else int(new[0]), "new_pql_users": None if new is None else int(new[1]),
        "routes": routes, "user_matrix": matrix(users, "users"), "account_matrix": matrix(accounts, "accounts"),
        "sales": _records(sales), "nudges": _records(nudges), "unrouted": _records(unrouted),
        "scored_with": ", ".join(model_versions),
        "pqls_chart": _chart(lambda: C.pqls_per_day_chart(days, by_route), "PQLs per day, by route", problems),
        "distribution_chart": _chart(lambda: C.score_distribution_chart(probabilities, tiers_config, day.isoformat()),
                                     "score distribution", problems),
    }


def _definition(conn, settings: Settings) -> dict:
    from pql_pipeline.defs.model.assets import load_proposed_rule

    return {"proposed_rule": load_proposed_rule(settings), "classic_rule": dict(settings.model.classic_rule or {})}


def _model_card(conn, settings: Settings, problems: list[str]) -> dict:
    none = {"model": None, "backtest": [], "lift_chart": None, "lift_verdict": None}
    if not table_exists(conn, R.REGISTRY):
        return none
    row = R.scoring_model(conn, settings.model.pinned_version)
    if row is None:
        return none
    m = row["metrics"] or {}
    card = {
        "version": row["version"], "algorithm": row["algorithm"], "status": row["status"],
        "pinned": settings.model.pinned_version is not None, "reason": row["reason"],
        "trained_at": str(row["trained_at"])[:19],
        "train_window": f"{row['train_start']} .. {row['train_end']}", "train_rows": row["train_rows"],
        "train_positives": row["train_positives"],
        "holdout_window": f"{row['holdout_start']} .. {row['holdout_end']}", "holdout_rows": row["holdout_rows"],
        "holdout_positives": row["holdout_positives"],
        "metrics": [{"metric": k, "value": m.get(k)} for k in
                    ("roc_auc", "pr_auc", "brier", "calibration_error", "precision_at_threshold",
                     "recall_at_threshold") if m.get(k) is not None],
        "baselines": [{"definition": name.replace("_", " "), "roc_auc": b.get("roc_auc")}
                      for name, b in (row["baselines"] or {}).items()],
        "top_features": [{"feature": f, "drop": v} for f, v in (row["importance"] or [])[:10]],
        "gates": [{"gate": k, "passed": v["passed"], "value": v["value"], "bound": v["bound"]}
                  for k, v in (row["gates"] or {}).items()],
        "decile_chart": None, "calibration_chart": None,
    }
    if m.get("deciles"):
        card["decile_chart"] = _chart(lambda: C.decile_chart(m["deciles"]), "lift by decile", problems)
    if m.get("calibration_curve"):
        card["calibration_chart"] = _chart(lambda: C.calibration_chart(m["calibration_curve"]), "calibration",
                                           problems)
    backtest, lift_chart, verdict = [], None, None
    if table_exists(conn, "pql_performance"):
        perf = conn.execute("SELECT * FROM pql_performance WHERE model_version = ? ORDER BY snapshot_date, definition",
                            [row["version"]]).df()
        if len(perf):
            backtest = P.summary(perf)
            oos = perf[~perf["in_sample"].astype(bool)]
            if len(oos):
                lift_chart = _chart(lambda: C.lift_chart(_records(oos)), "backtest lift per snapshot", problems)
            model_lift = next((b["lift"] for b in backtest if b["definition"] == "model"), None)
            verdict = _lift_verdict(model_lift)
    return {"model": card, "backtest": backtest, "lift_chart": lift_chart, "lift_verdict": verdict}


def _lift_verdict(lift: float | None) -> dict | None:
    lo, hi = LIFT_EXPECTED
    if lift is None:
        return None
    if lift < lo:
        return {"level": "warn", "text": f"The model's PQLs convert {lift:.1f}x the rest out of sample, below the "
                                         f"{lo:g}-{hi:g}x product-led teams expect: revisit the signals."}
    if lift > hi:
        return {"level": "warn", "text": f"The model's PQLs convert {lift:.1f}x the rest out of sample, above the "
                                         f"{lo:g}-{hi:g}x product-led teams expect: check that no signal leaks the outcome."}
    return {"level": "ok", "text": f"The model's PQLs convert {lift:.1f}x the rest out of sample, within the "
                                   f"{lo:g}-{hi:g}x product-led teams expect."}


def _health(conn, settings: Settings, day: dt.date, problems: list[str]) -> dict:
    q = settings.checks.quarantine_rate
    days, rates = quarantine_by_day(conn, day)
    out: dict = {"quarantine_days": len(days), "drift": None,
                 "quarantine_warn": q.warn_above, "quarantine_error": q.error_above}
    if days:
        out["quarantine_chart"] = _chart(lambda: C.quarantine_chart(days, rates, q.warn_above, q.error_above),
                                         "quarantine rate per day", problems)
        out["quarantine_today"] = rates[-1] if days[-1] == day.isoformat() else None
    if table_exists(conn, "quarantined_events"):
        out["by_rule"] = _records(conn.execute("""
            SELECT rule_id, count(*) AS lines FROM quarantined_events WHERE partition_date = ?
            GROUP BY ALL ORDER BY lines DESC, rule_id LIMIT 15""", [day]).df())
    if table_exists(conn, "raw_events") and table_exists(conn, "validated_events"):
        raw, valid, dup, quar = conn.execute("""
            SELECT (SELECT count(*) FROM raw_events WHERE partition_date = $d),
                   (SELECT count(*) FROM validated_events WHERE partition_date = $d),
                   (SELECT count(*) FROM duplicate_events WHERE partition_date = $d),
                   (SELECT count(*) FROM quarantined_events WHERE partition_date = $d)""", {"d": day}).fetchall()[0]
        out["reconciliation"] = {"raw": raw, "validated": valid, "duplicates": dup, "quarantined": quar,
                                 "reconciles": raw == valid + dup + quar}
    if table_exists(conn, "drift_history"):
        drift = conn.execute("""
            SELECT part, item, reference, metric, value, warn, alert, verdict, note FROM drift_history
            WHERE report_day = ? ORDER BY CASE verdict WHEN 'alert' THEN 0 WHEN 'warn' THEN 1 ELSE 2 END,
                  part, item, reference""", [day]).df()
        if len(drift):
            counts = drift["verdict"].value_counts().to_dict()
            flagged = drift[drift["verdict"].isin(["alert", "warn"])]
            psi = drift[(drift["part"] == "features") & (drift["reference"] == "training")
                        & (drift["metric"] == "psi") & drift["value"].notna()]
            d = settings.monitoring.drift
            out["drift"] = {
                "verdicts": {k: int(v) for k, v in counts.items()},
                "worst": "alert" if counts.get("alert") else "warn" if counts.get("warn") else "ok",
                "flagged": _records(flagged.head(30)),
                "chart": _chart(lambda: C.drift_chart(list(zip(psi["item"], psi["value"])), d.psi_warn, d.psi_alert,
                                                      "the training rows"), "feature drift", problems)
                if len(psi) else None,
            }
    return out


def template_version() -> str:
    """A short hash of the page template: part of pql_report's code version, so editing the
    page marks the report stale in the UI."""
    import hashlib

    return hashlib.sha256((Path(__file__).parent / "templates" / "pql_report.html.j2").read_bytes()).hexdigest()[:8]


def render(data: dict) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("pql_pipeline.defs.monitoring", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda v, digits=1: "-" if v is None else f"{v:.{digits}%}"
    env.filters["num"] = lambda v, digits=3: "-" if v is None else (f"{v:,}" if isinstance(v, int) else f"{v:.{digits}f}")
    return env.get_template("pql_report.html.j2").render(**data)


def write_report(conn, settings: Settings, day: dt.date) -> tuple[Path, dict]:
    """Writes the dated report of ``day``, and the stable ``pql_report.html`` when ``day`` is
    the newest scored day (a backfill of older days leaves the current page alone). Files
    are replaced atomically: a browser never reads half a page."""
    data = gather(conn, settings, day)
    html = render(data)
    out = report_path(settings, day)
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(out, html)
    newest = newest_scored_day(conn)
    data["is_current"] = newest is None or day >= newest
    if data["is_current"]:
        _atomic_write(report_path(settings), html)
    data["path"] = str(out)
    return out, data


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def verify_report(conn, path: Path, day: dt.date) -> dict:
    """Reads the written page back and compares it with the warehouse: the PQL accounts and
    users shown on the day's cards against pql_account_scores / pql_scores, and every inline
    chart a decodable PNG image. Returns the findings (``problems`` empty when it matches)."""
    import base64
    import re

    html = path.read_text(encoding="utf-8")
    problems = []
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)"', html)
    broken = sum(1 for b in images if not base64.b64decode(b).startswith(C.PNG_SIGNATURE))
    if broken:
        problems.append(f"{broken} of {len(images)} charts are not PNG images")
    if "could not be drawn" in html:
        problems.append("a chart could not be drawn (see the page's warning)")
    shown = {label: int(v.replace(",", "")) for v, label in
             re.findall(r'<div class="v">([\d,]+)</div><div class="l">PQL (accounts|users) \(of', html)}
    expected = {}
    if table_exists(conn, "pql_scores"):
        expected["users"] = conn.execute("SELECT count(*) FILTER (WHERE is_pql) FROM pql_scores "
                                         "WHERE snapshot_date = ?", [day]).fetchall()[0][0]
        expected["accounts"] = conn.execute("SELECT count(*) FILTER (WHERE is_pql) FROM pql_account_scores "
                                            "WHERE snapshot_date = ?", [day]).fetchall()[0][0]
    scored = bool(expected) and conn.execute("SELECT count(*) FROM pql_scores WHERE snapshot_date = ?",
                                             [day]).fetchall()[0][0] > 0
    if scored and shown != expected:
        problems.append(f"the page shows PQLs {shown}, the warehouse holds {expected}")
    if not scored and shown:
        problems.append(f"the page shows PQLs {shown} for a day without scores")
    return {"problems": problems, "charts": len(images), "shown": shown, "expected": expected if scored else {}}
