"""Charts drawn for the UI's metadata and the PQL report: real PNG images of the expected
size, robust to missing values, and a drawing error that becomes a sentence, not a crash."""

import io
import logging

import numpy as np
import pytest
from PIL import Image

from pql_pipeline.lib import charts as C


def size(png: bytes) -> tuple[int, int]:
    assert png.startswith(C.PNG_SIGNATURE)
    with Image.open(io.BytesIO(png)) as im:
        return im.size


DAYS = [f"2026-01-{d:02d}" for d in range(1, 31)]


@pytest.mark.parametrize("draw", [
    lambda: C.decile_chart([{"decile": i, "lift": 3 / i} for i in range(1, 11)]),
    lambda: C.calibration_chart([{"mean_predicted": p, "observed": p * 0.9} for p in np.linspace(0.05, 0.9, 10)]),
    lambda: C.lift_chart([{"snapshot_date": d, "definition": n, "lift": lift}
                          for d in DAYS[:8] for n, lift in (("model", 3.0), ("classic_rule", 1.5))]),
    lambda: C.score_distribution_chart(np.random.default_rng(1).beta(1, 8, 50_000), {"hot": 0.3, "warm": 0.1},
                                       "2026-01-09"),
    lambda: C.pqls_per_day_chart(DAYS, {"sales": [3] * 30, "in_app": list(range(30))}),
    lambda: C.quarantine_chart(DAYS, [0.01] * 30, 0.005, 0.05),
], ids=["deciles", "calibration", "lift", "distribution", "pqls_per_day", "quarantine"])
def test_each_chart_is_a_png_of_the_metadata_size(draw):
    assert size(draw()) == (640, 320)


def test_drift_bars_take_the_colour_of_their_verdict():
    alert = (0xC5, 0x30, 0x30)
    ok = C.drift_chart([("a", 0.01), ("b", 0.02)], warn=0.1, alert=0.25, reference="training")
    drifted = C.drift_chart([("a", 0.01), ("b", 0.6)], warn=0.1, alert=0.25, reference="training")
    count = {}
    for name, png in (("ok", ok), ("drifted", drifted)):
        with Image.open(io.BytesIO(png)) as im:
            count[name] = sum(n for n, c in im.convert("RGB").getcolors(maxcolors=1 << 20) if c == alert)
    # the dashed alert line is red in both; a drifted feature adds a whole red bar
    assert count["drifted"] > count["ok"] + 2000


def test_missing_values_are_drawn_as_gaps_not_errors():
    png = C.line_chart(["d1", "d2", "d3"], {"lift": [2.0, None, float("nan")]}, title="t")
    assert size(png) == (640, 320)
    assert size(C.histogram([np.nan, 0.2, None], title="h")) == (640, 320)
    assert size(C.pqls_per_day_chart([], {})) == (640, 320)


def test_a_chart_that_cannot_be_drawn_becomes_a_sentence_and_a_warning(caplog):
    log = logging.getLogger("charts-test")

    def broken():
        raise ValueError("no rows")

    with caplog.at_level(logging.WARNING, logger="charts-test"):
        text = C.chart_md(broken, "lift by decile", "| a |\n|---|\n| 1 |", log)
    assert text.startswith("_chart 'lift by decile' could not be drawn (ValueError: no rows)")
    assert text.endswith("| 1 |") and "could not be drawn" in caplog.text


def test_markdown_images_round_trip():
    png = C.decile_chart([{"decile": 1, "lift": 2.0}])
    md = C.chart_md(lambda: png, "lift", "table")
    assert md.startswith("![lift](data:image/png;base64,") and C.decode_md_images(md) == [png]
