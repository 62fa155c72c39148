"""Statistics and normalization: exact against numpy, streaming, degenerate dims."""

from __future__ import annotations

import numpy as np
import pytest

from z1.data.normalize import (
    StatsAccumulator,
    StatsError,
    compute_full_stats,
    compute_stats,
    normalization_from_stats,
    pool_mean_std,
)
from z1.types import FeatureStats


def test_compute_stats_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    parts = [rng.normal(size=(n, 5)) * [1, 2, 3, 4, 5] + 7 for n in (10, 33, 1)]
    x = np.concatenate(parts)
    st = compute_stats(parts)
    np.testing.assert_allclose(st.mean, x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(st.std, x.std(0), rtol=1e-6)
    np.testing.assert_allclose(st.q01, np.quantile(x, 0.01, axis=0), rtol=1e-6)
    np.testing.assert_allclose(st.q99, np.quantile(x, 0.99, axis=0), rtol=1e-6)
    assert st.mean.dtype == np.float32
    # q01 by hand (linear interpolation between order statistics): position 0.01 * (n - 1)
    col = np.sort(x[:, 2])
    pos = 0.01 * (len(col) - 1)
    lo = int(np.floor(pos))
    np.testing.assert_allclose(st.q01[2], col[lo] + (pos - lo) * (col[lo + 1] - col[lo]), rtol=1e-6)


def test_accumulator_exact_then_reservoir() -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(-3, 5, size=(5000, 3))
    acc = StatsAccumulator(max_rows=10_000)
    for s in range(0, 5000, 777):
        acc.update(x[s : s + 777])
    full = compute_full_stats(x)
    got = acc.result()
    for k in ("mean", "std", "min", "max", "q01", "q99"):
        np.testing.assert_allclose(getattr(got, k), getattr(full, k), rtol=1e-9, atol=1e-12)
    small = StatsAccumulator(max_rows=1000)  # reservoir: mean/std exact, quantiles approximate
    for s in range(0, 5000, 300):
        small.update(x[s : s + 300])
    r = small.result()
    np.testing.assert_allclose(r.mean, full.mean, rtol=1e-9)
    np.testing.assert_allclose(r.std, full.std, rtol=1e-9)
    assert r.count == 5000
    np.testing.assert_allclose(r.q99, full.q99, atol=0.15)  # uniform on [-3, 5]: q99 = 4.92
    np.testing.assert_allclose(r.q01, full.q01, atol=0.15)


def test_pool_mean_std() -> None:
    rng = np.random.default_rng(2)
    parts = [rng.normal(size=(n, 2)) + i for i, n in enumerate((3, 9, 20))]
    m, s = pool_mean_std([p.mean(0) for p in parts], [p.std(0) for p in parts], [len(p) for p in parts])
    x = np.concatenate(parts)
    np.testing.assert_allclose(m, x.mean(0))
    np.testing.assert_allclose(s, x.std(0))


@pytest.mark.parametrize("mode", ["quantile", "meanstd"])
def test_degenerate_dims_give_no_nan(mode: str) -> None:
    x = np.stack([np.linspace(-1, 3, 50), np.full(50, 0.7)], 1)  # dim 1 is constant
    st = compute_stats(x)
    assert st.q01[1] == st.q99[1] and st.std[1] == 0
    norm = normalization_from_stats(st, st, mode)
    y = norm.normalize_action(x)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y[:, 1], 0.0, atol=1e-6)  # the constant maps to 0
    np.testing.assert_allclose(norm.unnormalize_action(y), x, atol=1e-5)
    if mode == "quantile":  # the live dim still maps [q01, q99] to [-1, 1]
        np.testing.assert_allclose(
            norm.normalize_action(np.stack([st.q01, st.q99]))[:, 0], [-1, 1], atol=1e-5
        )


def test_bad_stats_rejected() -> None:
    with pytest.raises(StatsError, match="non-finite"):
        compute_stats(np.array([[1.0], [np.nan]]))
    with pytest.raises(StatsError, match="0 rows"):
        compute_stats(np.zeros((0, 3)))
    ok = compute_stats(np.arange(10.0)[:, None])
    bad = FeatureStats(ok.mean, ok.std, ok.q99, ok.q01 - 1)
    with pytest.raises(StatsError, match="q01 > q99"):
        normalization_from_stats(ok, bad)
    with pytest.raises(StatsError, match="mode"):
        normalization_from_stats(ok, ok, "minmax")
