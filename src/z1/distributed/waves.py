"""An iteration's groups as waves, shared out over data-parallel ranks (torchrun), and evaluations split
by task.

A wave is `num_slots // group_size` groups of the iteration's plan, rolled out together. With per-wave
random streams (`wave_streams`, RLConfig.wave_rng) a wave's records depend only on (seed, iteration,
wave), not on the process that collects it, so ranks can take contiguous shares of the waves
(`collect_waves`) and the union of their batches is what one process would have collected.
"""

from __future__ import annotations

import numpy as np
import torch

from z1.config import ConfigError
from z1.distributed.ddp import DistContext
from z1.evaluate import EvalConfig, EvalResult, evaluate
from z1.records import RolloutBatch
from z1.rollout.collector import RolloutConfig, collect_groups
from z1.rollout.inference import cat_caches, cat_inputs


def wave_streams(seed: int, iteration: int, wave: int) -> tuple[np.random.Generator, torch.Generator]:
    """The rollout RNGs of wave `wave` of iteration `iteration` (`RLConfig.wave_rng`): a numpy Generator
    (branch points) and a torch Generator (noise), functions of the three numbers alone."""
    np_seq, torch_seq = np.random.SeedSequence([seed, iteration, wave]).spawn(2)
    torch_seed = int(torch_seq.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))  # < 2**63
    return np.random.default_rng(np_seq), torch.Generator().manual_seed(torch_seed)


def combine_rollout_stats(parts: list[dict[str, float]], parallel: bool) -> dict[str, float]:
    """The `RolloutBatch.stats` of several batches as one: counters summed; `time/*` summed for batches
    collected one after another, the max for ranks collecting in parallel (wall time); env_step_ratio
    recomputed from the summed env steps."""
    out: dict[str, float] = {}
    for k in dict.fromkeys(k for p in parts for k in p):
        vals = [float(p[k]) for p in parts if k in p]
        out[k] = max(vals) if parallel and k.startswith("time/") else float(sum(vals))
    if "env_step_ratio" in out:
        flat_steps = out.get("env_steps_flat_equiv", 0.0)
        out["env_step_ratio"] = out.get("env_steps", 0.0) / flat_steps if flat_steps else float("nan")
    return out


def merge_batches(batches: list[RolloutBatch]) -> RolloutBatch:
    """Concatenate rollout batches (in order) into one: observation rows and group indices shifted.
    The batches must come from one sampler (the update recomputes every chunk with it)."""
    if len(batches) == 1:
        return batches[0]
    samplers = {b.sampler for b in batches}
    if len(samplers) > 1:
        raise ValueError(f"cannot merge rollout batches of different samplers: {samplers}")
    obs_shift = np.cumsum([0] + [b.inputs.images.shape[0] for b in batches[:-1]])
    group_shift = np.cumsum([0] + [len(b.groups) for b in batches[:-1]])
    caches = [b.caches for b in batches]
    return RolloutBatch(
        groups=[g for b in batches for g in b.groups],
        inputs=cat_inputs([b.inputs for b in batches]),
        caches=None if any(c is None for c in caches) else cat_caches(caches),  # type: ignore[arg-type]
        obs_index=torch.cat([b.obs_index + int(o) for b, o in zip(batches, obs_shift)]),  # (n,)
        chains=torch.cat([b.chains for b in batches]),  # (n, k+1, h, a)
        step_ids=torch.cat([b.step_ids for b in batches]),  # (n, j)
        logprobs=torch.cat([b.logprobs for b in batches]),  # (n, j)
        chunk_group=np.concatenate([b.chunk_group + int(o) for b, o in zip(batches, group_shift)]),  # (n,)
        chunk_node=np.concatenate([b.chunk_node for b in batches]),  # (n,)
        sampler=batches[0].sampler,
        stats=combine_rollout_stats([b.stats for b in batches], parallel=False),
    )


def check_waves(groups: int, num_slots: int, group_size: int, world_size: int) -> int:
    """The number of waves of `groups` groups; every rank needs at least one (checked on all ranks, before
    any work, so that all fail alike)."""
    per_wave = num_slots // group_size
    if per_wave < 1:
        raise ConfigError(f"--num-slots {num_slots} < --rollout.group-size {group_size}")
    n_waves = -(-groups // per_wave)
    if n_waves < world_size:
        raise ConfigError(
            f"{groups} groups per iteration make {n_waves} waves of {per_wave} (--num-slots {num_slots} "
            f"// --rollout.group-size {group_size}) for {world_size} ranks, and every rank "
            f"needs a wave: lower --num-slots to {group_size * max(1, groups // world_size)} "
            "or raise --groups-per-task"
        )
    return n_waves


def collect_waves(
    runner,
    venv,
    plan: list[tuple[str, int]],
    cfg: RolloutConfig,
    seed: int,
    iteration: int,
    ctx: DistContext,
    c_med: dict[str, float] | None,
    keep_caches: bool,
) -> tuple[RolloutBatch, int]:
    """This rank's waves of the plan (`venv.num_slots // group_size` groups each, a contiguous share of
    the waves), each rolled out with its own `wave_streams`, so a wave's records do not depend on the
    rank that collects it or on the other waves. Returns the batch and the plan index of its first group.
    """
    per_wave = venv.num_slots // cfg.group_size
    n_waves = check_waves(len(plan), venv.num_slots, cfg.group_size, ctx.world_size)
    lo, hi = ctx.shard_bounds(n_waves)
    batches = []
    for w in range(lo, hi):
        w_rng, w_gen = wave_streams(seed, iteration, w)
        part = plan[w * per_wave : (w + 1) * per_wave]
        batches.append(collect_groups(runner, venv, part, cfg, w_rng, w_gen, c_med, keep_caches))
    batch = merge_batches(batches)
    first = lo * per_wave
    for i, g in enumerate(batch.groups):
        g.tree.group = first + i  # the plan index, as a one-call collection numbers them
    return batch, first


def evaluate_sharded(ctx: DistContext, runner, venv, tasks: list[str], cfg: EvalConfig) -> EvalResult:
    """`evaluate`, the tasks split over the data-parallel ranks and the results gathered on every rank.
    An episode's noise comes from its seed, so a task's result does not depend on the rank."""
    if not ctx.is_distributed:
        return evaluate(runner, venv, tasks, cfg)
    mine = list(ctx.shard(tasks))
    parts = ctx.all_gather_object(evaluate(runner, venv, mine, cfg) if mine else None)
    done = [p for p in parts if p is not None]
    results = {t: r for p in done for t, r in p.tasks.items()}
    by_task = {t: results[t] for t in tasks}
    avg = float(np.mean([r.rate for r in by_task.values()])) if by_task else 0.0
    frames = {t: f for p in done for t, f in p.frames.items()}
    return EvalResult(by_task, avg, sum(p.env_steps for p in done), frames)
