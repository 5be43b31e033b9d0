import datetime as dt
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from pql_pipeline.lib.contract_checks import check_schema, evaluate
from pql_pipeline.lib.contracts import ContractError, TableRule, load_contract, table_rules
from pql_pipeline_tests.conftest import CONTRACTS

ALL_CONTRACTS = sorted(CONTRACTS.glob("*.odcs.yaml"))


def test_every_contract_is_valid_odcs():
    import open_data_contract_standard

    schema = json.loads((Path(open_data_contract_standard.__file__).parent / "schema.json").read_text())
    assert len(ALL_CONTRACTS) >= 5
    for path in ALL_CONTRACTS:
        doc = yaml.safe_load(path.read_text())
        jsonschema.validate(doc, schema)  # raises with the offending path
        c = load_contract(path)
        assert c.owner == "data-engineering"
        for obj in c.objects():
            if obj.physicalType == "table":
                table_rules(c, obj.name)  # compiles


def _contract(tmp_path, schema: list, quality=None) -> Path:
    doc = {"apiVersion": "v3.1.0", "kind": "DataContract", "id": "t", "version": "1.0.0", "status": "active",
           "schema": [{"name": "t", "physicalType": "table", "properties": schema,
                       **({"quality": quality} if quality else {})}]}
    p = tmp_path / "t.odcs.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def test_rules_compiled_from_properties_and_quality(tmp_path):
    p = _contract(tmp_path, [
        {"name": "id", "logicalType": "string", "physicalType": "VARCHAR", "required": True, "unique": True},
        {"name": "kind", "logicalType": "string", "physicalType": "VARCHAR",
         "quality": [{"id": "kind.allowed", "type": "library", "metric": "invalidValues",
                      "arguments": {"validValues": ["a", "b"]}, "mustBe": 0, "severity": "warning"}]},
        {"name": "n", "logicalType": "integer", "physicalType": "BIGINT",
         "logicalTypeOptions": {"minimum": 0, "maximum": 10}},
        {"name": "code", "logicalType": "string", "physicalType": "VARCHAR", "logicalTypeOptions": {"pattern": "[A-Z]{2}"}},
    ], quality=[{"id": "rows", "type": "library", "metric": "rowCount", "mustBeGreaterThan": 0},
                {"id": "big_n", "type": "sql", "query": "SELECT count(*) FROM {table} WHERE n > 5", "mustBeLessThan": 2}])
    rules = {r.id: r for r in table_rules(load_contract(p), "t")}
    assert set(rules) == {"id.not_null", "id.unique", "kind.allowed", "n.between", "code.pattern", "rows", "big_n"}
    assert rules["kind.allowed"].severity == "warning"
    assert rules["n.between"].params == {"min": 0, "max": 10}


@pytest.mark.parametrize("bad, message", [
    ({"kind": "DataContract"}, "ODCS v3"),
    ({"apiVersion": "v3.1.0", "kind": "DataContract", "bogus": 1}, "bogus"),
])
def test_invalid_contract_is_a_clear_error(tmp_path, bad, message):
    p = tmp_path / "x.odcs.yaml"
    p.write_text(yaml.safe_dump(bad))
    with pytest.raises(ContractError, match=message):
        load_contract(p)


def test_unsupported_metric_names_the_rule(tmp_path):
    p = _contract(tmp_path, [{"name": "id", "logicalType": "string",
                              "quality": [{"id": "weird", "type": "library", "metric": "entropy"}]}])
    with pytest.raises(ContractError, match="weird.*entropy"):
        table_rules(load_contract(p), "t")


