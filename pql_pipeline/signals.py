"""The signal configuration (``signals.yaml``): what a product team wants to know.

A signal is declared in the product's own event names; this module validates the
declarations (with errors naming the file line) and tells the rest of the pipeline
what each signal produces: its column(s), their type and range, the account roll-up and
the sentence that explains it to sales.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pql_pipeline.lib.yaml_config import load_model

USER_KINDS = ("count", "distinct_count", "first_time", "active_days", "session_length", "share", "recency",
              "trend", "trait")
ACCOUNT_KINDS = ("seats", "active_users", "active_seat_share", "distinct_count", "count", "trait")
ROLLUPS = ("max", "min", "sum", "mean")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
# columns every feature table has; a signal may not take their names
RESERVED = {"snapshot_date", "user_id", "account_id", "signup_date", "days_since_signup", "is_paying",
            "max_event_ts", "max_partition_date", "definition_hash", "computed_at", "n_members"}

# what each kind needs (required) and accepts (optional) besides the common keys
_FIELDS = {
    "count": ({"event"}, {"where", "window_days", "within_days_of_signup"}),
    "distinct_count": ({"event", "property"}, {"where", "window_days", "within_days_of_signup"}),
    "first_time": ({"event"}, {"where", "detail_property", "within_days_of_signup"}),
    "active_days": (set(), {"window_days", "within_days_of_signup"}),
    "session_length": ({"event", "property"}, {"where", "window_days"}),
    "share": ({"event", "property", "below"}, {"where", "window_days"}),
    "recency": (set(), {"event", "where"}),
    "trend": (set(), {"event", "where", "period_days"}),
    "trait": ({"property", "type"}, set()),
    "seats": (set(), set()),
    "active_users": (set(), {"window_days"}),
    "active_seat_share": (set(), {"window_days"}),
}
_COMMON = {"name", "kind", "polarity", "threshold", "reason", "description", "account_rollup"}


class Signal(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str
    kind: str
    event: str | None = None
    where: dict[str, str | int | float | bool] | None = None
    prop: str | None = Field(None, alias="property")
    detail_property: str | None = None
    window_days: int | None = Field(None, ge=1, le=3650)
    within_days_of_signup: int | None = Field(None, ge=1, le=3650)
    period_days: int | None = Field(None, ge=1, le=365)
    below: float | None = None
    type: Literal["string", "number", "boolean"] | None = None
    polarity: Literal["positive", "negative", "neutral"] = "neutral"
    threshold: float | None = None
    reason: str | None = None
    description: str | None = None
    account_rollup: list[Literal["max", "min", "sum", "mean"]] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"signal name {v!r} must be lower_snake_case (a-z, 0-9, _; starting with a letter)")
        if v in RESERVED:
            raise ValueError(f"signal name {v!r} is a column every feature table already has; choose another")
        return v

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v not in _FIELDS:
            raise ValueError(f"unknown kind {v!r}; one of {', '.join(sorted(_FIELDS))}")
        return v

    @model_validator(mode="after")
    def _shape(self):
        required, optional = _FIELDS[self.kind]
        given = {("property" if k == "prop" else k) for k in self.model_fields_set
                 if getattr(self, k) is not None} - _COMMON
        missing = required - given
        if missing:
            raise ValueError(f"kind {self.kind!r} needs {', '.join(sorted(missing))}")
        extra = given - required - optional
        if extra:
            raise ValueError(f"kind {self.kind!r} does not use {', '.join(sorted(extra))}")
        if self.window_days and self.within_days_of_signup:
            raise ValueError("give either window_days or within_days_of_signup, not both")
        return self

    @field_validator("reason")
    @classmethod
    def _reason(cls, v: str | None) -> str | None:
        if v:
            try:
                v.format(value=1.0, detail="x")
            except (KeyError, IndexError, ValueError, AttributeError) as e:
                raise ValueError(f"reason {v!r} is not a valid template ({type(e).__name__}: {e}); "
                                 "use {value} (with a format such as {value:.0%}) and, for first_time, {detail}"
                                 ) from None
        return v

    # ---------------------------------------------------------------- what it produces
    @property
    def dtype(self) -> str:
        """SQL type of the signal's column."""
        if self.kind == "first_time":
            return "BOOLEAN"
        if self.kind in ("count", "distinct_count", "active_days", "recency", "seats", "active_users"):
            return "BIGINT"
        if self.kind == "trait":
            return {"string": "VARCHAR", "number": "DOUBLE", "boolean": "BOOLEAN"}[self.type]
        return "DOUBLE"

    @property
    def value_range(self) -> tuple[float | None, float | None]:
        if self.kind in ("share", "active_seat_share"):
            return 0.0, 1.0
        if self.kind == "trend":
            return -1.0, None
        if self.dtype in ("BIGINT", "DOUBLE") and self.kind != "trait":
            return 0.0, None
        return None, None

    @property
    def rollups(self) -> list[str]:
        if self.account_rollup:
            return list(dict.fromkeys(self.account_rollup))
        if self.kind == "trait":
            return []
        if self.kind in ("share", "session_length", "trend"):
            return ["mean"]
        if self.kind == "recency":
            return ["min"]
        return ["max"]


