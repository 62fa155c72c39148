"""The model geometry of a pi0.5 file, read from its tensor shapes.

Widths, depths, MLP sizes, patch size, image size, vocabulary and action dims follow from the shapes; head
counts do not (q_proj is heads * head_dim wide either way), so they come from a base config (the pi05
preset by default, as openpi's PyTorch port hard-codes 8 Gemma heads).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace

from z1.config import GemmaConfig, PolicyConfig, VisionConfig, policy_preset
from z1.models import pi05_keys as K
from z1.models.errors import CheckpointError
from z1.models.pi05_keys import KeyPlan


def _shape(shapes: Mapping[str, tuple[int, ...]], plan: KeyPlan, z1_name: str) -> tuple[int, ...]:
    if z1_name not in plan.source:
        raise CheckpointError(
            f"pi0.5 file lacks {K.z1_to_openpi(z1_name)!r} (z1 {z1_name!r}); cannot infer the model geometry"
        )
    return shapes[plan.source[z1_name]]


def infer_policy_config(
    shapes: Mapping[str, tuple[int, ...]],
    plan: KeyPlan,
    *,
    base: PolicyConfig | None = None,
    action_horizon: int | None = None,
) -> PolicyConfig:
    """The PolicyConfig whose parameter shapes match the file. Head counts cannot be read from shapes: they
    come from `base` (default: the pi05 preset; openpi's PyTorch port hard-codes 8 Gemma heads)."""
    base = base or policy_preset("pi05")
    names = list(plan.source)

    def sh(n: str) -> tuple[int, ...]:
        return _shape(shapes, plan, n)

    pe = sh("vision.patch_embed.weight")  # (w, 3, patch, patch)
    pos = sh("vision.pos_embed")  # (t, w)
    vw, patch, tpc = pe[0], pe[2], pos[0]
    side = math.isqrt(tpc)
    if side * side != tpc:
        raise CheckpointError(f"vision position embedding has {tpc} tokens, not a square grid")
    vheads = next(
        h
        for h in (base.vision.num_heads, vw // 72 if vw % 72 == 0 else 0, 16, 8, 4, 2, 1)
        if h and vw % h == 0
    )
    vision = VisionConfig(
        width=vw,
        depth=K.layer_count(names, "vision.blocks"),
        mlp_dim=sh("vision.blocks.0.mlp.fc1.weight")[0],
        num_heads=vheads,
        patch=patch,
        image_size=side * patch,
    )

    def gemma(stream: str, b: GemmaConfig) -> GemmaConfig:
        q = sh(f"layers.0.{stream}.attn.q.weight")  # (heads*hd, w)
        kk = sh(f"layers.0.{stream}.attn.k.weight")  # (kv*hd, w)
        heads = b.num_heads
        if q[0] % heads:
            raise CheckpointError(f"{stream} q_proj has {q[0]} outputs, not divisible by {heads} heads")
        hd = q[0] // heads
        if kk[0] % hd:
            raise CheckpointError(f"{stream} k_proj has {kk[0]} outputs, not a multiple of head_dim {hd}")
        return GemmaConfig(
            width=q[1],
            depth=K.layer_count(names, "layers"),
            mlp_dim=sh(f"layers.0.{stream}.mlp.gate.weight")[0],
            num_heads=heads,
            num_kv_heads=kk[0] // hd,
            head_dim=hd,
        )

    cfg = replace(
        base,
        vision=vision,
        vlm=gemma("vlm", base.vlm),
        expert=gemma("expert", base.expert),
        vocab_size=sh("embed_tokens.weight")[0],
        action_dim=sh("action_in_proj.weight")[1],
        action_horizon=action_horizon if action_horizon is not None else base.action_horizon,
    )
    preset = policy_preset("pi05")
    geometry = ("vision", "vlm", "expert", "vocab_size", "action_dim")
    same = all(getattr(cfg, g) == getattr(preset, g) for g in geometry)
    return replace(cfg, name="pi05" if same else f"{base.name}-imported")
