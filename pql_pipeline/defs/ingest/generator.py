"""Demo event source: a seeded generator of realistic Segment-spec product events.

The generator simulates a B2B SaaS product ("Flowboard") used by a population of
accounts and their users, and writes the events the product's trackers would send,
the way a Segment S3 / warehouse export lays them out::

    out_dir/dt=YYYY-MM-DD/events-0000.jsonl   one JSON object per line, partitioned by
                                              the UTC date of ``receivedAt``; lines of a
                                              file are in ``receivedAt`` order
    out_dir/_ground_truth/users.csv           who did what, who converted, with what odds
    out_dir/_ground_truth/accounts.csv
    out_dir/_ground_truth/dirty_lines.csv     every deliberately broken / duplicate line
    out_dir/_ground_truth/manifest.json       config, counts, planted milestone effects

How it works (everything is drawn from RNGs seeded by ``GeneratorConfig.seed``; the
wall clock is never used, so a config always gives byte-identical files):

1. *Plan* (day granularity). Accounts (size, industry, country, plan) sign up over the
   period; the first user creates the account, teammates join later by invitation.
   Each user gets latent traits (activity, builder / collaborator / confusion / error
   propensities, share of short sessions, churn) and from them a concrete behaviour:
   active days, sessions per day, and dated key events (onboarding steps, projects,
   invites, integrations, support tickets, errors). The planted milestones and negative
   signals are evaluated on that behaviour, ``true_conversion_probability`` =
   sigmoid(intercept + milestone effects + fit effects) and conversion is drawn. A
   converter subscribes on an active day after its last positive milestone, 10-45
   days after signup and within the period (otherwise the conversion is censored:
   ``converted = 0, conversion_censored = 1``).
2. *Emit* (streamed day by day, bounded memory). Sessions get times in the user's
   local working hours, filler events (Feature Used, Report Run), key events inside
   the sessions; each event gets ``sentAt`` / ``receivedAt`` latencies (late mobile
   flushes up to ~15 h). Lines are bucketed by receivedAt day, dirty lines are mixed
   in at ``dirty_fraction`` of all lines, then each day is sorted and written.

Dirty lines (kinds in ``DIRTY_KINDS``) are always *extra* lines: the ground truth is
exactly what the clean lines say, so after quarantine and de-duplication the events
reproduce ``users.csv``. Every non-duplicate dirty line carries a fresh messageId (if
it has one at all).

This module is pure Python + numpy (no Dagster), so it can be used from the CLI, tests
and benchmarks.
"""

from __future__ import annotations

import bisect
import csv
import datetime as dt
import itertools
import json
import math
import operator
import random
import shutil
import sys
import time
import unicodedata
from array import array
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

GENERATOR_VERSION = "pql-demo-generator/1.0.0"
PRODUCT_NAME = "Flowboard"

DIRTY_KINDS: tuple[str, ...] = (
    "duplicate",
    "missing_message_id",
    "missing_identity",
    "wrong_type",
    "unparsable_timestamp",
    "future_timestamp",
    "unknown_event",
    "malformed_json",
    "oversized",
    "non_utf8",
)
# relative frequency of each kind among the dirty lines
_DIRTY_WEIGHTS = {
    "duplicate": 0.34,
    "missing_message_id": 0.08,
    "missing_identity": 0.08,
    "wrong_type": 0.12,
    "unparsable_timestamp": 0.08,
    "future_timestamp": 0.08,
    "unknown_event": 0.10,
    "malformed_json": 0.08,
    "oversized": 0.002,
    "non_utf8": 0.04,
}
OVERSIZED_MIN_BYTES = 40 * 1024
UNPARSABLE_TIMESTAMPS = (
    "yesterday",
    "2026-13-45T99:00:00Z",
    "2026-02-30T25:61:00Z",
    "Invalid Date",
    "{{timestamp}}",
    "not-a-timestamp",
    "NaN",
)
UNKNOWN_EVENTS = ("Projet Created", "test_event", "project_created", "Feature Use", "Report Runn", "debug_ping")
# U+E000.. (private use) never occur in clean lines; in a non_utf8 line each one is
# replaced by a broken byte sequence after encoding
_NON_UTF8_MARKERS = {"\ue000": b"\xff\xfe", "\ue001": b"\xe9", "\ue002": b"\xc3\x28"}

# --------------------------------------------------------------------------- planted truth


@dataclass(frozen=True)
class Milestone:
    name: str
    kind: str  # "activation" (raises conversion odds) | "negative" (lowers them)
    coefficient: float  # log-odds effect in the true conversion model
    definition: str
    rule: dict


MILESTONES: tuple[Milestone, ...] = (
    Milestone("invited_2_teammates", "activation", 3.6,
              "sent >= 2 Teammate Invited (any time in the period)",
              {"event": "Teammate Invited", "min_count": 2}),
    Milestone("integration_connected", "activation", 2.7,
              "sent >= 1 Integration Connected",
              {"event": "Integration Connected", "min_count": 1}),
    Milestone("projects_3_in_14d", "activation", 1.8,
              "sent >= 3 Project Created within 14 days (336 h) of signup; no project is ever "
              "created on day 14 after signup, so counting by UTC dates (days 0-13) gives the same",
              {"event": "Project Created", "min_count": 3, "within_days_of_signup": 14}),
    Milestone("active_14_days", "activation", 0.9,
              "events on >= 14 distinct UTC dates (of timestamp)",
              {"min_distinct_active_days": 14}),
    Milestone("basics_tickets_3plus", "negative", -2.0,
              "sent >= 3 Support Ticket Opened with category 'basics'",
              {"event": "Support Ticket Opened", "where": {"category": "basics"}, "min_count": 3}),
    Milestone("short_sessions", "negative", -1.4,
              "more than half of the user's sessions are short: Session Ended.duration_seconds < 30",
              {"event": "Session Ended", "short_below_seconds": 30, "min_share_exclusive": 0.5}),
    Milestone("errors_5plus", "negative", -1.0,
              "sent >= 5 Error Shown",
              {"event": "Error Shown", "min_count": 5}),
)
MILESTONE_NAMES = tuple(m.name for m in MILESTONES)
# per-user behaviour counts written to users.csv (over the whole period, clean lines only)
COUNT_COLUMNS = (
    "projects_created", "projects_in_14d", "teammates_invited", "integrations_connected", "active_days",
    "support_tickets_basics", "support_tickets", "session_count", "short_session_count", "errors",
    "onboarding_steps",
)
INTERCEPT = -5.1
SIZE_SEGMENTS = ("solo", "smb", "mid_market", "enterprise")
SIZE_SHARES = (0.35, 0.40, 0.18, 0.07)
SIZE_EFFECTS = {"solo": -0.5, "smb": 0.0, "mid_market": 0.35, "enterprise": 0.2}
INDUSTRY_EFFECTS = {
    "software": 0.45,
    "marketing_agency": 0.3,
    "ecommerce": 0.2,
    "media": 0.0,
    "finance": 0.0,
    "healthcare": -0.2,
    "manufacturing": -0.3,
    "education": -0.4,
    "nonprofit": -0.5,
}
_INDUSTRY_WEIGHTS = (0.22, 0.12, 0.14, 0.08, 0.1, 0.08, 0.09, 0.1, 0.07)
# users per account before users_per_account_scale: (low, high) inclusive
_USERS_PER_SIZE = {"solo": (1, 1), "smb": (1, 6), "mid_market": (2, 15), "enterprise": (3, 30)}
_EMPLOYEES = {"solo": (1, 1), "smb": (2, 50), "mid_market": (51, 1000), "enterprise": (1001, 50000)}
PAID_PLANS = {"starter": 12.0, "pro": 29.0, "enterprise": 59.0}  # list price per seat and month

# --------------------------------------------------------------------------- world data

