"""What production destinations do that a happy path never shows, against real HTTP
stand-ins on 127.0.0.1 that validate every body against the published OpenAPI schemas:
answers without the optional trace ids, permanent refusals, unusable URLs, and servers
that quote the credentials back."""

import datetime as dt
import json
import logging

import pandas as pd
import pytest

from pql_pipeline.defs.activation import ledger as L
from pql_pipeline.defs.activation.assets import reconciles
from pql_pipeline.defs.activation.hubspot import DestinationError, HubSpotClient, match_outcomes
from pql_pipeline.defs.activation.sync import sync_records
from pql_pipeline.lib.secrets import redact
from pql_pipeline.settings import ConfigError, load_settings
from pql_pipeline_tests.defs.activation import spec
from pql_pipeline_tests.defs.activation.fake_hubspot import FakeHubSpot, fast_client

TOKEN = "pat-na1-1111-ECHOED-TOKEN/with+chars=="
DAY = dt.date(2026, 3, 31)


@pytest.fixture
def hub():
    with FakeHubSpot(token=TOKEN) as server:
        yield server


def client(url, token=TOKEN, **kw) -> HubSpotClient:
    return fast_client(url, token, **{"max_attempts": 3, **kw})


def companies(n: int, tier: str = "hot") -> pd.DataFrame:
    return pd.DataFrame({
        "record_key": [f"acc_{i}" for i in range(n)], "id_value": [f"acc_{i}" for i in range(n)],
        "properties": [{"pql_account_id": f"acc_{i}", "pql_score": 0.5 + i / 1000, "pql_tier": tier,
                        "pql_is_pql": True, "pql_users": i, "pql_caveats": None} for i in range(n)],
        "snapshot_date": DAY})


def sync(conn, c, records, object_type="companies", id_property="pql_account_id"):
    return sync_records(conn, c, "hubspot", object_type, id_property, records, DAY,
                        f"run-{dt.datetime.now().timestamp()}")


def test_every_body_sent_is_valid_against_the_published_schemas(conn, hub):
    """Companies and contacts, with every kind of property value the records carry."""
    sync(conn, client(hub.url), companies(130))
    contacts = pd.DataFrame({"record_key": ["u1", "u2"], "id_value": ["A@Example.com", "b@example.com"],
                             "properties": [{"email": "A@Example.com", "pql_score": 0.25, "pql_is_pql": False,
                                             "pql_milestones": None}, {"email": "b@example.com", "pql_users": 3}],
                             "snapshot_date": DAY})
    sync(conn, client(hub.url), contacts, "contacts", "email")
    bodies = [json.loads(r["body"]) for r in hub.calls()]
    assert len(bodies) == 3 and hub.spec_violations == []
    assert all(spec.problems(spec.HUBSPOT, "BatchInputSimplePublicObjectBatchInputUpsert", b) == [] for b in bodies)
    # the stand-in refuses what the schema refuses (a number where a string belongs)
    assert spec.problems(spec.HUBSPOT, "BatchInputSimplePublicObjectBatchInputUpsert",
                         {"inputs": [{"id": "a", "properties": {"pql_score": 0.5}}]})


def test_answers_without_trace_ids_are_matched_by_the_echoed_id_property(conn, hub):
    """objectWriteTraceId is optional in the spec: accepted records are never re-sent, and
    rejections keep their message, over three runs."""
    hub.trace_ids = False
    hub.reject = lambda t, inp: "Property values were not valid: pql_tier" if inp["id"] in ("acc_3", "acc_4") else None
    c = client(hub.url)
    first = sync(conn, c, companies(150))
    assert (first["created"], first["rejected"], first["failed"]) == (148, 2, 0)
    errors = dict(conn.execute(f"SELECT record_key, error FROM {L.REJECTIONS}").fetchall())
    assert errors == {"acc_3": "VALIDATION_ERROR: Property values were not valid: pql_tier",
                      "acc_4": "VALIDATION_ERROR: Property values were not valid: pql_tier"}
    for _ in range(2):
        again = sync(conn, c, companies(150))
        assert (again["sent"], again["calls"], again["unchanged"], again["held"]) == (0, 0, 148, 2)
    assert max(hub.upserts.values()) == 1 and len(hub.calls()) == 2
    # e-mails are matched without case, as HubSpot stores them
    records = [("u1", "Mixed@Example.COM", {}), ("u2", "other@example.com", {})]
    answer = {"status": "COMPLETE", "results": [{"id": "9", "new": True, "properties": {"email": "mixed@example.com"}}]}
    outcomes = {o.record_key: o for o in match_outcomes(200, answer, records, "email")}
    assert outcomes["u1"].status == "synced" and outcomes["u1"].remote_id == "9"
    assert outcomes["u2"].status == "failed"        # not confirmed: sent again, never assumed accepted


