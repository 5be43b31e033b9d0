"""signals.yaml errors: a ConfigError that names the file and the line of each problem."""

import textwrap

import pytest

from pql_pipeline.lib.yaml_config import ConfigError
from pql_pipeline.settings import PROJECT_ROOT
from pql_pipeline.signals import load_signals

HEADER = """\
# signals for the tests
version: 1
signup_event: Signed Up

signals:
  - name: projects
    kind: count
    event: Project Created
    window_days: 14
"""


def write(tmp_path, body: str, header: str = HEADER):
    path = tmp_path / "signals.yaml"
    path.write_text(header + textwrap.indent(textwrap.dedent(body), "  "))
    return path


def line_of(path, needle: str, nth: int = 1) -> int:
    """1-based number of the nth line containing ``needle``."""
    hits = [i + 1 for i, line in enumerate(path.read_text().splitlines()) if needle in line]
    return hits[nth - 1]


def problems(path) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_signals(path)
    return str(e.value).splitlines()


def test_the_shipped_signals_file_loads():
    sigs = load_signals(PROJECT_ROOT / "pql_pipeline" / "config" / "signals.yaml")
    assert len(sigs.signals) >= 10 and sigs.signup_event == "Signed Up"


def test_a_valid_file_loads(tmp_path):
    path = write(tmp_path, """\
      - name: features
        kind: distinct_count
        event: Feature Used
        property: feature
        reason: "used {value} features"
    """)
    sigs = load_signals(path)
    assert [s.name for s in sigs.signals] == ["projects", "features"]
    assert sigs.signals[1].prop == "feature"


def test_unknown_kind(tmp_path):
    path = write(tmp_path, """\
      - name: reports
        kind: counter
        event: Report Run
    """)
    [msg] = problems(path)
    assert msg.startswith(f"{path} line {line_of(path, 'kind: counter')} ")
    assert "unknown kind 'counter'" in msg


def test_a_kind_of_the_other_section(tmp_path):
    path = write(tmp_path, """\
      - name: team_size
        kind: seats
    """)
    [msg] = problems(path)
    assert "team_size" in msg and "seats" in msg
    assert msg.startswith(f"{path} line {line_of(path, 'kind: seats')} ")


def test_missing_required_field_points_at_the_entry(tmp_path):
    path = write(tmp_path, """\
      - name: features
        kind: distinct_count
        event: Feature Used
    """)
    [msg] = problems(path)
    assert msg.startswith(f"{path} line {line_of(path, 'name: features')} ")
    assert "needs property" in msg


def test_unknown_key(tmp_path):
    path = write(tmp_path, """\
      - name: reports
        kind: count
        event: Report Run
        windw_days: 7
    """)
    [msg] = problems(path)
    assert msg.startswith(f"{path} line {line_of(path, 'windw_days')} ")
    assert "windw_days" in msg


def test_a_key_the_kind_does_not_use(tmp_path):
    path = write(tmp_path, """\
      - name: active
        kind: active_days
        event: Report Run
    """)
    [msg] = problems(path)
    assert msg.startswith(f"{path} line {line_of(path, 'event: Report Run')} ")
    assert "does not use event" in msg


def test_duplicate_name_points_at_the_second_declaration(tmp_path):
    path = write(tmp_path, """\
      - name: reports
        kind: count
        event: Report Run
      - name: projects
        kind: count
        event: Project Archived
    """)
    [msg] = problems(path)
    assert "'projects' is declared twice" in msg
    assert msg.startswith(f"{path} line {line_of(path, 'name: projects', nth=2)} ")


def test_bad_reason_template_points_at_the_reason(tmp_path):
    path = write(tmp_path, """\
      - name: reports
        kind: count
        event: Report Run
        threshold: 3
        reason: "ran {valu} reports"
    """)
    [msg] = problems(path)
    assert "not a valid template" in msg
    assert msg.startswith(f"{path} line {line_of(path, 'reason:')} ")


def test_every_problem_is_listed_with_its_own_line(tmp_path):
    path = write(tmp_path, """\
      - name: Reports
        kind: count
        event: Report Run
      - name: sessions
        kind: session_length
        event: Session Ended
        property: secs
        window_days: 0
      - name: trend
        kind: trend
        period_days: 7
        whatever: 1
    """)
    msgs = problems(path)
    assert len(msgs) == 3, msgs
    assert msgs[0].startswith(f"{path} line {line_of(path, 'name: Reports')} ") and "lower_snake_case" in msgs[0]
    assert msgs[1].startswith(f"{path} line {line_of(path, 'window_days: 0')} ")
    assert msgs[2].startswith(f"{path} line {line_of(path, 'whatever: 1')} ")


def test_not_yaml_and_missing_file(tmp_path):
    path = tmp_path / "signals.yaml"
    path.write_text("version: 1\nsignals:\n  - name: [unclosed\n")
    [msg] = problems(path)
    assert msg.startswith(f"{path} line ") and "not valid YAML" in msg
    with pytest.raises(ConfigError, match="does not exist"):
        load_signals(tmp_path / "nope.yaml")
