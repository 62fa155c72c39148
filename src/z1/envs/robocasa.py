"""RoboCasa v0.2 adapter: the 24 atomic kitchen tasks with a PandaOmron (docs/environments.md#robocasa).

robocasa is NOT a dependency of z1: it is not on PyPI, v0.2 pins mujoco 3.2.6 / numpy 1.23 and needs a
~5 GB kitchen asset download (docs/environments.md#robocasa-install). Importing this module never imports
robocasa; constructing `RoboCasaEnv` checks the install and raises `RoboCasaUnavailable` naming what is
missing and how to get it.

Actions. The policy acts in z1's 7-D arm space `[dx, dy, dz, drx, dry, drz, grip]` (the same as the
robosuite adapter). `to_env_action` maps it to the 12-D PandaOmron action of the env / v0.2 HDF5 /
`env_utils.convert_action`, EEF first (docs/environments.md#robocasa-actions, `ENV_ACTION_LAYOUT`):
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

Snapshot / restore: as for robosuite (`z1.envs.robosuite`: `mjSTATE_INTEGRATION` state, plain attributes
of env/robot/controllers/grippers), plus the fixture flags that live outside MuJoCo
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

from z1.envs.base import EnvError, check_action, unknown_task_error
from z1.envs.render import CameraRenderer, select_gl_backend
from z1.envs.robocasa_tasks import TASK_NAMES, TASKS_BY_NAME
from z1.envs.robosuite import (
    ACTION_NAMES,
    capture_attrs,
    hide_collision_geoms,
    model_fingerprint,
    physics_state,
    restore_attrs,
    set_physics_state,
    stateful_objects,
)
from z1.types import EnvSpec, Observation, StepResult

SUITE = "robocasa"
# Named task sets for the registry: the paper's 24 atomic tasks.
TASK_SETS: dict[str, tuple[str, ...]] = {"robocasa24": TASK_NAMES}
CONTROL_HZ = 20.0
ROBOT = "PandaOmron"
CAMERAS: tuple[str, ...] = ("robot0_agentview_left", "robot0_agentview_right", "robot0_eye_in_hand")

# (name, start, stop) of each action block (docs/environments.md#robocasa-actions).
ENV_ACTION_LAYOUT: tuple[tuple[str, int, int], ...] = (
    ("eef_pos", 0, 3),
    ("eef_rot", 3, 6),
    ("gripper", 6, 7),
    ("base_motion", 7, 10),  # base x, y, yaw velocity
    ("torso", 10, 11),
    ("control_mode", 11, 12),  # -1 arm mode, +1 base mode
)
LEROBOT_ACTION_LAYOUT: tuple[tuple[str, int, int], ...] = (
    ("base_motion", 0, 3),
    ("torso", 3, 4),  # GR00T's base_motion 0:4 = base x/y/yaw + torso
    ("control_mode", 4, 5),
    ("eef_pos", 5, 8),
    ("eef_rot", 8, 11),
    ("gripper", 11, 12),
)
ACTION_LAYOUTS: dict[str, tuple[tuple[str, int, int], ...]] = {
    "env": ENV_ACTION_LAYOUT,
    "lerobot": LEROBOT_ACTION_LAYOUT,
}
ENV_ACTION_DIM = 12
ARM_MODE = -1.0
# z1's 7-D policy action -> blocks of the env action
POLICY_BLOCKS: tuple[tuple[str, int, int], ...] = (("eef_pos", 0, 3), ("eef_rot", 3, 6), ("gripper", 6, 7))

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
# Action mapping (pure numpy).


def _check_layout(layout: Sequence[tuple[str, int, int]], dim: int) -> None:
    covered = sorted((start, stop) for _, start, stop in layout)
    pos = 0
    for start, stop in covered:
        if start != pos or stop <= start:
            raise EnvError(f"robocasa: action layout {list(layout)} has a gap or overlap at index {pos}")
        pos = stop
    if pos != dim:
        raise EnvError(f"robocasa: action layout {list(layout)} covers {pos} dims, expected {dim}")


def to_env_action(action: np.ndarray) -> np.ndarray:
    """z1 7-D `[eef_pos(3), eef_rot(3), gripper]` -> PandaOmron 12-D env action (base/torso 0, mode -1)."""
    a = np.asarray(action, dtype=np.float64)
    if a.shape[-1] != len(ACTION_NAMES):
        raise EnvError(f"robocasa: policy action has {a.shape[-1]} dims, expected 7 {list(ACTION_NAMES)}")
    out = np.zeros(a.shape[:-1] + (ENV_ACTION_DIM,), dtype=np.float64)  # (..., 12)
    env_blocks = {name: (start, stop) for name, start, stop in ENV_ACTION_LAYOUT}
    for name, start, stop in POLICY_BLOCKS:
        es, ee = env_blocks[name]
        out[..., es:ee] = a[..., start:stop]
    cs, _ = env_blocks["control_mode"]
    out[..., cs] = ARM_MODE
    return out


def from_env_action(env_action: np.ndarray) -> np.ndarray:
    """The 7 arm+gripper dims of a 12-D env-order action (e.g. a v0.2 HDF5 demo action)."""
    e = np.asarray(env_action, dtype=np.float64)
    if e.shape[-1] != ENV_ACTION_DIM:
        raise EnvError(f"robocasa: env action has {e.shape[-1]} dims, expected {ENV_ACTION_DIM}")
    out = np.zeros(e.shape[:-1] + (len(ACTION_NAMES),), dtype=np.float64)  # (..., 7)
    env_blocks = {name: (start, stop) for name, start, stop in ENV_ACTION_LAYOUT}
    for name, start, stop in POLICY_BLOCKS:
        es, ee = env_blocks[name]
        out[..., start:stop] = e[..., es:ee]
    return out


def reorder_action(action: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Permute 12-D actions between named layouts (`ACTION_LAYOUTS`: "env", "lerobot")."""
    for name in (src, dst):
        if name not in ACTION_LAYOUTS:
            raise EnvError(f"robocasa: unknown action layout {name!r}; choose from {sorted(ACTION_LAYOUTS)}")
    a = np.asarray(action, dtype=np.float64)
    if a.shape[-1] != ENV_ACTION_DIM:
        raise EnvError(f"robocasa: action has {a.shape[-1]} dims, expected {ENV_ACTION_DIM}")
    src_blocks = {n: (s, e) for n, s, e in ACTION_LAYOUTS[src]}
    out = np.empty_like(a)
    for name, start, stop in ACTION_LAYOUTS[dst]:
        s, e = src_blocks[name]
        if e - s != stop - start:
            raise EnvError(
                f"robocasa: block {name!r} has {e - s} dims in {src!r} but {stop - start} in {dst!r}"
            )
        out[..., start:stop] = a[..., s:e]
    return out


