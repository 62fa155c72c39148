"""Task-wise GRPO: collect -> calibrate -> advantages -> update -> eval -> checkpoint.

One iteration rolls out `groups_per_task` groups for every task (each group from one fixed initial
state, tree-branched or flat), scores them (rl/scoring.py), and takes `grpo.minibatches` optimizer steps
per epoch on the clipped Flow-SDE surrogate (rl/grpo.py), recomputing the log-prob of the stored
stochastic denoise step only. With the VLM frozen (expert-only, the default), the prefix KV caches built
during the rollout are reused by the update as they are.

`--resume` continues exactly: the checkpoint holds the model, the optimizer, every RNG state and the
per-task reward statistics, and iteration i's env seeds are a function of i.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from z1.config import ConfigError
from z1.distributed.ddp import DistContext, allreduce_grads
from z1.distributed.ddp import current as current_dist
from z1.errors import RunDirError, TrainingError, check_float, check_int
from z1.evaluate import EvalConfig, EvalResult, eval_metrics, evaluate, markdown_table
from z1.fsutil import check_run_dir, recover_directory, write_json_atomic
from z1.models.checkpoint import load_checkpoint, read_config, save_checkpoint
from z1.models.sampling import exec_mask, recompute_logprob, sample_chunk, time_grid
from z1.rl.grpo import (
    GRPOConfig,
    combine_stats,
    gaussian_kl,
    grpo_loss,
    kl_early_stop,
    minibatch_indices,
    ratio_std,
    total_term_weight,
)
from z1.rl.params import SelectiveConfig, apply_selective, frozen_prefix, grad_norms_by_group
from z1.rl.reward import RewardConfig, TaskTimeStats
from z1.rl.scoring import AdvantageConfig, chunk_stats, group_outcomes, score_batch
from z1.rl.task_sampling import TaskSamplingConfig, plan_task_counts
from z1.rollout.collector import RolloutBatch, RolloutConfig, cat_caches, cat_inputs, collect_groups
from z1.train.metrics import MetricsLogger
from z1.train.setup import build_runner, make_vector_env, progress_bar, resolve_tasks, suite_for
from z1.train.state import TrainStateSpec, load_train_state

TRAIN_SEED_BASE = 10_000  # training groups; demonstrations use 0.., evaluation 100_000..


@dataclass(frozen=True)
class RLConfig:
    """GRPO post-training of an SFT checkpoint (`z1 rl --preset mw-quick --init CKPT`)."""

    init: str
    """SFT checkpoint directory to start from (`z1 sft` output or a `z1 import`ed pi0.5)."""
    out: str = "runs/rl"
    """Run directory: checkpoint in `out/rl_ckpt`, metrics in `out/rl_metrics.jsonl`."""
    suite: str | None = None
    """Simulator suite: metaworld | robosuite | robocasa (default: the suite of `tasks`)."""
    tasks: str = "mw-quick"
    """Task set name (mw-quick, mt10, mt50, ...) or comma-separated task names."""
    iterations: int = 10
    """GRPO iterations (collect -> update)."""
    groups_per_task: int = 2
    """Groups per task per iteration; each group starts from one initial state (seed)."""
    lr: float = 3e-5
    """Learning rate of the trained parameters (the VLM gets `selective.lr_vlm_scale` times it)."""
    grad_clip: float = 1.0
    """Max global grad norm."""
    eval_every: int = 0
    """Evaluate with the ODE sampler every N iterations (0: only at the end)."""
    eval_episodes: int = 20
    """Episodes per task of each evaluation (0 disables evaluation)."""
    num_slots: int = 16
    """Env slots (episodes in flight); at least `rollout.group_size`."""
    workers: int = 2
    """Env worker processes (0: in-process, sequential)."""
    ray: Literal["local", "auto"] | None = None
    """Env slots on `workers` Ray actors: local starts a cluster here, auto joins `ray start`'s (README)."""
    threads: int = 1
    """Torch threads of the learner process."""
    seed: int = 0
    """Base seed of every RNG of the run."""
    resume: bool = False
    """Continue from `out/rl_ckpt` if it exists (bit-exact on CPU)."""
    overwrite: bool = False
    """Replace an earlier GRPO run in `out` (its checkpoint and metrics) instead of refusing to start."""
    max_minutes: float | None = None
    """Stop after the iteration that crosses this wall-clock budget."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    selective: SelectiveConfig = field(default_factory=SelectiveConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    task_sampling: TaskSamplingConfig = field(default_factory=TaskSamplingConfig)
    """How each iteration's `groups_per_task * len(tasks)` groups are spread over the tasks (B.1)."""
    image_size: int = 64
    """Camera resolution of the env (square)."""
    calibration_episodes: int = 10
    """Tree mode: ODE episodes per task of the initial policy, run once before training to seed the
    branch points (median success length C_med) and the reward's reference time T_min."""
    wave_rng: bool | None = None
    """Roll out each wave (`num_slots // rollout.group_size` groups of the iteration) with its own random
    streams, seeded by (seed, iteration, wave), so a wave's rollouts do not depend on the process that
    collects it. None: on under torchrun (required there), off in one process (one run-wide stream, as
    before). A one-process run with --wave-rng True equals a torchrun run with the same --num-slots."""

    def __post_init__(self) -> None:
        """Every numeric and cross-field limit, before a checkpoint is loaded or an env started."""
        check_int(self.iterations, "--iterations", low=1)
        check_int(self.groups_per_task, "--groups-per-task", low=1)
        check_float(self.lr, "--lr", low=0.0, low_open=True)
        check_float(self.grad_clip, "--grad-clip", low=0.0, low_open=True)
        check_int(self.eval_every, "--eval-every", low=0)
        check_int(self.eval_episodes, "--eval-episodes", low=0)
        check_int(self.num_slots, "--num-slots", low=1)
        check_int(self.workers, "--workers", low=0)
        check_int(self.threads, "--threads", low=1)
        check_int(self.seed, "--seed", low=0)
        check_int(self.image_size, "--image-size", low=8, high=4096)
        check_int(self.calibration_episodes, "--calibration-episodes", low=0)
        if self.max_minutes is not None:
            check_float(self.max_minutes, "--max-minutes", low=0.0, low_open=True)
        if self.num_slots < self.rollout.group_size:
            raise ConfigError(
                f"--num-slots {self.num_slots} is smaller than --rollout.group-size "
                f"{self.rollout.group_size}; a group's members run side by side, so raise --num-slots or "
                "lower the group size"
            )
        if self.rollout.inference == "actors" and self.ray is None:
            raise ConfigError(
                "--rollout.inference actors runs the policy in Ray env actors: add --ray local|auto"
            )
        if self.eval_every and not self.eval_episodes:
            raise ConfigError(f"--eval-every {self.eval_every} needs --eval-episodes >= 1")
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other; pass one of them")


