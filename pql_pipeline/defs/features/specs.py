"""Build the feature, label and milestone specifications from the pipeline settings,
and the contracts of the feature tables extended with one column per configured signal."""

from __future__ import annotations

from pql_pipeline.defs.features.labels import LabelSpec
from pql_pipeline.defs.features.milestones import MilestoneSpec
from pql_pipeline.defs.features.sql import FeatureSpec
from pql_pipeline.lib.contracts import Contract, load_contract, with_columns
from pql_pipeline.settings import Settings, contracts_dir
from pql_pipeline.signals import Signal, SignalSet, rollup_column, signals_at

# bump when the feature SQL changes meaning (part of each asset's code_version)
FEATURES_LOGIC_VERSION = "1"


def signal_set(settings: Settings) -> SignalSet:
    return signals_at(settings.signals_path)


def feature_spec(settings: Settings) -> FeatureSpec:
    return FeatureSpec(signals=signal_set(settings), conversion_events=tuple(settings.labels.conversion_events),
                       active_within_days=settings.features.active_within_days,
                       paid_plans=tuple(settings.labels.paid_plans))


def label_spec(settings: Settings) -> LabelSpec:
    lab = settings.labels
    return LabelSpec(conversion_events=tuple(lab.conversion_events), horizon_days=lab.horizon_days,
                     late_arrival_days=lab.late_arrival_days,
                     exclude_users_of_paying_accounts=lab.exclude_users_of_paying_accounts)


def milestone_spec(settings: Settings) -> MilestoneSpec:
    m = settings.milestones
    return MilestoneSpec(signals=signal_set(settings), conversion_events=tuple(settings.labels.conversion_events),
                         min_counts=tuple(m.min_counts), within_days=tuple(m.within_days),
                         outcome_days=m.outcome_days, late_arrival_days=settings.labels.late_arrival_days,
                         exclude_events=tuple(m.exclude_events), min_coverage=m.min_coverage,
                         min_users=m.min_users, confidence=m.confidence, top=m.top)


def _column(name: str, dtype: str, s: Signal, nullable: bool = False) -> dict:
    lo, hi = s.value_range
    always = s.kind in ("count", "distinct_count", "first_time", "active_days", "trend", "seats", "active_users")
    desc = f"{s.kind} signal" + (f" ({s.polarity})" if s.polarity != "neutral" else "")
    if s.event:
        desc += f" of {s.event}"
    return {"name": name, "physicalType": dtype, "required": always and not nullable and dtype != "VARCHAR",
            "minimum": lo if dtype in ("BIGINT", "DOUBLE") else None,
            "maximum": hi if dtype in ("BIGINT", "DOUBLE") else None, "description": desc}


def feature_contract(settings: Settings) -> Contract:
    """data_contracts/features.odcs.yaml plus one property per signal column."""
    sigs = signal_set(settings)
    c = load_contract(contracts_dir() / "features.odcs.yaml")
    c = with_columns(c, "user_features", [_column(n, t, s) for n, t, s in sigs.user_columns()], before="max_event_ts")
    acct = []
    for n, t, s in sigs.account_columns():
        col = _column(n, t, s)
        if s in sigs.signals and not n.startswith(("best_", "total_")):
            col["required"] = False  # means and minima of nullable user values
        if s.kind == "active_seat_share":
            col["required"] = False
        acct.append(col)
    return with_columns(c, "account_features", acct, before="max_event_ts")


def training_contract(settings: Settings) -> Contract:
    """data_contracts/training_set.odcs.yaml plus the signal columns (account ones prefixed acct_)."""
    sigs = signal_set(settings)
    c = load_contract(contracts_dir() / "training_set.odcs.yaml")
    user = [_column(n, t, s) for n, t, s in sigs.user_columns()]
    acct_fixed = [{"name": f"acct_{n}", "physicalType": t, "required": False}
                  for n, t in (("signup_date", "DATE"), ("days_since_signup", "BIGINT"), ("is_paying", "BOOLEAN"),
                               ("n_members", "BIGINT"))]
    acct = [{**_column(f"acct_{n}", t, s), "required": False} for n, t, s in sigs.account_columns()]
    acct_audit = [{"name": "acct_max_event_ts", "physicalType": "TIMESTAMPTZ"},
                  {"name": "acct_max_partition_date", "physicalType": "DATE"}]
    c = with_columns(c, "training_set", user, before="max_event_ts")
    c = with_columns(c, "training_set", acct_fixed + acct + acct_audit, before="label")
    acct_own = []
    for n, t, s in sigs.account_columns():
        col = _column(n, t, s)
        if (s in sigs.signals and not n.startswith(("best_", "total_"))) or s.kind == "active_seat_share":
            col["required"] = False
        acct_own.append(col)
    return with_columns(c, "account_training_set", acct_own, before="max_event_ts")


def column_lineage(settings: Settings) -> dict:
    """Column lineage of the derived feature tables, from the signal definitions: an account
    rollup column comes from its user signal; a training-set column from the user or (acct_)
    account feature of the same name and the label from conversion_labels."""
    import dagster as dg

    sigs = signal_set(settings)
    user_cols = [n for n, _, _ in sigs.user_columns()]
    acct_cols = [n for n, _, _ in sigs.account_columns()]

    def dep(asset: str, column: str) -> list:
        return [dg.TableColumnDep(asset_key=dg.AssetKey(asset), column_name=column)]

    rollups = {rollup_column(r, s.name): dep("user_features", s.name) for s in sigs.signals for r in s.rollups}
    label = {"label": dep("conversion_labels", "label")}
    training = {**{c: dep("user_features", c) for c in user_cols},
                **{f"acct_{c}": dep("account_features", c) for c in acct_cols}, **label}
    account_training = {**{c: dep("account_features", c) for c in acct_cols}, **label}
    return {"account_features": dg.TableColumnLineage(deps_by_column=rollups),
            "training_set": dg.TableColumnLineage(deps_by_column=training),
            "account_training_set": dg.TableColumnLineage(deps_by_column=account_training)}
