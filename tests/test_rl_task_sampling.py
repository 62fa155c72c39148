"""Task sampling (docs/algorithm.md#task-sampling): systematic counts, uncertainty weights, seed blocks."""

import numpy as np
import pytest

from z1.rl.task_sampling import TaskSamplingConfig, plan_task_counts, systematic_counts, task_weights
from z1.train.rl import group_plan


def test_weights_follow_the_formula():
    w = task_weights(["a", "b", "c", "d"], {"a": 0.0, "b": 0.5, "c": 0.9}, eps=0.05)
    expected = [0.05, 0.5 + 0.05, np.sqrt(0.9 * 0.1) + 0.05, 0.5 + 0.05]  # d unseen: p = 0.5
    np.testing.assert_allclose(w, expected)


@pytest.mark.parametrize("total", [0, 1, 7, 12])
def test_systematic_counts_are_unbiased_floor_or_ceil(total):
    w = np.array([0.05, 0.46, 0.49, 0.27])
    expected = total * w / w.sum()
    us = (np.arange(2000) + 0.5) / 2000  # a fine grid of u: the mean over u is the expectation
    counts = np.stack([systematic_counts(w, total, float(u)) for u in us])  # (2000, 4)
    assert (counts.sum(axis=1) == total).all()
    assert (counts >= np.floor(expected) - 1e-9).all() and (counts <= np.ceil(expected) + 1e-9).all()
    np.testing.assert_allclose(counts.mean(axis=0), expected, atol=2e-3)


def test_uniform_mode_draws_nothing():
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    counts = plan_task_counts(["a", "b", "c"], 3, {"a": 0.0, "b": 1.0}, TaskSamplingConfig(), rng)
    assert counts == [3, 3, 3]
    assert rng.bit_generator.state == state


def test_uncertain_mode_moves_groups_to_uncertain_tasks():
    tasks = ["hopeless", "coin", "solved"]
    p = {"hopeless": 0.0, "coin": 0.5, "solved": 1.0}
    cfg = TaskSamplingConfig(mode="uncertain", eps=0.05)
    rng = np.random.default_rng(1)
    runs = np.array([plan_task_counts(tasks, 4, p, cfg, rng) for _ in range(200)])  # (200, 3)
    assert (runs.sum(axis=1) == 12).all()
    assert runs[:, 1].min() >= 10  # 12 * 0.55 / 0.65 = 10.15
    assert 0 < runs[:, 0].sum() < 200  # the floor weight still visits the hopeless task now and then
    floored = plan_task_counts(tasks, 4, p, TaskSamplingConfig(mode="uncertain", min_groups=1), rng)
    assert min(floored) >= 1 and sum(floored) == 12


def test_variable_counts_keep_seeds_disjoint():
    tasks = ["a", "b", "c"]
    plans = [group_plan(tasks, c, it, stride=9) for it, c in enumerate([[9, 0, 0], [2, 3, 4], [0, 0, 9]])]
    seeds = [(t, s) for p in plans for t, s in p]
    assert len({s for _, s in seeds}) == len(seeds) == 27
    with pytest.raises(ValueError, match="stride"):
        group_plan(tasks, [4, 1, 1], 0, stride=3)


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="eps"):
        TaskSamplingConfig(mode="uncertain", eps=0.0)
    with pytest.raises(ValueError, match="mode"):
        TaskSamplingConfig(mode="greedy")  # type: ignore[arg-type]
