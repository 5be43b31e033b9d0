"""Tests of the demo event generator (pql_pipeline.defs.ingest.generator) and `pql generate`."""

from __future__ import annotations

import collections
import csv
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pql_pipeline.cli import main
from pql_pipeline.defs.ingest.generator import (
    DIRTY_KINDS,
    MILESTONE_NAMES,
    MILESTONES,
    OVERSIZED_MIN_BYTES,
    ForeignOutputError,
    GenerationReport,
    GeneratorConfig,
    generate_events,
)

ROOT = Path(__file__).resolve().parents[3]
CONTRACT = ROOT / "data_contracts" / "segment_events.odcs.yaml"
SMALL = GeneratorConfig(n_accounts=40, days=30, seed=7, dirty_fraction=0.02)
JSON_TYPES = {"string": (str,), "integer": (int,), "number": (int, float)}


# --------------------------------------------------------------------------- helpers


@dataclass
class Line:
    file: str  # relative to out_dir
    line_no: int
    raw: bytes
    kind: str | None  # dirty kind, None for clean
    original: str  # original_message_id for duplicates

    @property
    def obj(self) -> dict:
        return json.loads(self.raw.decode("utf-8"))

    @property
    def partition(self) -> str:
        return self.file.split("/")[0].removeprefix("dt=")


@dataclass
class Output:
    out: Path
    report: GenerationReport
    lines: list[Line]

    @property
    def clean(self) -> list[Line]:
        return [ln for ln in self.lines if ln.kind is None]

    def dirty(self, kind: str) -> list[Line]:
        return [ln for ln in self.lines if ln.kind == kind]


def read_output(out: Path, report: GenerationReport) -> Output:
    with open(out / "_ground_truth" / "dirty_lines.csv", newline="", encoding="utf-8") as fh:
        dirty = {(r["file"], int(r["line_no"])): (r["kind"], r["original_message_id"]) for r in csv.DictReader(fh)}
    lines = []
    for f in sorted(out.glob("dt=*/events-*.jsonl")):
        rel = f.relative_to(out).as_posix()
        data = f.read_bytes()
        assert data.endswith(b"\n"), f"{rel} must end with a newline"
        for no, raw in enumerate(data[:-1].split(b"\n"), start=1):
            kind, original = dirty.pop((rel, no), (None, ""))
            lines.append(Line(rel, no, raw, kind, original))
    assert not dirty, f"dirty_lines.csv names lines that do not exist: {list(dirty)[:3]}"
    return Output(out, report, lines)


