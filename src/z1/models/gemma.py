"""Gemma building blocks for one stream of the pi0.5 mixture of transformers.

See docs/model.md#gemma-blocks, #adarms-and-time-conditioning and #rope.

Numerics follow openpi: RMSNorm with (1 + w) in fp32, adaRMS (scale | shift | gate) with no learned weight,
GeGLU MLP without biases, half-split RoPE with theta 10000 (angle form: `rope_tables`), query scaled by
head_dim^-0.5 after RoPE, attention logits and softmax in fp32 with masked logits set to -2.3819763e38.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from z1.config import GemmaConfig

MASK_VALUE = -2.3819763e38  # openpi's masked-logit constant (finite, so all-masked rows stay NaN-free)
RMS_EPS = 1e-6
ROPE_THETA = 10_000.0


def rms_normalize(x: Tensor) -> Tensor:
    """x * rsqrt(mean(x^2) + eps) in fp32 (the caller casts back)."""
    xf = x.float()
    return xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + RMS_EPS)


class RMSNorm(nn.Module):
    """Gemma RMSNorm: y = rmsnorm(x) * (1 + w), computed in fp32 and cast back to x's dtype."""

    def __init__(self, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(width))

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        if cond is not None:
            raise ValueError("RMSNorm takes no conditioning; use AdaRMSNorm for the action expert")
        y = rms_normalize(x) * (1.0 + self.weight.float())
        return y.to(x.dtype), None


class AdaRMSNorm(nn.Module):
    """Adaptive RMSNorm: [scale | shift | gate] = dense(cond); y = rmsnorm(x) * (1 + scale) + shift.

    The dense layer is zero-initialized, so at init y = rmsnorm(x) and gate = 0 (the block is the identity).
    """

    def __init__(self, width: int):
        super().__init__()
        self.dense = nn.Linear(width, 3 * width, bias=True)
        nn.init.zeros_(self.dense.weight)
        nn.init.zeros_(self.dense.bias)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if cond is None:
            raise ValueError("AdaRMSNorm needs the time conditioning `cond` of shape (b, width)")
        # x (b, s, w); cond (b, w)
        mod = self.dense(cond).float()[:, None, :]  # (b, 1, 3w)
        scale, shift, gate = mod.chunk(3, dim=-1)
        y = rms_normalize(x) * (1.0 + scale) + shift
        return y.to(x.dtype), gate.to(x.dtype)


class GeGLU(nn.Module):
    """down(gelu_tanh(gate(x)) * up(x)), no biases."""

    def __init__(self, width: int, mlp_dim: int):
        super().__init__()
        self.gate = nn.Linear(width, mlp_dim, bias=False)
        self.up = nn.Linear(width, mlp_dim, bias=False)
        self.down = nn.Linear(mlp_dim, width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.gelu(self.gate(x), approximate="tanh") * self.up(x))


