"""Many env slots stepped in parallel worker processes, with per-slot snapshot/restore.

Slot s lives in worker `s % num_workers`. One batched call costs one pipe round trip per worker: the
parent sends every worker its share first, then collects, so workers run in parallel. A worker runs
all its slots' chunks and renders each slot once at the end of its chunk.

Workers are started with the 'spawn' context (never fork a process that may hold torch/OpenMP threads),
set OMP/MKL threads to 1 and `MUJOCO_GL` before importing anything heavy, and exit when the parent's
pipe closes (so a killed parent leaves no orphans). A worker that dies raises `EnvWorkerError` naming
its slots with their task and seed; the worker is restarted and those slots must be reset again.
`InProcessVectorEnv` has the same interface and runs the slots one after another in this process.
The slot logic both share, and that `z1.distributed.RayVectorEnv` hosts on Ray actors, is
`z1.envs.hosting` (`VectorEnv` is its `HostedVectorEnv` over pipes).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import traceback
import weakref
from typing import Any

import numpy as np

from z1.envs.base import EnvError, check_action_chunks
from z1.envs.hosting import EnvWorkerError, HostedVectorEnv, SlotEnvs, VectorEnvBase, worker_process_setup
from z1.types import ChunkResult, EnvSpec, Observation

__all__ = ["EnvWorkerError", "InProcessVectorEnv", "VectorEnv"]


class InProcessVectorEnv(VectorEnvBase):
    """The `VectorEnv` interface with every slot in this process, stepped one after another."""

    def __init__(self, suite: str, num_slots: int, env_kwargs: dict | None = None) -> None:
        self._init_slots(num_slots)
        self._slots = SlotEnvs(suite, list(range(num_slots)), dict(env_kwargs or {}))
        self.spec = self._slots.spec()

    def reset(self, slots: list[int], tasks: list[str], seeds: list[int]) -> list[Observation]:
        self._check_reset_args(slots, tasks, seeds)
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
        return self._slots.run_chunks(check_action_chunks(actions, self.spec), stop_on_success, observe)

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


# ---------------------------------------------------------------- worker processes


def _worker_main(conn: Any, suite: str, slots: list[int], env_kwargs: dict[str, Any], gl: str | None) -> None:
    worker_process_setup(gl)
    try:
        host = SlotEnvs(suite, slots, env_kwargs)
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


class VectorEnv(HostedVectorEnv):
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
            args=(child, self._suite, self.worker_slots(w), self._env_kwargs, self._gl),
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
        desc = self.forget_worker(w)
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

    def call_workers(self, per_worker: dict[int, tuple[str, tuple]], what: str) -> dict[int, Any]:
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
