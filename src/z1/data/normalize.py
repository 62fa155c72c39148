"""Statistics of dataset features, and the `Normalization` built from the state/action ones.

Every statistic set holds what LeRobot v3 stores per feature: mean, std (population), min, max, the
quantiles q01, q10, q50, q90, q99 and the row count.

Exactness. Quantiles use numpy's default (linear interpolation between order statistics):
- `compute_full_stats` is exact. It works one column at a time, so on top of the (n, d) input it needs one
  float64 copy of a single column (8 n bytes; 8 MB per million frames), never a float64 copy of the whole
  array. State and action are small (1M frames x 32 dims is 128 MB in float32), which is why the reader
  computes them exactly from the gathered columns instead of estimating them in a stream (1M x 32 float32:
  2.3 s on one core).
- `StatsAccumulator` (the writer's streaming stats) is exact while at most `max_rows` rows were seen; beyond
  that its quantiles come from a uniform reservoir sample of `max_rows` rows (mean, std, min and max stay
  exact).
- `PixelStatsAccumulator` (camera images) is exact for any number of frames: uint8 pixels have 256 possible
  values, so one histogram per channel determines every statistic, quantiles included.
A LeRobot v3 `meta/stats.json` is not exact: its quantiles are count-weighted averages of per-episode
quantiles, which are not quantiles of the whole dataset (the 1% of an episode is not the 1% of all frames).
openpi estimates q01/q99 with 5000-bin histograms, so its values differ from exact ones in the last digits;
the transform itself is the same (docs/model.md#normalisation).

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

QUANTILES: tuple[float, ...] = (0.01, 0.10, 0.50, 0.90, 0.99)
QUANTILE_KEYS: tuple[str, ...] = ("q01", "q10", "q50", "q90", "q99")
STAT_KEYS: tuple[str, ...] = ("min", "max", "mean", "std", *QUANTILE_KEYS)  # + "count"


class StatsError(ValueError):
    """Statistics that cannot be used for normalization (NaN, wrong shape, empty data)."""


@dataclass(frozen=True)
class FullStats:
    """Everything LeRobot's stats.json holds for one feature: (d,) float64 arrays plus the row count."""

    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray
    q01: np.ndarray
    q10: np.ndarray
    q50: np.ndarray
    q90: np.ndarray
    q99: np.ndarray
    count: int

    def feature_stats(self) -> FeatureStats:
        return FeatureStats(
            mean=self.mean.astype(np.float32),
            std=self.std.astype(np.float32),
            q01=self.q01.astype(np.float32),
            q99=self.q99.astype(np.float32),
        )

    def scaled(self, factor: float) -> FullStats:
        """Every statistic divided by `factor` (LeRobot stores image stats of uint8 pixels / 255)."""
        return FullStats(
            **{k: np.asarray(getattr(self, k), np.float64) / factor for k in STAT_KEYS}, count=self.count
        )

    def to_json(
        self, shape: tuple[int, ...] | None = None, integer: bool = False
    ) -> dict[str, list[float] | list[int]]:
        """LeRobot's JSON layout: every statistic a (nested) list, `count` a one-element list.

        shape: reshape each (d,) statistic, e.g. (3, 1, 1) for the per-channel stats of an image feature.
        integer: write min and max as ints (integer features such as `index`; the rest stays float).
        """
        out: dict[str, list[float] | list[int]] = {}
        for k in STAT_KEYS:
            v = np.asarray(getattr(self, k), dtype=np.float64)
            if shape is not None:
                v = v.reshape(shape)
            if integer and k in ("min", "max"):
                v = v.astype(np.int64)
            out[k] = v.tolist()
        out["count"] = [int(self.count)]
        return out


