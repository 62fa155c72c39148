"""Many env slots stepped in parallel worker processes, with per-slot snapshot/restore.

Slot s lives in worker `s % num_workers`. One batched call costs one pipe round trip per worker: the
parent sends every worker its share first, then collects, so workers run in parallel. A worker runs
all its slots' chunks and renders each slot once at the end of its chunk.

Workers are started with the 'spawn' context (never fork a process that may hold torch/OpenMP threads),
set OMP/MKL threads to 1 and `MUJOCO_GL` before importing anything heavy, and exit when the parent's
pipe closes (so a killed parent leaves no orphans). A worker that dies raises `EnvWorkerError` naming
its slots with their task and seed; the worker is restarted and those slots must be reset again.
`InProcessVectorEnv` has the same interface and runs the slots one after another in this process;
`z1.distributed.RayVectorEnv` hosts the slots on Ray actors behind the same `_Hosted` logic.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import traceback
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from z1.envs.base import EnvError, run_chunk
from z1.types import ChunkResult, EnvSpec, Observation


class EnvWorkerError(RuntimeError):
    """An env worker process died; the message names the slots it hosted (task, seed)."""


# ---------------------------------------------------------------- slot logic shared by both hosts


class _Slots:
    """The envs of some slots and the operations on them (runs inside a worker or in-process)."""

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


def _check_actions(actions: dict[int, np.ndarray], spec: EnvSpec) -> dict[int, np.ndarray]:
    out = {}
    for s, a in actions.items():
        a = np.asarray(a, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != spec.action_dim or a.shape[0] == 0:
            raise EnvError(f"slot {s}: action chunk has shape {a.shape}, expected (n>0, {spec.action_dim})")
        if not np.all(np.isfinite(a)):
            raise EnvError(f"slot {s}: action chunk contains NaN or inf")
        out[s] = a
    return out


class _Base:
    """Slot bookkeeping common to both vector envs."""

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

    def _clone_into(
        self, items: list[tuple[int, str, int]], snap: Any, observe: bool
    ) -> dict[int, Observation | None]:
        raise NotImplementedError

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # provided by subclasses
    def snapshot(self, slot: int) -> Any:
        raise NotImplementedError

    def restore(self, slot: int, snap: Any) -> Observation:
        raise NotImplementedError

    def reset(self, slots: list[int], tasks: list[str], seeds: list[int]) -> list[Observation]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def _reset_args(num: int, slots: list[int], tasks: list[str], seeds: list[int]) -> None:
    if not (len(slots) == len(tasks) == len(seeds)):
        raise EnvError(
            f"reset: slots, tasks and seeds differ in length ({len(slots)}, {len(tasks)}, {len(seeds)})"
        )
    if len(set(slots)) != len(slots):
        raise EnvError(f"reset: repeated slots in {slots}")


class InProcessVectorEnv(_Base):
    """The `VectorEnv` interface with every slot in this process, stepped one after another."""

    def __init__(self, suite: str, num_slots: int, env_kwargs: dict | None = None) -> None:
        self._init_slots(num_slots)
        self._slots = _Slots(suite, list(range(num_slots)), dict(env_kwargs or {}))
        self.spec = self._slots.spec()

    def reset(self, slots: list[int], tasks: list[str], seeds: list[int]) -> list[Observation]:
        _reset_args(self.num_slots, slots, tasks, seeds)
        self._check_slots(slots)
        out = []
        for s, task, seed in zip(slots, tasks, seeds):
            self._task[s] = None
            out.append(self._slots.reset([(s, task, seed)])[s])
            self._task[s], self._seed[s] = task, int(seed)
        return out

    def run_chunks(
        self, actions: dict[int, np.ndarray], stop_on_success: bool = True, observe: bool = True
    ) -> dict[int, ChunkResult]:
        self._check_reset(list(actions))
        return self._slots.run_chunks(_check_actions(actions, self.spec), stop_on_success, observe)

    def observe(self, slots: list[int]) -> list[Observation]:
        self._check_reset(slots)
        got = self._slots.observe(slots)
        return [got[s] for s in slots]

    def snapshot(self, slot: int) -> Any:
        self._check_reset([slot])
        return self._slots.snapshot(slot)

    def restore(self, slot: int, snap: Any) -> Observation:
        self._check_reset([slot])
        return self._slots.restore(slot, snap)

    def expert_actions(self, slots: list[int]) -> list[np.ndarray]:
        self._check_reset(slots)
        got = self._slots.expert_actions(slots)
        return [got[s] for s in slots]

    def _clone_into(
        self, items: list[tuple[int, str, int]], snap: Any, observe: bool
    ) -> dict[int, Observation | None]:
        return self._slots.clone_into(items, snap, observe)

    def close(self) -> None:
        self._slots.close()


class _Hosted(_Base):
    """Slots spread over `num_workers` hosts (worker processes or Ray actors); slot s on host
    s % num_workers. Every batched operation makes one `_call` with each involved host's share: a host
    implementation sends all of them first and then gathers, so the hosts run in parallel."""

    num_workers: int

    def _call(self, per_worker: dict[int, tuple[str, tuple]], what: str) -> dict[int, Any]:
        """Run `getattr(_Slots, cmd)(*args)` on every host of `per_worker`; raise the first failure."""
        raise NotImplementedError

    def worker_of(self, slot: int) -> int:
        return slot % self.num_workers

    def _worker_slots(self, w: int) -> list[int]:
        return list(range(w, self.num_slots, self.num_workers))

    def _forget_worker(self, w: int) -> str:
        """Mark host w's slots as needing a reset; return their description for the error message."""
        slots = self._worker_slots(w)
        desc = ", ".join(f"slot {s} (task {self._task[s]!r}, seed {self._seed[s]})" for s in slots)
        for s in slots:
            self._task[s], self._seed[s] = None, None
        return desc

    def _by_worker(self, slots: Sequence[int]) -> dict[int, list[int]]:
        groups: dict[int, list[int]] = {}
        for s in slots:
            groups.setdefault(self.worker_of(s), []).append(int(s))
        return groups

    def reset(self, slots: list[int], tasks: list[str], seeds: list[int]) -> list[Observation]:
        _reset_args(self.num_slots, slots, tasks, seeds)
        self._check_slots(slots)
        items: dict[int, list[tuple[int, str, int]]] = {}
        for s, task, seed in zip(slots, tasks, seeds):
            items.setdefault(self.worker_of(s), []).append((int(s), task, int(seed)))
            self._task[s], self._seed[s] = task, int(seed)  # named in crash reports during the reset
        try:
            got = self._call({w: ("reset", (it,)) for w, it in items.items()}, "reset")
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
        actions = _check_actions(actions, self.spec)
        groups = self._by_worker(list(actions))
        msgs = {
            w: ("run_chunks", ({s: actions[s] for s in ss}, stop_on_success, observe))
            for w, ss in groups.items()
        }
        got = self._call(msgs, "run_chunks")
        merged = {s: r for d in got.values() for s, r in d.items()}
        return {s: merged[s] for s in actions}

    def observe(self, slots: list[int]) -> list[Observation]:
        self._check_reset(slots)
        got = self._call({w: ("observe", (ss,)) for w, ss in self._by_worker(slots).items()}, "observe")
        merged = {s: o for d in got.values() for s, o in d.items()}
        return [merged[s] for s in slots]

    def expert_actions(self, slots: list[int]) -> list[np.ndarray]:
        self._check_reset(slots)
        got = self._call({w: ("expert_actions", (ss,)) for w, ss in self._by_worker(slots).items()}, "expert")
        merged = {s: a for d in got.values() for s, a in d.items()}
        return [merged[s] for s in slots]

    def snapshot(self, slot: int) -> Any:
        self._check_reset([slot])
        w = self.worker_of(slot)
        return self._call({w: ("snapshot", (slot,))}, "snapshot")[w]

    def restore(self, slot: int, snap: Any) -> Observation:
        self._check_reset([slot])
        w = self.worker_of(slot)
        return self._call({w: ("restore", (slot, snap))}, "restore")[w]

    def _clone_into(
        self, items: list[tuple[int, str, int]], snap: Any, observe: bool
    ) -> dict[int, Observation | None]:
        by_worker: dict[int, list[tuple[int, str, int]]] = {}
        for it in items:
            by_worker.setdefault(self.worker_of(it[0]), []).append(it)
        got = self._call({w: ("clone_into", (its, snap, observe)) for w, its in by_worker.items()}, "clone")
        return {s: o for d in got.values() for s, o in d.items()}


