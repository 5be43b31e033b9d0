"""Pipeline configuration: one YAML file, validated on load.

The packaged default is ``pql_pipeline/config/pipeline.yaml``; ``PQL_CONFIG`` points at
another file. ``PQL_WAREHOUSE`` and ``PQL_EVENTS_DIR`` override the two paths people
change most (tests use them to work in a temporary directory).
"""

from __future__ import annotations

import datetime as dt
import os
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pql_pipeline.lib.yaml_config import ConfigError, read_yaml, validate_model  # noqa: F401 (ConfigError is re-exported)

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_CONFIG = PACKAGE_DIR / "config" / "pipeline.yaml"
PROJECT_ROOT = PACKAGE_DIR.parent


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WarehouseSettings(_Strict):
    path: str = "warehouse/pql.duckdb"
    memory_limit: str = "2.75GB"
    threads: int = Field(2, ge=1)

    @field_validator("memory_limit")
    @classmethod
    def _memory(cls, v: str) -> str:
        """Whatever DuckDB accepts (it parses the value when a connection opens)."""
        import duckdb

        with duckdb.connect(":memory:") as probe:
            try:
                probe.execute(f"SET memory_limit = '{str(v).replace(chr(39), '')}'")
            except duckdb.Error:
                raise ValueError(f"{v!r} is not a memory size DuckDB accepts; write a number and a unit, e.g. "
                                 "2.75GB, 512MiB or 60%") from None
        return v


class SourceSettings(_Strict):
    root: str = "data/events"
    pattern: str = "dt={date}/*.jsonl*"
    format: str = "jsonl"

    @field_validator("format")
    @classmethod
    def _format(cls, v: str) -> str:
        if v not in ("jsonl", "parquet"):
            raise ValueError(f"source.format must be 'jsonl' or 'parquet', not {v!r}")
        return v

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        if "{date}" not in v:
            raise ValueError("source.pattern must contain '{date}' (replaced by the partition day, YYYY-MM-DD)")
        return v


class PartitionSettings(_Strict):
    start_date: dt.date = dt.date(2025, 1, 1)


class ValidationSettings(_Strict):
    contract: str = "data_contracts/segment_events.odcs.yaml"
    dedup_lookback_days: int = Field(7, ge=0)


class QuarantineRateSettings(_Strict):
    warn_above: float = Field(0.005, ge=0, le=1)
    error_above: float = Field(0.05, ge=0, le=1)
    # a file not readable to its end (truncated .gz) loses an unknown number of lines, which no
    # rate can judge: warn (the day goes on with what was read) or error (block until it is re-sent)
    unreadable_file: str = "warn"

    @field_validator("unreadable_file")
    @classmethod
    def _unreadable(cls, v: str) -> str:
        if v not in ("warn", "error"):
            raise ValueError(f"checks.quarantine_rate.unreadable_file must be warn or error, not {v!r}")
        return v

    @model_validator(mode="after")
    def _order(self):
        if self.warn_above > self.error_above:
            raise ValueError("checks.quarantine_rate.warn_above must not exceed error_above")
        return self


class RatioBounds(_Strict):
    """A day's value against the median of the days before it (``lib.trends.ratio_to_median``):
    a ratio within [min_ratio, max_ratio] is normal."""

    min_ratio: float = Field(0.3, ge=0)
    max_ratio: float = Field(3.0, gt=0)


class VolumeSettings(RatioBounds):
    lookback_partitions: int = Field(7, ge=1)


class CheckSettings(_Strict):
    quarantine_rate: QuarantineRateSettings = QuarantineRateSettings()
    volume: VolumeSettings = VolumeSettings()
    ge_max_rows: int = Field(250_000, ge=0)
    sample_rows: int = Field(5, ge=0, le=100)


class Segment(_Strict):
    name: str
    max_employees: int | None = None