def test_a_permanent_refusal_is_recorded_once_and_not_sent_again(conn, hub):
    hub.refuse = "Property pql_tier does not exist"
    c = client(hub.url)
    first = sync(conn, c, companies(36))
    # the batch, its two halves and one record of each: all refused with the same words, so the batch's
    # fault, not a record's
    assert (first["sent"], first["rejected"], first["failed"], first["calls"]) == (36, 36, 0, 5)
    assert conn.execute(f"SELECT DISTINCT error FROM {L.REJECTIONS}").fetchall() == [
        ("400: Property pql_tier does not exist",)]
    second = sync(conn, c, companies(36))
    assert (second["sent"], second["held"], second["calls"]) == (0, 36, 0) and len(hub.calls()) == 5
    # a sync where nothing was accepted does not reconcile
    verdict = {"run_id": "r", "sent": 36, "accepted": 0, "rejected": 36, "failed": 0, "calls": 3,
               "unreconciled_object_types": 0, "unfinished_object_types": 0, "pending": 0}
    assert not reconciles(verdict)[0] and "none of the 36" in reconciles(verdict)[1]
    assert reconciles({**verdict, "accepted": 1, "rejected": 35})[0]
    assert reconciles({**verdict, "sent": 1, "rejected": 1, "calls": 0})[0]     # refused locally (no e-mail)
    # once the records change, they are sent again
    hub.refuse = None
    fixed = sync(conn, c, companies(36, tier="warm"))
    assert (fixed["retried"], fixed["created"]) == (36, 36)


def test_a_batch_refused_for_one_invalid_record_is_split_until_that_record_is_found(conn, hub):
    hub.refuse_batch = lambda t, inp: (f"Property values were not valid: {inp['id']} has an invalid pql_tier"
                                       if inp["id"] in ("acc_7", "acc_30") else None)
    c = client(hub.url)
    row = sync(conn, c, companies(36))
    assert (row["created"], row["rejected"], row["failed"]) == (34, 2, 0)
    assert dict(conn.execute(f"SELECT record_key, error FROM {L.REJECTIONS}").fetchall()) == {
        "acc_7": "400: Property values were not valid: acc_7 has an invalid pql_tier",
        "acc_30": "400: Property values were not valid: acc_30 has an invalid pql_tier"}
    assert row["calls"] <= 1 + 2 * 2 * 6           # a binary search per refused record, not one call per record
    assert max(hub.upserts.values()) == 1 and len(hub.objects) == 34
    again = sync(conn, c, companies(36))
    assert (again["held"], again["unchanged"], again["calls"]) == (2, 34, 0)


def test_the_same_refusal_from_two_invalid_records_does_not_reject_the_valid_ones(conn, hub):
    """HubSpot's words do not name the record: both halves can repeat them for different records."""
    hub.refuse_batch = lambda t, inp: ("hot was not one of the allowed options"
                                       if inp["id"] in ("acc_1", "acc_6") else None)
    row = sync(conn, client(hub.url), companies(8))
    assert (row["created"], row["rejected"]) == (6, 2)
    assert {k for (k,) in conn.execute(f"SELECT record_key FROM {L.REJECTIONS}").fetchall()} == {"acc_1", "acc_6"}