def group_plan(
    tasks: list[str], counts: list[int], iteration: int, stride: int | None = None
) -> list[tuple[str, int]]:
    """(task, seed) for every group of an iteration, `counts[i]` groups of task i.

    Task i of iteration `it` draws seeds from its own block [base + i * stride, base + (i + 1) * stride),
    base = it * len(tasks) * stride, so seeds are disjoint across iterations and tasks as long as no count
    exceeds `stride` (default: max(counts), which keeps uniform runs' seeds as they always were).
    """
    stride = max(counts, default=0) if stride is None else stride
    if any(c > stride for c in counts):
        raise ValueError(f"group counts {counts} exceed the seed stride {stride}")
    base = TRAIN_SEED_BASE + iteration * len(tasks) * stride
    return [(t, base + ti * stride + g) for ti, t in enumerate(tasks) for g in range(counts[ti])]


def c_med_by_task(stats: TaskTimeStats, tasks: list[str], h_exec: int, max_steps: int) -> dict[str, float]:
    """Running median success length in chunks (C.2); half the cap when a task has no success yet."""
    out = {}
    for t in tasks:
        lengths = stats.success_lengths.get(t)
        out[t] = float(np.median(lengths)) / h_exec if lengths else 0.5 * max_steps / h_exec
    return out


def step_std(step_ids: torch.Tensor, sampler) -> torch.Tensor:
    """Flow-SDE transition std s_k at each stored step: (n, j) -> (n, j) (docs/algorithm.md#flow-sde-step)."""
    grid = time_grid(sampler.num_steps)
    t, t_next = grid[step_ids], grid[step_ids + 1]
    t_tilde = torch.where(t >= 1.0, grid[1], t)
    return sampler.noise_level * torch.sqrt(t / (1.0 - t_tilde)) * torch.sqrt(t - t_next)


