"""Pi05Policy: masks, positions, caching, numerics, parameter names/count, training determinism."""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F

from z1.config import policy_preset
from z1.models.gemma import MASK_VALUE, AdaRMSNorm, RMSNorm, attention, rope
from z1.models.pi05 import Pi05Policy, PolicyInputs, count_parameters, make_attention_mask, position_ids

CFG = policy_preset("tiny")


def make_inputs(b: int, seed: int = 0) -> PolicyInputs:
    g = torch.Generator().manual_seed(seed)
    n, s, l = len(CFG.cameras), CFG.vision.image_size, CFG.max_token_len
    images = torch.rand(b, n, 3, s, s, generator=g) * 2 - 1
    image_mask = torch.ones(b, n, dtype=torch.bool)
    tokens = torch.randint(0, CFG.vocab_size, (b, l), generator=g)
    lengths = torch.randint(3, l + 1, (b,), generator=g)
    token_mask = torch.arange(l)[None, :] < lengths[:, None]
    if b > 1:
        image_mask[1, 1] = False  # a masked camera
        token_mask[1, 5:] = False  # padded tokens
    return PolicyInputs(images=images, image_mask=image_mask, tokens=tokens, token_mask=token_mask)


def randomized_model(seed: int = 0) -> Pi05Policy:
    """A tiny model whose zero-initialized params (norm weights, adaRMS denses) are made random."""
    torch.manual_seed(seed)
    model = Pi05Policy(CFG)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or ".dense." in name or name.startswith("expert_norm.dense"):
                p.normal_(0.0, 0.2)
    return model.eval()


