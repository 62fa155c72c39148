"""Hosting env slots: the public layer every vector env is built on, in-process or scaled out.

A vector env owns `num_slots` env slots, addressed 0..num_slots-1, and steps them in batches. Three
pieces are shared by every way of hosting them, and live here so that the worker processes of
`z1.envs.vector` and the Ray actors of `z1.distributed.ray_env` run the same code:

- `SlotEnvs`: the envs of some slots inside the process that hosts them (a worker process, a Ray actor,
  or the learner itself) and the commands on them. A host receives `(command, args)` and runs
  `getattr(slot_envs, command)(*args)`; its methods are the wire protocol.
- `VectorEnvBase`: what the caller side knows about every slot (its task and seed, or None after a reset
  was lost), the argument checks, and `clone`/`clone_many` built on snapshot + restore.
- `HostedVectorEnv`: slots spread over `num_workers` hosts (slot s on host s % num_workers) with every
  batched operation issued as one call per involved host. An implementation provides `call_workers`
  (send every host its command, then gather, so hosts run in parallel) and `close`; when a host is lost
  it calls `forget_worker` and raises `EnvWorkerError`, so the caller re-resets those slots.

A "worker" here is any host: a worker process or a Ray actor.
"""

from __future__ import annotations

import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from z1.envs.base import EnvError, check_action_chunks, run_chunk
from z1.types import ChunkResult, EnvSpec, Observation


class EnvWorkerError(RuntimeError):
    """An env host (worker process or Ray actor) died or hung; the message names the slots it hosted (task,
    seed). Those slots must be reset before they are used again."""


WORKER_ENV_VARS = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}
"""Environment variables of every env host: one thread per BLAS/OpenMP pool (a host steps its slots on
one core; more threads only fight the other hosts)."""


def worker_process_setup(gl: str | None) -> None:
    """Process-wide settings of an env host (worker process or Ray actor): one thread per BLAS/OpenMP
    pool and the MuJoCo GL backend. Call it before anything heavy (mujoco, torch) is imported."""
    os.environ.update(WORKER_ENV_VARS)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if gl:
        os.environ["MUJOCO_GL"] = gl
        os.environ["PYOPENGL_PLATFORM"] = gl
    if "torch" in sys.modules:  # only if something imported it; never import torch just for this
        sys.modules["torch"].set_num_threads(1)


class SlotEnvs:
    """The envs of some slots, in the process hosting them, and the commands a host runs on them.

    Every command takes and returns plain picklable values keyed by slot, so a worker process or a Ray
    actor can run it on a message as received. Commands name slots this host holds; another slot is an
    `EnvError` (a routing bug on the caller side).
    """

    def __init__(self, suite: str, slots: Sequence[int], env_kwargs: dict[str, Any]) -> None:
        from z1.envs.registry import make_env

        self.envs = {s: make_env(suite, **env_kwargs) for s in slots}

    def _env(self, slot: int) -> Any:
        if slot not in self.envs:
            raise EnvError(f"slot {slot} is not hosted here (slots: {sorted(self.envs)})")
        return self.envs[slot]

    def spec(self) -> EnvSpec:
        return next(iter(self.envs.values())).spec

    def reset(self, items: list[tuple[int, str, int]]) -> dict[int, Observation]:
        return {s: self._env(s).reset(task, seed) for s, task, seed in items}

    def run_chunks(self, actions: dict[int, np.ndarray], stop_on_success: bool, observe: bool) -> dict:
        return {
            s: run_chunk(self._env(s), a, stop_on_success=stop_on_success, observe=observe)
            for s, a in actions.items()
        }

    def observe(self, slots: list[int]) -> dict[int, Observation]:
        return {s: self._env(s).observe() for s in slots}

    def snapshot(self, slot: int) -> Any:
        return self._env(slot).snapshot()

    def restore(self, slot: int, snap: Any) -> Observation:
        env = self._env(slot)
        env.restore(snap)
        return env.observe()

    def expert_actions(self, slots: list[int]) -> dict[int, np.ndarray]:
        return {s: self._env(s).expert_action() for s in slots}

    def clone_into(
        self, items: list[tuple[int, str, int]], snap: Any, observe: bool
    ) -> dict[int, Observation | None]:
        """Restore `snap` into each slot; a slot holding another task is reset to (task, seed) first.

        A snapshot restores across seeds of the same task (the adapters snapshot the seed-dependent
        model fields too), so no reset is needed when only the seed differs.
        """
        out: dict[int, Observation | None] = {}
        for s, task, seed in items:
            env = self._env(s)
            if env.task != task:
                env.reset(task, seed)
            env.restore(snap)
            out[s] = env.observe() if observe else None
        return out

    def close(self) -> None:
        for env in self.envs.values():
            env.close()