class SparkSettings(_Strict):
    """features.engine: spark (the optional ``spark`` extra: pyspark, and Java 17+)."""

    master: str = "local[2]"        # spark.master: local[N], spark://host:7077, yarn, k8s://...
    app_name: str = "pql-pipeline"
    # any other Spark settings (spark.executor.memory, spark.sql.shuffle.partitions, ...);
    # values are never logged
    conf: dict[str, str] = Field(default_factory=dict)
    # where the warehouse tables the features read are written as Parquet for Spark (one
    # file per validated partition, rewritten only when the partition is validated again);
    # unset: spark_staging/ beside the warehouse file. On a cluster, a location DuckDB can
    # write and every executor can read (s3://..., a shared file system)
    staging: str | None = None
    # tables the cluster already has (e.g. {validated_events: lake.validated_events}): read
    # from Spark's catalog instead of staged from the warehouse
    tables: dict[str, str] = Field(default_factory=dict)

    @field_validator("tables")
    @classmethod
    def _tables(cls, v: dict[str, str]) -> dict[str, str]:
        known = {"validated_events", "identity_links", "account_memberships"}
        unknown = sorted(set(v) - known)
        if unknown:
            raise ValueError(f"features.spark.tables: unknown table(s) {unknown}; the features read "
                             f"{sorted(known)}")
        return v


class FeatureSettings(_Strict):
    signals: str = "pql_pipeline/config/signals.yaml"
    # a user gets a feature row on a snapshot day if they signed up by then and had an
    # event within this many days before it
    active_within_days: int = Field(60, ge=1)
    # a range backfill computes this many snapshot days per query (bounds memory)
    snapshot_batch_days: int = Field(31, ge=1)
    # feature null-rate check: largest allowed rise against the previous partition
    null_rate_max_increase: float = Field(0.10, ge=0, le=1)
    # where user and account features are computed: the warehouse's DuckDB, or Apache Spark
    engine: str = "duckdb"
    spark: SparkSettings = SparkSettings()

    @field_validator("engine")
    @classmethod
    def _engine(cls, v: str) -> str:
        if v not in ("duckdb", "spark"):
            raise ValueError(f"features.engine must be 'duckdb' or 'spark', not {v!r}")
        return v


class BaseRateBounds(_Strict):
    min: float = Field(0.002, ge=0, le=1)
    max: float = Field(0.5, ge=0, le=1)


class LabelSettings(_Strict):
    conversion_events: list[str] = Field(default_factory=lambda: ["Subscription Started"], min_length=1)
    horizon_days: int = Field(30, ge=1, le=730)
    # events may arrive this many days late; a label waits for them before it is final
    late_arrival_days: int = Field(1, ge=0, le=30)
    # an account whose plan trait is one of these at the snapshot is already paying
    paid_plans: list[str] = Field(default_factory=list)
    # a free user in an account that already pays is an expansion lead, not a PQL
    exclude_users_of_paying_accounts: bool = True
    base_rate: BaseRateBounds = BaseRateBounds()


class TrainingSettings(_Strict):
    snapshot_every_days: int = Field(7, ge=1)
    lookback_days: int = Field(365, ge=1)


class MilestoneSettings(_Strict):
    min_counts: list[int] = Field(default_factory=lambda: [1, 2, 3, 5, 10, 14], min_length=1)
    within_days: list[int] = Field(default_factory=lambda: [1, 3, 7, 14, 30], min_length=1)
    # a user counts as converted if the conversion happens within this many days after
    # the milestone window ends; only users observed that long are used
    outcome_days: int = Field(30, ge=1)
    exclude_events: list[str] = Field(default_factory=list)
    min_coverage: float = Field(0.02, ge=0, le=1)
    min_users: int = Field(30, ge=1)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    top: int = Field(3, ge=1)

    @field_validator("min_counts", "within_days")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(x < 1 for x in v):
            raise ValueError("grid values must be >= 1")
        return sorted(set(v))


class ModelGates(_Strict):
    """What a model must reach on the holdout to score leads (blocking checks)."""

    min_auc: float = Field(0.65, ge=0, le=1)
    # it must beat the best rule-based baseline's ROC AUC by at least this much
    min_auc_over_rules: float = Field(0.0, ge=-1, le=1)
    # expected calibration error (mean |predicted - observed| over 10 probability bins, weighted)
    max_calibration_error: float = Field(0.1, ge=0, le=1)
    # the top feature's share of the summed permutation importance: more smells of a leak
    max_top_feature_share: float = Field(0.6, gt=0, le=1)


