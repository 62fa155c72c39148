"""Pi05Policy: the pi0.5 mixture of transformers with a flow-matching action expert (docs/model.md).

Prefix = [camera tokens (SigLIP) | text tokens * sqrt(w_vlm)], all ar=0 (bidirectional over valid tokens).
Suffix = H action tokens (action_in_proj(x_t)), ar = [1, 0, ..., 0] (one bidirectional block).
Per layer each stream has its own norms/projections/MLP; one joint attention runs over [prefix | suffix]
under the cumsum block mask. The time t enters the expert only through adaRMS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from z1.config import PolicyConfig
from z1.models.gemma import AdaRMSNorm, GemmaBlock, RMSNorm, apply_rope, attention, query_scale, rope_tables
from z1.models.siglip import SiglipEncoder


def make_attention_mask(pad: Tensor, ar: Tensor) -> Tensor:
    """Cumsum block mask. pad (b, s) bool valid; ar (b, s) or (s,) bool -> (b, s, s) bool.

    Token i attends token j iff cumsum(ar)[j] <= cumsum(ar)[i] and both tokens are valid.
    """
    ar = ar.to(torch.int64).expand_as(pad)
    cum = torch.cumsum(ar, dim=-1)  # (b, s)
    causal = cum[:, None, :] <= cum[:, :, None]
    return causal & pad[:, None, :] & pad[:, :, None]


def position_ids(pad: Tensor) -> Tensor:
    """pad (b, s) bool -> (b, s) int64 positions cumsum(valid) - 1 (pads do not advance the position)."""
    return torch.cumsum(pad.to(torch.int64), dim=-1) - 1


def _map_fields(obj, fn):
    return type(obj)(**{f.name: fn(getattr(obj, f.name)) for f in fields(obj)})


@dataclass(frozen=True)
class PolicyInputs:
    """Model-ready observation batch (torch tensors on one device)."""

    images: Tensor  # (b, n, 3, y, x) float32 in [-1, 1]
    image_mask: Tensor  # (b, n) bool
    tokens: Tensor  # (b, l) int64
    token_mask: Tensor  # (b, l) bool

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    def expand(self, g: int) -> PolicyInputs:
        """Repeat each row g times, row-major (r0, r0, ..., r1, r1, ...)."""
        return _map_fields(self, lambda t: t.repeat_interleave(g, dim=0))

    def index(self, idx: Tensor) -> PolicyInputs:
        return _map_fields(self, lambda t: t[idx])


def _expand_rows(t: Tensor, g: int) -> Tensor:
    if t.shape[0] == 1:  # shared prefix: a stride-0 view, no copy
        return t.expand(g, *t.shape[1:])
    return t.repeat_interleave(g, dim=0)


@dataclass(frozen=True)
class PrefixCache:
    """Per-layer prefix keys/values of the VLM stream (after RoPE) and the valid-prefix mask."""

    keys: tuple[Tensor, ...]  # per layer (b, kv, p, hd)
    values: tuple[Tensor, ...]  # per layer (b, kv, p, hd)
    mask: Tensor  # (b, p) bool

    @property
    def batch_size(self) -> int:
        return self.mask.shape[0]

    def expand(self, g: int) -> PrefixCache:
        """G rows per row (row-major) without recomputing; a view when the cache has one row."""
        return PrefixCache(
            keys=tuple(_expand_rows(k, g) for k in self.keys),
            values=tuple(_expand_rows(v, g) for v in self.values),
            mask=_expand_rows(self.mask, g),
        )

    def index(self, idx: Tensor) -> PrefixCache:
        return PrefixCache(
            keys=tuple(k[idx] for k in self.keys),
            values=tuple(v[idx] for v in self.values),
            mask=self.mask[idx],
        )


class MoTLayer(nn.Module):
    """One mixture-of-transformers layer: a VLM block and an action-expert block."""

    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.vlm = GemmaBlock(config.vlm, adaptive=False)
        self.expert = GemmaBlock(config.expert, adaptive=True)


def sincos_time_embedding(t: Tensor, dim: int, min_period: float, max_period: float) -> Tensor:
    """t (b,) -> (b, dim) [sin | cos], periods min..max (geometric, dim/2 freqs); float64, cast back."""
    if dim % 2:
        raise ValueError(f"time embedding dim must be even, got {dim}")
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64, device=t.device)
    period = min_period * (max_period / min_period) ** fraction  # (dim/2,)
    arg = t.to(torch.float64)[:, None] * (2.0 * math.pi / period)[None, :]  # (b, dim/2)
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1).to(t.dtype)


class Pi05Policy(nn.Module):
    def __init__(self, config: PolicyConfig):
        super().__init__()
        v, e = config.vlm, config.expert
        if (v.depth, v.num_heads, v.num_kv_heads, v.head_dim) != (
            e.depth,
            e.num_heads,
            e.num_kv_heads,
            e.head_dim,
        ):
            raise ValueError(
                "the VLM and the action expert must share depth, num_heads, num_kv_heads and head_dim; "
                f"got vlm={v} expert={e}"
            )
        self.config = config
        self.vision = SiglipEncoder(config.vision, out_width=v.width)
        self.embed_tokens = nn.Embedding(config.vocab_size, v.width)
        nn.init.normal_(self.embed_tokens.weight, std=1.0 / math.sqrt(v.width))
        self.layers = nn.ModuleList(MoTLayer(config) for _ in range(v.depth))
        self.vlm_norm = RMSNorm(v.width)  # present for checkpoint parity; the VLM's final output is unused
        self.expert_norm = AdaRMSNorm(e.width)
        self.action_in_proj = nn.Linear(config.action_dim, e.width)
        self.action_out_proj = nn.Linear(e.width, config.action_dim)
        self.time_mlp_in = nn.Linear(e.width, e.width)
        self.time_mlp_out = nn.Linear(e.width, e.width)
        self._q_scale = query_scale(v.head_dim)

    # ----------------------------------------------------------------------------------- embeddings
    def embed_prefix(self, inputs: PolicyInputs) -> tuple[Tensor, Tensor]:
        """-> prefix tokens (b, p, w_vlm) and valid mask (b, p)."""
        cfg = self.config
        b, n = inputs.image_mask.shape
        if n != len(cfg.cameras):
            raise ValueError(
                f"got {n} cameras but the config {cfg.name!r} has {len(cfg.cameras)}: {cfg.cameras}"
            )
        if inputs.tokens.shape[1] > cfg.max_token_len:
            raise ValueError(f"{inputs.tokens.shape[1]} text tokens exceed max_token_len={cfg.max_token_len}")
        img = self.vision(inputs.images)  # (b, n*t, w)
        img_mask = inputs.image_mask.repeat_interleave(self.vision.tokens_per_cam, dim=1)  # (b, n*t)
        txt = self.embed_tokens(inputs.tokens)  # (b, l, w)
        txt = txt * math.sqrt(cfg.vlm.width)
        x = torch.cat([img.to(txt.dtype) if img.dtype != txt.dtype else img, txt], dim=1)
        pad = torch.cat([img_mask.bool(), inputs.token_mask.bool()], dim=1)
        return x, pad

    def time_conditioning(self, t: Tensor) -> Tensor:
        """t (b,) -> c (b, w_expert) = swish(time_mlp_out(swish(time_mlp_in(emb(t)))))."""
        cfg = self.config
        emb = sincos_time_embedding(t, cfg.expert.width, cfg.min_period, cfg.max_period)
        return F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(emb))))

    def _check_suffix(self, x_t: Tensor, t: Tensor, b: int) -> None:
        h, a = self.config.action_horizon, self.config.action_dim
        if x_t.shape != (b, h, a):
            raise ValueError(f"x_t must be (b={b}, h={h}, a={a}), got {tuple(x_t.shape)}")
        if t.shape != (b,):
            raise ValueError(f"t must be (b={b},), got {tuple(t.shape)}")

    def _rope_q(self, q: Tensor, tables: tuple[Tensor, Tensor]) -> Tensor:
        return apply_rope(q, *tables) * self._q_scale

    def _tables(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        return rope_tables(pos, self.config.vlm.head_dim, self.config.rope)

    # ------------------------------------------------------------------------------------ prefix
    def build_prefix_cache(self, inputs: PolicyInputs) -> PrefixCache:
        """Run only the VLM stream over the prefix; return per-layer K,V (after RoPE) and the valid mask."""
        x, pad = self.embed_prefix(inputs)
        mask = make_attention_mask(pad, torch.zeros_like(pad))  # (b, p, p)
        rt = self._tables(position_ids(pad))  # positions (b, p)
        keys, values = [], []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            blk = layer.vlm
            h, _ = blk.attn_norm(x)
            q, k, v = blk.attn.qkv(h, with_q=i != last)
            k = apply_rope(k, *rt)
            keys.append(k)
            values.append(v)
            if i == last:  # the last layer's attention output/MLP never reaches the actions
                break
            x = blk.attn_residual(x, attention(self._rope_q(q, rt), k, v, mask), None)
            x = blk.ffw_residual(x, None)
        return PrefixCache(keys=tuple(keys), values=tuple(values), mask=pad)

    # ---------------------------------------------------------------------------------- velocity
    def _expert_head(self, xs: Tensor, c: Tensor) -> Tensor:
        y, _ = self.expert_norm(xs, c)
        return self.action_out_proj(y)

    def velocity(self, cache: PrefixCache, x_t: Tensor, t: Tensor) -> Tensor:
        """Expert stream over the suffix against the cached prefix. x_t (b, h, a), t (b,) -> v (b, h, a)."""
        b = cache.batch_size
        self._check_suffix(x_t, t, b)
        h = x_t.shape[1]
        c = self.time_conditioning(t)  # (b, we)
        xs = self.action_in_proj(x_t)  # (b, h, we)
        pad_s = torch.ones(b, h, dtype=torch.bool, device=x_t.device)
        ar_s = torch.zeros(h, dtype=torch.bool, device=x_t.device)
        ar_s[0] = True
        pad = torch.cat([cache.mask, pad_s], dim=1)  # (b, p+h)
        ar = torch.cat([torch.zeros(cache.mask.shape[1], dtype=torch.bool, device=x_t.device), ar_s])
        p = cache.mask.shape[1]
        mask = make_attention_mask(pad, ar)[:, p:, :]  # (b, h, p+h)
        rt = self._tables(position_ids(pad)[:, p:])  # positions (b, h)
        for i, layer in enumerate(self.layers):
            blk = layer.expert
            hs, gate = blk.attn_norm(xs, c)
            q, k, v = blk.attn.qkv(hs)
            k = apply_rope(k, *rt)
            kk = torch.cat([cache.keys[i].to(k.dtype), k], dim=2)
            vv = torch.cat([cache.values[i].to(v.dtype), v], dim=2)
            xs = blk.attn_residual(xs, attention(self._rope_q(q, rt), kk, vv, mask), gate)
            xs = blk.ffw_residual(xs, c)
        return self._expert_head(xs, c)

    def forward_joint(self, inputs: PolicyInputs, x_t: Tensor, t: Tensor) -> Tensor:
        """Uncached joint pass over [prefix | suffix] (training). x_t (b, h, a), t (b,) -> v (b, h, a)."""
        xp, pad_p = self.embed_prefix(inputs)
        b, p = pad_p.shape
        self._check_suffix(x_t, t, b)
        h = x_t.shape[1]
        c = self.time_conditioning(t)
        xs = self.action_in_proj(x_t)
        pad = torch.cat([pad_p, torch.ones(b, h, dtype=torch.bool, device=x_t.device)], dim=1)
        ar = torch.zeros(p + h, dtype=torch.bool, device=x_t.device)
        ar[p] = True
        mask = make_attention_mask(pad, ar)  # (b, p+h, p+h)
        pos = position_ids(pad)
        rt_p, rt_s = self._tables(pos[:, :p]), self._tables(pos[:, p:])
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            vb, eb = layer.vlm, layer.expert
            hp, _ = vb.attn_norm(xp)
            hs, gate_s = eb.attn_norm(xs, c)
            qp, kp, vp = vb.attn.qkv(hp, with_q=i != last)
            qs, ks, vs = eb.attn.qkv(hs)
            k = torch.cat([apply_rope(kp, *rt_p), apply_rope(ks, *rt_s)], dim=2)
            v = torch.cat([vp, vs.to(vp.dtype)], dim=2)
            if i == last:  # only the suffix queries matter in the last layer
                out_s = attention(self._rope_q(qs, rt_s), k, v, mask[:, p:])
            else:
                q = torch.cat([self._rope_q(qp, rt_p), self._rope_q(qs, rt_s).to(qp.dtype)], dim=2)
                out = attention(q, k, v, mask)  # (b, p+h, heads*hd)
                out_s = out[:, p:]
                xp = vb.attn_residual(xp, out[:, :p], None)
                xp = vb.ffw_residual(xp, None)
            xs = eb.attn_residual(xs, out_s, gate_s)
            xs = eb.ffw_residual(xs, c)
        return self._expert_head(xs, c)

    # -------------------------------------------------------------------------------------- loss
    def sample_time(self, b: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        """t = Beta(1.5, 1) * 0.999 + 0.001; Beta(a, 1) is sampled exactly as U^(1/a)."""
        u = torch.rand(b, generator=generator, device=device, dtype=torch.float64)
        return (u ** (1.0 / 1.5) * 0.999 + 0.001).to(torch.float32)

    def compute_loss(
        self,
        inputs: PolicyInputs,
        actions: Tensor,
        action_mask: Tensor,
        *,
        noise: Tensor | None = None,
        time: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Flow-matching loss. actions (b, h, a) normalized+padded; action_mask (b, h, a) -> masked MSE."""
        b = actions.shape[0]
        if action_mask.shape != actions.shape:
            raise ValueError(
                f"action_mask {tuple(action_mask.shape)} must match actions {tuple(actions.shape)}"
            )
        if noise is None:
            noise = torch.randn(
                actions.shape, generator=generator, device=actions.device, dtype=actions.dtype
            )
        if time is None:
            time = self.sample_time(b, actions.device, generator)
        tt = time[:, None, None]
        x_t = tt * noise + (1.0 - tt) * actions  # (b, h, a)
        target = noise - actions
        v = self.forward_joint(inputs, x_t, time).float()
        m = action_mask.float()
        return ((v - target).pow(2) * m).sum() / m.sum().clamp_min(1.0)

    # ----------------------------------------------------------------------------------- groups
    def parameter_groups(self) -> dict[str, list[str]]:
        """Every parameter name in exactly one of vision / vlm / expert / projections."""
        groups: dict[str, list[str]] = {"vision": [], "vlm": [], "expert": [], "projections": []}
        for name, _ in self.named_parameters():
            if name.startswith("vision."):
                groups["vision"].append(name)
            elif name.startswith(("embed_tokens.", "vlm_norm.")) or ".vlm." in name:
                groups["vlm"].append(name)
            elif name.startswith("expert_norm.") or ".expert." in name:
                groups["expert"].append(name)
            elif name.startswith(("action_in_proj.", "action_out_proj.", "time_mlp_in.", "time_mlp_out.")):
                groups["projections"].append(name)
            else:
                raise RuntimeError(f"parameter {name!r} has no group; update Pi05Policy.parameter_groups")
        return groups


def count_parameters(config: PolicyConfig) -> int:
    """Number of parameters of Pi05Policy(config), built on the meta device (no memory)."""
    with torch.device("meta"):
        model = Pi05Policy(config)
    return sum(p.numel() for p in model.parameters())
