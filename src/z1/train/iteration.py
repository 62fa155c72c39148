"""One GRPO iteration: collect -> score -> update -> metrics.

    batch  = collect_groups / collect_waves(plan)        rollout/collector.py, distributed/waves.py
    scored = score_batch(batch, task_stats)              rl/scoring.py (pure: new task statistics out)
    upd    = learner.update(scored)                      rl/learner.py

`run_rl` (train/rl.py) calls `iteration` once per GRPO iteration and keeps the bookkeeping around it
(plans, checkpoints, evaluations, logging, resume); tests call it to run the real loop body on fake envs.

Under torchrun every rank calls it with the same plan: each collects its share of the waves, the ranks
exchange the groups' outcomes so each scores the whole plan identically (task statistics, pooled
sigma), and the learner all-reduces its gradients; the returned metrics are global numbers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from z1.distributed.waves import collect_waves, combine_rollout_stats
from z1.records import ScoredBatch
from z1.rl.learner import Learner, ode_probe
from z1.rl.reward import RewardConfig, TaskTimeStats
from z1.rl.scoring import AdvantageConfig, chunk_stats, group_outcomes, score_batch
from z1.rollout.collector import RolloutConfig, collect_groups
from z1.rollout.runner import PolicyRunner


@dataclass(frozen=True)
class IterationConfig:
    """What one iteration needs of the run's configuration (`RLConfig` holds these under the same names).

    wave_rng: roll out each wave with its own streams seeded by (seed, iteration, wave) (required under
    torchrun); False: the run-wide streams (`rng` and the learner's generator)."""

    rollout: RolloutConfig
    reward: RewardConfig
    advantage: AdvantageConfig
    seed: int = 0
    wave_rng: bool = False


@dataclass(frozen=True)
class IterationResult:
    metrics: dict[str, float]
    """The iteration's rollout, scoring and update statistics (global numbers under torchrun)."""
    task_stats: TaskTimeStats
    """The task statistics with this iteration's outcomes folded in: the next iteration's input."""
    scored: ScoredBatch
    """This process's scored batch (its rollout inside)."""
    env_steps: float
    env_steps_flat: float
    """Env steps of the iteration over all ranks, and what flat rollouts of the same leaves would take."""


def iteration(
    learner: Learner,
    runner: PolicyRunner,
    venv,
    plan: list[tuple[str, int]],
    task_stats: TaskTimeStats,
    cfg: IterationConfig,
    rng: np.random.Generator,
    index: int = 0,
    c_med: dict[str, float] | None = None,
) -> IterationResult:
    """Roll out the groups of `plan` ((task, seed) each) with `runner` (acting with `learner.model`) in
    `venv`, score them against `task_stats`, update the learner, and measure all three.

    rng: the run's numpy stream (branch points), unused with `cfg.wave_rng`; index: the iteration number
    (it seeds the per-wave streams); c_med: per task median success length in chunks (branch points).
    """
    ctx, model = learner.ctx, learner.model
    model.eval()
    first = 0
    if cfg.wave_rng:
        batch, first = collect_waves(
            runner, venv, plan, cfg.rollout, cfg.seed, index, ctx, c_med, keep_caches=learner.prefix_frozen
        )
    else:
        batch = collect_groups(
            runner, venv, plan, cfg.rollout, rng, learner.generator, c_med, keep_caches=learner.prefix_frozen
        )
    mine = group_outcomes(batch)
    branch_nodes = [len(g.tree.branch_nodes()) for g in batch.groups]
    shared = ctx.all_gather_object((mine, branch_nodes))  # every rank's groups, plan order
    outcomes = [o for part, _ in shared for o in part]
    flat = cfg.rollout.mode == "flat"
    scored = score_batch(batch, cfg.reward, task_stats, cfg.advantage, flat, outcomes, first_group=first)
    before = ode_probe(model, batch)
    t0 = time.perf_counter()
    upd = learner.update(scored)
    t_update = time.perf_counter() - t0
    after = ode_probe(model, batch)
    shift = None
    if before is not None and after is not None:  # RMS move of the eval-time actions
        shift = (after - before).pow(2)  # (r, h_exec, d_exec)
        upd["update/ode_action_shift"] = float(shift.mean().sqrt())
    rollout_stats = batch.stats
    metrics: dict[str, float] = {**scored.stats, **upd}
    if ctx.is_distributed:  # sums over the ranks' batches (max of the wall times)
        shift_sums = None if shift is None else (float(shift.double().sum()), shift.numel())
        parts = ctx.all_gather_object((batch.stats, scored.chunks, t_update, shift_sums))
        rollout_stats = combine_rollout_stats([p[0] for p in parts], parallel=True)
        metrics.update(chunk_stats([p[1] for p in parts]))
        t_update = max(p[2] for p in parts)
        sums = [p[3] for p in parts if p[3] is not None]
        if sums:
            sq, n = sum(x for x, _ in sums), sum(c for _, c in sums)
            metrics["update/ode_action_shift"] = float(np.sqrt(sq / n))
    metrics.update({f"rollout/{k}": v for k, v in rollout_stats.items()})
    metrics["time/update"] = t_update
    metrics["time/rollout"] = rollout_stats["time/rollout"]
    succ_by_task: dict[str, list[bool]] = {}
    for o in outcomes:
        succ_by_task.setdefault(o.task, []).extend(o.successes.tolist())
    for t, s in succ_by_task.items():
        metrics[f"train_success/{t}"] = float(np.mean(s))
    metrics["train_success_avg"] = float(np.mean([np.mean(s) for s in succ_by_task.values()]))
    metrics["tree/leaves_per_group"] = float(np.mean([len(o.successes) for o in outcomes]))
    metrics["tree/branch_nodes"] = float(np.mean([n for _, part in shared for n in part]))
    metrics["tree/prefix_forwards_saved"] = rollout_stats["prefix_forwards_saved"]
    return IterationResult(
        metrics=metrics,
        task_stats=scored.task_stats,
        scored=scored,
        env_steps=rollout_stats["env_steps"],
        env_steps_flat=rollout_stats["env_steps_flat_equiv"],
    )
