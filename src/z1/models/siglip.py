"""SigLIP ViT image encoder with the PaliGemma projector (pi05.md §1.1).

Conv patch stem (bias), learned position embedding, pre-LN blocks (LayerNorm eps 1e-6, MHA with biases,
MLP fc1 -> gelu(tanh) -> fc2), final LayerNorm, and a Linear projector to the VLM width. No CLS token and no
scaling of the image tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from z1.config import VisionConfig

LN_EPS = 1e-6


class SiglipAttention(nn.Module):
    def __init__(self, width: int, num_heads: int):
        super().__init__()
        if width % num_heads:
            raise ValueError(f"vision width {width} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(width, width)
        self.k = nn.Linear(width, width)
        self.v = nn.Linear(width, width)
        self.o = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, s, w = x.shape
        hd = w // self.num_heads

        def heads(t: Tensor) -> Tensor:
            return t.view(b, s, self.num_heads, hd).transpose(1, 2)  # (b, heads, s, hd)

        out = F.scaled_dot_product_attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)))
        return self.o(out.transpose(1, 2).reshape(b, s, w))


class SiglipMLP(nn.Module):
    def __init__(self, width: int, mlp_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(width, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SiglipBlock(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.width, eps=LN_EPS)
        self.attn = SiglipAttention(cfg.width, cfg.num_heads)
        self.ln2 = nn.LayerNorm(cfg.width, eps=LN_EPS)
        self.mlp = SiglipMLP(cfg.width, cfg.mlp_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class SiglipEncoder(nn.Module):
    """Images (b, n, 3, y, x) in [-1, 1] -> tokens (b, n * tokens_per_cam, out_width)."""

    def __init__(self, cfg: VisionConfig, out_width: int):
        super().__init__()
        if cfg.image_size % cfg.patch:
            raise ValueError(f"image_size {cfg.image_size} must be a multiple of patch {cfg.patch}")
        self.cfg = cfg
        self.tokens_per_cam = (cfg.image_size // cfg.patch) ** 2
        self.patch_embed = nn.Conv2d(3, cfg.width, kernel_size=cfg.patch, stride=cfg.patch, bias=True)
        self.pos_embed = nn.Parameter(torch.empty(self.tokens_per_cam, cfg.width))
        nn.init.normal_(self.pos_embed, std=1.0 / math.sqrt(cfg.width))
        self.blocks = nn.ModuleList(SiglipBlock(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width, eps=LN_EPS)
        self.proj = nn.Linear(cfg.width, out_width)

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(f"images must be (b, n, 3, y, x), got {tuple(images.shape)}")
        b, n, _, y, x = images.shape
        size = self.cfg.image_size
        if (y, x) != (size, size):
            raise ValueError(f"images are {y}x{x} but the vision config expects {size}x{size}; resize first")
        with torch.autocast(device_type=images.device.type, enabled=False):  # stem in fp32 as in openpi
            z = self.patch_embed(images.reshape(b * n, 3, y, x).float())  # (b*n, w, gy, gx)
        z = z.flatten(2).transpose(1, 2) + self.pos_embed  # (b*n, t, w)
        for block in self.blocks:
            z = block(z)
        z = self.proj(self.norm(z))  # (b*n, t, w_vlm)
        return z.reshape(b, n * self.tokens_per_cam, -1)