def test_ge_and_sql_engines_agree(tmp_path, conn):
    """The same contract on the same rows gives the same verdicts whether GE or DuckDB evaluates it."""
    p = _contract(tmp_path, [
        {"name": "id", "logicalType": "string", "physicalType": "VARCHAR", "required": True, "unique": True},
        {"name": "kind", "logicalType": "string", "physicalType": "VARCHAR",
         "quality": [{"id": "kind.allowed", "type": "library", "metric": "invalidValues",
                      "arguments": {"validValues": ["a", "b"]}, "mustBe": 0}]},
        {"name": "n", "logicalType": "integer", "physicalType": "BIGINT",
         "logicalTypeOptions": {"minimum": 0, "maximum": 10}},
        {"name": "code", "logicalType": "string", "physicalType": "VARCHAR", "logicalTypeOptions": {"pattern": "[A-Z]{2}"}},
        {"name": "opt", "logicalType": "string", "physicalType": "VARCHAR",
         "quality": [{"id": "opt.mostly", "type": "library", "metric": "nullValues", "mustBeLessThan": 50,
                      "unit": "percent"}]},
    ], quality=[{"id": "rows", "type": "library", "metric": "rowCount", "mustBeBetween": [1, 3]}])
    c = load_contract(p)
    conn.execute("CREATE TABLE t (id VARCHAR, kind VARCHAR, n BIGINT, code VARCHAR, opt VARCHAR)")
    conn.execute("""INSERT INTO t VALUES ('1','a',1,'DE','x'), ('2','z',11,'de',NULL), ('2','b',-1,'FR','y'),
                    (NULL,'a',5,'US',NULL)""")
    ge = {o.rule_id: o for o in evaluate(conn, c, "t", ge_max_rows=100)}
    sql = {o.rule_id: o for o in evaluate(conn, c, "t", ge_max_rows=0)}
    assert {o.engine for o in ge.values()} == {"great_expectations"}
    assert {o.engine for o in sql.values()} == {"duckdb"}
    expected = {"id.not_null": False, "id.unique": False, "kind.allowed": False, "n.between": False,
                "code.pattern": False, "opt.mostly": True, "rows": False}
    assert {k: v.passed for k, v in ge.items()} == expected
    assert {k: v.passed for k, v in sql.items()} == expected
    for rid in ("id.not_null", "kind.allowed", "n.between", "code.pattern"):
        assert ge[rid].observed == sql[rid].observed, rid
    assert sql["id.not_null"].observed == 1 and sql["n.between"].observed == 2
    # failing rules carry sample rows for the UI
    assert sql["kind.allowed"].sample and sql["kind.allowed"].sample[0]["kind"] == "z"


def test_rules_on_list_columns_run_in_sql_beside_great_expectations(tmp_path, conn):
    """A list column's rules are judged by DuckDB (Great Expectations walks a pandas array per
    row slowly); the other rules of the same table stay with Great Expectations."""
    p = _contract(tmp_path, [
        {"name": "id", "logicalType": "string", "physicalType": "VARCHAR", "required": True},
        {"name": "tags", "logicalType": "array", "physicalType": "VARCHAR[]", "required": True},
    ])
    conn.execute("CREATE TABLE t (id VARCHAR, tags VARCHAR[])")
    conn.execute("INSERT INTO t VALUES ('1', []), ('2', ['a']), (NULL, NULL), ('4', NULL)")
    out = {o.rule_id: o for o in evaluate(conn, load_contract(p), "t", ge_max_rows=100)}
    assert (out["id.not_null"].engine, out["id.not_null"].passed, out["id.not_null"].observed) == (
        "great_expectations", False, 1)
    assert (out["tags.not_null"].engine, out["tags.not_null"].passed, out["tags.not_null"].observed) == (
        "duckdb", False, 2)


def test_schema_check_reports_missing_and_mistyped_columns(tmp_path, conn):
    p = _contract(tmp_path, [{"name": "id", "logicalType": "string", "physicalType": "VARCHAR"},
                             {"name": "n", "logicalType": "integer", "physicalType": "BIGINT"}])
    conn.execute("CREATE TABLE t (id INTEGER, extra VARCHAR)")
    out = check_schema(conn, load_contract(p), "t")
    assert not out.passed
    assert "missing column n" in out.observed
    assert any("id is INTEGER" in x for x in out.observed)
    assert "column extra is not in the contract" in out.observed


