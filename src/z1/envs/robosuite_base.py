"""The part of a robosuite-based adapter that does not depend on the robot or the scenes: one
implementation of episode bookkeeping, rendering and snapshot/restore, shared by the robosuite adapter
(`z1.envs.robosuite`) and the RoboCasa adapter (`z1.envs.robocasa`).

A subclass builds its robosuite env (`_build`), reads its proprio (`_state`) and says which task table it
serves (`tasks`, `instruction`). Kept here once so the two adapters cannot drift apart:

- `reset` re-seeds the env's one `np.random.Generator` in place (placement samplers and robot init noise
  hold a reference to it) before robosuite's `reset()`: the same (task, seed) gives the same initial state.
- `observe` renders through z1's shared `CameraRenderer` only when an observation is asked for.
- `snapshot` / `restore` (docs/environments.md#snapshot-and-restore): the MuJoCo integration state
  (`z1.envs.mujoco_state.physics_state`), the plain attributes of every stateful Python object
  (`_stateful_objects`: env, robots, controllers, interpolators, grippers), the Generator state and the
  episode counters; a subclass adds its own pieces (`_snapshot_extra` / `_restore_extra`). Snapshots carry
  the task and a fingerprint of the built model; a snapshot of another task or another build is refused.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from z1.envs.base import EnvError, check_action, unknown_task_error
from z1.envs.mujoco_state import capture_attrs, physics_state, restore_attrs, set_physics_state
from z1.envs.render import CameraRenderer, select_gl_backend
from z1.types import EnvSpec, Observation, StepResult


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


def hide_collision_geoms(model: Any) -> None:
    """Alpha 0 on collision geoms (group 0) so rendering matches robosuite's (`vopt.geomgroup[0] = 0`)."""
    model.geom_rgba[model.geom_group == 0, 3] = 0.0


@dataclass(frozen=True)
class SuiteSnapshot:
    """What every robosuite-based snapshot holds; each adapter has its own subclass (a snapshot of one
    adapter is refused by the other)."""

    task: str
    seed: int
    model_key: str
    t: int
    success_latched: bool
    sim: np.ndarray  # (mj_stateSize(INTEGRATION),)
    attrs: dict[str, dict[str, Any]]  # object path -> plain attributes
    rng_state: dict[str, Any]


@dataclass
class Built:
    """One built robosuite env for a task, reused across resets."""

    name: str
    env: Any
    model_key: str
    camera_ids: list[int]


