"""RoboCasa adapter without robocasa: task table, action mapping, snapshot pieces, install errors."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest

from z1.envs import robocasa as rc
from z1.envs import robocasa_actions as ra
from z1.envs.base import EnvError
from z1.envs.mujoco_state import capture_attrs, restore_attrs
from z1.envs.robocasa_tasks import ROBOCASA_TASKS, TASK_NAMES, TASKS_BY_NAME


def test_task_table() -> None:
    assert len(ROBOCASA_TASKS) == 24 and len(set(TASK_NAMES)) == 24
    assert "NavigateKitchen" not in TASK_NAMES
    for t in ROBOCASA_TASKS:
        assert 300 <= t.horizon <= 1000
        text = t.default_instruction()
        assert text and "{" not in text and "_" not in text
        assert set(t.placeholders()) == set(t.generic)  # every template hole has a generic fill-in
    expect = {
        "PnPCounterToSink": 700,
        "OpenDoubleDoor": 1000,
        "CloseDoubleDoor": 700,
        "CoffeePressButton": 300,
    }
    for name, h in expect.items():
        assert TASKS_BY_NAME[name].horizon == h
    assert sum(t.family == "pnp" for t in ROBOCASA_TASKS) == 8
    assert TASKS_BY_NAME["OpenDrawer"].default_instruction() == "open the left drawer"


def test_action_mapping_order_and_round_trip() -> None:
    a = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    e = ra.to_env_action(a)
    assert e.shape == (12,)
    # env/HDF5 order (docs/environments.md#robocasa-actions):
    # eef_pos 0:3, eef_rot 3:6, gripper 6, base 7:10, torso 10, mode 11
    np.testing.assert_array_equal(e, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0, 0, 0, 0, -1])
    np.testing.assert_array_equal(ra.from_env_action(e), a)
    batch = np.random.default_rng(0).uniform(-1, 1, size=(5, 4, 7))  # (b, h, 7)
    eb = ra.to_env_action(batch)
    assert eb.shape == (5, 4, 12)
    np.testing.assert_array_equal(ra.from_env_action(eb), batch)
    assert np.all(np.abs(eb) <= 1.0) and np.all(eb[..., 11] == -1.0) and np.all(eb[..., 7:11] == 0)
    with pytest.raises(EnvError, match="7"):
        ra.to_env_action(np.zeros(12))
    with pytest.raises(EnvError, match="12"):
        ra.from_env_action(np.zeros(7))


def test_layout_reorder_matches_brute_force() -> None:
    env_a = np.arange(12.0)  # values name their env index
    ler = ra.reorder_action(env_a, "env", "lerobot")
    # GR00T/RoboCasa365: base x,y,yaw (env 7:10), torso (10), mode (11), eef pos (0:3), rot (3:6), grip (6)
    np.testing.assert_array_equal(ler, [7, 8, 9, 10, 11, 0, 1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(ra.reorder_action(ler, "lerobot", "env"), env_a)
    with pytest.raises(EnvError, match="unknown action layout"):
        ra.reorder_action(env_a, "env", "openpi")


def test_live_split_check() -> None:
    ra.check_env_action_split({"right": [0, 6], "right_gripper": [6, 7], "base": [7, 10], "torso": [10, 11]})
    with pytest.raises(EnvError, match="Refusing"):  # a base-first controller must not be silently accepted
        ra.check_env_action_split(
            {"base": [0, 3], "torso": [3, 4], "right": [4, 10], "right_gripper": [10, 11]}
        )


def test_missing_install_messages() -> None:
    def none(name: str) -> None:
        return None

    assert "robosuite" in (rc.missing_install(none) or "")

    def only_robosuite(name: str) -> object | None:
        return object() if name == "robosuite" else None

    assert "`robocasa` package is not installed" in (rc.missing_install(only_robosuite) or "")


def test_missing_install_wrong_version_and_assets(tmp_path) -> None:
    root = tmp_path / "robocasa"
    (root / "environments" / "kitchen").mkdir(parents=True)

    def spec(name: str) -> object:
        return SimpleNamespace(submodule_search_locations=[str(root)])

    assert "not v0.2" in (rc.missing_install(spec) or "")
    ss = root / "environments" / "kitchen" / "single_stage"
    ss.mkdir()
    (ss / "kitchen_pnp.py").write_text("")
    (root / "models" / "assets" / "textures").mkdir(parents=True)
    msg = rc.missing_install(spec) or ""
    assert "assets are missing" in msg and "fixtures" in msg and "textures," not in msg
    for d in rc.REQUIRED_ASSET_DIRS:
        (root / "models" / "assets" / d).mkdir(parents=True, exist_ok=True)
    assert rc.missing_install(spec) is None


@pytest.mark.skipif(importlib.util.find_spec("robocasa") is not None, reason="robocasa is installed here")
def test_constructor_without_robocasa_explains() -> None:
    with pytest.raises(rc.RoboCasaUnavailable) as ei:
        rc.RoboCasaEnv()
    msg = str(ei.value)
    assert "robocasa" in msg and "download_kitchen_assets" in msg and "v0.2" in msg
    assert isinstance(ei.value, EnvError)


def test_unknown_task_suggests_before_install_check() -> None:
    with pytest.raises(EnvError, match="Did you mean: OpenDrawer"):
        rc.RoboCasaEnv(horizons={"OpenDrawr": 10})


class _Fixture:
    def __init__(self, on: bool | None) -> None:
        if on is not None:
            self._turned_on = on


def test_fixture_flags_snapshot_with_fakes() -> None:
    raw = SimpleNamespace(
        fixtures={"microwave": _Fixture(False), "coffee_machine": _Fixture(True), "sink": _Fixture(None)}
    )
    state = rc.capture_fixture_state(raw)
    assert state == {
        "fixture.coffee_machine": {"_turned_on": True},
        "fixture.microwave": {"_turned_on": False},
    }
    raw.fixtures["microwave"]._turned_on = True
    raw.fixtures["coffee_machine"]._turned_on = False
    rc.restore_fixture_state(raw, state)
    assert raw.fixtures["microwave"]._turned_on is False and raw.fixtures["coffee_machine"]._turned_on is True
    other = SimpleNamespace(fixtures={"microwave": _Fixture(False)})
    with pytest.raises(EnvError, match="fixtures"):
        rc.restore_fixture_state(other, state)


def test_stateful_objects_cover_controllers_grippers_observables() -> None:
    ctrl = SimpleNamespace(goal_pos=np.zeros(3), interpolator_pos=None)
    grip = SimpleNamespace(current_action=np.zeros(1))
    robot = SimpleNamespace(
        composite_controller=SimpleNamespace(part_controllers={"right": ctrl, "base": SimpleNamespace()}),
        gripper={"right": grip},
    )
    obs = SimpleNamespace(_time_since_last_sample=0.01, _sampled=True)
    raw = SimpleNamespace(robots=[robot], _observables={"robot0_eef_pos": obs}, timestep=5)
    paths = dict(rc.robocasa_stateful_objects(raw))
    assert set(paths) == {
        "env",
        "robot0",
        "robot0.composite",
        "robot0.ctrl.right",
        "robot0.ctrl.base",
        "robot0.gripper.right",
        "observable.robot0_eef_pos",
    }
    assert paths["robot0.gripper.right"] is grip and paths["observable.robot0_eef_pos"] is obs
    snap = {p: capture_attrs(o) for p, o in paths.items()}
    grip.current_action[:] = 1.0
    obs._time_since_last_sample = 0.04
    raw.timestep = 9
    for p, o in paths.items():
        restore_attrs(o, snap[p])
    assert grip.current_action[0] == 0.0 and obs._time_since_last_sample == 0.01 and raw.timestep == 5


def test_state_names_layout() -> None:
    assert len(rc.STATE_NAMES) == 16
    assert rc.STATE_NAMES[0] == "base_to_eef_pos_0" and rc.STATE_NAMES[-1] == "gripper_qpos_1"
