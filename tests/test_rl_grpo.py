"""The clipped GRPO surrogate vs brute-force references (docs/algorithm.md#grpo-objective,
#kl-to-a-reference)."""

from __future__ import annotations

import math

import pytest
import torch

from z1.rl.grpo import (
    GRPOConfig,
    GRPOError,
    combine_stats,
    gaussian_kl,
    grpo_loss,
    kl_early_stop,
    minibatch_indices,
    ratio_by_step,
    ratio_std,
    total_term_weight,
)


def problem(n: int = 12, j: int = 2, seed: int = 0):
    """Log-probs that depend on a parameter vector theta through a fixed random linear map."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, j, 5, generator=g, dtype=torch.float64)  # (n, j, 5)
    theta = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    adv = torch.randn(n, generator=g, dtype=torch.float64)
    w = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
    valid = torch.rand(n, j, generator=g) > 0.25
    return feats, theta, adv, w, valid


def test_gradient_at_ratio_one_is_weighted_policy_gradient() -> None:
    feats, theta, adv, w, valid = problem()
    cfg = GRPOConfig()
    new = feats @ theta  # (n, j)
    old = new.detach()
    big_w = total_term_weight(w, valid)
    loss, st = grpo_loss(new, old, adv, w, valid, cfg, big_w)
    (g,) = torch.autograd.grad(loss, theta)
    # Brute force: -sum_u w_u A_u grad log p_u / W, written as a plain loop over terms.
    brute = torch.zeros(5, dtype=torch.float64)
    for i in range(feats.shape[0]):
        for k in range(feats.shape[1]):
            if valid[i, k]:
                brute += -w[i] * adv[i] * feats[i, k]
    torch.testing.assert_close(g.double(), brute / big_w, rtol=1e-5, atol=1e-6)
    assert st["ratio/mean"] == pytest.approx(1.0) and st["approx_kl/k3"] == pytest.approx(0.0)
    assert st["clip_frac/low"] == st["clip_frac/high"] == st["clip_frac/dual"] == 0.0


def one_term(a: float, r: float, cfg: GRPOConfig = GRPOConfig()) -> tuple[float, float, dict]:  # noqa: B008
    """Loss and d loss / d log p_new for a single term with advantage a and ratio r (weight 1, W = 1)."""
    new = torch.tensor([[math.log(r)]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros(1, 1, dtype=torch.float64)
    loss, st = grpo_loss(
        new, old, torch.tensor([a]), torch.ones(1), torch.ones(1, 1, dtype=torch.bool), cfg, 1.0
    )
    (g,) = torch.autograd.grad(loss, new)
    return float(loss.detach()), float(g), st


@pytest.mark.parametrize(
    ("a", "r", "loss", "grad", "flag"),
    [
        (1.0, 1.5, -1.28, 0.0, "clip_frac/high"),  # A > 0 above 1 + eps_high: clipped, no gradient
        (1.0, 1.2, -1.2, -1.2, None),  # inside the band
        (1.0, 0.5, -0.5, -0.5, None),  # A > 0 below 1 - eps_low: pessimistic, unclipped
        (-1.0, 0.7, 0.8, 0.0, "clip_frac/low"),  # A < 0 below 1 - eps_low: clipped, no gradient
        (-1.0, 1.5, 1.5, 1.5, None),  # A < 0 above 1 + eps_high, below c: unclipped
        (-2.0, 5.0, 6.0, 0.0, "clip_frac/dual"),  # A < 0 and r > c: loss capped at -c A = 6
    ],
)
def test_clip_cases(a: float, r: float, loss: float, grad: float, flag: str | None) -> None:
    got_loss, got_grad, st = one_term(a, r)
    assert got_loss == pytest.approx(loss, abs=1e-6)
    assert got_grad == pytest.approx(grad, abs=1e-6)
    for key in ("clip_frac/high", "clip_frac/low", "clip_frac/dual"):
        assert st[key] == (1.0 if key == flag else 0.0)


def test_dual_clip_can_be_disabled() -> None:
    got_loss, got_grad, _ = one_term(-2.0, 5.0, GRPOConfig(dual_clip=None))
    assert (got_loss, got_grad) == pytest.approx((10.0, 10.0))


def test_aggregation_is_global_weighted_mean_and_accumulates_exactly() -> None:
    feats, theta, adv, w, valid = problem(n=20, j=3, seed=1)
    cfg = GRPOConfig(adv_clip=None)
    with torch.no_grad():
        old = feats @ theta + 0.3 * torch.randn(
            20, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64
        )
    big_w = total_term_weight(w, valid)
    loss, _ = grpo_loss(feats @ theta, old, adv, w, valid, cfg, big_w)
    (g_full,) = torch.autograd.grad(loss, theta)

    num, den = 0.0, 0.0  # brute-force weighted mean over valid terms
    for i in range(20):
        for k in range(3):
            if valid[i, k]:
                r = math.exp(float(feats[i, k] @ theta.detach() - old[i, k]))
                a = float(adv[i])
                term = max(-a * r, -a * min(max(r, 0.8), 1.28))
                if a < 0:
                    term = min(term, -3.0 * a)
                num += float(w[i]) * term
                den += float(w[i])
    assert den == pytest.approx(big_w)
    assert float(loss.detach()) == pytest.approx(num / den, rel=1e-6)

    total, g_acc = 0.0, torch.zeros(5, dtype=torch.float64)
    for idx in minibatch_indices(20, 3, torch.Generator().manual_seed(0)):
        part, _ = grpo_loss(feats[idx] @ theta, old[idx], adv[idx], w[idx], valid[idx], cfg, big_w)
        total += float(part.detach())
        g_acc += torch.autograd.grad(part, theta)[0].double()
    assert total == pytest.approx(float(loss.detach()), rel=1e-6)
    torch.testing.assert_close(g_acc, g_full.double(), rtol=1e-5, atol=1e-7)


def test_invalid_terms_are_ignored_even_if_nan() -> None:
    new = torch.tensor([[0.1, float("nan")]], requires_grad=True)
    old = torch.tensor([[0.0, float("nan")]])
    valid = torch.tensor([[True, False]])
    loss, st = grpo_loss(new, old, torch.tensor([1.0]), torch.ones(1), valid, GRPOConfig(), 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(new.grad).all() and st["terms/count"] == 1.0


def test_advantage_clip_and_approx_kl_stats() -> None:
    lr = torch.tensor([[0.1], [-0.2], [0.05]])
    loss, st = grpo_loss(
        lr,
        torch.zeros(3, 1),
        torch.tensor([8.0, -1.0, 0.5]),
        torch.ones(3),
        torch.ones(3, 1, dtype=torch.bool),
        GRPOConfig(),
        3.0,
    )
    r = lr.exp().squeeze(1)
    assert st["adv/clip_frac"] == pytest.approx(1 / 3)
    assert st["approx_kl/k1"] == pytest.approx(float(-lr.mean()))
    assert st["approx_kl/k2"] == pytest.approx(float(0.5 * (lr**2).mean()))
    assert st["approx_kl/k3"] == pytest.approx(float((r - 1 - lr.squeeze(1)).mean()))
    assert st["ratio/abs_dev"] == pytest.approx(float((r - 1).abs().mean()))
    # A = 8 is clipped to 5: the first term is -5 * min(r, 1.28).
    expect = (-5 * float(r[0]) + max(float(r[1]), 0.8) * 1.0 - 0.5 * float(r[2])) / 3
    assert float(loss.detach()) == pytest.approx(expect, rel=1e-5)
    assert kl_early_stop(0.03, GRPOConfig()) and not kl_early_stop(0.01, GRPOConfig())
    assert not kl_early_stop(1.0, GRPOConfig(kl_target=None))


def test_reference_kl_term() -> None:
    new = torch.zeros(2, 1, requires_grad=True)
    ref_kl = torch.tensor([[0.5], [1.5]])
    valid = torch.ones(2, 1, dtype=torch.bool)
    cfg = GRPOConfig(kl_beta=0.1)
    loss, st = grpo_loss(
        new, torch.zeros(2, 1), torch.zeros(2), torch.tensor([1.0, 3.0]), valid, cfg, 4.0, ref_kl
    )
    assert float(loss.detach()) == pytest.approx(0.1 * (0.5 + 4.5) / 4.0)
    assert st["loss/ref_kl"] == pytest.approx(5.0 / 4.0)
    with pytest.raises(GRPOError, match="ref_kl"):
        grpo_loss(new, torch.zeros(2, 1), torch.zeros(2), torch.ones(2), valid, cfg, 2.0)


def test_gaussian_kl_matches_torch_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    mu_new, mu_ref = (
        torch.randn(4, 2, 6, 5, generator=g),
        torch.randn(4, 2, 6, 5, generator=g),
    )  # (n, j, h, a)
    std = torch.rand(4, 2, generator=g) + 0.05  # (n, j): s_k per term
    mask = torch.zeros(6, 5)
    mask[:3, :4] = 1.0  # J = first 3 rows x 4 real dims
    kl = gaussian_kl(mu_new, mu_ref, std, mask)
    s = std[..., None, None].expand_as(mu_new)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu_new, s), torch.distributions.Normal(mu_ref, s)
    )
    torch.testing.assert_close(kl, (ref * mask).sum(dim=(-2, -1)), rtol=1e-5, atol=1e-6)
    assert gaussian_kl(mu_new, mu_new, 0.3).abs().max() == 0.0


def test_minibatches_partition_and_errors() -> None:
    parts = minibatch_indices(10, 4, torch.Generator().manual_seed(1))
    assert sorted(torch.cat(parts).tolist()) == list(range(10))
    assert [len(p) for p in parts] == [3, 3, 2, 2]
    with pytest.raises(GRPOError, match="minibatches"):
        minibatch_indices(3, 4)
    with pytest.raises(GRPOError, match="advantages"):
        grpo_loss(
            torch.zeros(2, 1),
            torch.zeros(2, 1),
            torch.zeros(3),
            torch.ones(2),
            torch.ones(2, 1),
            GRPOConfig(),
            1,
        )


def test_ratio_by_step() -> None:
    new = torch.tensor([[0.0, 0.1], [0.2, 0.0]])
    steps = torch.tensor([[0, 3], [3, 1]])
    out = ratio_by_step(new, torch.zeros(2, 2), torch.ones(2, 2, dtype=torch.bool), steps, 4)
    assert out["ratio_by_step/mean_k3"] == pytest.approx(float((torch.tensor([0.1, 0.2]).exp()).mean()))
    assert "ratio_by_step/mean_k2" not in out


def test_ratio_std_is_the_weighted_std_and_merges_over_shards() -> None:
    """ratio/std from the moments equals the direct weighted std, also after two shards' statistics are
    averaged by their term weights (what the data-parallel all-reduce does)."""
    feats, theta, adv, w, valid = problem(n=16, seed=3)
    old = (feats @ theta).detach()  # (n, j)
    new = old + 0.05 * torch.randn(old.shape, generator=torch.Generator().manual_seed(4), dtype=old.dtype)
    cfg = GRPOConfig()
    ww = (w[:, None] * valid).double()  # (n, j)
    r = (new - old).exp()
    mean = float((ww * r).sum() / ww.sum())
    direct = float(((ww * (r - mean) ** 2).sum() / ww.sum()).sqrt())
    _, st = grpo_loss(new, old, adv, w, valid, cfg, 1.0)
    assert st["ratio/std"] == pytest.approx(direct, rel=1e-4)
    parts = [
        grpo_loss(new[s], old[s], adv[s], w[s], valid[s], cfg, 1.0)[1] for s in (slice(0, 5), slice(5, 16))
    ]
    tot = sum(p["terms/weight"] for p in parts)
    merged = {k: sum(p[k] * p["terms/weight"] for p in parts) / tot for k in ("ratio/mean", "ratio/sq_dev")}
    assert ratio_std(merged) == pytest.approx(direct, rel=1e-4)
    assert sum(p["ratio/std"] * p["terms/weight"] for p in parts) / tot != pytest.approx(direct, rel=1e-3)


def test_combine_stats_of_shards_equals_the_whole_batch() -> None:
    """Minibatch statistics merged by `combine_stats` are the statistics of the union of the minibatches:
    true min / max, term-weighted means, the std from merged moments, summed term counts; an empty part
    (a rank without rows) changes nothing. A plain mean of the parts' values is not."""
    feats, theta, adv, w, valid = problem(n=20, seed=5)
    old = (feats @ theta).detach()  # (n, j)
    new = old + 0.2 * torch.randn(old.shape, generator=torch.Generator().manual_seed(6), dtype=old.dtype)
    cfg = GRPOConfig(dual_clip=1.5)
    _, whole = grpo_loss(new, old, adv, w, valid, cfg, total_term_weight(w, valid))
    shards = (slice(0, 3), slice(3, 11), slice(11, 20), slice(20, 20))
    parts = [
        grpo_loss(new[s], old[s], adv[s], w[s], valid[s], cfg, max(total_term_weight(w[s], valid[s]), 1.0))[1]
        for s in shards
    ]
    assert parts[-1]["terms/count"] == 0 and parts[-1]["ratio/min"] == math.inf
    merged = combine_stats(parts)
    exact = [k for k in whole if k != "adv/clip_frac"]  # a row fraction, not a term-weighted mean
    for k in exact:
        assert merged[k] == pytest.approx(whole[k], rel=1e-5, abs=1e-9), k
    live = parts[:-1]
    assert merged["ratio/min"] < sum(p["ratio/min"] for p in live) / 3 - 1e-4
    assert merged["ratio/max"] > sum(p["ratio/max"] for p in live) / 3 + 1e-4
    # and the result merges again (epochs of minibatches, or ranks of epochs) to the same numbers
    again = combine_stats([combine_stats(parts[:2]), combine_stats(parts[2:])])
    for k in exact:
        assert again[k] == pytest.approx(whole[k], rel=1e-5, abs=1e-9), k
    assert combine_stats([]) == {}


def test_kl_early_stop_is_decided_on_the_batch_mean() -> None:
    """One minibatch above the target does not stop the epochs; the term-weighted mean over the epoch's
    minibatches does. Constructed: k3 = (0.0, 0.07) with weights (3, 1) -> mean 0.0175 < 0.02; with
    weights (1, 3) -> 0.0525 > 0.02."""
    cfg = GRPOConfig(kl_target=0.02)

    def part(k3: float, weight: float) -> dict[str, float]:
        return {"approx_kl/k3": k3, "terms/weight": weight}

    low = combine_stats([part(0.0, 3.0), part(0.07, 1.0)])["approx_kl/k3"]
    high = combine_stats([part(0.0, 1.0), part(0.07, 3.0)])["approx_kl/k3"]
    assert low == pytest.approx(0.0175) and high == pytest.approx(0.0525)
    assert kl_early_stop(0.07, cfg)  # what a per-minibatch rule would have acted on
    assert not kl_early_stop(low, cfg) and kl_early_stop(high, cfg)