def test_a_refused_record_stays_held_when_it_is_no_longer_wanted_or_an_older_day_is_synced(conn, hub):
    hub.refuse_batch = lambda t, inp: "invalid" if inp["id"] == "acc_0" else None
    c = client(hub.url)
    sync(conn, c, companies(2))
    calls = len(hub.calls())
    gone = sync(conn, c, companies(2).iloc[1:])                     # acc_0 no longer wanted
    before = DAY - dt.timedelta(days=3)                             # a backfill of an older day
    older = sync_records(conn, c, "hubspot", "companies", "pql_account_id",
                         companies(2, tier="warm").assign(snapshot_date=before), before, "backfill")
    assert gone["sent"] == older["sent"] == 0 and len(hub.calls()) == calls


def test_a_wrong_endpoint_stops_the_sync_with_what_to_check(conn, hub):
    c = client(hub.url + "/wrong-prefix")
    with pytest.raises(DestinationError, match="404 .*check activation.crm.base_url"):
        sync(conn, c, companies(5))
    assert c.stats.calls == 1


def test_transient_failures_of_every_record_do_not_reconcile(conn, hub):
    hub.faults.extend(["500"] * 3)
    row = sync(conn, client(hub.url, max_attempts=3), companies(36))
    assert (row["sent"], row["failed"], row["calls"]) == (36, 36, 3)
    ok, why = reconciles({"run_id": "r", "sent": 36, "accepted": 0, "rejected": 0, "failed": 36, "calls": 3,
                          "unreconciled_object_types": 0, "unfinished_object_types": 0, "pending": 0})
    assert not ok and "36 failed" in why
    nxt = sync(conn, client(hub.url), companies(36))      # a transient failure is retried by the next run
    assert (nxt["retried"], nxt["created"]) == (36, 36)


@pytest.mark.parametrize("url", ["htp://api.hubapi.com", "api.hubapi.com", "https://", "https://api hubapi.com",
                                 "https://api.hubapi.com:port"])
def test_a_malformed_url_is_refused_when_the_configuration_is_loaded(tmp_path, url):
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text(f"activation:\n  crm:\n    base_url: {json.dumps(url)}\n")
    with pytest.raises(ConfigError) as e:
        load_settings(cfg)
    assert f"{cfg} line 3 (activation.crm.base_url)" in str(e.value) and "URL" in str(e.value)


def test_a_url_that_cannot_be_requested_stops_the_sync_without_retries(conn):
    c = client("http://[::1", max_attempts=6)
    with pytest.raises(DestinationError, match="cannot be requested"):
        sync(conn, c, companies(3))
    assert c.stats.calls == 1 and c.stats.retries == 0
    assert conn.execute(f"SELECT count(*) FROM {L.LEDGER} WHERE status = 'pending'").fetchall()[0][0] == 3


def test_a_server_quoting_the_token_back_leaves_it_nowhere(conn, hub, caplog):
    hub.echo_auth = True
    hub.reject = lambda t, inp: "invalid value" if inp["id"] == "acc_1" else None
    hub.faults.extend(["500", "500", "500"])          # the first batch: three 500s quoting the header
    c = client(hub.url)
    with caplog.at_level(logging.DEBUG):
        sync(conn, c, companies(5))                    # every attempt failed with an echoing error
        sync(conn, c, companies(5))                    # a 207 whose message quotes the header
        bad = client(hub.url, token=TOKEN + "-revoked")
        with pytest.raises(DestinationError) as e:     # a 401 quoting the wrong token
            sync(conn, bad, companies(5, tier="warm"))
    stored = " ".join(str(v) for t in (L.LEDGER, L.OUTBOX, L.RUNS, L.REJECTIONS)
                      for row in conn.execute(f"SELECT * FROM {t}").fetchall() for v in row)
    assert "[redacted]" in stored                      # the quoted header was there, and was removed
    for text in (stored, str(e.value), caplog.text):
        assert TOKEN not in text and "ECHOED-TOKEN" not in text
    assert "ECHOED" not in redact(json.dumps({"m": f"Bearer {TOKEN}"}), [TOKEN])
    # redacted before it is shortened: a token cut at the limit would not be recognised
    long = {"message": "x" * 280 + f" {TOKEN}"}
    answer = type("Answer", (), {"json": lambda self: long, "text": json.dumps(long)})()
    assert "pat-na1" not in c.transport.message(answer)
    assert redact("signed sha256=" + "ab" * 32) == "signed sha256=[redacted]"
