"""Task-wise GRPO: the loop around the iterations, and its bookkeeping.

Each iteration plans `groups_per_task * len(tasks)` groups over the tasks (`plan_task_counts`,
`group_plan`) and runs `train.iteration.iteration`: collect (rollout/collector.py), score
(rl/scoring.py), update (rl/learner.py). This module keeps what lies around it: checkpoints, the
evaluation cadence, the metrics log and resuming.

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
from z1.distributed.ddp import DistContext
from z1.distributed.waves import check_waves, evaluate_sharded
from z1.errors import RunDirError, check_float, check_int
from z1.evaluate import EVAL_SEED_BASE, EvalConfig, eval_metrics, markdown_table
from z1.fsutil import check_run_dir, recover_directory, write_json_atomic
from z1.models.checkpoint import load_checkpoint, read_config, save_checkpoint
from z1.rl.grpo import GRPOConfig
from z1.rl.learner import Learner
from z1.rl.lora import merged_copy
from z1.rl.params import SelectiveConfig
from z1.rl.reward import RewardConfig, TaskTimeStats
from z1.rl.scoring import AdvantageConfig
from z1.rl.task_sampling import TaskSamplingConfig, plan_task_counts
from z1.rollout.collector import RolloutConfig
from z1.train.iteration import IterationConfig, iteration
from z1.train.metrics import MetricsLogger
from z1.train.runinfo import write_run_config
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
    """Env worker processes (0: in-process, sequential); with --ray, Ray actors (0: one per cluster CPU)."""
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
    wandb: Literal["off", "online", "offline"] = "off"
    """Mirror the metrics to Weights & Biases (project z1; offline writes under `out/wandb` and needs no
    network; needs `pip install -e '.[wandb]'`)."""
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
    if ro.max_steps < ro.h_exec:
        raise ConfigError(f"--rollout.max-steps {ro.max_steps} is shorter than one chunk (--rollout.h-exec)")


def check_seed_ranges(cfg: RLConfig, num_tasks: int) -> None:
    """Training groups must never start from an evaluation seed: iteration i uses seeds up to
    TRAIN_SEED_BASE + (i + 1) * num_tasks * stride (stride = groups_per_task, or groups_per_task * num_tasks
    when groups are shared out by uncertainty), which has to stay below EVAL_SEED_BASE."""
    per_task = cfg.groups_per_task * (num_tasks if cfg.task_sampling.mode == "uncertain" else 1)
    last = TRAIN_SEED_BASE + cfg.iterations * num_tasks * per_task
    if last > EVAL_SEED_BASE:
        raise ConfigError(
            f"{cfg.iterations} iterations of {num_tasks} tasks x {per_task} seeds would use training seeds "
            f"up to {last}, past the first evaluation seed {EVAL_SEED_BASE}: the policy would be evaluated "
            "on initial states it trained on. Lower --iterations or --groups-per-task (or use "
            "--task-sampling.mode uniform)"
        )


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
    check_seed_ranges(cfg, len(tasks))
    if ctx.is_distributed:  # fail before any work, on every rank alike
        check_waves(cfg.groups_per_task * len(tasks), cfg.num_slots, cfg.rollout.group_size, ctx.world_size)
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
    if resume and cfg.selective.mode == "lora":
        raise ConfigError(
            f"--resume: {ckpt_dir} holds the LoRA run's merged weights, from which its adapters cannot be "
            "separated again; start a new run from it (--init) instead"
        )
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
    # Every rank keeps these in lockstep: the same draws (task counts, minibatch permutations) in order.
    generator = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    learner = Learner.create(model, cfg.selective, cfg.lr, cfg.grpo, cfg.grad_clip, generator, ctx, ref_model)
    task_stats = TaskTimeStats()
    for t in tasks:
        task_stats.register(t, cfg.rollout.max_steps)
    start_iter = 0
    logger = MetricsLogger(out, "rl", wandb=cfg.wandb, config=asdict(cfg)) if ctx.is_main else None
    if ctx.is_main:
        write_run_config(out, "rl", cfg, resumed=resume)
    if resume:
        state = load_train_state(
            ckpt_dir / "train_state",
            learner.optimizer,
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
        eval_cfg = EvalConfig(
            episodes_per_task=max(1, cfg.eval_episodes),  # unused with --eval-episodes 0
            num_steps=cfg.rollout.num_steps,
            max_steps=cfg.rollout.max_steps,
        )
        it_cfg = IterationConfig(cfg.rollout, cfg.reward, cfg.advantage, seed=cfg.seed, wave_rng=wave_rng)
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
                res = iteration(learner, runner, venv, plan, task_stats, it_cfg, rng, index=it, c_med=cmed)
                task_stats = res.task_stats
                cum_env += res.env_steps
                cum_flat += res.env_steps_flat
                metrics = {**res.metrics, "env_steps": cum_env, "env_steps_flat_equiv": cum_flat}
                for t, c in zip(tasks, counts):
                    metrics[f"groups_of/{t}"] = float(c)
                if cfg.eval_every and (it + 1) % cfg.eval_every == 0 and it + 1 < cfg.iterations:
                    metrics.update(eval_metrics(evaluate_sharded(ctx, runner, venv, tasks, eval_cfg)))
                done_iters = it + 1
                if logger is None:  # ranks > 0 write nothing
                    continue
                logger.log(it + 1, metrics)
                spec = TrainStateSpec(
                    learner.optimizer,
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
                # LoRA adapters are folded into their base weights in the saved policy, so the checkpoint
                # is a plain pi0.5 that z1 eval / sft / rl load (the run itself keeps training the adapters).
                saved = merged_copy(model) if cfg.selective.mode == "lora" else model
                save_checkpoint(ckpt_dir, saved, loaded.norm, extra=extra, train_state=spec, tokenizer=tok)
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
        if logger is not None:
            final_numbers = {"env_steps": cum_env, "iterations": done_iters}
            if "eval" in summary:
                final_numbers.update({f"success/{t}": r["rate"] for t, r in summary["eval"]["tasks"].items()})
                final_numbers["success_avg"] = summary["eval"]["average"]
            logger.hparams(asdict(cfg), final_numbers)
        ctx.barrier()  # on return, every rank sees rank 0's files
        return summary
    finally:
        venv.close()
        if logger is not None:
            logger.close()
