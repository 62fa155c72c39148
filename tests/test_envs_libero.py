"""LIBERO adapter: install errors (always), and with the `libero` extra installed: reset/step/observe on two
suites, seeds = the benchmark's initial states, bit-exact restore, the camera flip."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from z1.envs import libero as lib
from z1.envs import libero_tasks as lt
from z1.envs.base import Env, EnvError

# ---------------------------------------------------------------------------------------------------
# Without LIBERO.


def test_missing_install_names_what_and_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    def versions(table: dict[str, str]):
        return lambda name: table.get(name)

    found = lambda name: object()  # noqa: E731 - a find_spec that finds everything
    ok = {"robosuite": "1.5.2", lt.LIBERO_DIST: "0.2.0", **{d: "0.1.0" for d in lt.ASSET_DISTS}}
    assert lt.missing_install(found, versions(ok)) is None
    assert "robosuite 1.4.0" in lt.missing_install(found, versions({**ok, "robosuite": "1.4.0"}))
    assert "`libero` package" in lt.missing_install(lambda name: None, versions(ok))
    wrong = {k: v for k, v in ok.items() if k != lt.LIBERO_DIST} | {"hf-libero": "0.1.4"}
    assert "hf-libero" in lt.missing_install(found, versions(wrong))
    no_assets = {k: v for k, v in ok.items() if k != lt.ASSET_DISTS[2]}
    assert lt.ASSET_DISTS[2] in lt.missing_install(found, versions(no_assets))

    monkeypatch.setattr(lt, "missing_install", lambda: "the `libero` package is not installed.")
    with pytest.raises(lt.LiberoUnavailable, match=r"pip install -e '\.\[libero\]'"):
        lib.LiberoEnv(render=False)
    from z1.envs.registry import make_env

    with pytest.raises(EnvError, match=r"\.\[libero\]"):
        make_env("libero", render=False)
    with pytest.raises(AttributeError):  # the registry then lists no LIBERO task sets
        lib.TASK_SETS  # noqa: B018


def test_suites_and_episode_limits() -> None:
    # openpi examples/libero/main.py: longest training demo + margin, after 10 settle steps
    assert lt.EPISODE_LIMITS == {
        "libero_spatial": 220,
        "libero_object": 280,
        "libero_goal": 300,
        "libero_10": 520,
        "libero_90": 400,
    }
    assert lt.STANDARD_SUITES == ("libero_spatial", "libero_object", "libero_goal", "libero_10")
    assert lt.SETTLE_STEPS == 10 and lt.SETTLE_ACTION == (0, 0, 0, 0, 0, 0, -1)
    assert len(lib.STATE_NAMES) == 8 and lib.CAMERAS == ("agentview", "robot0_eye_in_hand")


def test_flip_is_the_openpi_lerobot_rotation() -> None:
    """openpi/LeRobot feed `raw[::-1, ::-1]` of robosuite's image, whose rows are OpenGL's (bottom-up)."""
    upright = np.random.default_rng(0).integers(0, 255, size=(6, 5, 3), dtype=np.uint8)
    robosuite_raw = upright[::-1]
    np.testing.assert_array_equal(lib.flip_image(upright), robosuite_raw[::-1, ::-1])
    np.testing.assert_array_equal(lib.flip_image(upright), np.rot90(robosuite_raw, 2))
    assert lib.flip_image(upright).flags.c_contiguous


# ---------------------------------------------------------------------------------------------------
# With LIBERO installed.

_MISSING = lt.missing_install()
needs_libero = pytest.mark.skipif(
    _MISSING is not None, reason=f"LIBERO not installed: {_MISSING} ({lt.INSTALL_COMMAND})"
)
SUITES_TESTED = ("libero_spatial", "libero_object")


@pytest.fixture(scope="module")
def env() -> lib.LiberoEnv:
    e = lib.LiberoEnv(image_size=(48, 48), render=True)
    yield e
    e.close()


def _task(env: lib.LiberoEnv, suite: str) -> str:
    return next(k for k in env.tasks() if env.task_info(k).suite == suite)


def _actions(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.uniform(-0.5, 0.5, size=(n, 7))  # (n, 7)
    a[:, 6] = np.where(np.arange(n) % 6 < 3, 1.0, -1.0)  # gripper toggles: exercises current_action
    return a


@pytest.mark.sim
@needs_libero
def test_task_table_and_spec(env: lib.LiberoEnv) -> None:
    assert isinstance(env, Env)
    sets = lib.TASK_SETS
    assert {s: len(sets[s]) for s in lt.LIBERO_SUITES} == {
        "libero_spatial": 10,
        "libero_object": 10,
        "libero_goal": 10,
        "libero_10": 10,
        "libero_90": 90,
    }
    assert len(sets["libero"]) == 40 and len(env.tasks()) == 130
    first = sets["libero_spatial"][0]
    assert (
        first
        == "libero_spatial/pick_up_the_black_bowl_between_the_plate_and_the_ramekin_and_place_it_on_the_plate"
    )
    assert (
        env.instruction(first)
        == "pick up the black bowl between the plate and the ramekin and place it on the plate"
    )
    assert env.horizon(sets["libero_10"][3]) == 520 and env.spec.max_steps == 520
    assert env.spec.action_dim == 7 and env.spec.state_dim == 8 and env.spec.control_hz == 20.0
    assert env.init_states(first).shape[0] == 50
    versions = env.metadata["versions"]
    assert versions["robosuite"].startswith("1.5.") and versions[lt.LIBERO_DIST] == "0.2.0"
    with pytest.raises(EnvError, match="libero_spatial/"):
        env.reset("libero_spatial/pick_up_the_black_bowl", 0)


@pytest.mark.sim
@needs_libero
@pytest.mark.parametrize("suite", SUITES_TESTED)
def test_reset_step_observe(env: lib.LiberoEnv, suite: str) -> None:
    task = _task(env, suite)
    before = np.random.get_state()[1].copy()
    obs = env.reset(task, 2)
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # the caller's global RNG is kept
    assert env.task == task and env.t == 0 and env.init_index == 2
    assert set(obs.images) == {"agentview", "robot0_eye_in_hand"}
    assert all(img.shape == (48, 48, 3) and img.dtype == np.uint8 for img in obs.images.values())
    assert obs.state.shape == (8,) and np.all(np.isfinite(obs.state))
    assert obs.instruction == env.instruction(task)
    assert 0.0 <= obs.state[6] <= 0.05 and -0.05 <= obs.state[7] <= 0.0  # finger joints, open
    r = env.step(np.array([0.0, 0.0, 0.5, 0.0, 0.0, 0.0, -1.0]), observe=True)
    assert env.t == 1 and not r.done and r.observation is not None and r.success is False
    assert r.observation.state[2] > obs.state[2]  # +z moves the gripper up
    with pytest.raises(EnvError, match="shape"):
        env.step(np.zeros(4))


@pytest.mark.sim
@needs_libero
def test_seeds_are_the_benchmark_initial_states(env: lib.LiberoEnv) -> None:
    task = _task(env, "libero_spatial")
    states = env.init_states(task)
    for seed in (0, 7):
        env.reset(task, seed, settle_steps=0)
        raw = env.raw_env
        np.testing.assert_array_equal(raw.sim.get_state().flatten(), states[seed])
    q7 = env.raw_env.sim.data.qpos.copy()
    env.reset(task, 100_007, settle_steps=0)  # z1's eval seeds 100000+i are the benchmark's episodes
    assert env.init_index == 7
    np.testing.assert_array_equal(env.raw_env.sim.data.qpos, q7)
    a = env.reset(task, 7)
    b = env.reset(task, 57)  # whatever ran before, the same initial state gives the same episode
    assert a.key() == b.key()


@pytest.mark.sim
@needs_libero
@pytest.mark.parametrize("suite", SUITES_TESTED)
def test_exact_restore(env: lib.LiberoEnv, suite: str) -> None:
    task = _task(env, suite)
    acts = _actions(12, 1)
    env.reset(task, 4)
    for a in acts[:4]:
        env.step(a)
    snap = pickle.loads(pickle.dumps(env.snapshot()))

    def run() -> tuple[list[tuple[float, bool, bool]], list[np.ndarray], bytes]:
        steps = [env.step(a) for a in acts[4:]]
        sims = [env.raw_env.sim.get_state().flatten()]  # full (time, qpos, qvel) after the run
        return [(r.reward, r.success, r.done) for r in steps], sims, env.observe().key()

    first = run()
    env.reset(task, 9)  # other initial state, other fixture draws
    env.step(acts[0])
    env.restore(snap)
    assert env.t == 4 and env.init_index == 4
    again = run()
    assert first[0] == again[0] and first[2] == again[2]  # rewards/success/done, images + state
    np.testing.assert_array_equal(first[1][0], again[1][0])
    other = _task(env, "libero_object" if suite == "libero_spatial" else "libero_spatial")
    env.reset(other, 0)
    with pytest.raises(EnvError, match="snapshot is of task"):
        env.restore(snap)


@pytest.mark.sim
@needs_libero
def test_camera_flip(env: lib.LiberoEnv) -> None:
    task = _task(env, "libero_spatial")
    flipped = env.reset(task, 0)
    env._flip = False
    try:
        upright = env.observe()
    finally:
        env._flip = True
    for cam in lib.CAMERAS:
        np.testing.assert_array_equal(flipped.images[cam], upright.images[cam][:, ::-1])
        assert not np.array_equal(flipped.images[cam], upright.images[cam])


@pytest.mark.sim
@needs_libero
def test_success_predicate_on_a_scripted_state(env: lib.LiberoEnv) -> None:
    """Put the object of "(In obj basket_contain_region)" into the basket: the BDDL goal holds."""
    task = _task(env, "libero_object")  # pick up the alphabet soup and place it in the basket
    env.reset(task, 0)
    raw = env.raw_env
    (pred, obj, region) = raw.parsed_problem["goal_state"][0]
    assert pred == "in" and not env.step(np.array([0, 0, 0, 0, 0, 0, -1.0])).success
    joint = raw.get_object(obj).joints[-1]
    qpos = np.array(raw.sim.data.get_joint_qpos(joint))
    qpos[:3] = raw.sim.data.get_site_xpos(region) + np.array([0.0, 0.0, 0.06])
    raw.sim.data.set_joint_qpos(joint, qpos)
    raw.sim.data.set_joint_qvel(joint, np.zeros(6))
    raw.sim.forward()
    results = [env.step(np.array([0, 0, 0, 0, 0, 0, -1.0])) for _ in range(5)]
    assert any(r.success for r in results) and env.success_latched
