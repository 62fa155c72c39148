"""Env slots hosted by Ray actors: a `z1.envs.hosting.HostedVectorEnv`, like the process `VectorEnv`.

Slot s lives on actor s % num_actors; an actor owns several slots (`SlotEnvs`, the same code a worker
process runs) and steps them in its own process, on this machine or another node of the cluster. Every
batched operation issues one remote call per involved actor and then gathers them with one `ray.get` on
the list, so the actors run in parallel; observations come back in batches, one reply per actor. Cloning
across actors: the source actor's snapshot (small, picklable) is passed to the destination actors.

Actors set one BLAS/OpenMP thread and the MuJoCo GL backend before importing anything heavy (the
variables also go into the actor's `runtime_env`, so they hold from process start).

Inference in the actors (`--rollout.inference actors`, `z1.distributed.ray_policy`): `sync_policy` pushes
the learner's policy (then only its changed tensors) to every actor; inside `holding_observations()` the
env commands leave each slot's observation in its actor, and `act_and_step` has every actor compute the
chunks of its slots and step them, returning the records instead of observations.

Fault tolerance: actors are created with `max_restarts`, so Ray restarts one that dies, and with
unlimited task retries, so a call that was in flight (or issued while the actor restarts) waits for the
new incarnation. Each incarnation carries an id and every call names the id it expects: the restarted
actor refuses calls meant for its predecessor (nothing runs on its fresh, un-reset envs), and the caller
raises `EnvWorkerError` naming the lost slots (task, seed); those slots must be reset again (the
collector re-runs the wave). An actor Ray will not bring back (restarts used up, killed for good, its
node lost, killed by Ray's memory monitor) fails its calls with `RayActorError` or `OutOfMemoryError`: it
is replaced by a new actor, with the same error.
`restarts` counts the restarts and replacements seen, so a run can log it. A call with no reply within
`call_timeout` seconds (a hung simulator, an overloaded node) is treated the same way: the actor is killed
and replaced, and the caller gets an `EnvWorkerError` naming the actor, the command and the timeout.
"""

from __future__ import annotations

import contextlib
import copy
import os
import socket
import time
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from z1.distributed.cluster import RayUnavailableError, require_ray
from z1.envs.base import EnvError
from z1.envs.hosting import WORKER_ENV_VARS, EnvWorkerError, HostedVectorEnv, SlotEnvs, worker_process_setup
from z1.types import EnvSpec

if TYPE_CHECKING:
    from z1.config import SamplerConfig
    from z1.distributed.ray_policy import ActorStep, PolicySlots, WeightVersions
    from z1.rollout.runner import PolicyRunner

POLICY = "policy:"  # command prefix: run on the actor's `PolicySlots` (observations kept in the actor)
HELD_COMMANDS = frozenset({"reset", "snapshot", "restore", "clone_into", "run_chunks", "observe"})
"""Env commands that leave the observations in the actor while `holding_observations()` is active."""


class SlotActor:
    """The body of one env actor (wrapped by `ray.remote` in `RayVectorEnv`)."""

    def __init__(self, suite: str, slots: list[int], env_kwargs: dict[str, Any], gl: str | None) -> None:
        worker_process_setup(gl)
        if gl is None and env_kwargs.get("render", True):
            from z1.envs.render import select_gl_backend

            select_gl_backend()  # probe this node's GL backends before mujoco is imported
        self.incarnation = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"
        self.slots = SlotEnvs(suite, slots, env_kwargs)
        self.policy: PolicySlots | None = None  # created by the first policy command (imports torch)

    def hello(self) -> tuple[str, EnvSpec, int]:
        return self.incarnation, self.slots.spec(), os.getpid()

    def call(self, expect: str | None, cmd: str, args: tuple) -> tuple[str, bool, Any]:
        """Run `SlotEnvs.<cmd>(*args)` (`PolicySlots.<name>(*args)` for cmd "policy:<name>") unless this is
        not the incarnation the caller expects (a restart the caller has not seen): then nothing runs.
        Returns (incarnation, ran, value)."""
        if expect is not None and expect != self.incarnation:
            return self.incarnation, False, None
        if cmd == "_sleep_for_test":  # for tests: a call that hangs
            time.sleep(float(args[0]))
            return self.incarnation, True, None
        if cmd.startswith(POLICY):
            if self.policy is None:
                from z1.distributed.ray_policy import PolicySlots

                self.policy = PolicySlots(self.slots)
            name = cmd[len(POLICY) :]
            if name == "load_policy":  # args: (ObjectRef of the payload,), shared by every actor
                import ray

                return self.incarnation, True, self.policy.load_policy(ray.get(args[0]))
            return self.incarnation, True, getattr(self.policy, name)(*copy.deepcopy(args))
        if self.policy is not None and cmd in HELD_COMMANDS:
            self.policy.forget()  # driven from the learner now: the kept observations go stale
        # Ray hands numpy arguments over read-only (zero-copy from the object store), and simulators
        # write into them (mj_setState wants a writable state array): give the envs private copies.
        return self.incarnation, True, getattr(self.slots, cmd)(*copy.deepcopy(args))

    def ping(self) -> int:
        """A no-op round trip (to measure the per-call overhead)."""
        return 0

    def close(self) -> None:
        self.slots.close()


