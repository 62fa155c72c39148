"""Quantile and mean/std statistics of state and action, and the `Normalization` built from them.

Quantiles use numpy's default (linear interpolation between order statistics), computed exactly while the
data fit in `StatsAccumulator.max_rows`; beyond that the quantiles come from a uniform reservoir sample of
`max_rows` rows (mean, std, min and max stay exact). openpi estimates q01/q99 with 5000-bin histograms, so
its values differ from ours in the last digits; the transform itself is the same (pi05.md §4.1).

Degenerate dims: a dimension that never changes (q99 == q01, or std == 0) would blow up under either
normalization. `normalization_from_stats` widens such dims to q01 = c - 1, q99 = c + 1 and std = 1, so the
constant value maps to 0 and nothing is NaN or inf.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from z1.types import FeatureStats, Normalization

if TYPE_CHECKING:
    from z1.data.lerobot_read import Dataset


class StatsError(ValueError):
    """Statistics that cannot be used for normalization (NaN, wrong shape, empty data)."""


@dataclass(frozen=True)
class FullStats:
    """Everything LeRobot's stats.json holds for one feature: (d,) arrays plus the row count."""

    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray
    q01: np.ndarray
    q99: np.ndarray
    count: int

    def feature_stats(self) -> FeatureStats:
        return FeatureStats(
            mean=self.mean.astype(np.float32),
            std=self.std.astype(np.float32),
            q01=self.q01.astype(np.float32),
            q99=self.q99.astype(np.float32),
        )

    def to_json(self) -> dict[str, list[float] | list[int]]:
        out: dict[str, list[float] | list[int]] = {
            k: np.asarray(getattr(self, k), dtype=np.float64).tolist()
            for k in ("mean", "std", "min", "max", "q01", "q99")
        }
        out["count"] = [int(self.count)]
        return out


