"""Activation stage: the day's scores -> the CRM (HubSpot companies and contacts)."""

import dagster as dg
from pydantic import Field

from pql_pipeline.defs.activation import ledger as L
from pql_pipeline.defs.activation.hubspot import HubSpotClient, Transport
from pql_pipeline.defs.activation.nudges import IntercomChannel, NudgeChannel, WebhookChannel, send_nudges
from pql_pipeline.defs.activation.records import VOLATILE, company_records, contact_records
from pql_pipeline.defs.activation.sync import new_run_id, sync_records
from pql_pipeline.lib.dagster_helpers import OWNERS, POOL, md_table, partition_days
from pql_pipeline.lib.warehouse import Warehouse, table_exists
from pql_pipeline.settings import CrmSettings, InAppSettings, Settings

GROUP = "activation"
TAGS = {"pql/stage": "activation"}
SYNC_LOGIC_VERSION = "1"


class HubSpotResource(dg.ConfigurableResource):
    """HubSpot credentials. ``access_token`` comes from the HUBSPOT_ACCESS_TOKEN environment
    variable (a private-app token with crm.objects.companies.write and
    crm.objects.contacts.write); without it the sync is a dry run."""

    access_token: str | None = Field(None, description="HubSpot private-app token (from HUBSPOT_ACCESS_TOKEN).")

    def client(self, crm: CrmSettings) -> HubSpotClient:
        # a token read from a secret file often ends with a newline: never part of a header
        return HubSpotClient(base_url=crm.base_url, access_token=(self.access_token or "").strip() or None,
                             batch_size=crm.batch_size, transport=transport(crm), concurrency=crm.concurrency)


def transport(c) -> Transport:
    """The HTTP policy (rate limit, retries, timeouts) of a destination's settings."""
    return Transport(rate_limit_requests=c.rate_limit_requests, rate_limit_window_seconds=c.rate_limit_window_seconds,
                     max_attempts=c.max_attempts, backoff_seconds=c.backoff_seconds,
                     max_backoff_seconds=c.max_backoff_seconds, timeout_seconds=c.timeout_seconds)


def failed_gates(instance: dg.DagsterInstance, gates: list[dg.AssetCheckKey]) -> list[str]:
    """The blocking checks (``gates``: every blocking check upstream of the outputs) whose
    latest evaluation, in any run, failed at ERROR severity. Inside one run Dagster already
    stops the outputs after such a failure; this also holds when scoring and the checks ran
    in earlier runs (the daily pipeline, the weekly model job)."""
    failed = []
    for key in gates:
        # the newest execution that produced an evaluation (one only planned, in a run that failed
        # or was cancelled before the check ran, says nothing)
        history = instance.event_log_storage.get_asset_check_execution_history(key, limit=20)
        for record in history:
            event = record.event.dagster_event if record.event is not None else None
            evaluation = event.event_specific_data if event is not None else None
            if evaluation is None or not hasattr(evaluation, "passed"):
                continue
            if not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR:
                failed.append(f"{key.asset_key.to_user_string()}.{key.name} (run {record.run_id[:8]})")
            break
    return failed


def gate(context: dg.AssetExecutionContext, gates: list[dg.AssetCheckKey], what: str) -> None:
    failed = failed_gates(context.instance, gates)
    if failed:
        raise dg.Failure(
            f"{what} not sent: these blocking checks failed at their latest evaluation: {', '.join(failed)}. Fix "
            "the cause and re-run them (materialize the asset, or run its checks), then run this asset again.",
            metadata={"failed_checks": ", ".join(failed)})


def sync_asset_args(daily: dg.PartitionsDefinition) -> dict:
    """What every output asset shares: after the day's scores and drift report (their blocking checks gate it),
    daily partitions synced in one run, the warehouse pool, the ledger table."""
    return dict(deps=["pql_scores", "pql_account_scores", "drift_report"], partitions_def=daily,
                backfill_policy=dg.BackfillPolicy.single_run(), group_name=GROUP, owners=OWNERS, tags=TAGS, pool=POOL,
                code_version=SYNC_LOGIC_VERSION, metadata={"dagster/table_name": L.LEDGER})


