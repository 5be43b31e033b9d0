import gzip

import duckdb

from pql_pipeline.defs.ingest.loader import RAW_SCHEMA, available_partitions, partition_files, read_jsonl
from pql_pipeline.defs.ingest.raw import load_partition


def _rows(f, chunk=1 << 20):
    out = []
    for b in read_jsonl(f, chunk_bytes=chunk):
        out += list(zip(b.column("line_no").to_pylist(), b.column("raw_line").to_pylist(),
                        b.column("utf8_valid").to_pylist(), b.column("line_bytes").to_pylist()))
    return out


def test_every_physical_line_is_kept(tmp_path):
    d = tmp_path / "dt=2026-01-02"
    d.mkdir()
    (d / "a.jsonl").write_bytes(b'{"a":1}\r\n\n{"b":\xff}\n{"c":3}')  # CRLF, blank, bad bytes, no final newline
    (f,) = partition_files(tmp_path, "dt={date}/*.jsonl*", "2026-01-02")
    rows = _rows(f, chunk=5)  # tiny chunks: lines span chunk boundaries
    assert [r[0] for r in rows] == [1, 2, 3, 4]
    assert rows[0][1] == '{"a":1}' and rows[1][1] == ""
    assert rows[2][2] is False and rows[2][1] == '{"b":\\xff}' and rows[2][3] == 7
    assert rows[3][1] == '{"c":3}'


def test_gzip_and_file_order(tmp_path):
    d = tmp_path / "dt=2026-01-02"
    d.mkdir()
    with gzip.open(d / "b.jsonl.gz", "wb") as g:
        g.write(b'{"x":1}\n{"x":2}\n')
    (d / "a.jsonl").write_bytes(b'{"y":1}\n')
    (d / "notes.txt").write_text("ignored: does not match the pattern")
    files = partition_files(tmp_path, "dt={date}/*.jsonl*", "2026-01-02")
    assert [f.relative for f in files] == ["dt=2026-01-02/a.jsonl", "dt=2026-01-02/b.jsonl.gz"]
    assert [r[1] for r in _rows(files[1])] == ['{"x":1}', '{"x":2}']


def test_available_partitions(tmp_path):
    for day in ("2026-01-03", "2026-01-01"):
        (tmp_path / f"dt={day}").mkdir()
        (tmp_path / f"dt={day}" / "e.jsonl").write_text("{}\n")
    (tmp_path / "dt=2026-01-02").mkdir()  # no files: not a partition
    (tmp_path / "_ground_truth").mkdir()
    (tmp_path / "_ground_truth" / "users.csv").write_text("x")
    assert available_partitions(tmp_path, "dt={date}/*.jsonl*") == ["2026-01-01", "2026-01-03"]
    assert available_partitions(tmp_path / "missing", "dt={date}/*.jsonl*") == []


def test_parquet_rows_become_json_lines(tmp_path, conn, segment_contract):
    d = tmp_path / "dt=2026-01-02"
    d.mkdir()
    duckdb.sql(f"""COPY (SELECT 'm' || i AS messageId, CASE WHEN i = 2 THEN 'bogus' ELSE 'track' END AS type,
                             'Feature Used' AS event, 'u1' AS userId, '2026-01-02T10:00:00Z' AS timestamp,
                             {{'feature': 'x'}} AS properties FROM range(3) t(i))
                   TO '{d / "part-0.parquet"}' (FORMAT parquet)""")
    r = load_partition(conn, tmp_path, "dt={date}/*.parquet", "parquet", "2026-01-02", segment_contract)
    assert r.rows == 3
    lines = conn.execute("SELECT line_no, message_id, CAST(properties AS VARCHAR), rule_ids, raw_line "
                         "FROM raw_events ORDER BY line_no").fetchall()
    # a good row is parsed (its text is not kept); a bad one keeps its text as a JSON line
    assert lines[0][:4] == (1, "m0", '{"feature":"x"}', []) and lines[0][4] is None
    assert lines[2][3][0] == "type.allowed"
    assert '"messageId":"m2"' in lines[2][4] and '"properties":{"feature":"x"}' in lines[2][4]


def test_reload_replaces_the_partition(tmp_path, conn, segment_contract):
    d = tmp_path / "dt=2026-01-02"
    d.mkdir()
    (d / "a.jsonl").write_text("{}\n{}\n")
    load_partition(conn, tmp_path, "dt={date}/*.jsonl", "jsonl", "2026-01-02", segment_contract)
    (d / "a.jsonl").write_text("{}\n")
    r = load_partition(conn, tmp_path, "dt={date}/*.jsonl", "jsonl", "2026-01-02", segment_contract)
    assert r.rows == 1
    assert conn.execute("SELECT count(*) FROM raw_events").fetchall()[0][0] == 1


