"""The PQL report built from a real DuckDB file: a page before anything is scored, values
from events escaped, and a backfill of an older day leaving the current page alone."""

import datetime as dt
import json

import pandas as pd
import pytest

from pql_pipeline.defs.monitoring.pql_report import gather, render, report_path, write_report
from pql_pipeline.defs.scoring.batch import SCORE_COLUMNS
from pql_pipeline.defs.scoring.scoring import ACCOUNT_COLUMNS
from pql_pipeline.lib.warehouse import ensure_columns, registered
from pql_pipeline.settings import load_settings

DAY = dt.date(2026, 3, 9)
HOSTILE = "<script>alert(1)</script>"


@pytest.fixture
def settings(tmp_path, monkeypatch, warehouse):
    monkeypatch.setenv("PQL_WAREHOUSE", warehouse.database)
    return load_settings()


def scores(conn, day: dt.date, account: str = "acc_1") -> None:
    ensure_columns(conn, "pql_scores", SCORE_COLUMNS)
    ensure_columns(conn, "pql_account_scores", ACCOUNT_COLUMNS)
    now = pd.Timestamp("2026-03-10T00:00:00Z")
    users = pd.DataFrame([
        {"snapshot_date": day, "user_id": "u1", "account_id": account, "probability": 0.8, "percentile": 1.0,
         "tier": "hot", "is_pql": True, "rule_fired": True, "milestones_hit": None, "reasons": json.dumps([]),
         "reason_text": f"invited 3 teammates; named a project {HOSTILE} & more", "caveat_text": None,
         "model_version": "m1", "segment": "enterprise", "route": "sales", "route_note": None, "scored_at": now},
        {"snapshot_date": day, "user_id": "u2", "account_id": "acc_2", "probability": 0.05, "percentile": 0.5,
         "tier": "cold", "is_pql": False, "rule_fired": False, "milestones_hit": None, "reasons": json.dumps([]),
         "reason_text": None, "caveat_text": None, "model_version": "m1", "segment": "solo", "route": "none",
         "route_note": None, "scored_at": now}])
    accounts = pd.DataFrame([
        {"snapshot_date": day, "account_id": account, "probability": 0.8, "percentile": 1.0, "tier": "hot",
         "is_pql": True, "users_scored": 1, "pql_users": 1, "top_user_id": "u1", "top_user_probability": 0.8,
         "reasons": json.dumps([]), "reason_text": f"1 of its users qualifies; {HOSTILE}", "caveat_text": "& more",
         "model_version": "m1", "segment": "enterprise", "route": "sales", "route_note": None, "scored_at": now}])
    with registered(conn, "fx_u", users), registered(conn, "fx_a", accounts):
        conn.execute("INSERT INTO pql_scores BY NAME SELECT * FROM fx_u")
        conn.execute("INSERT INTO pql_account_scores BY NAME SELECT * FROM fx_a")


def test_a_report_before_anything_is_scored_says_so(conn, settings):
    path, data = write_report(conn, settings, DAY)
    html = path.read_text(encoding="utf-8")
    assert path == report_path(settings, DAY) and report_path(settings).read_text(encoding="utf-8") == html
    assert "Nothing was scored on 2026-03-09" in html and "No model scores yet" in html
    assert data["problems"] == [] and "<img" not in html


def test_values_read_from_events_are_escaped(conn, settings):
    scores(conn, DAY, account=f"acc_{HOSTILE}")
    html = render(gather(conn, settings, DAY))
    assert HOSTILE not in html
    assert "acc_&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "1 of its users qualifies; &lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&amp; more" in html
    assert html.count('<img src="data:image/png;base64,') == 2      # PQLs per day, score distribution


def test_an_older_day_does_not_replace_the_current_report(conn, settings):
    scores(conn, DAY)
    scores(conn, DAY - dt.timedelta(days=1), account="acc_old")
    write_report(conn, settings, DAY)
    current = report_path(settings).read_text(encoding="utf-8")
    path, data = write_report(conn, settings, DAY - dt.timedelta(days=1))
    assert not data["is_current"] and "acc_old" in path.read_text(encoding="utf-8")
    assert report_path(settings).read_text(encoding="utf-8") == current and "acc_old" not in current


def test_the_written_page_is_checked_against_the_warehouse(conn, settings):
    from pql_pipeline.defs.monitoring.pql_report import verify_report

    scores(conn, DAY)
    path, _ = write_report(conn, settings, DAY)
    found = verify_report(conn, path, DAY)
    assert found["problems"] == [] and found["shown"] == found["expected"] == {"users": 1, "accounts": 1}
    assert found["charts"] == 2
    # a page that drifted from the warehouse (here: edited) is reported, naming both counts
    html = path.read_text(encoding="utf-8")
    path.write_text(html.replace('<div class="v">1</div><div class="l">PQL accounts',
                                 '<div class="v">7</div><div class="l">PQL accounts'), encoding="utf-8")
    assert verify_report(conn, path, DAY)["problems"] == [
        "the page shows PQLs {'accounts': 7, 'users': 1}, the warehouse holds {'users': 1, 'accounts': 1}"]
