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


def test_a_day_against_the_median_of_the_days_before():
    from pql_pipeline.lib.trends import ratio_to_median

    assert ratio_to_median(40, [9, 11, 10, 500]) == (10.5, 40 / 10.5)     # an even count: the mean of the middle two
    assert ratio_to_median(5, [10, 2, 30]) == (10, 0.5)
    assert ratio_to_median(0, [0, 0]) == (0, 1.0)                         # nothing then, nothing now: no change
    assert ratio_to_median(3, [0, 0]) == (0, float("inf"))
    assert ratio_to_median(7, []) == (None, None)                         # no history to judge against