def check_env_action_split(split_indexes: Mapping[str, Sequence[int]]) -> None:
    """Check a live composite controller's `_action_split_indexes` against `ENV_ACTION_LAYOUT`.

    robosuite's HYBRID_MOBILE_BASE splits `[right (6), right_gripper (1), base (3), torso (1)]`; the control
    mode is the last element, outside the split.
    """
    expected = {"right": (0, 6), "right_gripper": (6, 7), "base": (7, 10), "torso": (10, 11)}
    got = {k: (int(v[0]), int(v[1])) for k, v in split_indexes.items()}
    if got != expected:
        raise EnvError(
            f"robocasa: the PandaOmron controller splits actions as {got}, but z1 maps actions with "
            f"{expected} (env/HDF5 order, docs/environments.md#robocasa-actions). "
            "A different robosuite version? "
            "Refusing to guess the permutation."
        )


for _layout in ACTION_LAYOUTS.values():
    _check_layout(_layout, ENV_ACTION_DIM)


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
class RoboCasaSnapshot:
    task: str
    seed: int
    model_key: str
    ep_meta: dict[str, Any]
    t: int
    success_latched: bool
    sim: np.ndarray  # (mj_stateSize(INTEGRATION),)
    site_rgba: np.ndarray  # (nsite, 4)
    attrs: dict[str, dict[str, Any]]
    fixtures: dict[str, dict[str, Any]]
    rng_state: dict[str, Any]


