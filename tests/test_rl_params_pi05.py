"""Selective training and LoRA on the real tiny Pi05Policy (docs/algorithm.md#selective-training)."""

from __future__ import annotations

import pytest
import torch

pi05 = pytest.importorskip("z1.models.pi05")

from z1.config import policy_preset  # noqa: E402
from z1.rl.lora import LoRALinear, lora_disabled  # noqa: E402
from z1.rl.params import PREFIX_ROLES, SelectiveConfig, apply_selective, frozen_prefix, param_role  # noqa: E402

CFG = policy_preset("tiny")


def inputs(b: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n, s, l = len(CFG.cameras), CFG.vision.image_size, CFG.max_token_len
    return pi05.PolicyInputs(
        images=torch.rand(b, n, 3, s, s, generator=g) * 2 - 1,
        image_mask=torch.ones(b, n, dtype=torch.bool),
        tokens=torch.randint(0, CFG.vocab_size, (b, l), generator=g),
        token_mask=torch.ones(b, l, dtype=torch.bool),
    )


def suffix(b: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, CFG.action_horizon, CFG.action_dim, generator=g), torch.rand(b, generator=g)


def model() -> torch.nn.Module:
    """Tiny policy with every parameter perturbed, so zero-initialized gates do not hide gradient paths."""
    torch.manual_seed(0)
    m = pi05.Pi05Policy(CFG)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


@pytest.mark.parametrize("mode", ["expert", "expert+top_vlm", "lora"])
def test_selective_modes_on_tiny_policy(mode: str) -> None:
    m = model()
    cfg = SelectiveConfig(mode=mode, top_k=2, lora_rank=4, lora_alpha=4)
    groups = apply_selective(m, cfg, 5e-6, generator=torch.Generator().manual_seed(0))
    assert frozen_prefix(m, cfg) == (mode == "expert")
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = torch.optim.Adam(groups.optimizer_groups(), lr=1e-2)
    x_t, t = suffix()
    for _ in range(2):  # two steps: LoRA's A only gets a gradient once B is nonzero
        loss = m.forward_joint(inputs(), x_t, t).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    moved = {n for n, p in m.named_parameters() if not torch.equal(p, before[n])}
    trainable = groups.trainable_names()
    assert moved <= trainable  # frozen parameters are bit-identical
    if mode == "expert":
        assert not any(param_role(n) in PREFIX_ROLES for n in trainable)
    no_grad = {n for n, p in m.named_parameters() if p.grad is None}
    assert {n for n in trainable if param_role(n) in ("expert", "projections")} <= moved | no_grad
    if mode != "expert":
        assert any(param_role(n) == "vlm" for n in moved)  # the RL loss reaches the VLM through K/V


def test_lora_is_on_the_forward_path_of_the_tiny_policy() -> None:
    m = model().eval()
    x_t, t = suffix()
    with torch.no_grad():
        ref = m.forward_joint(inputs(), x_t, t)
        cache_ref = m.velocity(m.build_prefix_cache(inputs()), x_t, t)
    apply_selective(
        m, SelectiveConfig(mode="lora", lora_layers=2, lora_rank=4), 5e-6, torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        torch.testing.assert_close(m.forward_joint(inputs(), x_t, t), ref, rtol=0, atol=0)
        for mod in m.modules():
            if isinstance(mod, LoRALinear):
                mod.lora_B.normal_(std=0.05)
        adapted = m.forward_joint(inputs(), x_t, t)
        cached = m.velocity(m.build_prefix_cache(inputs()), x_t, t)
        with lora_disabled(m):
            base = m.velocity(m.build_prefix_cache(inputs()), x_t, t)
    assert not torch.allclose(adapted, ref, atol=1e-4)
    torch.testing.assert_close(cached, adapted, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(base, cache_ref, rtol=1e-5, atol=1e-5)
