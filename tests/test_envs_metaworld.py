"""Meta-World adapter: scene seeding, bit-exact snapshot/restore, experts, rendering, bad input."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from z1.envs.base import EnvError, run_chunk
from z1.envs.metaworld import _ROTATED_180, INSTRUCTIONS, MT10_TASKS, MT50_TASKS, MW_QUICK_TASKS, MetaWorldEnv

pytestmark = pytest.mark.sim


@pytest.fixture(scope="module")
def env():
    e = MetaWorldEnv(image_size=(64, 64))
    yield e
    e.close()


@pytest.fixture(scope="module")
def blind():
    e = MetaWorldEnv(render=False)
    yield e
    e.close()


def test_task_lists_match_metaworld():
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS, MT10_V3
    from metaworld.policies import ENV_POLICY_MAP

    assert set(MT50_TASKS) == set(ALL_V3_ENVIRONMENTS) and len(MT50_TASKS) == 50
    assert list(MT10_TASKS) == list(MT10_V3)
    assert set(MT50_TASKS) <= set(ENV_POLICY_MAP)
    assert set(MW_QUICK_TASKS) <= set(MT50_TASKS)
    assert len(set(INSTRUCTIONS.values())) == 50  # every task is told apart by its instruction


@pytest.mark.parametrize("task", ["door-open-v3", "pick-place-v3"])
def test_reused_env_reproduces_fresh_gym_make(blind, task):
    """Re-seeding the cached env in place gives the scene and dynamics of gym.make(..., seed=S)."""
    import gymnasium as gym
    from metaworld.policies import ENV_POLICY_MAP

    blind.reset(task, 5)
    for _ in range(5):
        blind.step(blind.expert_action())
    blind.reset(task, 11)  # the same underlying env, another seed
    fresh = gym.make("Meta-World/goal_observable", env_name=task, seed=11).unwrapped
    o, _ = fresh.reset()
    policy = ENV_POLICY_MAP[task]()
    np.testing.assert_array_equal(blind._raw_obs, o)
    for _ in range(15):
        a = np.clip(np.asarray(policy.get_action(o.copy()), dtype=np.float64), -1, 1)
        np.testing.assert_array_equal(blind.expert_action(), a)
        o, r, *_ = fresh.step(a)
        res = blind.step(a)
        np.testing.assert_array_equal(blind._raw_obs, o)
        assert res.reward == r
    fresh.close()
    # a different seed gives a different scene; the same seed the same one
    blind.reset(task, 12)
    obj12 = blind.raw_env._get_pos_objects().copy()
    blind.reset(task, 11)
    assert not np.array_equal(obj12, blind.raw_env._get_pos_objects())
    blind.reset(task, 12)
    assert np.array_equal(obj12, blind.raw_env._get_pos_objects())


def _rollout(env, actions):
    out = []
    for a in actions:
        r = env.step(a, observe=True)
        obs = r.observation
        out.append(
            (obs.images["scene"].copy(), obs.images["wrist"].copy(), obs.state.copy(), r.reward, r.success)
        )
    return out


@pytest.mark.parametrize("task", ["push-v3", "basketball-v3", "door-lock-v3"])
def test_restore_is_bit_exact(env, task):
    """basketball and door-lock hold extra live views into MjData (_target_pos, obj_init_pos)."""
    rng = np.random.default_rng(0)
    env.reset(task, 3)
    for _ in range(15):
        env.step(env.expert_action())
    snap = pickle.loads(pickle.dumps(env.snapshot()))
    assert len(pickle.dumps(snap)) < 20_000
    at_snap = env.observe()
    actions = [np.clip(env.expert_action() + rng.normal(0, 0.3, 4), -1, 1) for _ in range(10)]
    a = _rollout(env, actions)
    env.restore(snap)
    assert env.t == 15
    assert env.observe().key() == at_snap.key()
    b = _rollout(env, actions)
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            assert np.array_equal(u, v)
    # restore after a reset to another seed of the same task also works (model fields restored)
    env.reset(task, 4)
    env.restore(snap)
    c = _rollout(env, actions)
    for x, y in zip(a, c):
        for u, v in zip(x, y):
            assert np.array_equal(u, v)


def test_snapshot_excludes_live_views(blind):
    blind.reset("basketball-v3", 0)
    snap = blind.snapshot()
    assert "init_left_pad" not in snap.attrs and "init_right_pad" not in snap.attrs
    assert "_target_pos" not in snap.attrs  # a view into data.site_xpos in this task
    assert "_prev_obs" in snap.attrs and "curr_path_length" in snap.attrs


@pytest.mark.parametrize("task", ["button-press-topdown-v3", "drawer-close-v3", "reach-v3"])
def test_scripted_expert_succeeds(blind, task):
    blind.reset(task, 1)
    # the expert needs well under 200 steps on these tasks (docs/environments.md#scripted-experts);
    # one action per chunk
    while not blind.success_latched and blind.t < 200:
        res = run_chunk(blind, blind.expert_action()[None], observe=False)  # (1, 4)
        assert res.success == blind.success_latched
    assert blind.success_latched, f"{task}: expert failed within 200 steps"


def test_frames_differ_between_cameras_and_steps(env):
    obs0 = env.reset("drawer-open-v3", 0)
    assert set(obs0.images) == {"scene", "wrist"}
    for img in obs0.images.values():
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8 and img.std() > 5
    assert not np.array_equal(obs0.images["scene"], obs0.images["wrist"])
    assert obs0.state.shape == (4,) and obs0.state.dtype == np.float32
    assert obs0.instruction == "open the drawer"
    r = None
    for _ in range(5):
        r = env.step(np.array([0.0, 0.0, -1.0, 1.0]))
    assert r.observation is None
    obs1 = env.observe()
    assert not np.array_equal(obs0.images["scene"], obs1.images["scene"])
    assert not np.array_equal(obs0.images["wrist"], obs1.images["wrist"])
    assert obs1.state[2] < obs0.state[2]  # moved down


def test_done_only_at_time_limit(blind):
    blind.reset("reach-v3", 0)
    a = np.zeros(4)
    for i in range(500):
        r = blind.step(a)
        assert r.done == (i == 499)
    with pytest.raises(EnvError, match="over"):
        blind.step(a)


def test_bad_input(blind):
    with pytest.raises(EnvError, match="button-press-topdown-v3"):
        blind.reset("button-press-topdown", 0)
    fresh = MetaWorldEnv(render=False)
    with pytest.raises(EnvError, match="reset"):
        fresh.step(np.zeros(4))
    blind.reset("reach-v3", 0)
    with pytest.raises(EnvError, match="shape"):
        blind.step(np.zeros(7))
    with pytest.raises(EnvError, match="NaN"):
        blind.step(np.array([0.0, np.nan, 0.0, 0.0]))
    snap = blind.snapshot()
    blind.reset("push-v3", 0)
    with pytest.raises(EnvError, match="reach-v3"):
        blind.restore(snap)
    with pytest.raises(EnvError, match="MetaWorldSnapshot"):
        blind.restore({"sim": np.zeros(3)})
    with pytest.raises(EnvError, match="camera"):
        MetaWorldEnv(cameras=("scene", "left"))


def test_task_cache_is_bounded_and_evicted_tasks_come_back_identical():
    env = MetaWorldEnv(image_size=(32, 32), max_cached_tasks=2)
    try:
        a, b, c = MW_QUICK_TASKS[:3]
        first = env.reset(a, 5)
        env.reset(b, 5)
        env.reset(a, 6)  # a becomes the most recently used
        env.reset(c, 5)  # evicts b, the least recently used
        assert env.cached_tasks == [a, c]
        again = env.reset(a, 5)  # cached, reseeded
        assert np.array_equal(first.state, again.state)
        assert all(np.array_equal(first.images[k], again.images[k]) for k in first.images)
        env.reset(b, 5)  # rebuilt after eviction
        assert env.cached_tasks == [a, b]
    finally:
        env.close()
    with pytest.raises(EnvError, match="max_cached_tasks"):
        MetaWorldEnv(max_cached_tasks=0)


def test_slots_of_one_task_share_gl_memory_and_render_what_their_own_context_would():
    from z1.envs.render import CameraRenderer, process_renderer

    task = MW_QUICK_TASKS[1]
    a, b = MetaWorldEnv(image_size=(40, 40)), MetaWorldEnv(image_size=(40, 40))
    own = CameraRenderer(40, 40)  # a private context per model: what every slot had before sharing
    shared = process_renderer(40, 40)
    try:
        before = shared.num_contexts
        a.reset(task, 1)
        b.reset(task, 2)
        for _ in range(3):  # the two slots in different states
            run_chunk(b, np.tile([0.5, -0.3, 0.2, 1.0], (5, 1)))
        assert shared.num_contexts == before + 1  # one context for the task, not one per slot
        for e in (a, b):
            got = e.observe().images
            raw = e.raw_env
            ids = e._camera_ids[task]
            ref = own.render(raw.model, raw.data, ids)  # (y, x, 3) per camera, no sharing
            for cam, img in zip(e.spec.cameras, ref):
                flip = e._camera_names[cam] in _ROTATED_180
                assert np.array_equal(got[cam], img[::-1, ::-1] if flip else img), cam
        assert not np.array_equal(a.observe().images["scene"], b.observe().images["scene"])
        a.close()
        assert shared.num_contexts == before + 1  # b still renders with it
        b.close()
        assert shared.num_contexts == before  # freed with its last user
    finally:
        own.close()
        a.close()
        b.close()