class AttentionProjections(nn.Module):
    """Bias-free q/k/v/o projections. q: w -> heads*hd, k/v: w -> kv_heads*hd, o: heads*hd -> w."""

    def __init__(self, cfg: GemmaConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.num_kv_heads = cfg.num_kv_heads
        self.head_dim = cfg.head_dim
        self.q = nn.Linear(cfg.width, cfg.num_heads * cfg.head_dim, bias=False)
        self.k = nn.Linear(cfg.width, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.v = nn.Linear(cfg.width, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.o = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.width, bias=False)

    def qkv(self, h: Tensor, with_q: bool = True) -> tuple[Tensor | None, Tensor, Tensor]:
        """h (b, s, w) -> q (b, heads, s, hd) or None, k and v (b, kv, s, hd)."""
        b, s, _ = h.shape
        q = None
        if with_q:
            q = self.q(h).view(b, s, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k(h).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(h).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return q, k, v


class GemmaBlock(nn.Module):
    """One stream's weights in one MoT layer: attn_norm, attn projections, ffw_norm, GeGLU MLP.

    `adaptive=True` (action expert) uses AdaRMSNorm and gated residuals; otherwise plain RMSNorm (VLM).
    The joint attention itself is computed by the caller (`pi05.py`) across streams.
    """

    def __init__(self, cfg: GemmaConfig, adaptive: bool):
        super().__init__()
        norm = AdaRMSNorm if adaptive else RMSNorm
        self.attn_norm = norm(cfg.width)
        self.attn = AttentionProjections(cfg)
        self.ffw_norm = norm(cfg.width)
        self.mlp = GeGLU(cfg.width, cfg.mlp_dim)

    def attn_residual(self, x: Tensor, heads: Tensor, gate: Tensor | None) -> Tensor:
        """x (b, s, w) + [gate *] o(heads); heads (b, s, heads*hd)."""
        out = self.attn.o(heads)
        return x + (out if gate is None else gate * out)

    def ffw_residual(self, x: Tensor, cond: Tensor | None) -> Tensor:
        h, gate = self.ffw_norm(x, cond)
        out = self.mlp(h)
        return x + (out if gate is None else gate * out)


def rope_tables(
    positions: Tensor, head_dim: int, form: Literal["openpi", "transformers"] = "openpi"
) -> tuple[Tensor, Tensor]:
    """positions (b, s) int -> (sin, cos), each (b, 1, s, head_dim/2) fp32 (reused by all layers).

    Angle of frequency i at position p, timescale_i = theta^(2i / head_dim), all in fp32:
        "openpi":       p / timescale_i          (JAX; the form the pi0.5 checkpoints were trained in)
        "transformers": p * (1 / timescale_i)    (Hugging Face Gemma's inverse frequencies, as LeRobot runs)
    The two differ only by fp32 rounding of the angle (a few ulps, growing with the position).
    """
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    half = head_dim // 2
    pos = positions.to(torch.float32)[:, None, :, None]  # (b, 1, s, 1)
    if form == "openpi":
        freq_exponents = torch.arange(half, dtype=torch.float32, device=positions.device) * (2.0 / head_dim)
        timescale = ROPE_THETA**freq_exponents  # (half,)
        angles = pos / timescale  # (b, 1, s, half)
    elif form == "transformers":
        exponents = (
            torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim
        )
        inv_freq = 1.0 / (ROPE_THETA**exponents)  # (half,)
        angles = pos * inv_freq  # (b, 1, s, half)
    else:
        raise ValueError(f"RoPE form must be 'openpi' or 'transformers', got {form!r}")
    return torch.sin(angles), torch.cos(angles)


def apply_rope(x: Tensor, sin: Tensor, cos: Tensor) -> Tensor:
    """Half-split rotation [x1 cos - x2 sin, x2 cos + x1 sin] in fp32. x (b, heads, s, hd) -> same dtype."""
    half = x.shape[-1] // 2
    xf = x.float()
    x1, x2 = xf[..., :half], xf[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def rope(x: Tensor, positions: Tensor, form: Literal["openpi", "transformers"] = "openpi") -> Tensor:
    """Half-split rotary embedding. x (b, heads, s, hd); positions (b, s) int -> same shape/dtype as x."""
    sin, cos = rope_tables(positions, x.shape[-1], form)
    return apply_rope(x, sin, cos)


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """Grouped-query attention with fp32 logits/softmax.

    q (b, heads, sq, hd) already RoPE'd and scaled; k, v (b, kv, sk, hd); mask (b, sq, sk) bool.
    Returns (b, sq, heads*hd) in v's dtype.
    """
    b, nh, sq, hd = q.shape
    kv = k.shape[1]
    if nh % kv:
        raise ValueError(f"num_heads {nh} must be a multiple of num_kv_heads {kv}")
    g = nh // kv
    qg = q.reshape(b, kv, g * sq, hd)  # heads of one kv group are contiguous
    with torch.autocast(device_type=q.device.type, enabled=False):
        logits = torch.matmul(qg.float(), k.float().transpose(-1, -2)).view(
            b, kv, g, sq, -1
        )  # (b, kv, g, sq, sk)
        logits = logits.masked_fill(~mask[:, None, None], MASK_VALUE)
        probs = torch.softmax(logits, dim=-1)
    probs = probs.to(v.dtype).view(b, kv, g * sq, -1)
    out = torch.matmul(probs, v)  # (b, kv, g*sq, hd)
    return out.view(b, nh, sq, hd).transpose(1, 2).reshape(b, sq, nh * hd)


def query_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)
