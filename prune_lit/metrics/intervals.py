"""Confidence intervals and paired tests for evaluation scores.

- `wilson_interval`: accuracy ``k`` of ``n`` (Wilson score interval; sensible at small ``n`` and near 0/1).
- `bootstrap_interval`: mean of per-example scores (e.g. ROUGE), percentile bootstrap.
- `paired_bootstrap`: two runs scored on the same examples: the difference of means with a percentile
  bootstrap interval and a two-sided p-value (resampling examples, keeping the pairs).
- `mcnemar_exact`: two runs' binary outcomes on the same examples (exact binomial test on the discordant pairs).

Every resampling function takes a ``seed``, so a report is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

Scores = Sequence[float] | np.ndarray

DEFAULT_RESAMPLES = 10_000
_CHUNK = 2_000_000  # resampled indices held at once (int64): bounds memory for large n


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided interval at ``confidence``."""

    estimate: float
    low: float
    high: float
    n: int
    confidence: float
    method: str

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


@dataclass(frozen=True)
class PairedComparison:
    """Run B minus run A on the same ``n`` examples: the difference of means, its interval and a p-value.

    McNemar also fills ``a_only`` / ``b_only``: examples only A (only B) got right.
    """

    mean_a: float
    mean_b: float
    difference: float
    low: float
    high: float
    p_value: float
    n: int
    confidence: float
    method: str
    a_only: int | None = None
    b_only: int | None = None

    def as_dict(self) -> dict[str, float | int | str | None]:
        return asdict(self)


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval for a proportion ``k / n`` (NaN interval when ``n == 0``)."""
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    z = _z(confidence)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, confidence, "wilson")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At k = 0 (k = n) the lower (upper) end is exactly 0 (1); the formula gives it only up to rounding.
    low = 0.0 if k == 0 else centre - half
    high = 1.0 if k == n else centre + half
    return Interval(p, low, high, n, confidence, "wilson")


def _as_array(scores: Scores, name: str = "scores") -> np.ndarray:
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {x.shape}")
    if np.isnan(x).any():
        raise ValueError(f"{name} hold NaN; drop unscored examples first")
    return x


def bootstrap_means(values: np.ndarray, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """``[n_resamples]`` means of ``values [n]`` resampled with replacement (seeded, chunked for memory)."""
    n = values.shape[0]
    rng = np.random.default_rng(seed)
    out = np.empty(n_resamples)
    step = max(_CHUNK // max(n, 1), 1)
    for i in range(0, n_resamples, step):
        m = min(step, n_resamples - i)
        out[i : i + m] = values[rng.integers(0, n, size=(m, n))].mean(axis=1)
    return out


def _percentiles(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    _z(confidence)  # validates
    alpha = (1 - confidence) / 2
    low, high = np.quantile(draws, [alpha, 1 - alpha])
    return float(low), float(high)


def bootstrap_interval(scores: Scores, confidence: float = 0.95, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Interval:
    """Percentile bootstrap interval for the mean of per-example ``scores [n]`` (NaN interval when empty)."""
    x = _as_array(scores)
    if x.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0, confidence, "bootstrap")
    low, high = _percentiles(bootstrap_means(x, n_resamples, seed), confidence)
    return Interval(float(x.mean()), low, high, int(x.size), confidence, "bootstrap")


def _paired(a: Scores, b: Scores) -> tuple[np.ndarray, np.ndarray]:
    xa, xb = _as_array(a, "a"), _as_array(b, "b")
    if xa.shape != xb.shape:
        raise ValueError(f"paired scores need the same examples: got {xa.size} and {xb.size}")
    if xa.size == 0:
        raise ValueError("no examples to compare")
    return xa, xb


def paired_bootstrap(
    a: Scores, b: Scores, confidence: float = 0.95, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> PairedComparison:
    """Difference of means ``mean(b) - mean(a)`` over the same examples, resampling examples as pairs.

    Interval: percentiles of the resampled differences. p-value (two-sided, for "no difference"): the share of
    resampled differences, centred on the observed one, at least as far from 0 as the observed one
    (the shift method), with +1 in numerator and denominator so it is never 0. Like any bootstrap it needs a
    few dozen examples: with a handful whose differences share a sign it reports p ≈ 1/(n_resamples + 1).
    """
    xa, xb = _paired(a, b)
    d = xb - xa
    observed = float(d.mean())
    draws = bootstrap_means(d, n_resamples, seed)
    low, high = _percentiles(draws, confidence)
    # The tolerance keeps float noise from counting as "farther" when draws equal the observed value.
    tol = 1e-12 * max(1.0, abs(observed))
    extreme = int(np.sum(np.abs(draws - observed) >= abs(observed) - tol))
    p = (extreme + 1) / (n_resamples + 1)
    return PairedComparison(float(xa.mean()), float(xb.mean()), observed, low, high, min(p, 1.0), int(d.size), confidence, "paired_bootstrap")


def binomial_two_sided_p(k: int, n: int) -> float:
    """Exact two-sided p-value of ``k`` successes in ``n`` fair coin flips: ``min(1, 2 P(X <= min(k, n-k)))``."""
    if n == 0:
        return 1.0
    m = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(m + 1)) / 2**n
    return min(1.0, 2 * tail)


def is_binary(scores: Scores) -> bool:
    x = np.asarray(scores, dtype=np.float64)
    return x.size > 0 and bool(np.isin(x, (0.0, 1.0)).all())


def mcnemar_exact(a: Scores, b: Scores, confidence: float = 0.95) -> PairedComparison:
    """Exact McNemar test of binary outcomes (1 = right) of runs A and B on the same examples.

    Only discordant examples count: ``a_only`` (A right, B wrong) vs ``b_only``; under "no difference"
    each is a fair coin. The interval is Wilson's for ``b_only / (a_only + b_only)`` mapped to the
    difference of accuracies, ``(b_only - a_only) / n`` = ``(2 q - 1) (a_only + b_only) / n``.
    """
    xa, xb = _paired(a, b)
    if not (is_binary(xa) and is_binary(xb)):
        raise ValueError("McNemar needs binary (0/1) outcomes; use paired_bootstrap for graded scores")
    a_only = int(np.sum((xa == 1) & (xb == 0)))
    b_only = int(np.sum((xa == 0) & (xb == 1)))
    n, disc = int(xa.size), a_only + b_only
    if disc:
        q = wilson_interval(b_only, disc, confidence)
        low, high = (2 * q.low - 1) * disc / n, (2 * q.high - 1) * disc / n
    else:
        low = high = 0.0
    return PairedComparison(
        float(xa.mean()), float(xb.mean()), (b_only - a_only) / n, low, high,
        binomial_two_sided_p(b_only, disc), n, confidence, "mcnemar_exact", a_only, b_only,
    )


def score_interval(scores: Scores, confidence: float = 0.95, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Interval:
    """Wilson for binary per-example scores, percentile bootstrap otherwise."""
    x = _as_array(scores)
    if is_binary(x):
        return wilson_interval(int(x.sum()), int(x.size), confidence)
    return bootstrap_interval(x, confidence, n_resamples, seed)


def per_example_intervals(
    per_example: dict[str, Scores], confidence: float = 0.95, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> dict[str, dict[str, float | int | str]]:
    """``{name: score_interval(scores).as_dict()}`` for a results.json (e.g. downstream ``per_example``)."""
    return {name: score_interval(scores, confidence, n_resamples, seed).as_dict() for name, scores in per_example.items()}


def compare_paired(a: Scores, b: Scores, confidence: float = 0.95, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> PairedComparison:
    """Exact McNemar for binary outcomes, paired bootstrap otherwise."""
    if is_binary(a) and is_binary(b):
        return mcnemar_exact(a, b, confidence)
    return paired_bootstrap(a, b, confidence, n_resamples, seed)
