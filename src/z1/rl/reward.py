"""Completion-aware reward calibration and reward normalization across task groups.

The formulas are docs/algorithm.md#reward-calibration, #reward-normalisation and #range-filter (anchors
below name sections of docs/algorithm.md). Flow per training iteration (the trainer owns the
`TaskTimeStats` object and checkpoints it as JSON; `rl.scoring.score_batch` runs these steps):

    R = calibrate(successes, times, task, stats, cfg)    # (g,) returns per group, D0 / D1 / D4
    keep = range_filter(groups_R, cfg.range_delta)       # drop all-fail / identical groups
    sigma = pooled_sigma([R for R, k in zip(groups_R, keep) if k], cfg)   # norm="pooled"
    A = group_advantages(kept_groups_R, cfg, sigma)      # (R - mean_g R) / sigma
    stats.update(task, successes, times, cfg)            # EMA of train success, success lengths (T_min)

A batch is calibrated with the statistics from before it and folded in afterwards. In tree mode the
trainer first evaluates the initial policy and folds that in, so the first iteration already has a T_min
and p_hat.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np


class RewardError(ValueError):
    """Bad reward input: unknown task, mismatched shapes, invalid config."""


@dataclass(frozen=True)
class RewardConfig:
    """Reward calibration and normalization (defaults: docs/algorithm.md#defaults)."""

    kind: Literal["D0", "D1", "D4"] = "D4"
    """Reward of an episode: D0 is binary success; D1 lowers a success's reward linearly with its completion
    time (faster successes score higher); D4 is D1 with the time term switched on per task only once the
    task's train success is high enough (gate p0)."""
    lam: float = 0.3
    """λ (lam): the largest fraction of the success reward that slowness can cost (0 <= lam < 1, so any
    success beats any failure)."""
    p0: float = 0.5
    """p0, the D4 gate: λ_task = lam * clip((p̂ - p0) / (1 - p0), 0, 1), p̂ the task's train success."""
    norm: Literal["pooled", "group", "none"] = "pooled"
    """How returns are scaled into advantages: pooled divides by σ = sqrt(mean over kept groups of each
    group's reward variance), so tasks of different difficulty share one scale; group divides by each
    group's own std (floored at sigma_min); none does not scale (Dr.GRPO)."""
    sigma_min: float = 0.05
    """σ_min: floor of the scale, so near-constant groups do not blow up."""
    range_delta: float = 1e-3
    """δ_R of the range filter: groups whose rewards span less than this carry no signal and are dropped."""
    success_ema: float = 0.9
    """β: the task's train success p̂ is tracked as p̂ <- β p̂ + (1 - β) * the batch's success rate."""
    t_min_quantile: float = 0.1
    """T_min, the reference time of D1/D4, is this quantile of the task's recent success lengths."""
    length_window: int = 512
    """How many recent success lengths per task are kept for T_min."""

    def __post_init__(self) -> None:
        from z1.errors import check_float, check_int

        check_float(self.range_delta, "--reward.range-delta", low=0.0)
        check_float(self.t_min_quantile, "--reward.t-min-quantile", low=0.0, high=1.0)
        check_int(self.length_window, "--reward.length-window", low=1)
        if self.kind not in ("D0", "D1", "D4"):
            raise RewardError(f"RewardConfig.kind must be 'D0', 'D1' or 'D4', got {self.kind!r}")
        if self.norm not in ("pooled", "group", "none"):
            raise RewardError(f"RewardConfig.norm must be 'pooled', 'group' or 'none', got {self.norm!r}")
        if not 0.0 <= self.lam < 1.0:
            raise RewardError(
                f"RewardConfig.lam must be in [0, 1) so that any success beats any failure, got {self.lam}"
            )
        if not 0.0 <= self.p0 < 1.0:
            raise RewardError(f"RewardConfig.p0 must be in [0, 1), got {self.p0}")
        if not 0.0 <= self.success_ema < 1.0:
            raise RewardError(f"RewardConfig.success_ema must be in [0, 1), got {self.success_ema}")
        if self.sigma_min <= 0:
            raise RewardError(f"RewardConfig.sigma_min must be > 0, got {self.sigma_min}")


@dataclass
class TaskTimeStats:
    """Per-task state used by calibration. Explicit, owned by the trainer, JSON-serializable.

    t_max: the task's step cap T_max (env steps).
    t_min_fixed: optional fixed reference fast time (e.g. the 10th-percentile success length of the SFT
        policy); when absent, T_min is the `t_min_quantile` of `success_lengths`.
    success_lengths: recent success lengths (env steps), at most `length_window` per task.
    p_hat: EMA of train success (initialized to the first batch's rate).
    """

    t_max: dict[str, int] = field(default_factory=dict)
    t_min_fixed: dict[str, float] = field(default_factory=dict)
    success_lengths: dict[str, list[int]] = field(default_factory=dict)
    p_hat: dict[str, float] = field(default_factory=dict)

    def register(self, task: str, t_max: int, t_min: float | None = None) -> None:
        """Declare a task with its cap; optionally fix T_min (e.g. from the SFT policy's eval)."""
        if t_max < 1:
            raise RewardError(f"task {task!r}: t_max must be >= 1, got {t_max}")
        self.t_max[task] = int(t_max)
        if t_min is not None:
            self.t_min_fixed[task] = float(t_min)

    def _check(self, task: str) -> None:
        if task not in self.t_max:
            known = ", ".join(sorted(self.t_max)) or "none"
            raise RewardError(
                f"task {task!r} is not registered; call stats.register(task, t_max). Known: {known}"
            )

    def update(self, task: str, successes: np.ndarray, success_times: np.ndarray, cfg: RewardConfig) -> None:
        """Fold one batch of episodes of `task` into p_hat and the success-length window."""
        self._check(task)
        succ, times = _as_outcomes(successes, success_times)
        if succ.size == 0:
            return
        rate = float(succ.mean())
        prev = self.p_hat.get(task)
        self.p_hat[task] = rate if prev is None else cfg.success_ema * prev + (1.0 - cfg.success_ema) * rate
        buf = self.success_lengths.setdefault(task, [])
        buf.extend(int(t) for t in times[succ])
        del buf[: max(0, len(buf) - cfg.length_window)]

    def t_min(self, task: str, cfg: RewardConfig) -> float:
        """T_min: the fixed value if registered, else the quantile of recent success lengths, else 0."""
        self._check(task)
        if task in self.t_min_fixed:
            return self.t_min_fixed[task]
        lengths = self.success_lengths.get(task)
        if not lengths:
            return 0.0
        return float(np.quantile(np.asarray(lengths, dtype=np.float64), cfg.t_min_quantile))

    def to_json(self) -> dict:
        return {
            "t_max": dict(self.t_max),
            "t_min_fixed": dict(self.t_min_fixed),
            "success_lengths": {k: list(v) for k, v in self.success_lengths.items()},
            "p_hat": dict(self.p_hat),
        }

    @staticmethod
    def from_json(d: dict) -> TaskTimeStats:
        return TaskTimeStats(
            t_max={k: int(v) for k, v in d["t_max"].items()},
            t_min_fixed={k: float(v) for k, v in d.get("t_min_fixed", {}).items()},
            success_lengths={k: [int(x) for x in v] for k, v in d.get("success_lengths", {}).items()},
            p_hat={k: float(v) for k, v in d.get("p_hat", {}).items()},
        )


def _as_outcomes(successes: np.ndarray, success_times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    succ = np.asarray(successes, dtype=bool).reshape(-1)
    times = np.asarray(success_times, dtype=np.float64).reshape(-1)
    if succ.shape != times.shape:
        raise RewardError(f"successes {succ.shape} and success_times {times.shape} must have the same length")
    return succ, times


def decay_lambda(task: str, stats: TaskTimeStats, cfg: RewardConfig) -> float:
    """lambda for `task`: 0 (D0), lam (D1), or lam * clip((p_hat - p0)/(1 - p0), 0, 1) (D4)."""
    if cfg.kind == "D0":
        return 0.0
    if cfg.kind == "D1":
        return cfg.lam
    p = stats.p_hat.get(task)
    if p is None:  # no train success measured yet: the gate stays closed
        return 0.0
    return cfg.lam * float(np.clip((p - cfg.p0) / (1.0 - cfg.p0), 0.0, 1.0))


def normalized_time(
    success_times: np.ndarray, task: str, stats: TaskTimeStats, cfg: RewardConfig
) -> np.ndarray:
    """tau_s = clip((t_s - T_min) / (T_max - T_min), 0, 1); per task, never raw steps."""
    stats._check(task)
    t_max = stats.t_max[task]
    t_min = stats.t_min(task, cfg)
    # T_min can reach T_max when every success so far hit the cap; then all successes are equally "slow".
    span = max(float(t_max) - t_min, 1.0)
    return np.clip((np.asarray(success_times, dtype=np.float64) - t_min) / span, 0.0, 1.0)


def calibrate(
    successes: np.ndarray, success_times: np.ndarray, task: str, stats: TaskTimeStats, cfg: RewardConfig
) -> np.ndarray:
    """Calibrated returns: D0 R = 1[succ]; D1/D4 R = 1[succ] (1 - lambda tau_s). Failures get 0
    (#reward-calibration).

    successes: (g,) bool; success_times: (g,) env steps of the first success (ignored for failures).
    Returns (g,) float64.
    """
    stats._check(task)
    succ, times = _as_outcomes(successes, success_times)
    lam = decay_lambda(task, stats, cfg)
    tau = normalized_time(np.where(succ, times, 0.0), task, stats, cfg)
    return np.where(succ, 1.0 - lam * tau, 0.0)


# ---- normalization and filtering (#reward-normalisation, #range-filter) -----------------------------


def _groups(groups_returns: Sequence[np.ndarray]) -> list[np.ndarray]:
    out = [np.asarray(g, dtype=np.float64).reshape(-1) for g in groups_returns]
    for i, g in enumerate(out):
        if g.size == 0:
            raise RewardError(f"group {i} has no returns")
    return out


def pooled_sigma(groups_returns: Sequence[np.ndarray], cfg: RewardConfig) -> float:
    """norm="pooled": sigma = sqrt(mean_g Var_g(R)) with population variance, floored at sigma_min.

    Pass the groups that survived `range_filter`; with no groups the floor is returned.
    """
    gs = _groups(groups_returns)
    if not gs:
        return cfg.sigma_min
    return max(float(np.sqrt(np.mean([g.var() for g in gs]))), cfg.sigma_min)


def group_advantages(
    groups_returns: Sequence[np.ndarray], cfg: RewardConfig, sigma: float | None = None
) -> list[np.ndarray]:
    """Flat group-centered advantages A_i = (R_i - mean_g R) / scale, one (g,) array per group.

    scale: `sigma` (or `pooled_sigma` of these groups when None) for norm="pooled"; max(std_g,
    sigma_min) for norm="group"; 1 for norm="none".
    """
    gs = _groups(groups_returns)
    if cfg.norm == "pooled":
        s = pooled_sigma(gs, cfg) if sigma is None else sigma
        return [(g - g.mean()) / s for g in gs]
    if cfg.norm == "group":
        return [(g - g.mean()) / max(float(g.std()), cfg.sigma_min) for g in gs]
    return [g - g.mean() for g in gs]


def range_filter(groups_returns: Sequence[np.ndarray], delta: float) -> np.ndarray:
    """Keep mask (B,) of groups with max(R) - min(R) >= delta (#range-filter).

    All-fail and identical groups are dropped; all-success groups whose completion times (hence calibrated
    returns) differ are kept.
    """
    return np.array([float(np.ptp(g)) >= delta for g in _groups(groups_returns)], dtype=bool)


def group_stats(
    groups_successes: Sequence[np.ndarray],
    groups_returns: Sequence[np.ndarray] | None = None,
    delta: float = 1e-3,
) -> dict[str, float]:
    """Fractions of all-success / all-fail / mixed groups, and of zero-range groups if returns given."""
    succ = [np.asarray(g, dtype=bool).reshape(-1) for g in groups_successes]
    n = max(len(succ), 1)
    out = {
        "groups": float(len(succ)),
        "frac_all_success": sum(bool(g.all()) for g in succ) / n,
        "frac_all_fail": sum(not g.any() for g in succ) / n,
        "frac_mixed": sum(bool(g.any() and not g.all()) for g in succ) / n,
    }
    if groups_returns is not None:
        out["frac_zero_range"] = float(1.0 - range_filter(groups_returns, delta).mean()) if succ else 0.0
    return out