@dataclass
class _Built:
    name: str
    env: Any
    model_key: str
    camera_ids: list[int]


class RoboCasaEnv:
    """RoboCasa v0.2 kitchens behind the z1 `Env` protocol (see module docstring)."""

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
        if len(image_size) != 2 or min(image_size) <= 0:
            raise EnvError(f"robocasa: image_size must be (height, width) > 0, got {image_size}")
        if not cameras:
            raise EnvError(f"robocasa: need at least one camera, e.g. {list(CAMERAS)}")
        self._horizons = {t.name: t.horizon for t in TASKS_BY_NAME.values()}
        for name, h in (horizons or {}).items():
            if name not in TASKS_BY_NAME:
                raise unknown_task_error(name, list(TASK_NAMES), SUITE)
            if int(h) <= 0:
                raise EnvError(f"robocasa: horizon of {name!r} must be positive, got {h}")
            self._horizons[name] = int(h)
        require_robocasa()
        self.spec = EnvSpec(
            suite=SUITE,
            cameras=tuple(cameras),
            image_size=(int(image_size[0]), int(image_size[1])),
            state_names=STATE_NAMES,
            action_names=ACTION_NAMES,
            action_low=(-1.0,) * 7,
            action_high=(1.0,) * 7,
            max_steps=max(self._horizons.values()),
            control_hz=CONTROL_HZ,
        )
        self._render = render
        if render:
            select_gl_backend()
        self._layout_and_style_ids = (
            [tuple(x) for x in layout_and_style_ids] if layout_and_style_ids else None
        )
        self._obj_instance_split = obj_instance_split
        self._renderer: CameraRenderer | None = None
        self._built: dict[str, _Built] = {}
        self._cur: _Built | None = None
        self._seed = 0
        self._t = 0
        self._latched = False

    # ---- info ----
    @property
    def task(self) -> str | None:
        return self._cur.name if self._cur else None

    @property
    def t(self) -> int:
        return self._t

    @property
    def success_latched(self) -> bool:
        return self._latched

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

    def horizon(self, task: str) -> int:
        if task not in TASKS_BY_NAME:
            raise unknown_task_error(task, list(TASK_NAMES), SUITE)
        return self._horizons[task]

    @property
    def raw_env(self) -> Any:
        return self._require().env

    def get_ep_meta(self) -> dict[str, Any]:
        """The current kitchen's episode metadata (layout, style, objects, fixture refs, lang...)."""
        return self._require().env.get_ep_meta()

    def _require(self) -> _Built:
        if self._cur is None:
            raise EnvError("robocasa: no task yet; call reset(task, seed) first")
        return self._cur

    # ---- building ----
    def _build(self, task: str, seed: int) -> _Built:
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
        return _Built(task, raw, "", [])

    def _after_model_load(self, built: _Built) -> None:
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
        if task not in TASKS_BY_NAME:
            raise unknown_task_error(task, list(TASK_NAMES), SUITE)
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise EnvError(f"robocasa: seed must be a non-negative int, got {seed!r}")
        built = self._built.get(task)
        if built is None:
            built = self._build(task, int(seed))
            self._built[task] = built
        raw = built.env
        raw.rng.bit_generator.state = np.random.default_rng(int(seed)).bit_generator.state
        if ep_meta is not None:
            raw.set_ep_meta(copy.deepcopy(dict(ep_meta)))
        else:
            raw.unset_ep_meta()
        if self._renderer is not None and self._cur is not None:
            self._renderer.forget(self._cur.env.sim.model._model)
        raw.reset()  # hard reset: rebuilds the kitchen from the ep_meta (or samples one)
        self._after_model_load(built)
        self._cur = built
        self._seed = int(seed)
        self._t = 0
        self._latched = False
        return self.observe()

    def step(self, action: np.ndarray, observe: bool = False) -> StepResult:
        cur = self._require()
        a = check_action(action, self.spec)
        horizon = self._horizons[cur.name]
        if self._t >= horizon:
            raise EnvError(f"robocasa: episode of {cur.name!r} is over ({horizon} steps); call reset()")
        _, reward, _, _ = cur.env.step(to_env_action(a))
        self._t += 1
        success = bool(cur.env._check_success())
        self._latched = self._latched or success
        return StepResult(
            reward=float(reward),
            success=success,
            done=self._t >= horizon,
            info={"success_latched": self._latched},
            observation=self.observe() if observe else None,
        )

    def _state(self, cur: _Built) -> np.ndarray:
        obs = cur.env._get_observations()
        parts = []
        for key, n in PROPRIO_KEYS:
            v = np.asarray(obs[key], dtype=np.float64).reshape(-1)
            if v.shape != (n,):
                raise EnvError(f"robocasa: observation {key!r} has shape {v.shape}, expected ({n},)")
            parts.append(v)
        return np.concatenate(parts).astype(np.float32)  # (16,)

    def observe(self) -> Observation:
        cur = self._require()
        images: dict[str, np.ndarray] = {}
        if self._render:
            if self._renderer is None:
                self._renderer = CameraRenderer(*self.spec.image_size)
            frames = self._renderer.render(cur.env.sim.model._model, cur.env.sim.data._data, cur.camera_ids)
            images = {
                cam: np.ascontiguousarray(img) for cam, img in zip(self.spec.cameras, frames)
            }  # (y, x, 3)
        return Observation(images=images, state=self._state(cur), instruction=self.instruction(cur.name))

    def expert_action(self) -> np.ndarray:
        raise EnvError(
            "robocasa: no scripted experts; use the RoboCasa demonstrations "
            "(docs/environments.md#robocasa-demonstrations)"
        )

    # ---- snapshot / restore ----
    def snapshot(self) -> RoboCasaSnapshot:
        cur = self._require()
        raw = cur.env
        model = raw.sim.model._model
        return RoboCasaSnapshot(
            task=cur.name,
            seed=self._seed,
            model_key=cur.model_key,
            ep_meta=raw.get_ep_meta(),
            t=self._t,
            success_latched=self._latched,
            sim=physics_state(model, raw.sim.data._data),
            site_rgba=model.site_rgba.copy(),
            attrs={path: capture_attrs(obj) for path, obj in robocasa_stateful_objects(raw)},
            fixtures=capture_fixture_state(raw),
            rng_state=copy.deepcopy(raw.rng.bit_generator.state),
        )

    def restore(self, snapshot: Any) -> None:
        if not isinstance(snapshot, RoboCasaSnapshot):
            raise EnvError(
                f"robocasa: cannot restore a {type(snapshot).__name__}; expected a RoboCasaSnapshot from "
                "RoboCasaEnv.snapshot()"
            )
        cur = self._cur
        if cur is None or cur.name != snapshot.task:
            raise EnvError(
                f"robocasa: snapshot is of task {snapshot.task!r} but the env is on {self.task!r}; "
                f"call reset({snapshot.task!r}, {snapshot.seed}, ep_meta=snapshot.ep_meta) first"
            )
        if snapshot.model_key != cur.model_key:
            raise EnvError(
                f"robocasa: snapshot comes from another kitchen build ({snapshot.model_key}) than the "
                f"current one ({cur.model_key}); reset with ep_meta=snapshot.ep_meta and the same seed first"
            )
        raw = cur.env
        objs = dict(robocasa_stateful_objects(raw))
        if set(objs) != set(snapshot.attrs):
            raise EnvError(f"robocasa: snapshot objects do not match the live env ({sorted(snapshot.attrs)})")
        model = raw.sim.model._model
        set_physics_state(model, raw.sim.data._data, snapshot.sim)
        model.site_rgba[:] = snapshot.site_rgba
        for path, attrs in snapshot.attrs.items():
            restore_attrs(objs[path], attrs)
        restore_fixture_state(raw, snapshot.fixtures)
        raw.rng.bit_generator.state = copy.deepcopy(snapshot.rng_state)
        self._seed = snapshot.seed
        self._t = snapshot.t
        self._latched = snapshot.success_latched

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        for built in self._built.values():
            built.env.close()
        self._built.clear()
        self._cur = None