def _kill_actors(ray: Any, actors: list[Any]) -> None:
    if not ray.is_initialized():  # the cluster is gone already (interpreter exit)
        return
    with contextlib.suppress(Exception):  # a dead or hung actor is killed below anyway
        ray.get([a.close.remote() for a in actors], timeout=30)
    for a in actors:
        with contextlib.suppress(Exception):  # already dead
            ray.kill(a, no_restart=True)


class RayVectorEnv(HostedVectorEnv):
    """`num_slots` env slots on `num_actors` Ray actors (default: one per CPU of the cluster).

    Needs a Ray connection (`z1.distributed.start_ray`). `cpus_per_actor` is the Ray CPU reservation
    of an actor; `max_restarts` how often Ray restarts a dead actor before z1 replaces it (small, so that
    an actor killed over and over, e.g. by Ray's memory monitor on a full machine, surfaces as an error
    within a few restarts instead of a call waiting through all of them); `start_timeout` bounds the
    wait for the actors to be scheduled and to build their envs; `call_timeout` the wait for any later
    call (an actor that does not answer in time is replaced, and the call raises `EnvWorkerError`).
    """

    def __init__(
        self,
        suite: str,
        num_slots: int,
        num_actors: int | None = None,
        env_kwargs: dict | None = None,
        *,
        cpus_per_actor: float = 1.0,
        max_restarts: int = 3,
        start_timeout: float = 600.0,
        call_timeout: float = 600.0,
    ) -> None:
        ray = require_ray()
        if not ray.is_initialized():
            raise RayUnavailableError(
                "RayVectorEnv needs a Ray connection: call z1.distributed.start_ray('local' | 'auto') first "
                "(the CLI does it for --ray)"
            )
        if call_timeout <= 0:
            raise ValueError(f"call_timeout must be positive, got {call_timeout}")
        self._ray = ray
        self.call_timeout = call_timeout
        self._init_slots(num_slots)
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        if num_actors is None:
            num_actors = max(1, int(cpus // cpus_per_actor))
        if num_actors <= 0:
            raise ValueError(f"num_actors must be >= 1, got {num_actors}")
        if cpus_per_actor * min(num_actors, num_slots) > cpus:
            raise EnvError(
                f"{min(num_actors, num_slots)} env actors x {cpus_per_actor} CPUs do not fit the Ray "
                f"cluster's {cpus:g} CPUs; use fewer actors (--workers) or a smaller cpus_per_actor"
            )
        self.num_workers = min(num_actors, num_slots)
        self.max_restarts = max_restarts
        env_kwargs = dict(env_kwargs or {})
        gl = os.environ.get("MUJOCO_GL")
        env_vars = {**WORKER_ENV_VARS, "OMP_WAIT_POLICY": "PASSIVE"}
        if gl:
            env_vars.update(MUJOCO_GL=gl, PYOPENGL_PLATFORM=gl)
        actor_cls = ray.remote(SlotActor).options(
            num_cpus=cpus_per_actor,
            max_restarts=max_restarts,
            max_task_retries=-1,  # re-sent to the restarted actor, which refuses it (incarnation check)
            runtime_env={"env_vars": env_vars},
        )
        self._new_actor = lambda a: actor_cls.remote(suite, self.worker_slots(a), env_kwargs, gl)
        self._actors = [self._new_actor(a) for a in range(self.num_workers)]
        self._finalizer = weakref.finalize(self, _kill_actors, ray, self._actors)  # sees replacements
        self._incarnation: list[str | None] = [None] * self.num_workers
        self._stale = [False] * self.num_workers  # lost an actor: accept (and adopt) its next incarnation
        self._holding = False
        self._weights: WeightVersions | None = None
        self._policy_version: list[int | None] = [None] * self.num_workers  # weights each actor holds
        try:
            hellos = ray.get([a.hello.remote() for a in self._actors], timeout=start_timeout)
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise EnvError(
                f"the {self.num_workers} env actors did not start within {start_timeout:.0f} s (cluster: "
                f"{ray.cluster_resources()}); are other jobs holding the CPUs?"
            ) from None
        except Exception as e:
            self.close()
            raise EnvError(f"env actors for suite {suite!r} failed to start: {e}") from e
        for a, (inc, _, _) in enumerate(hellos):
            self._incarnation[a] = inc
        self.spec = hellos[0][1]

    @property
    def actors(self) -> list[Any]:
        """The actor handles (actor a hosts slots a, a + num_actors, ...)."""
        return list(self._actors)

    @property
    def num_actors(self) -> int:
        return self.num_workers

    def pids(self) -> list[int]:
        return [
            h[2] for h in self._ray.get([a.hello.remote() for a in self._actors], timeout=self.call_timeout)
        ]

    def ping(self) -> None:
        """One no-op call on every actor, gathered (the floor of a batched operation's cost)."""
        self._ray.get([a.ping.remote() for a in self._actors], timeout=self.call_timeout)

    # ------------------------------------------------------------ policy inference in the actors

    @contextlib.contextmanager
    def holding_observations(self) -> Iterator[None]:
        """While active, reset / snapshot / restore / clone / run_chunks / observe leave each slot's
        observation in its actor (they return None in its place; a snapshot carries its slot's observation
        along to the clones) for `act_and_step`. Outside, the actors drop what they kept."""
        before, self._holding = self._holding, True
        try:
            yield
        finally:
            self._holding = before

    def sync_policy(self, runner: PolicyRunner) -> int:
        """Bring every actor's policy copy to `runner`'s current weights: an actor holding none (new,
        restarted, replaced) gets the whole policy, one holding an older version the tensors written since;
        each payload is put into the object store once. Returns the number of actors sent a payload."""
        from z1.distributed.ray_policy import WeightVersions

        if self._weights is None:
            self._weights = WeightVersions()
        version = self._weights.update(runner)
        payloads: dict[int | None, Any] = {}
        msgs: dict[int, tuple[str, tuple]] = {}
        for w in range(self.num_workers):
            held = self._policy_version[w]
            if held == version:
                continue
            base = self._weights.delta_base(held)
            if base not in payloads:
                payloads[base] = self._ray.put(self._weights.payload(runner, base))
            msgs[w] = (POLICY + "load_policy", (payloads[base],))
            self._policy_version[w] = None  # until the actor confirms
        if msgs:
            for w, v in self.call_workers(msgs, "load_policy").items():
                self._policy_version[w] = v
        return len(msgs)

    def act_and_step(
        self,
        rows: dict[int, tuple[int, int]],
        cfg: SamplerConfig,
        share_prefix: bool,
        keep_caches: bool,
        stop_on_success: bool = True,
    ) -> list[ActorStep]:
        """rows: slot -> (noise seed, actions to execute). Every involved actor acts on its slots' kept
        observations (`holding_observations`) with those per-row seeds, executes the chunks and keeps the
        new observations; one `ActorStep` per actor (in actor order), rows in ascending slot order."""
        self._check_reset(list(rows))
        msgs = {
            w: (
                POLICY + "act_step",
                ([(s, *rows[s]) for s in ss], cfg, share_prefix, keep_caches, stop_on_success),
            )
            for w, ss in self.by_worker(sorted(rows)).items()
        }
        got = self.call_workers(msgs, "act_step")
        return [got[w] for w in sorted(got)]

    # ------------------------------------------------------------ calls

    def call_workers(self, per_worker: dict[int, tuple[str, tuple]], what: str) -> dict[int, Any]:
        ray = self._ray
        hold = self._holding
        refs = {
            w: self._actors[w].call.remote(
                None if self._stale[w] else self._incarnation[w],
                POLICY + cmd if hold and cmd in HELD_COMMANDS else cmd,
                args,
            )
            for w, (cmd, args) in per_worker.items()
        }
        replies: dict[int, tuple[str, bool, Any]] = {}
        errors: list[BaseException] = []
        deadline = time.monotonic() + self.call_timeout
        try:
            replies = dict(zip(refs, ray.get(list(refs.values()), timeout=self.call_timeout)))
        except Exception:  # sort out which actors failed, and how
            for w, ref in refs.items():
                try:
                    replies[w] = ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
                except ray.exceptions.GetTimeoutError:  # hung or overloaded: kill it, start a new one
                    cmd = per_worker[w][0]
                    cause = f"no reply to {cmd!r} within the call timeout of {self.call_timeout:g} s"
                    errors.append(self._lost(w, what, cause, "It was replaced"))
                    self._replace(w)
                except (ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError) as e:
                    # gone for good (restarts used up, killed, node lost, memory monitor): replace it
                    errors.append(self._lost(w, what, f"{type(e).__name__}: {str(e).splitlines()[0]}"))
                    self._replace(w)
                except Exception as e:  # an error raised by the env itself (EnvError, ...)
                    errors.append(e)
        out: dict[int, Any] = {}
        for w, (inc, ran, value) in replies.items():
            self._adopt(w, inc)
            if ran:
                out[w] = value
            else:
                errors.append(self._lost(w, what, "it was restarted since the last call"))
        if errors:
            raise errors[0]
        return out

    def _replace(self, w: int) -> None:
        with contextlib.suppress(Exception):
            self._ray.kill(self._actors[w], no_restart=True)
        self._actors[w] = self._new_actor(w)

    def _adopt(self, w: int, incarnation: str) -> None:
        old = self._incarnation[w]
        if old is not None and incarnation != old:
            self.restarts += 1
            self._policy_version[w] = None
        self._incarnation[w] = incarnation
        self._stale[w] = False

    def _lost(self, w: int, what: str, cause: str, fate: str = "It was restarted") -> EnvWorkerError:
        desc = self.forget_worker(w)
        self._stale[w] = True
        self._policy_version[w] = None  # the new incarnation holds no policy
        return EnvWorkerError(
            f"env actor {w} failed during {what} ({cause}); it hosted {desc}. {fate}: reset those slots "
            "before using them again."
        )

    def close(self) -> None:
        self._finalizer()