# country -> (weight, locale, [timezones], currency, company suffix, tld)
_COUNTRIES = {
    "US": (0.33, "en-US", ["America/New_York", "America/Chicago", "America/Los_Angeles"], "USD", "Inc.", "com"),
    "GB": (0.10, "en-GB", ["Europe/London"], "GBP", "Ltd", "co.uk"),
    "DE": (0.10, "de-DE", ["Europe/Berlin"], "EUR", "GmbH", "de"),
    "FR": (0.06, "fr-FR", ["Europe/Paris"], "EUR", "SAS", "fr"),
    "NL": (0.04, "nl-NL", ["Europe/Amsterdam"], "EUR", "B.V.", "nl"),
    "CA": (0.05, "en-CA", ["America/Toronto"], "CAD", "Inc.", "ca"),
    "IN": (0.08, "en-IN", ["Asia/Kolkata"], "INR", "Pvt Ltd", "in"),
    "BR": (0.05, "pt-BR", ["America/Sao_Paulo"], "BRL", "Ltda.", "com.br"),
    "AU": (0.05, "en-AU", ["Australia/Sydney"], "AUD", "Pty Ltd", "com.au"),
    "ES": (0.04, "es-ES", ["Europe/Madrid"], "EUR", "S.L.", "es"),
    "SE": (0.04, "sv-SE", ["Europe/Stockholm"], "SEK", "AB", "se"),
    "JP": (0.06, "ja-JP", ["Asia/Tokyo"], "JPY", "KK", "jp"),
}
# timezone -> (standard UTC offset in minutes, DST rule)
_TIMEZONES = {
    "America/New_York": (-300, "us"),
    "America/Chicago": (-360, "us"),
    "America/Los_Angeles": (-480, "us"),
    "America/Toronto": (-300, "us"),
    "America/Sao_Paulo": (-180, None),
    "Europe/London": (0, "eu"),
    "Europe/Berlin": (60, "eu"),
    "Europe/Paris": (60, "eu"),
    "Europe/Amsterdam": (60, "eu"),
    "Europe/Madrid": (60, "eu"),
    "Europe/Stockholm": (60, "eu"),
    "Asia/Kolkata": (330, None),
    "Asia/Tokyo": (540, None),
    "Australia/Sydney": (600, "au"),
}
_FIRST_NAMES = (
    "Emma", "Liam", "Olivia", "Noah", "Ava", "Lucas", "Mia", "Leon", "Sofia", "Mateo", "Chloé", "José",
    "Zoë", "Søren", "Anaïs", "Jürgen", "Ingrid", "Björn", "Priya", "Arjun", "Aiko", "Haruto", "Camila",
    "João", "Fatima", "Omar", "Grace", "Ethan", "Hannah", "Jonas", "Léa", "Hugo", "Elena", "Marco", "Sara",
    "David", "Laura", "Daniel", "Nina", "Felix", "Ananya", "Rahul", "Yuki", "Kenji", "Isabella", "Gabriel",
    "Amelia", "Oliver", "Charlotte", "Henry", "Maja", "Lars", "Łukasz", "Siobhán", "Zoltán", "Chiara",
)
_LAST_NAMES = (
    "Smith", "Müller", "García", "Johnson", "Nguyen", "Schmidt", "Rossi", "Dubois", "Martin", "Silva",
    "Santos", "Kowalski", "Novák", "Jensen", "Andersson", "Nilsson", "Patel", "Sharma", "Tanaka", "Suzuki",
    "Brown", "Wilson", "Taylor", "Fischer", "Weber", "Moreau", "Lefèvre", "Fernández", "López", "O'Brien",
    "Murphy", "van Dijk", "de Vries", "Yılmaz", "Kim", "Lee", "Chen", "Wang", "Haddad", "Okafor", "Mensah",
    "Ivanova", "Horváth", "Costa", "Pereira", "Østergaard", "Łukaszewicz", "Schäfer", "Dupont", "Becker",
)
_COMPANY_A = (
    "Blue", "Bright", "North", "Silver", "Rapid", "Green", "Clear", "Bold", "Quiet", "Lucky", "Golden", "Prime",
    "Urban", "Swift", "Happy", "Iron", "Cedar", "Maple", "Summit", "Harbor", "Pixel", "Atlas", "Nova", "Polar",
    "Coral", "Sunny", "Velvet", "Crimson", "Misty", "Nordic", "Alpine", "Copper",
)
_COMPANY_B = (
    "Fox", "Peak", "Labs", "Works", "Studio", "Dynamics", "Systems", "Analytics", "Logistics", "Foods",
    "Health", "Media", "Bank", "Ventures", "Robotics", "Energy", "Garden", "Bakery", "Consulting", "Design",
    "Capital", "Motors", "Textiles", "Learning", "Clinic", "Outfitters", "Brewing", "Software", "Partners",
    "Commerce",
)
_SOLO_SUFFIX = (" Consulting", " Design", " Studio", " Photography", "", " Coaching")
_FREE_MAIL = ("gmail.com", "outlook.com", "yahoo.com", "proton.me", "icloud.com")
_ASCII_FOLD = str.maketrans({"ł": "l", "Ł": "L", "ø": "o", "Ø": "O", "ß": "ss", "æ": "ae", "ı": "i"})

_LIBRARIES = {
    "web": [("analytics.js", "next-1.70.0"), ("analytics.js", "next-1.63.0"), ("analytics.js", "4.1.6")],
    "ios": [("analytics-ios", "4.1.8"), ("analytics-swift", "1.5.11")],
    "android": [("analytics-android", "4.11.3"), ("analytics-kotlin", "1.15.0")],
}
_WEB_AGENTS = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_2) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.2 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
)
_IOS_AGENTS = (f"{PRODUCT_NAME}/3.12.0 (iPhone; iOS 17.2; Scale/3.00)",
               f"{PRODUCT_NAME}/3.11.4 (iPad; iOS 16.7; Scale/2.00)")
_ANDROID_AGENTS = ("Dalvik/2.1.0 (Linux; U; Android 14; Pixel 8 Build/UQ1A.240105.004)",
                   "Dalvik/2.1.0 (Linux; U; Android 13; SM-S911B Build/TP1A.220624.014)")

_FEATURES = (
    ("dashboards", 18), ("filters", 14), ("search", 12), ("comments", 10), ("kanban_view", 9),
    ("export_csv", 6), ("share_link", 6), ("templates", 5), ("timeline_view", 5), ("calendar_view", 4),
    ("automations", 4), ("custom_fields", 3), ("notifications", 3), ("api_keys", 1),
)
_REPORT_TYPES = ("usage", "funnel", "retention", "cohort", "revenue", "custom")
_PROJECT_TEMPLATES = ("blank", "product_roadmap", "sprint_board", "marketing_campaign", "crm_pipeline",
                      "content_calendar", "okr_tracker")
_INTEGRATIONS = ("slack", "github", "google_drive", "jira", "hubspot", "salesforce", "zapier", "figma",
                 "microsoft_teams")
_ONBOARDING_STEPS = ("create_workspace", "set_up_profile", "create_first_project", "invite_team",
                     "connect_integration")
_TICKET_CATEGORIES = ("basics", "billing", "bug", "feature_request")
_TICKET_PRIORITIES = ("low", "normal", "normal", "high", "urgent")
_ERRORS = (
    ("E_TIMEOUT", "The request timed out. Please try again."),
    ("E_SYNC_CONFLICT", "Your changes conflict with a newer version of this board."),
    ("E_RENDER", "Something went wrong while rendering this view."),
    ("E_PERMISSION", "You do not have permission to edit this project."),
    ("E_RATE_LIMIT", "Too many requests. Slow down a little."),
    ("E_UPLOAD_FAILED", "The file could not be uploaded (max 25 MB)."),
)
_INVITE_ROLES = ("member", "member", "member", "editor", "viewer", "admin")
_SIGNUP_METHODS = ("email", "email", "google", "google", "github", "microsoft")

# local hour-of-day activity weights (weekday / weekend)
_HOURS_WD = (0.2, 0.1, 0.05, 0.05, 0.05, 0.1, 0.3, 0.8, 1.6, 2.3, 2.4, 2.2, 1.6, 2.0, 2.3, 2.2, 1.9, 1.4,
             1.0, 0.9, 0.8, 0.7, 0.5, 0.3)
_HOURS_WE = (0.3, 0.2, 0.1, 0.05, 0.05, 0.05, 0.1, 0.3, 0.6, 1.0, 1.3, 1.4, 1.3, 1.3, 1.3, 1.2, 1.1, 1.0,
             1.0, 1.0, 1.0, 0.9, 0.7, 0.5)
WEEKEND_FACTOR = 0.4

# event kinds planned per user-day, in their in-day order
K_SIGNUP, K_ONBOARD, K_PROJECT, K_INVITE, K_INTEGRATION, K_TICKET, K_ERROR, K_PLAN, K_SUBSCRIBE = range(9)
_PLAN_CODES = ("free", "trial", "starter", "pro", "enterprise")

DAY_MS = 86_400_000
_first = operator.itemgetter(0)
_WRITE_BATCH = 20_000  # lines joined and encoded at a time
_EPOCH = dt.date(1970, 1, 1)

# --------------------------------------------------------------------------- public API


@dataclass(frozen=True)
class GeneratorConfig:
    n_accounts: int = 200
    days: int = 60
    start_date: dt.date = dt.date(2026, 1, 1)  # first partition day (UTC)
    seed: int = 42
    dirty_fraction: float = 0.01  # fraction of emitted lines that are dirty (all kinds together)
    users_per_account_scale: float = 1.0  # multiplies the per-size user counts (for big benchmarks)
    files_per_day: int = 1  # split each day's lines round-robin into this many files

    def __post_init__(self) -> None:
        problems = config_problems(self)
        if problems:
            raise ValueError("; ".join(problems))


def config_problems(cfg: GeneratorConfig) -> list[str]:
    """Sentences saying what is wrong with a config (empty if it is fine)."""
    out = []
    if not isinstance(cfg.start_date, dt.date) or isinstance(cfg.start_date, dt.datetime):
        out.append("start_date must be a datetime.date")
    if cfg.n_accounts < 1:
        out.append("n_accounts must be at least 1")
    if cfg.days < 1:
        out.append("days must be at least 1")
    if cfg.seed < 0:
        out.append("seed must be a non-negative integer")
    if not (0.0 <= cfg.dirty_fraction <= 0.5):
        out.append("dirty_fraction must be between 0 and 0.5")
    if not (cfg.users_per_account_scale > 0) or math.isinf(cfg.users_per_account_scale):
        out.append("users_per_account_scale must be a positive number")
    if cfg.files_per_day < 1:
        out.append("files_per_day must be at least 1")
    return out


@dataclass
class GenerationReport:
    out_dir: Path
    partitions: list[str]  # "YYYY-MM-DD" days written
    lines_written: int  # total physical lines across all event files
    clean_events: int  # lines that are valid, non-duplicate events
    dirty_lines: dict[str, int]  # kind -> count (every kind key present)
    n_accounts: int
    n_users: int
    n_converted_users: int
    seconds: float

    @property
    def conversion_rate(self) -> float:
        return self.n_converted_users / self.n_users if self.n_users else 0.0