@torch.no_grad()
def ode_probe(model, batch: RolloutBatch, sampler, rows: int = 64, seed: int = 0) -> torch.Tensor | None:
    """Executed ODE actions of the policy on up to `rows` observations of `batch`, from fixed noise.

    Run before and after an update, the difference is how far the update moved the deterministic
    policy that evaluation uses (the PPO ratio only sees the stochastic denoise step).
    Returns (rows, h_exec, d_exec) in normalized units, or None without stored prefix caches.
    """
    if batch.caches is None or batch.caches.batch_size == 0:
        return None
    n = batch.caches.batch_size
    idx = torch.linspace(0, n - 1, min(rows, n)).round().long()  # (r,) spread over the batch
    cache = batch.caches.index(idx)
    h, a = batch.chains.shape[2], batch.chains.shape[3]
    noise = torch.randn(idx.numel(), h, a, generator=torch.Generator().manual_seed(seed))  # (r, h, a)
    ode = replace(sampler, mode="ode", noise_level=0.0)
    x = sample_chunk(model, cache, noise, ode).actions  # (r, h, a)
    return x[:, : sampler.h_exec, : sampler.d_exec]


def grpo_update(
    model,
    optimizer,
    groups,
    batch: RolloutBatch,
    advantages: np.ndarray,
    weights: np.ndarray,
    trainable: np.ndarray,
    sampler,
    cfg: GRPOConfig,
    grad_clip: float,
    prefix_frozen: bool,
    generator: torch.Generator,
    ref_model=None,
) -> dict[str, float]:
    """Epochs x minibatches of optimizer steps on the trainable chunks of one rollout batch.

    With `cfg.kl_beta > 0`, `ref_model` (the frozen initial policy) adds the exact per-step Gaussian KL
    between the current and the reference step means (docs/algorithm.md#kl-to-a-reference) to the loss.

    Data-parallel (z1.distributed.ddp, torchrun): `batch` holds this rank's chunks. The trainable rows of
    all ranks, in rank order, form the global list that one process would hold; every rank draws the same
    permutation of it (`generator` runs in lockstep) and computes the loss of the rows of each minibatch
    it owns, and `allreduce_grads` turns the gradients into the global term-weighted mean. A rank that
    owns no row of a minibatch (or none at all) contributes a zero gradient with weight 0, so every rank
    takes the same optimizer steps, and the KL early stop is decided together.

    KL early stop (`kl_early_stop`): after each epoch but the last, the epoch's batch-mean k3 (the
    term-weighted mean of the minibatches' k3, each measured before its own step; global numbers under
    DDP) above `cfg.kl_target` skips the remaining epochs. Logged statistics merge every minibatch of
    every epoch run (`combine_stats`): true min / max, term-weighted means, the std from merged moments;
    grad norms are means over the optimizer steps.
    """
    if cfg.kl_beta > 0 and ref_model is None:
        raise ValueError("GRPOConfig.kl_beta > 0 needs the reference policy (ref_model)")
    ctx = current_dist()
    idx_all = torch.as_tensor(np.flatnonzero(trainable), dtype=torch.long)  # (n_local,) this rank's rows
    n_local = int(idx_all.numel())
    sizes = ctx.all_gather_object(n_local)  # trainable rows of every rank
    n_global, offset = sum(sizes), sum(sizes[: ctx.rank])
    out: dict[str, float] = {"update/terms": float(n_global), "update/steps": 0.0}
    if n_global == 0:
        return out
    adv = torch.as_tensor(advantages, dtype=torch.float32)
    wts = torch.as_tensor(weights, dtype=torch.float32)
    valid_all = torch.ones_like(batch.logprobs, dtype=torch.bool)
    params = [p for ps in groups.params.values() for p in ps]
    mb_stats: list[dict[str, float]] = []  # every minibatch's (reduced) loss statistics, in order
    grad_norms: dict[str, list[float]] = {}
    epochs_run = 0
    stop = False
    for epoch in range(cfg.epochs):
        epoch_stats: list[dict[str, float]] = []
        for mb, perm in enumerate(minibatch_indices(n_global, cfg.minibatches, generator)):
            mine = perm[(perm >= offset) & (perm < offset + n_local)] - offset  # (m,) in permuted order
            idx = idx_all[mine]
            optimizer.zero_grad(set_to_none=True)
            if idx.numel() > 0:
                new_lp, st, total = _minibatch_backward(
                    model, batch, idx, adv, wts, valid_all, sampler, cfg, prefix_frozen, ref_model
                )
            else:  # nothing of this minibatch here: zero gradient, weight 0, the same statistic keys
                none = batch.logprobs[:0]  # (0, j)
                ref_kl = none if cfg.kl_beta > 0 else None
                _, st = grpo_loss(none, none, adv[:0], wts[:0], valid_all[:0], cfg, 1.0, ref_kl=ref_kl)
                new_lp, total = none, 0.0
            st = allreduce_grads(model.parameters(), total, st)  # DDP: global term-weighted mean; else no-op
            st["ratio/std"] = ratio_std(st)  # from the (reduced) moments
            gn = grad_norms_by_group(groups)
            total_norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
            loss_total = float(st.get("loss/total", 0.0))
            if not (np.isfinite(total_norm) and np.isfinite(loss_total)):
                raise TrainingError(
                    f"GRPO update, epoch {epoch + 1} minibatch {mb + 1}: the loss is {loss_total} and the "
                    f"gradient norm {total_norm}; stopped before this optimizer step, nothing of this "
                    "iteration was saved (the last checkpoint is intact). Lower --lr or check the rewards"
                )
            optimizer.step()
            out["update/steps"] += 1
            if epoch == 0 and mb == 0:
                dev = (new_lp.detach() - batch.logprobs[idx]).abs()  # (m, j)
                local_mean = float(dev.mean()) if dev.numel() else 0.0
                out["first_mb/log_ratio_abs_mean"] = ctx.allreduce_mean({"v": local_mean}, dev.numel())["v"]
            epoch_stats.append(st)
            for k, v in gn.items():
                grad_norms.setdefault(k, []).append(float(v))
        epochs_run += 1
        mb_stats.extend(epoch_stats)
        batch_k3 = combine_stats(epoch_stats).get("approx_kl/k3", 0.0)  # this epoch's batch-mean k3
        out["update/batch_k3"] = batch_k3
        if epoch + 1 < cfg.epochs and ctx.any_true(kl_early_stop(batch_k3, cfg)):
            stop = True
            break
    out.update(combine_stats(mb_stats))
    out.update({k: float(np.mean(v)) for k, v in grad_norms.items()})
    out["update/epochs_run"] = float(epochs_run)
    out["update/early_stop"] = float(stop)
    return out


