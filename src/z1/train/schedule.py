"""Learning-rate schedule and EMA shared by the SFT and RL trainers."""

from __future__ import annotations

import math

import torch


def warmup_cosine(step: int, warmup: int, total: int, peak: float, final: float) -> float:
    """Linear warmup to `peak` over `warmup` steps, then cosine decay to `final` at `total`."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    if total <= warmup:
        return peak
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final + 0.5 * (peak - final) * (1.0 + math.cos(math.pi * progress))


class EMA:
    """Exponential moving average of trainable parameters (kept in fp32)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for n, p in model.named_parameters():
            if n in self.shadow:
                self.shadow[n].lerp_(p.detach(), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        for n, p in model.named_parameters():
            if n in self.shadow:
                p.copy_(self.shadow[n])
