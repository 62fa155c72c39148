"""Import of real pi0.5 checkpoints (openpi PyTorch or LeRobot) as z1 policies.

Weights: openpi-PyTorch (`model.safetensors` + `config.json` + `assets/*/norm_stats.json`) or LeRobot
(`model.safetensors`, maybe `model.`-prefixed, `config.json` with "type": "pi05",
`policy_{pre,post}processor.json` and `*normalizer_processor.safetensors`). Tensors are read one at a time.

Conventions: the network is the same in both frameworks; what differs is everything around it. The import
records the source's rules as `z1.types.Conventions` inside the checkpoint's `Normalization`
(norm_stats.json), so SFT, RL and eval apply them alike:

    rule                    openpi                            LeRobot
    image resize            uint8, bilinear + antialias       float [0, 1], bilinear, no antialias
    normalization epsilon   q99 - q01 + 1e-6 (always)         eps only where q99 == q01 (`eps`, 1e-8)
    relative actions        not in the checkpoint             use_relative_actions, relative_exclude_joints
    denoise steps           10 (sample_actions default)       num_inference_steps
    camera names            fixed slots                       rename_observations_processor rename_map
    RoPE angles             positions / timescale             positions * inverse frequency (transformers)

Config fields whose effect z1 does not implement stop the import with an error naming the field;
`accept=(field, ...)` (`z1 import --accept FIELD`) imports anyway and records the accepted difference.
Fields that only matter to training or to the hub are recorded; fields z1 does not know are listed in the
summary and, when they look like a feature switch that is on (`use_*` true, `{"enabled": true}`), refused.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from z1.config import PolicyConfig, policy_preset
from z1.models.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    LoadedCheckpoint,
    ProgressFn,
    materialize,
    save_checkpoint,
)
from z1.models.errors import CheckpointError
from z1.models.pi05_conventions import (
    OPENPI_FIELDS,
    OPENPI_RECORDED,
    POST_JSON,
    PRE_JSON,
    check_accepted,
    lerobot_conventions,
    lerobot_dims,
    lerobot_fields,
    openpi_conventions,
    processor_steps,
)
from z1.models.pi05_geometry import infer_policy_config
from z1.models.pi05_keys import plan_keys
from z1.models.pi05_norm import lerobot_norm, openpi_norm
from z1.models.pi05_summary import import_summary


def import_pi05(
    path: str | Path,
    *,
    action_horizon: int | None = None,
    norm_stats: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    base: PolicyConfig | None = None,
    strict: bool = True,
    accept: Sequence[str] = (),
    progress: ProgressFn | None = None,
) -> LoadedCheckpoint:
    """Import an openpi-PyTorch or LeRobot pi0.5 checkpoint (a directory or its model.safetensors).

    action_horizon: overrides the file's (openpi config.json `action_horizon`, LeRobot `chunk_size`).
    norm_stats: an openpi norm_stats.json or a LeRobot *normalizer_processor.safetensors; by default found
        next to the weights (assets/*/norm_stats.json, or *normalizer_processor.safetensors).
    base: supplies what shapes cannot tell (head counts, cameras, tokenizer); default the pi05 preset.
    strict: unknown tensors in the file are an error (else a warning).
    accept: config fields whose effect z1 does not implement, to import anyway (recorded in
        `extra["accepted"]`); without them such a field stops the import with an error naming it.

    The source's conventions (module docstring) end up in `norm.conventions` and `extra["conventions"]`.
    """
    p = Path(path).expanduser()
    root, weights = (p.parent, p) if p.is_file() else (p, p / MODEL_FILE)
    if not weights.is_file():
        raise CheckpointError(f"no {MODEL_FILE} in {root}; pass the checkpoint directory or the weights file")
    cfg_json: dict[str, Any] = {}
    if (root / CONFIG_FILE).is_file():
        cfg_json = json.loads((root / CONFIG_FILE).read_text())
    is_lerobot = cfg_json.get("type") is not None
    if is_lerobot and cfg_json.get("type") != "pi05":
        raise CheckpointError(
            f"{root / CONFIG_FILE} is a LeRobot {cfg_json.get('type')!r} policy; only pi05 is supported"
        )
    if "policy" in cfg_json and "z1_version" in cfg_json:
        raise CheckpointError(f"{root} is already a z1 checkpoint; use load_checkpoint")

    base = base or policy_preset("pi05")
    state_dim: int | None = None
    real_action_dim: int | None = None
    refused: dict[str, str] = {}
    unknown: list[str] = []
    recorded: dict[str, Any] = {}
    pre: dict[str, dict[str, Any]] = {}
    post: dict[str, dict[str, Any]] = {}
    if is_lerobot:
        state_dim, real_action_dim, cams = lerobot_dims(cfg_json)
        diffs = lerobot_fields(cfg_json)
        refused.update(diffs.refused)
        unknown = diffs.unknown
        recorded = {k: cfg_json[k] for k in ("n_action_steps", "dtype", "use_amp") if k in cfg_json}
        pre, post = processor_steps(root / PRE_JSON), processor_steps(root / POST_JSON)
        over: dict[str, Any] = {}
        if cams:
            over["cameras"] = tuple(cams)
        for ours, theirs in (
            ("max_token_len", "tokenizer_max_length"),
            ("min_period", "min_period"),
            ("max_period", "max_period"),
        ):
            if cfg_json.get(theirs) is not None:
                over[ours] = type(getattr(base, ours))(cfg_json[theirs])
        if cfg_json.get("chunk_size") is not None:
            over["action_horizon"] = int(cfg_json["chunk_size"])
        res = cfg_json.get("image_resolution")
        if res and res[0] != res[1]:
            raise CheckpointError(f"non-square image_resolution {res} is not supported")
        base = replace(base, **over)
    else:
        if cfg_json.get("action_horizon") is not None:
            base = replace(base, action_horizon=int(cfg_json["action_horizon"]))
        unknown = sorted(set(cfg_json) - OPENPI_FIELDS - OPENPI_RECORDED)
        recorded = {k: cfg_json[k] for k in sorted(OPENPI_RECORDED) if k in cfg_json}

    with safe_open(str(weights), framework="pt") as f:
        file_keys = list(f.keys())
        plan = plan_keys(file_keys)
        if plan.unexpected:
            msg = (
                f"{weights}: {len(plan.unexpected)} tensor(s) with no z1 counterpart, first "
                f"{plan.unexpected[0]!r}"
                + (f" (all: {plan.unexpected[:8]}...)" if len(plan.unexpected) > 1 else "")
            )
            if strict:
                raise CheckpointError(msg + "; pass strict=False to ignore them")
            warnings.warn(msg, stacklevel=2)
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in plan.source.values()}
        config = infer_policy_config(shapes, plan, base=base, action_horizon=action_horizon)
        source = "lerobot" if (is_lerobot or plan.prefixed) else "openpi"
        # every check that can refuse the import runs before the weights are read
        mode = "quantile"
        lr_info: dict[str, Any] = {}
        if source == "lerobot":
            res = cfg_json.get("image_resolution")
            size = config.vision.image_size
            if res and int(res[0]) != size:
                raise CheckpointError(
                    f"{root / CONFIG_FILE}: image_resolution {list(res)} but the weights' vision tower takes "
                    f"{size}x{size} images ({config.vision.image_size // config.vision.patch}^2 patches of "
                    f"{config.vision.patch} px); the file does not fit its config"
                )
            conventions, mode, norm_refused, lr_info = lerobot_conventions(
                root, cfg_json, pre, post, state_dim, real_action_dim, config.cameras
            )
            refused.update(norm_refused)
        else:
            conventions = openpi_conventions()
            op_dim = cfg_json.get("action_dim")
            if op_dim is not None and int(op_dim) != config.action_dim:
                raise CheckpointError(
                    f"{root / CONFIG_FILE}: action_dim is {op_dim} but action_in_proj.weight takes "
                    f"{config.action_dim} dims; the file does not fit its config"
                )
        accepted = check_accepted(refused, accept, root / CONFIG_FILE if cfg_json else weights)
        model = materialize(config, f, plan.source, "cpu", dtype, what=str(weights), progress=progress)

    norm, norm_info = None, {}
    lr_files = sorted(root.glob("*normalizer_processor.safetensors"))
    op_files = sorted(root.glob("assets/*/norm_stats.json"))
    if norm_stats is not None:
        ns = Path(norm_stats).expanduser()
        if not ns.is_file():
            raise CheckpointError(f"norm_stats file not found: {ns}")
        lr_files, op_files = ([ns], []) if ns.suffix == ".safetensors" else ([], [ns])
    if lr_files:
        norm, norm_info = lerobot_norm(lr_files, mode, state_dim, real_action_dim, conventions)
    elif len(op_files) == 1:
        norm, norm_info = openpi_norm(op_files[0], state_dim, real_action_dim, conventions)
    elif len(op_files) > 1:
        raise CheckpointError(
            f"{root} has several norm stats {[str(q.relative_to(root)) for q in op_files]}; "
            "choose one with norm_stats=..."
        )
    extra = {
        "source": source,
        "source_path": str(weights),
        "real_action_dim": real_action_dim
        if real_action_dim is not None
        else (len(norm.action.q01) if norm else None),
        "real_state_dim": state_dim if state_dim is not None else (len(norm.state.q01) if norm else None),
        "mapped_keys": len(plan.source),
        "skipped_keys": plan.skipped,
        "unexpected_keys": plan.unexpected,
        "conventions": conventions.to_json(),
        "source_config": recorded,
        "unknown_config_fields": unknown,
        "accepted": {k: refused[k] for k in accepted},
        **lr_info,
        **norm_info,
    }
    return LoadedCheckpoint(model=model, config=config, norm=norm, extra=extra)


def import_cli(
    src: str | Path,
    dst: str | Path,
    *,
    action_horizon: int | None = None,
    norm_stats: str | Path | None = None,
    tokenizer: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    accept: Sequence[str] = (),
    show_progress: bool = True,
) -> LoadedCheckpoint:
    """`z1 import`: import a pi0.5 checkpoint and save it as a z1 checkpoint, with a progress bar and a
    summary of what was mapped, skipped and recorded.

    `tokenizer`: PaliGemma's SentencePiece `tokenizer.model`, stored in the checkpoint (real pi0.5
    configs tokenize with it; without it the checkpoint could not act).
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(
        TextColumn("[bold]importing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
        disable=not show_progress,
    ) as bar:
        task = bar.add_task("", total=None)

        def step(done: int, total: int, key: str) -> None:
            bar.update(task, completed=done, total=total, description=key)

        ck = import_pi05(
            src,
            action_horizon=action_horizon,
            norm_stats=norm_stats,
            dtype=dtype,
            accept=accept,
            progress=step,
        )
        if ck.config.tokenizer == "sentencepiece":
            if tokenizer is None:
                raise CheckpointError(
                    f"{src}: this pi0.5 tokenizes prompts with SentencePiece; pass --tokenizer PATH to "
                    "PaliGemma's tokenizer.model (openpi caches it at "
                    "~/.cache/openpi/big_vision/paligemma_tokenizer.model)"
                )
            from z1.models.tokenizer import make_tokenizer

            make_tokenizer(ck.config, tokenizer)  # fails now, naming the file, if it does not fit the model
        bar.update(task, description=f"saving {dst}")
        save_checkpoint(dst, ck.model, ck.norm, {**ck.extra, "imported_from": str(src)}, tokenizer=tokenizer)
    n = sum(t.numel() for t in ck.model.parameters())
    console.print(
        escape(
            f"imported {ck.extra['source']} pi0.5 ({n:,} params, config {ck.config.name!r}, horizon "
            f"{ck.config.action_horizon}, norm {'yes' if ck.norm else 'none'}) -> {dst}"
        ),
        soft_wrap=True,
    )
    for line in import_summary(ck):
        console.print(escape(line), highlight=False, soft_wrap=True)
    return ck
