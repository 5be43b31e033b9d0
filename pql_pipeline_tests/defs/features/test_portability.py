"""Feature, label and milestone SQL is written once and transpiles to Spark SQL."""

import datetime as dt
import re

import pytest
import sqlglot

from pql_pipeline.defs.features import features as F
from pql_pipeline.defs.features import labels as L
from pql_pipeline.defs.features import milestones as M
from pql_pipeline.defs.features import state as ST
from pql_pipeline.defs.features.specs import feature_spec, label_spec, milestone_spec
from pql_pipeline.lib.engine import json_path, render, sql_literal
from pql_pipeline.settings import load_settings

# DuckDB spellings that Spark does not understand
DUCKDB_ONLY = [r"->>", r"\bjson_extract_string\b", r"\bARG_MIN\b", r"\bARG_MAX\b", r"\blist_value\b",
               r"\bTIMESTAMPTZ\b", r"\bDATE_DIFF\('"]


def statements():
    s = load_settings()
    spec, lspec, mspec = feature_spec(s), label_spec(s), milestone_spec(s)
    day = dt.date(2026, 3, 1)
    cands = [M.Candidate("Project Created", "Project Created", None, "event_name = 'Project Created'"),
             M.Candidate(M.ACTIVE_DAYS, None, None, "event_type IN ('track', 'page', 'screen')")]
    return {
        "snapshots": F.snapshots_sql([day, day + dt.timedelta(days=1)]),
        "events": F.events_sql(day),
        "user_day": F.user_day_sql(spec),
        "user_values": F.user_values_sql(spec),
        "user_firsts": F.user_firsts_sql(spec),
        "user_agg": F.user_agg_sql(spec),
        "user_agg_signup": F.user_agg_signup_sql(spec),
        "members": F.members_sql(),
        "account_values": F.account_values_sql(spec),
        "user_features": F.user_features_sql(spec),
        "account_features": F.account_features_sql(spec),
        "labels": L.labels_sql(lspec, [day], day + dt.timedelta(days=40)),
        "milestones": M.stats_sql(mspec, cands, day + dt.timedelta(days=90)),
    }


class _Recorder:
    """Stands in for the engine: keeps the SQL of every temp table and view it is asked for."""

    def __init__(self):
        self.sql: dict[str, str] = {}
        self.conn = self

    def temp(self, name, sql):
        self.sql[name] = sql

    view = temp

    def drop(self, *names):
        pass

    def execute(self, *a):
        return self

    def fetchall(self):
        return [(0,)]


def state_statements():
    """The statements that advance a day from the previous day's state (features/state.py)."""
    rec = _Recorder()
    ST.advance(rec, feature_spec(load_settings()), dt.date(2026, 3, 2))
    return rec.sql


@pytest.mark.parametrize("name", list(state_statements()))
def test_every_state_statement_transpiles_to_spark(name):
    spark = render(state_statements()[name], "spark")
    for pattern in DUCKDB_ONLY:
        assert not re.search(pattern, spark, flags=re.IGNORECASE), (name, pattern, spark[:500])
    assert sqlglot.parse_one(spark, read="spark") is not None


@pytest.mark.parametrize("name", list(statements()))
def test_every_statement_transpiles_to_spark(name):
    sql = statements()[name]
    spark = render(sql, "spark")
    for pattern in DUCKDB_ONLY:
        assert not re.search(pattern, spark, flags=re.IGNORECASE), (name, pattern, spark[:500])
    # the Spark text parses back as Spark SQL, and says the same thing as the source
    back = sqlglot.parse_one(spark, read="spark")
    assert back is not None
    if name == "user_day":
        assert "GET_JSON_OBJECT" in spark.upper()
    if name == "user_features":
        assert "MIN_BY" in spark.upper() or "MAX_BY" in spark.upper()


def test_unsupported_sql_is_refused_not_mangled():
    with pytest.raises(sqlglot.errors.ParseError):
        render("SELECT FROM WHERE (", "spark")


def test_literals_and_json_paths_are_quoted():
    assert sql_literal("it's") == "'it''s'"
    assert sql_literal(True) == "TRUE" and sql_literal(3) == "3"
    # a property name with a quote or a dot cannot break out of the path
    assert json_path('a"b.c') == "'$.\"a\\\"b.c\"'"