class ModelSettings(_Strict):
    # the most recent labelled training snapshots are held out for evaluation ...
    holdout_snapshots: int = Field(2, ge=1)
    # ... and the model trains on snapshots at least this many days before the first of
    # them, so no training label window reaches into the holdout (defaults to the horizon)
    embargo_days: int | None = Field(None, ge=0)
    candidates: list[str] = Field(default_factory=lambda: ["gradient_boosting", "logistic_regression"],
                                  min_length=1)
    calibration: str = "isotonic"
    # probability from which a user is a PQL (precision, recall and volume are reported at it)
    pql_threshold: float = Field(0.3, gt=0, lt=1)
    # a new model replaces the champion only if its holdout ROC AUC is higher by this much
    champion_margin: float = Field(0.01, ge=0, le=1)
    gates: ModelGates = ModelGates()
    # a registry version to score with instead of the champion: rolling back is this one line
    pinned_version: str | None = None
    # model files of rejected candidates kept (the newest ones); older ones are deleted, their
    # registry rows stay. Champions and retired champions always keep theirs.
    keep_rejected_models: int = Field(5, ge=0)
    min_train_rows: int = Field(200, ge=10)
    min_train_positives: int = Field(20, ge=2)
    # feature columns the model must not use (e.g. one found to leak); every other column of
    # training_set but keys, bookkeeping and the label is an input
    exclude_features: list[str] = Field(default_factory=list)
    # the classic hand-made PQL rule, a baseline every model must beat: feature >= value, all of them
    classic_rule: dict[str, float] = Field(default_factory=lambda: {
        "projects_first_14d": 3, "teammates_invited": 2, "active_days_total": 14})
    seed: int = 7

    @field_validator("candidates")
    @classmethod
    def _candidates(cls, v: list[str]) -> list[str]:
        known = ("gradient_boosting", "logistic_regression")
        bad = [c for c in v if c not in known]
        if bad:
            raise ValueError(f"unknown model candidates {bad}; choose from {list(known)}")
        return v

    @field_validator("calibration")
    @classmethod
    def _calibration(cls, v: str) -> str:
        if v not in ("isotonic", "sigmoid", "none"):
            raise ValueError("model.calibration must be isotonic, sigmoid or none")
        return v


class RoutingSettings(_Strict):
    # accounts of these size segments go to sales (when the lead's tier is a sales tier) ...
    sales_segments: list[str] = Field(default_factory=lambda: ["mid_market", "enterprise"])
    sales_tiers: list[str] = Field(default_factory=lambda: ["hot"])
    # ... the others get an in-app nudge (when the tier is a nudge tier)
    nudge_tiers: list[str] = Field(default_factory=lambda: ["hot", "warm"])
    max_nudges_per_account: int = Field(2, ge=0)
    # no nudge while one of the account's users was routed to sales within this many days
    suppress_days: int = Field(30, ge=0)


class PqlVolumeSettings(RatioBounds):
    """The newest day's PQL count against the median of the days before (a jump or a collapse
    usually means a tracking or model problem, not a change in the market)."""

    lookback_days: int = Field(7, ge=1)
    # with a median below this many PQLs a day the counts are too small to judge (passes)
    min_median: float = Field(10, ge=0)
    # a day outside the bounds blocks what follows (CRM, nudges) when true; warns otherwise
    blocking: bool = True


class ScoringSettings(_Strict):
    # probability from which a lead is in each tier, highest first; below every tier: cold
    tiers: dict[str, float] = Field(default_factory=lambda: {"hot": 0.3, "warm": 0.1})
    reasons: int = Field(3, ge=1, le=10)    # reasons to call and caveats shown per lead
    # the candidates of consecutive days go through the model together up to this many rows
    # (a range backfill of a small product calls the model once, not once a day)
    batch_rows: int = Field(200_000, ge=1)
    routing: RoutingSettings = RoutingSettings()
    volume: PqlVolumeSettings = PqlVolumeSettings()

    @field_validator("tiers")
    @classmethod
    def _tiers(cls, v: dict[str, float]) -> dict[str, float]:
        if not v or any(not 0 < t < 1 for t in v.values()):
            raise ValueError("scoring.tiers maps tier names to probabilities between 0 and 1")
        if "cold" in v:
            raise ValueError("'cold' is the tier below every threshold; do not give it one")
        return v


