"""RoboCasa v0.2 adapter: the 24 atomic kitchen tasks with a PandaOmron (docs/environments.md#robocasa).

robocasa is NOT a dependency of z1: it is not on PyPI, v0.2 pins mujoco 3.2.6 / numpy 1.23 and needs a
~5 GB kitchen asset download (docs/environments.md#robocasa-install). Importing this module never imports
robocasa; constructing `RoboCasaEnv` checks the install and raises `RoboCasaUnavailable` naming what is
missing and how to get it.

Actions (`z1.envs.robocasa_actions`). The policy acts in z1's 7-D arm space `[dx, dy, dz, drx, dry, drz,
grip]` (the same as the robosuite adapter). `to_env_action` maps it to the 12-D PandaOmron action of the
env / v0.2 HDF5 / `env_utils.convert_action`, EEF first (docs/environments.md#robocasa-actions,
`ENV_ACTION_LAYOUT`):
`[eef_pos 0:3, eef_rot 3:6, gripper 6, base_motion 7:10, torso 10, control_mode 11]` with base and torso
zero and control mode -1 (arm mode; RLinf's recipe). The RoboCasa365 LeRobot datasets (GR00T
`PandaOmron_modality.json`) use a permuted layout, base first (`LEROBOT_ACTION_LAYOUT`: `[base_motion 0:4,
control_mode 4:5, eef_pos 5:8, eef_rot 8:11, gripper 11:12]`, base_motion = base x/y/yaw + torso), and a
third-party port shipped such a permutation silently; `reorder_action` converts between named layouts, and
the live env's action split is checked against `ENV_ACTION_LAYOUT` at build time.

Scenes and groups. `reset(task, seed, ep_meta=None)` re-seeds the env's Generator in place and rebuilds
the kitchen (`hard_reset=True`: layout, style, fixtures and objects are sampled in `_load_model`). Group
members share one kitchen through the episode metadata: the leader resets, reads `get_ep_meta()`, and
every member calls `reset(task, seed, ep_meta=meta)` (same layout/style/object instances/fixture refs;
with the same seed also the same placements). Inside one process, `snapshot()`/`restore()` is cheaper.
Snapshot / restore: the robosuite adapter's (`z1.envs.robosuite_base`: `mjSTATE_INTEGRATION` state, plain
attributes of env/robot/controllers/grippers), plus the fixture flags that live outside MuJoCo
(`FIXTURE_STATE_ATTRS`: `Microwave._turned_on`, `CoffeeMachine._turned_on`), every observable's timers and
last value (robosuite samples observables on a timer; a forced refresh after a restore would shift the
sampling phase), `site_rgba` (edited by `update_state`) and the ep_meta of the built model. A snapshot of
another task or another model build is refused.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from z1.envs.base import EnvError, unknown_task_error
from z1.envs.mujoco_state import model_fingerprint
from z1.envs.robocasa_actions import check_env_action_split, to_env_action
from z1.envs.robocasa_tasks import TASK_NAMES, TASKS_BY_NAME
from z1.envs.robosuite import ACTION_NAMES
from z1.envs.robosuite_base import (
    Built,
    RobosuiteBaseEnv,
    SuiteSnapshot,
    hide_collision_geoms,
    stateful_objects,
)
from z1.types import Observation

SUITE = "robocasa"
# Named task sets for the registry: the paper's 24 atomic tasks.
TASK_SETS: dict[str, tuple[str, ...]] = {"robocasa24": TASK_NAMES}
CONTROL_HZ = 20.0
ROBOT = "PandaOmron"
CAMERAS: tuple[str, ...] = ("robot0_agentview_left", "robot0_agentview_right", "robot0_eye_in_hand")

# The BC-T proprio of the RoboCasa paper, 16-D.
PROPRIO_KEYS: tuple[tuple[str, int], ...] = (
    ("robot0_base_to_eef_pos", 3),
    ("robot0_base_to_eef_quat", 4),
    ("robot0_base_pos", 3),
    ("robot0_base_quat", 4),
    ("robot0_gripper_qpos", 2),
)
STATE_NAMES: tuple[str, ...] = tuple(
    f"{key.removeprefix('robot0_')}_{i}" for key, n in PROPRIO_KEYS for i in range(n)
)
# Python-side fixture state that decides success (CoffeePressButton, TurnOn/OffMicrowave).
FIXTURE_STATE_ATTRS: tuple[str, ...] = ("_turned_on",)

INSTALL_HELP = (
    "RoboCasa v0.2 is not on PyPI and needs ~5 GB of kitchen assets (docs/environments.md#robocasa-install). "
    "Install it on a networked "
    "machine: `git clone https://github.com/robocasa/robocasa && cd robocasa && git checkout v0.2 && "
    "pip install -e .`, then `python robocasa/scripts/setup_macros.py` and "
    "`python robocasa/scripts/download_kitchen_assets.py` (answer y; ~5 GB from utexas.box.com). "
    "v0.2 asserts mujoco==3.2.6 and numpy 1.23.x at import, while z1's robosuite 1.5.2 needs mujoco>=3.3.0: "
    "use a separate venv with robosuite 1.5.1 + mujoco 3.2.6, or relax robocasa's version asserts. "
    "Offline, copy a pre-fetched asset tree to robocasa/models/assets."
)
# Asset folders `download_kitchen_assets.py` fills (relative to robocasa/models/assets).
REQUIRED_ASSET_DIRS: tuple[str, ...] = ("textures", "fixtures", "objects/objaverse", "generative_textures")


class RoboCasaUnavailable(EnvError):
    """robocasa (or its kitchen assets) is missing; the message says what and how to install it."""


# ---------------------------------------------------------------------------------------------------
# Install check.


def missing_install(find_spec: Any = importlib.util.find_spec) -> str | None:
    """None if robocasa and its kitchen assets are usable, else a sentence saying what is missing."""
    if find_spec("robosuite") is None:
        return "robosuite is not installed (pip install robosuite; v1.5.x)."
    spec = find_spec("robocasa")
    if spec is None or not spec.submodule_search_locations:
        return "the `robocasa` package is not installed."
    root = list(spec.submodule_search_locations)[0]
    if not os.path.isfile(os.path.join(root, "environments", "kitchen", "single_stage", "kitchen_pnp.py")):
        return (
            f"robocasa at {root} is not v0.2 (no environments/kitchen/single_stage/kitchen_pnp.py; "
            "v1.0 renamed the 24 tasks); check out tag v0.2."
        )
    assets = os.path.join(root, "models", "assets")
    missing = [d for d in REQUIRED_ASSET_DIRS if not os.path.isdir(os.path.join(assets, d))]
    if missing:
        return f"robocasa kitchen assets are missing under {assets}: {', '.join(missing)}."
    return None


def require_robocasa() -> None:
    problem = missing_install()
    if problem is not None:
        raise RoboCasaUnavailable(f"robocasa: {problem} {INSTALL_HELP}")


# ---------------------------------------------------------------------------------------------------
# Snapshot pieces.


def fixture_objects(raw: Any) -> Iterator[tuple[str, Any]]:
    """(path, fixture) for every fixture of a Kitchen env that holds Python-side state."""
    fixtures = getattr(raw, "fixtures", None) or {}
    for name in sorted(fixtures):
        fx = fixtures[name]
        if any(hasattr(fx, a) for a in FIXTURE_STATE_ATTRS):
            yield f"fixture.{name}", fx


def capture_fixture_state(raw: Any) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path, fx in fixture_objects(raw):
        out[path] = {a: copy.deepcopy(getattr(fx, a)) for a in FIXTURE_STATE_ATTRS if hasattr(fx, a)}
    return out


def restore_fixture_state(raw: Any, state: Mapping[str, Mapping[str, Any]]) -> None:
    live = dict(fixture_objects(raw))
    if set(live) != set(state):
        raise EnvError(
            f"robocasa: snapshot fixtures {sorted(state)} do not match this kitchen's {sorted(live)}"
        )
    for path, attrs in state.items():
        for a, v in attrs.items():
            setattr(live[path], a, copy.deepcopy(v))


def robocasa_stateful_objects(raw: Any) -> Iterator[tuple[str, Any]]:
    """`stateful_objects` of robosuite plus every observable (sampling timers and last values)."""
    yield from stateful_objects(raw)
    for name, obs in sorted(getattr(raw, "_observables", {}).items()):
        yield f"observable.{name}", obs


@dataclass(frozen=True)
class RoboCasaSnapshot(SuiteSnapshot):
    """A `RoboCasaEnv.snapshot()`: the shared fields plus what a kitchen keeps outside them."""

    ep_meta: dict[str, Any]
    site_rgba: np.ndarray  # (nsite, 4)
    fixtures: dict[str, dict[str, Any]]


class RoboCasaEnv(RobosuiteBaseEnv):
    """RoboCasa v0.2 kitchens behind the z1 `Env` protocol (see module docstring)."""

    suite = SUITE
    snapshot_type = RoboCasaSnapshot

    def __init__(
        self,
        *,
        image_size: tuple[int, int] = (128, 128),
        render: bool = True,
        cameras: Sequence[str] = CAMERAS,
        layout_and_style_ids: Sequence[tuple[int, int]] | None = None,
        obj_instance_split: str | None = None,
        horizons: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__(
            image_size=image_size,
            render=render,
            cameras=cameras,
            horizons=horizons,
            default_horizons={t.name: t.horizon for t in TASKS_BY_NAME.values()},
            state_names=STATE_NAMES,
            action_names=ACTION_NAMES,
            control_hz=CONTROL_HZ,
            camera_example=str(list(CAMERAS)),
            check_install=require_robocasa,
        )
        self._layout_and_style_ids = (
            [tuple(x) for x in layout_and_style_ids] if layout_and_style_ids else None
        )
        self._obj_instance_split = obj_instance_split

    # ---- info ----
    def tasks(self) -> list[str]:
        return list(TASK_NAMES)

    def instruction(self, task: str) -> str:
        if task not in TASKS_BY_NAME:
            raise unknown_task_error(task, list(TASK_NAMES), SUITE)
        if self._cur is not None and self._cur.name == task:
            lang = self._cur.env.get_ep_meta().get("lang")
            if lang:
                return str(lang)
        return TASKS_BY_NAME[task].default_instruction()

    def get_ep_meta(self) -> dict[str, Any]:
        """The current kitchen's episode metadata (layout, style, objects, fixture refs, lang...)."""
        return self._require().env.get_ep_meta()

    # ---- building ----
    def _build(self, task: str, seed: int) -> Built:
        import robosuite
        from robosuite.controllers import load_composite_controller_config

        importlib.import_module("robocasa")  # registers the kitchen envs with robosuite
        kwargs: dict[str, Any] = {}
        if self._layout_and_style_ids is not None:
            kwargs["layout_and_style_ids"] = self._layout_and_style_ids
        if self._obj_instance_split is not None:
            kwargs["obj_instance_split"] = self._obj_instance_split
        raw = robosuite.make(
            env_name=task,
            robots=ROBOT,
            controller_configs=load_composite_controller_config(robot=ROBOT),
            has_renderer=False,
            has_offscreen_renderer=False,
            use_camera_obs=False,
            ignore_done=True,
            control_freq=int(CONTROL_HZ),
            seed=seed,
            translucent_robot=False,
            randomize_cameras=False,
            **kwargs,
        )
        check_env_action_split(raw.robots[0].composite_controller._action_split_indexes)
        return Built(task, raw, "", [])

    def _after_reset(self, built: Built) -> None:
        """The hard reset built a new kitchen: find its cameras and fingerprint it."""
        import mujoco

        model = built.env.sim.model._model
        ids = []
        for cam in self.spec.cameras:
            cid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, cam)
            if cid < 0:
                known = [model.camera(i).name for i in range(model.ncam)]
                raise EnvError(f"robocasa: the kitchen has no camera {cam!r}; choose from {known}")
            ids.append(cid)
        built.camera_ids = ids
        meta = built.env.get_ep_meta()
        built.model_key = (
            f"{built.name}/{meta.get('layout_id')}/{meta.get('style_id')}/{model_fingerprint(model)}"
        )
        if self._render:
            hide_collision_geoms(model)

    # ---- dynamics ----
    def reset(self, task: str, seed: int, ep_meta: Mapping[str, Any] | None = None) -> Observation:
        def prepare(built: Built) -> None:
            raw = built.env
            if ep_meta is not None:
                raw.set_ep_meta(copy.deepcopy(dict(ep_meta)))
            else:
                raw.unset_ep_meta()
            if self._renderer is not None and self._cur is not None:
                self._renderer.forget(self._cur.env.sim.model._model)

        return self._reset(task, seed, prepare)  # hard reset: rebuilds the kitchen from the ep_meta

    def _env_action(self, action: np.ndarray) -> np.ndarray:
        return to_env_action(action)

    def _state(self, cur: Built) -> np.ndarray:
        obs = cur.env._get_observations()
        parts = []
        for key, n in PROPRIO_KEYS:
            v = np.asarray(obs[key], dtype=np.float64).reshape(-1)
            if v.shape != (n,):
                raise EnvError(f"robocasa: observation {key!r} has shape {v.shape}, expected ({n},)")
            parts.append(v)
        return np.concatenate(parts).astype(np.float32)  # (16,)

    def expert_action(self) -> np.ndarray:
        raise EnvError(
            "robocasa: no scripted experts; use the RoboCasa demonstrations "
            "(docs/environments.md#robocasa-demonstrations)"
        )

    # ---- snapshot / restore ----
    def _stateful_objects(self, raw: Any) -> Iterator[tuple[str, Any]]:
        return robocasa_stateful_objects(raw)

    def _snapshot_extra(self, raw: Any) -> dict[str, Any]:
        return {
            "ep_meta": raw.get_ep_meta(),
            "site_rgba": raw.sim.model._model.site_rgba.copy(),
            "fixtures": capture_fixture_state(raw),
        }

    def _restore_extra(self, raw: Any, snapshot: Any) -> None:
        raw.sim.model._model.site_rgba[:] = snapshot.site_rgba
        restore_fixture_state(raw, snapshot.fixtures)

    def _reset_hint(self, snapshot: Any) -> str:
        return f"call reset({snapshot.task!r}, {snapshot.seed}, ep_meta=snapshot.ep_meta) first"

    def _foreign_build_hint(self, snapshot: Any, cur: Built) -> str:
        return (
            f"kitchen build ({snapshot.model_key}) than the current one ({cur.model_key}); reset with "
            "ep_meta=snapshot.ep_meta and the same seed first"
        )