# ---------------------------------------------------------------- worker processes


WORKER_ENV_VARS = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}


def worker_process_setup(gl: str | None) -> None:
    """Process-wide settings of an env host (worker process or Ray actor): one thread per BLAS/OpenMP
    pool and the MuJoCo GL backend. Call it before anything heavy (mujoco, torch) is imported."""
    os.environ.update(WORKER_ENV_VARS)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if gl:
        os.environ["MUJOCO_GL"] = gl
        os.environ["PYOPENGL_PLATFORM"] = gl
    import sys

    if "torch" in sys.modules:  # only if something imported it; never import torch just for this
        sys.modules["torch"].set_num_threads(1)


def _worker_main(conn: Any, suite: str, slots: list[int], env_kwargs: dict[str, Any], gl: str | None) -> None:
    worker_process_setup(gl)
    try:
        host = _Slots(suite, slots, env_kwargs)
        conn.send(("ok", host.spec()))
    except BaseException as e:  # report start-up failures to the parent
        conn.send(("err", e, traceback.format_exc()))
        return
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the parent is gone: exit, no orphans
            break
        cmd, args = msg
        if cmd == "close":
            host.close()
            conn.send(("ok", None))
            break
        if cmd == "_crash":  # for tests: die like a segfaulting simulator
            os._exit(3)
        try:
            conn.send(("ok", getattr(host, cmd)(*args)))
        except BaseException as e:
            try:
                conn.send(("err", e, traceback.format_exc()))
            except Exception:  # unpicklable exception
                conn.send(("err", RuntimeError(repr(e)), traceback.format_exc()))


