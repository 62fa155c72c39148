"""robosuite 1.5.2 (mujoco 3.3.0) adapter: Lift, Stack, Door, PickPlaceCan, NutAssemblySquare with a Panda.

Control: the Panda's default composite controller ("BASIC": arm OSC_POSE with delta input in the base frame,
kp 150; gripper GRIP), 20 Hz, 25 physics substeps of 2 ms per action. The 7-D action is
`[dx, dy, dz, drx, dry, drz, grip]` in [-1, 1]: +-1 maps to 0.05 m / 0.5 rad per step (axis-angle),
grip -1 opens and +1 closes.

Proprio (9-D, `STATE_NAMES`): the grip site position (3), the grip site orientation as a quaternion in
robosuite's (x, y, z, w) order (4; robosuite's `robot0_eef_quat_site`, consistent with the position), and
the two finger joint positions (2).

Scenes. The MJCF is built once per task (`suite.make(..., seed=build_seed)`; Lift samples the cube size
there) and reused across resets (`hard_reset=False`), so a reset costs milliseconds instead of seconds.
`reset(task, seed)` re-seeds the env's one `np.random.Generator` in place (the placement samplers and
robot init noise hold a reference to it) and calls robosuite's `reset()`: the same (task, seed) gives the
identical initial state, whatever ran before, in any env built with the same `build_seed`.

Rendering happens only in `observe()` / `step(observe=True)`, through z1's shared `CameraRenderer` (one GL
context per process, shadows and reflections forced off on every frame, rows flipped upright). robosuite
itself gets `has_offscreen_renderer=False, use_camera_obs=False`, and all of its observables are disabled:
they cost ~2/3 of a step and z1 reads what it needs from MjData. The collision geoms (group 0, which
robosuite hides with `vopt.geomgroup[0]=0`) get alpha 0 at build time so MuJoCo skips them when drawing;
rgba does not enter the physics.
Snapshot / restore (docs/environments.md#snapshot-and-restore), implemented once in
`z1.envs.robosuite_base`: `mj_getState/mj_setState(mjSTATE_INTEGRATION)`, then `mj_forward` to refresh
derived quantities and a second `mj_setState` (mujoco 3.3.0's `mj_forward` overwrites `qacc_warmstart`);
plus every plain attribute (scalars, owned numpy arrays, dicts of those) of the env (`timestep`,
`cur_time`, `done`...), the robot, its composite controller, each part controller (OSC goals, origins...)
and each gripper (`current_action`, the rate-limited finger command). Arrays that alias MuJoCo memory are
skipped and left alone. Snapshots carry the task and a fingerprint of the built model; a snapshot of
another task or another model build is refused.

Scripted experts (Lift, PickPlaceCan, Door) live in `z1.envs.robosuite_experts`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from z1.envs.base import EnvError, unknown_task_error
from z1.envs.mujoco_state import model_fingerprint
from z1.envs.robosuite_base import Built, RobosuiteBaseEnv, SuiteSnapshot, hide_collision_geoms
from z1.envs.robosuite_experts import EXPERTS
from z1.types import Observation

SUITE = "robosuite"
CONTROL_HZ = 20.0

STATE_NAMES: tuple[str, ...] = (
    "eef_pos_x",
    "eef_pos_y",
    "eef_pos_z",
    "eef_quat_x",
    "eef_quat_y",
    "eef_quat_z",
    "eef_quat_w",
    "gripper_qpos_left",
    "gripper_qpos_right",
)
ACTION_NAMES: tuple[str, ...] = ("eef_dx", "eef_dy", "eef_dz", "eef_drx", "eef_dry", "eef_drz", "gripper")


@dataclass(frozen=True)
class RobosuiteTask:
    """One z1 task: the robosuite env class, its extra make() kwargs, horizon and instruction."""

    env_name: str
    horizon: int
    instruction: str
    make_kwargs: Mapping[str, Any] = field(default_factory=dict)


TASKS: dict[str, RobosuiteTask] = {
    "Lift": RobosuiteTask("Lift", 200, "pick up the red cube"),
    "Stack": RobosuiteTask("Stack", 300, "stack the red cube on top of the green cube"),
    # use_latch=False: a fixed handle, the door swings open when pulled (no handle turn first).
    "Door": RobosuiteTask("Door", 300, "open the door", {"use_latch": False}),
    "PickPlaceCan": RobosuiteTask("PickPlaceCan", 400, "pick up the can and put it in the bottom right bin"),
    "NutAssemblySquare": RobosuiteTask("NutAssemblySquare", 400, "put the square nut onto the square peg"),
}

# Named task sets for the registry (`--tasks robosuite`).
TASK_SETS: dict[str, tuple[str, ...]] = {"robosuite": tuple(TASKS)}
DEFAULT_CAMERAS: tuple[str, ...] = ("agentview", "robot0_eye_in_hand")


def quat_xyzw_from_mat(mat: np.ndarray) -> np.ndarray:
    import mujoco

    q = np.empty(4, dtype=np.float64)
    mujoco.mju_mat2Quat(q, np.ascontiguousarray(mat, dtype=np.float64).reshape(9))
    return np.array([q[1], q[2], q[3], q[0]])  # MuJoCo (w, x, y, z) -> robosuite (x, y, z, w)


@dataclass(frozen=True)
class RobosuiteSnapshot(SuiteSnapshot):
    """A `RobosuiteEnv.snapshot()`: the shared fields only (the scene is fixed per build)."""


def _controller_config() -> dict[str, Any]:
    from robosuite.controllers import load_composite_controller_config

    cfg = load_composite_controller_config(controller="BASIC", robot="Panda")
    arm = cfg["body_parts"]["right"]
    if arm.get("type") != "OSC_POSE":
        raise EnvError(
            f"robosuite: expected the Panda's BASIC config to use OSC_POSE, got {arm.get('type')!r}"
        )
    # keep only the parts a Panda has (robosuite warns about the rest otherwise)
    cfg["body_parts"] = {k: v for k, v in cfg["body_parts"].items() if k in ("right",)}
    return cfg


class RobosuiteEnv(RobosuiteBaseEnv):
    """robosuite single-arm tasks behind the z1 `Env` protocol (see module docstring)."""

    suite = SUITE
    snapshot_type = RobosuiteSnapshot

    def __init__(
        self,
        *,
        image_size: tuple[int, int] = (64, 64),
        render: bool = True,
        cameras: Sequence[str] = DEFAULT_CAMERAS,
        build_seed: int = 0,
        reward_shaping: bool = False,
        horizons: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__(
            image_size=image_size,
            render=render,
            cameras=cameras,
            horizons=horizons,
            default_horizons={name: t.horizon for name, t in TASKS.items()},
            state_names=STATE_NAMES,
            action_names=ACTION_NAMES,
            control_hz=CONTROL_HZ,
            camera_example="cameras=('agentview', 'robot0_eye_in_hand')",
        )
        self._build_seed = int(build_seed)
        self._reward_shaping = reward_shaping

    # ---- info ----
    def tasks(self) -> list[str]:
        return list(TASKS)

    def instruction(self, task: str) -> str:
        return self._task(task).instruction

    def _task(self, task: str) -> RobosuiteTask:
        if task not in TASKS:
            raise unknown_task_error(task, list(TASKS), SUITE)
        return TASKS[task]

    # ---- building ----
    def _build(self, task: str, seed: int) -> Built:
        """The model is built with `build_seed` (not the reset seed) and kept across resets."""
        import mujoco
        import robosuite

        info = self._task(task)
        raw = robosuite.make(
            info.env_name,
            robots="Panda",
            controller_configs=_controller_config(),
            has_renderer=False,
            has_offscreen_renderer=False,
            use_camera_obs=False,
            use_object_obs=True,
            reward_shaping=self._reward_shaping,
            control_freq=int(CONTROL_HZ),
            horizon=self._horizons[task],
            ignore_done=True,  # z1 ends episodes itself at the horizon
            hard_reset=False,  # keep the model (and its sampled sizes) across resets
            seed=self._build_seed,
            **dict(info.make_kwargs),
        )
        model = raw.sim.model._model
        cam_ids = []
        for cam in self.spec.cameras:
            cid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, cam)
            if cid < 0:
                known = [model.camera(i).name for i in range(model.ncam)]
                raise EnvError(f"robosuite: task {task!r} has no camera {cam!r}; choose from {known}")
            cam_ids.append(cid)
        for name in list(raw._observables):
            raw.modify_observable(name, "enabled", False)
        key = f"{task}/build_seed={self._build_seed}/{model_fingerprint(model)}"
        if self._render:
            hide_collision_geoms(model)
        return Built(task, raw, key, cam_ids)

    # ---- dynamics ----
    def reset(self, task: str, seed: int) -> Observation:
        return self._reset(task, seed)

    def _state(self, cur: Built) -> np.ndarray:
        raw = cur.env
        robot = raw.robots[0]
        d = raw.sim.data
        site = robot.eef_site_id["right"]
        pos = np.array(d.site_xpos[site])
        quat = quat_xyzw_from_mat(np.array(d.site_xmat[site]))
        grip = np.array(d.qpos[robot._ref_gripper_joint_pos_indexes["right"]])
        return np.concatenate([pos, quat, grip]).astype(np.float32)  # (9,)

    def expert_action(self) -> np.ndarray:
        cur = self._require()
        fn = EXPERTS.get(cur.name)
        if fn is None:
            raise EnvError(
                f"robosuite: no scripted expert for {cur.name!r}; experts exist for {sorted(EXPERTS)}"
            )
        return np.clip(fn(cur.env), -1.0, 1.0)

    # ---- snapshot / restore ----
    def _reset_hint(self, snapshot: Any) -> str:
        return f"call reset({snapshot.task!r}, {snapshot.seed}) first"

    def _foreign_build_hint(self, snapshot: Any, cur: Built) -> str:
        return (
            f"model build ({snapshot.model_key}) than this env's ({cur.model_key}); restore it into an env "
            "made with the same build_seed"
        )