def _minibatch_backward(
    model,
    batch: RolloutBatch,
    idx: torch.Tensor,
    adv: torch.Tensor,
    wts: torch.Tensor,
    valid_all: torch.Tensor,
    sampler,
    cfg: GRPOConfig,
    prefix_frozen: bool,
    ref_model,
) -> tuple[torch.Tensor, dict[str, float], float]:
    """Loss of the rows `idx` (m,) normalized by their own term weight, backpropagated.
    Returns the recomputed log-probs (m, j), the loss statistics and the term weight."""
    rows = batch.obs_index[idx]
    chains, step_ids = batch.chains[idx], batch.step_ids[idx]
    if prefix_frozen and batch.caches is not None:
        cache = batch.caches.index(rows)
        new_lp, means = recompute_logprob(model, None, chains, step_ids, sampler, cache=cache)
    else:
        cache = None
        new_lp, means = recompute_logprob(model, batch.inputs.index(rows), chains, step_ids, sampler)
    ref_kl = None
    if cfg.kl_beta > 0:
        with torch.no_grad():  # the frozen prefix is the same for the reference; else rebuild it
            ref_in = None if cache is not None else batch.inputs.index(rows)
            _, ref_means = recompute_logprob(ref_model, ref_in, chains, step_ids, sampler, cache=cache)
        mask = exec_mask(chains.shape[2], chains.shape[3], sampler.h_exec, sampler.d_exec)
        ref_kl = gaussian_kl(means, ref_means, step_std(step_ids, sampler), mask)  # (m, j)
    total = total_term_weight(wts[idx], valid_all[idx])
    loss, st = grpo_loss(
        new_lp, batch.logprobs[idx], adv[idx], wts[idx], valid_all[idx], cfg, total, ref_kl=ref_kl
    )
    loss.backward()
    return new_lp, st, total


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
    """Concatenate rollout batches (in order) into one: observation rows and group indices shifted."""
    if len(batches) == 1:
        return batches[0]
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
        chunk_group=np.concatenate([b.chunk_group + int(o) for b, o in zip(batches, group_shift)]),
        chunk_node=np.concatenate([b.chunk_node for b in batches]),
        stats=combine_rollout_stats([b.stats for b in batches], parallel=False),
    )


