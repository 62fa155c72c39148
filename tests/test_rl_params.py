"""Selective training and LoRA on a stand-in with the pi05 parameter names.

See docs/algorithm.md#selective-training.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from z1.rl.lora import LoRALinear, lora_disabled, lora_state_dict, merge_lora
from z1.rl.params import (
    SelectiveConfig,
    SelectiveError,
    apply_selective,
    frozen_prefix,
    grad_norms_by_group,
    param_role,
)

W, E, D, A, V = 16, 8, 8, 3, 11  # vlm width, expert width, head dim, action dim, vocab


class Norm(nn.Module):
    def __init__(self, w: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(0.1 * torch.randn(w))


class Ada(nn.Module):
    def __init__(self, w: int) -> None:
        super().__init__()
        self.dense = nn.Linear(w, 3 * w)


class Attn(nn.Module):
    def __init__(self, w: int) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(w, D, bias=False) for _ in range(3))
        self.o = nn.Linear(D, w, bias=False)


class MLP(nn.Module):
    def __init__(self, w: int) -> None:
        super().__init__()
        self.gate, self.up = nn.Linear(w, 2 * w, bias=False), nn.Linear(w, 2 * w, bias=False)
        self.down = nn.Linear(2 * w, w, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.gate(x)) * self.up(x))


class VLMBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn_norm, self.attn, self.ffw_norm, self.mlp = Norm(W), Attn(W), Norm(W), MLP(W)


class ExpertBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn_norm, self.attn, self.ffw_norm, self.mlp = Ada(E), Attn(E), Ada(E), MLP(E)


class Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.vlm, self.expert = VLMBlock(), ExpertBlock()


class StandIn(nn.Module):
    """A few-layer mixture-of-transformers with the Pi05Policy parameter names; expert attends to VLM K/V."""

    def __init__(self, depth: int = 3) -> None:
        super().__init__()
        self.vision = nn.Linear(4, W)
        self.embed_tokens = nn.Embedding(V, W)
        self.layers = nn.ModuleList(Layer() for _ in range(depth))
        self.vlm_norm = Norm(W)
        self.expert_norm = Ada(E)
        self.action_in_proj, self.action_out_proj = nn.Linear(A, E), nn.Linear(E, A)
        self.time_mlp_in, self.time_mlp_out = nn.Linear(E, E), nn.Linear(E, E)

    def forward(self, tokens, image, x, t):  # (b, l), (b, 4), (b, h, A), (b,) -> (b, h, A), (b, p, W)
        h = torch.cat([self.vision(image)[:, None], self.embed_tokens(tokens)], dim=1)  # (b, p, W)
        freqs = torch.arange(E // 2, dtype=torch.float32)
        emb = torch.cat(
            [torch.sin(t[:, None] * (freqs + 1)), torch.cos(t[:, None] * (freqs + 1))], -1
        )  # (b, E)
        c = F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(emb))))  # (b, E)
        e = self.action_in_proj(x)  # (b, h, E)
        for layer in self.layers:
            vl, ex = layer.vlm, layer.expert
            hn = h * (1 + vl.attn_norm.weight)
            k, v = vl.attn.k(hn), vl.attn.v(hn)  # (b, p, D)
            h = h + vl.attn.o(torch.softmax(vl.attn.q(hn) @ k.transpose(1, 2), -1) @ v)
            h = h + vl.mlp(h * (1 + vl.ffw_norm.weight))
            en = e * (1 + ex.attn_norm.dense(c)[:, None, :E])
            ks = torch.cat([k, ex.attn.k(en)], 1)  # (b, p + h, D)
            vs = torch.cat([v, ex.attn.v(en)], 1)
            e = e + ex.attn.o(torch.softmax(ex.attn.q(en) @ ks.transpose(1, 2), -1) @ vs)
            e = e + ex.mlp(e * (1 + ex.ffw_norm.dense(c)[:, None, :E]))
        out = self.action_out_proj(e * (1 + self.expert_norm.dense(c)[:, None, :E]))
        return out, h * (1 + self.vlm_norm.weight)


def inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randint(0, V, (2, 5), generator=g),
        torch.randn(2, 4, generator=g),
        torch.randn(2, 4, A, generator=g),
        torch.rand(2, generator=g),
    )


def make(depth: int = 3) -> StandIn:
    torch.manual_seed(0)
    return StandIn(depth)


def train_steps(model: nn.Module, groups, steps: int = 2) -> None:
    opt = torch.optim.Adam(groups.optimizer_groups(), lr=1e-2)
    for s in range(steps):
        out, prefix = model(*inputs(s))
        loss = out.pow(2).mean() + prefix.pow(2).mean()  # the prefix term would move vlm_norm if it trained
        opt.zero_grad()
        loss.backward()
        opt.step()


def expected_trainable(name: str, mode: str, depth: int, k: int) -> bool:
    role = param_role(name)
    if role in ("expert", "projections"):
        return True
    if role == "vlm":
        layer = int(name.split(".")[1])
        if mode == "expert+top_vlm":
            return layer >= depth - k
        if mode == "lora":
            return name.endswith(("lora_A", "lora_B"))
    return False


@pytest.mark.parametrize("mode", ["expert", "expert+top_vlm", "lora"])
def test_frozen_params_stay_bit_identical_and_trainable_ones_move(mode: str) -> None:
    model = make()
    cfg = SelectiveConfig(mode=mode, top_k=2, lora_rank=4, lora_alpha=8)
    groups = apply_selective(model, cfg, 5e-6, generator=torch.Generator().manual_seed(0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_steps(model, groups)
    for n, p in model.named_parameters():
        should = expected_trainable(n, mode, 3, 2)
        assert p.requires_grad == should, n
        if should:
            assert not torch.equal(p, before[n]), f"{n} should have trained"
        else:
            assert torch.equal(p, before[n]), f"{n} should be frozen"
    assert groups.trainable_names() == {n for n, p in model.named_parameters() if p.requires_grad}
    assert frozen_prefix(model, cfg) == (mode == "expert")


def test_group_learning_rates_and_names() -> None:
    model = make()
    cfg = SelectiveConfig(mode="expert+top_vlm", top_k=1, lr_vlm_scale=0.1, weight_decay=0.01)
    groups = apply_selective(model, cfg, 1e-4)
    opt = torch.optim.AdamW(groups.optimizer_groups())
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == pytest.approx({"expert": 1e-4, "projections": 1e-4, "vlm": 1e-5})
    assert all(g["weight_decay"] == 0.01 for g in opt.param_groups)
    assert all(n.startswith("layers.2.vlm.") for n in groups.names["vlm"])
    assert "expert_norm.dense.weight" in groups.names["expert"]
    assert set(groups.names["projections"]) == {
        f"{m}.{p}"
        for m in ("action_in_proj", "action_out_proj", "time_mlp_in", "time_mlp_out")
        for p in ("weight", "bias")
    }


def test_lora_init_is_identity_disable_and_merge() -> None:
    model = make()
    keys = set(model.state_dict())
    x = inputs(7)
    with torch.no_grad():
        ref, _ = model(*x)
    cfg = SelectiveConfig(mode="lora", lora_layers=2, lora_rank=4, lora_alpha=8)
    apply_selective(model, cfg, 5e-6, generator=torch.Generator().manual_seed(1))
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    assert len(wrapped) == 2 * 7 and all(n.startswith(("layers.1.vlm.", "layers.2.vlm.")) for n in wrapped)
    assert set(model.state_dict()) - keys == set(lora_state_dict(model))  # base keys unchanged
    with torch.no_grad():
        out, _ = model(*x)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(std=0.1)
        adapted, _ = model(*x)
        with lora_disabled(model):
            base, _ = model(*x)
    assert not torch.allclose(adapted, ref)
    torch.testing.assert_close(base, ref)

    merge_lora(model)
    assert set(model.state_dict()) == keys
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    with torch.no_grad():
        merged, _ = model(*x)
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-5)


def test_base_checkpoint_loads_into_lora_model() -> None:
    src = make()
    model = copy.deepcopy(src)
    apply_selective(model, SelectiveConfig(mode="lora", lora_rank=2), 5e-6)
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    assert not unexpected and set(missing) == set(lora_state_dict(model))


def test_grad_norms_by_group() -> None:
    model = make()
    groups = apply_selective(model, SelectiveConfig(mode="expert+top_vlm", top_k=1), 5e-6)
    out, prefix = model(*inputs())
    (out.pow(2).mean() + prefix.pow(2).mean()).backward()
    norms = grad_norms_by_group(groups)
    for g, ps in groups.params.items():
        brute = torch.sqrt(sum((p.grad**2).sum() for p in ps if p.grad is not None))
        assert norms[f"grad_norm/{g}"] == pytest.approx(float(brute), rel=1e-5)
    assert norms["grad_norm/total"] == pytest.approx(
        sum(norms[f"grad_norm/{g}"] ** 2 for g in groups.params) ** 0.5, rel=1e-6
    )
    assert norms["grad_norm/vlm"] > 0


def test_contract_errors() -> None:
    model = make()
    model.state_proj = nn.Linear(2, 2)
    with pytest.raises(SelectiveError, match="state_proj"):
        apply_selective(model, SelectiveConfig(), 5e-6)
    with pytest.raises(SelectiveError, match="apply_selective"):
        frozen_prefix(make(), SelectiveConfig(mode="expert"))  # nothing frozen yet
    with pytest.raises(SelectiveError, match="VLM layers"):
        apply_selective(make(), SelectiveConfig(mode="expert+top_vlm", top_k=5), 5e-6)
