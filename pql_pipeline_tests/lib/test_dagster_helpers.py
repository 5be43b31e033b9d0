"""The helpers every stage's assets share."""

import datetime as dt
from types import SimpleNamespace

from pql_pipeline.lib.dagster_helpers import partition_days


def test_a_runs_partitions_are_its_days_oldest_first():
    # a single-run range hands its keys over in the partitions definition's order; a caller
    # takes the newest as [-1] and the range's first as [0]
    context = SimpleNamespace(partition_keys=["2026-03-03", "2026-03-01", "2026-03-02"])
    assert partition_days(context) == [dt.date(2026, 3, 1), dt.date(2026, 3, 2), dt.date(2026, 3, 3)]
    assert partition_days(SimpleNamespace(partition_keys=["2026-12-31"])) == [dt.date(2026, 12, 31)]