def ts(value: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, f"timestamp without offset: {value}"
    return parsed


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def tracking_plan() -> dict[str, dict[str, tuple[str, bool]]]:
    doc = yaml.safe_load(CONTRACT.read_text(encoding="utf-8"))
    return {
        o["name"]: {p["name"]: (p.get("logicalType"), bool(p.get("required"))) for p in o.get("properties", [])}
        for o in doc["schema"]
        if o["name"] != "segment_event"
    }


def tree_bytes(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Output:
    out = tmp_path_factory.mktemp("small")
    return read_output(out, generate_events(SMALL, out))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GenerationReport]:
    """The default demo size: 200 accounts, 60 days."""
    out = tmp_path_factory.mktemp("demo")
    return out, generate_events(GeneratorConfig(), out)


# --------------------------------------------------------------------------- layout and counts


def test_layout(small: Output) -> None:
    out, report = small.out, small.report
    days = [(SMALL.start_date + dt.timedelta(days=i)).isoformat() for i in range(SMALL.days)]
    # a partition is written for every day with lines (early days of a launch can be empty)
    assert report.partitions == sorted(report.partitions) and set(report.partitions) <= set(days)
    assert report.partitions[0] == days[0] and len(report.partitions) >= len(days) - 2
    assert sorted(p.name for p in out.glob("dt=*")) == [f"dt={d}" for d in report.partitions]
    for d in report.partitions:
        assert [p.name for p in (out / f"dt={d}").iterdir()] == ["events-0000.jsonl"]
    gt = out / "_ground_truth"
    assert sorted(p.name for p in gt.iterdir()) == ["accounts.csv", "dirty_lines.csv", "manifest.json", "users.csv"]
    users = read_csv(gt / "users.csv")
    required = ["user_id", "account_id", "anonymous_id", "size_segment", "signup_at", "true_conversion_probability",
                "converted", "converted_at", *MILESTONE_NAMES, "projects_created", "teammates_invited",
                "integrations_connected", "active_days", "support_tickets_basics", "short_session_count", "errors"]
    assert set(required) <= set(users[0])
    assert len(users) == report.n_users
    assert sum(int(u["converted"]) for u in users) == report.n_converted_users
    accounts = read_csv(gt / "accounts.csv")
    assert set(["account_id", "name", "size_segment", "employees", "industry", "country", "plan", "converted"]) <= set(
        accounts[0])
    assert len(accounts) == report.n_accounts == SMALL.n_accounts
    for a in accounts:
        emp = int(a["employees"])
        lo, hi = {"solo": (1, 1), "smb": (2, 50), "mid_market": (51, 1000), "enterprise": (1001, 50000)}[
            a["size_segment"]]
        assert lo <= emp <= hi, a
        assert a["plan"] in ("free", "trial")
    manifest = json.loads((gt / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["config"]["seed"] == SMALL.seed
    assert [m["name"] for m in manifest["milestones"]] == list(MILESTONE_NAMES)
    assert all(isinstance(m["coefficient"], float) for m in manifest["milestones"])
    assert manifest["generator_version"]


def test_counts_reconcile(small: Output) -> None:
    report = small.report
    assert set(report.dirty_lines) == set(DIRTY_KINDS)
    assert len(small.lines) == report.lines_written
    assert report.lines_written == report.clean_events + sum(report.dirty_lines.values())
    assert len(small.clean) == report.clean_events
    assert collections.Counter(ln.kind for ln in small.lines if ln.kind) == {
        k: v for k, v in report.dirty_lines.items() if v}
    share = sum(report.dirty_lines.values()) / report.lines_written
    assert SMALL.dirty_fraction * 0.8 <= share <= SMALL.dirty_fraction * 1.2 + 10 / report.lines_written
    manifest = json.loads((small.out / "_ground_truth" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["counts"]["lines_written"] == report.lines_written
    assert manifest["counts"]["dirty_lines"] == report.dirty_lines


def test_no_dirty_lines_when_fraction_is_zero(tmp_path: Path) -> None:
    report = generate_events(GeneratorConfig(n_accounts=10, days=7, dirty_fraction=0.0), tmp_path)
    assert report.lines_written == report.clean_events > 0
    assert sum(report.dirty_lines.values()) == 0
    assert (tmp_path / "_ground_truth" / "dirty_lines.csv").read_text().strip() == \
        "file,line_no,kind,original_message_id"


# --------------------------------------------------------------------------- clean lines


def test_clean_lines_follow_the_tracking_plan(small: Output) -> None:
    plan = tracking_plan()
    seen_ids: set[str] = set()
    events = collections.Counter()
    for ln in small.clean:
        assert len(ln.raw) <= 32768
        e = ln.obj
        assert isinstance(e, dict)
        mid = e["messageId"]
        assert isinstance(mid, str) and mid not in seen_ids, mid
        seen_ids.add(mid)
        assert e["type"] in ("track", "identify", "group")
        for f in ("timestamp", "sentAt", "receivedAt"):
            ts(e[f])
        assert e["receivedAt"].endswith("Z")
        assert isinstance(e.get("userId", ""), str) and isinstance(e.get("anonymousId", ""), str)
        assert e.get("userId") or e.get("anonymousId")
        ctx = e["context"]
        assert set(ctx) >= {"library", "ip", "userAgent", "locale", "timezone"}
        assert set(ctx["library"]) == {"name", "version"}
        if e["type"] == "track":
            name, props = e["event"], e["properties"]
            assert name in plan, name
            events[name] += 1
            assert isinstance(props, dict)
            for key, value in props.items():
                assert key in plan[name], f"{name}: property {key} is not in the tracking plan"
                expected = JSON_TYPES[plan[name][key][0]]
                assert isinstance(value, expected) and not isinstance(value, bool), (name, key, value)
            for key, (_, required) in plan[name].items():
                assert not required or key in props, f"{name}: required {key} missing"
            if name != "Signed Up":
                assert ctx["groupId"].startswith("acc_")
        elif e["type"] == "identify":
            assert set(e["traits"]) == {"email", "name", "created_at", "role"}
            assert e["userId"] and e["anonymousId"]
            ts(e["traits"]["created_at"])
        else:
            assert e["userId"] and e["groupId"].startswith("acc_")
            traits = e["traits"]
            assert set(traits) == {"name", "employees", "industry", "country", "plan"}
            assert isinstance(traits["employees"], int) and len(traits["country"]) == 2
            assert traits["plan"] in ("free", "trial", "starter", "pro", "enterprise")
    # the product is used: every event of the plan shows up
    assert set(events) == set(plan), set(plan) - set(events)


def test_partitions_are_receivedat_days_in_order(small: Output) -> None:
    by_file: dict[str, list[dt.datetime]] = collections.defaultdict(list)
    for ln in small.lines:
        if ln.kind in ("malformed_json", "non_utf8"):
            continue
        e = ln.obj
        received = ts(e["receivedAt"])
        assert received.astimezone(dt.timezone.utc).date().isoformat() == ln.partition, (ln.file, ln.line_no)
        by_file[ln.file].append(received)
    for f, values in by_file.items():
        assert values == sorted(values), f"{f} is not in receivedAt order"


def test_timestamps_with_offsets_denote_the_right_instant(small: Output) -> None:
    zoneinfo = pytest.importorskip("zoneinfo")
    offsets = collections.Counter()
    started: dict[str, dt.datetime] = {}
    ended: dict[str, tuple[dt.datetime, float]] = {}
    for ln in small.clean:
        e = ln.obj
        t, sent, received = ts(e["timestamp"]), ts(e["sentAt"]), ts(e["receivedAt"])
        offsets[e["timestamp"][-6:] if not e["timestamp"].endswith("Z") else "Z"] += 1
        assert t <= sent <= received, (ln.file, ln.line_no)
        assert received - t <= dt.timedelta(days=2)
        assert (received.astimezone(dt.timezone.utc).date() - t.astimezone(dt.timezone.utc).date()).days <= 1
        if not e["timestamp"].endswith("Z"):
            try:
                tz = zoneinfo.ZoneInfo(e["context"]["timezone"])
            except zoneinfo.ZoneInfoNotFoundError:  # pragma: no cover - machine without tz data
                pytest.skip("no time zone database")
            assert t.utcoffset() == t.astimezone(tz).utcoffset(), e["timestamp"]
        if e.get("event") == "Session Started":
            started[e["properties"]["session_id"]] = t
        elif e.get("event") == "Session Ended":
            ended[e["properties"]["session_id"]] = (t, e["properties"]["duration_seconds"])
    assert offsets["Z"] > 0 and len(offsets) >= 3, offsets  # UTC and several explicit offsets
    assert any(o.startswith("-") for o in offsets) and any(o.startswith("+") for o in offsets)
    # a session's start and end are the same user's clock: their difference is the duration
    assert started.keys() == ended.keys() and len(ended) > 100
    for sid, (end, seconds) in ended.items():
        assert abs((end - started[sid]).total_seconds() - seconds) < 0.01, sid


def test_signup_sequence_and_ground_truth_match_the_events(small: Output) -> None:
    users = {u["user_id"]: u for u in read_csv(small.out / "_ground_truth" / "users.csv")}
    anon_to_user = {u["anonymous_id"]: uid for uid, u in users.items()}
    per_user: dict[str, list[dict]] = collections.defaultdict(list)
    for ln in small.clean:
        e = ln.obj
        uid = e.get("userId") or anon_to_user[e["anonymousId"]]
        per_user[uid].append(e)
    assert set(per_user) == set(users)
    for uid, events in per_user.items():
        u = users[uid]
        events.sort(key=lambda e: ts(e["timestamp"]))
        first, second, third = events[:3]
        assert first.get("event") == "Signed Up" and "userId" not in first
        assert second["type"] == "identify" and third["type"] == "group"
        signup = ts(u["signup_at"])
        assert ts(first["timestamp"]) == signup  # same instant, whatever offset the device used
        track = collections.Counter(e.get("event") for e in events)
        basics = sum(1 for e in events if e.get("event") == "Support Ticket Opened"
                     and e["properties"]["category"] == "basics")
        ended = [e["properties"]["duration_seconds"] for e in events if e.get("event") == "Session Ended"]
        days = {ts(e["timestamp"]).astimezone(dt.timezone.utc).date() for e in events}
        in_14d = sum(1 for e in events if e.get("event") == "Project Created"
                     and ts(e["timestamp"]) < signup + dt.timedelta(days=14))
        assert int(u["projects_created"]) == track["Project Created"]
        assert int(u["projects_in_14d"]) == in_14d
        assert int(u["teammates_invited"]) == track["Teammate Invited"]
        assert int(u["integrations_connected"]) == track["Integration Connected"]
        assert int(u["errors"]) == track["Error Shown"]
        assert int(u["support_tickets_basics"]) == basics
        assert int(u["session_count"]) == len(ended)
        assert int(u["short_session_count"]) == sum(1 for d in ended if d < 30)
        assert int(u["active_days"]) == len(days)
        flags = {
            "projects_3_in_14d": in_14d >= 3,
            "invited_2_teammates": track["Teammate Invited"] >= 2,
            "integration_connected": track["Integration Connected"] >= 1,
            "active_14_days": len(days) >= 14,
            "basics_tickets_3plus": basics >= 3,
            "short_sessions": 2 * sum(1 for d in ended if d < 30) > len(ended),
            "errors_5plus": track["Error Shown"] >= 5,
        }
        assert flags == {m: u[m] == "1" for m in MILESTONE_NAMES}, uid
        subs = [e for e in events if e.get("event") == "Subscription Started"]
        assert len(subs) == int(u["converted"])
        if subs:
            converted_at = ts(u["converted_at"])
            assert ts(subs[0]["timestamp"]) == converted_at
            assert dt.timedelta(days=9) <= converted_at - signup <= dt.timedelta(days=60)
        p = float(u["true_conversion_probability"])
        assert 0 < p < 1
    accounts = read_csv(small.out / "_ground_truth" / "accounts.csv")
    converted_accounts = {u["account_id"] for u in users.values() if u["converted"] == "1"}
    assert {a["account_id"] for a in accounts if a["converted"] == "1"} == converted_accounts


# --------------------------------------------------------------------------- dirty lines


def test_every_dirty_kind_is_present_and_broken_as_stated(small: Output) -> None:
    plan = tracking_plan()
    clean_ids = {ln.obj["messageId"] for ln in small.clean}
    for kind in DIRTY_KINDS:
        assert small.dirty(kind), f"no {kind} line"
    fresh_ids = []
    for ln in small.lines:
        if ln.kind is None or ln.kind == "duplicate":
            continue
        if ln.kind == "non_utf8":
            with pytest.raises(UnicodeDecodeError):
                ln.raw.decode("utf-8")
            e = json.loads(ln.raw.decode("utf-8", errors="replace"))  # otherwise a plausible event
            fresh_ids.append(e["messageId"])
            continue
        text = ln.raw.decode("utf-8")
        if ln.kind == "malformed_json":
            with pytest.raises(json.JSONDecodeError):
                json.loads(text)
            continue
        e = json.loads(text)
        assert isinstance(e, dict)
        if "messageId" in e:
            fresh_ids.append(e["messageId"])
        if ln.kind == "missing_message_id":
            assert "messageId" not in e
        elif ln.kind == "missing_identity":
            assert "userId" not in e and "anonymousId" not in e
        elif ln.kind == "wrong_type":
            props = e.get("properties")
            wrong = [
                isinstance(props, str),
                isinstance(e.get("userId"), dict),
                isinstance(e["timestamp"], (int, float)),
                isinstance(props, dict) and e.get("event") in plan and any(
                    isinstance(props.get(k), str) for k, (t, _) in plan[e["event"]].items()
                    if t in ("integer", "number")),
            ]
            assert sum(wrong) == 1, e
        elif ln.kind == "unparsable_timestamp":
            assert isinstance(e["timestamp"], str)
            with pytest.raises(ValueError):
                dt.datetime.fromisoformat(e["timestamp"])
        elif ln.kind == "future_timestamp":
            assert ts(e["timestamp"]) - ts(e["receivedAt"]) > dt.timedelta(days=300)
        elif ln.kind == "unknown_event":
            assert e["type"] == "track" and e["event"] not in plan
        elif ln.kind == "oversized":
            assert len(ln.raw) > OVERSIZED_MIN_BYTES
            assert e["event"] in plan and set(e["properties"]) <= set(plan[e["event"]])
            ts(e["timestamp"])
    assert len(fresh_ids) == len(set(fresh_ids))
    assert not set(fresh_ids) & clean_ids, "a dirty line re-uses the messageId of a clean event"


def test_duplicates_resend_an_earlier_clean_line(small: Output) -> None:
    clean = {}
    order = {}
    for i, ln in enumerate(small.lines):
        if ln.kind is None:
            clean[ln.obj["messageId"]] = (ln, i)
        order[(ln.file, ln.line_no)] = i
    same_file = next_file = 0
    for ln in small.dirty("duplicate"):
        e = ln.obj
        assert e["messageId"] == ln.original
        original, pos = clean[ln.original]
        assert pos < order[(ln.file, ln.line_no)]
        o = original.obj
        assert ts(e["receivedAt"]) >= ts(o["receivedAt"])
        assert {k: v for k, v in e.items() if k != "receivedAt"} == {k: v for k, v in o.items() if k != "receivedAt"}
        if ln.file == original.file:
            same_file += 1
        else:
            next_file += 1
            assert dt.date.fromisoformat(ln.partition) - dt.date.fromisoformat(original.partition) == dt.timedelta(1)
    assert same_file and next_file


# --------------------------------------------------------------------------- determinism and re-runs


def test_deterministic(tmp_path: Path) -> None:
    cfg = GeneratorConfig(n_accounts=25, days=20, seed=11)
    generate_events(cfg, tmp_path / "a")
    generate_events(cfg, tmp_path / "b")
    a, b = tree_bytes(tmp_path / "a"), tree_bytes(tmp_path / "b")
    assert a.keys() == b.keys() and len(a) > 20
    for name in a:
        assert a[name] == b[name], name
    generate_events(GeneratorConfig(n_accounts=25, days=20, seed=12), tmp_path / "c")
    assert tree_bytes(tmp_path / "c")["dt=2026-01-05/events-0000.jsonl"] != a["dt=2026-01-05/events-0000.jsonl"]


def test_rerun_replaces_previous_output(tmp_path: Path) -> None:
    out = tmp_path / "events"
    generate_events(GeneratorConfig(n_accounts=10, days=10, seed=3, files_per_day=2), out)
    (out / "dt=2099-01-01").mkdir()
    (out / "dt=2099-01-01" / "events-0000.jsonl").write_text("{}\n")
    (out / "_ground_truth" / "stale.txt").write_text("old")
    (out / "README.txt").write_text("not generator output")
    cfg = GeneratorConfig(n_accounts=10, days=5, seed=3)
    report = generate_events(cfg, out)
    generate_events(cfg, tmp_path / "fresh")
    got = tree_bytes(out)
    assert got.pop("README.txt") == b"not generator output"
    assert got == tree_bytes(tmp_path / "fresh")
    assert sorted(p.name for p in out.glob("dt=*")) == [f"dt={d}" for d in report.partitions]


def test_refuses_to_delete_partitions_it_did_not_write(tmp_path: Path) -> None:
    export = tmp_path / "dt=2026-01-01" / "part-0001.jsonl"
    export.parent.mkdir()
    export.write_text('{"messageId":"real"}\n')
    with pytest.raises(ForeignOutputError):
        generate_events(GeneratorConfig(n_accounts=2, days=2), tmp_path)
    result = CliRunner().invoke(main, ["generate", "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code == 1 and "did not write" in result.output
    assert export.read_text() == '{"messageId":"real"}\n'


def test_files_per_day_split_round_robin(tmp_path: Path) -> None:
    cfg = GeneratorConfig(n_accounts=30, days=4, seed=5, files_per_day=3, dirty_fraction=0.05)
    report = generate_events(cfg, tmp_path)
    output = read_output(tmp_path, report)  # checks dirty_lines.csv against the files
    assert len(output.lines) == report.lines_written
    for d in report.partitions:
        files = sorted((tmp_path / f"dt={d}").iterdir())
        assert [f.name for f in files] == ["events-0000.jsonl", "events-0001.jsonl", "events-0002.jsonl"]
        sizes = [len(f.read_bytes().splitlines()) for f in files]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_progress_bar_stays_out_of_files_and_logs(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Output captured to a file (a log, CI) gets no bar and nothing on stdout; on a terminal
    the bar goes to stderr (test_cli runs `pql generate` under a pseudo-terminal)."""
    generate_events(GeneratorConfig(n_accounts=3, days=3), tmp_path, progress=True)
    captured = capfd.readouterr()
    assert "generating events" not in captured.err and captured.out == ""


def test_config_validation() -> None:
    for bad in (dict(dirty_fraction=0.7), dict(n_accounts=0), dict(days=0), dict(files_per_day=0),
                dict(users_per_account_scale=0.0), dict(seed=-1)):
        with pytest.raises(ValueError):
            GeneratorConfig(**bad)


# --------------------------------------------------------------------------- planted conversion truth


def test_conversion_rates_and_planted_milestones(demo: tuple[Path, GenerationReport]) -> None:
    out, report = demo
    users = read_csv(out / "_ground_truth" / "users.csv")
    n = len(users)
    assert n == report.n_users > 500
    rate = sum(u["converted"] == "1" for u in users) / n
    assert 0.05 <= rate <= 0.15, rate

    def conv(rows: list[dict[str, str]]) -> float:
        return sum(r["converted"] == "1" for r in rows) / len(rows)

    lifts = {}
    for m in MILESTONES:
        with_m = [u for u in users if u[m.name] == "1"]
        without = [u for u in users if u[m.name] == "0"]
        assert len(with_m) >= 20, m.name
        lifts[m.name] = conv(with_m) / conv(without)
        if m.coefficient > 0:
            assert lifts[m.name] > 1.5, (m.name, lifts[m.name])
        else:
            assert lifts[m.name] < 1.0, (m.name, lifts[m.name])
    positive = [m.name for m in MILESTONES if m.coefficient > 0]
    # the lifts rank the activation milestones as planted (strongest effect first)
    planted = sorted(positive, key=lambda name: -next(m.coefficient for m in MILESTONES if m.name == name))
    assert sorted(positive, key=lambda name: -lifts[name]) == planted, lifts
    any_m = [u for u in users if any(u[p] == "1" for p in positive)]
    none = [u for u in users if all(u[p] == "0" for p in positive)]
    assert conv(any_m) >= 3 * conv(none)
    # observed conversion is in line with the planted probabilities (censoring lowers it a little)
    expected = sum(float(u["true_conversion_probability"]) for u in users) / n
    assert 0.6 * expected <= rate <= 1.3 * expected


# --------------------------------------------------------------------------- CLI


def test_cli_generate(tmp_path: Path) -> None:
    out = tmp_path / "events"
    result = CliRunner().invoke(main, ["generate", "--out", str(out), "--accounts", "8", "--days", "5",
                                       "--start-date", "2026-03-01", "--seed", "1", "--dirty-fraction", "0.02",
                                       "--users-scale", "1.5", "--files-per-day", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "Wrote 5 partitions (2026-03-01 .. 2026-03-05)" in result.output
    assert "lines:" in result.output and "converted users:" in result.output
    assert (out / "dt=2026-03-01" / "events-0001.jsonl").exists()
    manifest = json.loads((out / "_ground_truth" / "manifest.json").read_text())
    assert manifest["config"]["users_per_account_scale"] == 1.5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dirty-fraction", "0.9"], "outside [0, 0.5]"),
        (["--start-date", "2026-02-30"], "YYYY-MM-DD"),
        (["--accounts", "0"], "must be at least 1"),
        (["--days", "-5"], "must be at least 1"),
        (["--users-scale", "-1"], "positive number"),
        (["--seed", "-1"], "non-negative"),
    ],
)
def test_cli_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["generate", "--out", str(tmp_path / "x"), "--no-progress", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "x").exists()
