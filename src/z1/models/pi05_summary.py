"""The summary `z1 import` prints: what an import mapped, skipped, found and will apply.

It reads only the import record (`LoadedCheckpoint.extra`, also saved in extra.json), so a saved import can
be summarized again without the source files.
"""

from __future__ import annotations

from pathlib import Path

from z1.models.checkpoint import LoadedCheckpoint
from z1.types import Conventions


def import_summary(ck: LoadedCheckpoint) -> list[str]:
    """What an import mapped, skipped, found and will apply, one line per item (printed by `z1 import`)."""
    ex, cfg = ck.extra, ck.config
    conv = Conventions.from_json(ex.get("conventions") or {})
    lines = [f"source       {ex.get('source')} ({ex.get('source_path')})"]
    skipped = ex.get("skipped_keys") or {}
    lines.append(f"keys         {ex.get('mapped_keys', '?')} mapped, {len(skipped)} skipped")
    lines += [f"  skipped    {k}: {why}" for k, why in sorted(skipped.items())]
    if ex.get("unexpected_keys"):
        lines.append(
            f"  ignored    {len(ex['unexpected_keys'])} unknown tensor(s): {ex['unexpected_keys'][:4]}"
        )
    if ck.norm is None:
        lines.append(
            "norm stats   none found: SFT computes them from its dataset (with z1's own conventions); "
            "RL/eval need them"
        )
    else:
        src = ex.get("norm_source")
        names = [Path(s).name for s in src] if isinstance(src, list) else [Path(str(src)).name]
        lines.append(
            f"norm stats   {', '.join(names)}: {ck.norm.mode}, state {len(ck.norm.state.q01)} dims, action "
            f"{len(ck.norm.action.q01)} dims"
        )
        if ex.get("postprocessor_stats_differ"):
            lines.append(
                f"  note       the postprocessor's {ex['postprocessor_stats_differ']} differ from the "
                "preprocessor's; z1 uses the preprocessor's both ways"
            )
    d = ex.get("real_action_dim")
    lines.append(
        f"actions      horizon {cfg.action_horizon}, {d if d is not None else '?'} real of "
        f"{cfg.action_dim} dims"
        + (
            f", relative to the state on dims {list(conv.relative_action_dims)} (state added back per chunk)"
            if conv.relative_action_dims
            else ", absolute"
            if conv.source == "lerobot"
            else " (openpi keeps delta/absolute in its training config, not in the checkpoint)"
        )
    )
    n_exec = (ex.get("source_config") or {}).get("n_action_steps")
    if n_exec is not None:
        lines.append(f"  note       the source executes {n_exec} actions per chunk; z1 executes --h-exec")
    steps = conv.num_inference_steps
    lines.append(
        f"inference    {steps} denoise steps in the source (recorded: z1 eval --num-steps and rl "
        "--rollout.num-steps choose per run, eval's default is 10)"
    )
    if steps is not None and steps != 10:
        lines.append(f"  note       pass --num-steps {steps} to z1 eval to denoise as the source does")
    renames = ", ".join(f"{a} -> {b}" for a, b in conv.camera_rename)
    lines.append(f"cameras      {', '.join(cfg.cameras)}" + (f" (env renames: {renames})" if renames else ""))
    lines.append(
        f"images       {cfg.vision.image_size}x{cfg.vision.image_size}, resize rule {conv.resize}"
        + (" (no antialiasing)" if conv.resize == "float-bilinear" else "")
    )
    lines.append(
        f"normalize    {conv.norm_rule} epsilon rule, eps {conv.norm_eps:g}"
        + (" only where q99 == q01" if conv.norm_rule == "lerobot" else " added to every range")
    )
    if conv.source_rope == cfg.rope:
        lines.append(f"rope         {cfg.rope} angle form, as the source")
    else:
        lines.append(
            f"rope         the source computes {conv.source_rope} angles, z1 runs {cfg.rope} (the two differ "
            "by fp32 rounding of the angles, ~5e-5 of the K cache at 1000 positions)"
        )
    src_cfg = ex.get("source_config") or {}
    src_dtype = src_cfg.get("dtype", src_cfg.get("precision"))
    if src_dtype is not None:
        ours = str(next(ck.model.parameters()).dtype).removeprefix("torch.")
        lines.append(f"dtype        the source ran {src_dtype}; the z1 weights are {ours}")
    if ex.get("unknown_config_fields"):
        lines.append(f"ignored      config fields z1 does not know: {ex['unknown_config_fields']}")
    for k, why in sorted((ex.get("accepted") or {}).items()):
        lines.append(f"accepted     {k}: {why}")
    return lines
