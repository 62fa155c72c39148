"""Evaluation: N episodes per task at fixed seeds with the deterministic ODE sampler.

Episodes are spread over the env slots of a vector env; the policy is batched over all slots that
need an action. Success is latched (Meta-World's protocol: success at any step) and an episode stops
at its first success or at the time limit. Results are per-task success with a Wilson 95% interval
and the mean episode length, printed as a markdown table and written as JSON. Per-episode lengths and
success flags are stored in seed order with their seeds, so two evaluations at the same seeds can be
compared episode by episode (the report's paired intervals on a change in success).

When an env host dies (`EnvWorkerError`), the episodes in flight are dropped and run again from their
start; an episode's noise comes from its own seed, so the result is the undisturbed run's.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from z1.envs.vector import EnvWorkerError
from z1.errors import check_int
from z1.rollout.runner import PolicyRunner

EVAL_SEED_BASE = 100_000  # eval seeds never overlap demonstration (0..) or RL training seeds (10_000..)


@dataclass(frozen=True)
class EvalConfig:
    episodes_per_task: int = 50
    seed_base: int = EVAL_SEED_BASE
    num_steps: int = 10  # denoise steps K (ODE)
    max_steps: int | None = None  # cap on env steps per episode (default: the env's limit)
    videos_per_task: int = 0  # record the first N episodes of each task as frame lists
    # Keep the frames of the lowest-seed success and the lowest-seed failure of each task (`examples`):
    # a representative episode of each outcome for the report's videos and filmstrips.
    record_examples: bool = False

    def __post_init__(self) -> None:
        check_int(self.episodes_per_task, "--episodes", low=1)
        check_int(self.seed_base, "seed_base", low=0)
        check_int(self.num_steps, "--num-steps", low=1)
        if self.max_steps is not None:
            check_int(self.max_steps, "--max-steps", low=1)
        check_int(self.videos_per_task, "--videos", low=0)


@dataclass
class TaskResult:
    task: str
    episodes: int
    successes: int
    rate: float
    ci_low: float
    ci_high: float
    mean_length: float
    mean_success_length: float | None
    lengths: list[int] = field(default_factory=list)  # in seed order, as are the flags
    success_flags: list[bool] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)  # the eval seed of each episode


@dataclass
class Example:
    """A recorded episode kept as a representative of its outcome (`EvalConfig.record_examples`)."""

    seed: int
    success: bool
    length: int
    frames: list[np.ndarray]  # one (y, x, 3) uint8 frame per executed chunk, the reset frame first


@dataclass
class EvalResult:
    tasks: dict[str, TaskResult]
    average: float
    env_steps: int
    frames: dict[str, list[list[np.ndarray]]] = field(default_factory=dict)  # task -> episodes -> frames
    examples: dict[str, list[Example]] = field(default_factory=dict)  # task -> success first, then failure

    def to_json(self) -> dict:
        out = {
            "average": self.average,
            "env_steps": self.env_steps,
            "tasks": {k: asdict(v) for k, v in self.tasks.items()},
        }
        if self.examples:  # which episodes the filmstrips and videos show (frames are not JSON)
            out["examples"] = {
                t: [{"seed": e.seed, "success": e.success, "length": e.length} for e in eps]
                for t, eps in self.examples.items()
            }
        return out


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def evaluate(
    runner: PolicyRunner, venv, tasks: list[str], cfg: EvalConfig, progress=None, max_retries: int = 3
) -> EvalResult:
    """Run `cfg.episodes_per_task` episodes per task over the slots of `venv` (a VectorEnv); in-flight
    episodes are re-run when an env host dies, up to `max_retries` times in a row."""
    queue = deque((task, cfg.seed_base + i) for task in tasks for i in range(cfg.episodes_per_task))
    total = len(queue)
    max_steps = cfg.max_steps or runner.spec.max_steps
    sampler = runner.sampler("ode", cfg.num_steps)
    lengths: dict[str, list[int]] = {t: [] for t in tasks}
    flags: dict[str, list[bool]] = {t: [] for t in tasks}
    seeds: dict[str, list[int]] = {t: [] for t in tasks}
    frames: dict[str, list[list[np.ndarray]]] = {t: [] for t in tasks}
    examples: dict[str, dict[bool, Example]] = {t: {} for t in tasks}  # task -> outcome -> lowest seed
    active: dict[int, dict] = {}
    obs: dict[int, object] = {}
    env_steps = 0
    done_count = 0

    def start(slot: int) -> None:
        task, seed = queue.popleft()
        try:
            (ob,) = venv.reset([slot], [task], [seed])
        except EnvWorkerError:
            queue.appendleft((task, seed))
            raise
        record = cfg.videos_per_task > 0 and len(frames[task]) < cfg.videos_per_task
        # An episode can still become an example while some outcome has none of a lower seed; episodes
        # start in seed order, so recording stops once a task has both outcomes.
        keep = examples[task]
        want = cfg.record_examples and any(o not in keep or keep[o].seed > seed for o in (True, False))
        # The ODE is deterministic given its initial noise; each episode draws that noise from its own
        # generator, so results do not depend on which slot or batch the episode ran in.
        gen = torch.Generator().manual_seed(seed)
        ep = {"task": task, "seed": seed, "t": 0, "frames": [] if record else None, "gen": gen}
        ep["order"] = total - len(queue)  # position in the episode list
        ep["example"] = [_frame(ob)] if want else None
        if record:
            frames[task].append(ep["frames"])
            ep["frames"].append(_frame(ob))
        active[slot] = ep
        obs[slot] = ob

    def drop_in_flight() -> None:
        """Put the unfinished episodes back at the front of the queue, in the order they started."""
        for s in sorted(active, key=lambda s: active[s]["order"], reverse=True):
            ep = active.pop(s)
            queue.appendleft((ep["task"], ep["seed"]))
            if ep["frames"] is not None:
                frames[ep["task"]] = [f for f in frames[ep["task"]] if f is not ep["frames"]]

    failures = 0
    while True:
        try:
            for slot in range(venv.num_slots):  # a free slot takes the next queued episode
                if slot not in active and queue:
                    start(slot)
            if not active:
                break
            slots = sorted(active)
            h, a = runner.model.config.action_horizon, runner.model.config.action_dim
            noise = torch.stack([torch.randn((h, a), generator=active[s]["gen"]) for s in slots])  # (b, h, a)
            acted = runner.act([obs[s] for s in slots], sampler, noise=noise)
            results = venv.run_chunks(
                {
                    s: acted.env_actions[i][: max(1, min(runner.h_exec, max_steps - active[s]["t"]))]
                    for i, s in enumerate(slots)
                },
                stop_on_success=True,
                observe=True,
            )
        except EnvWorkerError as e:
            failures += 1
            if failures > max_retries:
                raise EnvWorkerError(
                    f"evaluation: env hosts died {failures} times in a row; last: {e}"
                ) from e
            drop_in_flight()
            continue
        failures = 0
        for s in slots:
            r = results[s]
            ep = active[s]
            ep["t"] += r.steps
            obs[s] = r.observation
            if r.observation is not None:
                for rec in (ep["frames"], ep["example"]):
                    if rec is not None:
                        rec.append(_frame(r.observation))
            if r.success or r.done or ep["t"] >= max_steps:
                lengths[ep["task"]].append(ep["t"])
                env_steps += ep["t"]  # finished episodes only (a re-run one counts once)
                flags[ep["task"]].append(bool(r.success))
                seeds[ep["task"]].append(ep["seed"])
                if ep["example"] is not None:
                    ok, keep = bool(r.success), examples[ep["task"]]
                    if ok not in keep or keep[ok].seed > ep["seed"]:
                        keep[ok] = Example(ep["seed"], ok, ep["t"], ep["example"])
                del active[s]
                done_count += 1
                if progress is not None:
                    progress(done_count, total)
    results_by_task: dict[str, TaskResult] = {}
    for t in tasks:
        order = np.argsort(seeds[t], kind="stable")  # seed order: independent of which slot ran what
        seeds[t] = [seeds[t][i] for i in order]
        flags[t] = [flags[t][i] for i in order]
        lengths[t] = [lengths[t][i] for i in order]
        n = len(flags[t])
        k = int(sum(flags[t]))
        lo, hi = wilson_interval(k, n)
        succ_lens = [ln for ln, f in zip(lengths[t], flags[t]) if f]
        results_by_task[t] = TaskResult(
            task=t,
            episodes=n,
            successes=k,
            rate=k / max(1, n),
            ci_low=lo,
            ci_high=hi,
            mean_length=float(np.mean(lengths[t])) if n else 0.0,
            mean_success_length=float(np.mean(succ_lens)) if succ_lens else None,
            lengths=lengths[t],
            success_flags=flags[t],
            seeds=seeds[t],
        )
    avg = float(np.mean([r.rate for r in results_by_task.values()])) if results_by_task else 0.0
    kept = {t: [e[o] for o in (True, False) if o in e] for t, e in examples.items() if e}
    return EvalResult(results_by_task, avg, env_steps, {t: f for t, f in frames.items() if f}, kept)


def _frame(ob) -> np.ndarray:
    """All cameras side by side, (y, n*x, 3) uint8."""
    return np.concatenate([ob.images[c] for c in sorted(ob.images)], axis=1)


def eval_metrics(result: EvalResult, prefix: str = "eval_success") -> dict[str, float]:
    m = {f"{prefix}/{t}": r.rate for t, r in result.tasks.items()}
    m[f"{prefix}_avg"] = result.average
    return m


def markdown_table(result: EvalResult, title: str = "Evaluation") -> str:
    lines = [
        f"### {title}",
        "",
        "| task | success | 95% CI | episodes | mean length |",
        "|---|---|---|---|---|",
    ]
    for r in result.tasks.values():
        lines.append(
            f"| {r.task} | {100 * r.rate:.1f}% | [{100 * r.ci_low:.1f}, {100 * r.ci_high:.1f}] "
            f"| {r.episodes} | {r.mean_length:.1f} |"
        )
    lines.append(f"| **average** | **{100 * result.average:.1f}%** | | | |")
    return "\n".join(lines)
