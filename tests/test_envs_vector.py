"""Vector env: parallel workers equal the in-process env, clone, crash recovery, no orphans, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from z1.envs.base import EnvError
from z1.envs.vector import EnvWorkerError, InProcessVectorEnv, VectorEnv

pytestmark = pytest.mark.sim

TASKS = ["push-v3", "drawer-open-v3", "button-press-topdown-v3"]
SEEDS = [3, 4, 5]


@pytest.fixture(scope="module")
def venv():
    v = VectorEnv("metaworld", num_slots=3, num_workers=2)
    yield v
    v.close()


@pytest.fixture(scope="module")
def inproc():
    v = InProcessVectorEnv("metaworld", num_slots=3)
    yield v
    v.close()


def _chunks(seed: int, n: int = 2) -> list[dict[int, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{s: rng.uniform(-1, 1, (4, 4)) for s in range(3)} for _ in range(n)]  # slot -> (h, d)


def _same_obs(a, b) -> bool:
    return a.key() == b.key()


def test_vector_equals_in_process(venv, inproc):
    oa = venv.reset([0, 1, 2], TASKS, SEEDS)
    ob = inproc.reset([0, 1, 2], TASKS, SEEDS)
    assert all(_same_obs(x, y) for x, y in zip(oa, ob))
    for chunk in _chunks(0):
        ra = venv.run_chunks(chunk, stop_on_success=False)
        rb = inproc.run_chunks(chunk, stop_on_success=False)
        assert set(ra) == {0, 1, 2}
        for s in range(3):
            assert ra[s].steps == rb[s].steps == 4 and ra[s].t == rb[s].t
            assert np.array_equal(ra[s].rewards, rb[s].rewards)
            assert _same_obs(ra[s].observation, rb[s].observation)
    ea, eb = venv.expert_actions([0, 2]), inproc.expert_actions([0, 2])
    assert all(np.array_equal(x, y) for x, y in zip(ea, eb))
    sa = venv.snapshot(1)
    sb = inproc.snapshot(1)
    assert np.array_equal(sa.sim, sb.sim) and sa.t == sb.t == 8
    assert venv.observe([2])[0].images["scene"].shape == (64, 64, 3)


def test_restore_and_clone_across_workers(venv):
    venv.reset([0, 1], ["push-v3", "reach-v3"], [7, 8])
    venv.run_chunks({0: np.tile([0.5, 0.2, -0.3, 1.0], (3, 1))}, observe=False)
    snap = venv.snapshot(0)
    chunk = np.random.default_rng(1).uniform(-1, 1, (5, 4))
    first = venv.run_chunks({0: chunk}, stop_on_success=False)[0]
    obs = venv.restore(0, snap)
    assert obs.instruction == "push the puck to the goal"
    again = venv.run_chunks({0: chunk}, stop_on_success=False)[0]
    assert np.array_equal(first.rewards, again.rewards) and _same_obs(first.observation, again.observation)
    venv.restore(0, snap)
    assert venv.worker_of(0) != venv.worker_of(1)
    venv.clone(0, 1)  # slot 1 is in the other worker and on another task
    assert venv.slot_task(1) == ("push-v3", 7)
    res = venv.run_chunks({0: chunk, 1: chunk}, stop_on_success=False)
    assert np.array_equal(res[0].rewards, res[1].rewards)
    assert _same_obs(res[0].observation, res[1].observation)
    assert res[0].t == res[1].t == 8


def test_worker_crash_is_reported_and_recovered(venv):
    venv.reset([0, 1, 2], TASKS, SEEDS)
    old = venv.pids()[1]
    venv._crash_worker_for_test(1)
    with pytest.raises(EnvWorkerError, match=r"slot 1 \(task 'drawer-open-v3', seed 4\)"):
        venv.run_chunks({0: np.zeros((2, 4)), 1: np.zeros((2, 4))})
    assert venv.pids()[1] != old
    with pytest.raises(EnvError, match="reset"):
        venv.run_chunks({1: np.zeros((2, 4))})
    venv.run_chunks({0: np.zeros((2, 4)), 2: np.zeros((2, 4))}, observe=False)  # worker 0 unaffected
    venv.reset([1], ["drawer-open-v3"], [4])
    assert venv.run_chunks({1: np.zeros((2, 4))}, observe=False)[1].t == 2


def test_bad_input(venv):
    venv.reset([0], ["reach-v3"], [0])
    with pytest.raises(EnvError, match="NaN"):
        venv.run_chunks({0: np.full((2, 4), np.nan)})
    with pytest.raises(EnvError, match="shape"):
        venv.run_chunks({0: np.zeros((2, 7))})
    with pytest.raises(EnvError, match="out of range"):
        venv.observe([9])
    with pytest.raises(EnvError, match="reach-v3"):
        venv.reset([0], ["reach-v4"], [0])
    venv.reset([0], ["reach-v3"], [0])
    snap = venv.snapshot(0)
    venv.reset([0], ["push-v3"], [0])
    with pytest.raises(EnvError, match="reach-v3"):
        venv.restore(0, snap)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_no_orphans_after_close_or_parent_death():
    v = VectorEnv("metaworld", num_slots=2, num_workers=2, env_kwargs={"render": False})
    pids = v.pids()
    assert all(_alive(p) for p in pids)
    with v:
        v.reset([0, 1], ["reach-v3", "push-v3"], [0, 0])
    assert not any(_alive(p) for p in pids)
    code = (
        "import os, sys; from z1.envs.vector import VectorEnv\n"
        "v = VectorEnv('metaworld', num_slots=2, num_workers=2, env_kwargs={'render': False})\n"
        "print(*v.pids(), flush=True); os._exit(0)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=os.environ
    )
    child_pids = [int(x) for x in out.stdout.split()]
    assert len(child_pids) == 2, out.stderr
    deadline = time.time() + 15
    while any(_alive(p) for p in child_pids) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in child_pids)


def test_clone_many_same_task_other_seed_without_reset(venv):
    """Branching: one snapshot into several slots (both workers), slots that hold the task with another
    seed are restored without a reset, and every clone then follows the same trajectory bitwise."""
    venv.reset([0, 1, 2], ["push-v3", "push-v3", "reach-v3"], [7, 9, 8])
    venv.run_chunks({0: np.tile([0.3, -0.2, 0.1, -1.0], (4, 1))}, observe=False)
    assert venv.clone_many(0, [1, 2]) == [None, None]  # no rendering unless asked
    assert venv.slot_task(1) == venv.slot_task(2) == ("push-v3", 7)
    chunk = np.random.default_rng(2).uniform(-1, 1, (6, 4))
    res = venv.run_chunks({0: chunk, 1: chunk, 2: chunk}, stop_on_success=False)
    for s in (1, 2):
        assert np.array_equal(res[0].rewards, res[s].rewards)
        assert _same_obs(res[0].observation, res[s].observation)
        assert res[s].t == res[0].t == 10
    with pytest.raises(EnvError, match="also a destination"):
        venv.clone_many(0, [0, 1])
