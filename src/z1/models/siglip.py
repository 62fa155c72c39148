"""SigLIP ViT image encoder with the PaliGemma projector (pi0.5's vision tower).

Conv patch stem (bias), or as an option for small models a convolutional stem (`VisionConfig.stem`);
learned position embedding, pre-LN blocks (LayerNorm eps 1e-6, MHA with biases, MLP fc1 -> gelu(tanh) ->
fc2), final LayerNorm, and a Linear projector to the VLM width. No CLS token and no scaling of the image
tokens.
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


class ConvStem(nn.Module):
    """log2(patch) x [3x3 conv stride 2 -> GroupNorm -> GELU], then a 1x1 conv to `width`.

    (b, 3, y, x) -> (b, width, y / patch, x / patch): the token grid of a patch stem of the same `patch`.
    GroupNorm (not BatchNorm) keeps a sample's tokens independent of the batch it is in, so rollouts,
    shared-prefix groups and training see the same function.
    """

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        n = cfg.patch.bit_length() - 1
        if cfg.patch < 2 or 1 << n != cfg.patch:
            raise ValueError(f"the conv stem needs a power-of-two patch (2, 4, 8, 16, ...), got {cfg.patch}")
        if cfg.stem_channels < 1:
            raise ValueError(f"stem_channels must be >= 1, got {cfg.stem_channels}")
        layers: list[nn.Module] = []
        c_in = 3
        for i in range(n):
            c_out = cfg.stem_channels << i
            layers += [
                nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1, bias=False),
                nn.GroupNorm(math.gcd(8, c_out), c_out, eps=LN_EPS),
                nn.GELU(approximate="tanh"),
            ]
            c_in = c_out
        layers.append(nn.Conv2d(c_in, cfg.width, kernel_size=1, bias=True))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class SiglipEncoder(nn.Module):
    """Images (b, n, 3, y, x) in [-1, 1] -> tokens (b, n * tokens_per_cam, out_width)."""

    def __init__(self, cfg: VisionConfig, out_width: int):
        super().__init__()
        if cfg.image_size % cfg.patch:
            raise ValueError(f"image_size {cfg.image_size} must be a multiple of patch {cfg.patch}")
        self.cfg = cfg
        self.tokens_per_cam = (cfg.image_size // cfg.patch) ** 2
        if cfg.stem == "patch":
            self.patch_embed = nn.Conv2d(3, cfg.width, kernel_size=cfg.patch, stride=cfg.patch, bias=True)
        elif cfg.stem == "conv":
            self.stem = ConvStem(cfg)
        else:
            raise ValueError(f"vision stem must be 'patch' or 'conv', got {cfg.stem!r}")
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
            pixels = images.reshape(b * n, 3, y, x).float()
            z = self.stem(pixels) if self.cfg.stem == "conv" else self.patch_embed(pixels)  # (b*n, w, gy, gx)
        z = z.flatten(2).transpose(1, 2) + self.pos_embed  # (b*n, t, w)
        for block in self.blocks:
            z = block(z)
        z = self.proj(self.norm(z))  # (b*n, t, w_vlm)
        return z.reshape(b, n * self.tokens_per_cam, -1)