def _shutdown(procs: list[Any], conns: list[Any]) -> None:
    for conn in conns:
        with contextlib.suppress(Exception):  # already dead
            conn.send(("close", ()))
    for p, conn in zip(procs, conns):
        if p is None:  # never started (an earlier worker failed to start)
            continue
        try:
            if conn.poll(10):
                conn.recv()
        except Exception:  # a dead worker closes its end
            pass
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
            p.join(timeout=5)
        conn.close()


class VectorEnv(_Hosted):
    """`num_slots` env slots spread over `num_workers` processes (default: min(slots, cpu count))."""

    def __init__(
        self,
        suite: str,
        num_slots: int,
        num_workers: int | None = None,
        env_kwargs: dict | None = None,
    ) -> None:
        self._init_slots(num_slots)
        if num_workers is None:
            num_workers = min(num_slots, os.cpu_count() or 1)
        if num_workers <= 0:
            raise ValueError("num_workers must be >= 1 (use InProcessVectorEnv for in-process slots)")
        self.num_workers = min(num_workers, num_slots)
        self._suite = suite
        self._env_kwargs = dict(env_kwargs or {})
        self._ctx = mp.get_context("spawn")
        self._gl = os.environ.get("MUJOCO_GL")
        if self._gl is None and self._env_kwargs.get("render", True):
            from z1.envs.render import select_gl_backend

            self._gl = select_gl_backend()
        self._procs: list[Any] = [None] * self.num_workers
        self._conns: list[Any] = [None] * self.num_workers
        self._finalizer = weakref.finalize(self, _shutdown, self._procs, self._conns)
        specs = [self._start(w) for w in range(self.num_workers)]
        self.spec = specs[0]

    def _start(self, w: int) -> EnvSpec:
        parent, child = self._ctx.Pipe()
        p = self._ctx.Process(
            target=_worker_main,
            args=(child, self._suite, self._worker_slots(w), self._env_kwargs, self._gl),
            daemon=True,
            name=f"z1-env-worker-{w}",
        )
        p.start()
        child.close()
        self._procs[w], self._conns[w] = p, parent
        status, *rest = self._recv(w, what="start")
        if status == "err":
            raise EnvError(f"env worker {w} failed to start: {rest[0]!r}\n{rest[1]}")
        return rest[0]

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def _crashed(self, w: int, what: str) -> EnvWorkerError:
        p = self._procs[w]
        p.join(timeout=5)
        code = p.exitcode
        desc = self._forget_worker(w)
        with contextlib.suppress(Exception):  # already closed
            self._conns[w].close()
        self._start(w)
        self.restarts += 1
        return EnvWorkerError(
            f"env worker {w} (pid {p.pid}) died during {what} with exit code {code}; it hosted {desc}. "
            "The worker was restarted: reset those slots before using them again."
        )

    def _send(self, w: int, msg: tuple, what: str) -> EnvWorkerError | None:
        try:
            self._conns[w].send(msg)
        except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
            return self._crashed(w, what)
        return None

    def _recv(self, w: int, what: str) -> tuple:
        conn, p = self._conns[w], self._procs[w]
        if what == "start":  # no restart loop for a worker that cannot start
            try:
                return conn.recv()
            except (EOFError, ConnectionResetError, OSError):
                p.join(timeout=5)
                raise EnvWorkerError(f"env worker {w} died while starting (exit code {p.exitcode})") from None
        while True:
            try:
                if conn.poll(1.0):
                    return conn.recv()
            except (EOFError, ConnectionResetError, OSError):
                raise self._crashed(w, what) from None
            if not p.is_alive() and not conn.poll(0):
                raise self._crashed(w, what)

    def _call(self, per_worker: dict[int, tuple[str, tuple]], what: str) -> dict[int, Any]:
        """Send each worker its command, then collect every reply; raise the first failure."""
        errors: list[BaseException] = []
        sent = []
        for w, msg in per_worker.items():
            err = self._send(w, msg, what)
            if err is None:
                sent.append(w)
            else:
                errors.append(err)
        out: dict[int, Any] = {}
        for w in sent:
            try:
                reply = self._recv(w, what)
            except EnvWorkerError as e:
                errors.append(e)
                continue
            if reply[0] == "ok":
                out[w] = reply[1]
            else:
                errors.append(reply[1])
        if errors:
            raise errors[0]
        return out

    def _crash_worker_for_test(self, w: int) -> None:
        self._conns[w].send(("_crash", ()))
        self._procs[w].join(timeout=10)

    def close(self) -> None:
        self._finalizer()
