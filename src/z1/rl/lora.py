"""Low-rank adapters on Linear layers (docs/algorithm.md#lora; `--selective.mode lora`).

`LoRALinear` replaces an `nn.Linear` in place and keeps the base parameters under the SAME names, so a
module path `layers.3.vlm.attn.q` still has `layers.3.vlm.attn.q.weight` (the frozen base weight, the same
Parameter object) and gains `...q.lora_A` (r, in) and `...q.lora_B` (out, r):

    y = x W^T + b + (alpha / r) (x A^T) B^T,    B = 0 at init, so the wrapped model is unchanged.

Key mapping: a base checkpoint loads into a LoRA-wrapped model with `strict=False` (only the lora_* keys
are missing), or load it before wrapping. `merge_lora` folds the adapters into the base weights and
restores plain `nn.Linear` modules, so the merged state_dict has exactly the original keys.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LoRALinear(nn.Module):
    """An `nn.Linear` plus a rank-r update; the base weight and bias are the wrapped module's Parameters."""

    def __init__(
        self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight  # (out, in), same Parameter object: keeps the state_dict key
        self.bias = base.bias  # (out,) or None
        w = base.weight
        self.lora_A = nn.Parameter(
            torch.empty(rank, self.in_features, dtype=w.dtype, device=w.device)
        )  # (r, in)
        self.lora_B = nn.Parameter(
            torch.zeros(self.out_features, rank, dtype=w.dtype, device=w.device)
        )  # (out, r)
        # A: nn.Linear's default init (kaiming-uniform, a=sqrt(5)); B = 0, so the output is unchanged.
        bound = 1.0 / math.sqrt(self.in_features)
        with torch.no_grad():
            self.lora_A.uniform_(-bound, bound, generator=generator)
        self.rank = rank
        self.scaling = alpha / rank
        self.enabled = True

    def forward(self, x: Tensor) -> Tensor:  # (..., in) -> (..., out)
        y = F.linear(x, self.weight, self.bias)
        if self.enabled:
            y = y + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling
        return y

    def delta_weight(self) -> Tensor:
        """(out, in) update (alpha / r) B A."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, scaling={self.scaling:g}"


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, leaf, module)


def apply_lora(
    model: nn.Module, paths: list[str], rank: int, alpha: float, generator: torch.Generator | None = None
) -> list[str]:
    """Wrap the `nn.Linear` modules at `paths` (module paths, e.g. "layers.3.vlm.attn.q") with LoRALinear."""
    for path in paths:
        try:
            mod = model.get_submodule(path)
        except AttributeError as e:
            raise ValueError(f"LoRA target {path!r} does not exist in {type(model).__name__}") from e
        if isinstance(mod, LoRALinear):
            raise ValueError(f"LoRA target {path!r} is already wrapped; call merge_lora first to re-apply")
        if not isinstance(mod, nn.Linear):
            raise ValueError(f"LoRA target {path!r} is a {type(mod).__name__}, expected nn.Linear")
        _set_submodule(model, path, LoRALinear(mod, rank, alpha, generator))
    return list(paths)


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Only the adapter tensors, keyed like the full state_dict (`<path>.lora_A`, `<path>.lora_B`)."""
    out: dict[str, Tensor] = {}
    for name, m in lora_modules(model).items():
        out[f"{name}.lora_A"] = m.lora_A.detach().clone()
        out[f"{name}.lora_B"] = m.lora_B.detach().clone()
    return out


@torch.no_grad()
def merge_lora(model: nn.Module) -> list[str]:
    """Fold every adapter into its base weight and restore plain nn.Linear modules. Returns merged paths."""
    merged = []
    for name, m in lora_modules(model).items():
        lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
        m.weight.add_(m.delta_weight().to(m.weight.dtype))
        lin.weight = m.weight  # the same Parameter (requires_grad state preserved)
        lin.bias = m.bias
        _set_submodule(model, name, lin)
        merged.append(name)
    return merged


def merged_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` with every adapter folded in (plain nn.Linear modules, the original state_dict
    keys): what a checkpoint of a LoRA run stores, so that anything that loads pi0.5 loads it. `model`
    itself keeps its adapters."""
    import copy

    out = copy.deepcopy(model)
    with torch.no_grad():
        merge_lora(out)
    return out


@contextmanager
def lora_disabled(model: nn.Module) -> Iterator[None]:
    """Run the base model (adapters off), e.g. as the KL reference (docs/algorithm.md#kl-to-a-reference)."""
    mods = list(lora_modules(model).values())
    prev = [m.enabled for m in mods]
    for m in mods:
        m.enabled = False
    try:
        yield
    finally:
        for m, p in zip(mods, prev):
            m.enabled = p
