"""Rollouts and evaluations that survive dying env hosts; Ray env actors collect what the in-process env does.

A wave whose env host dies is dropped and collected again from the same RNG states, so a disturbed
collection equals an undisturbed one exactly: every group once, no leftover records, same episodes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fakes import FakeVectorEnv, tiny_runner
from z1.envs.base import EnvError
from z1.envs.vector import EnvWorkerError, InProcessVectorEnv, VectorEnv
from z1.rollout.collector import RolloutBatch, RolloutConfig, collect_groups

FAKE_CFG = RolloutConfig(
    group_size=8, trunks=2, branch_factor=4, branch_at=2, h_exec=4, num_steps=3, max_steps=24
)
FAKE_GROUPS = [("a", 1), ("b", 2), ("a", 3)]  # 16 slots: two waves

MW_KW = {"render": False}  # state-only observations: rendering would take ~4x the memory
MW_CFG = RolloutConfig(  # one trunk branched in two at chunk 1: the clone crosses actors
    group_size=2, trunks=1, branch_factor=2, branch_at=1, h_exec=4, num_steps=2, max_steps=12
)
MW_GROUPS = [("reach-v3", 1), ("push-v3", 2), ("reach-v3", 3)]  # 2 slots: three waves


@pytest.fixture(scope="module")
def runner():
    return tiny_runner()


def _collect(runner, venv, cfg, groups, progress=None, retries: int = 3) -> RolloutBatch:
    return collect_groups(
        runner,
        venv,
        list(groups),
        cfg,
        np.random.default_rng(0),
        torch.Generator().manual_seed(0),
        progress=progress,
        max_wave_retries=retries,
    )


def assert_same_batch(a: RolloutBatch, b: RolloutBatch) -> None:
    """Same groups in order, same episodes (leaf success and lengths), same chunk records bitwise."""
    assert [(g.task, g.seed) for g in a.groups] == [(g.task, g.seed) for g in b.groups]
    for ga, gb in zip(a.groups, b.groups):
        la, sa, ta = ga.leaf_outcomes()
        lb, sb, tb = gb.leaf_outcomes()
        assert la == lb and np.array_equal(sa, sb) and np.array_equal(ta, tb)
        assert ga.length == gb.length
    for name in ("obs_index", "chains", "step_ids", "logprobs"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert np.array_equal(a.chunk_group, b.chunk_group) and np.array_equal(a.chunk_node, b.chunk_node)
    assert torch.equal(a.inputs.images, b.inputs.images)


def assert_each_group_once(batch: RolloutBatch, groups) -> None:
    """Every requested group exactly once, and the records match the trees edge by edge."""
    assert [(g.task, g.seed) for g in batch.groups] == list(groups)
    assert set(np.unique(batch.chunk_group)) == set(range(len(groups)))
    for gi, g in enumerate(batch.groups):
        for node in g.tree.nodes[1:]:
            n_rec = int(((batch.chunk_group == gi) & (batch.chunk_node == node.id)).sum())
            assert n_rec == node.num_chunks
        assert all(g.tree.node(leaf).done for leaf in g.tree.leaves())
    assert batch.obs_index.max() < batch.inputs.tokens.shape[0]


class FlakyVectorEnv(FakeVectorEnv):
    """The fake env, failing like a dead worker process on chosen run_chunks calls (1-based)."""

    def __init__(self, num_slots: int, fail_at: set[int] | None = None, always: bool = False) -> None:
        super().__init__(num_slots)
        self.fail_at, self.always = fail_at or set(), always
        self.calls = 0
        self.restarts = 0

    def run_chunks(self, actions, stop_on_success=True, observe=True):
        self.calls += 1
        if self.always or self.calls in self.fail_at:
            self.restarts += 1
            raise EnvWorkerError(f"env worker 1 died during run_chunks (call {self.calls})")
        return super().run_chunks(actions, stop_on_success, observe)


def test_failed_waves_are_dropped_and_collected_again(runner):
    clean = _collect(runner, FakeVectorEnv(16), FAKE_CFG, FAKE_GROUPS)
    assert clean.stats["env_restarts"] == 0 and clean.stats["waves_retried"] == 0
    flaky = FlakyVectorEnv(16, fail_at={2, 9})  # once in the first wave, once later
    got = _collect(runner, flaky, FAKE_CFG, FAKE_GROUPS)
    assert got.stats["env_restarts"] == 2 and got.stats["waves_retried"] == 2
    assert_each_group_once(got, FAKE_GROUPS)
    assert_same_batch(got, clean)


def test_retries_are_bounded(runner):
    with pytest.raises(EnvWorkerError, match="failed 3 times; last error: env worker 1 died"):
        _collect(runner, FlakyVectorEnv(16, always=True), FAKE_CFG, FAKE_GROUPS, retries=2)


def test_evaluation_reruns_the_episodes_in_flight(runner):
    from z1.evaluate import EvalConfig, evaluate

    cfg = EvalConfig(episodes_per_task=3, num_steps=2, max_steps=12, videos_per_task=2)
    clean = evaluate(runner, FakeVectorEnv(4), ["a", "b"], cfg)
    got = evaluate(runner, FlakyVectorEnv(4, fail_at={2, 5, 6}), ["a", "b"], cfg)
    assert got.to_json() == clean.to_json()
    for t in ("a", "b"):
        assert len(got.frames[t]) == 2
        for fa, fb in zip(got.frames[t], clean.frames[t]):
            assert len(fa) == len(fb) and all(np.array_equal(x, y) for x, y in zip(fa, fb))
    with pytest.raises(EnvWorkerError, match="died 3 times in a row"):
        evaluate(runner, FlakyVectorEnv(4, always=True), ["a"], cfg, max_retries=2)


# ---------------------------------------------------------------- Meta-World: process and Ray hosts


@pytest.fixture(scope="module")
def reference(runner):
    with InProcessVectorEnv("metaworld", 2, env_kwargs=MW_KW) as venv:
        batch = _collect(runner, venv, MW_CFG, MW_GROUPS)
    assert all(g.tree.branch_nodes() for g in batch.groups)  # every group used the second slot
    return batch


def _kill_once(kill):
    """A progress callback that kills an env host when the first episode finishes (mid-collection)."""
    done: list[int] = []

    def progress(*_):
        if not done:
            done.append(1)
            kill()

    return progress


@pytest.mark.sim
def test_process_worker_crash_mid_collection_is_survived(runner, reference):
    with VectorEnv("metaworld", 2, num_workers=2, env_kwargs=MW_KW) as venv:
        got = _collect(
            runner, venv, MW_CFG, MW_GROUPS, progress=_kill_once(lambda: venv._crash_worker_for_test(1))
        )
        assert venv.restarts == 1
    assert got.stats["env_restarts"] == 1 and got.stats["waves_retried"] == 1
    assert_each_group_once(got, MW_GROUPS)
    assert_same_batch(got, reference)


@pytest.mark.sim
def test_ray_actors_collect_the_same_episodes_as_in_process(runner, reference, ray_venv):
    assert ray_venv.num_actors == 2 and ray_venv.worker_of(1) == 1
    got = _collect(runner, ray_venv, MW_CFG, MW_GROUPS)
    assert got.stats["env_restarts"] == 0
    assert_same_batch(got, reference)


@pytest.mark.sim
def test_ray_clone_across_actors_and_errors(ray_venv):
    ray_venv.reset([0, 1], ["push-v3", "reach-v3"], [7, 8])
    ray_venv.run_chunks({0: np.tile([0.5, 0.2, -0.3, 1.0], (3, 1))}, observe=False)
    assert ray_venv.worker_of(0) != ray_venv.worker_of(1)
    ray_venv.clone(0, 1)  # snapshot on actor 0, restored on actor 1 (another task: reset first)
    assert ray_venv.slot_task(1) == ("push-v3", 7)
    chunk = np.random.default_rng(1).uniform(-1, 1, (5, 4))
    res = ray_venv.run_chunks({0: chunk, 1: chunk}, stop_on_success=False)
    assert np.array_equal(res[0].rewards, res[1].rewards) and res[0].t == res[1].t == 8
    assert res[0].observation.key() == res[1].observation.key()
    with pytest.raises(EnvError, match="reach-v4"):  # an env's own error comes through as itself
        ray_venv.reset([1], ["reach-v4"], [0])


@pytest.mark.sim
@pytest.mark.parametrize("for_good", [False, True], ids=["restarted-by-ray", "replaced"])
def test_ray_actor_killed_mid_collection_is_survived(runner, reference, ray_venv, for_good):
    """Ray restarts a killed actor; one killed for good (as when its restarts are used up) is replaced."""
    import ray

    before = ray_venv.restarts
    pids = ray_venv.pids()
    kill = _kill_once(lambda: ray.kill(ray_venv.actors[1], no_restart=for_good))
    got = _collect(runner, ray_venv, MW_CFG, MW_GROUPS, progress=kill)
    assert ray_venv.restarts == before + 1
    assert got.stats["env_restarts"] == 1 and got.stats["waves_retried"] >= 1
    assert ray_venv.pids()[0] == pids[0] and ray_venv.pids()[1] != pids[1]
    assert_each_group_once(got, MW_GROUPS)
    assert_same_batch(got, reference)
