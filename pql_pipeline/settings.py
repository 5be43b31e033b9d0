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

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_CONFIG = PACKAGE_DIR / "config" / "pipeline.yaml"
PROJECT_ROOT = PACKAGE_DIR.parent


class ConfigError(ValueError):
    """The configuration file is invalid; the message says where and how to fix it."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WarehouseSettings(_Strict):
    path: str = "warehouse/pql.duckdb"
    memory_limit: str = "4GB"
    threads: int = Field(2, ge=1)


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

    @model_validator(mode="after")
    def _order(self):
        if self.warn_above > self.error_above:
            raise ValueError("checks.quarantine_rate.warn_above must not exceed error_above")
        return self


class VolumeSettings(_Strict):
    lookback_partitions: int = Field(7, ge=1)
    min_ratio: float = Field(0.3, ge=0)
    max_ratio: float = Field(3.0, gt=0)


class CheckSettings(_Strict):
    quarantine_rate: QuarantineRateSettings = QuarantineRateSettings()
    volume: VolumeSettings = VolumeSettings()
    ge_max_rows: int = Field(2_000_000, ge=0)
    sample_rows: int = Field(5, ge=0, le=100)


class Segment(_Strict):
    name: str
    max_employees: int | None = None


class Settings(_Strict):
    warehouse: WarehouseSettings = WarehouseSettings()
    source: SourceSettings = SourceSettings()
    partitions: PartitionSettings = PartitionSettings()
    validation: ValidationSettings = ValidationSettings()
    checks: CheckSettings = CheckSettings()
    segments: list[Segment] = Field(default_factory=list)

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
        p = Path(self.validation.contract)
        if p.is_absolute():
            return p
        # Contracts ship with the project; fall back to the project copy when the
        # working directory is elsewhere (tests, a scheduled run in another cwd).
        cwd_path = Path.cwd() / p
        return cwd_path if cwd_path.exists() else PROJECT_ROOT / p


def contracts_dir() -> Path:
    """Directory holding the ODCS contracts (``data_contracts/``)."""
    cwd = Path.cwd() / "data_contracts"
    return cwd if cwd.is_dir() else PROJECT_ROOT / "data_contracts"


def load_settings(path: str | os.PathLike | None = None) -> Settings:
    """Load and validate the configuration; raises ConfigError naming the bad key."""
    path = Path(path or os.environ.get("PQL_CONFIG") or DEFAULT_CONFIG)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist (set PQL_CONFIG to a valid file)") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<top level>'}: {err['msg']}" for err in e.errors()
        )
        raise ConfigError(f"{path}: {problems}") from None
    # environment overrides are read once, here, so a Settings object never changes under its user
    if os.environ.get("PQL_WAREHOUSE"):
        settings = settings.model_copy(update={
            "warehouse": settings.warehouse.model_copy(update={"path": os.environ["PQL_WAREHOUSE"]})})
    if os.environ.get("PQL_EVENTS_DIR"):
        settings = settings.model_copy(update={
            "source": settings.source.model_copy(update={"root": os.environ["PQL_EVENTS_DIR"]})})
    return settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