def build_activation_assets(settings: Settings, daily: dg.PartitionsDefinition,
                            gates: list[dg.AssetCheckKey] = ()) -> list[dg.AssetsDefinition]:
    crm = settings.activation.crm

    @dg.asset(name="crm_sync", kinds={"hubspot", "duckdb"}, **sync_asset_args(daily))
    def crm_sync(context: dg.AssetExecutionContext, warehouse: Warehouse, hubspot: HubSpotResource):
        """Upserts the day's sales leads into HubSpot: companies (accounts routed to sales, and those synced before,
        kept current) and their contacts, with score, tier, PQL flag, reasons, milestones, model version and day.
        Only new and changed records are sent (sync_ledger); rejected and undelivered ones are retried on every
        later run; without HUBSPOT_ACCESS_TOKEN the exact requests go to sync_outbox (dry run). Of a range, only
        the newest day is synced (older days' values would overwrite it)."""
        gate(context, list(gates), "CRM updates")
        day = partition_days(context)[-1]
        client = hubspot.client(crm)
        run_id = new_run_id()
        dest = L.ledger_destination(crm.destination, client.dry_run)
        rows = []
        with warehouse.get_connection() as conn:
            L.ensure_tables(conn)
            plans = []
            if crm.sync_companies:
                plans.append(("companies", crm.company_id_property,
                              company_records(conn, day, dest, crm.company_id_property)))
            if crm.sync_contacts:
                plans.append(("contacts", crm.contact_id_property,
                              contact_records(conn, day, dest, crm.contact_id_property)))
            for object_type, id_property, records in plans:
                row = sync_records(conn, client, crm.destination, object_type, id_property, records, day, run_id,
                                   full_resync=crm.full_resync, ignore_in_diff=VOLATILE)
                rows.append(row)
                context.log.info(
                    f"{object_type}: {row['considered']} considered, {row['new']} new, {row['changed']} changed, "
                    f"{row['unchanged']} unchanged, {row['retried']} retried, {row['held']} held (rejected before); "
                    f"sent {row['sent']} in {row['calls']} calls: {row['created']} created, {row['updated']} updated, "
                    f"{row['rejected']} rejected, {row['failed']} failed" + (" (dry run)" if client.dry_run else ""))
            outbox = conn.execute(f"SELECT count(*) FROM {L.OUTBOX} WHERE run_id = ?", [run_id]).fetchall()[0][0]
        shown = ("object_type", "considered", "new", "changed", "unchanged", "retried", "held", "skipped_stale", "sent",
                 "created", "updated", "rejected", "failed", "calls", "seconds")
        return dg.MaterializeResult(metadata={
            "run_id": run_id, "day": str(day), "dry_run": client.dry_run,
            "mode": "dry run: requests written to sync_outbox (set HUBSPOT_ACCESS_TOKEN to send)" if client.dry_run
                    else f"sent to {crm.base_url}",
            "outbox_requests": outbox,
            "records_sent": sum(r["sent"] for r in rows), "calls": sum(r["calls"] for r in rows),
            "rejected": sum(r["rejected"] for r in rows), "failed": sum(r["failed"] for r in rows),
            "runs": dg.MetadataValue.md(md_table([{k: r[k] for k in shown} for r in rows])),
        })

    return [crm_sync]


class InAppResource(dg.ConfigurableResource):
    """The in-app channel's secret: INTERCOM_ACCESS_TOKEN for Intercom, PQL_WEBHOOK_SECRET (the
    HMAC key) for the webhook; without it nudges are a dry run."""

    secret: str | None = Field(None, description="Intercom access token or webhook signing secret (from the env).")

    def channel(self, c: InAppSettings) -> NudgeChannel:
        secret = (self.secret or "").strip() or None
        if c.channel == "intercom":
            return IntercomChannel("intercom", c.intercom_url, secret, transport(c))
        return WebhookChannel("webhook", c.webhook_url or "", secret, transport(c))


def build_nudge_assets(settings: Settings, daily: dg.PartitionsDefinition,
                       gates: list[dg.AssetCheckKey] = ()) -> list[dg.AssetsDefinition]:
    c = settings.activation.in_app

    @dg.asset(name="in_app_nudges", kinds={c.channel, "duckdb"}, **sync_asset_args(daily))
    def in_app_nudges(context: dg.AssetExecutionContext, warehouse: Warehouse, in_app: InAppResource):
        """Sends an event per self-serve PQL (users routed in_app: not in accounts sales works, capped per account)
        that triggers an in-app message: Intercom events (deterministic created_at, at most 10 metadata keys) or a
        signed webhook. One nudge per user and day, at most one per user in activation.in_app.cap_days; the same
        ledger, retries and dry run as the CRM sync. Of a range, only the newest day nudges."""
        day = partition_days(context)[-1]
        channel = in_app.channel(c)
        if not c.enabled:
            return dg.MaterializeResult(metadata={"enabled": False})
        gate(context, list(gates), "In-app nudges")
        with warehouse.get_connection() as conn:
            row = send_nudges(conn, channel, day, c.event_name, c.cap_days, new_run_id(), c.full_resync)
        context.log.info(f"nudges: {row['considered']} in_app users, {row['capped']} capped, {row['unchanged']} "
                         f"already nudged, sent {row['sent']}: {row['created']} accepted, {row['rejected']} rejected, "
                         f"{row['failed']} failed" + (" (dry run)" if channel.dry_run else ""))
        return dg.MaterializeResult(metadata={
            "run_id": row["run_id"], "day": str(day), "channel": c.channel, "dry_run": channel.dry_run,
            "considered": row["considered"], "capped": row["capped"], "already_nudged": row["unchanged"],
            "sent": row["sent"], "accepted": row["created"], "rejected": row["rejected"], "failed": row["failed"],
            "calls": row["calls"]})

    return [in_app_nudges]