def test_sql_rule_uses_comparison_operators():
    r = TableRule("x", "sql", "x", params={"query": "q", "mustBeBetween": [1, 3]})
    assert r.passes(2, 0) and not r.passes(4, 0)


def test_partitioned_evaluation_checks_uniqueness_within_each_partition(tmp_path, conn):
    p = _contract(tmp_path, [
        {"name": "partition_date", "logicalType": "date", "physicalType": "DATE", "required": True},
        {"name": "id", "logicalType": "string", "physicalType": "VARCHAR", "required": True, "unique": True},
    ], quality=[{"name": "few", "type": "sql", "query": "SELECT count(*) FROM {table}", "mustBeLessThan": 4}])
    c = load_contract(p)
    conn.execute("CREATE TABLE t (partition_date DATE, id VARCHAR)")
    # 'a' in two partitions is fine; 'b' twice on the 2nd is not; the 3rd has 4 rows (sql rule, per partition)
    conn.execute("""INSERT INTO t VALUES ('2026-01-01','a'), ('2026-01-02','a'), ('2026-01-02','b'),
                    ('2026-01-02','b'), ('2026-01-03','x'), ('2026-01-03','y'), ('2026-01-03', NULL),
                    ('2026-01-03','z')""")
    for engine_rows in (100, 0):  # GE, then SQL
        out = {o.rule_id: o for o in evaluate(conn, c, "t", ge_max_rows=engine_rows,
                                              partitions=["2026-01-01", "2026-01-02", "2026-01-03"])}
        assert not out["id.unique"].passed and out["id.unique"].partitions == ["2026-01-02"]
        assert not out["id.not_null"].passed and out["id.not_null"].partitions == ["2026-01-03"]
        assert not out["few"].passed and out["few"].observed == {"2026-01-03": 4}
        ok = {o.rule_id: o.passed for o in evaluate(conn, c, "t", ge_max_rows=engine_rows, partitions=["2026-01-01"])}
        assert ok == {"partition_date.not_null": True, "id.not_null": True, "id.unique": True, "few": True}


def test_per_partition_rules_over_a_long_range_batch_and_name_the_failing_days(tmp_path, conn, monkeypatch):
    """More partitions than one statement holds (batches of PARTITION_BATCH): every day is
    judged on its own rows, a trailing semicolon in a rule's query is harmless, and a
    row-count rule sees each partition's count."""
    from pql_pipeline.lib import contract_checks

    monkeypatch.setattr(contract_checks, "PARTITION_BATCH", 7)
    p = _contract(tmp_path, [
        {"name": "partition_date", "logicalType": "date", "physicalType": "DATE", "required": True},
        {"name": "n", "logicalType": "integer", "physicalType": "BIGINT"},
    ], quality=[{"name": "no_negative", "type": "sql", "query": "SELECT count(*) FROM {table} WHERE n < 0;",
                 "mustBe": 0},
                {"id": "rows", "type": "library", "metric": "rowCount", "mustBeBetween": [2, 3]}])
    c = load_contract(p)
    conn.execute("CREATE TABLE t (partition_date DATE, n BIGINT)")
    conn.execute("INSERT INTO t SELECT DATE '2026-01-01' + INTERVAL (i // 2) DAY, i FROM range(60) AS r(i)")
    conn.execute("UPDATE t SET n = -1 WHERE partition_date IN ('2026-01-09', '2026-01-25')")
    conn.execute("DELETE FROM t WHERE partition_date = '2026-01-17' AND n % 2 = 0")     # one row left that day
    keys = [(dt.date(2026, 1, 1) + dt.timedelta(days=i)).isoformat() for i in range(30)]
    out = {o.rule_id: o for o in evaluate(conn, c, "t", ge_max_rows=0, partitions=keys)}
    assert out["no_negative"].observed == {"2026-01-09": 2, "2026-01-25": 2}
    assert out["rows"].observed == {"2026-01-17": 1}
    assert {o.rule_id: o.passed for o in evaluate(conn, c, "t", ge_max_rows=0, partitions=keys[:8])} == {
        "partition_date.not_null": True, "no_negative": True, "rows": True}
