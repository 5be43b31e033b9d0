"""Drift metrics on hand-made distributions with known values."""

import math

import numpy as np
import pandas as pd
import pytest

from pql_pipeline.defs.monitoring.drift import (
    Thresholds,
    feature_drift,
    is_incident,
    js_distance,
    psi,
    quantile_edges,
    unseen_share,
    wasserstein_normed,
)


def test_psi_matches_the_formula_on_known_bins():
    # reference: 1..10 a hundred times each -> edges at the values, ten equal bins of 10 %
    ref = np.repeat(np.arange(1, 11, dtype=float), 100)
    assert list(quantile_edges(ref, 10)) == pytest.approx([1.9, 2.8, 3.7, 4.6, 5.5, 6.4, 7.3, 8.2, 9.1])
    # current: half of the rows in the top bin, the rest spread evenly over the other nine
    cur = np.concatenate([np.full(500, 10.0), np.repeat(np.arange(1, 10, dtype=float), 500 // 9)])
    c = np.array([500 // 9] * 9 + [500]) / len(cur)
    want = float(np.sum((c - 0.1) * np.log(c / 0.1)))
    assert psi(ref, cur) == pytest.approx(want, rel=1e-9)
    assert psi(ref, ref) == 0.0
    # missing values are a bin of their own: 20 % missing where the reference had none
    with_missing = np.concatenate([ref[:800], np.full(200, np.nan)])
    assert psi(ref, with_missing) > 0.25


def test_psi_is_small_for_the_same_distribution_and_large_for_a_shift():
    rng = np.random.default_rng(1)
    ref = rng.lognormal(0, 1, 50_000)
    assert psi(ref, rng.lognormal(0, 1, 50_000)) < 0.01
    assert psi(ref, rng.lognormal(0.75, 1, 50_000)) > 0.25        # three quarters of a standard deviation
    assert wasserstein_normed(ref, ref) == 0.0 and wasserstein_normed([1.0, 1.0], [2.0]) is None


def test_jensen_shannon_distance_and_unseen_categories():
    assert js_distance(["a", "b"], ["a", "b"]) == 0.0
    # p = (1/2, 1/2), q = (1, 0): JSD = 0.5 KL(p||m) + 0.5 KL(q||m), m = (3/4, 1/4), base 2
    m = (0.75, 0.25)
    kl_p = 0.5 * math.log2(0.5 / m[0]) + 0.5 * math.log2(0.5 / m[1])
    kl_q = math.log2(1 / m[0])
    assert js_distance(["a", "b"], ["a", "a"]) == pytest.approx(math.sqrt(0.5 * kl_p + 0.5 * kl_q))
    assert js_distance(["a"], ["b"]) == pytest.approx(1.0)          # disjoint: the maximum
    assert unseen_share(["a", "b", None], ["a", "c", "c", None]) == pytest.approx(2 / 3)


def test_verdicts_warn_alert_and_insufficient_data():
    rng = np.random.default_rng(2)
    ref = pd.DataFrame({"x": rng.normal(0, 1, 5000), "y": rng.normal(0, 1, 5000),
                        "plan": ["free"] * 2500 + ["trial"] * 2500, "seat": ["a"] * 2500 + ["b"] * 2500})
    cur = pd.DataFrame({"x": rng.normal(0, 1, 5000), "y": rng.normal(1.0, 1, 5000),
                        "plan": ["free"] * 2470 + ["trial"] * 2470 + ["pro"] * 60,
                        "seat": ["a"] * 1000 + ["b"] * 4000})
    out = feature_drift(ref, cur, ["x", "y"], ["plan", "seat"]).set_index("feature")
    assert out.loc["x", "verdict"] == "ok" and out.loc["y", "verdict"] == "alert"
    # a new plan on 1.2 % of the rows: the distance stays small (0.078), the unseen share warns
    assert out.loc["plan", "value"] < 0.1 and out.loc["plan", "secondary"] == 0.012
    assert out.loc["plan", "verdict"] == "warn"
    # 50/50 -> 20/80: JS distance 0.27, an alert
    assert out.loc["seat", "value"] == pytest.approx(0.2704, abs=1e-3) and out.loc["seat", "verdict"] == "alert"
    few = feature_drift(ref.head(50), cur.head(50), ["x", "y"], ["plan"], Thresholds(min_rows=1000))
    assert set(few["verdict"]) == {"insufficient_data"}


def test_an_alert_is_an_incident_only_if_it_repeats():
    assert not is_incident(["alert", "ok", "ok"])
    assert is_incident(["alert", "ok", "alert"])
    assert is_incident(["alert", "alert"])
    assert not is_incident(["ok", "ok", "alert", "alert"])             # only the newest three count
    assert not is_incident(["insufficient_data", "alert", "insufficient_data"])