def generate_events(config: GeneratorConfig, out_dir: Path, progress: bool = False) -> GenerationReport:
    """Write a seeded, realistic Segment event export plus its ground truth into ``out_dir``.

    Previous generator output in ``out_dir`` (``dt=*`` folders and ``_ground_truth``) is
    deleted first; anything else in the folder is left alone.
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    _clean_output(out_dir)
    plan = _Planner(config).plan()
    emitter = _Emitter(config, plan, out_dir)
    emitter.run(progress)
    _write_ground_truth(config, plan, emitter, out_dir)
    return GenerationReport(
        out_dir=out_dir,
        partitions=emitter.partitions,
        lines_written=emitter.lines_written,
        clean_events=emitter.clean_written,
        dirty_lines=dict(emitter.dirty_counts),
        n_accounts=len(plan.accounts),
        n_users=len(plan.users),
        n_converted_users=sum(1 for u in plan.users if u.converted),
        seconds=time.perf_counter() - t_start,
    )


class ForeignOutputError(FileExistsError):
    """``out_dir`` holds ``dt=*`` partitions that the generator did not write."""


def _clean_output(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir} exists and is not a directory; choose a folder for the events")
    out_dir.mkdir(parents=True, exist_ok=True)
    gt = out_dir / "_ground_truth"
    partitions = sorted(out_dir.glob("dt=*"))
    if partitions and not gt.exists():
        # every generator run writes _ground_truth first: these partitions are someone's real data
        raise ForeignOutputError(
            f"{out_dir} holds dt=* partitions without a _ground_truth folder, so the generator did not write "
            "them; choose another output folder (or delete those partitions yourself)")
    for p in partitions:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    if gt.is_dir() and not gt.is_symlink():
        shutil.rmtree(gt)
    elif gt.exists() or gt.is_symlink():
        gt.unlink()


# --------------------------------------------------------------------------- time helpers


class _DateStrings(dict):
    """epoch day -> 'YYYY-MM-DD' (memoised)."""

    def __missing__(self, day: int) -> str:
        s = (_EPOCH + dt.timedelta(days=day)).isoformat()
        self[day] = s
        return s


_HMS: list[str] = []
_MS3 = [f"{i:03d}" for i in range(1000)]


def _hms() -> list[str]:
    if not _HMS:
        _HMS.extend(f"{h:02d}:{m:02d}:{s:02d}" for h in range(24) for m in range(60) for s in range(60))
    return _HMS


def _fmt_offset(minutes: int) -> str:
    sign = "+" if minutes >= 0 else "-"
    m = abs(minutes)
    return f"{sign}{m // 60:02d}:{m % 60:02d}"


def _nth_sunday(year: int, month: int, n: int) -> dt.date:
    d = dt.date(year, month, 1)
    d += dt.timedelta(days=(6 - d.weekday()) % 7)
    return d + dt.timedelta(weeks=n - 1)


def _last_sunday(year: int, month: int) -> dt.date:
    nxt = dt.date(year + (month == 12), month % 12 + 1, 1)
    d = nxt - dt.timedelta(days=1)
    return d - dt.timedelta(days=(d.weekday() + 1) % 7)


def utc_offset_minutes(tz: str, day: dt.date) -> int:
    """UTC offset of ``tz`` on ``day`` (day granularity; built-in rules, no tz database)."""
    std, rule = _TIMEZONES[tz]
    y = day.year
    if rule == "eu":
        dst = _last_sunday(y, 3) <= day < _last_sunday(y, 10)
    elif rule == "us":
        dst = _nth_sunday(y, 3, 2) <= day < _nth_sunday(y, 11, 1)
    elif rule == "au":
        dst = day >= _nth_sunday(y, 10, 1) or day < _nth_sunday(y, 4, 1)
    else:
        dst = False
    return std + (60 if dst else 0)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _ascii_slug(s: str, sep: str = "") -> str:
    s = unicodedata.normalize("NFKD", s.translate(_ASCII_FOLD)).encode("ascii", "ignore").decode()
    parts = ["".join(ch for ch in w if ch.isalnum()) for w in s.lower().split()]
    return sep.join(p for p in parts if p)


def _uuid4(bits: int) -> str:
    h = "%032x" % ((bits & _UUID_MASK) | _UUID_SET)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_UUID_MASK = ((1 << 128) - 1) ^ ((0xF << 76) | (0x3 << 62))
_UUID_SET = (0x4 << 76) | (0x2 << 62)


def _uuid_stream(seed: int, day: int, block: int = 2048):
    """Endless deterministic stream of random (version 4) UUID strings, made in numpy blocks."""
    gen = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(5, day)))
    dash = ord("-")
    while True:
        block = min(block * 2, 65_536)
        raw = np.frombuffer(gen.bytes(16 * block), dtype=np.uint8).reshape(block, 16).copy()
        raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
        raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
        hexs = np.frombuffer(raw.tobytes().hex().encode("ascii"), dtype=np.uint8).reshape(block, 32)
        out = np.full((block, 36), dash, dtype=np.uint8)
        out[:, 0:8], out[:, 9:13], out[:, 14:18] = hexs[:, 0:8], hexs[:, 8:12], hexs[:, 12:16]
        out[:, 19:23], out[:, 24:36] = hexs[:, 16:20], hexs[:, 20:32]
        text = out.tobytes().decode("ascii")
        yield from [text[i : i + 36] for i in range(0, 36 * block, 36)]

# --------------------------------------------------------------------------- planning


class _Account:
    __slots__ = (
        "idx", "account_id", "name", "size", "employees", "industry", "country", "plan", "signup_day",
        "n_target", "domain", "currency", "members", "paid_plan", "timeline", "converted", "person",
        "first_conversion_day", "_traits",
    )

    def __init__(self) -> None:
        self.members: list[_User] = []
        self.timeline: list[tuple[int, str]] = []  # (day, plan) changes after signup, sorted
        self.converted = False
        self.first_conversion_day: int | None = None
        self._traits: dict[str, str] = {}

    def plan_at(self, day: int) -> str:
        """Plan in force at the start of ``day``."""
        plan = self.plan
        for d, p in self.timeline:
            if d < day:
                plan = p
        return plan

    @property
    def final_plan(self) -> str:
        return self.timeline[-1][1] if self.timeline else self.plan

    def traits_json(self, plan: str) -> str:
        s = self._traits.get(plan)
        if s is None:
            s = json.dumps({"name": self.name, "employees": self.employees, "industry": self.industry,
                            "country": self.country, "plan": plan}, separators=(",", ":"), ensure_ascii=False)
            self._traits[plan] = s
        return s


class _User:
    __slots__ = (
        "idx", "account", "user_id", "anonymous_id", "first", "last", "email", "role", "is_creator",
        "signup_day", "activity", "fill_mean", "platform", "tz", "locale", "p_late", "batch_ms",
        "days", "n_sess", "n_short", "projects", "invites", "integrations", "tickets", "errors",
        "onboarding", "plan_events", "conversion_day", "first_in_account", "converted", "censored",
        "u_draw", "probability", "flags", "counts", "signup_ms", "converted_at_ms",
        "ident", "anon_ident", "group_ident", "ctx_track", "ctx_plain",
    )

    def __init__(self) -> None:
        self.projects: list[int] = []  # days
        self.invites: list[tuple[int, int]] = []  # (day, invitee user idx or -1)
        self.integrations: list[tuple[int, int]] = []  # (day, integration index)
        self.tickets: list[tuple[int, int]] = []  # (day, category index)
        self.errors: list[int] = []
        self.onboarding: list[tuple[int, int]] = []  # (day, step 1..5)
        self.plan_events: list[tuple[int, int]] = []  # (day, plan code): group call with new plan
        self.conversion_day: int | None = None
        self.first_in_account = False
        self.converted = False
        self.censored = False
        self.signup_ms: int | None = None
        self.converted_at_ms: int | None = None


@dataclass
class _Plan:
    accounts: list[_Account]
    users: list[_User]
    # user-days sorted by (day, user): day, user, sessions, short sessions
    ud_day: np.ndarray
    ud_user: np.ndarray
    ud_sess: np.ndarray
    ud_short: np.ndarray
    # key events sorted by (day, user, kind, param)
    k_day: np.ndarray
    k_user: np.ndarray
    k_kind: np.ndarray
    k_param: np.ndarray
    weekday_factor: np.ndarray = field(repr=False)


def _poisson(rnd, lam: float) -> int:
    """Poisson draw from uniforms (Knuth; normal approximation for large means)."""
    if lam <= 0:
        return 0
    if lam > 30:
        u1, u2 = 1.0 - rnd(), rnd()
        z = math.sqrt(-2.0 * math.log(u1)) * math.cos(2 * math.pi * u2)
        return max(0, int(round(lam + z * math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, rnd()
    while p > limit:
        k += 1
        p *= rnd()
    return k


def _geometric(rnd, p: float) -> int:
    """Number of trials up to and including the first success (>= 1)."""
    return 1 + int(math.log(1.0 - rnd()) / math.log(1.0 - p))


def _weighted(rnd, cum: list[float]) -> int:
    return bisect.bisect(cum, rnd() * cum[-1])


def _cum(weights) -> list[float]:
    return list(itertools.accumulate(weights))


_SIZE_CUM = _cum(SIZE_SHARES)
_INDUSTRY_CUM = _cum(_INDUSTRY_WEIGHTS)
_COUNTRY_CUM = _cum(c[0] for c in _COUNTRIES.values())


class _Planner:
    def __init__(self, cfg: GeneratorConfig) -> None:
        self.cfg = cfg
        seed = int(np.random.SeedSequence(cfg.seed, spawn_key=(1,)).generate_state(1, np.uint64)[0])
        self.R = random.Random(seed)
        self.rnd = self.R.random
        self.last_day = cfg.days - 1
        wd0 = cfg.start_date.weekday()
        self.wdf = [WEEKEND_FACTOR if (wd0 + d) % 7 >= 5 else 1.0 for d in range(cfg.days)]
        self.users: list[_User] = []
        self._ids: set[str] = set()
        # flat plan: user-days (day, user, sessions, short sessions), key events (day, user, kind, param)
        self._ud = [array("q") for _ in range(4)]
        self._kk = [array("q") for _ in range(4)]

    def _fresh_id(self, prefix: str, bits: int) -> str:
        while True:
            s = f"{prefix}{self.R.getrandbits(bits):0{bits // 4}x}"
            if s not in self._ids:
                self._ids.add(s)
                return s

    def plan(self) -> _Plan:
        accounts = [self._account(i) for i in range(self.cfg.n_accounts)]
        for acc in accounts:
            self._populate(acc)
        return self._assemble(accounts)

    def _account(self, i: int) -> _Account:
        R, rnd, cfg = self.R, self.rnd, self.cfg
        a = _Account()
        a.idx = i
        a.account_id = self._fresh_id("acc_", 40)
        a.size = SIZE_SEGMENTS[_weighted(rnd, _SIZE_CUM)]
        lo, hi = _EMPLOYEES[a.size]
        emp = lo if lo == hi else int(round(math.exp(math.log(lo) + rnd() * (math.log(hi + 1) - math.log(lo)))))
        a.employees = min(max(emp, lo), hi)
        a.industry = list(INDUSTRY_EFFECTS)[_weighted(rnd, _INDUSTRY_CUM)]
        a.country = list(_COUNTRIES)[_weighted(rnd, _COUNTRY_CUM)]
        _, _, _, a.currency, suffix, tld = _COUNTRIES[a.country]
        a.plan = "trial" if rnd() < 0.28 else "free"
        if a.size == "solo":
            a.person = (R.choice(_FIRST_NAMES), R.choice(_LAST_NAMES))  # the one user: a freelancer
            a.name = f"{a.person[0]} {a.person[1]}{R.choice(_SOLO_SUFFIX)}"
            a.domain = f"{_ascii_slug(a.name)}.{tld}"
        else:
            stem = f"{R.choice(_COMPANY_A)} {R.choice(_COMPANY_B)}"
            a.name = f"{stem} {suffix}"
            a.person = None
            a.domain = f"{_ascii_slug(stem)}.{tld}"
        # signup day: most within the first 2/3 of the period, fewer on weekends
        if i == 0:
            a.signup_day = 0
        else:
            two_thirds = max(1, int(round(cfg.days * 2 / 3)))
            while True:
                if rnd() < 0.85 or two_thirds >= cfg.days:
                    d = int(rnd() * two_thirds)
                else:
                    d = two_thirds + int(rnd() * (cfg.days - two_thirds))
                if self.wdf[d] == 1.0 or rnd() < WEEKEND_FACTOR:
                    break
            a.signup_day = d
        lo, hi = _USERS_PER_SIZE[a.size]
        base_n = lo + int(rnd() * (hi - lo + 1))
        a.n_target = max(1, int(round(base_n * cfg.users_per_account_scale)))
        r = rnd()
        a.paid_plan = {"solo": "starter", "smb": "pro" if r < 0.6 else "starter",
                       "mid_market": "pro", "enterprise": "enterprise" if r < 0.6 else "pro"}[a.size]
        return a

    def _new_user(self, acc: _Account, signup_day: int, role: str) -> _User:
        R, rnd = self.R, self.rnd
        u = _User()
        u.idx = len(self.users)
        self.users.append(u)
        u.account = acc
        u.is_creator = not acc.members
        taken = {m.email for m in acc.members}
        acc.members.append(u)
        u.role = role
        u.user_id = self._fresh_id("usr_", 48)
        u.anonymous_id = _uuid4(R.getrandbits(128))
        u.first, u.last = R.choice(_FIRST_NAMES), R.choice(_LAST_NAMES)
        if u.is_creator and acc.person:
            u.first, u.last = acc.person
        free_mail = {"solo": 0.5, "smb": 0.15}.get(acc.size, 0.02)
        domain = R.choice(_FREE_MAIL) if rnd() < free_mail else acc.domain
        local = f"{_ascii_slug(u.first)}.{_ascii_slug(u.last)}"
        email, k = f"{local}@{domain}", 2
        while email in taken:
            email, k = f"{local}{k}@{domain}", k + 1
        u.email = email
        country = acc.country if rnd() < 0.9 else R.choice(list(_COUNTRIES))
        _, u.locale, tzs, *_ = _COUNTRIES[country]
        u.tz = R.choice(tzs)
        r = rnd()
        u.platform = "web" if r < 0.72 else ("ios" if r < 0.86 else "android")
        u.p_late = 0.002 if u.platform == "web" else 0.05
        u.batch_ms = 1500 if u.platform == "web" else 30_000
        u.signup_day = signup_day
        self._plan_behaviour(u)
        return u

    def _pick(self, window: list[int], k: int) -> list[int]:
        """k days drawn (with replacement) from ``window``, sorted."""
        if k <= 0 or not window:
            return []
        rnd, n = self.rnd, len(window)
        return sorted(window[int(rnd() * n)] for _ in range(k))

    def _plan_behaviour(self, u: _User) -> None:
        """Active days, sessions and dated key events of one user (before any conversion)."""
        R, rnd, last, wdf, pick = self.R, self.rnd, self.last_day, self.wdf, self._pick
        s0 = u.signup_day
        a = R.betavariate(1.6, 2.4)
        u.activity = a
        u.fill_mean = 1.5 + 7.0 * a
        if rnd() < 0.22:
            life = 1 + _geometric(rnd, 0.35)  # tried it, went quiet
        else:
            life = int(R.expovariate(1.0 / (50 + 100 * a)))
        end = min(last, s0 + life)
        p = 0.1 + 0.85 * a
        days = [s0] + [d for d in range(s0 + 1, end + 1) if rnd() < p * wdf[d]]
        lam = 0.15 + 1.0 * a
        n_sess = [1 + min(_poisson(rnd, lam), 5) for _ in days]
        s = R.betavariate(6.0, 2.0) if rnd() < 0.25 else R.betavariate(1.0, 7.0)
        n_short = [sum(1 for _ in range(k) if rnd() < s) for k in n_sess]
        u.days, u.n_sess, u.n_short = days, n_sess, n_short
        n = len(days)

        early = [d for d in days if d <= s0 + 13]
        # onboarding: step 1 at signup, further steps on the first active days
        k = 1 + sum(1 for _ in range(4) if rnd() < 0.3 + 0.55 * a)
        u.onboarding = [(s0, 1)] + [(d, i + 2) for i, d in enumerate(pick(days[:4], k - 1))]
        # projects: builders create several in the first two weeks
        b = R.gammavariate(1.3, 1.35)
        u.projects = pick(early, _poisson(rnd, b * (0.75 + 0.5 * a)))
        late = [d for d in days if d >= s0 + 15]  # never on day 14: keeps "within 14 days" unambiguous
        if late:
            u.projects += pick(late, _poisson(rnd, 0.04 * b * len(late)))
        # invites that are never accepted (teammates who join are added in _populate)
        c = R.gammavariate(0.6, 1.0)
        first3w = [d for d in days if d <= s0 + 21]
        u.invites = [(d, -1) for d in pick(first3w, _poisson(rnd, 0.55 * c))]
        # integrations
        if rnd() < 0.16 + 0.2 * a:
            ni = 1 + min(_poisson(rnd, 0.4), 3)
            names = R.sample(range(len(_INTEGRATIONS)), ni)
            u.integrations = list(zip(pick([d for d in days if d <= s0 + 30], ni), names))
        # support tickets: confused users ask "basics" questions early on
        q = R.gammavariate(0.3, 3.5)
        tickets = [(d, 0) for d in pick(first3w, _poisson(rnd, q * min(1.0, n / 4)))]
        tickets += [(d, 1) for d in pick(days, _poisson(rnd, 0.04))]
        tickets += [(d, 2) for d in pick(days, _poisson(rnd, 0.12))]
        tickets += [(d, 3) for d in pick(days, _poisson(rnd, 0.3 * a))]
        u.tickets = sorted(tickets)
        # errors: some users keep running into problems
        r = R.gammavariate(0.6, 0.7)
        u.errors = pick(days, _poisson(rnd, r * 4.0))

    def _ensure_full_session(self, u: _User, day: int) -> None:
        """A day with key events needs at least one non-short session."""
        i = bisect.bisect_left(u.days, day)
        assert i < len(u.days) and u.days[i] == day
        if u.n_short[i] >= u.n_sess[i]:
            u.n_short[i] = u.n_sess[i] - 1

    def _populate(self, acc: _Account) -> None:
        rnd, last = self.rnd, self.last_day
        creator = self._new_user(acc, acc.signup_day, "admin")
        for _ in range(1, acc.n_target):
            members = acc.members
            inviter = creator if (len(members) == 1 or rnd() < 0.7) else members[int(rnd() * len(members))]
            cand = [d for d in inviter.days if d <= inviter.signup_day + 21 and d < last]
            if not cand:
                cand = [d for d in inviter.days if d < last]
            if not cand:
                continue
            inv_day = cand[int(rnd() * len(cand))]
            join = inv_day + _geometric(rnd, 0.45)
            if join > last:  # accepted after the period: an open invite for now
                inviter.invites.append((inv_day, -1))
                continue
            role = _INVITE_ROLES[int(rnd() * len(_INVITE_ROLES))]
            invitee = self._new_user(acc, join, role)
            inviter.invites.append((inv_day, invitee.idx))
        for u in acc.members:
            u.invites.sort()
            for day in self._key_days(u):
                self._ensure_full_session(u, day)
            self._evaluate(u)
        for u in acc.members:
            self._convert(u)
        self._account_plans(acc)
        for u in acc.members:
            self._collect(u)

    @staticmethod
    def _key_days(u: _User) -> set[int]:
        days = {d for d, _ in u.onboarding} | set(u.projects) | {d for d, _ in u.invites}
        days |= {d for d, _ in u.integrations} | {d for d, _ in u.tickets} | set(u.errors)
        return days

    def _evaluate(self, u: _User) -> None:
        """Milestone flags, counts and the true conversion probability from the behaviour."""
        s0 = u.signup_day
        early = [d for d in u.projects if d <= s0 + 13]
        sess, short = sum(u.n_sess), sum(u.n_short)
        basics = sum(1 for _, c in u.tickets if c == 0)
        u.counts = {
            "projects_created": len(u.projects),
            "projects_in_14d": len(early),
            "teammates_invited": len(u.invites),
            "integrations_connected": len(u.integrations),
            "active_days": len(u.days),
            "support_tickets_basics": basics,
            "support_tickets": len(u.tickets),
            "session_count": sess,
            "short_session_count": short,
            "errors": len(u.errors),
            "onboarding_steps": len(u.onboarding),
        }
        u.flags = {
            "invited_2_teammates": len(u.invites) >= 2,
            "integration_connected": len(u.integrations) >= 1,
            "projects_3_in_14d": len(early) >= 3,
            "active_14_days": len(u.days) >= 14,
            "basics_tickets_3plus": basics >= 3,
            "short_sessions": 2 * short > sess,
            "errors_5plus": len(u.errors) >= 5,
        }
        logit = INTERCEPT + SIZE_EFFECTS[u.account.size] + INDUSTRY_EFFECTS[u.account.industry]
        logit += sum(m.coefficient for m in MILESTONES if u.flags[m.name])
        u.probability = min(max(_sigmoid(logit), 1e-6), 1 - 1e-6)

    def _milestones_reached(self, u: _User) -> int:
        """Day on which the last positive milestone the user hit was reached (signup day if none)."""
        s0, reach = u.signup_day, u.signup_day
        if u.flags["projects_3_in_14d"]:
            reach = max(reach, sorted(d for d in u.projects if d <= s0 + 13)[2])
        if u.flags["invited_2_teammates"]:
            reach = max(reach, u.invites[1][0])
        if u.flags["integration_connected"]:
            reach = max(reach, min(d for d, _ in u.integrations))
        if u.flags["active_14_days"]:
            reach = max(reach, u.days[13])
        return reach

    def _convert(self, u: _User) -> None:
        rnd, last = self.rnd, self.last_day
        u.u_draw = rnd()
        if u.u_draw >= u.probability:
            return
        s0 = u.signup_day
        lo = max(s0 + 10, self._milestones_reached(u) + 1)
        hi = min(max(s0 + 45, lo + 7), last)
        if lo > hi:
            u.censored = True  # would convert, but after the generated period
            return
        cand = [d for d, ns, nsh in zip(u.days, u.n_sess, u.n_short) if lo <= d <= hi and nsh < ns]
        if cand:
            day = cand[int(rnd() * min(5, len(cand)))]
        else:
            # comes back to subscribe: one more (full) session on a day in the window
            span = list(range(lo, min(hi, lo + 10) + 1))
            day = span[_weighted(rnd, _cum(self.wdf[d] for d in span))]
            i = bisect.bisect_left(u.days, day)
            if i < len(u.days) and u.days[i] == day:
                u.n_sess[i] += 1
            else:
                u.days.insert(i, day)
                u.n_sess.insert(i, 1)
                u.n_short.insert(i, 0)
            self._evaluate(u)  # can only have raised the probability
            assert u.u_draw < u.probability
        u.conversion_day = day
        u.converted = True

    def _account_plans(self, acc: _Account) -> None:
        """Group calls for plan changes: trial starts / expiries and the first paid seat."""
        rnd = self.rnd
        converters = sorted((u for u in acc.members if u.converted), key=lambda u: (u.conversion_day, u.idx))
        c_day = converters[0].conversion_day if converters else None
        if converters:
            acc.converted = True
            acc.first_conversion_day = c_day
            converters[0].first_in_account = True

        def full_days(lo: int, hi: int) -> list[tuple[int, int, _User]]:
            return [(d, m.idx, m) for m in acc.members
                    for d, ns, nsh in zip(m.days, m.n_sess, m.n_short)
                    if lo <= d <= hi and nsh < ns and d > m.signup_day]

        changes: list[tuple[int, _User, str]] = []
        trial_start = acc.signup_day if acc.plan == "trial" else None
        if acc.plan == "free" and rnd() < (0.45 if c_day is not None else 0.08):
            lo = acc.signup_day + 1 if c_day is None else max(acc.signup_day + 1, c_day - 14)
            hi = self.last_day if c_day is None else c_day - 1
            opts = full_days(lo, hi)
            if opts:
                day, _, m = opts[int(rnd() * len(opts))]
                changes.append((day, m, "trial"))
                trial_start = day
        if trial_start is not None:
            expiry = trial_start + 14
            if c_day is None or c_day > expiry:
                opts = sorted(full_days(expiry, self.last_day if c_day is None else c_day - 1))
                if opts:
                    day, _, m = opts[0]
                    changes.append((day, m, "free"))
        for day, m, plan in changes:
            m.plan_events.append((day, _PLAN_CODES.index(plan)))
        timeline = [(day, plan) for day, _, plan in changes]
        if c_day is not None:
            timeline.append((c_day, acc.paid_plan))
        acc.timeline = sorted(timeline)

    def _collect(self, u: _User) -> None:
        """Move a finished user's plan into the flat arrays and drop the per-user lists."""
        ud, kk, i = self._ud, self._kk, u.idx

        def keys(day_params, kind: int) -> None:
            for d, p in day_params:
                kk[0].append(d)
                kk[1].append(i)
                kk[2].append(kind)
                kk[3].append(p)

        ud[0].extend(u.days)
        ud[1].extend([i] * len(u.days))
        ud[2].extend(u.n_sess)
        ud[3].extend(u.n_short)
        keys([(u.signup_day, 0)], K_SIGNUP)
        keys(u.onboarding, K_ONBOARD)
        keys([(d, 0) for d in u.projects], K_PROJECT)
        keys(u.invites, K_INVITE)
        keys(u.integrations, K_INTEGRATION)
        keys(u.tickets, K_TICKET)
        keys([(d, 0) for d in u.errors], K_ERROR)
        keys(u.plan_events, K_PLAN)
        if u.converted:
            keys([(u.conversion_day, int(u.first_in_account))], K_SUBSCRIBE)
        # keep only what the ground truth needs (bounded memory for big runs)
        u.flags = tuple(int(u.flags[m]) for m in MILESTONE_NAMES)
        u.counts = tuple(u.counts[c] for c in COUNT_COLUMNS)
        u.days = u.n_sess = u.n_short = u.projects = u.invites = u.integrations = None
        u.tickets = u.errors = u.onboarding = u.plan_events = None

    def _assemble(self, accounts: list[_Account]) -> _Plan:
        udm = np.array([np.frombuffer(c, dtype=np.int64) for c in self._ud]).reshape(4, -1)
        udm = udm[:, np.lexsort((udm[1], udm[0]))]
        km = np.array([np.frombuffer(c, dtype=np.int64) for c in self._kk]).reshape(4, -1)
        km = km[:, np.lexsort((km[3], km[2], km[1], km[0]))]
        return _Plan(accounts, self.users, udm[0], udm[1], udm[2], udm[3], km[0], km[1], km[2], km[3],
                     np.array(self.wdf))


