"""Selective training of the pi0.5 policy during RL: which parameters train, LoRA, per-group LRs.

See docs/algorithm.md#selective-training.

Parameter-name contract of `z1.models.pi05.Pi05Policy` (every parameter must fall in one role):

    vision.*                                  -> "vision"       SigLIP, always frozen
    embed_tokens.*                            -> "embed"        frozen
    layers.{i}.vlm.*                          -> "vlm"          Gemma VLM layer i (and its LoRA adapters)
    vlm_norm.*                                -> "vlm_norm"     frozen: it only feeds the VLM's own outputs,
                                                                never the action path
    layers.{i}.expert.*, expert_norm.*        -> "expert"
    action_in_proj.*, action_out_proj.*,
    time_mlp_in.*, time_mlp_out.*             -> "projections"

Modes:
    "expert"          expert + projections train; the prefix (vision + VLM) is frozen, so the trainer
                      can build the prefix KV cache under no_grad and reuse it (`frozen_prefix`).
    "expert+top_vlm"  "expert" + the last `top_k` VLM layers (full weights), lr scaled by lr_vlm_scale.
    "lora"            "expert" + LoRA on the attention/MLP Linears of the last `lora_layers` VLM layers
                      (lr scaled by lr_vlm_scale).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from z1.rl.lora import apply_lora

ROLE_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("vision", re.compile(r"^vision\.")),
    ("embed", re.compile(r"^embed_tokens\.")),
    ("vlm", re.compile(r"^layers\.(\d+)\.vlm\.")),
    ("vlm_norm", re.compile(r"^vlm_norm\.")),
    ("expert", re.compile(r"^(layers\.\d+\.expert\.|expert_norm\.)")),
    ("projections", re.compile(r"^(action_in_proj|action_out_proj|time_mlp_in|time_mlp_out)\.")),
)
PREFIX_ROLES = frozenset({"vision", "embed", "vlm", "vlm_norm"})
LORA_TARGETS = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down")


class SelectiveError(ValueError):
    """A parameter outside the naming contract, or an invalid selective-training config."""


@dataclass(frozen=True)
class SelectiveConfig:
    """Which parameters train during RL (docs/algorithm.md#selective-training; default "expert")."""

    mode: Literal["expert", "expert+top_vlm", "lora"] = "expert"
    """What trains: expert = the action expert and projections, the VLM frozen (its prefix caches from the
    rollout are reused by the update); expert+top_vlm = also the last top_k VLM layers; lora = LoRA
    adapters on the last lora_layers VLM layers."""
    top_k: int = 2
    """VLM layers trained in "expert+top_vlm" (the last k)."""
    lora_rank: int = 16
    """r, the rank of each LoRA adapter."""
    lora_alpha: float = 16.0
    """α of LoRA: the adapter's output is scaled by α / r."""
    lora_layers: int | None = None
    """VLM layers that get LoRA in "lora" mode (the last n); None = top_k."""
    lora_targets: tuple[str, ...] = LORA_TARGETS
    """Linear modules inside each chosen `layers.{i}.vlm` block."""
    lr_vlm_scale: float = 0.1
    """Learning rate of VLM parameters (full or LoRA) = lr_vlm_scale * --lr (the expert's)."""
    weight_decay: float = 0.01
    """AdamW weight decay for every group."""

    def __post_init__(self) -> None:
        if self.mode not in ("expert", "expert+top_vlm", "lora"):
            raise SelectiveError(
                f"SelectiveConfig.mode must be 'expert', 'expert+top_vlm' or 'lora', got {self.mode!r}"
            )
        from z1.errors import check_float, check_int

        check_int(self.lora_rank, "--selective.lora-rank", low=1)
        check_float(self.lora_alpha, "--selective.lora-alpha", low=0.0, low_open=True)
        check_float(self.lr_vlm_scale, "--selective.lr-vlm-scale", low=0.0)
        check_float(self.weight_decay, "--selective.weight-decay", low=0.0)
        if self.top_k < 0 or (self.lora_layers is not None and self.lora_layers < 0):
            raise SelectiveError(f"top_k and lora_layers must be >= 0, got {self.top_k}, {self.lora_layers}")

    @property
    def n_lora_layers(self) -> int:
        return self.top_k if self.lora_layers is None else self.lora_layers


def param_role(name: str) -> str:
    """The role of a parameter name under the naming contract (module docstring)."""
    for role, pat in ROLE_PATTERNS:
        if pat.match(name):
            return role
    raise SelectiveError(
        f"parameter {name!r} is outside the pi05 naming contract (see the z1.rl.params docstring); "
        "extend z1.rl.params.ROLE_PATTERNS if the model gained a parameter"
    )


def vlm_depth(model: nn.Module) -> int:
    idx = [int(m.group(1)) for n, _ in model.named_parameters() if (m := ROLE_PATTERNS[2][1].match(n))]
    if not idx:
        raise SelectiveError(f"{type(model).__name__} has no layers.{{i}}.vlm.* parameters")
    return max(idx) + 1


def _vlm_layer(name: str) -> int:
    m = ROLE_PATTERNS[2][1].match(name)
    return int(m.group(1)) if m else -1


@dataclass
class ParamGroups:
    """Trainable parameters by group ("expert", "projections", "vlm"), with names and learning rates."""

    names: dict[str, list[str]] = field(default_factory=dict)
    params: dict[str, list[nn.Parameter]] = field(default_factory=dict)
    lrs: dict[str, float] = field(default_factory=dict)
    weight_decay: float = 0.0

    def add(self, group: str, name: str, p: nn.Parameter, lr: float) -> None:
        self.names.setdefault(group, []).append(name)
        self.params.setdefault(group, []).append(p)
        self.lrs[group] = lr

    def optimizer_groups(self) -> list[dict]:
        """Param groups for torch.optim (each carries its "name", "lr" and "weight_decay")."""
        return [
            {"name": g, "params": self.params[g], "lr": self.lrs[g], "weight_decay": self.weight_decay}
            for g in self.params
        ]

    def trainable_names(self) -> set[str]:
        return {n for names in self.names.values() for n in names}

    def num_params(self) -> dict[str, int]:
        return {g: sum(p.numel() for p in ps) for g, ps in self.params.items()}


def apply_selective(
    model: nn.Module, cfg: SelectiveConfig, lr: float, generator: torch.Generator | None = None
) -> ParamGroups:
    """Set requires_grad per `cfg.mode`, wrap LoRA targets in "lora" mode, and return the param groups:
    the expert and projections at `lr`, VLM parameters at `lr * cfg.lr_vlm_scale`.

    Idempotent for "expert" and "expert+top_vlm"; "lora" wraps modules and so must be applied once.
    """
    for name, _ in model.named_parameters():
        param_role(name)  # fail early on names outside the contract
    depth = vlm_depth(model)
    if cfg.mode == "lora":
        n = cfg.n_lora_layers
        if n > depth:
            raise SelectiveError(f"lora_layers={n} but the model has only {depth} VLM layers")
        paths = [f"layers.{i}.vlm.{t}" for i in range(depth - n, depth) for t in cfg.lora_targets]
        apply_lora(model, paths, cfg.lora_rank, cfg.lora_alpha, generator)
    if cfg.mode == "expert+top_vlm" and cfg.top_k > depth:
        raise SelectiveError(f"top_k={cfg.top_k} but the model has only {depth} VLM layers")

    lr_vlm = lr * cfg.lr_vlm_scale
    groups = ParamGroups(weight_decay=cfg.weight_decay)
    for name, p in model.named_parameters():
        role = param_role(name)
        train = False
        if role in ("expert", "projections"):
            train = True
            groups.add(role, name, p, lr)
        elif role == "vlm":
            top = _vlm_layer(name) >= depth - (
                cfg.top_k if cfg.mode == "expert+top_vlm" else cfg.n_lora_layers
            )
            is_lora = name.endswith((".lora_A", ".lora_B"))
            if (cfg.mode == "expert+top_vlm" and top) or (cfg.mode == "lora" and is_lora):
                train = True
                groups.add("vlm", name, p, lr_vlm)
        p.requires_grad_(train)
    return groups


def frozen_prefix(model: nn.Module, cfg: SelectiveConfig | None = None) -> bool:
    """True when no vision / embedding / VLM parameter (LoRA included) requires grad, so the prefix KV cache
    can be built under no_grad and reused across denoise steps and epochs (mode "expert").

    With `cfg`, also checks that the model's state matches it (catches a missing `apply_selective`).
    """
    frozen = not any(p.requires_grad and param_role(n) in PREFIX_ROLES for n, p in model.named_parameters())
    if cfg is not None and frozen != (cfg.mode == "expert"):
        raise SelectiveError(
            f"model prefix is {'frozen' if frozen else 'trainable'} but SelectiveConfig.mode={cfg.mode!r}; "
            "call apply_selective(model, cfg) first"
        )
    return frozen


@torch.no_grad()
def grad_norms_by_group(groups: ParamGroups) -> dict[str, float]:
    """L2 grad norm per group and in total ("grad_norm/<group>", "grad_norm/total"); None grads count as 0.

    Call after backward and before clipping (the metrics log the pre-clip norm)."""
    out: dict[str, float] = {}
    total = 0.0
    for g, ps in groups.params.items():
        sq = sum(float(p.grad.detach().float().pow(2).sum()) for p in ps if p.grad is not None)
        out[f"grad_norm/{g}"] = sq**0.5
        total += sq
    out["grad_norm/total"] = total**0.5
    return out
