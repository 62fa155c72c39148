"""Meta-World v3 (metaworld 3.1.1, mujoco 3.3.0) adapter: 50 MT50 tasks, two 64x64 cameras, 4-D proprio.

Scene per seed. The start scene of (task, seed) is the one of `gym.make("Meta-World/goal_observable",
env_name=task, seed=seed)` followed by `reset()` (docs/environments.md#meta-world: the seed goes to
construction; `reset(seed=...)` changes nothing). Construction costs ~0.6 s, so one underlying env per
task is built once and re-seeded in place by replaying what the constructor does with the seed
(metaworld/env_dict.py `_create_observable_goal_envs.initialize`): seed the global numpy RNG, reset once
with an unfrozen random vector (the goal/object sample), freeze it, `env.seed(seed)`, restore the global
RNG. `tests/test_envs_metaworld.py` checks this against fresh `gym.make` envs.

Snapshot / restore (docs/environments.md#snapshot-and-restore). Physics:
`mj_getState/mj_setState(mjSTATE_INTEGRATION)` plus the model fields metaworld rewrites at reset
(`body_pos`, `site_pos`). Python side: every plain attribute of the metaworld env (arrays copied, scalars,
the RNG state) except arrays that alias MuJoCo memory. Those are live views
(`init_left_pad`/`init_right_pad` in every task; `_target_pos` in basketball and bin-picking;
`obj_init_pos` in door-lock/unlock) and must stay views: they are found by address at snapshot time.
Derived quantities (xpos, contacts...) are refreshed by `mj_forward` followed by a second `mj_setState`,
because in mujoco 3.3.0 `mj_forward` overwrites `qacc_warmstart`, which would break bitwise replay.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from z1.envs.base import EnvError, check_action, unknown_task_error
from z1.envs.render import CameraRenderer, process_renderer, select_gl_backend
from z1.types import EnvSpec, Observation, StepResult

SUITE = "metaworld"
MAX_STEPS = 500  # every v3 task: max_path_length
CONTROL_HZ = 80.0  # frame_skip 5 x timestep 2.5 ms

# One short instruction per MT50 task (the dict order is Meta-World's ALL_V3_ENVIRONMENTS order).
INSTRUCTIONS: dict[str, str] = {
    "assembly-v3": "put the ring on the peg",
    "basketball-v3": "dunk the ball into the basket",
    "bin-picking-v3": "move the cube into the other bin",
    "box-close-v3": "put the lid on the box",
    "button-press-topdown-v3": "press the button from the top",
    "button-press-topdown-wall-v3": "press the button behind the wall from the top",
    "button-press-v3": "press the button from the front",
    "button-press-wall-v3": "press the button behind the wall from the front",
    "coffee-button-v3": "press the button on the coffee machine",
    "coffee-pull-v3": "pull the mug out of the coffee machine",
    "coffee-push-v3": "push the mug under the coffee machine",
    "dial-turn-v3": "turn the dial",
    "disassemble-v3": "pull the ring off the peg",
    "door-close-v3": "close the door",
    "door-lock-v3": "lock the door by turning the knob down",
    "door-open-v3": "open the door",
    "door-unlock-v3": "unlock the door by turning the knob up",
    "drawer-close-v3": "close the drawer",
    "drawer-open-v3": "open the drawer",
    "faucet-close-v3": "turn the faucet handle to close it",
    "faucet-open-v3": "turn the faucet handle to open it",
    "hammer-v3": "hammer the nail into the wall",
    "hand-insert-v3": "put your hand into the hole",
    "handle-press-side-v3": "press the handle down from the side",
    "handle-press-v3": "press the handle down",
    "handle-pull-side-v3": "pull the handle up from the side",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever up",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
    "pick-place-wall-v3": "pick up the puck and place it at the goal behind the wall",
    "pick-out-of-hole-v3": "pick the peg out of the hole",
    "reach-v3": "reach the goal position",
    "push-back-v3": "push the puck back to the goal",
    "push-v3": "push the puck to the goal",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "plate-slide-v3": "slide the plate into the cabinet",
    "plate-slide-side-v3": "slide the plate into the cabinet from the side",
    "plate-slide-back-v3": "slide the plate out of the cabinet",
    "plate-slide-back-side-v3": "slide the plate out of the cabinet to the side",
    "peg-unplug-side-v3": "unplug the peg to the side",
    "soccer-v3": "kick the ball into the goal",
    "stick-push-v3": "grab the stick and push the box with it",
    "stick-pull-v3": "grab the stick and pull the box with it",
    "push-wall-v3": "push the puck past the wall to the goal",
    "reach-wall-v3": "reach the goal position behind the wall",
    "shelf-place-v3": "place the puck on the shelf",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the table",
    "window-open-v3": "slide the window open",
    "window-close-v3": "slide the window closed",
}
MT50_TASKS: tuple[str, ...] = tuple(INSTRUCTIONS)
# Meta-World's MT10 (metaworld.env_dict.MT10_V3), in its order.
MT10_TASKS: tuple[str, ...] = (
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "door-open-v3",
    "drawer-open-v3",
    "drawer-close-v3",
    "button-press-topdown-v3",
    "peg-insert-side-v3",
    "window-open-v3",
    "window-close-v3",
)
# mw-quick: 4 tasks, all with experts at 100% (noise 0.1, bench/results/envs_experts.json), chosen so that
# a tiny 64x64 image policy after short SFT lands in the middle, leaving RL something to do
# (docs/environments.md#task-sets). SFT figures below were measured with a 1.3M-parameter prototype image
# policy (10 min of SFT on 2 cores); z1's tiny policy: bench/results/sft_mw-quick.md.
# - button-press-topdown-v3: a large fixture, SFT reaches ~100% (60% after 3 min): the easy anchor
#   that shows RL does not regress a solved task.
# - drawer-open-v3: large fixture but needs a grasp-and-pull; ~85% after SFT.
# - push-v3 / pick-place-v3: the same scene as reach, the puck and goal are 1-3 px at 64x64; SFT gave
#   10-20% with near misses (~20 cm): the hard end, where RL has most to gain. They differ only in the
#   instruction, so the language input matters.
MW_QUICK_TASKS: tuple[str, ...] = ("button-press-topdown-v3", "drawer-open-v3", "push-v3", "pick-place-v3")
TASK_SETS: dict[str, tuple[str, ...]] = {"mt10": MT10_TASKS, "mt50": MT50_TASKS, "mw-quick": MW_QUICK_TASKS}

# Default cameras. "corner" frames the table and the arm closely (objects are larger at 64x64 than in
# corner2); "gripperPOV" looks down past the fingers. Corner cameras render upside down: rotated 180.
DEFAULT_CAMERA_NAMES: dict[str, str] = {"scene": "corner", "wrist": "gripperPOV"}
MW_CAMERAS: tuple[str, ...] = (
    "topview",
    "corner",
    "corner2",
    "corner3",
    "corner4",
    "behindGripper",
    "gripperPOV",
)
_ROTATED_180 = frozenset({"corner", "corner2", "corner3", "corner4"})

STATE_NAMES = ("ee_x", "ee_y", "ee_z", "gripper_opening")
ACTION_NAMES = ("dx", "dy", "dz", "grip")

# metaworld env attributes that are configuration or objects we must not copy.
_SKIP_ATTRS = frozenset(
    {
        "model",
        "data",
        "mujoco_renderer",
        "spec",
        "_ezpickle_args",
        "_ezpickle_kwargs",
        "init_config",
        "fullpath",
        "_np_random",
    }
)
_SCALARS = (bool, int, float, str, type(None), np.generic)


@dataclass(frozen=True)
class MetaWorldSnapshot:
    """Everything needed to put a `MetaWorldEnv` back to one instant (picklable, a few KB)."""

    task: str
    seed: int
    t: int
    success_latched: bool
    raw_obs: np.ndarray  # (39,) the metaworld observation the expert sees
    sim: np.ndarray  # mjSTATE_INTEGRATION vector
    body_pos: np.ndarray  # (nbody, 3) model.body_pos (rewritten by metaworld at reset)
    site_pos: np.ndarray  # (nsite, 3)
    attrs: dict[str, Any]  # plain python-side attributes of the metaworld env
    rng_state: dict[str, Any] | None  # env.np_random bit generator state


def _memory_range(objs: Sequence[Any]) -> tuple[int, int]:
    """Lowest and highest byte address of all ndarray attributes of the given MuJoCo structs."""
    lo, hi = None, None
    for obj in objs:
        for name in dir(obj):
            if name.startswith("_"):
                continue
            try:
                v = getattr(obj, name)
            except Exception:  # some bound properties raise for unsupported configs
                continue
            if isinstance(v, np.ndarray) and v.size:
                start = v.__array_interface__["data"][0]
                end = start + v.nbytes
                lo = start if lo is None else min(lo, start)
                hi = end if hi is None else max(hi, end)
    return (lo or 0, hi or 0)


def _aliases(arr: np.ndarray, ranges: Sequence[tuple[int, int]]) -> bool:
    if arr.base is None or arr.size == 0:
        return False
    start = arr.__array_interface__["data"][0]
    end = start + arr.nbytes
    return any(start < hi and lo < end for lo, hi in ranges)


class _Task:
    """One underlying metaworld env (built once per task) plus facts cached about it."""

    def __init__(self, name: str, seed: int) -> None:
        import mujoco
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE
        from metaworld.policies import ENV_POLICY_MAP

        self.name = name
        self.env = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[f"{name}-goal-observable"](seed=seed)
        self.seed = seed  # the seed the scene currently corresponds to
        self.policy = ENV_POLICY_MAP[name]()
        m, d = self.env.model, self.env.data
        self.state_spec = mujoco.mjtState.mjSTATE_INTEGRATION
        self.state_size = mujoco.mj_stateSize(m, self.state_spec)
        self.ranges = [_memory_range([d]), _memory_range([m])]

    def reseed(self, seed: int) -> None:
        """Make the scene the one `gym.make(..., seed=seed)` gives, without rebuilding the model."""
        if seed == self.seed:
            return
        env = self.env
        saved = np.random.get_state()
        np.random.seed(seed)
        try:
            env._freeze_rand_vec = False
            env.reset()
            env._freeze_rand_vec = True
            env.seed(seed)
        finally:
            np.random.set_state(saved)
        self.seed = seed


class MetaWorldEnv:
    """Meta-World v3 behind the z1 `Env` protocol (see module docstring)."""

    def __init__(
        self,
        image_size: tuple[int, int] = (64, 64),
        cameras: Sequence[str] = ("scene", "wrist"),
        camera_names: Mapping[str, str] | None = None,
        render: bool = True,
        max_cached_tasks: int = 4,
    ) -> None:
        if max_cached_tasks < 1:
            raise EnvError(f"metaworld: max_cached_tasks must be >= 1, got {max_cached_tasks}")
        # Each task's env costs ~55 MB (model, data) per slot, plus ~100 MB of GL context per task per
        # process (slots of a task share it, `process_renderer`); a slot that visits many tasks keeps only
        # the most recently used ones. Measured: 8 slots x 4 tasks in one process, 1.45 GB (4.98 GB when
        # every slot had its own GL context).
        self._max_cached_tasks = max_cached_tasks
        names = dict(DEFAULT_CAMERA_NAMES)
        names.update(camera_names or {})
        for cam in cameras:
            if cam not in names:
                raise EnvError(
                    f"metaworld: camera {cam!r} has no Meta-World camera; pass camera_names={{{cam!r}: ...}} "
                    f"with one of {list(MW_CAMERAS)}"
                )
            if names[cam] not in MW_CAMERAS:
                raise EnvError(
                    f"metaworld: unknown Meta-World camera {names[cam]!r}; choose from {list(MW_CAMERAS)}"
                )
        if len(image_size) != 2 or min(image_size) <= 0:
            raise EnvError(f"metaworld: image_size must be (height, width) > 0, got {image_size}")
        self._camera_names = {cam: names[cam] for cam in cameras}
        self._render = render
        self.spec = EnvSpec(
            suite=SUITE,
            cameras=tuple(cameras),
            image_size=(int(image_size[0]), int(image_size[1])),
            state_names=STATE_NAMES,
            action_names=ACTION_NAMES,
            action_low=(-1.0,) * 4,
            action_high=(1.0,) * 4,
            max_steps=MAX_STEPS,
            control_hz=CONTROL_HZ,
        )
        if render:
            select_gl_backend()
        self._renderer: CameraRenderer | None = None
        self._tasks: dict[str, _Task] = {}
        self._cur: _Task | None = None
        self._seed = 0
        self._t = 0
        self._latched = False
        self._raw_obs: np.ndarray | None = None  # (39,)
        self._camera_ids: dict[str, list[int]] = {}

    # ---- protocol: info ----
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
        """Success at any step since the last reset (Meta-World's protocol)."""
        return self._latched

    def tasks(self) -> list[str]:
        return list(MT50_TASKS)

    def instruction(self, task: str) -> str:
        if task not in INSTRUCTIONS:
            raise unknown_task_error(task, list(MT50_TASKS), SUITE)
        return INSTRUCTIONS[task]

    @property
    def raw_env(self) -> Any:
        """The underlying metaworld env of the current task (for tests and tools)."""
        if self._cur is None:
            raise EnvError("metaworld: no task yet; call reset(task, seed) first")
        return self._cur.env

    # ---- protocol: dynamics ----
    def reset(self, task: str, seed: int) -> Observation:
        if task not in INSTRUCTIONS:
            raise unknown_task_error(task, list(MT50_TASKS), SUITE)
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise EnvError(f"metaworld: seed must be a non-negative int, got {seed!r}")
        seed = int(seed)
        entry = self._tasks.pop(task, None)
        if entry is None:
            self._evict(keep=self._max_cached_tasks - 1)
            entry = _Task(task, seed)
        else:
            entry.reseed(seed)
        self._tasks[task] = entry  # most recently used last
        obs, _ = entry.env.reset()
        self._cur = entry
        self._seed = seed
        self._t = 0
        self._latched = False
        self._raw_obs = np.asarray(obs, dtype=np.float64).copy()
        return self.observe() if self._render else self._state_only_obs()

    def step(self, action: np.ndarray, observe: bool = False) -> StepResult:
        cur = self._require_task()
        a = check_action(action, self.spec)
        if self._t >= MAX_STEPS:
            raise EnvError(f"metaworld: episode of {cur.name!r} is over ({MAX_STEPS} steps); call reset()")
        obs, reward, _, _, info = cur.env.step(a)
        self._t += 1
        self._raw_obs = np.asarray(obs, dtype=np.float64).copy()
        success = bool(info["success"])
        self._latched = self._latched or success
        done = self._t >= MAX_STEPS
        out_info = {k: float(v) for k, v in info.items() if isinstance(v, int | float | np.generic)}
        out_info["success_latched"] = self._latched
        return StepResult(
            reward=float(reward),
            success=success,
            done=done,
            info=out_info,
            observation=self.observe() if observe else None,
        )

    def observe(self) -> Observation:
        cur = self._require_task()
        images: dict[str, np.ndarray] = {}
        if self._render:
            if self._renderer is None:  # shared by the process's envs: slots of a task share GL memory
                self._renderer = process_renderer(*self.spec.image_size)
            ids = self._camera_ids.get(cur.name)
            if ids is None:
                import mujoco

                ids = [
                    mujoco.mj_name2id(cur.env.model, mujoco.mjtObj.mjOBJ_CAMERA, self._camera_names[c])
                    for c in self.spec.cameras
                ]
                self._camera_ids[cur.name] = ids
            frames = self._renderer.render(cur.env.model, cur.env.data, ids, share_key=cur.name)
            for cam, img in zip(self.spec.cameras, frames):
                if self._camera_names[cam] in _ROTATED_180:
                    img = img[::-1, ::-1]
                images[cam] = np.ascontiguousarray(img)  # (y, x, 3)
        return Observation(images=images, state=self._state(), instruction=INSTRUCTIONS[cur.name])

    def _state_only_obs(self) -> Observation:
        cur = self._require_task()
        return Observation(images={}, state=self._state(), instruction=INSTRUCTIONS[cur.name])

    def _state(self) -> np.ndarray:
        assert self._raw_obs is not None
        return self._raw_obs[:4].astype(np.float32)  # (s,) ee xyz + gripper opening in [0, 1]

    def expert_action(self) -> np.ndarray:
        cur = self._require_task()
        assert self._raw_obs is not None
        # a copy: some experts (door-open, door-close) edit the observation in place. Their gains exceed
        # the action bounds and metaworld warns on every call; z1 clips below, so the warning is noise.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Constant\\(s\\) may be too high")
            a = np.asarray(cur.policy.get_action(self._raw_obs.copy()), dtype=np.float64)
        return np.clip(a, -1.0, 1.0)

    # ---- snapshot / restore ----
    def snapshot(self) -> MetaWorldSnapshot:
        import mujoco

        cur = self._require_task()
        env = cur.env
        sim = np.empty(cur.state_size, dtype=np.float64)
        mujoco.mj_getState(env.model, env.data, sim, cur.state_spec)
        attrs: dict[str, Any] = {}
        for k, v in vars(env).items():
            if k in _SKIP_ATTRS:
                continue
            if isinstance(v, np.ndarray):
                if not _aliases(v, cur.ranges):
                    attrs[k] = v.copy()
            elif isinstance(v, _SCALARS):
                attrs[k] = v
            elif isinstance(v, list | tuple | dict) and k != "init_config":
                attrs[k] = copy.deepcopy(v)
        rng = getattr(env, "_np_random", None)
        assert self._raw_obs is not None
        return MetaWorldSnapshot(
            task=cur.name,
            seed=self._seed,
            t=self._t,
            success_latched=self._latched,
            raw_obs=self._raw_obs.copy(),
            sim=sim,
            body_pos=env.model.body_pos.copy(),
            site_pos=env.model.site_pos.copy(),
            attrs=attrs,
            rng_state=copy.deepcopy(rng.bit_generator.state) if rng is not None else None,
        )

    def restore(self, snapshot: Any) -> None:
        import mujoco

        if not isinstance(snapshot, MetaWorldSnapshot):
            raise EnvError(
                f"metaworld: cannot restore a {type(snapshot).__name__}; expected a MetaWorldSnapshot from "
                "MetaWorldEnv.snapshot()"
            )
        cur = self._cur
        if cur is None or cur.name != snapshot.task:
            raise EnvError(
                f"metaworld: snapshot is of task {snapshot.task!r} but the env is on {self.task!r}; "
                f"call reset({snapshot.task!r}, {snapshot.seed}) first"
            )
        env = cur.env
        m, d = env.model, env.data
        if snapshot.sim.shape != (cur.state_size,) or snapshot.body_pos.shape != m.body_pos.shape:
            raise EnvError(f"metaworld: snapshot does not match the {cur.name!r} model (foreign snapshot?)")
        m.body_pos[:] = snapshot.body_pos
        m.site_pos[:] = snapshot.site_pos
        mujoco.mj_setState(m, d, snapshot.sim, cur.state_spec)
        mujoco.mj_forward(m, d)  # refresh positions/contacts for rendering and the live views ...
        mujoco.mj_setState(m, d, snapshot.sim, cur.state_spec)  # ... and put back qacc_warmstart
        for k, v in snapshot.attrs.items():
            setattr(env, k, v.copy() if isinstance(v, np.ndarray) else copy.deepcopy(v))
        if snapshot.rng_state is not None:
            env._np_random.bit_generator.state = copy.deepcopy(snapshot.rng_state)
        cur.seed = snapshot.seed  # the model now holds this seed's scene
        self._seed = snapshot.seed
        self._t = snapshot.t
        self._latched = snapshot.success_latched
        self._raw_obs = snapshot.raw_obs.copy()

    def _evict(self, keep: int) -> None:
        """Close the least recently used task envs until at most `keep` remain."""
        while len(self._tasks) > keep:
            name = next(iter(self._tasks))
            entry = self._tasks.pop(name)
            if entry is self._cur:
                self._cur = None
            if self._renderer is not None:
                self._renderer.forget(entry.env.model, share_key=name)
            self._camera_ids.pop(name, None)
            entry.env.close()

    @property
    def cached_tasks(self) -> list[str]:
        """Tasks whose envs are kept, least recently used first."""
        return list(self._tasks)

    def close(self) -> None:
        for name, entry in self._tasks.items():
            if self._renderer is not None:  # the renderer is the process's: release only our share
                self._renderer.forget(entry.env.model, share_key=name)
            entry.env.close()
        self._renderer = None
        self._tasks.clear()
        self._cur = None

    def _require_task(self) -> _Task:
        if self._cur is None:
            raise EnvError("metaworld: no task yet; call reset(task, seed) first")
        return self._cur