def rollup_column(rollup: str, name: str) -> str:
    return {"max": "best_", "min": "min_", "sum": "total_", "mean": "avg_"}[rollup] + name


class SignalSet(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int | str = 1
    signup_event: str | None = None
    signals: list[Signal] = Field(min_length=1)
    account_signals: list[Signal] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self):
        # "@section.index.key: message" tells the error formatter which line to name
        for section, kinds in (("signals", USER_KINDS), ("account_signals", ACCOUNT_KINDS)):
            for i, s in enumerate(getattr(self, section)):
                if s.kind not in kinds:
                    raise ValueError(f"@{section}.{i}.kind: {s.name!r} has kind {s.kind!r}, which only "
                                     f"{'account_signals' if section == 'signals' else 'signals'} accept; "
                                     f"{section} accept {', '.join(kinds)}")
        seen: set[str] = set()
        for i, s in enumerate(self.signals):
            if s.name in seen:
                raise ValueError(f"@signals.{i}.name: signal {s.name!r} is declared twice")
            seen.add(s.name)
        account_cols = {rollup_column(r, s.name) for s in self.signals for r in s.rollups}
        taken: set[str] = set()
        for i, s in enumerate(self.account_signals):
            if s.name in seen:
                raise ValueError(f"@account_signals.{i}.name: {s.name!r} is also a user signal; "
                                 "give the account signal its own name")
            if s.name in account_cols or s.name in taken:
                raise ValueError(f"@account_signals.{i}.name: account signal {s.name!r} clashes with another "
                                 "account column")
            taken.add(s.name)
            if s.account_rollup:
                raise ValueError(f"@account_signals.{i}.account_rollup: account_rollup applies to user signals only")
            if s.within_days_of_signup:
                raise ValueError(f"@account_signals.{i}.within_days_of_signup: account signals take window_days "
                                 "(an account has no single signup day)")
        return self

    @cached_property
    def definition_hash(self) -> str:
        """Changes whenever any signal's definition changes (stored on every feature row)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def user_columns(self) -> list[tuple[str, str, Signal]]:
        """(column, SQL type, signal) of user_features, in order."""
        out = []
        for s in self.signals:
            out.append((s.name, s.dtype, s))
            if s.kind == "first_time" and s.detail_property:
                out.append((f"{s.name}_detail", "VARCHAR", s))
        return out

    def account_columns(self) -> list[tuple[str, str, Signal]]:
        out = []
        for s in self.signals:
            for r in s.rollups:
                dtype = "DOUBLE" if r == "mean" else ("BOOLEAN" if s.dtype == "BOOLEAN" and r in ("max", "min")
                                                      else ("BIGINT" if s.dtype == "BOOLEAN" else s.dtype))
                out.append((rollup_column(r, s.name), dtype, s))
        for s in self.account_signals:
            out.append((s.name, s.dtype, s))
        return out


def load_signals(path: Path) -> SignalSet:
    """Load and validate a signals file; ``ConfigError`` names the line of each problem."""
    return load_model(Path(path), SignalSet)


@lru_cache(maxsize=8)
def _signals(path: str, _mtime: int) -> SignalSet:
    return load_signals(Path(path))


def signals_at(path: Path) -> SignalSet:
    """The signals file at ``path``, loaded once per version of the file."""
    return _signals(str(path), path.stat().st_mtime_ns if path.exists() else 0)
