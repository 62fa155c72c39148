"""How an iteration's groups are spread over tasks (docs/algorithm.md#task-sampling).

"uniform" gives every task the same number of groups. "uncertain" spreads the same total in proportion to
w_task = sqrt(p_hat (1 - p_hat)) + eps, p_hat being the task's EMA of train success (`TaskTimeStats`).
A group whose leaves all fail (or all succeed equally fast) is dropped by the range filter (#range-filter), so
groups of a task at 0% or 100% are rollouts spent for nothing; the weight moves them to the tasks whose
groups carry signal. A task not seen yet counts as p_hat = 0.5. Counts are drawn by systematic sampling,
so every task's expected count is exactly its share (a task with 0.4 expected groups gets one in 40% of
the iterations and stays measured); `min_groups` sets a floor per task.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class TaskSamplingConfig:
    """Groups per task per iteration (the total is always `groups_per_task * len(tasks)`)."""

    mode: Literal["uniform", "uncertain"] = "uniform"
    """uniform: `groups_per_task` each; uncertain: shares proportional to sqrt(p (1 - p)) + eps."""
    eps: float = 0.05
    """Floor of every task's weight (a task at 0% or 100% keeps this much)."""
    min_groups: int = 0
    """Groups every task gets in every iteration before the rest is shared out."""

    def __post_init__(self) -> None:
        if self.mode not in ("uniform", "uncertain"):
            raise ValueError(f"TaskSamplingConfig.mode must be 'uniform' or 'uncertain', got {self.mode!r}")
        if self.eps <= 0:
            raise ValueError(
                f"TaskSamplingConfig.eps must be > 0 (a weight of 0 starves a task), got {self.eps}"
            )
        if self.min_groups < 0:
            raise ValueError(f"TaskSamplingConfig.min_groups must be >= 0, got {self.min_groups}")


def task_weights(tasks: Sequence[str], p_hat: Mapping[str, float], eps: float) -> np.ndarray:
    """(n,) sqrt(p (1 - p)) + eps per task, p = 0.5 for a task with no estimate yet."""
    p = np.array([p_hat.get(t, 0.5) for t in tasks], dtype=np.float64)
    return np.sqrt(np.clip(p * (1.0 - p), 0.0, None)) + eps


def systematic_counts(weights: np.ndarray, total: int, u: float) -> np.ndarray:
    """(n,) integer counts summing to `total` with E[count_i] = total * w_i / sum(w), from one uniform u.

    Systematic sampling: `total` points u, u + 1, ... on the axis of cumulative expected counts; task i gets
    the points falling in its interval, so its count is the floor or the ceiling of its expectation.
    """
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    if not 0.0 <= u < 1.0:
        raise ValueError(f"u must be in [0, 1), got {u}")
    expected = total * weights / weights.sum()  # (n,)
    edges = np.concatenate([[0.0], np.cumsum(expected)])  # (n + 1,)
    edges[-1] = float(total)  # no float drift at the end
    points = np.maximum(np.ceil(edges - u), 0.0)  # (n + 1,) points u + j (j >= 0) below each edge
    return np.diff(points).astype(np.int64)


def plan_task_counts(
    tasks: Sequence[str],
    groups_per_task: int,
    p_hat: Mapping[str, float],
    cfg: TaskSamplingConfig,
    rng: np.random.Generator,
) -> list[int]:
    """Groups for each task this iteration; the total is `groups_per_task * len(tasks)`.

    `rng` is drawn from only in "uncertain" mode (uniform runs keep their random streams).
    """
    n = len(tasks)
    if cfg.mode == "uniform":
        return [groups_per_task] * n
    total = groups_per_task * n
    floor = min(cfg.min_groups, groups_per_task)
    rest = systematic_counts(task_weights(tasks, p_hat, cfg.eps), total - floor * n, float(rng.random()))
    return [floor + int(c) for c in rest]