def test_a_range_loads_what_its_days_load_one_by_one(tmp_path, conn, segment_contract):
    """Lines held for parsing across files, days and commits (and a day listed twice) end up
    as loading each day alone leaves them."""
    from pql_pipeline.defs.ingest.raw import load_partitions
    from pql_pipeline_tests.conftest import track, write_lines

    days = ["2026-01-02", "2026-01-03", "2026-01-04"]
    for i, day in enumerate(days):
        write_lines(tmp_path / f"dt={day}" / "a.jsonl",
                    [track(f"m{i}{j}", "Feature Used", f"{day}T10:0{j}:00Z", feature="x") for j in range(3)] + ["{"])
        write_lines(tmp_path / f"dt={day}" / "b.jsonl", [track(f"n{i}", "Feature Used", f"{day}T11:00:00Z")])
    pattern = "dt={date}/*.jsonl"
    for day in days:
        load_partition(conn, tmp_path, pattern, "jsonl", day, segment_contract)
    alone = conn.execute("SELECT * FROM raw_events ORDER BY ALL").fetchall()
    loads = load_partitions(conn, tmp_path, pattern, "jsonl", days + days[:1], segment_contract,
                            commit_rows=5, parse_rows=2)
    assert [r.rows for r in loads] == [5, 5, 5]
    assert conn.execute("SELECT * FROM raw_events ORDER BY ALL").fetchall() == alone
    # every line held until the end: the repeated day is not loaded twice
    load_partitions(conn, tmp_path, pattern, "jsonl", days + days[:1], segment_contract)
    assert conn.execute("SELECT * FROM raw_events ORDER BY ALL").fetchall() == alone
    assert len(alone) == 15
    # a bad line keeps its text, a good one does not (b.jsonl lacks the required feature property)
    assert conn.execute("SELECT count(*) FILTER (WHERE raw_line IS NOT NULL), "
                        "count(*) FILTER (WHERE len(rule_ids) > 0), count(*) FILTER (WHERE raw_line = '{') "
                        "FROM raw_events").fetchall() == [(6, 6, 3)]


def test_root_with_glob_characters(tmp_path):
    root = tmp_path / "exports [prod]"
    (root / "dt=2026-01-02").mkdir(parents=True)
    (root / "dt=2026-01-02" / "e.jsonl").write_text("{}\n")
    assert available_partitions(root, "dt={date}/*.jsonl*") == ["2026-01-02"]
    assert [f.relative for f in partition_files(root, "dt={date}/*.jsonl*", "2026-01-02")] == ["dt=2026-01-02/e.jsonl"]


def _lines_of(path, name):
    import pyarrow as pa

    from pql_pipeline.defs.ingest.loader import SourceFile, read_jsonl

    t = pa.Table.from_batches(list(read_jsonl(SourceFile(path, name, path.stat().st_size), chunk_bytes=1 << 20)),
                              schema=RAW_SCHEMA)
    return t.column("raw_line").to_pylist(), [e for e in t.column("read_error").to_pylist() if e]


def test_gzip_members_padding_truncation_and_corruption(tmp_path):
    """Every readable line is kept; an unreadable rest is one row saying where and why."""
    import gzip
    import json

    lines = [json.dumps({"messageId": f"m{i}", "n": i * 7919 % 100003}) for i in range(30000)]
    data = ("\n".join(lines) + "\n").encode()
    half = len(data) // 2
    whole = gzip.compress(data)
    cases = {
        "members-padded.jsonl.gz": gzip.compress(data[:half]) + b"\0" * 1000 + gzip.compress(data[half:]) + b"\0" * 8,
        "truncated.jsonl.gz": whole[: len(whole) // 2],
        "zeros.jsonl.gz": b"\0" * 4096,
        "corrupt.jsonl.gz": whole[:2000] + b"\xff" * 64 + whole[2064:],
    }
    got = {}
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        got[name] = _lines_of(tmp_path / name, name)
    assert got["members-padded.jsonl.gz"] == (lines, [])
    read, [why] = got["truncated.jsonl.gz"]
    assert 10000 < len(read) - 1 < 30000 and read[:-1] == lines[: len(read) - 1]
    assert why.startswith("file truncated.jsonl.gz unreadable from byte ") and "end-of-stream marker" in why
    assert f"its {len(read) - 1:,} whole line(s) before that point were loaded" in why
    assert got["zeros.jsonl.gz"][0] == [""] and "zeros.jsonl.gz unreadable from byte 0" in got["zeros.jsonl.gz"][1][0]
    read, [why] = got["corrupt.jsonl.gz"]
    assert read[:100] == lines[:100] and "corrupt compressed data" in why     # the lines before the fault are kept


def test_the_fast_split_gives_what_the_careful_one_gives():
    """Blocks of random bytes (newlines, ASCII, valid and broken UTF-8 sequences): the lines,
    the indexes of the lines that are not UTF-8 and their byte lengths are the same whichever
    path splits them."""
    import random

    import pyarrow as pa

    from pql_pipeline.defs.ingest.loader import _decode_block, _split_fast

    rng = random.Random(7)
    alphabet = [0x61, 0x0A, 0x7B, 0xC3, 0xA9, 0xFF, 0x80, 0xE2, 0x82, 0xAC, 0xF0, 0x9F, 0x98, 0xED, 0xB2]
    blocks = [b"", b"\n", b"\n\n", b"\xff\n", b"\n\xff", "é\nü".encode(), b"\xed\xb2\x80\nok"]
    blocks += [b"\n".join(bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
                          for _ in range(rng.randint(0, 8))) for _ in range(500)]
    broken = 0
    for block in blocks:
        lines, bad, bad_bytes = _decode_block(block)
        fast, fast_bad, fast_bytes = _split_fast(block)
        assert (fast.to_pylist(), fast_bad, fast_bytes) == (pa.array(lines, pa.string()).to_pylist(), bad, bad_bytes)
        broken += len(bad)
    assert broken > 100
    assert _split_fast(b"a\r\nb") is None      # a carriage return takes the careful path