def _as_rows(arrays: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """(n, d) rows, floating (float32 input stays float32; statistics are accumulated in float64)."""
    if isinstance(arrays, np.ndarray):
        x = arrays
    else:
        parts = [np.asarray(a) for a in arrays]
        if not parts:
            raise StatsError("compute_stats got no arrays; the dataset has no frames")
        x = np.concatenate([p.reshape(p.shape[0], -1) if p.ndim > 1 else p[:, None] for p in parts], axis=0)
    if x.dtype not in (np.float32, np.float64):
        x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise StatsError(f"compute_stats expects rows of shape (n, d), got {x.shape}")
    if x.shape[0] == 0:
        raise StatsError("compute_stats got 0 rows; the dataset has no frames")
    finite = np.isfinite(x).all(0)  # (d,)
    if not finite.all():
        raise StatsError(f"compute_stats: non-finite values in dims {np.nonzero(~finite)[0].tolist()}")
    return x


def compute_full_stats(arrays: np.ndarray | Sequence[np.ndarray]) -> FullStats:
    """Exact mean, std (population, ddof=0), min, max and quantiles over the rows of (n, d) arrays.

    One column at a time (see the module docstring for the memory this needs)."""
    x = _as_rows(arrays)  # (n, d)
    d = x.shape[1]
    mean, std, lo, hi = (np.zeros(d) for _ in range(4))
    qs = np.zeros((len(QUANTILES), d))
    for j in range(d):
        col = np.asarray(x[:, j], dtype=np.float64)  # (n,)
        mean[j], lo[j], hi[j] = col.mean(), col.min(), col.max()
        std[j] = 0.0 if lo[j] == hi[j] else col.std()  # exact 0 for constant dims (no 1e-16 residue)
        qs[:, j] = np.quantile(col, QUANTILES)
    return FullStats(mean, std, lo, hi, *qs, count=int(x.shape[0]))


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

    @property
    def exact(self) -> bool:
        """True while the quantiles are exact (at most `max_rows` rows seen)."""
        return self._reservoir is None

    def update(self, rows: np.ndarray) -> None:
        x = np.asarray(_as_rows(rows), np.float64)  # (m, d)
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
        q = np.quantile(sample, QUANTILES, axis=0)  # (5, d)
        return FullStats(
            mean=self._mean,
            std=np.where(self._max == self._min, 0.0, np.sqrt(np.maximum(self._m2 / self._n, 0.0))),
            min=self._min,
            max=self._max,
            q01=q[0],
            q10=q[1],
            q50=q[2],
            q90=q[3],
            q99=q[4],
            count=self._n,
        )


def histogram_quantiles(counts: np.ndarray, quantiles: Sequence[float] = QUANTILES) -> np.ndarray:
    """Exact quantiles of integer data 0..k-1 from per-channel counts (c, k) -> (len(quantiles), c).

    Equal to np.quantile (linear interpolation) over the expanded data: the value at sorted position p is
    the first v whose cumulative count exceeds p."""
    counts = np.asarray(counts, np.int64)
    n = counts.sum(1)  # (c,)
    if np.any(n == 0):
        raise StatsError("histogram_quantiles: a channel has no values")
    cum = np.cumsum(counts, axis=1)  # (c, k)
    out = np.zeros((len(quantiles), counts.shape[0]))
    for i, q in enumerate(quantiles):
        h = (n - 1) * float(q)  # (c,) fractional sorted position
        lo = np.floor(h).astype(np.int64)
        hi = np.minimum(lo + 1, n - 1)
        frac = h - lo
        for c in range(counts.shape[0]):
            a = float(np.searchsorted(cum[c], lo[c], side="right"))
            b = float(np.searchsorted(cum[c], hi[c], side="right"))
            out[i, c] = a + (b - a) * frac[c]
    return out


class PixelStatsAccumulator:
    """Exact per-channel statistics of uint8 images (e, y, x, c) from one 256-bin histogram per channel.

    `count` is the number of frames; `result()` is in pixel units (LeRobot's stats.json divides by 255)."""

    def __init__(self, channels: int = 3) -> None:
        self._hist = np.zeros((channels, 256), np.int64)  # (c, 256)
        self._frames = 0

    @property
    def count(self) -> int:
        return self._frames

    def update(self, images: np.ndarray) -> None:
        imgs = np.asarray(images)
        if imgs.dtype != np.uint8 or imgs.ndim != 4 or imgs.shape[-1] != self._hist.shape[0]:
            raise StatsError(
                f"PixelStatsAccumulator: expected uint8 (e, y, x, {self._hist.shape[0]}), "
                f"got {imgs.dtype} {imgs.shape}"
            )
        for c in range(self._hist.shape[0]):
            self._hist[c] += np.bincount(imgs[..., c].reshape(-1), minlength=256)
        self._frames += imgs.shape[0]

    def merge(self, other: PixelStatsAccumulator) -> None:
        """Add another accumulator's frames (e.g. one episode's into the dataset's)."""
        if other._hist.shape != self._hist.shape:
            raise StatsError(
                f"PixelStatsAccumulator.merge: {other._hist.shape[0]} vs {self._hist.shape[0]} channels"
            )
        self._hist += other._hist
        self._frames += other._frames

    def result(self) -> FullStats:
        if self._frames == 0:
            raise StatsError("PixelStatsAccumulator.result(): no frames were added")
        h = self._hist.astype(np.float64)  # (c, 256)
        v = np.arange(256, dtype=np.float64)
        n = h.sum(1)
        mean = (h * v).sum(1) / n
        var = (h * (v[None, :] - mean[:, None]) ** 2).sum(1) / n
        present = self._hist > 0
        lo = present.argmax(1).astype(np.float64)
        hi = (255 - present[:, ::-1].argmax(1)).astype(np.float64)
        q = histogram_quantiles(self._hist)
        return FullStats(mean, np.sqrt(var), lo, hi, *q, count=self._frames)


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