def test_mask_and_positions_hand_example():
    # prefix: 4 tokens, the 3rd padded; suffix: 2 action tokens, ar = [1, 0]
    pad = torch.tensor([[1, 1, 0, 1, 1, 1]], dtype=torch.bool)
    ar = torch.tensor([0, 0, 0, 0, 1, 0], dtype=torch.bool)
    want = torch.tensor(
        [
            [1, 1, 0, 1, 0, 0],
            [1, 1, 0, 1, 0, 0],
            [0, 0, 0, 0, 0, 0],
            [1, 1, 0, 1, 0, 0],
            [1, 1, 0, 1, 1, 1],
            [1, 1, 0, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(make_attention_mask(pad, ar)[0], want)
    assert position_ids(pad)[0].tolist() == [0, 1, 1, 2, 3, 4]
    # pi0-style suffix [state, a0, a1] with ar [1, 1, 0]: the state token does not see the actions
    pad2 = torch.ones(1, 5, dtype=torch.bool)
    m2 = make_attention_mask(pad2, torch.tensor([0, 0, 1, 1, 0], dtype=torch.bool))[0]
    assert m2[2].tolist() == [True, True, True, False, False]
    assert m2[3].tolist() == [True] * 5 and m2[0].tolist() == [True, True, False, False, False]
    # docs/model.md#masks-and-positions: 3 cams x 256 tokens, the 3rd masked -> it repeats 511,
    # the text starts at 512
    pad3 = torch.cat(
        [
            torch.ones(512, dtype=torch.bool),
            torch.zeros(256, dtype=torch.bool),
            torch.ones(4, dtype=torch.bool),
        ]
    )
    pos = position_ids(pad3[None])[0]
    assert (
        pos[511] == 511 and bool((pos[512:768] == 511).all()) and pos[768:].tolist() == [512, 513, 514, 515]
    )


def test_rmsnorm_adarms_formulas():
    x = torch.randn(2, 3, 8)
    norm = RMSNorm(8)
    with torch.no_grad():
        norm.weight.normal_()
    ref = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + norm.weight)
    torch.testing.assert_close(norm(x)[0], ref)
    ada = AdaRMSNorm(8)
    cond = torch.randn(2, 8)
    y0, g0 = ada(x, cond)
    torch.testing.assert_close(y0, x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))
    assert torch.equal(g0, torch.zeros_like(g0))
    with torch.no_grad():
        ada.dense.weight.normal_()
        ada.dense.bias.normal_()
    mod = ada.dense(cond)
    scale, shift, gate = mod[:, :8, None].transpose(1, 2), mod[:, None, 8:16], mod[:, None, 16:]
    y, g = ada(x, cond)
    rms = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(y, rms * (1 + scale) + shift)
    torch.testing.assert_close(g, gate.expand_as(g))


def test_rope_and_gqa_attention_vs_bruteforce():
    b, nh, kv, s, hd = 2, 4, 2, 5, 6
    x = torch.randn(b, nh, s, hd)
    pos = torch.tensor([[0, 1, 2, 2, 3], [0, 0, 1, 2, 3]])
    # brute-force: rotate each (x_i, x_{i+hd/2}) pair by pos * theta^(-2i/hd)
    ref = torch.empty_like(x)
    for i in range(hd // 2):
        ang = pos[:, None, :].float() * 10000.0 ** (-2 * i / hd)
        a, c = x[..., i], x[..., i + hd // 2]
        ref[..., i] = a * torch.cos(ang) - c * torch.sin(ang)
        ref[..., i + hd // 2] = c * torch.cos(ang) + a * torch.sin(ang)
    torch.testing.assert_close(rope(x, pos), ref)
    q, k, v = torch.randn(b, nh, s, hd), torch.randn(b, kv, s, hd), torch.randn(b, kv, s, hd)
    mask = torch.rand(b, s, s) > 0.3
    mask[0, 2] = False  # an all-masked row stays finite (uniform weights)
    out = attention(q, k, v, mask)
    for h in range(nh):
        kh, vh = k[:, h // (nh // kv)], v[:, h // (nh // kv)]
        logits = torch.where(mask, q[:, h] @ kh.transpose(-1, -2), torch.tensor(MASK_VALUE))
        torch.testing.assert_close(out[..., h * hd : (h + 1) * hd], torch.softmax(logits, -1) @ vh)
    assert torch.isfinite(out).all()


def test_cached_velocity_matches_joint_forward_and_masks_are_respected():
    model = randomized_model()
    inputs = make_inputs(3)
    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(3, CFG.action_horizon, CFG.action_dim, generator=g)
    t = torch.tensor([0.9, 0.35, 0.05])
    with torch.no_grad():
        v_joint = model.forward_joint(inputs, x_t, t)
        v_cached = model.velocity(model.build_prefix_cache(inputs), x_t, t)
        assert (v_joint - v_cached).abs().max() <= 1e-5
        # masked camera and padded tokens must not influence anything
        images = inputs.images.clone()
        images[1, 1] = torch.rand_like(images[1, 1])
        tokens = inputs.tokens.clone()
        tokens[1, 5:] = (tokens[1, 5:] + 7) % CFG.vocab_size
        changed = PolicyInputs(images, inputs.image_mask, tokens, inputs.token_mask)
        v2 = model.forward_joint(changed, x_t, t)
        torch.testing.assert_close(v2[1], v_joint[1], rtol=0, atol=1e-5)
        assert (v2[0] - v_joint[0]).abs().max() == 0  # other rows are untouched
        # ...while a valid token does change the output, and so does t
        tokens[0, 0] = (tokens[0, 0] + 1) % CFG.vocab_size
        v3 = model.forward_joint(PolicyInputs(images, inputs.image_mask, tokens, inputs.token_mask), x_t, t)
        assert (v3[0] - v_joint[0]).abs().max() > 1e-4
        assert (model.forward_joint(inputs, x_t, t.flip(0))[0] - v_joint[0]).abs().max() > 1e-4


def test_shared_prefix_expand_equals_repeated_rows():
    model = randomized_model()
    one = make_inputs(1, seed=3)
    with torch.no_grad():
        shared = model.build_prefix_cache(one).expand(4)
        rebuilt = model.build_prefix_cache(one.expand(4))
    assert shared.batch_size == 4 and torch.equal(shared.mask, rebuilt.mask)
    for a, b in zip(shared.keys + shared.values, rebuilt.keys + rebuilt.values, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    two = make_inputs(2, seed=4)
    idx = torch.tensor([0, 0, 0, 1, 1, 1])
    assert torch.equal(two.expand(3).tokens, two.index(idx).tokens)
    with torch.no_grad():
        c2 = model.build_prefix_cache(two)
    assert torch.equal(c2.expand(3).keys[0], c2.index(idx).keys[0])


def test_zero_init_adarms_makes_expert_blocks_identity():
    torch.manual_seed(0)
    model = Pi05Policy(CFG).eval()
    b = 2
    xs = torch.randn(b, CFG.action_horizon, CFG.expert.width)
    c = model.time_conditioning(torch.tensor([0.3, 0.8]))
    with torch.no_grad():
        for layer in model.layers:
            blk = layer.expert
            hs, gate = blk.attn_norm(xs, c)
            assert torch.equal(gate, torch.zeros_like(gate))
            heads = torch.randn(b, CFG.action_horizon, CFG.expert.num_heads * CFG.expert.head_dim)
            assert torch.equal(blk.attn_residual(xs, heads, gate), xs)
            assert torch.equal(blk.ffw_residual(xs, c), xs)
        # so the expert stack is the identity: v = out_proj(rmsnorm(in_proj(x))), whatever the prefix
        inputs = make_inputs(b)
        x_t = torch.randn(b, CFG.action_horizon, CFG.action_dim)
        t = torch.tensor([0.3, 0.8])
        h = model.action_in_proj(x_t)
        want = model.action_out_proj(h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6))
        torch.testing.assert_close(model.forward_joint(inputs, x_t, t), want)


def test_time_embedding_and_text_scaling():
    from z1.models.pi05 import sincos_time_embedding

    t = torch.tensor([0.25])
    emb = sincos_time_embedding(t, 8, 4e-3, 4.0)
    periods = [4e-3 * 1000 ** (i / 3) for i in range(4)]
    want = [math.sin(0.25 * 2 * math.pi / p) for p in periods] + [
        math.cos(0.25 * 2 * math.pi / p) for p in periods
    ]
    torch.testing.assert_close(emb[0], torch.tensor(want))
    model = Pi05Policy(CFG)
    inputs = make_inputs(1)
    with torch.no_grad():
        x, pad = model.embed_prefix(inputs)
    p_img = model.vision.tokens_per_cam * len(CFG.cameras)
    torch.testing.assert_close(
        x[0, p_img:], model.embed_tokens.weight[inputs.tokens[0]] * math.sqrt(CFG.vlm.width)
    )
    assert pad.shape == (1, p_img + CFG.max_token_len)


def test_pi05_parameter_count_and_names():
    cfg = policy_preset("pi05")
    assert count_parameters(cfg) == 3_353_433_872
    with torch.device("meta"):
        model = Pi05Policy(cfg)
    patterns = [
        r"vision\.patch_embed\.(weight|bias)",
        r"vision\.pos_embed",
        r"vision\.blocks\.\d+\.(ln1|ln2)\.(weight|bias)",
        r"vision\.blocks\.\d+\.attn\.(q|k|v|o)\.(weight|bias)",
        r"vision\.blocks\.\d+\.mlp\.(fc1|fc2)\.(weight|bias)",
        r"vision\.(norm|proj)\.(weight|bias)",
        r"embed_tokens\.weight",
        r"layers\.\d+\.vlm\.(attn_norm|ffw_norm)\.weight",
        r"layers\.\d+\.(vlm|expert)\.attn\.(q|k|v|o)\.weight",
        r"layers\.\d+\.(vlm|expert)\.mlp\.(gate|up|down)\.weight",
        r"layers\.\d+\.expert\.(attn_norm|ffw_norm)\.dense\.(weight|bias)",
        r"vlm_norm\.weight",
        r"expert_norm\.dense\.(weight|bias)",
        r"(action_in_proj|action_out_proj|time_mlp_in|time_mlp_out)\.(weight|bias)",
    ]
    rx = re.compile("|".join(f"(?:{p})" for p in patterns))
    sd = model.state_dict()
    bad = [k for k in sd if not rx.fullmatch(k)]
    assert not bad, bad
    # 811 = the 812 tensors of the openpi file (docs/model.md#key-mapping) - 2 lm_heads + embed_tokens
    assert len(sd) == 3 + 27 * 16 + 4 + 1 + 18 * 9 + 18 * 11 + 1 + 2 + 8 == 811
    assert sd["vision.pos_embed"].shape == (256, 1152)
    assert sd["layers.0.expert.attn.q.weight"].shape == (2048, 1024)
    assert sd["layers.0.expert.attn.o.weight"].shape == (1024, 2048)
    assert sd["layers.3.expert.attn_norm.dense.weight"].shape == (3072, 1024)
    assert sd["layers.0.vlm.attn.k.weight"].shape == (256, 2048)
    groups = model.parameter_groups()
    names = [n for g in groups.values() for n in g]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert "embed_tokens.weight" in groups["vlm"] and "expert_norm.dense.bias" in groups["expert"]
    assert sorted(groups["projections"]) == sorted(
        f"{m}.{p}"
        for m in ("action_in_proj", "action_out_proj", "time_mlp_in", "time_mlp_out")
        for p in ("weight", "bias")
    )


def _train_losses(seed: int, steps: int = 8) -> list[float]:
    torch.manual_seed(seed)
    model = Pi05Policy(CFG)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95))
    inputs = make_inputs(8, seed=5)
    g = torch.Generator().manual_seed(6)
    actions = torch.randn(8, CFG.action_horizon, CFG.action_dim, generator=g).clamp(-1, 1)
    mask = torch.zeros_like(actions)
    mask[:, :6, :5] = 1.0  # 5 real dims, last 2 rows padded
    noise = torch.randn(actions.shape, generator=g)
    time = model.sample_time(8, actions.device, g)
    losses = []
    for _ in range(steps):
        loss = model.compute_loss(inputs, actions, mask, noise=noise, time=time)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_adamw_reduces_flow_loss_and_is_deterministic():
    a = _train_losses(0)
    assert a[-1] < 0.8 * a[0], a
    assert a == _train_losses(0)


def test_loss_is_masked_mse_against_manual_formula():
    torch.manual_seed(0)
    model = randomized_model()
    inputs = make_inputs(2)
    actions = torch.randn(2, CFG.action_horizon, CFG.action_dim)
    mask = torch.zeros_like(actions, dtype=torch.bool)
    mask[0, :3, :2] = True
    mask[1, :, :4] = True
    noise, time = torch.randn_like(actions), torch.tensor([0.2, 0.7])
    with torch.no_grad():
        loss = model.compute_loss(inputs, actions, mask, noise=noise, time=time)
        x_t = time[:, None, None] * noise + (1 - time[:, None, None]) * actions
        v = model.forward_joint(inputs, x_t, time)
    want = F.mse_loss(v[mask], (noise - actions)[mask])
    torch.testing.assert_close(loss, want)
    t = model.sample_time(20000, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert float(t.min()) >= 0.001 and float(t.max()) <= 1.0
    # Beta(1.5, 1) * 0.999 + 0.001 has mean 0.6 * 0.999 + 0.001
    assert abs(float(t.mean()) - (0.6 * 0.999 + 0.001)) < 0.01