class VectorEnvBase(ABC):
    """Caller-side slot bookkeeping common to every vector env.

    Tracks each slot's (task, seed) so that commands on a slot that was never reset (or whose host was
    lost since) fail with a clear `EnvError` instead of stepping a fresh env, and so crash reports can
    name what a host held. `restarts` counts hosts found dead and restarted or replaced, for the logs.
    Subclasses call `_init_slots` first and set `spec`.
    """

    num_slots: int
    spec: EnvSpec

    def _init_slots(self, num_slots: int) -> None:
        if num_slots <= 0:
            raise ValueError(f"num_slots must be positive, got {num_slots}")
        self.num_slots = num_slots
        self.restarts = 0  # hosts (worker processes / actors) found dead and restarted so far
        self._task: list[str | None] = [None] * num_slots
        self._seed: list[int | None] = [None] * num_slots

    def _check_slots(self, slots: Sequence[int]) -> None:
        for s in slots:
            if not isinstance(s, int | np.integer) or not 0 <= s < self.num_slots:
                raise EnvError(f"slot {s!r} out of range [0, {self.num_slots})")

    def _check_reset(self, slots: Sequence[int]) -> None:
        self._check_slots(slots)
        for s in slots:
            if self._task[s] is None:
                raise EnvError(
                    f"slot {s} has no task (never reset, or its worker restarted); call reset() first"
                )

    @staticmethod
    def _check_reset_args(slots: list[int], tasks: list[str], seeds: list[int]) -> None:
        if not (len(slots) == len(tasks) == len(seeds)):
            raise EnvError(
                f"reset: slots, tasks and seeds differ in length ({len(slots)}, {len(tasks)}, {len(seeds)})"
            )
        if len(set(slots)) != len(slots):
            raise EnvError(f"reset: repeated slots in {slots}")

    def slot_task(self, slot: int) -> tuple[str | None, int | None]:
        return self._task[slot], self._seed[slot]

    def clone(self, src: int, dst: int) -> Observation:
        """Copy slot `src`'s state into slot `dst` (resetting dst to src's task first if it differs)."""
        obs = self.clone_many(src, [dst], observe=True)[0]
        assert obs is not None
        return obs

    def clone_many(self, src: int, dsts: Sequence[int], observe: bool = False) -> list[Observation | None]:
        """Copy slot `src`'s state into every slot of `dsts`: one snapshot, one call per worker (in
        parallel), no rendering unless `observe` (the clones' observation equals src's)."""
        self._check_reset([src])
        self._check_slots(list(dsts))
        if src in dsts:
            raise EnvError(f"clone_many: source slot {src} is also a destination")
        task, seed = self._task[src], self._seed[src]
        assert task is not None and seed is not None
        snap = self.snapshot(src)
        got = self._clone_into([(int(d), task, seed) for d in dsts], snap, observe)
        for d in dsts:
            self._task[d], self._seed[d] = task, seed
        return [got[int(d)] for d in dsts]

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @abstractmethod
    def _clone_into(
        self, items: list[tuple[int, str, int]], snap: Any, observe: bool
    ) -> dict[int, Observation | None]:
        """`SlotEnvs.clone_into` on the hosts of `items` (slot, task, seed)."""

    @abstractmethod
    def reset(self, slots: list[int], tasks: list[str], seeds: list[int]) -> list[Observation]:
        """Reset each slot to its (task, seed); the observations in the order of `slots`."""

    @abstractmethod
    def run_chunks(
        self, actions: dict[int, np.ndarray], stop_on_success: bool = True, observe: bool = True
    ) -> dict[int, ChunkResult]:
        """Execute each slot's action chunk (n, d) until success (optionally) or its time limit."""

    @abstractmethod
    def observe(self, slots: list[int]) -> list[Observation]:
        """Render the slots' current observations, in the order of `slots`."""

    @abstractmethod
    def expert_actions(self, slots: list[int]) -> list[np.ndarray]:
        """The scripted experts' actions for the slots' current states."""

    @abstractmethod
    def snapshot(self, slot: int) -> Any:
        """A small picklable value that `restore` turns back into this slot's state (any slot's)."""

    @abstractmethod
    def restore(self, slot: int, snap: Any) -> Observation:
        """Put `slot` into the state of `snap`; its observation."""

    @abstractmethod
    def close(self) -> None:
        """Close every env and stop the hosts (idempotent)."""


