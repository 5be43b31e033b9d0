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


@pytest.mark.parametrize("body, key, message", [
    ("validation:\n  contract: data_contracts/missing.odcs.yaml\n", "validation.contract", "does not exist"),
    ("features:\n  signals: config/nowhere.yaml\n", "features.signals", "does not exist"),
    ("warehouse:\n  memory_limit: lots\n", "warehouse.memory_limit", "'lots' is not a memory size"),
    ("labels:\n  horizon_days: 14\nmodel:\n  seed: 1\nlabels:\n  late_arrival_days: 2\n", "labels",
     "duplicate key 'labels', also on line 1"),
    ("activation:\n  in_app:\n    intercom_url: intercom.io/events\n", "activation.in_app.intercom_url",
     "not an http(s) URL"),
])
def test_config_errors_name_file_line_and_key_in_one_line(tmp_path, body, key, message):
    p = tmp_path / "pipeline.yaml"
    p.write_text(body)
    with pytest.raises(ConfigError) as e:
        load_settings(p)
    [line] = str(e.value).splitlines()
    assert line.startswith(f"{p} line ") and f"({key})" in line and message in line


def test_a_broken_signals_file_is_found_at_load_with_its_own_line(tmp_path):
    signals = tmp_path / "signals.yaml"
    signals.write_text("signals:\n  - name: a\n    kind: nope\n")
    p = tmp_path / "pipeline.yaml"
    p.write_text(f"features:\n  signals: {signals}\n")
    with pytest.raises(ConfigError) as e:
        load_settings(p)
    assert f"{p} line 2 (features.signals): {signals} line" in str(e.value)


def test_a_contract_with_a_key_given_twice_is_refused(tmp_path):
    from pql_pipeline.settings import PROJECT_ROOT

    contract = tmp_path / "events.odcs.yaml"
    text = (PROJECT_ROOT / "data_contracts" / "segment_events.odcs.yaml").read_text()
    contract.write_text(text + "\nkind: DataContract\n")
    p = tmp_path / "pipeline.yaml"
    p.write_text(f"validation:\n  contract: {contract}\n")
    with pytest.raises(ConfigError, match="duplicate key 'kind'"):
        load_settings(p)
