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
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from z1.distributed.ddp import allreduce_grads
from z1.evaluate import EvalConfig, eval_metrics, evaluate, markdown_table
from z1.fsutil import write_json_atomic
from z1.models.checkpoint import TrainStateSpec, load_checkpoint, load_train_state, save_checkpoint
from z1.models.sampling import exec_mask, recompute_logprob, sample_chunk, time_grid
from z1.rl.grpo import (
    GRPOConfig,
    gaussian_kl,
    grpo_loss,
    kl_early_stop,
    minibatch_indices,
    total_term_weight,
)
from z1.rl.params import SelectiveConfig, apply_selective, frozen_prefix, grad_norms_by_group
from z1.rl.reward import RewardConfig, TaskTimeStats
from z1.rl.scoring import AdvantageConfig, score_batch
from z1.rl.task_sampling import TaskSamplingConfig, plan_task_counts
from z1.rollout.collector import RolloutBatch, RolloutConfig, collect_groups
from z1.train.metrics import MetricsLogger
from z1.train.setup import build_runner, make_vector_env, progress_bar, resolve_tasks, suite_for

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
    """Transition std s_k of the Flow-SDE at each stored step (algorithms.md A.2): (n, j) -> (n, j)."""
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
    between the current and the reference step means (algorithms.md B.4) to the loss.
    """
    if cfg.kl_beta > 0 and ref_model is None:
        raise ValueError("GRPOConfig.kl_beta > 0 needs the reference policy (ref_model)")
    idx_all = torch.as_tensor(np.flatnonzero(trainable), dtype=torch.long)
    out: dict[str, float] = {"update/terms": float(idx_all.numel()), "update/steps": 0.0}
    if idx_all.numel() == 0:
        return out
    adv = torch.as_tensor(advantages, dtype=torch.float32)
    wts = torch.as_tensor(weights, dtype=torch.float32)
    valid_all = torch.ones_like(batch.logprobs, dtype=torch.bool)
    agg: dict[str, list[float]] = {}
    epochs_run = 0
    stop = False
    for epoch in range(cfg.epochs):
        for mb, local in enumerate(minibatch_indices(int(idx_all.numel()), cfg.minibatches, generator)):
            idx = idx_all[local]
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
                    _, ref_means = recompute_logprob(
                        ref_model, ref_in, chains, step_ids, sampler, cache=cache
                    )
                mask = exec_mask(chains.shape[2], chains.shape[3], sampler.h_exec, sampler.d_exec)
                ref_kl = gaussian_kl(means, ref_means, step_std(step_ids, sampler), mask)  # (n, j)
            total = total_term_weight(wts[idx], valid_all[idx])
            loss, st = grpo_loss(
                new_lp, batch.logprobs[idx], adv[idx], wts[idx], valid_all[idx], cfg, total, ref_kl=ref_kl
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            st = allreduce_grads(model.parameters(), total, st)  # DDP: global term-weighted mean; else no-op
            gn = grad_norms_by_group(groups)
            torch.nn.utils.clip_grad_norm_([p for ps in groups.params.values() for p in ps], grad_clip)
            optimizer.step()
            out["update/steps"] += 1
            if epoch == 0 and mb == 0:
                out["first_mb/log_ratio_abs_mean"] = float(
                    (new_lp.detach() - batch.logprobs[idx]).abs().mean()
                )
            for k, v in {**st, **gn}.items():
                agg.setdefault(k, []).append(float(v))
            if kl_early_stop(st.get("approx_kl/k3", 0.0), cfg):
                stop = True
                break
        epochs_run += 1
        if stop:
            break
    out.update({k: float(np.mean(v)) for k, v in agg.items()})
    out["update/epochs_run"] = float(epochs_run)
    out["update/early_stop"] = float(stop)
    return out


def run_rl(cfg: RLConfig, console=None) -> dict:
    """The GRPO loop. Returns a summary dict (also written to `out/rl_summary.json`)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / "rl_ckpt"
    resume = cfg.resume and (ckpt_dir / "model.safetensors").exists()
    loaded = load_checkpoint(ckpt_dir if resume else Path(cfg.init))
    model = loaded.model
    if loaded.norm is None:
        raise ValueError(
            f"checkpoint {cfg.init} has no normalization stats (norm_stats.json); run `z1 sft` first"
        )
    ref_model = None
    if cfg.grpo.kl_beta > 0:  # the policy GRPO starts from anchors the update (B.4)
        ref_model = copy.deepcopy(load_checkpoint(Path(cfg.init)).model).eval().requires_grad_(False)
    sel = SelectiveConfig(**{**asdict(cfg.selective), "lr_expert": cfg.lr})
    groups = apply_selective(model, sel)
    prefix_is_frozen = frozen_prefix(model, sel)
    optimizer = torch.optim.AdamW(groups.optimizer_groups(), betas=(0.9, 0.95), eps=1e-8)
    tasks = resolve_tasks(cfg.tasks)
    generator = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    task_stats = TaskTimeStats()
    for t in tasks:
        task_stats.register(t, cfg.rollout.max_steps)
    start_iter = 0
    logger = MetricsLogger(out, "rl")
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
            episodes_per_task=cfg.eval_episodes,
            num_steps=cfg.rollout.num_steps,
            max_steps=cfg.rollout.max_steps,
        )
        flat = cfg.rollout.mode == "flat"
        if start_iter == 0 and cfg.calibration_episodes > 0 and cfg.rollout.mode == "tree":
            # The SFT policy's success lengths seed C_med (branch points) and T_min (reward calibration).
            base = evaluate(
                runner, venv, tasks, replace(eval_cfg, episodes_per_task=cfg.calibration_episodes)
            )
            for t, r in base.tasks.items():
                task_stats.update(t, np.array(r.success_flags), np.array(r.lengths, dtype=float), cfg.reward)
            logger.log(0, {**eval_metrics(base), "env_steps": 0, "env_steps_flat_equiv": 0})
        cum_env = cum_flat = 0.0
        if resume:
            cum_env = float(meta.get("cum_env_steps", 0.0))
            cum_flat = float(meta.get("cum_env_steps_flat", 0.0))
        with progress_bar(console) as progress:
            it_task = progress.add_task("GRPO", total=cfg.iterations, completed=start_iter)
            t_run = time.perf_counter()
            done_iters = start_iter
            for it in range(start_iter, cfg.iterations):
                if cfg.max_minutes is not None and time.perf_counter() - t_run > 60.0 * cfg.max_minutes:
                    break
                counts = plan_task_counts(
                    tasks, cfg.groups_per_task, task_stats.p_hat, cfg.task_sampling, rng
                )
                stride = max(counts) if cfg.task_sampling.mode == "uniform" else sum(counts)
                plan = group_plan(tasks, counts, it, stride)
                cmed = c_med_by_task(task_stats, tasks, cfg.rollout.h_exec, cfg.rollout.max_steps)
                model.eval()
                batch = collect_groups(
                    runner, venv, plan, cfg.rollout, rng, generator, cmed, keep_caches=prefix_is_frozen
                )
                scored = score_batch(batch, cfg.reward, task_stats, cfg.advantage, flat)
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
                if before is not None and after is not None:  # RMS move of the eval-time actions
                    upd["update/ode_action_shift"] = float((after - before).pow(2).mean().sqrt())
                cum_env += batch.stats["env_steps"]
                cum_flat += batch.stats["env_steps_flat_equiv"]
                metrics: dict[str, float] = {**scored.stats, **upd}
                metrics.update({f"rollout/{k}": v for k, v in batch.stats.items()})
                metrics.update(
                    {"env_steps": cum_env, "env_steps_flat_equiv": cum_flat, "time/update": t_update}
                )
                metrics["time/rollout"] = batch.stats["time/rollout"]
                succ_by_task: dict[str, list[bool]] = {}
                for g in batch.groups:
                    _, s, _ = g.leaf_outcomes()
                    succ_by_task.setdefault(g.task, []).extend(s.tolist())
                for t, s in succ_by_task.items():
                    metrics[f"train_success/{t}"] = float(np.mean(s))
                for t, c in zip(tasks, counts):
                    metrics[f"groups_of/{t}"] = float(c)
                metrics["train_success_avg"] = float(np.mean([np.mean(s) for s in succ_by_task.values()]))
                metrics["tree/leaves_per_group"] = float(
                    np.mean([len(g.tree.leaves()) for g in batch.groups])
                )
                metrics["tree/branch_nodes"] = float(
                    np.mean([len(g.tree.branch_nodes()) for g in batch.groups])
                )
                metrics["tree/prefix_forwards_saved"] = batch.stats["prefix_forwards_saved"]
                if cfg.eval_every and (it + 1) % cfg.eval_every == 0 and it + 1 < cfg.iterations:
                    metrics.update(eval_metrics(evaluate(runner, venv, tasks, eval_cfg)))
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
                extra = {**(loaded.extra or {}), "stage": "rl", "iteration": it}
                tok = loaded.tokenizer_path
                save_checkpoint(ckpt_dir, model, loaded.norm, extra=extra, train_state=spec, tokenizer=tok)
                done_iters = it + 1
                progress.update(
                    it_task,
                    advance=1,
                    description=f"GRPO train {100 * metrics['train_success_avg']:.0f}% "
                    f"env {int(cum_env)} steps",
                )
        summary: dict = {"iterations": done_iters, "env_steps": cum_env, "env_steps_flat_equiv": cum_flat}
        if cfg.eval_episodes > 0:
            final = evaluate(runner, venv, tasks, eval_cfg)
            write_json_atomic(out / "eval_final.json", final.to_json())
            logger.log(done_iters, eval_metrics(final))
            summary["eval"] = final.to_json()
            if console is not None:
                console.print(markdown_table(final, "GRPO policy (ODE)"))
        write_json_atomic(out / "rl_summary.json", summary)
        return summary
    finally:
        venv.close()
        logger.close()