def http_url(value: str | None) -> str | None:
    """An http(s) URL a request can be sent to, checked when the configuration is loaded (a
    malformed one would otherwise fail every record at send time)."""
    from urllib.parse import urlsplit

    if value is None:
        return None
    v = value.strip()
    try:
        parts = urlsplit(v)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as e:
        raise ValueError(f"{value!r} is not a URL ({e})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in v):
        raise ValueError(f"{value!r} is not an http(s) URL; write it like https://api.example.com")
    return v


class DeliverySettings(_Strict):
    """How a destination is called: at most ``rate_limit_requests`` calls in any window of
    ``rate_limit_window_seconds``, each call tried up to ``max_attempts`` times with a doubling
    wait (jittered) from ``backoff_seconds`` up to ``max_backoff_seconds``."""

    rate_limit_requests: int = Field(100, ge=1)
    rate_limit_window_seconds: float = Field(10.0, gt=0)
    max_attempts: int = Field(6, ge=1)          # calls per batch before it is left for the next run
    backoff_seconds: float = Field(1.0, ge=0)   # first retry wait (doubles, with jitter)
    max_backoff_seconds: float = Field(60.0, ge=0)
    timeout_seconds: float = Field(30.0, gt=0)
    # send every record again on the next run (forgets what the destination already accepted)
    full_resync: bool = False


class CrmSettings(DeliverySettings):
    """The CRM sync (HubSpot CRM v3 batch upserts). Without HUBSPOT_ACCESS_TOKEN it is a dry
    run: the exact requests go to the sync_outbox table instead."""

    destination: str = "hubspot"
    base_url: str = "https://api.hubapi.com"
    # unique properties HubSpot matches records by: a custom unique company property holding
    # the product's account id, and the contact's e-mail
    company_id_property: str = "pql_account_id"
    contact_id_property: str = "email"
    sync_companies: bool = True
    sync_contacts: bool = True
    batch_size: int = Field(100, ge=1, le=100)
    # the rate limit (DeliverySettings): HubSpot allows 100-190 calls per 10 s by plan
    concurrency: int = Field(4, ge=1, le=16)    # batches in flight at once (they share the rate limit)

    _url = field_validator("base_url")(classmethod(lambda cls, v: http_url(v)))


class InAppSettings(DeliverySettings):
    """In-app nudges for the users routed in_app. Without the channel's secret
    (INTERCOM_ACCESS_TOKEN, or PQL_WEBHOOK_SECRET for the webhook) it is a dry run."""

    enabled: bool = True
    channel: str = "intercom"                 # intercom | webhook
    event_name: str = "pql-nudge"             # the event your in-app message is triggered by
    cap_days: int = Field(7, ge=0)            # at most one nudge per user in this many days (0: no cap)
    intercom_url: str = "https://api.intercom.io/events"
    webhook_url: str | None = None
    rate_limit_requests: int = Field(160, ge=1)     # Intercom private apps: 10,000 a minute
    rate_limit_window_seconds: float = Field(1.0, gt=0)

    _urls = field_validator("intercom_url", "webhook_url")(classmethod(lambda cls, v: http_url(v)))

    @field_validator("channel")
    @classmethod
    def _channel(cls, v: str) -> str:
        if v not in ("intercom", "webhook"):
            raise ValueError("activation.in_app.channel must be intercom or webhook")
        return v

    @model_validator(mode="after")
    def _webhook(self):
        if self.channel == "webhook" and not self.webhook_url:
            raise ValueError("activation.in_app.webhook_url is needed when the channel is webhook")
        return self


class ActivationSettings(_Strict):
    crm: CrmSettings = CrmSettings()
    in_app: InAppSettings = InAppSettings()


class DriftSettings(_Strict):
    """Feature and prediction drift: effect sizes with a minimum sample, never p-values."""
    psi_warn: float = Field(0.1, gt=0)
    psi_alert: float = Field(0.25, gt=0)
    js_warn: float = Field(0.1, gt=0)
    js_alert: float = Field(0.2, gt=0)
    unseen_warn: float = Field(0.01, ge=0)
    min_rows: int = Field(1000, ge=1)               # fewer rows on either side: insufficient_data, never an alert
    sample_rows: int = Field(50_000, ge=100)        # rows sampled from each side
    reference_weeks: int = Field(4, ge=1)           # the trailing reference: the same weekday of this many weeks
    block_top_features: int = Field(10, ge=1)       # the model's most important features ...
    block_share: float | None = Field(0.5, gt=0, le=1)   # ... alerting vs training in this share blocks (null: never)
    max_pql_rate_change: float = Field(2.0, gt=1)   # PQL rate this many times above or below the trailing median

    @model_validator(mode="after")
    def _sizes(self):
        if self.sample_rows < self.min_rows:
            raise ValueError(f"monitoring.drift.sample_rows ({self.sample_rows}) must be at least min_rows "
                             f"({self.min_rows}), or every verdict would be insufficient_data")
        if self.psi_warn > self.psi_alert or self.js_warn > self.js_alert:
            raise ValueError("monitoring.drift: each warn threshold must be at most its alert threshold")
        return self


class StreamSettings(RatioBounds):
    """Event-stream drift: each event name's daily count, identified and account-mapped shares."""
    lookback_days: int = Field(7, ge=1)
    lookback_weeks: int = Field(4, ge=1)
    max_ratio: float = Field(3.0, gt=1)
    min_median_events: int = Field(50, ge=1)
    max_share_drop: float = Field(0.1, gt=0, le=1)
    blocking: bool = True


class PerformanceSettings(_Strict):
    """Realised performance on cohorts whose labels have arrived vs the model's holdout."""
    max_auc_drop: float = Field(0.05, gt=0)
    max_precision_drop: float = Field(0.1, gt=0)
    min_rows: int = Field(500, ge=1)
    min_positives: int = Field(20, ge=1)
    retrain_on_decay: bool = True


class IncidentSettings(_Strict):
    need: int = Field(2, ge=1)
    of: int = Field(3, ge=1)

    @model_validator(mode="after")
    def _need(self):
        if self.need > self.of:
            raise ValueError(f"monitoring.incident.need ({self.need}) cannot exceed of ({self.of})")
        return self


class FreshnessSettings(_Strict):
    scores_hours: float = Field(26, gt=0)
    outputs_hours: float = Field(26, gt=0)
    events_hours: float = Field(26, gt=0)


class AutomationSettings(_Strict):
    running: bool = False               # schedules, the file sensor and declarative automation start running
    daily_hour: int = Field(6, ge=0, le=23)     # UTC hour the daily job runs for the day before
    daily_minute: int = Field(0, ge=0, le=59)
    retrain_cron: str = "0 8 * * 1"     # weekly retraining (UTC), after the daily run of the day before
    landing_interval_seconds: int = Field(60, ge=10)
    landing_settle_minutes: float = Field(15, ge=0)    # a partition's files must be unchanged this long
    landing_max_runs_per_tick: int = Field(10, ge=1)


class MonitoringSettings(_Strict):
    drift: DriftSettings = DriftSettings()
    stream: StreamSettings = StreamSettings()
    performance: PerformanceSettings = PerformanceSettings()
    incident: IncidentSettings = IncidentSettings()
    freshness: FreshnessSettings = FreshnessSettings()
    automation: AutomationSettings = AutomationSettings()
    alert_timeout_seconds: float = Field(10, gt=0)


class Settings(_Strict):
    warehouse: WarehouseSettings = WarehouseSettings()
    source: SourceSettings = SourceSettings()
    partitions: PartitionSettings = PartitionSettings()
    validation: ValidationSettings = ValidationSettings()
    checks: CheckSettings = CheckSettings()
    segments: list[Segment] = Field(default_factory=list)
    features: FeatureSettings = FeatureSettings()
    labels: LabelSettings = LabelSettings()
    training: TrainingSettings = TrainingSettings()
    milestones: MilestoneSettings = MilestoneSettings()
    model: ModelSettings = ModelSettings()
    scoring: ScoringSettings = ScoringSettings()
    activation: ActivationSettings = ActivationSettings()
    monitoring: MonitoringSettings = MonitoringSettings()

    @field_validator("segments")
    @classmethod
    def _segments(cls, v: list[Segment]) -> list[Segment]:
        if v and v[-1].max_employees is not None:
            raise ValueError("the last segment must have max_employees: null (it catches every larger account)")
        bounds = [s.max_employees for s in v[:-1]]
        if any(b is None for b in bounds) or bounds != sorted(bounds):
            raise ValueError("segments must be listed by increasing max_employees")
        return v

    def resolve(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else Path.cwd() / p

    @property
    def warehouse_path(self) -> Path:
        return self.resolve(self.warehouse.path)

    @property
    def events_root(self) -> Path:
        return self.resolve(self.source.root)

    @property
    def contract_path(self) -> Path:
        return project_file(self.validation.contract)

    @property
    def signals_path(self) -> Path:
        return project_file(self.features.signals)

    @property
    def spark_staging(self) -> str:
        """Where Spark's inputs and results are staged (features.spark.staging)."""
        staging = self.features.spark.staging
        if staging is None:
            return str(self.warehouse_path.parent / "spark_staging")
        return staging if "://" in staging else str(self.resolve(staging))

    @property
    def models_dir(self) -> Path:
        """Where trained models are kept: beside the warehouse file."""
        return self.warehouse_path.parent / "models"


def project_file(path: str) -> Path:
    """A file that ships with the project: relative to the working directory if it is
    there, else to the project root (tests, a scheduled run in another cwd)."""
    p = Path(path)
    if p.is_absolute():
        return p
    cwd_path = Path.cwd() / p
    return cwd_path if cwd_path.exists() else PROJECT_ROOT / p


def contracts_dir() -> Path:
    """Directory holding the ODCS contracts (``data_contracts/``)."""
    cwd = Path.cwd() / "data_contracts"
    return cwd if cwd.is_dir() else PROJECT_ROOT / "data_contracts"


# the contracts every run reads besides validation.contract (data_contracts/)
PROJECT_CONTRACTS = ("raw_events", "validated_events", "users", "accounts", "features", "training_set")


def check_files(settings: Settings, path: Path, lines: dict[tuple, int]) -> None:
    """Every file the configuration (``path``, its key lines ``lines``) names exists and loads
    (a contract, the signals), so a run never starts writing before it finds out; ConfigError
    lists each problem on a line naming the configuration file, line and key."""
    from pql_pipeline.lib.contracts import ContractError, load_contract
    from pql_pipeline.lib.yaml_config import locate
    from pql_pipeline.signals import signals_at

    problems = []
    named = [("validation.contract", settings.contract_path, load_contract),
             ("features.signals", settings.signals_path, signals_at)]
    named += [(f"data_contracts/{n}.odcs.yaml", contracts_dir() / f"{n}.odcs.yaml", load_contract)
              for n in PROJECT_CONTRACTS]
    for key, file, load in named:
        here = (locate(path, lines, tuple(key.split(".")), shallowest=1) if not key.startswith("data_contracts/")
                else f"{file} (shipped with the project)")
        if not file.is_file():
            problems.append(f"{here}: file {file} does not exist")
            continue
        try:
            load(file)
        except (ConfigError, ContractError) as e:
            problems += [f"{here}: {line}" for line in str(e).splitlines()]
    if problems:
        raise ConfigError("\n".join(problems))


def load_settings(path: str | os.PathLike | None = None, check: bool = True) -> Settings:
    """Load and validate the configuration; raises ConfigError naming the bad key and line.
    ``check``: also load every file it names (contracts, signals)."""
    path = Path(path or os.environ.get("PQL_CONFIG") or DEFAULT_CONFIG)
    data, lines = read_yaml(path)
    settings = validate_model(path, data, lines, Settings)
    # environment overrides are read once, here, so a Settings object never changes under its user
    if os.environ.get("PQL_WAREHOUSE"):
        settings = settings.model_copy(update={
            "warehouse": settings.warehouse.model_copy(update={"path": os.environ["PQL_WAREHOUSE"]})})
    if os.environ.get("PQL_EVENTS_DIR"):
        settings = settings.model_copy(update={
            "source": settings.source.model_copy(update={"root": os.environ["PQL_EVENTS_DIR"]})})
    if check:
        check_files(settings, path, lines)
    return settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