# --------------------------------------------------------------------------- emitting


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _head(event: str) -> str:
    return '","type":"track","event":"' + event + '"'


_H_SESSION_START = _head("Session Started")
_H_SESSION_END = _head("Session Ended")
_H_FEATURE = _head("Feature Used")
_H_REPORT = _head("Report Run")
_H_SIGNED_UP = _head("Signed Up")
_H_ONBOARD = _head("Onboarding Step Completed")
_H_PROJECT = _head("Project Created")
_H_INVITE = _head("Teammate Invited")
_H_INTEGRATION = _head("Integration Connected")
_H_TICKET = _head("Support Ticket Opened")
_H_ERROR = _head("Error Shown")
_H_SUBSCRIPTION = _head("Subscription Started")
_H_ORDER = _head("Order Completed")
_H_IDENTIFY = '","type":"identify"'
_H_GROUP = '","type":"group"'


class _Emitter:
    def __init__(self, cfg: GeneratorConfig, plan: _Plan, out_dir: Path) -> None:
        self.cfg, self.plan, self.out_dir = cfg, plan, out_dir
        self.d0 = (cfg.start_date - _EPOCH).days  # epoch day of partition 0
        self.end_ms = (self.d0 + cfg.days) * DAY_MS
        self.dates = _DateStrings()
        self.hms = _hms()
        self.pending: dict[int, list[tuple]] = {}
        self.partitions: list[str] = []
        self.lines_written = 0
        self.clean_written = 0
        self.dirty_counts = {k: 0 for k in DIRTY_KINDS}
        self.dirty_allocated = 0
        self.dirty_carried = False  # a dirty line waits in the next day's pending list
        self.cum_clean = 0
        self._tz_cache: dict[tuple[str, int], tuple[int, str]] = {}
        wd, we = np.cumsum(_HOURS_WD).tolist(), np.cumsum(_HOURS_WE).tolist()
        self.hour_cum = (wd, we)
        self.feature_cum = np.cumsum([w for _, w in _FEATURES]).tolist()
        self.feature_bodies = [',"properties":{"feature":"' + f + '"}' for f, _ in _FEATURES]
        self.kinds = list(_DIRTY_WEIGHTS)
        self.kind_cum = np.cumsum([_DIRTY_WEIGHTS[k] for k in self.kinds]).tolist()
        self._prepare_users()

    # ---- per-user constant JSON fragments
    def _prepare_users(self) -> None:
        pr = random.Random(int(np.random.SeedSequence(self.cfg.seed, spawn_key=(3,)).generate_state(1)[0]))
        for u in self.plan.users:
            acc = u.account
            lib = pr.choice(_LIBRARIES[u.platform])
            if u.platform == "web":
                agent = pr.choice(_WEB_AGENTS)
            elif u.platform == "ios":
                agent = pr.choice(_IOS_AGENTS)
            else:
                agent = pr.choice(_ANDROID_AGENTS)
            if pr.random() < 0.15:
                ip = "2001:db8:%x:%x::%x" % (pr.getrandbits(16), pr.getrandbits(16), pr.getrandbits(16))
            else:
                ip = "%s.%d" % (pr.choice(("192.0.2", "198.51.100", "203.0.113")), pr.randint(1, 254))
            ctx = {"library": {"name": lib[0], "version": lib[1]}, "ip": ip, "userAgent": agent,
                   "locale": u.locale, "timezone": u.tz}
            u.ctx_plain = ',"context":' + _dumps(ctx) + "}"
            ctx["groupId"] = acc.account_id
            u.ctx_track = ',"context":' + _dumps(ctx) + "}"
            u.anon_ident = ',"anonymousId":"' + u.anonymous_id + '"'
            u.ident = ',"userId":"' + u.user_id + '"' + u.anon_ident
            u.group_ident = u.ident + ',"groupId":"' + acc.account_id + '"'

    def _offset(self, u: _User, day: int) -> tuple[int, str]:
        if u.platform == "web":
            return 0, "Z"  # analytics.js sends toISOString(): UTC with Z
        key = (u.tz, day)
        v = self._tz_cache.get(key)
        if v is None:
            minutes = utc_offset_minutes(u.tz, self.cfg.start_date + dt.timedelta(days=day))
            v = (minutes * 60_000, _fmt_offset(minutes))
            self._tz_cache[key] = v
        return v

    def fmt_z(self, ms: int) -> str:
        d, r = divmod(ms, DAY_MS)
        s, m = divmod(r, 1000)
        return self.dates[d] + "T" + self.hms[s] + "." + _MS3[m] + "Z"

    # ---- the run
    def run(self, progress: bool) -> None:
        from tqdm import tqdm

        cfg, plan = self.cfg, self.plan
        gt = self.out_dir / "_ground_truth"
        gt.mkdir(parents=True, exist_ok=True)
        ud_bounds = np.searchsorted(plan.ud_day, np.arange(cfg.days + 1))
        k_bounds = np.searchsorted(plan.k_day, np.arange(cfg.days + 1))
        with open(gt / "dirty_lines.csv", "w", newline="", encoding="utf-8") as fh:
            self.dirty_csv = csv.writer(fh, lineterminator="\n")
            self.dirty_csv.writerow(["file", "line_no", "kind", "original_message_id"])
            # on a terminal only (disable=None): logs and CI output get no bar
            for day in tqdm(range(cfg.days), desc="generating events", unit="day", file=sys.stderr,
                            disable=None if progress else True):
                seed = int(np.random.SeedSequence(cfg.seed, spawn_key=(4, day)).generate_state(1, np.uint64)[0])
                rng = random.Random(seed)
                items = self.pending.pop(day, [])
                self._emit_day(day, rng, items, slice(ud_bounds[day], ud_bounds[day + 1]),
                               slice(k_bounds[day], k_bounds[day + 1]))
                self._finish_day(day, rng, items)

    def _emit_day(self, day: int, R: random.Random, items: list, uds: slice, ks: slice) -> None:
        plan, users = self.plan, self.plan.users
        rnd, gb, expo, lognorm = R.random, R.getrandbits, R.expovariate, R.lognormvariate
        dates, hms, ms3 = self.dates, self.hms, _MS3
        next_id = _uuid_stream(self.cfg.seed, day).__next__
        pending = self.pending
        day_ms = (self.d0 + day) * DAY_MS
        next_ms = day_ms + DAY_MS
        end_ms = self.end_ms
        last_day = day == self.cfg.days - 1
        hour_cum = self.hour_cum[1 if plan.weekday_factor[day] < 1 else 0]
        hour_tot = hour_cum[-1]
        feature_cum, feature_bodies = self.feature_cum, self.feature_bodies
        feat_tot = feature_cum[-1]
        bis = bisect.bisect
        append = items.append
        report_types = _REPORT_TYPES

        # key events of the day, per user
        keys: dict[int, list[tuple[int, int]]] = {}
        for ui, kind, param in zip(plan.k_user[ks].tolist(), plan.k_kind[ks].tolist(), plan.k_param[ks].tolist()):
            keys.setdefault(ui, []).append((kind, param))

        u: _User
        off = 0
        suf = "Z"
        p_late = 0.0
        batch = 1000
        d0 = self.d0
        # receivedAt of an event timestamped today: at most the end of tomorrow / of the period
        ra_cap = min(next_ms + DAY_MS, end_ms) - 1

        def pending_for(rel_day: int) -> list:
            lst = pending.get(rel_day)
            if lst is None:
                lst = pending[rel_day] = []
            return lst

        def emit(t: int, head: str, ident: str, body: str, ctx: str) -> None:
            r = rnd()
            if r < p_late:
                sa = t + 3_600_000 + int(rnd() * 50_400_000)  # offline device flushes hours later
            else:
                sa = t + int(rnd() * batch)
            ra = sa + 15 + int(rnd() * 600)
            if r > 0.992:
                ra += int(rnd() * 240_000)  # slow network / retries: up to minutes
            if ra > ra_cap:  # same or following day (t is always today), and within the period
                ra = ra_cap
                if sa > ra:
                    sa = ra - 1 if ra - 1 >= t else t
            d1, r1 = divmod(t + off, DAY_MS)
            s1, m1 = divmod(r1, 1000)
            d2, r2 = divmod(sa + off, DAY_MS)
            s2, m2 = divmod(r2, 1000)
            d3, r3 = divmod(ra, DAY_MS)
            s3, m3 = divmod(r3, 1000)
            line = (f'{{"messageId":"{next_id()}{head}{ident}'
                    f',"timestamp":"{dates[d1]}T{hms[s1]}.{ms3[m1]}{suf}'
                    f'","sentAt":"{dates[d2]}T{hms[s2]}.{ms3[m2]}{suf}'
                    f'","receivedAt":"{dates[d3]}T{hms[s3]}.{ms3[m3]}Z"{body}{ctx}')
            if ra < next_ms:
                append((ra, line, None, None))
            else:
                pending_for(d3 - d0).append((ra, line, None, None))

        for ui, ns, nsh in zip(plan.ud_user[uds].tolist(), plan.ud_sess[uds].tolist(), plan.ud_short[uds].tolist()):
            u = users[ui]
            off, suf = self._offset(u, day)
            off_s = off // 1000
            p_late = 0.0 if last_day else u.p_late
            batch = u.batch_ms
            ident, ctx = u.ident, u.ctx_track
            # sessions: (start_ms, duration_ms, duration_seconds, short)
            short_idx = set(R.sample(range(ns), nsh)) if nsh else ()
            sessions = []
            for i in range(ns):
                if i in short_idx:
                    dur = round(2.0 + rnd() * 27.4, 1)
                else:
                    dur = round(min(14_400.0, max(30.5, lognorm(6.3, 0.9))), 1)
                dur_ms = int(dur * 1000)
                local = bis(hour_cum, rnd() * hour_tot) * 3600 + int(rnd() * 3600)
                st = ((local - off_s) % 86_400) * 1000 + int(rnd() * 1000)
                hi = DAY_MS - dur_ms - 61_000
                if st > hi:
                    st = hi
                if st < 181_000:
                    st = 181_000
                sessions.append((day_ms + st, dur_ms, dur, i in short_idx))
            sessions.sort()
            for st, dur_ms, dur, short in sessions:
                sid = ',"properties":{"session_id":"ses_%016x"' % gb(64)
                emit(st, _H_SESSION_START, ident, sid + "}", ctx)
                if short:
                    nf = 1 if rnd() < 0.3 else 0
                else:
                    nf = int(expo(1.0 / u.fill_mean))
                    if nf > 60:
                        nf = 60
                span = dur_ms - 1000
                for _ in range(nf):
                    t = st + 500 + int(rnd() * span)
                    if rnd() < 0.74:
                        emit(t, _H_FEATURE, ident, feature_bodies[bis(feature_cum, rnd() * feat_tot)], ctx)
                    else:
                        emit(t, _H_REPORT, ident, f',"properties":{{"report_type":"{report_types[int(rnd() * rnd() * 6)]}'
                                                  f'","duration_ms":{40 + int(expo(0.0011))}}}', ctx)
                emit(st + dur_ms, _H_SESSION_END, ident, f'{sid},"duration_seconds":{dur!r}}}', ctx)

            ukeys = keys.get(ui)
            if not ukeys:
                continue
            full = [s for s in sessions if not s[3]]
            if ukeys[0][0] == K_SIGNUP:
                self._emit_signup(u, day, sessions[0][0] - 5_000 - int(rnd() * 55_000), R, emit)
                ukeys = ukeys[1:]
                if not ukeys:
                    continue
            first = [k for k in ukeys if k[0] == K_ONBOARD]
            middle = [k for k in ukeys if K_ONBOARD < k[0] < K_PLAN]
            R.shuffle(middle)
            ordered = first + middle + [k for k in ukeys if k[0] >= K_PLAN]
            times = []
            for _ in ordered:
                st, dur_ms, _, _ = full[int(rnd() * len(full))]
                times.append(st + 1000 + int(rnd() * (dur_ms - 2000)))
            times.sort()
            for (kind, param), t in zip(ordered, times):
                self._emit_key(u, kind, param, t, day, R, emit)

    def _emit_signup(self, u: _User, day: int, t0: int, R: random.Random, emit) -> None:
        acc = u.account
        u.signup_ms = t0
        plan = acc.plan_at(day)
        method = "invite" if not u.is_creator and R.random() < 0.7 else _SIGNUP_METHODS[int(R.random() * 6)]
        props = '{"method":"' + method + '","plan":"' + ("free" if not u.is_creator else plan) + '"}'
        emit(t0, _H_SIGNED_UP, u.anon_ident, ',"properties":' + props, u.ctx_plain)
        traits = _dumps({"email": u.email, "name": f"{u.first} {u.last}", "created_at": self.fmt_z(t0),
                         "role": u.role})
        t1 = t0 + 300 + int(R.random() * 2500)
        emit(t1, _H_IDENTIFY, u.ident, ',"traits":' + traits, u.ctx_plain)
        t2 = t1 + 200 + int(R.random() * 3000)
        emit(t2, _H_GROUP, u.group_ident, ',"traits":' + acc.traits_json(plan), u.ctx_plain)

    def _emit_key(self, u: _User, kind: int, param: int, t: int, day: int, R: random.Random, emit) -> None:
        ident, ctx = u.ident, u.ctx_track
        rnd = R.random
        if kind == K_ONBOARD:
            props = '{"step":%d,"step_name":"%s"}' % (param, _ONBOARDING_STEPS[param - 1])
            emit(t, _H_ONBOARD, ident, ',"properties":' + props, ctx)
        elif kind == K_PROJECT:
            props = '{"project_id":"prj_%012x","template":"%s"}' % (
                R.getrandbits(48), _PROJECT_TEMPLATES[int(rnd() * rnd() * len(_PROJECT_TEMPLATES))])
            emit(t, _H_PROJECT, ident, ',"properties":' + props, ctx)
        elif kind == K_INVITE:
            if param >= 0:
                invitee = self.plan.users[param]
                email, role = invitee.email, invitee.role
            else:
                acc = u.account
                domain = acc.domain if rnd() < 0.8 else _FREE_MAIL[int(rnd() * len(_FREE_MAIL))]
                email = "%s.%s@%s" % (_ascii_slug(_FIRST_NAMES[int(rnd() * len(_FIRST_NAMES))]),
                                      _ascii_slug(_LAST_NAMES[int(rnd() * len(_LAST_NAMES))]), domain)
                role = _INVITE_ROLES[int(rnd() * len(_INVITE_ROLES))]
            props = _dumps({"invitee_email": email, "role": role})
            emit(t, _H_INVITE, ident, ',"properties":' + props, ctx)
        elif kind == K_INTEGRATION:
            emit(t, _H_INTEGRATION, ident, ',"properties":{"integration":"' + _INTEGRATIONS[param] + '"}', ctx)
        elif kind == K_TICKET:
            props = '{"category":"%s","priority":"%s"}' % (
                _TICKET_CATEGORIES[param], _TICKET_PRIORITIES[int(rnd() * len(_TICKET_PRIORITIES))])
            emit(t, _H_TICKET, ident, ',"properties":' + props, ctx)
        elif kind == K_ERROR:
            code, msg = _ERRORS[int(rnd() * len(_ERRORS))]
            emit(t, _H_ERROR, ident, ',"properties":' + _dumps({"error_code": code, "message": msg}), ctx)
        elif kind == K_PLAN:
            plan = _PLAN_CODES[param]
            emit(t, _H_GROUP, u.group_ident, ',"traits":' + u.account.traits_json(plan), u.ctx_plain)
        elif kind == K_SUBSCRIBE:
            acc = u.account
            u.converted_at_ms = t
            annual = rnd() < 0.3
            mrr = round(PAID_PLANS[acc.paid_plan] * (0.8 if annual else 1.0), 2)
            props = _dumps({"plan": acc.paid_plan, "mrr": mrr, "billing_period": "annual" if annual else "monthly"})
            emit(t, _H_SUBSCRIPTION, ident, ',"properties":' + props, ctx)
            if annual or rnd() < 0.4:
                revenue = round(mrr * (12 if annual else 1), 2)
                cur = acc.currency if acc.currency in ("USD", "EUR", "GBP") else "USD"
                props = '{"order_id":"ord_%010x","revenue":%s,"currency":"%s"}' % (
                    R.getrandbits(40), repr(revenue), cur)
                emit(t + 2000 + int(rnd() * 18_000), _H_ORDER, ident, ',"properties":' + props, ctx)
            if param:  # first paid seat of the account: its plan changes
                emit(t + 3000 + int(rnd() * 27_000), _H_GROUP, u.group_ident,
                     ',"traits":' + acc.traits_json(acc.paid_plan), u.ctx_plain)

    # ---- dirty lines and writing
    def _finish_day(self, day: int, R: random.Random, items: list) -> None:
        cfg = self.cfg
        clean_items = [it for it in items if it[2] is None] if self.dirty_carried else items
        self.dirty_carried = False
        clean_today = len(clean_items)
        self.cum_clean += clean_today
        f = cfg.dirty_fraction
        if f > 0 and clean_today:
            target = int(math.floor(f / (1 - f) * self.cum_clean + 0.5))
            clean_items = list(clean_items)  # dirty lines are added to items below
            for _ in range(target - self.dirty_allocated):
                kind = self.kinds[bisect.bisect(self.kind_cum, R.random() * self.kind_cum[-1])]
                self._add_dirty(kind, day, R, items, clean_items)
            if day == cfg.days - 1:
                # every kind at least once when the export is big enough to expect it
                total = self.lines_written + len(items)
                if total >= 2000:
                    for kind in DIRTY_KINDS:
                        if self.dirty_counts[kind] == 0 and not any(it[2] == kind for it in items):
                            self._add_dirty(kind, day, R, items, clean_items, same_file=True)
        if not items:
            return
        items.sort(key=_first)  # stable: ties keep their (deterministic) insertion order
        self._write_day(day, items)

    def _add_dirty(self, kind: str, day: int, R: random.Random, items: list, clean: list,
                   same_file: bool = False) -> None:
        self.dirty_allocated += 1
        rnd = R.random
        day_end = (self.d0 + day + 1) * DAY_MS
        if kind == "duplicate":
            ra, line, _, _ = clean[int(rnd() * len(clean))]
            mid = line[14:50]
            old = '"receivedAt":"' + self.fmt_z(ra) + '"'
            last = day == self.cfg.days - 1
            if not last and not same_file and rnd() < 0.4:
                new_ra = day_end + int(rnd() * 6 * 3_600_000)  # re-sent with the next day's export
                target = self.pending.setdefault(day + 1, [])
                self.dirty_carried = True
            else:
                new_ra = min(ra + 500 + int(rnd() * 900_000), day_end - 1)
                target = items
            dup = line.replace(old, '"receivedAt":"' + self.fmt_z(new_ra) + '"', 1)
            target.append((new_ra, dup, kind, mid))
            return
        # a fresh event modelled on a clean one of the same day
        obj = None
        for _ in range(40):
            ra, line, _, _ = clean[int(rnd() * len(clean))]
            cand = json.loads(line)
            if self._suits(kind, cand):
                obj = cand
                break
        if obj is None:  # fall back to the most generic kind
            ra, line, _, _ = clean[int(rnd() * len(clean))]
            kind, obj = "missing_message_id", json.loads(line)
        new_ra = min(ra + 1 + int(rnd() * 50), day_end - 1)
        obj["messageId"] = _uuid4(R.getrandbits(128))
        obj["receivedAt"] = self.fmt_z(new_ra)
        line = self._corrupt(kind, obj, new_ra, R)
        items.append((new_ra, line, kind, None))

    @staticmethod
    def _suits(kind: str, obj: dict) -> bool:
        if kind in ("unknown_event", "oversized"):
            return obj.get("type") == "track" and "userId" in obj
        if kind == "wrong_type":
            return "userId" in obj
        return True

    def _corrupt(self, kind: str, obj: dict, ra: int, R: random.Random) -> str:
        rnd = R.random
        if kind == "missing_message_id":
            del obj["messageId"]
        elif kind == "missing_identity":
            obj.pop("userId", None)
            obj.pop("anonymousId", None)
        elif kind == "wrong_type":
            variants = ["properties_as_string", "user_id_object", "timestamp_number"]
            if obj.get("event") == "Session Ended":
                variants = ["duration_string"] * 3 + variants
            elif obj.get("event") == "Onboarding Step Completed":
                variants = ["step_string"] * 3 + variants
            if not isinstance(obj.get("properties"), dict):
                variants = [v for v in variants if v != "properties_as_string"]
            v = variants[int(rnd() * len(variants))]
            if v == "duration_string":
                obj["properties"]["duration_seconds"] = f"{int(obj['properties']['duration_seconds'])}s"
            elif v == "step_string":
                obj["properties"]["step"] = str(obj["properties"]["step"])
            elif v == "properties_as_string":
                obj["properties"] = _dumps(obj["properties"])  # double-encoded JSON
            elif v == "user_id_object":
                obj["userId"] = {"id": obj["userId"]}
            else:
                obj["timestamp"] = ra - 200 - int(rnd() * 3000)  # epoch milliseconds
        elif kind == "unparsable_timestamp":
            obj["timestamp"] = UNPARSABLE_TIMESTAMPS[int(rnd() * len(UNPARSABLE_TIMESTAMPS))]
        elif kind == "future_timestamp":
            years = (1, 2, 3, 5, 10, 30)[int(rnd() * 6)]
            obj["timestamp"] = self.fmt_z(ra + int(years * 365.25 * DAY_MS) + int(rnd() * 30 * DAY_MS))
        elif kind == "unknown_event":
            obj["event"] = UNKNOWN_EVENTS[int(rnd() * len(UNKNOWN_EVENTS))]
        elif kind == "malformed_json":
            s = _dumps(obj)
            if rnd() < 0.75:
                return s[: 10 + int(rnd() * (len(s) - 12))]  # truncated write
            return repr(obj)  # a Python dict logged instead of JSON
        elif kind == "oversized":
            obj["event"] = "Error Shown"
            frames = []
            size = 0
            limit = OVERSIZED_MIN_BYTES + 1024 + int(rnd() * 20_000)
            while size < limit:
                fr = "  at render%s (webpack:///./src/components/Board%d.tsx:%d:%d)\n" % (
                    ["Cell", "Row", "Lane", "Card"][int(rnd() * 4)], int(rnd() * 90), int(rnd() * 900),
                    int(rnd() * 80))
                frames.append(fr)
                size += len(fr)
            obj["properties"] = {"error_code": "E_RENDER",
                                 "message": "TypeError: Cannot read properties of undefined (reading 'id')\n"
                                            + "".join(frames)}
        elif kind == "non_utf8":
            marker = list(_NON_UTF8_MARKERS)[int(rnd() * len(_NON_UTF8_MARKERS))]
            props = obj.get("properties")
            strings = [k for k, v in props.items() if isinstance(v, str)] if isinstance(props, dict) else []
            if strings:
                k = strings[int(rnd() * len(strings))]
                props[k] = props[k][:4] + marker + props[k][4:]
            else:
                obj["context"]["userAgent"] = obj["context"]["userAgent"][:7] + marker
        return _dumps(obj)

    def _write_day(self, day: int, items: list) -> None:
        date = (self.cfg.start_date + dt.timedelta(days=day)).isoformat()
        folder = self.out_dir / f"dt={date}"
        folder.mkdir(parents=True, exist_ok=True)
        nf = self.cfg.files_per_day
        for fi in range(nf):
            chunk = items[fi::nf]
            if not chunk:
                continue
            rel = f"dt={date}/events-{fi:04d}.jsonl"
            n_dirty = 0
            with open(self.out_dir / rel, "wb") as fh:
                run_start = 0  # first line not written yet
                for no, it in enumerate(chunk):
                    kind = it[2]
                    if kind is not None:
                        n_dirty += 1
                        self.dirty_counts[kind] += 1
                        self.dirty_csv.writerow([rel, no + 1, kind, it[3] or ""])
                    if kind == "non_utf8" or no - run_start >= _WRITE_BATCH:
                        if no > run_start:
                            fh.write(("\n".join([x[1] for x in chunk[run_start:no]]) + "\n").encode("utf-8"))
                        run_start = no
                    if kind == "non_utf8":
                        bad = (it[1] + "\n").encode("utf-8")
                        for marker, raw in _NON_UTF8_MARKERS.items():
                            bad = bad.replace(marker.encode("utf-8"), raw)
                        fh.write(bad)
                        run_start = no + 1
                if run_start < len(chunk):
                    fh.write(("\n".join([x[1] for x in chunk[run_start:]]) + "\n").encode("utf-8"))
            self.lines_written += len(chunk)
            self.clean_written += len(chunk) - n_dirty
        self.partitions.append(date)