class RobosuiteBaseEnv(ABC):
    """A robosuite env behind the z1 `Env` protocol, minus what depends on the robot and the scenes
    (see module docstring)."""

    suite: ClassVar[str]
    snapshot_type: ClassVar[type[SuiteSnapshot]]

    def __init__(
        self,
        *,
        image_size: tuple[int, int],
        render: bool,
        cameras: Sequence[str],
        horizons: Mapping[str, int] | None,
        default_horizons: Mapping[str, int],
        state_names: tuple[str, ...],
        action_names: tuple[str, ...],
        control_hz: float,
        camera_example: str,
        check_install: Callable[[], None] | None = None,
    ) -> None:
        """`camera_example` completes the error for an empty camera list; `check_install` runs after the
        arguments are checked (so a typo is reported even where the simulator is missing)."""
        suite = self.suite
        if len(image_size) != 2 or min(image_size) <= 0:
            raise EnvError(f"{suite}: image_size must be (height, width) > 0, got {image_size}")
        if not cameras:
            raise EnvError(f"{suite}: need at least one camera, e.g. {camera_example}")
        self._horizons = dict(default_horizons)
        for name, h in (horizons or {}).items():
            if name not in default_horizons:
                raise unknown_task_error(name, self.tasks(), suite)
            if int(h) <= 0:
                raise EnvError(f"{suite}: horizon of {name!r} must be positive, got {h}")
            self._horizons[name] = int(h)
        if check_install is not None:
            check_install()
        self.spec = EnvSpec(
            suite=suite,
            cameras=tuple(cameras),
            image_size=(int(image_size[0]), int(image_size[1])),
            state_names=state_names,
            action_names=action_names,
            action_low=(-1.0,) * len(action_names),
            action_high=(1.0,) * len(action_names),
            max_steps=max(self._horizons.values()),
            control_hz=control_hz,
        )
        self._render = render
        if render:
            select_gl_backend()
        self._renderer: CameraRenderer | None = None
        self._built: dict[str, Built] = {}
        self._cur: Built | None = None
        self._seed = 0
        self._t = 0
        self._latched = False

    # ---- what a subclass provides ----
    @abstractmethod
    def tasks(self) -> list[str]: ...

    @abstractmethod
    def instruction(self, task: str) -> str: ...

    @abstractmethod
    def _build(self, task: str, seed: int) -> Built:
        """Make the robosuite env of `task` (`seed`: that of the first reset)."""

    @abstractmethod
    def _state(self, cur: Built) -> np.ndarray:
        """The proprio vector (`spec.state_names`) of the current state."""

    @abstractmethod
    def _reset_hint(self, snapshot: Any) -> str:
        """How to get the env onto the snapshot's task (completes a refusal message)."""

    @abstractmethod
    def _foreign_build_hint(self, snapshot: Any, cur: Built) -> str:
        """Which build the snapshot came from and how to get it (completes a refusal message)."""

    def _env_action(self, action: np.ndarray) -> np.ndarray:
        """The policy action (checked and clipped) as the robosuite env takes it."""
        return action

    def _after_reset(self, built: Built) -> None:  # noqa: B027 - an optional hook
        """Called after robosuite's `reset()` (a hard reset builds a new model)."""

    def _stateful_objects(self, raw: Any) -> Iterator[tuple[str, Any]]:
        return stateful_objects(raw)

    def _snapshot_extra(self, raw: Any) -> dict[str, Any]:
        """Fields of the subclass's snapshot type beyond `SuiteSnapshot`'s."""
        return {}

    def _restore_extra(self, raw: Any, snapshot: Any) -> None:  # noqa: B027 - an optional hook
        """Put back what `_snapshot_extra` took (after the physics and the plain attributes)."""

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

    def horizon(self, task: str) -> int:
        self._check_task(task)
        return self._horizons[task]

    @property
    def raw_env(self) -> Any:
        """The underlying robosuite env of the current task (for tests and tools)."""
        return self._require().env

    def _check_task(self, task: str) -> None:
        if task not in self._horizons:
            raise unknown_task_error(task, self.tasks(), self.suite)

    def _require(self) -> Built:
        if self._cur is None:
            raise EnvError(f"{self.suite}: no task yet; call reset(task, seed) first")
        return self._cur

    # ---- dynamics ----
    def _reset(self, task: str, seed: int, prepare: Callable[[Built], None] | None = None) -> Observation:
        """Reset to (task, seed); `prepare(built)` runs after the re-seed, before robosuite's `reset()`."""
        self._check_task(task)
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise EnvError(f"{self.suite}: seed must be a non-negative int, got {seed!r}")
        built = self._built.get(task)
        if built is None:
            built = self._build(task, int(seed))
            self._built[task] = built
        raw = built.env
        # in place: the placement samplers and robots hold references to this Generator
        raw.rng.bit_generator.state = np.random.default_rng(int(seed)).bit_generator.state
        if prepare is not None:
            prepare(built)
        raw.reset()
        self._after_reset(built)
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
            raise EnvError(f"{self.suite}: episode of {cur.name!r} is over ({horizon} steps); call reset()")
        _, reward, _, _ = cur.env.step(self._env_action(a))
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

    # ---- snapshot / restore ----
    def snapshot(self) -> SuiteSnapshot:
        cur = self._require()
        raw = cur.env
        return self.snapshot_type(
            task=cur.name,
            seed=self._seed,
            model_key=cur.model_key,
            t=self._t,
            success_latched=self._latched,
            sim=physics_state(raw.sim.model._model, raw.sim.data._data),
            attrs={path: capture_attrs(obj) for path, obj in self._stateful_objects(raw)},
            rng_state=copy.deepcopy(raw.rng.bit_generator.state),
            **self._snapshot_extra(raw),
        )

    def restore(self, snapshot: Any) -> None:
        suite, kind = self.suite, self.snapshot_type.__name__
        if not isinstance(snapshot, self.snapshot_type):
            raise EnvError(
                f"{suite}: cannot restore a {type(snapshot).__name__}; expected a {kind} from "
                f"{type(self).__name__}.snapshot()"
            )
        cur = self._cur
        if cur is None or cur.name != snapshot.task:
            raise EnvError(
                f"{suite}: snapshot is of task {snapshot.task!r} but the env is on {self.task!r}; "
                f"{self._reset_hint(snapshot)}"
            )
        if snapshot.model_key != cur.model_key:
            raise EnvError(f"{suite}: snapshot comes from another {self._foreign_build_hint(snapshot, cur)}")
        raw = cur.env
        objs = dict(self._stateful_objects(raw))
        if set(objs) != set(snapshot.attrs):
            raise EnvError(f"{suite}: snapshot objects {sorted(snapshot.attrs)} do not match {sorted(objs)}")
        set_physics_state(raw.sim.model._model, raw.sim.data._data, snapshot.sim)
        for path, attrs in snapshot.attrs.items():
            restore_attrs(objs[path], attrs)
        self._restore_extra(raw, snapshot)
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