def latest_counts(warehouse: Warehouse, destination: str) -> dict | None:
    """The newest run of ``destination``: its counts summed over object types, how many
    object types do not reconcile or did not finish, and the records left pending (None
    before any run)."""
    with warehouse.get_connection() as conn:
        if not table_exists(conn, L.RUNS):
            return None
        found = conn.execute(f"SELECT run_id FROM {L.RUNS} WHERE destination = ? ORDER BY started_at DESC LIMIT 1",
                             [destination]).fetchall()
        if not found:
            return None
        run_id = found[0][0]
        unreconciled, unfinished, sent, accepted, rejected, failed, calls = conn.execute(f"""
            SELECT count(*) FILTER (WHERE sent <> created + updated + rejected + failed),
                   count(*) FILTER (WHERE COALESCE(status, 'completed') <> 'completed'), COALESCE(sum(sent), 0),
                   COALESCE(sum(created + updated), 0), COALESCE(sum(rejected), 0), COALESCE(sum(failed), 0),
                   COALESCE(sum(calls), 0)
            FROM {L.RUNS} WHERE run_id = ?""", [run_id]).fetchall()[0]
        pending = conn.execute(f"SELECT count(*) FROM {L.LEDGER} WHERE status = 'pending' AND (destination = ? "
                               "OR destination = ?)", [destination, f"{destination}:dry_run"]).fetchall()[0][0]
    return {"run_id": run_id, "sent": int(sent), "accepted": int(accepted), "rejected": int(rejected),
            "failed": int(failed), "calls": int(calls), "unreconciled_object_types": int(unreconciled),
            "unfinished_object_types": int(unfinished), "pending": int(pending)}


def reconciles(c: dict) -> tuple[bool, str]:
    """Whether a run's counts (``latest_counts``) reconcile, and why not: every record sent
    has an outcome, none is left pending, the run finished, and, when it made calls, the
    destination accepted at least one of the records sent (a run where every record failed or
    was refused delivered nothing: an outage or a broken request, not a sync). Records
    rejected without a call (no e-mail) are the data's problem: the clean check warns."""
    if c["unfinished_object_types"]:
        return False, "the run did not finish (interrupted): its unconfirmed records are sent again by the next run"
    if c["unreconciled_object_types"]:
        return False, "records sent without an outcome (sent <> accepted + rejected + failed)"
    if c["pending"]:
        return False, f"{c['pending']} record(s) left pending (sent without a confirmed answer)"
    if c["sent"] and not c["accepted"] and (c["calls"] or c["failed"]):
        return False, (f"none of the {c['sent']} record(s) sent was accepted: {c['failed']} failed, {c['rejected']} "
                       "rejected (sync_ledger.last_error and sync_rejections say why)")
    return True, "every record sent has an outcome"


def sync_checks(asset: str, destination: str) -> list[dg.AssetChecksDefinition]:
    """A blocking reconciliation check and a warning on rejections for a sync asset."""

    def judge(warehouse: Warehouse, verdict, severity: dg.AssetCheckSeverity) -> dg.AssetCheckResult:
        c = latest_counts(warehouse, destination)
        if c is None:
            return dg.AssetCheckResult(passed=True, metadata={"runs": 0})
        passed, why = verdict(c)
        return dg.AssetCheckResult(passed=passed, severity=severity, description=why, metadata={**c, "verdict": why})

    @dg.asset_check(asset=asset, name=f"{asset}_reconciles", blocking=True,
                    description="The newest run reconciles: it finished, every record sent was accepted, rejected or "
                                "failed (none lost), none is left pending, and the destination accepted at least one "
                                "record of those sent.")
    def reconciles_check(warehouse: Warehouse):
        return judge(warehouse, reconciles, dg.AssetCheckSeverity.ERROR)

    @dg.asset_check(asset=asset, name=f"{asset}_clean", blocking=False,
                    description="The newest run had no rejected or undelivered records (undelivered ones are retried "
                                "on the next run, rejected ones once they or the code change; sync_rejections says "
                                "why).")
    def clean(warehouse: Warehouse):
        return judge(warehouse, lambda c: (c["rejected"] == 0 and c["failed"] == 0,
                                           f"{c['rejected']} rejected, {c['failed']} failed"),
                     dg.AssetCheckSeverity.WARN)

    return [reconciles_check, clean]


def build_activation_checks(settings: Settings) -> list[dg.AssetChecksDefinition]:
    return (sync_checks("crm_sync", settings.activation.crm.destination)
            + sync_checks("in_app_nudges", settings.activation.in_app.channel))
