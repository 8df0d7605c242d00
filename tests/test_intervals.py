"""Intervals and paired tests against published / hand-counted cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from prune_lit.metrics.intervals import (
    binomial_two_sided_p,
    bootstrap_interval,
    compare_paired,
    mcnemar_exact,
    paired_bootstrap,
    per_example_intervals,
    score_interval,
    wilson_interval,
)


# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Stat. Med. 17:857, Table II,
# method 3 (Wilson score, no continuity correction); 8/10 as e.g. statsmodels' proportion_confint(method="wilson").
@pytest.mark.parametrize(
    "k, n, low, high",
    [(8, 10, 0.4902, 0.9433), (81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)],
)
def test_wilson_matches_published_values(k, n, low, high):
    ci = wilson_interval(k, n)
    assert ci.estimate == pytest.approx(k / n)
    assert ci.low == pytest.approx(low, abs=5e-5) and ci.high == pytest.approx(high, abs=5e-5)


def test_wilson_edges_and_width():
    assert wilson_interval(0, 20).low == 0.0 and wilson_interval(20, 20).high == 1.0
    assert math.isnan(wilson_interval(0, 0).low)
    # More examples, narrower interval; higher confidence, wider.
    assert wilson_interval(80, 100).high - wilson_interval(80, 100).low < wilson_interval(8, 10).high - wilson_interval(8, 10).low
    assert wilson_interval(8, 10, 0.99).low < wilson_interval(8, 10, 0.95).low
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_bootstrap_of_a_constant_is_degenerate():
    ci = bootstrap_interval([0.3] * 50)
    assert ci.low == pytest.approx(0.3) and ci.high == pytest.approx(0.3) and ci.estimate == pytest.approx(0.3)


def test_bootstrap_is_seeded_and_covers_the_normal_approximation():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, size=400)
    a, b = bootstrap_interval(x, seed=3), bootstrap_interval(x, seed=3)
    assert (a.low, a.high) == (b.low, b.high)
    assert bootstrap_interval(x, seed=4).low != a.low
    se = x.std(ddof=1) / math.sqrt(x.size)  # the percentile interval of a mean is close to ±1.96 SE here
    assert a.low == pytest.approx(x.mean() - 1.96 * se, abs=0.15 * se)
    assert a.high == pytest.approx(x.mean() + 1.96 * se, abs=0.15 * se)


def test_paired_bootstrap_of_identical_runs_has_zero_difference():
    x = np.random.default_rng(0).uniform(size=100)
    c = paired_bootstrap(x, x)
    assert c.difference == 0.0 and c.low == 0.0 and c.high == 0.0 and c.p_value == 1.0


def test_paired_bootstrap_finds_a_small_consistent_shift_an_unpaired_view_would_miss():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, size=200)  # large spread between examples ...
    b = a + 0.02 + rng.normal(0, 0.01, size=200)  # ... small, consistent gain per example
    c = paired_bootstrap(a, b, seed=0)
    assert c.difference == pytest.approx(0.02, abs=0.003)
    assert 0 < c.low < c.difference < c.high
    assert c.p_value < 0.001
    # Unpaired intervals of the two means overlap heavily.
    ia, ib = bootstrap_interval(a), bootstrap_interval(b)
    assert ib.low < ia.high


def test_paired_bootstrap_of_noise_is_not_significant():
    rng = np.random.default_rng(5)
    a = rng.uniform(size=300)
    b = a + rng.normal(0, 0.1, size=300)
    c = paired_bootstrap(a, b, seed=1)
    assert c.low < 0 < c.high and c.p_value > 0.05


def test_paired_inputs_must_match():
    with pytest.raises(ValueError, match="same examples"):
        paired_bootstrap([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_interval([1.0, float("nan")])


def test_mcnemar_on_a_hand_counted_table():
    # 15 examples: 5 both right, 1 only A right, 9 only B right, 0 both wrong.
    a = [1] * 5 + [1] * 1 + [0] * 9
    b = [1] * 5 + [0] * 1 + [1] * 9
    c = mcnemar_exact(a, b)
    assert (c.a_only, c.b_only, c.n) == (1, 9, 15)
    # Discordant 10, the smaller count 1: p = 2 (C(10,0) + C(10,1)) / 2^10 = 22/1024.
    assert c.p_value == pytest.approx(22 / 1024)
    assert c.difference == pytest.approx(8 / 15)
    assert c.mean_a == pytest.approx(6 / 15) and c.mean_b == pytest.approx(14 / 15)
    assert 0 < c.low < c.difference < c.high <= 10 / 15


def test_mcnemar_without_discordant_pairs_and_binomial_symmetry():
    c = mcnemar_exact([1, 0, 1], [1, 0, 1])
    assert c.p_value == 1.0 and c.difference == 0.0 and c.low == c.high == 0.0
    assert binomial_two_sided_p(3, 6) == 1.0
    assert binomial_two_sided_p(0, 5) == pytest.approx(2 / 32) == binomial_two_sided_p(5, 5)
    with pytest.raises(ValueError, match="binary"):
        mcnemar_exact([0.5, 1.0], [1.0, 1.0])


def test_dispatch_by_score_kind():
    assert score_interval([1, 0, 1, 1]).method == "wilson"
    assert score_interval([0.2, 0.9]).method == "bootstrap"
    assert compare_paired([1, 0, 1], [1, 1, 1]).method == "mcnemar_exact"
    assert compare_paired([0.1, 0.5, 1.0], [0.2, 0.5, 1.0]).method == "paired_bootstrap"


def test_per_example_intervals_for_results_json():
    out = per_example_intervals({"reasoning": [1, 0, 0, 1], "summarization": [0.2, 0.4]}, n_resamples=200)
    assert out["reasoning"]["method"] == "wilson" and out["reasoning"]["estimate"] == 0.5 and out["reasoning"]["n"] == 4
    assert out["summarization"]["method"] == "bootstrap" and 0.2 <= out["summarization"]["low"] <= out["summarization"]["high"] <= 0.4
