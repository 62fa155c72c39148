"""Supervised flow-matching fine-tuning (SFT) on a LeRobot dataset.

Training samples are (observation at frame i, the H actions i..i+H-1 of the same episode), padded and
masked at episode ends. AdamW with linear warmup + cosine decay, gradient clipping, optional EMA, optional
random-shift image augmentation, optional bf16 autocast. Checkpoints (model + normalization + optimizer +
RNG states) are written atomically every `ckpt_every` steps; `--resume` continues bit-exactly on CPU.

Data-parallel under `torchrun` (z1.distributed.ddp): every rank draws the same global batch and its
random numbers (sample ids, shifts, flow noise and time) from the shared seed, computes the loss of its
contiguous share, and the gradients are averaged weighted by each share's action entries, so a step equals
the single-process step on the global batch. Rank 0 alone writes checkpoints, metrics and evaluations.
"""

from __future__ import annotations

import json
import tempfile
import time
from contextlib import ExitStack, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from z1.config import ConfigError, PolicyConfig, policy_preset
from z1.data.chunks import ChunkDataset
from z1.data.errors import DatasetError
from z1.data.lerobot import check_compatible, check_images, open_dataset
from z1.data.mapping import DataConfig
from z1.data.normalize import normalization_from_dataset
from z1.data.robomimic import default_layout, is_hdf5_path, open_robomimic
from z1.distributed.ddp import DistContext, allreduce_grads
from z1.errors import RunDirError, TrainingError, check_float, check_int
from z1.fsutil import check_run_dir, recover_directory
from z1.models.checkpoint import load_checkpoint, save_checkpoint
from z1.models.pi05 import Pi05Policy, PolicyInputs
from z1.models.tokenizer import make_tokenizer, tokenize_prompt
from z1.models.transforms import images_to_model
from z1.train.metrics import MetricsLogger
from z1.train.runinfo import write_run_config
from z1.train.schedule import EMA, warmup_cosine
from z1.train.setup import progress_bar
from z1.train.state import TrainStateSpec, load_train_state


