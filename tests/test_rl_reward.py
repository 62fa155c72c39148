"""Reward calibration, pooled normalization and the range filter (docs/algorithm.md#reward-calibration,
#reward-normalisation, #range-filter)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from z1.rl.reward import (
    RewardConfig,
    RewardError,
    TaskTimeStats,
    calibrate,
    decay_lambda,
    group_advantages,
    group_stats,
    pooled_sigma,
    range_filter,
)


def make_stats(p_hat: float | None = 0.9, t_min: float = 20.0, t_max: int = 120) -> TaskTimeStats:
    s = TaskTimeStats()
    s.register("push", t_max=t_max, t_min=t_min)
    if p_hat is not None:
        s.p_hat["push"] = p_hat
    return s


def test_d0_d1_d4_formulas() -> None:
    succ = np.array([True, True, True, False, False])
    times = np.array([20, 70, 200, 50, -1])
    tau = np.array([0.0, 0.5, 1.0])  # (t - 20) / 100, clipped
    stats = make_stats(p_hat=0.9)
    np.testing.assert_allclose(
        calibrate(succ, times, "push", stats, RewardConfig(kind="D0")), [1, 1, 1, 0, 0]
    )
    d1 = calibrate(succ, times, "push", stats, RewardConfig(kind="D1", lam=0.3))
    np.testing.assert_allclose(d1, np.r_[1 - 0.3 * tau, 0, 0])
    gate = np.clip((0.9 - 0.5) / 0.5, 0, 1)  # 0.8
    d4 = calibrate(succ, times, "push", stats, RewardConfig(kind="D4", lam=0.3, p0=0.5))
    np.testing.assert_allclose(d4, np.r_[1 - 0.3 * gate * tau, 0, 0])


def test_d4_gate_off_below_p0_and_before_any_estimate() -> None:
    cfg = RewardConfig()
    succ, times = np.array([True, True, False]), np.array([30, 100, 0])
    for p in (0.2, 0.5):
        assert decay_lambda("push", make_stats(p_hat=p), cfg) == 0.0
        np.testing.assert_allclose(calibrate(succ, times, "push", make_stats(p_hat=p), cfg), [1, 1, 0])
    assert decay_lambda("push", make_stats(p_hat=None), cfg) == 0.0
    assert decay_lambda("push", make_stats(p_hat=1.0), cfg) == pytest.approx(0.3)


def test_any_success_beats_any_failure_even_at_the_cap() -> None:
    cfg = RewardConfig(kind="D1", lam=0.49)
    r = calibrate(np.array([True, False]), np.array([10**6, 3]), "push", make_stats(), cfg)
    assert r[0] > r[1] == 0.0
    with pytest.raises(RewardError, match="lam"):
        RewardConfig(lam=1.0)


def test_all_success_group_with_different_times_is_kept_and_ranked() -> None:
    cfg = RewardConfig()
    stats = make_stats(p_hat=1.0)
    times = np.array([30, 40, 60, 90])
    r = calibrate(np.ones(4, bool), times, "push", stats, cfg)
    assert range_filter([r], cfg.range_delta).tolist() == [True]
    (a,) = group_advantages([r], cfg)
    assert np.all(a != 0) and np.all(np.diff(a) < 0)  # faster -> larger advantage
    # Binary reward: the same group is dropped (zero range).
    r0 = calibrate(np.ones(4, bool), times, "push", stats, RewardConfig(kind="D0"))
    assert range_filter([r0], cfg.range_delta).tolist() == [False]


def test_range_filter_drops_all_fail_and_identical() -> None:
    groups = [
        np.zeros(4),
        np.full(4, 0.7),
        np.array([1.0, 0, 0, 1]),
        np.array([1.0, 1.0005, 1, 1]),
        np.array([0.9, 0.95, 1.0, 0.92]),
    ]
    assert range_filter(groups, 1e-3).tolist() == [False, False, True, False, True]


def test_mixed_group_pooled_advantages() -> None:
    cfg = RewardConfig(kind="D0")
    r = np.array([1.0, 0, 0, 1, 1, 0, 0, 0])
    sigma = pooled_sigma([r], cfg)
    assert sigma == pytest.approx(np.sqrt(0.375 * 0.625))  # population variance p(1-p)
    (a,) = group_advantages([r], cfg)
    np.testing.assert_allclose(a, (r - r.mean()) / sigma)
    assert a[r == 1].min() > a[r == 0].max()


def test_pooled_sigma_formula_and_floor() -> None:
    cfg = RewardConfig(sigma_min=0.05)
    gs = [np.array([0.0, 1.0, 1.0]), np.array([0.9, 0.95]), np.array([0.2, 0.4, 0.6, 0.8])]
    brute = np.sqrt(sum(np.mean((g - np.mean(g)) ** 2) for g in gs) / len(gs))
    assert pooled_sigma(gs, cfg) == pytest.approx(brute)
    assert pooled_sigma([np.array([0.9, 0.91])], cfg) == 0.05
    assert pooled_sigma([], cfg) == 0.05


def test_normalization_across_tasks_of_different_difficulty() -> None:
    """Hard task: mixed group. Easy task: all succeed with slightly different times. Pooled sigma keeps
    the easy group's advantages small (success first, speed second); per-group std blows them up to ~1."""
    stats = TaskTimeStats()
    stats.register("hard", t_max=200, t_min=50)
    stats.register("easy", t_max=100, t_min=20)
    stats.p_hat.update(hard=0.5, easy=1.0)
    cfg = RewardConfig()
    r_hard = calibrate(np.array([1, 0, 1, 0, 0, 1, 0, 0], bool), np.full(8, 120), "hard", stats, cfg)
    r_easy = calibrate(np.ones(8, bool), np.array([40, 42, 44, 46, 48, 50, 52, 54]), "easy", stats, cfg)
    np.testing.assert_allclose(r_hard[[0, 2, 5]], 1.0)  # gate closed at p_hat = p0
    keep = range_filter([r_hard, r_easy], cfg.range_delta)
    assert keep.all()
    a_hard, a_easy = group_advantages([r_hard, r_easy], cfg)
    assert np.abs(a_easy).max() < 0.2 * np.abs(a_hard).max()
    _, a_easy_group = group_advantages([r_hard, r_easy], RewardConfig(norm="group", sigma_min=1e-6))  # N1
    assert np.abs(a_easy_group).max() > 1.0
    # Easy group's pooled advantage equals lambda * delta_tau / sigma exactly.
    sigma = pooled_sigma([r_hard, r_easy], cfg)
    tau = (np.array([40, 42, 44, 46, 48, 50, 52, 54]) - 20) / 80
    np.testing.assert_allclose(a_easy, -0.3 * (tau - tau.mean()) / sigma)


