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

Snapshot / restore (docs/environments.md#snapshot-and-restore):
`mj_getState/mj_setState(mjSTATE_INTEGRATION)`, then `mj_forward` to refresh derived quantities and a
second `mj_setState` (mujoco 3.3.0's `mj_forward` overwrites `qacc_warmstart`); plus every plain attribute
(scalars, owned numpy arrays, dicts of those) of the env (`timestep`, `cur_time`, `done`...), the robot,
its composite controller, each part controller (OSC goals, origins...) and each gripper (`current_action`,
the rate-limited finger command). Arrays that alias MuJoCo memory are skipped and left alone. Snapshots
carry the task and a fingerprint of the built model; a snapshot of another task or another model build is
refused.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from z1.envs.base import EnvError, check_action, unknown_task_error
from z1.envs.render import CameraRenderer, select_gl_backend
from z1.types import EnvSpec, Observation, StepResult

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
POS_SCALE = 0.05  # m per step at |action| = 1 (OSC_POSE output_max)
ROT_SCALE = 0.5  # rad per step at |action| = 1


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


# ---------------------------------------------------------------------------------------------------
# Python-side state capture, shared with the RoboCasa adapter.

_SCALARS = (bool, int, float, str, np.generic, type(None))


def _owns_memory(arr: np.ndarray) -> bool:
    """True if `arr` (or the array it views) owns its buffer, i.e. it is not a view of MuJoCo memory."""
    root = arr
    while isinstance(root.base, np.ndarray):
        root = root.base
    return root.base is None


def _is_plain(v: Any) -> bool:
    if isinstance(v, _SCALARS):
        return True
    return isinstance(v, np.ndarray) and v.dtype != object and _owns_memory(v)


def _copy_plain(v: Any) -> Any:
    return v.copy() if isinstance(v, np.ndarray) else v


def capture_attrs(obj: Any) -> dict[str, Any]:
    """Copies of the plain attributes of `obj`: scalars, owned numpy arrays, and dicts/tuples of those.

    Arrays that view MuJoCo memory (MjData/MjModel fields) are skipped: they are state already covered by
    `mj_getState`, and overwriting them would write into the simulator.
    """
    out: dict[str, Any] = {}
    for k, v in vars(obj).items():
        if _is_plain(v):
            out[k] = _copy_plain(v)
        elif (
            isinstance(v, dict)
            and v
            and all(isinstance(x, str) for x in v)
            and all(_is_plain(x) for x in v.values())
        ):
            out[k] = {kk: _copy_plain(x) for kk, x in v.items()}
        elif isinstance(v, tuple) and v and all(_is_plain(x) for x in v):
            out[k] = tuple(_copy_plain(x) for x in v)
    return out


def restore_attrs(obj: Any, attrs: Mapping[str, Any]) -> None:
    """Put back what `capture_attrs` took. Owned arrays of matching shape are written in place, so other
    holders of the same array (views, shared references) see the restored values."""
    for k, v in attrs.items():
        cur = getattr(obj, k, None)
        if (
            isinstance(v, np.ndarray)
            and isinstance(cur, np.ndarray)
            and cur.shape == v.shape
            and cur.dtype == v.dtype
            and cur.flags.writeable
            and _owns_memory(cur)
        ):
            cur[...] = v
        elif isinstance(v, dict):
            setattr(obj, k, {kk: _copy_plain(x) for kk, x in v.items()})
        elif isinstance(v, tuple):
            setattr(obj, k, tuple(_copy_plain(x) for x in v))
        else:
            setattr(obj, k, _copy_plain(v))


def stateful_objects(raw: Any) -> Iterator[tuple[str, Any]]:
    """(path, object) of everything in a robosuite env whose plain attributes a snapshot covers."""
    yield "env", raw
    for i, robot in enumerate(raw.robots):
        yield f"robot{i}", robot
        cc = getattr(robot, "composite_controller", None)
        if cc is not None:
            yield f"robot{i}.composite", cc
            for name, ctrl in cc.part_controllers.items():
                yield f"robot{i}.ctrl.{name}", ctrl
                interp = getattr(ctrl, "interpolator_pos", None)
                if interp is not None:
                    yield f"robot{i}.ctrl.{name}.interp_pos", interp
                interp = getattr(ctrl, "interpolator_ori", None)
                if interp is not None:
                    yield f"robot{i}.ctrl.{name}.interp_ori", interp
        grippers = getattr(robot, "gripper", {})
        if isinstance(grippers, dict):
            for arm, g in grippers.items():
                yield f"robot{i}.gripper.{arm}", g


def physics_state(model: Any, data: Any) -> np.ndarray:
    """`mj_getState(mjSTATE_INTEGRATION)`: qpos, qvel, act, time, ctrl, warmstart, mocap, applied forces."""
    import mujoco

    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    st = np.empty(mujoco.mj_stateSize(model, spec), dtype=np.float64)
    mujoco.mj_getState(model, data, st, spec)
    return st


def set_physics_state(model: Any, data: Any, state: np.ndarray) -> None:
    """Inverse of `physics_state`, with derived quantities refreshed and `qacc_warmstart` kept exact."""
    import mujoco

    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    mujoco.mj_setState(model, data, state, spec)
    mujoco.mj_forward(model, data)  # xpos, site_xpos, contacts... for observations and controllers
    mujoco.mj_setState(model, data, state, spec)  # mj_forward (3.3.0) rewrote qacc_warmstart


def model_fingerprint(model: Any) -> str:
    """A digest of the model fields that differ between builds (sizes, poses, masses, dimensions)."""
    h = hashlib.blake2b(digest_size=12)
    h.update(np.asarray([model.nq, model.nv, model.nu, model.nbody, model.ngeom], dtype=np.int64).tobytes())
    for name in ("geom_size", "geom_pos", "body_pos", "body_quat", "body_mass", "qpos0", "jnt_range"):
        h.update(np.ascontiguousarray(getattr(model, name)).tobytes())
    return h.hexdigest()


def quat_xyzw_from_mat(mat: np.ndarray) -> np.ndarray:
    import mujoco

    q = np.empty(4, dtype=np.float64)
    mujoco.mju_mat2Quat(q, np.ascontiguousarray(mat, dtype=np.float64).reshape(9))
    return np.array([q[1], q[2], q[3], q[0]])  # MuJoCo (w, x, y, z) -> robosuite (x, y, z, w)


def hide_collision_geoms(model: Any) -> None:
    """Alpha 0 on collision geoms (group 0) so rendering matches robosuite's (`vopt.geomgroup[0] = 0`)."""
    model.geom_rgba[model.geom_group == 0, 3] = 0.0


@dataclass(frozen=True)
class RobosuiteSnapshot:
    task: str
    seed: int
    model_key: str
    t: int
    success_latched: bool
    sim: np.ndarray  # (mj_stateSize(INTEGRATION),)
    attrs: dict[str, dict[str, Any]]  # object path -> plain attributes
    rng_state: dict[str, Any]


@dataclass
class _Built:
    """One built robosuite env for a task, reused across resets."""

    name: str
    env: Any
    model_key: str
    camera_ids: list[int]


# ---------------------------------------------------------------------------------------------------
# Scripted experts: stateless state machines over privileged poses (phase is read off the state, so they
# survive snapshot/restore and can take over mid-episode).


def _rot_error(current: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Axis-angle (world frame) rotating `current` (3x3) onto `target` (3x3)."""
    import mujoco

    r = target @ current.T
    q = np.empty(4)
    mujoco.mju_mat2Quat(q, np.ascontiguousarray(r).reshape(9))
    if q[0] < 0:
        q = -q
    v = np.empty(3)
    mujoco.mju_quat2Vel(v, q, 1.0)
    return v


def _move(eef: np.ndarray, target: np.ndarray, gain: float = 1.0) -> np.ndarray:
    return np.clip((target - eef) / POS_SCALE * gain, -1.0, 1.0)


def _yaw_down_mat(yaw: float) -> np.ndarray:
    """Gripper pointing down (site z axis along -z world) with the fingers' closing axis at `yaw`."""
    c, s = np.cos(yaw), np.sin(yaw)
    # columns: the site's x, y, z axes in world. z down; x = -y_world at yaw 0
    x = np.array([s, -c, 0.0])
    z = np.array([0.0, 0.0, -1.0])
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=1)


def _nearest_yaw(target_yaw: float, cur: float, period: float) -> float:
    """The yaw congruent to `target_yaw` modulo `period` closest to the gripper's current yaw `cur`."""
    k = np.round((cur - target_yaw) / period)
    return target_yaw + k * period


class _ExpertView:
    """What experts read from a robosuite env."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        robot = raw.robots[0]
        d = raw.sim.data
        self.eef = np.array(d.site_xpos[robot.eef_site_id["right"]])
        self.eef_mat = np.array(d.site_xmat[robot.eef_site_id["right"]]).reshape(3, 3)
        q = d.qpos[robot._ref_gripper_joint_pos_indexes["right"]]
        self.finger_gap = float(q[0] - q[1])  # ~0.08 open, 0 closed on nothing

    rot_gain = 1.0  # fraction of the orientation error commanded per step
    rot_clip = 1.0

    def act(
        self, pos_target: np.ndarray, rot_target: np.ndarray, grip: float, gain: float = 1.0
    ) -> np.ndarray:
        a = np.zeros(7)
        a[:3] = _move(self.eef, pos_target, gain)
        err = _rot_error(self.eef_mat, rot_target)
        a[3:6] = np.clip(self.rot_gain * err / ROT_SCALE, -self.rot_clip, self.rot_clip)
        a[6] = grip
        return a


def _obj_yaw(quat_wxyz: np.ndarray) -> float:
    w, x, y, z = quat_wxyz
    return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))


def _current_yaw(mat: np.ndarray) -> float:
    """Inverse of `_yaw_down_mat` for the gripper's x axis."""
    return float(np.arctan2(mat[0, 0], -mat[1, 0]))


def _pick_and_carry(
    v: _ExpertView,
    obj: np.ndarray,
    yaw: float | None,
    goal: np.ndarray | None,
    carry_z: float,
    grasp_dz: float = 0.0,
    close_tol: float = 0.008,
) -> np.ndarray:
    """Approach above `obj`, descend, close, lift to `carry_z`, then (if `goal` given) move above `goal`
    (xy) and descend to its z, then open. `yaw` None keeps the gripper's yaw (round objects).
    The phase is decided from the current state alone."""
    yaw_cur = _current_yaw(v.eef_mat)
    rot = _yaw_down_mat(yaw_cur if yaw is None else _nearest_yaw(yaw, yaw_cur, np.pi / 2))
    grasp_point = obj + np.array([0.0, 0.0, grasp_dz])
    rel = grasp_point - v.eef
    held = (
        np.linalg.norm(rel) < 0.03
        and v.finger_gap < 0.07
        and v.raw.robots[0].gripper["right"].current_action[0] > 0
    )
    if held:
        if goal is None:
            return v.act(np.array([v.eef[0], v.eef[1], carry_z]), rot, 1.0)
        dxy = np.linalg.norm(goal[:2] - v.eef[:2])
        if dxy > 0.02:
            if v.eef[2] < carry_z - 0.03 and dxy > 0.05:
                return v.act(np.array([v.eef[0], v.eef[1], carry_z]), rot, 1.0)
            return v.act(np.array([goal[0], goal[1], carry_z]), rot, 1.0)
        if v.eef[2] > goal[2] + 0.02:
            return v.act(np.array([goal[0], goal[1], goal[2]]), rot, 1.0)
        return v.act(v.eef, rot, -1.0)
    dxy = np.linalg.norm(rel[:2])
    if dxy > 0.012:
        hover = grasp_point + np.array([0.0, 0.0, 0.10])
        if v.eef[2] < grasp_point[2] + 0.04 and dxy > 0.03:  # too low and off target: go up first
            return v.act(np.array([v.eef[0], v.eef[1], hover[2]]), rot, -1.0)
        return v.act(hover if dxy > 0.03 else np.array([grasp_point[0], grasp_point[1], v.eef[2]]), rot, -1.0)
    if rel[2] < -close_tol:
        return v.act(grasp_point, rot, -1.0)
    return v.act(grasp_point, rot, 1.0)


def expert_lift(raw: Any) -> np.ndarray:
    v = _ExpertView(raw)
    d = raw.sim.data
    cube = np.array(d.body_xpos[raw.cube_body_id])
    yaw = _obj_yaw(np.array(d.body_xquat[raw.cube_body_id]))
    table_z = float(raw.model.mujoco_arena.table_offset[2])
    return _pick_and_carry(v, cube, yaw, None, carry_z=table_z + 0.20)


def expert_pick_place_can(raw: Any) -> np.ndarray:
    v = _ExpertView(raw)
    v.rot_gain, v.rot_clip = 0.5, 0.6  # near the edge of the reach: gentle orientation corrections
    d = raw.sim.data
    bid = raw.obj_body_id["Can"]
    can = np.array(d.body_xpos[bid])
    target = np.array(raw.target_bin_placements[raw.object_to_id["can"]], dtype=np.float64)
    in_bin = not raw.not_in_bin(can, raw.object_to_id["can"])
    if in_bin:  # released: back off upwards with the gripper open
        rot = _yaw_down_mat(_current_yaw(v.eef_mat))
        return v.act(np.array([v.eef[0], v.eef[1], can[2] + 0.2]), rot, -1.0)
    # aim at the near half of the target bin region (the far corner is at the edge of the Panda's reach)
    goal = np.array([target[0], target[1] - 0.04, raw.bin2_pos[2] + 0.12])
    return _pick_and_carry(v, can, None, goal, carry_z=raw.bin2_pos[2] + 0.22, close_tol=0.015)


def expert_door(raw: Any) -> np.ndarray:
    """Grasp the handle from the front (fingers vertical around the horizontal bar) and pull it along the
    door's swing arc about the hinge."""
    import mujoco

    v = _ExpertView(raw)
    d = raw.sim.data
    m = raw.sim.model._model
    handle = np.array(d.site_xpos[raw.door_handle_site_id])
    jid = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, raw.door.joints[0])
    anchor = np.array(d._data.xanchor[jid])
    axis = np.array(d._data.xaxis[jid])
    # yaw target: the multiple of pi nearest to (current yaw + pi); empirically this turns the wrist so
    # the fingers close around the bar (5/5 seeds; targeting the nearest multiple itself gave 0/10)
    rot = _yaw_down_mat(_nearest_yaw(0.0, _current_yaw(v.eef_mat) + np.pi, np.pi))
    rel = handle - v.eef
    held = np.linalg.norm(rel) < 0.035 and v.raw.robots[0].gripper["right"].current_action[0] > 0.5
    if held or (np.linalg.norm(rel) < 0.02 and v.raw.robots[0].gripper["right"].current_action[0] > 0):
        if not held:  # still closing
            return v.act(handle, rot, 1.0)
        # next point on the arc: rotate the handle about the hinge axis by +0.15 rad
        r = handle - anchor
        th = 0.15
        k = axis / np.linalg.norm(axis)
        r_rot = r * np.cos(th) + np.cross(k, r) * np.sin(th) + k * np.dot(k, r) * (1 - np.cos(th))
        return v.act(anchor + r_rot, rot, 1.0, gain=1.5)
    dxy = np.linalg.norm(rel[:2])
    if dxy > 0.015:
        hover = handle + np.array([0.0, 0.0, 0.08])
        if v.eef[2] < handle[2] + 0.03 and dxy > 0.03:
            return v.act(np.array([v.eef[0], v.eef[1], hover[2]]), rot, -1.0)
        return v.act(hover if dxy > 0.03 else np.array([handle[0], handle[1], v.eef[2]]), rot, -1.0)
    if rel[2] < -0.008:
        return v.act(handle, rot, -1.0)
    return v.act(handle, rot, 1.0)


EXPERTS = {"Lift": expert_lift, "PickPlaceCan": expert_pick_place_can, "Door": expert_door}


# ---------------------------------------------------------------------------------------------------


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


class RobosuiteEnv:
    """robosuite single-arm tasks behind the z1 `Env` protocol (see module docstring)."""

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
        if len(image_size) != 2 or min(image_size) <= 0:
            raise EnvError(f"robosuite: image_size must be (height, width) > 0, got {image_size}")
        if not cameras:
            raise EnvError(
                "robosuite: need at least one camera, e.g. cameras=('agentview', 'robot0_eye_in_hand')"
            )
        self._horizons = {name: t.horizon for name, t in TASKS.items()}
        for name, h in (horizons or {}).items():
            if name not in TASKS:
                raise unknown_task_error(name, list(TASKS), SUITE)
            if int(h) <= 0:
                raise EnvError(f"robosuite: horizon of {name!r} must be positive, got {h}")
            self._horizons[name] = int(h)
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
        self._build_seed = int(build_seed)
        self._reward_shaping = reward_shaping
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
    def seed(self) -> int | None:
        return self._seed if self._cur else None

    @property
    def t(self) -> int:
        return self._t

    @property
    def success_latched(self) -> bool:
        return self._latched

    def tasks(self) -> list[str]:
        return list(TASKS)

    def instruction(self, task: str) -> str:
        return self._task(task).instruction

    def horizon(self, task: str) -> int:
        self._task(task)
        return self._horizons[task]

    @property
    def raw_env(self) -> Any:
        """The underlying robosuite env of the current task (for tests and tools)."""
        return self._require().env

    def _task(self, task: str) -> RobosuiteTask:
        if task not in TASKS:
            raise unknown_task_error(task, list(TASKS), SUITE)
        return TASKS[task]

    def _require(self) -> _Built:
        if self._cur is None:
            raise EnvError("robosuite: no task yet; call reset(task, seed) first")
        return self._cur

    # ---- building ----
    def _build(self, task: str) -> _Built:
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
        return _Built(task, raw, key, cam_ids)

    # ---- dynamics ----
    def reset(self, task: str, seed: int) -> Observation:
        self._task(task)
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise EnvError(f"robosuite: seed must be a non-negative int, got {seed!r}")
        built = self._built.get(task)
        if built is None:
            built = self._build(task)
            self._built[task] = built
        raw = built.env
        # in place: the placement samplers and robots hold references to this Generator
        raw.rng.bit_generator.state = np.random.default_rng(int(seed)).bit_generator.state
        raw.reset()
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
            raise EnvError(f"robosuite: episode of {cur.name!r} is over ({horizon} steps); call reset()")
        _, reward, _, _ = cur.env.step(a)
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
        raw = cur.env
        robot = raw.robots[0]
        d = raw.sim.data
        site = robot.eef_site_id["right"]
        pos = np.array(d.site_xpos[site])
        quat = quat_xyzw_from_mat(np.array(d.site_xmat[site]))
        grip = np.array(d.qpos[robot._ref_gripper_joint_pos_indexes["right"]])
        return np.concatenate([pos, quat, grip]).astype(np.float32)  # (9,)

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
        return Observation(images=images, state=self._state(cur), instruction=TASKS[cur.name].instruction)

    def expert_action(self) -> np.ndarray:
        cur = self._require()
        fn = EXPERTS.get(cur.name)
        if fn is None:
            raise EnvError(
                f"robosuite: no scripted expert for {cur.name!r}; experts exist for {sorted(EXPERTS)}"
            )
        return np.clip(fn(cur.env), -1.0, 1.0)

    # ---- snapshot / restore ----
    def snapshot(self) -> RobosuiteSnapshot:
        cur = self._require()
        raw = cur.env
        return RobosuiteSnapshot(
            task=cur.name,
            seed=self._seed,
            model_key=cur.model_key,
            t=self._t,
            success_latched=self._latched,
            sim=physics_state(raw.sim.model._model, raw.sim.data._data),
            attrs={path: capture_attrs(obj) for path, obj in stateful_objects(raw)},
            rng_state=copy.deepcopy(raw.rng.bit_generator.state),
        )

    def restore(self, snapshot: Any) -> None:
        if not isinstance(snapshot, RobosuiteSnapshot):
            raise EnvError(
                f"robosuite: cannot restore a {type(snapshot).__name__}; expected a RobosuiteSnapshot from "
                "RobosuiteEnv.snapshot()"
            )
        cur = self._cur
        if cur is None or cur.name != snapshot.task:
            raise EnvError(
                f"robosuite: snapshot is of task {snapshot.task!r} but the env is on {self.task!r}; "
                f"call reset({snapshot.task!r}, {snapshot.seed}) first"
            )
        if snapshot.model_key != cur.model_key:
            raise EnvError(
                f"robosuite: snapshot comes from another model build ({snapshot.model_key}) than this env's "
                f"({cur.model_key}); restore it into an env made with the same build_seed"
            )
        raw = cur.env
        objs = dict(stateful_objects(raw))
        if set(objs) != set(snapshot.attrs):
            raise EnvError(
                f"robosuite: snapshot objects {sorted(snapshot.attrs)} do not match {sorted(objs)}"
            )
        set_physics_state(raw.sim.model._model, raw.sim.data._data, snapshot.sim)
        for path, attrs in snapshot.attrs.items():
            restore_attrs(objs[path], attrs)
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
