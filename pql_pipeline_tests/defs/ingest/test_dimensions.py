from pql_pipeline.defs.ingest.dimensions import build_accounts, build_users
from pql_pipeline.settings import load_settings
from pql_pipeline_tests.conftest import track, write_lines
from pql_pipeline_tests.defs.ingest.test_validation import ingest


def test_traits_merge_latest_wins_and_history_is_kept(tmp_path, conn, segment_contract):
    write_lines(tmp_path / "dt=2026-01-02" / "a.jsonl", [
        {"messageId": "i1", "type": "identify", "userId": "u1", "timestamp": "2026-01-02T09:00:00Z",
         "traits": {"email": "old@x.io", "name": "Ann", "role": "admin"}},
        {"messageId": "i2", "type": "identify", "userId": "u1", "timestamp": "2026-01-02T10:00:00Z",
         "traits": {"email": "new@x.io"}},  # partial update: name and role carry over
        {"messageId": "i3", "type": "identify", "userId": "u1", "timestamp": "2026-01-02T11:00:00Z",
         "traits": {"email": "new@x.io"}},  # no change: no new version
        {"messageId": "g1", "type": "group", "userId": "u1", "groupId": "a1", "timestamp": "2026-01-02T09:00:00Z",
         "traits": {"name": "Acme", "employees": 40, "country": "de", "plan": "free"}},
        {"messageId": "g2", "type": "group", "userId": "u1", "groupId": "a1", "timestamp": "2026-01-03T09:00:00Z",
         "receivedAt": "2026-01-02T12:00:00Z", "traits": {"plan": "pro", "employees": "2000"}},
        {"messageId": "g3", "type": "group", "userId": "u2", "groupId": "a2", "timestamp": "2026-01-02T09:00:00Z",
         "traits": {"name": "Solo"}},
        track("t1", "Feature Used", "2026-01-02T12:00:00Z", user="u3", feature="x"),
    ])
    ingest(conn, tmp_path, segment_contract, "2026-01-02")
    assert build_users(conn) == 3
    hist = conn.execute("SELECT version, email, name, role, is_current, valid_to IS NULL FROM users_history "
                        "WHERE user_id = 'u1' ORDER BY version").fetchall()
    assert hist == [(1, "old@x.io", "Ann", "admin", False, False), (2, "new@x.io", "Ann", "admin", True, True)]
    u = dict(conn.execute("SELECT user_id, version FROM users").fetchall())
    assert u == {"u1": 2, "u2": 0, "u3": 0}  # u2 / u3 never identified but seen
    assert conn.execute("SELECT account_id FROM users WHERE user_id = 'u1'").fetchall() == [("a1",)]

    assert build_accounts(conn, load_settings().segments) == 2
    acc = {r[0]: r[1:] for r in conn.execute(
        "SELECT account_id, name, employees, country, plan, size_segment, version, user_count FROM accounts").fetchall()}
    assert acc["a1"] == ("Acme", 2000, "DE", "pro", "enterprise", 2, 1)
    assert acc["a2"] == ("Solo", None, None, None, "unknown", 1, 1)
    seg = conn.execute("SELECT size_segment FROM accounts_history WHERE account_id = 'a1' ORDER BY version").fetchall()
    assert seg == [("smb",), ("enterprise",)]