class HostedVectorEnv(VectorEnvBase):
    """Slots spread over `num_workers` hosts (worker processes or Ray actors); slot s on host
    s % num_workers. Every batched operation makes one `call_workers` with each involved host's share: an
    implementation sends all of them first and then gathers, so the hosts run in parallel.

    Implementations set `num_workers` and `spec`, and provide `call_workers` and `close`. A host that is
    lost (died, hung, restarted) makes `call_workers` raise `EnvWorkerError` after `forget_worker`, so the
    slots it hosted refuse commands until they are reset.
    """

    num_workers: int

    @abstractmethod
    def call_workers(self, per_worker: dict[int, tuple[str, tuple]], what: str) -> dict[int, Any]:
        """Run `getattr(SlotEnvs, cmd)(*args)` on every host of `per_worker` (host -> (cmd, args)) and
        return host -> value; raise the first failure (`what` names the operation in error messages)."""

    def worker_of(self, slot: int) -> int:
        return slot % self.num_workers

    def worker_slots(self, w: int) -> list[int]:
        """The slots host `w` holds."""
        return list(range(w, self.num_slots, self.num_workers))

    def forget_worker(self, w: int) -> str:
        """Mark host w's slots as needing a reset; return their description for the error message."""
        slots = self.worker_slots(w)
        desc = ", ".join(f"slot {s} (task {self._task[s]!r}, seed {self._seed[s]})" for s in slots)
        for s in slots:
            self._task[s], self._seed[s] = None, None
        return desc

    def by_worker(self, slots: Sequence[int]) -> dict[int, list[int]]:
        """Group `slots` by the host holding them (order kept within each host)."""
        groups: dict[int, list[int]] = {}
        for s in slots:
            groups.setdefault(self.worker_of(s), []).append(int(s))
        return groups

    def reset(self, slots: list[int], tasks: list[str], seeds: list[int]) -> list[Observation]:
        self._check_reset_args(slots, tasks, seeds)
        self._check_slots(slots)
        items: dict[int, list[tuple[int, str, int]]] = {}
        for s, task, seed in zip(slots, tasks, seeds):
            items.setdefault(self.worker_of(s), []).append((int(s), task, int(seed)))
            self._task[s], self._seed[s] = task, int(seed)  # named in crash reports during the reset
        try:
            got = self.call_workers({w: ("reset", (it,)) for w, it in items.items()}, "reset")
        except BaseException:
            for s in slots:
                self._task[s] = None
            raise
        merged = {s: o for d in got.values() for s, o in d.items()}
        return [merged[s] for s in slots]

    def run_chunks(
        self, actions: dict[int, np.ndarray], stop_on_success: bool = True, observe: bool = True
    ) -> dict[int, ChunkResult]:
        self._check_reset(list(actions))
        actions = check_action_chunks(actions, self.spec)
        groups = self.by_worker(list(actions))
        msgs = {
            w: ("run_chunks", ({s: actions[s] for s in ss}, stop_on_success, observe))
            for w, ss in groups.items()
        }
        got = self.call_workers(msgs, "run_chunks")
        merged = {s: r for d in got.values() for s, r in d.items()}
        return {s: merged[s] for s in actions}

    def observe(self, slots: list[int]) -> list[Observation]:
        self._check_reset(slots)
        got = self.call_workers({w: ("observe", (ss,)) for w, ss in self.by_worker(slots).items()}, "observe")
        merged = {s: o for d in got.values() for s, o in d.items()}
        return [merged[s] for s in slots]

    def expert_actions(self, slots: list[int]) -> list[np.ndarray]:
        self._check_reset(slots)
        msgs = {w: ("expert_actions", (ss,)) for w, ss in self.by_worker(slots).items()}
        got = self.call_workers(msgs, "expert")
        merged = {s: a for d in got.values() for s, a in d.items()}
        return [merged[s] for s in slots]

    def snapshot(self, slot: int) -> Any:
        self._check_reset([slot])
        w = self.worker_of(slot)
        return self.call_workers({w: ("snapshot", (slot,))}, "snapshot")[w]

    def restore(self, slot: int, snap: Any) -> Observation:
        self._check_reset([slot])
        w = self.worker_of(slot)
        return self.call_workers({w: ("restore", (slot, snap))}, "restore")[w]

    def _clone_into(
        self, items: list[tuple[int, str, int]], snap: Any, observe: bool
    ) -> dict[int, Observation | None]:
        by_worker: dict[int, list[tuple[int, str, int]]] = {}
        for it in items:
            by_worker.setdefault(self.worker_of(it[0]), []).append(it)
        msgs = {w: ("clone_into", (its, snap, observe)) for w, its in by_worker.items()}
        got = self.call_workers(msgs, "clone")
        return {s: o for d in got.values() for s, o in d.items()}