def _as_rows(arrays: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    if isinstance(arrays, np.ndarray):
        x = arrays
    else:
        parts = [np.asarray(a) for a in arrays]
        if not parts:
            raise StatsError("compute_stats got no arrays; the dataset has no frames")
        x = np.concatenate([p.reshape(p.shape[0], -1) if p.ndim > 1 else p[:, None] for p in parts], axis=0)
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise StatsError(f"compute_stats expects rows of shape (n, d), got {x.shape}")
    if x.shape[0] == 0:
        raise StatsError("compute_stats got 0 rows; the dataset has no frames")
    if not np.all(np.isfinite(x)):
        bad = np.unique(np.nonzero(~np.isfinite(x))[1]).tolist()
        raise StatsError(f"compute_stats: non-finite values in dims {bad}")
    return x


def compute_full_stats(arrays: np.ndarray | Sequence[np.ndarray]) -> FullStats:
    """Exact mean, std (population, ddof=0), min, max, q01, q99 over the rows of (n, d) arrays."""
    x = _as_rows(arrays)  # (n, d)
    q = np.quantile(x, [0.01, 0.99], axis=0)
    return FullStats(
        mean=x.mean(0),
        std=np.where(x.max(0) == x.min(0), 0.0, x.std(0)),  # exact 0 for constant dims (no 1e-16 residue)
        min=x.min(0),
        max=x.max(0),
        q01=q[0],
        q99=q[1],
        count=int(x.shape[0]),
    )


def compute_stats(arrays: np.ndarray | Sequence[np.ndarray]) -> FeatureStats:
    """FeatureStats (float32 mean, std, q01, q99) over the rows of one (n, d) array or a list of them."""
    return compute_full_stats(arrays).feature_stats()


class StatsAccumulator:
    """Streaming statistics: exact mean/std/min/max (Chan's parallel update in float64); exact quantiles
    while at most `max_rows` rows were seen, reservoir-sampled quantiles after that."""

    def __init__(self, max_rows: int = 2_000_000, seed: int = 0) -> None:
        self.max_rows = max_rows
        self._rng = np.random.default_rng(seed)
        self._n = 0
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None
        self._min: np.ndarray | None = None
        self._max: np.ndarray | None = None
        self._res: list[np.ndarray] = []  # kept rows while n <= max_rows
        self._reservoir: np.ndarray | None = None  # (max_rows, d) once full

    @property
    def count(self) -> int:
        return self._n

    def update(self, rows: np.ndarray) -> None:
        x = _as_rows(rows)  # (m, d)
        m = x.shape[0]
        mean_b, m2_b = x.mean(0), ((x - x.mean(0)) ** 2).sum(0)
        if self._mean is None:
            self._mean, self._m2, self._min, self._max = mean_b, m2_b, x.min(0), x.max(0)
        else:
            if x.shape[1] != self._mean.shape[0]:
                raise StatsError(
                    f"StatsAccumulator: rows have {x.shape[1]} dims, earlier ones {self._mean.shape[0]}"
                )
            n = self._n + m
            delta = mean_b - self._mean
            self._mean = self._mean + delta * (m / n)
            self._m2 = self._m2 + m2_b + delta**2 * (self._n * m / n)
            self._min = np.minimum(self._min, x.min(0))
            self._max = np.maximum(self._max, x.max(0))
        self._add_to_reservoir(x)
        self._n += m

    def _add_to_reservoir(self, x: np.ndarray) -> None:
        if self._reservoir is None:
            kept = sum(r.shape[0] for r in self._res)
            if kept + x.shape[0] <= self.max_rows:
                self._res.append(x)
                return
            self._reservoir = np.concatenate(self._res, 0) if self._res else np.empty((0, x.shape[1]))
            self._res = []
            fill = self.max_rows - self._reservoir.shape[0]
            self._reservoir = np.concatenate([self._reservoir, x[:fill]], 0)
            seen = self._n + fill
            x = x[fill:]
        else:
            seen = self._n
        # Algorithm R, vectorised: row with global position p (0-based) replaces slot j ~ U[0, p] if j < k.
        pos = seen + np.arange(x.shape[0])
        j = (self._rng.random(x.shape[0]) * (pos + 1)).astype(np.int64)
        hit = j < self.max_rows
        for row, slot in zip(x[hit], j[hit]):
            self._reservoir[slot] = row

    def result(self) -> FullStats:
        if self._mean is None:
            raise StatsError("StatsAccumulator.result(): no rows were added")
        sample = self._reservoir if self._reservoir is not None else np.concatenate(self._res, 0)
        q = np.quantile(sample, [0.01, 0.99], axis=0)
        return FullStats(
            mean=self._mean,
            std=np.where(self._max == self._min, 0.0, np.sqrt(np.maximum(self._m2 / self._n, 0.0))),
            min=self._min,
            max=self._max,
            q01=q[0],
            q99=q[1],
            count=self._n,
        )


def pool_mean_std(means: Iterable[np.ndarray], stds: Iterable[np.ndarray], counts: Iterable[int]):
    """Combine per-episode (mean, std, count) into the dataset's mean and population std."""
    ms = [np.asarray(m, np.float64) for m in means]
    ss = [np.asarray(s, np.float64) for s in stds]
    ns = np.asarray(list(counts), np.float64)
    if not ms or ns.sum() <= 0:
        raise StatsError("pool_mean_std: no episodes to pool")
    total = ns.sum()
    mean = sum(n * m for n, m in zip(ns, ms)) / total
    var = sum(n * (s**2 + (m - mean) ** 2) for n, m, s in zip(ns, ms, ss)) / total
    return mean, np.sqrt(np.maximum(var, 0.0))


def validate_stats(st: FeatureStats, dim: int | None = None, what: str = "stats") -> None:
    """Raise StatsError on NaN/inf, negative std, q01 > q99 or a wrong dimension."""
    for k in ("mean", "std", "q01", "q99"):
        v = np.asarray(getattr(st, k))
        if v.ndim != 1 or (dim is not None and v.shape[0] != dim):
            raise StatsError(f"{what}.{k} has shape {v.shape}, expected ({dim if dim is not None else 'd'},)")
        if not np.all(np.isfinite(v)):
            raise StatsError(
                f"{what}.{k} contains NaN or inf at dims {np.nonzero(~np.isfinite(v))[0].tolist()}"
            )
    if np.any(np.asarray(st.std) < 0):
        raise StatsError(f"{what}.std is negative at dims {np.nonzero(np.asarray(st.std) < 0)[0].tolist()}")
    if np.any(np.asarray(st.q01) > np.asarray(st.q99)):
        raise StatsError(f"{what}: q01 > q99 at dims {np.nonzero(st.q01 > st.q99)[0].tolist()}")


def widen_degenerate(st: FeatureStats, eps: float = 1e-8) -> FeatureStats:
    """Constant dims: q01/q99 -> c -/+ 1 (c = their midpoint) and std -> 1, so the constant maps to 0."""
    q01, q99 = np.asarray(st.q01, np.float32), np.asarray(st.q99, np.float32)
    std = np.asarray(st.std, np.float32)
    flat_q = (q99 - q01) <= eps
    mid = (q01 + q99) / 2
    return FeatureStats(
        mean=np.asarray(st.mean, np.float32),
        std=np.where(std <= eps, np.float32(1.0), std).astype(np.float32),
        q01=np.where(flat_q, mid - 1.0, q01).astype(np.float32),
        q99=np.where(flat_q, mid + 1.0, q99).astype(np.float32),
    )


def normalization_from_stats(
    state: FeatureStats, action: FeatureStats, mode: str = "quantile"
) -> Normalization:
    if mode not in ("quantile", "meanstd"):
        raise StatsError(f"normalization mode must be 'quantile' or 'meanstd', got {mode!r}")
    validate_stats(state, what="state stats")
    validate_stats(action, what="action stats")
    return Normalization(widen_degenerate(state), widen_degenerate(action), mode)


def normalization_from_dataset(ds: Dataset, mode: str = "quantile") -> Normalization:
    """Normalization from a dataset's state/action statistics (degenerate dims widened, see module doc)."""
    return normalization_from_stats(ds.stats["observation.state"], ds.stats["action"], mode)