# --------------------------------------------------------------------------- ground truth


def _iso_ms(ms: int | None) -> str:
    if ms is None:
        return ""
    d, r = divmod(ms, DAY_MS)
    s, m = divmod(r, 1000)
    return f"{(_EPOCH + dt.timedelta(days=d)).isoformat()}T{_hms()[s]}.{m:03d}Z"


USER_COLUMNS = (
    "user_id", "account_id", "anonymous_id", "size_segment", "signup_at", "true_conversion_probability",
    "converted", "converted_at", *MILESTONE_NAMES, *COUNT_COLUMNS,
    "conversion_censored", "industry", "email", "role", "platform",
)
ACCOUNT_COLUMNS = ("account_id", "name", "size_segment", "employees", "industry", "country", "plan", "converted",
                   "final_plan", "signup_date", "n_users", "n_converted_users")


def _write_ground_truth(cfg: GeneratorConfig, plan: _Plan, em: _Emitter, out_dir: Path) -> None:
    gt = out_dir / "_ground_truth"
    gt.mkdir(parents=True, exist_ok=True)
    with open(gt / "users.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(USER_COLUMNS)
        for u in plan.users:
            assert u.signup_ms is not None, "every planned user signs up within the period"
            assert u.converted == (u.converted_at_ms is not None)
            w.writerow([
                u.user_id, u.account.account_id, u.anonymous_id, u.account.size, _iso_ms(u.signup_ms),
                f"{u.probability:.6f}", int(u.converted), _iso_ms(u.converted_at_ms), *u.flags, *u.counts,
                int(u.censored), u.account.industry, u.email, u.role, u.platform,
            ])
    with open(gt / "accounts.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(ACCOUNT_COLUMNS)
        for a in plan.accounts:
            w.writerow([a.account_id, a.name, a.size, a.employees, a.industry, a.country, a.plan, int(a.converted),
                        a.final_plan, (cfg.start_date + dt.timedelta(days=a.signup_day)).isoformat(),
                        len(a.members), sum(1 for m in a.members if m.converted)])
    n_users = len(plan.users)
    n_conv = sum(1 for u in plan.users if u.converted)
    config = asdict(cfg)
    config["start_date"] = cfg.start_date.isoformat()
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "config": config,
        "layout": {
            "events": "dt=YYYY-MM-DD/events-NNNN.jsonl (UTC date of receivedAt; lines in receivedAt order)",
            "partitions": em.partitions,
        },
        "counts": {
            "lines_written": em.lines_written,
            "clean_events": em.clean_written,
            "dirty_lines": em.dirty_counts,
            "accounts": len(plan.accounts),
            "converted_accounts": sum(1 for a in plan.accounts if a.converted),
            "users": n_users,
            "converted_users": n_conv,
            "censored_conversions": sum(1 for u in plan.users if u.censored),
            "user_conversion_rate": round(n_conv / n_users, 6) if n_users else 0.0,
        },
        "conversion_model": {
            "formula": "true_conversion_probability = sigmoid(intercept + sum(coefficient of each milestone hit)"
                       " + size_effect[size_segment] + industry_effect[industry]); converted ~ Bernoulli(p)",
            "intercept": INTERCEPT,
            "size_effects": SIZE_EFFECTS,
            "industry_effects": INDUSTRY_EFFECTS,
            "timing": "a converter sends Subscription Started on an active day after the day its last "
                      "positive milestone was reached, 10-45 days after signup; if that day falls after the "
                      "period the conversion is censored (converted=0, conversion_censored=1)",
            "milestone_window": "milestones are evaluated on everything the user did in the period "
                                "(clean lines only; dirty lines are extra copies)",
        },
        "milestones": [asdict(m) for m in MILESTONES],
        "dirty_kinds": {
            "duplicate": "a clean line re-sent: identical bytes except receivedAt (the server stamps the "
                         "re-send later); same file or the next day's file; original_message_id says which",
            "missing_message_id": "the messageId key is absent",
            "missing_identity": "neither userId nor anonymousId",
            "wrong_type": "one value of the wrong JSON type: duration_seconds / step as a string, properties "
                          "as a (double-encoded) string, userId as an object, or timestamp as epoch ms number",
            "unparsable_timestamp": "timestamp is a string that is not a date: " + ", ".join(UNPARSABLE_TIMESTAMPS),
            "future_timestamp": "timestamp 1-30 years after receivedAt (sentAt left correct)",
            "unknown_event": "track event not in the tracking plan: " + ", ".join(UNKNOWN_EVENTS),
            "malformed_json": "a truncated JSON object, or a Python dict repr (single quotes)",
            "oversized": f"a valid Error Shown event whose message makes the line > {OVERSIZED_MIN_BYTES} bytes",
            "non_utf8": "a valid-looking event with invalid UTF-8 bytes (ff fe, a lone latin-1 e9, or c3 28) "
                        "inside a string value",
        },
    }
    with open(gt / "manifest.json", "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2, ensure_ascii=False)
        fh.write("\n")