@dataclass(frozen=True)
class SFTConfig:
    """Flow-matching SFT of a pi0.5-style policy on a LeRobot dataset."""

    dataset: str
    """LeRobotDataset directory (v3.0 or v2.1), e.g. the output of `z1 collect`, or a robomimic HDF5 file
    (*.hdf5, *.h5; converted to a temporary LeRobot dataset first, cameras named after their obs keys
    without `_image`; --data.state-key may name the obs keys of the state)."""
    data: DataConfig = field(default_factory=DataConfig)
    """How the dataset's cameras and state/action keys map onto the policy's, and which statistics
    normalize them."""
    out: str = "runs/sft"
    """Run directory: checkpoint in `out/sft_ckpt`, metrics in `out/sft_metrics.jsonl`."""
    policy: str = "laptop"
    """Policy geometry when starting from scratch: laptop (the 2-core default: 64 px, conv stem, 0.4M
    parameters), tiny (the tests' model), small (a GPU's step up) or pi05 (the 3.35B geometry; start
    from an imported checkpoint with --init instead to get its weights)."""
    init: str | None = None
    """Start from this checkpoint (z1 or `z1 import`ed) instead of a fresh model."""
    steps: int = 2000
    """Optimizer steps."""
    batch_size: int = 64
    """Samples per step."""
    lr: float = 3e-4
    """Peak learning rate (pi0.5 fine-tuning uses 2.5e-5)."""
    final_lr: float = 3e-5
    """Learning rate at the end of the cosine decay."""
    warmup: int = 100
    """Linear warmup steps."""
    weight_decay: float = 1e-4
    """AdamW weight decay (not applied to norms, biases and position embeddings)."""
    grad_clip: float = 1.0
    """Global grad-norm clip."""
    ema: float = 0.0
    """EMA decay of the weights (0 disables); with EMA the checkpoint stores the EMA weights."""
    augment: bool = False
    """Random-shift image augmentation (pad 4 px, random crop)."""
    bf16: bool = False
    """bf16 autocast for the forward pass (slower than fp32 on CPUs without native bf16)."""
    norm: Literal["quantile", "meanstd"] = "quantile"
    """Normalization of state and actions (quantile is pi0.5's default)."""
    ckpt_every: int = 500
    """Checkpoint period in steps (atomic; the last step always writes one)."""
    log_every: int = 20
    """Logging period in steps."""
    threads: int = 2
    """Torch threads."""
    seed: int = 0
    """Seed of model init, batch order, flow noise/time and augmentation."""
    resume: bool = False
    """Continue from `out/sft_ckpt` if it exists (bit-exact on CPU)."""
    overwrite: bool = False
    """Replace an earlier SFT run in `out` (its checkpoint and metrics) instead of refusing to start."""
    stop_after: int | None = None
    """Stop (with a checkpoint) after this many steps; the schedule still spans `steps`."""
    eval_every: int = 0
    """Evaluate the current weights every N steps (0 disables; needs --eval-tasks)."""
    eval_tasks: str | None = None
    """Task set or comma-separated names for the periodic evaluation."""
    eval_episodes: int = 10
    """Episodes per task of the periodic evaluation."""
    ray: Literal["local", "auto"] | None = None
    """Run the periodic evaluation's env slots on Ray actors: local starts a cluster on this machine,
    auto joins a running one (`ray start`); needs `pip install -e '.[ray]'`."""
    wandb: Literal["off", "online", "offline"] = "off"
    """Mirror the metrics to Weights & Biases (project z1; offline writes under `out/wandb` and needs no
    network; needs `pip install -e '.[wandb]'`)."""

    def __post_init__(self) -> None:
        """Every numeric and cross-field limit, before any file is read or written."""
        check_int(self.steps, "--steps", low=1)
        check_int(self.batch_size, "--batch-size", low=1)
        check_float(self.lr, "--lr", low=0.0, low_open=True)
        check_float(self.final_lr, "--final-lr", low=0.0)
        check_int(self.warmup, "--warmup", low=0)
        check_float(self.weight_decay, "--weight-decay", low=0.0)
        check_float(self.grad_clip, "--grad-clip", low=0.0, low_open=True)
        check_float(self.ema, "--ema", low=0.0, high=1.0, high_open=True)
        check_int(self.ckpt_every, "--ckpt-every", low=1)
        check_int(self.log_every, "--log-every", low=1)
        check_int(self.threads, "--threads", low=1)
        check_int(self.seed, "--seed", low=0)
        check_int(self.eval_every, "--eval-every", low=0)
        check_int(self.eval_episodes, "--eval-episodes", low=1)
        if self.stop_after is not None:
            check_int(self.stop_after, "--stop-after", low=1, high=self.steps)
        if self.norm not in ("quantile", "meanstd"):
            raise ConfigError(f"--norm must be quantile or meanstd, got {self.norm!r}")
        if self.eval_every and not self.eval_tasks:
            raise ConfigError(f"--eval-every {self.eval_every} needs --eval-tasks (a task set or names)")
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other; pass one of them")
        if not str(self.dataset).strip():
            raise ConfigError("--dataset is empty; pass a LeRobot dataset directory or a robomimic .hdf5")


def camera_images_to_model(images: torch.Tensor, size: int) -> torch.Tensor:
    """(b, n, y, x, 3) uint8 -> (b, n, 3, size, size) float in [-1, 1]."""
    b, n = images.shape[:2]
    return images_to_model(images.reshape(b * n, *images.shape[2:]), size).reshape(b, n, 3, size, size)


