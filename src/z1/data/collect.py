"""Scripted-expert demonstration collection into a LeRobotDataset v3.0.

Per episode: reset(task, seed); at each step the expert's clean action a_t is the label, the env executes
clip(a_t + N(0, noise^2)) (noise 0.1 by default; the measured expert reliability at that noise is in
docs/environments.md#scripted-experts), and the observation (all cameras + state) is rendered every step,
because SFT samples a chunk start at any frame. The episode is cut `extra_steps_after_success` steps after
the first success; an episode that never succeeds within the env's step limit is dropped and counted, and
another seed of that task is tried (at most `max_attempts_per_episode` seeds per requested episode).

Seeds: task episode k uses env seed `seed + k` (k = 0, 1, ... counting dropped attempts) and a noise RNG
seeded from (seed, task name, k), so a collection is reproducible whatever the number of workers; episodes
are written in (round, task, k) order.

Workers: `workers` processes (spawn), each with one env reused across episodes and one thread for
OpenMP/BLAS/torch; `workers=0` runs in this process. A plain job queue rather than `z1.envs.vector`: whole
episodes are independent, so nothing needs lock-step stepping. Measured (2 shared cores, load ~7 from other
jobs): 53 ms per step with two 64x64 cameras rendered in-process; 324 frames (4 episodes) in 40 s with 1 or
2 workers, i.e. ~2.5-5 s per 60-100-step episode. The output directory appears only when complete
(`LeRobotWriter`); an error or Ctrl-C leaves nothing at `out_root`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import sys
import time
import traceback
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from z1.data.errors import DatasetError
from z1.data.lerobot_video import DEFAULT_VIDEO_CODEC
from z1.data.lerobot_write import LeRobotWriter, make_features

DEFAULT_EXTRA_STEPS = 5


@dataclass(frozen=True)
class EpisodeJob:
    job_id: int
    task: str
    attempt: int  # k: the task's k-th seed
    env_seed: int
    noise_seed: tuple[int, int, int]


@dataclass(frozen=True)
class CollectSummary:
    out: str
    kept: dict[str, int]
    dropped: dict[str, int]
    frames: int
    seconds: float
    bytes: int
    render_ms_per_frame: float  # wall time per recorded frame in the workers (physics + render + expert)
    shortfall: dict[str, int] = field(default_factory=dict)  # tasks that got fewer episodes than asked

    def __rich__(self) -> str:
        return str(self)

    def __str__(self) -> str:
        lines = [f"collected {sum(self.kept.values())} episodes, {self.frames} frames -> {self.out}"]
        lines.append(f"{'task':<32} {'kept':>5} {'dropped':>8}")
        for t in self.kept:
            lines.append(f"{t:<32} {self.kept[t]:>5} {self.dropped.get(t, 0):>8}")
        lines.append(
            f"{self.seconds:.1f} s, {self.bytes / 1e6:.2f} MB, "
            f"{self.render_ms_per_frame:.1f} ms per frame per worker"
        )
        if self.shortfall:
            lines.append(f"WARNING: too few successful episodes for {self.shortfall}")
        return "\n".join(lines)


def _noise_seed(seed: int, task: str, k: int) -> tuple[int, int, int]:
    return (int(seed), zlib.crc32(task.encode()), int(k))


def run_episode(
    env: Any, task: str, env_seed: int, noise: float, noise_seed: Sequence[int], extra_steps: int
) -> dict[str, Any]:
    """One noisy expert episode. Returns {"ok", "frames" (feature -> (e, ...)), "success_step", "steps",
    "seconds"}; frames are cut `extra_steps` after the first success (absent when not ok)."""
    t0 = time.perf_counter()
    spec = env.spec
    low, high = np.asarray(spec.action_low), np.asarray(spec.action_high)
    rng = np.random.default_rng(list(noise_seed))
    obs = env.reset(task, env_seed)
    states: list[np.ndarray] = []
    actions: list[np.ndarray] = []
    images: dict[str, list[np.ndarray]] = {c: [] for c in spec.cameras}
    success_t = -1
    for t in range(spec.max_steps):
        a = np.asarray(env.expert_action(), np.float64)  # (d,) clean label
        states.append(np.asarray(obs.state, np.float32))
        actions.append(a.astype(np.float32))
        for c in spec.cameras:
            images[c].append(obs.images[c])
        last = success_t >= 0 and t >= success_t + extra_steps
        noisy = np.clip(a + rng.normal(0.0, noise, a.shape), low, high) if noise > 0 else a
        r = env.step(noisy, observe=not last)
        if r.success and success_t < 0:
            success_t = t
        if last or (success_t >= 0 and extra_steps == 0):
            break
        if r.done:
            break
        obs = r.observation
    steps = len(actions)
    out: dict[str, Any] = {"ok": success_t >= 0, "success_step": success_t, "steps": steps}
    if success_t >= 0:
        frames = {"observation.state": np.stack(states), "action": np.stack(actions)}
        for c in spec.cameras:
            frames[f"observation.images.{c}"] = np.stack(images[c])
        out["frames"] = frames
    out["seconds"] = time.perf_counter() - t0
    return out


def _limit_threads() -> None:
    """Worker-process entry setting: one thread for OpenMP/BLAS/torch (simulators share 2 cores)."""
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[k] = "1"
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _make(suite: str, env_kw: dict[str, Any], env_factory: Callable[[], Any] | None):
    if env_factory is not None:
        return env_factory()
    from z1.envs.registry import make_env

    return make_env(suite, **env_kw)


def _worker_main(jobs, results, suite, env_kw, env_factory, noise, extra_steps) -> None:
    _limit_threads()
    env = None
    try:
        while True:
            job = jobs.get()
            if job is None:
                break
            try:
                if env is None:
                    env = _make(suite, env_kw, env_factory)
                results.put(
                    (job.job_id, run_episode(env, job.task, job.env_seed, noise, job.noise_seed, extra_steps))
                )
            except BaseException:
                results.put((job.job_id, {"error": traceback.format_exc()}))
                break
    finally:
        if env is not None:
            env.close()


class _Pool:
    """`workers` spawn processes fed from a job queue, or in-process execution for workers == 0."""

    def __init__(self, workers, suite, env_kw, env_factory, noise, extra_steps) -> None:
        self.workers = workers
        self.args = (suite, env_kw, env_factory, noise, extra_steps)
        self.env = None
        self.procs: list[mp.process.BaseProcess] = []
        if workers > 0:
            ctx = mp.get_context("spawn")
            self.jobs, self.results = ctx.Queue(), ctx.Queue()
            for _ in range(workers):
                p = ctx.Process(target=_worker_main, args=(self.jobs, self.results, *self.args), daemon=True)
                p.start()
                self.procs.append(p)

    def run(self, jobs: list[EpisodeJob]):
        """Yield (job, result) in job order."""
        suite, env_kw, env_factory, noise, extra = self.args
        if self.workers == 0:
            for j in jobs:
                if self.env is None:
                    self.env = _make(suite, env_kw, env_factory)
                yield j, run_episode(self.env, j.task, j.env_seed, noise, j.noise_seed, extra)
            return
        for j in jobs:
            self.jobs.put(j)
        by_id = {j.job_id: j for j in jobs}
        buf: dict[int, dict[str, Any]] = {}
        order = [j.job_id for j in jobs]
        nxt = 0
        while nxt < len(order):
            try:
                jid, res = self.results.get(timeout=5.0)
            except queue.Empty:
                dead = [p for p in self.procs if not p.is_alive()]
                if dead:
                    raise RuntimeError(
                        f"collect: worker process died (exit code {dead[0].exitcode})"
                    ) from None
                continue
            if "error" in res:
                raise RuntimeError(f"collect: episode {by_id[jid]} failed in a worker:\n{res['error']}")
            buf[jid] = res
            while nxt < len(order) and order[nxt] in buf:
                yield by_id[order[nxt]], buf.pop(order[nxt])
                nxt += 1

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
        for _ in self.procs:
            self.jobs.put(None)
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join()


def _dir_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def collect(
    task_set_or_tasks: str | Sequence[str],
    episodes_per_task: int,
    out_root: str | os.PathLike,
    noise: float = 0.1,
    seed: int = 0,
    image_size: tuple[int, int] = (64, 64),
    workers: int = 2,
    extra_steps_after_success: int = DEFAULT_EXTRA_STEPS,
    suite: str | None = None,
    cameras: Sequence[str] | None = None,
    max_attempts_per_episode: int = 3,
    progress: bool = True,
    env_factory: Callable[[], Any] | None = None,
    video: bool = False,
    video_codec: str = DEFAULT_VIDEO_CODEC,
) -> CollectSummary:
    """Collect `episodes_per_task` successful noisy-expert episodes per task into `out_root` (see module doc).

    task_set_or_tasks: a task-set name ("mw-quick", "mt10", "mt50") or a list of task names.
    suite: the env suite; default: the task set's suite, else "metaworld".
    env_factory: build the env yourself (tests); it must be picklable when workers > 0.
    video: store the cameras as mp4 encoded with `video_codec` instead of PNG (lerobot_video.py: lossy,
    about a third of the PNG bytes at 64x64; see lerobot_write.py for the measured sizes).
    """
    t_start = time.perf_counter()
    out = Path(out_root)
    if out.exists():
        raise DatasetError(f"{out}: already exists; delete it or choose another output directory")
    if episodes_per_task < 1:
        raise DatasetError(f"collect: episodes_per_task must be >= 1, got {episodes_per_task}")
    if noise < 0:
        raise DatasetError(f"collect: noise must be >= 0, got {noise}")
    if isinstance(task_set_or_tasks, str):
        from z1.envs.registry import suite_of_task_set, task_set

        tasks = task_set(task_set_or_tasks)
        suite = suite or suite_of_task_set(task_set_or_tasks)
    else:
        tasks = list(task_set_or_tasks)
    if not tasks:
        raise DatasetError("collect: no tasks given")
    suite = suite or "metaworld"
    env_kw: dict[str, Any] = {"image_size": tuple(image_size)}
    if cameras is not None:
        env_kw["cameras"] = tuple(cameras)

    # The parent builds no simulator: it reads the spec and instructions from a render-free env.
    try:
        probe = _make(suite, {**env_kw, "render": False}, env_factory)
    except TypeError:  # an adapter without a `render` switch
        probe = _make(suite, env_kw, env_factory)
    try:
        spec = probe.spec
        instructions = {t: probe.instruction(t) for t in tasks}
    finally:
        probe.close()
    feats = make_features(spec.state_names, spec.action_names, spec.cameras, spec.image_size, video=video)

    kept = {t: 0 for t in tasks}
    dropped = {t: 0 for t in tasks}
    attempts = {t: 0 for t in tasks}
    frames = 0
    worker_seconds = 0.0
    worker_steps = 0
    next_id = 0

    def make_jobs(counts: dict[str, int]) -> list[EpisodeJob]:
        nonlocal next_id
        jobs = []
        for t in tasks:
            for _ in range(counts.get(t, 0)):
                k = attempts[t]
                attempts[t] += 1
                jobs.append(EpisodeJob(next_id, t, k, seed + k, _noise_seed(seed, t, k)))
                next_id += 1
        return jobs

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    total = episodes_per_task * len(tasks)
    bar = Progress(
        TextColumn("[bold]collect[/bold] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not progress,
    )
    pool = _Pool(workers, suite, env_kw, env_factory, noise, extra_steps_after_success)
    try:
        with (
            bar,
            LeRobotWriter(
                out, spec.control_hz, feats, robot_type=spec.suite, video_codec=video_codec
            ) as writer,
        ):
            bar_id = bar.add_task("", total=total)
            pending = make_jobs({t: episodes_per_task for t in tasks})
            while pending:
                for job, res in pool.run(pending):
                    worker_seconds += res["seconds"]
                    worker_steps += res["steps"]
                    frames_in_ep = res["steps"]
                    if res["ok"]:
                        writer.add_episode(res["frames"], instructions[job.task])
                        kept[job.task] += 1
                        frames += frames_in_ep
                        bar.advance(bar_id)
                    else:
                        dropped[job.task] += 1
                    bar.update(bar_id, description=f"{job.task} (dropped {sum(dropped.values())})")
                need = {
                    t: episodes_per_task - kept[t]
                    for t in tasks
                    if kept[t] < episodes_per_task
                    and attempts[t] < max_attempts_per_episode * episodes_per_task
                }
                pending = make_jobs(need)
            writer.add_meta_json(
                "z1_collect.json",
                {
                    "suite": suite,
                    "tasks": tasks,
                    "episodes_per_task": episodes_per_task,
                    "noise": noise,
                    "seed": seed,
                    "labels": "clean expert action; executed action = clip(label + N(0, noise^2))",
                    "extra_steps_after_success": extra_steps_after_success,
                    "kept": kept,
                    "dropped": dropped,
                    "env_seeds": f"task episode k uses env seed {seed} + k (k counts dropped attempts)",
                    "cameras": f"mp4 ({video_codec})" if video else "png",
                },
            )
    finally:
        pool.close()
    shortfall = {t: episodes_per_task - kept[t] for t in tasks if kept[t] < episodes_per_task}
    return CollectSummary(
        out=str(out),
        kept=kept,
        dropped=dropped,
        frames=frames,
        seconds=time.perf_counter() - t_start,
        bytes=_dir_bytes(out),
        render_ms_per_frame=1000.0 * worker_seconds / max(1, worker_steps),
        shortfall=shortfall,
    )