def test_stats_update_ema_tmin_and_json() -> None:
    cfg = RewardConfig(success_ema=0.5, t_min_quantile=0.1, length_window=4)
    s = TaskTimeStats()
    s.register("push", t_max=100)
    assert s.t_min("push", cfg) == 0.0
    s.update("push", np.array([1, 1, 0, 0], bool), np.array([10, 30, 0, 0]), cfg)
    assert s.p_hat["push"] == 0.5
    s.update("push", np.array([1, 1, 1, 1], bool), np.array([50, 60, 70, 80]), cfg)
    assert s.p_hat["push"] == pytest.approx(0.75)
    assert s.success_lengths["push"] == [50, 60, 70, 80]  # window of 4
    assert s.t_min("push", cfg) == pytest.approx(np.quantile([50, 60, 70, 80], 0.1))
    s2 = TaskTimeStats.from_json(json.loads(json.dumps(s.to_json())))
    assert s2 == s
    with pytest.raises(RewardError, match="register"):
        calibrate(np.ones(2, bool), np.ones(2), "pick", s, cfg)


def test_group_stats() -> None:
    succ = [np.ones(4, bool), np.zeros(4, bool), np.array([1, 0, 1, 0], bool), np.ones(4, bool)]
    rets = [np.array([0.9, 0.8, 0.9, 0.7]), np.zeros(4), np.array([1.0, 0, 1, 0]), np.ones(4)]
    st = group_stats(succ, rets)
    assert (st["frac_all_success"], st["frac_all_fail"], st["frac_mixed"]) == (0.5, 0.25, 0.25)
    assert st["frac_zero_range"] == 0.5