def shift_offsets(b: int, n: int, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop offsets of `random_shift` for b samples of n cameras: (b, n, 2) int64 in [0, 2 pad]."""
    return torch.randint(0, 2 * pad + 1, (b * n, 2), generator=generator).reshape(b, n, 2)


def random_shift(images: torch.Tensor, pad: int, offsets: torch.Tensor) -> torch.Tensor:
    """DrQ-style augmentation: replicate-pad by `pad` px and crop back at `offsets` (b, n, 2) per image."""
    b, n, c, y, x = images.shape
    flat = F.pad(images.reshape(b * n, c, y, x), (pad, pad, pad, pad), mode="replicate")
    offs = offsets.reshape(b * n, 2).tolist()
    out = torch.stack([flat[i, :, oy : oy + y, ox : ox + x] for i, (oy, ox) in enumerate(offs)])
    return out.reshape(b, n, c, y, x)


class SFTData:
    """Chunk samples plus pre-tokenized prompts (tokenization happens once, not per step)."""

    def __init__(self, chunks: ChunkDataset, tokenizer, max_len: int, image_size: int) -> None:
        self.chunks = chunks
        self.image_size = image_size
        n = len(chunks)
        self.tokens = torch.zeros((n, max_len), dtype=torch.long)
        self.token_mask = torch.zeros((n, max_len), dtype=torch.bool)
        cache: dict[tuple, tuple] = {}
        for i in range(n):
            instr, state = chunks.prompt_inputs(i)
            key = (instr, np.asarray(state, dtype=np.float32).tobytes())
            if key not in cache:
                cache[key] = tokenize_prompt(tokenizer, instr, state, max_len)
            ids, mask = cache[key]
            self.tokens[i] = torch.as_tensor(ids)
            self.token_mask[i] = torch.as_tensor(mask)

    def __len__(self) -> int:
        return len(self.chunks)

    def batch(self, idx: torch.Tensor) -> tuple[PolicyInputs, torch.Tensor, torch.Tensor]:
        b = self.chunks.get_batch(idx.numpy())
        images = camera_images_to_model(torch.as_tensor(b["images"]), self.image_size)  # (b, n, 3, y, x)
        inputs = PolicyInputs(
            images=images,
            image_mask=torch.ones(images.shape[:2], dtype=torch.bool),
            tokens=self.tokens[idx],
            token_mask=self.token_mask[idx],
        )
        return inputs, torch.as_tensor(b["actions"]), torch.as_tensor(b["action_mask"])


def _periodic_eval(
    model: Pi05Policy, norm, cfg: SFTConfig, console, tokenizer: Path | None
) -> dict[str, float]:
    from z1.evaluate import EvalConfig, eval_metrics, evaluate
    from z1.train.setup import build_runner, make_vector_env, resolve_tasks, suite_for

    assert cfg.eval_tasks is not None
    model.eval()
    tasks = resolve_tasks(cfg.eval_tasks)
    venv = make_vector_env(
        suite_for(cfg.eval_tasks), max(2, 2 * len(tasks)), 2, model.config.vision.image_size, ray=cfg.ray
    )
    try:
        runner = build_runner(
            model, norm, venv.spec, h_exec=max(1, model.config.action_horizon // 2), tokenizer_path=tokenizer
        )
        # K as the checkpoint's source samples (an imported pi0.5's num_inference_steps), else the laptop
        # presets' K = 5.
        k = norm.conventions.num_inference_steps or 5
        res = evaluate(runner, venv, tasks, EvalConfig(episodes_per_task=cfg.eval_episodes, num_steps=k))
    finally:
        venv.close()
    return eval_metrics(res)


# Fields a resumed run must share with the run it continues (the others may change on resume).
RESUME_FIELDS = (
    "dataset",
    "data",
    "policy",
    "init",
    "batch_size",
    "lr",
    "final_lr",
    "warmup",
    "weight_decay",
)
RESUME_FIELDS += ("grad_clip", "ema", "augment", "bf16", "norm", "seed")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def resume_mismatches(saved: dict, cfg: dict, fields: tuple[str, ...]) -> list[str]:
    """'--flag: saved X, now Y' for every field in `fields` (nested dicts flattened with dots) that
    differs between the saved run config and this one."""

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
        return out

    a, b = flat({k: saved[k] for k in fields if k in saved}), flat({k: cfg[k] for k in fields if k in saved})
    return [
        f"{_flag(k)}: {a.get(k)!r} in the run, now {b.get(k)!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]


def _open_sft_dataset(cfg: SFTConfig, stack: ExitStack):
    """The LeRobot dataset of `cfg.dataset`; a robomimic HDF5 file is converted first into a temporary
    directory that `stack` removes when training ends."""
    if not is_hdf5_path(cfg.dataset):
        path = Path(cfg.dataset)
        if path.is_file():
            raise DatasetError(
                f"--dataset {path} is a file; SFT reads a LeRobot dataset directory or a robomimic HDF5 "
                "file named *.hdf5 / *.h5"
            )
        return open_dataset(path, cfg.data)
    cams, state_keys = default_layout(cfg.dataset)
    data = cfg.data
    if data.state_keys() != ("observation.state",):  # the HDF5 obs keys that make up the state
        state_keys, data = data.state_keys(), replace(data, state_key="observation.state")
    if data.action_keys() != ("action",):
        raise DatasetError(
            f"--data.action-key {data.action_key!r}: a robomimic file has one action array (data/demo_N/"
            "actions); leave --data.action-key out"
        )
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="z1-hdf5-")))
    with open_robomimic(cfg.dataset, camera_map=cams, state_keys=state_keys) as rm:
        root = rm.to_lerobot(tmp / "dataset")
    return open_dataset(root, data)


def run_sft(cfg: SFTConfig, console=None, geometry: PolicyConfig | None = None) -> dict:
    """Train; `geometry` (programmatic callers, e.g. bench/sft.py) replaces the `cfg.policy` preset of a
    fresh model."""
    with ExitStack() as stack:
        return _run_sft(cfg, console, geometry, stack)


def _check_dims(ds, norm, where: str) -> None:
    """The dataset's state/action dims against the normalization statistics of the starting checkpoint."""
    for name, got, st, flag in (
        ("state", ds.state_dim, norm.state, "--data.state-key"),
        ("action", ds.action_dim, norm.action, "--data.action-key"),
    ):
        want = int(np.asarray(st.mean).reshape(-1).shape[0])
        if got != want:
            raise DatasetError(
                f"{ds.root}: the dataset's {name} has {got} dims but {where} was trained on {want}; "
                f"choose the {name} with {flag}, or start from another checkpoint (--init) or from scratch"
            )


def _run_sft(cfg: SFTConfig, console, geometry: PolicyConfig | None, stack: ExitStack) -> dict:
    ctx = DistContext.init_from_env()  # one process unless launched by torchrun
    if cfg.batch_size < ctx.world_size:
        raise ConfigError(
            f"--batch-size {cfg.batch_size} is smaller than the {ctx.world_size} data-parallel ranks; "
            "each rank needs at least one sample"
        )
    out = Path(cfg.out)
    ckpt_dir = out / "sft_ckpt"
    if ctx.is_main:
        recover_directory(ckpt_dir)  # a save killed between its two renames left only .sft_ckpt.old-*
    ctx.barrier()
    has_ckpt = (ckpt_dir / "model.safetensors").exists()
    if ctx.is_main:
        check_run_dir(out, "sft", resume=cfg.resume, overwrite=cfg.overwrite)
        if cfg.resume and not has_ckpt and (out / "sft_metrics.jsonl").exists():
            raise RunDirError(
                f"--resume: {out} has sft_metrics.jsonl but no checkpoint {ckpt_dir}; there is nothing to "
                "continue from. Pass --overwrite to start the run again, or choose another --out"
            )
    resume = cfg.resume and has_ckpt
    init_loaded = load_checkpoint(Path(cfg.init)) if cfg.init else None  # also: a bad --init fails early
    if resume:
        extra_path = ckpt_dir / "extra.json"
        saved = json.loads(extra_path.read_text()).get("sft_config") if extra_path.is_file() else None
        if isinstance(saved, dict):
            diff = resume_mismatches(saved, asdict(cfg), RESUME_FIELDS)
            if diff:
                raise ConfigError(
                    f"--resume: {ckpt_dir} was trained with other settings: "
                    + "; ".join(diff)
                    + ". Resume with the run's settings, or start a new run (another --out, or --overwrite)"
                )
    ds = _open_sft_dataset(cfg, stack)
    tokenizer: Path | None = None  # a SentencePiece file stored with the checkpoint we start from
    if resume:
        loaded = load_checkpoint(ckpt_dir)
        model, norm, tokenizer = loaded.model, loaded.norm, loaded.tokenizer_path
        fresh = geometry or policy_preset(cfg.policy)
        expected = init_loaded.config.name if init_loaded is not None else fresh.name
        if model.config.name != expected:
            raise ConfigError(
                f"{ckpt_dir / 'config.json'}: the policy is {model.config.name!r} but this run asks for "
                f"{expected!r}; resume with the same --policy/--init, or choose another --out"
            )
        if norm is None:
            raise ConfigError(f"{ckpt_dir}: has no norm_stats.json; it was not written by `z1 sft`")
        _check_dims(ds, norm, f"the checkpoint {ckpt_dir}")
    elif init_loaded is not None:
        loaded = init_loaded
        if loaded.norm is not None:
            _check_dims(ds, loaded.norm, f"--init {cfg.init}")
        model, norm = loaded.model, loaded.norm or normalization_from_dataset(ds, cfg.norm)
        tokenizer = loaded.tokenizer_path
    else:
        torch.manual_seed(cfg.seed)
        model = Pi05Policy(geometry or policy_preset(cfg.policy))
        norm = normalization_from_dataset(ds, cfg.norm)
    del init_loaded
    ctx.broadcast_params(model)  # identical starting weights on every rank
    pc = model.config
    check_compatible(ds, cameras=pc.cameras, state_dim=None, action_dim=None, max_action_dim=pc.action_dim)
    check_images(ds, pc.cameras)
    chunks = ChunkDataset(ds, pc.action_horizon, pc.action_dim, norm, pc.cameras)
    data = SFTData(chunks, make_tokenizer(pc, tokenizer), pc.max_token_len, pc.vision.image_size)

    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in n or "pos_embed" in n else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    ema = EMA(model, cfg.ema) if cfg.ema > 0 else None
    start = 0
    logger = MetricsLogger(out, "sft", wandb=cfg.wandb, config=asdict(cfg)) if ctx.is_main else None
    if ctx.is_main:
        write_run_config(out, "sft", cfg, resumed=resume)
    if resume:
        state = load_train_state(ckpt_dir / "train_state", optimizer, torch_generators={"batches": generator})
        start = int(state.meta["step"])
        if ema is not None:
            # The checkpoint holds the EMA weights; training continues from the raw weights.
            ema.shadow = {
                k.removeprefix("ema."): v for k, v in state.extra_tensors.items() if k.startswith("ema.")
            }
            raw = {k.removeprefix("raw."): v for k, v in state.extra_tensors.items() if k.startswith("raw.")}
            model.load_state_dict(raw)
        if logger is not None:
            logger.truncate_after(start)

    def save(step: int) -> None:
        extra = {"stage": "sft", "step": step, "dataset": str(cfg.dataset), "sft_config": asdict(cfg)}
        tensors: dict[str, torch.Tensor] = {}
        raw = None
        if ema is not None:  # the checkpoint holds the EMA weights; the raw ones ride along for resume
            raw = {k: v.detach().clone() for k, v in model.state_dict().items()}
            tensors.update({f"ema.{k}": v for k, v in ema.shadow.items()})
            tensors.update({f"raw.{k}": v for k, v in raw.items()})
            ema.copy_to(model)
        spec = TrainStateSpec(optimizer, tensors, {"step": step}, torch_generators={"batches": generator})
        save_checkpoint(ckpt_dir, model, norm, extra=extra, train_state=spec, tokenizer=tokenizer)
        if raw is not None:
            model.load_state_dict(raw)

    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if cfg.bf16 else nullcontext()
    model.train()
    losses: list[float] = []
    t_last, n_last = time.perf_counter(), 0
    t_start = time.perf_counter()
    last_loss = float("nan")
    lo, hi = ctx.shard_bounds(cfg.batch_size)  # this rank's rows of every global batch
    with progress_bar(console, disable=not ctx.is_main) as progress:
        task = progress.add_task("SFT", total=cfg.steps, completed=start)
        for step in range(start, cfg.steps):
            lr = warmup_cosine(step, cfg.warmup, cfg.steps, cfg.lr, cfg.final_lr)
            for g in optimizer.param_groups:
                g["lr"] = lr
            # The global batch's random numbers, drawn on every rank in the single-process order.
            b = cfg.batch_size
            idx = torch.randint(0, len(data), (b,), generator=generator)
            offsets = shift_offsets(b, len(pc.cameras), 4, generator) if cfg.augment else None
            noise = torch.randn((b, pc.action_horizon, pc.action_dim), generator=generator)  # (b, h, a)
            t_flow = model.sample_time(b, torch.device("cpu"), generator)  # (b,)
            inputs, actions, mask = data.batch(idx[lo:hi])
            if offsets is not None:
                inputs = PolicyInputs(
                    images=random_shift(inputs.images, 4, offsets[lo:hi]),
                    image_mask=inputs.image_mask,
                    tokens=inputs.tokens,
                    token_mask=inputs.token_mask,
                )
            with autocast:
                loss = model.compute_loss(inputs, actions, mask, noise=noise[lo:hi], time=t_flow[lo:hi])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # DDP: the mean over every rank's action entries, not a mean of per-rank means.
            synced = allreduce_grads(model.parameters(), mask.float().sum(), {"loss": float(loss.detach())})
            gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
            assert synced is not None
            if not (np.isfinite(float(synced["loss"])) and np.isfinite(gnorm)):
                raise TrainingError(
                    f"step {step + 1}: the loss is {float(synced['loss'])} and the gradient norm {gnorm}; "
                    "training stopped before this step was taken, and nothing of it was saved (an earlier "
                    f"checkpoint in {ckpt_dir} is intact). Check the dataset for extreme values, or lower "
                    "--lr / raise --warmup"
                )
            optimizer.step()
            if ema is not None:
                ema.update(model)
            last_loss = float(synced["loss"])
            losses.append(last_loss)
            n_last += cfg.batch_size
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                now = time.perf_counter()
                sps = n_last / max(now - t_last, 1e-9)
                if logger is not None:
                    logger.log(
                        step + 1,
                        {"loss": float(np.mean(losses)), "lr": lr, "grad_norm": gnorm, "samples_per_s": sps},
                    )
                progress.update(task, info=f"loss {np.mean(losses):.4f}  {sps:.0f} samples/s")
                losses, t_last, n_last = [], now, 0
            stopping = cfg.stop_after is not None and step + 1 >= cfg.stop_after
            if ctx.is_main and ((step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.steps or stopping):
                save(step + 1)
            if logger is not None and cfg.eval_every and cfg.eval_tasks and (step + 1) % cfg.eval_every == 0:
                logger.log(step + 1, _periodic_eval(model, norm, cfg, console, tokenizer))
                model.train()
            progress.update(task, advance=1)
            if stopping:
                break
    if logger is not None:
        logger.hparams(asdict(cfg), {"final_loss": last_loss})
        logger.close()
    return {
        "steps": cfg.steps,
        "final_loss": last_loss,
        "seconds": time.perf_counter() - t_start,
        "checkpoint": str(ckpt_dir),
    }