def collect_waves(
    runner,
    venv,
    plan: list[tuple[str, int]],
    cfg: RLConfig,
    iteration: int,
    ctx: DistContext,
    c_med: dict[str, float],
    keep_caches: bool,
) -> tuple[RolloutBatch, int]:
    """This rank's waves of the plan (`venv.num_slots // group_size` groups each, a contiguous share of
    the waves), each rolled out with its own `wave_streams`, so a wave's records do not depend on the
    rank that collects it or on the other waves. Returns the batch and the plan index of its first group.
    """
    per_wave = venv.num_slots // cfg.rollout.group_size
    n_waves = _check_waves(len(plan), per_wave, cfg, ctx)
    lo, hi = ctx.shard_bounds(n_waves)
    batches = []
    for w in range(lo, hi):
        w_rng, w_gen = wave_streams(cfg.seed, iteration, w)
        part = plan[w * per_wave : (w + 1) * per_wave]
        batches.append(collect_groups(runner, venv, part, cfg.rollout, w_rng, w_gen, c_med, keep_caches))
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


def _check_waves(groups: int, per_wave: int, cfg: RLConfig, ctx: DistContext) -> int:
    """The number of waves of `groups` groups; every rank needs at least one (checked on all ranks)."""
    if per_wave < 1:
        raise ConfigError(f"--num-slots {cfg.num_slots} < --rollout.group-size {cfg.rollout.group_size}")
    n_waves = -(-groups // per_wave)
    if n_waves < ctx.world_size:
        raise ConfigError(
            f"{groups} groups per iteration make {n_waves} waves of {per_wave} (--num-slots {cfg.num_slots} "
            f"// --rollout.group-size {cfg.rollout.group_size}) for {ctx.world_size} ranks, and every rank "
            f"needs a wave: lower --num-slots to {cfg.rollout.group_size * max(1, groups // ctx.world_size)} "
            "or raise --groups-per-task"
        )
    return n_waves


def _check_distributed(cfg: RLConfig, ctx: DistContext) -> bool:
    """Whether rollouts draw per-wave streams (`RLConfig.wave_rng`); refuses what torchrun cannot run."""
    wave_rng = ctx.is_distributed if cfg.wave_rng is None else cfg.wave_rng
    if not ctx.is_distributed:
        return wave_rng
    if not wave_rng:
        raise ConfigError("--wave-rng False cannot run under torchrun: each rank collects its own waves")
    if cfg.ray == "local":
        raise ConfigError(
            "--ray local would start one Ray cluster per torchrun rank; start Ray once (`ray start --head`) "
            "and pass --ray auto, or leave --ray out (env slots in each rank's worker processes)"
        )
    return wave_rng


# Fields that may change when a run is resumed; every other RLConfig field must match the run's.
RESUME_FREE = ("iterations", "out", "resume", "overwrite", "eval_every", "eval_episodes", "workers", "ray")
RESUME_FREE += ("threads", "max_minutes", "calibration_episodes")


def _init_hash(init: Path) -> str | None:
    """The weights hash recorded in the --init checkpoint's config.json (None for older checkpoints)."""
    try:
        doc = json.loads((init / "config.json").read_text())
    except (OSError, ValueError):
        return None
    hashes = doc.get("sha256") if isinstance(doc, dict) else None
    return hashes.get("model.safetensors") if isinstance(hashes, dict) else None


def check_resume(cfg: RLConfig, ckpt_dir: Path) -> None:
    """ConfigError naming every flag of `cfg` that differs from the run saved in `ckpt_dir` (checkpoints
    written before z1 recorded the run config are resumed unchecked)."""
    path = ckpt_dir / "extra.json"
    extra = json.loads(path.read_text()) if path.is_file() else {}
    saved = extra.get("rl_config")
    if not isinstance(saved, dict):
        return
    now = json.loads(json.dumps(asdict(cfg)))  # tuples as lists, as saved
    diff = []
    for k in sorted(set(saved) | set(now)):
        if k in RESUME_FREE:
            continue
        a, b = saved.get(k), now.get(k)
        same_dir = k == "init" and a is not None and b is not None
        if same_dir and Path(a).expanduser().resolve() == Path(b).expanduser().resolve():
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            diff += [
                f"--{k}.{j.replace('_', '-')}: {a.get(j)!r} in the run, now {b.get(j)!r}"
                for j in sorted(set(a) | set(b))
                if a.get(j) != b.get(j)
            ]
        elif a != b:
            diff.append(f"--{k.replace('_', '-')}: {a!r} in the run, now {b!r}")
    old_hash, new_hash = extra.get("init_sha256"), _init_hash(Path(cfg.init))
    if old_hash and new_hash and old_hash != new_hash and not any(d.startswith("--init:") for d in diff):
        diff.append(f"--init: {cfg.init} holds other weights than when the run started (its hash changed)")
    if diff:
        raise ConfigError(
            f"--resume: {ckpt_dir} belongs to a run with other settings: "
            + "; ".join(diff)
            + ". Resume with the run's settings, or start a new run (another --out, or --overwrite)"
        )


def _check_against_policy(cfg: RLConfig, pc) -> None:
    """Limits that depend on the starting policy, checked before any env starts or calibration runs."""
    ro = cfg.rollout
    if ro.h_exec < 1 or ro.h_exec > pc.action_horizon:
        raise ConfigError(
            f"--rollout.h-exec {ro.h_exec} must be in 1..{pc.action_horizon} (the action horizon of --init "
            f"{cfg.init})"
        )
    if ro.num_steps < 1:
        raise ConfigError(f"--rollout.num-steps must be >= 1, got {ro.num_steps}")
    if ro.max_steps < ro.h_exec:
        raise ConfigError(f"--rollout.max-steps {ro.max_steps} is shorter than one chunk (--rollout.h-exec)")


def run_rl(cfg: RLConfig, console=None) -> dict:
    """The GRPO loop. Returns a summary dict (also written to `out/rl_summary.json`).

    Under torchrun every rank runs this with the same arguments: the ranks collect disjoint waves of each
    iteration's groups, exchange the groups' outcomes so that each scores the whole batch (task
    statistics, pooled sigma) identically, and take the same optimizer steps on all-reduced gradients.
    Evaluations are split over the ranks by task. Rank 0 alone writes metrics, checkpoints, evaluations
    and the summary; the other ranks write nothing.
    """
    ctx = DistContext.init_from_env()  # one process unless launched by torchrun
    wave_rng = _check_distributed(cfg, ctx)
    tasks = resolve_tasks(cfg.tasks)
    if ctx.is_distributed:  # fail before any work, on every rank alike
        _check_waves(cfg.groups_per_task * len(tasks), cfg.num_slots // cfg.rollout.group_size, cfg, ctx)
    out = Path(cfg.out)
    ckpt_dir = out / "rl_ckpt"
    if ctx.is_main:
        recover_directory(ckpt_dir)  # a save killed between its two renames left only .rl_ckpt.old-*
        check_run_dir(out, "rl", resume=cfg.resume, overwrite=cfg.overwrite)
        if (
            cfg.resume
            and not (ckpt_dir / "model.safetensors").exists()
            and (out / "rl_metrics.jsonl").exists()
        ):
            raise RunDirError(
                f"--resume: {out} has rl_metrics.jsonl but no checkpoint {ckpt_dir}; there is nothing to "
                "continue from. Pass --overwrite to start the run again, or choose another --out"
            )
    ctx.barrier()
    init_cfg = read_config(Path(cfg.init))  # a bad --init fails before anything else
    _check_against_policy(cfg, init_cfg)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    found = (ckpt_dir / "model.safetensors").exists()
    if cfg.resume and len(set(ctx.all_gather_object(found))) > 1:
        raise RuntimeError(
            f"--resume: {ckpt_dir} exists for some torchrun ranks only; every rank loads it, so --out must "
            "be on a filesystem that all nodes share"
        )
    resume = cfg.resume and found
    if resume:
        check_resume(cfg, ckpt_dir)
    loaded = load_checkpoint(ckpt_dir if resume else Path(cfg.init))
    model = loaded.model
    if loaded.norm is None:
        raise ConfigError(
            f"checkpoint {cfg.init} has no normalization stats (norm_stats.json); run `z1 sft` first"
        )
    ctx.broadcast_params(model)  # identical weights on every rank (they read the same file)
    ref_model = None
    if cfg.grpo.kl_beta > 0:  # the policy GRPO starts from anchors the update (B.4)
        ref_model = copy.deepcopy(load_checkpoint(Path(cfg.init)).model).eval().requires_grad_(False)
    sel = SelectiveConfig(**{**asdict(cfg.selective), "lr_expert": cfg.lr})
    groups = apply_selective(model, sel)
    prefix_is_frozen = frozen_prefix(model, sel)
    optimizer = torch.optim.AdamW(groups.optimizer_groups(), betas=(0.9, 0.95), eps=1e-8)
    # Every rank keeps these in lockstep: the same draws (task counts, minibatch permutations) in order.
    generator = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    task_stats = TaskTimeStats()
    for t in tasks:
        task_stats.register(t, cfg.rollout.max_steps)
    start_iter = 0
    logger = MetricsLogger(out, "rl") if ctx.is_main else None
    if resume:
        state = load_train_state(
            ckpt_dir / "train_state",
            optimizer,
            torch_generators={"main": generator},
            numpy_rngs={"main": rng},
        )
        meta = state.meta
        start_iter = int(meta["iteration"]) + 1
        task_stats = TaskTimeStats.from_json(meta["task_stats"])
        if logger is not None:
            logger.truncate_after(start_iter)
    venv = make_vector_env(
        suite_for(cfg.tasks, cfg.suite), cfg.num_slots, cfg.workers, cfg.image_size, ray=cfg.ray
    )
    try:
        runner = build_runner(
            model,
            loaded.norm,
            venv.spec,
            cfg.rollout.h_exec,
            cfg.rollout.share_prefix,
            tokenizer_path=loaded.tokenizer_path,
        )
        sampler = runner.sampler(
            "sde", cfg.rollout.num_steps, cfg.rollout.noise_level, cfg.rollout.stochastic, cfg.rollout.window
        )
        eval_cfg = EvalConfig(
            episodes_per_task=max(1, cfg.eval_episodes),  # unused with --eval-episodes 0
            num_steps=cfg.rollout.num_steps,
            max_steps=cfg.rollout.max_steps,
        )
        flat = cfg.rollout.mode == "flat"
        if start_iter == 0 and cfg.calibration_episodes > 0 and cfg.rollout.mode == "tree":
            # The SFT policy's success lengths seed C_med (branch points) and T_min (reward calibration).
            base = evaluate_sharded(
                ctx, runner, venv, tasks, replace(eval_cfg, episodes_per_task=cfg.calibration_episodes)
            )
            for t, r in base.tasks.items():
                task_stats.update(t, np.array(r.success_flags), np.array(r.lengths, dtype=float), cfg.reward)
            if logger is not None:
                logger.log(0, {**eval_metrics(base), "env_steps": 0, "env_steps_flat_equiv": 0})
        cum_env = cum_flat = 0.0
        if resume:
            cum_env = float(meta.get("cum_env_steps", 0.0))
            cum_flat = float(meta.get("cum_env_steps_flat", 0.0))
        with progress_bar(console, disable=not ctx.is_main) as progress:
            it_task = progress.add_task("GRPO", total=cfg.iterations, completed=start_iter)
            t_run = time.perf_counter()
            done_iters = start_iter
            for it in range(start_iter, cfg.iterations):
                over = cfg.max_minutes is not None and time.perf_counter() - t_run > 60.0 * cfg.max_minutes
                if ctx.any_true(over):  # all ranks stop together
                    break
                counts = plan_task_counts(
                    tasks, cfg.groups_per_task, task_stats.p_hat, cfg.task_sampling, rng
                )
                stride = max(counts) if cfg.task_sampling.mode == "uniform" else sum(counts)
                plan = group_plan(tasks, counts, it, stride)
                cmed = c_med_by_task(task_stats, tasks, cfg.rollout.h_exec, cfg.rollout.max_steps)
                model.eval()
                first = 0
                if wave_rng:
                    batch, first = collect_waves(
                        runner, venv, plan, cfg, it, ctx, cmed, keep_caches=prefix_is_frozen
                    )
                else:
                    batch = collect_groups(
                        runner, venv, plan, cfg.rollout, rng, generator, cmed, keep_caches=prefix_is_frozen
                    )
                mine = group_outcomes(batch)
                branch_nodes = [len(g.tree.branch_nodes()) for g in batch.groups]
                shared = ctx.all_gather_object((mine, branch_nodes))  # every rank's groups, plan order
                outcomes = [o for part, _ in shared for o in part]
                scored = score_batch(
                    batch, cfg.reward, task_stats, cfg.advantage, flat, outcomes, first_group=first
                )
                before = ode_probe(model, batch, sampler)
                model.train()
                t0 = time.perf_counter()
                upd = grpo_update(
                    model,
                    optimizer,
                    groups,
                    batch,
                    scored.advantages,
                    scored.weights,
                    scored.trainable,
                    sampler,
                    cfg.grpo,
                    cfg.grad_clip,
                    prefix_is_frozen,
                    generator,
                    ref_model,
                )
                t_update = time.perf_counter() - t0
                model.eval()
                after = ode_probe(model, batch, sampler)
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
                cum_env += rollout_stats["env_steps"]
                cum_flat += rollout_stats["env_steps_flat_equiv"]
                metrics.update({f"rollout/{k}": v for k, v in rollout_stats.items()})
                metrics.update(
                    {"env_steps": cum_env, "env_steps_flat_equiv": cum_flat, "time/update": t_update}
                )
                metrics["time/rollout"] = rollout_stats["time/rollout"]
                succ_by_task: dict[str, list[bool]] = {}
                for o in outcomes:
                    succ_by_task.setdefault(o.task, []).extend(o.successes.tolist())
                for t, s in succ_by_task.items():
                    metrics[f"train_success/{t}"] = float(np.mean(s))
                for t, c in zip(tasks, counts):
                    metrics[f"groups_of/{t}"] = float(c)
                metrics["train_success_avg"] = float(np.mean([np.mean(s) for s in succ_by_task.values()]))
                metrics["tree/leaves_per_group"] = float(np.mean([len(o.successes) for o in outcomes]))
                metrics["tree/branch_nodes"] = float(np.mean([n for _, part in shared for n in part]))
                metrics["tree/prefix_forwards_saved"] = rollout_stats["prefix_forwards_saved"]
                if cfg.eval_every and (it + 1) % cfg.eval_every == 0 and it + 1 < cfg.iterations:
                    metrics.update(eval_metrics(evaluate_sharded(ctx, runner, venv, tasks, eval_cfg)))
                done_iters = it + 1
                if logger is None:  # ranks > 0 write nothing
                    continue
                logger.log(it + 1, metrics)
                spec = TrainStateSpec(
                    optimizer,
                    {},
                    {
                        "iteration": it,
                        "task_stats": task_stats.to_json(),
                        "cum_env_steps": cum_env,
                        "cum_env_steps_flat": cum_flat,
                    },
                    torch_generators={"main": generator},
                    numpy_rngs={"main": rng},
                )
                extra = {
                    **(loaded.extra or {}),
                    "stage": "rl",
                    "iteration": it,
                    "rl_config": asdict(cfg),
                    "init_sha256": _init_hash(Path(cfg.init)),
                }
                tok = loaded.tokenizer_path
                save_checkpoint(ckpt_dir, model, loaded.norm, extra=extra, train_state=spec, tokenizer=tok)
                progress.update(
                    it_task,
                    advance=1,
                    description=f"GRPO train {100 * metrics['train_success_avg']:.0f}% "
                    f"env {int(cum_env)} steps",
                )
        summary: dict = {"iterations": done_iters, "env_steps": cum_env, "env_steps_flat_equiv": cum_flat}
        if cfg.eval_episodes > 0:
            final = evaluate_sharded(ctx, runner, venv, tasks, eval_cfg)
            summary["eval"] = final.to_json()
            if logger is not None:
                write_json_atomic(out / "eval_final.json", final.to_json())
                logger.log(done_iters, eval_metrics(final))
                if console is not None:
                    console.print(markdown_table(final, "GRPO policy (ODE)"))
        if ctx.is_main:
            write_json_atomic(out / "rl_summary.json", summary)
        ctx.barrier()  # on return, every rank sees rank 0's files
        return summary
    finally:
        venv.close()
        if logger is not None:
            logger.close()
