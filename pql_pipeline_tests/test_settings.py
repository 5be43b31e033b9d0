import pytest

from pql_pipeline.settings import ConfigError, load_settings


def test_packaged_defaults_load():
    s = load_settings()
    assert s.checks.quarantine_rate.error_above == 0.05
    assert s.segments[-1].max_employees is None


@pytest.mark.parametrize("body, message", [
    ("source:\n  format: csv\n", "source.format"),
    ("source:\n  pattern: 'events/*.jsonl'\n", "{date}"),
    ("checks:\n  quarantine_rate: {warn_above: 0.1, error_above: 0.05}\n", "warn_above must not exceed"),
    ("warehouse:\n  pathh: x\n", "warehouse.pathh"),
    ("segments:\n  - {name: big, max_employees: 10}\n", "max_employees: null"),
    ("source: [unclosed\n", "not valid YAML"),
])
def test_invalid_config_names_the_problem(tmp_path, body, message):
    p = tmp_path / "c.yaml"
    p.write_text(body)
    with pytest.raises(ConfigError) as e:
        load_settings(p)
    assert message in str(e.value) and str(p) in str(e.value)


def test_env_overrides_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("PQL_WAREHOUSE", str(tmp_path / "w.duckdb"))
    monkeypatch.setenv("PQL_EVENTS_DIR", str(tmp_path / "ev"))
    s = load_settings()
    assert s.warehouse_path == tmp_path / "w.duckdb" and s.events_root == tmp_path / "ev"


def test_settings_do_not_change_when_the_environment_does(tmp_path, monkeypatch):
    monkeypatch.setenv("PQL_WAREHOUSE", str(tmp_path / "a.duckdb"))
    s = load_settings()
    monkeypatch.setenv("PQL_WAREHOUSE", str(tmp_path / "b.duckdb"))
    assert s.warehouse_path == tmp_path / "a.duckdb"
