"""Flow sampler: SDE step algebra, Gaussian log-prob, ODE/SDE consistency and log-prob recomputation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from z1.config import SamplerConfig, policy_preset
from z1.models.pi05 import Pi05Policy, PolicyInputs
from z1.models.sampling import (
    draw_step_ids,
    exec_mask,
    gaussian_logprob,
    recompute_logprob,
    row_noise,
    sample_chunk,
    sde_step_stats,
    time_grid,
)

CFG = policy_preset("tiny")
H, A = CFG.action_horizon, CFG.action_dim


def make_inputs(b: int, seed: int = 0) -> PolicyInputs:
    g = torch.Generator().manual_seed(seed)
    n, s, l = len(CFG.cameras), CFG.vision.image_size, CFG.max_token_len
    token_mask = torch.arange(l)[None, :] < torch.randint(3, l + 1, (b, 1), generator=g)
    return PolicyInputs(
        images=torch.rand(b, n, 3, s, s, generator=g) * 2 - 1,
        image_mask=torch.ones(b, n, dtype=torch.bool),
        tokens=torch.randint(0, CFG.vocab_size, (b, l), generator=g),
        token_mask=token_mask,
    )


@pytest.fixture(scope="module")
def model() -> Pi05Policy:
    torch.manual_seed(0)
    m = Pi05Policy(CFG)
    with torch.no_grad():  # make the adaRMS path non-trivial
        for name, p in m.named_parameters():
            if ".dense." in name or name.startswith("expert_norm"):
                p.normal_(0.0, 0.1)
    return m.eval()


def test_time_grid_and_exec_mask():
    assert torch.equal(time_grid(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    m = exec_mask(4, 3, 2, 5)
    assert m.tolist() == [[1, 1, 1], [1, 1, 1], [0, 0, 0], [0, 0, 0]]


def test_sde_step_stats_two_forms_and_closed_form_std():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, generator=g, dtype=torch.float64).float()
    v = torch.randn(3, 4, 5, generator=g, dtype=torch.float64).float()
    grid = time_grid(10)
    a = 0.5
    for k in range(10):
        t, tn = float(grid[k]), float(grid[k + 1])
        mean, std = sde_step_stats(x, v, grid[k], grid[k + 1], grid[1], a)
        # second form: (1 - t') a_hat + (t' - sigma^2 Delta / (2t)) eps_hat, in float64 by hand
        t_tilde = float(grid[1]) if k == 0 else t
        sigma = a * math.sqrt(t / (1 - t_tilde))
        delta = t - tn
        xd, vd = x.double(), v.double()
        a_hat, eps_hat = xd - t * vd, xd + (1 - t) * vd
        mean2 = (1 - tn) * a_hat + (tn - sigma**2 * delta / (2 * t)) * eps_hat
        torch.testing.assert_close(mean.double(), mean2, rtol=1e-5, atol=1e-5)
        # closed form on the uniform grid: s_0 = a, s_k = a sqrt(t_k / k)
        want_std = a if k == 0 else a * math.sqrt(t / k)
        assert abs(float(std) - want_std) < 1e-6
    # per-row times give the same numbers as scalar times
    tk = torch.tensor([1.0, 0.5, 0.1])
    tn = tk - 0.1
    mean_rows, std_rows = sde_step_stats(x, v, tk, tn, grid[1], a)
    for i in range(3):
        m_i, s_i = sde_step_stats(x[i : i + 1], v[i : i + 1], tk[i], tn[i], grid[1], a)
        assert torch.equal(mean_rows[i : i + 1], m_i) and torch.equal(std_rows[i].reshape(()), s_i)
    # noise level 0 is the Euler ODE step exactly
    m0, s0 = sde_step_stats(x, v, grid[3], grid[4], grid[1], 0.0)
    assert torch.equal(m0, x - (grid[3] - grid[4]) * v) and float(s0) == 0.0


def test_gaussian_logprob_matches_torch_normal():
    g = torch.Generator().manual_seed(1)
    mean = torch.randn(4, H, A, generator=g)
    std = torch.tensor([0.3, 0.05, 1.0, 0.2]).reshape(4, 1, 1)
    x = mean + std * torch.randn(4, H, A, generator=g)
    mask = exec_mask(H, A, 5, 3)
    want = (torch.distributions.Normal(mean, std.expand_as(mean)).log_prob(x) * mask).sum((1, 2))
    torch.testing.assert_close(gaussian_logprob(x, mean, std, mask), want, rtol=1e-5, atol=1e-4)


def test_draw_step_ids_ranges():
    g = torch.Generator().manual_seed(0)
    single = draw_step_ids(2000, SamplerConfig(mode="sde", stochastic="single", num_steps=5), g)
    assert single.shape == (2000, 1) and set(single.flatten().tolist()) == {0, 1, 2, 3}
    win = draw_step_ids(2000, SamplerConfig(mode="sde", stochastic="window", window=2, num_steps=5), g)
    assert win.shape == (2000, 2) and set(win[:, 0].tolist()) == {0, 1, 2}
    assert torch.equal(win[:, 1], win[:, 0] + 1)
    assert (
        draw_step_ids(3, SamplerConfig(mode="sde", stochastic="all", num_steps=5), g).tolist()
        == [[0, 1, 2, 3, 4]] * 3
    )
    assert draw_step_ids(3, SamplerConfig(mode="ode"), g).shape == (3, 0)


def test_noise_level_zero_sde_equals_ode_bitwise(model):
    inputs = make_inputs(3)
    noise = torch.randn(3, H, A, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        cache = model.build_prefix_cache(inputs)
    ode = sample_chunk(model, cache, noise, SamplerConfig(mode="ode", num_steps=5))
    sde = sample_chunk(
        model, cache, noise, SamplerConfig(mode="sde", stochastic="all", noise_level=0.0, num_steps=5),
        torch.Generator().manual_seed(3),
    )  # fmt: skip
    assert torch.equal(ode.actions, sde.actions) and torch.equal(ode.chain, sde.chain)
    assert ode.step_ids.shape == (3, 0) and ode.logprobs.shape == (3, 0)
    assert torch.equal(ode.chain[:, 0], noise) and ode.chain.shape == (3, 6, H, A)
    # and a > 0 actually perturbs exactly the exec entries
    cfg = SamplerConfig(mode="sde", stochastic="all", noise_level=0.5, num_steps=5, h_exec=4, d_exec=3)
    noisy = sample_chunk(model, cache, noise, cfg, torch.Generator().manual_seed(3))
    assert not torch.equal(noisy.actions[:, :4, :3], ode.actions[:, :4, :3])


@pytest.mark.parametrize("stochastic", ["single", "window", "all"])
@pytest.mark.parametrize("shared", [False, True])
def test_recompute_logprob_matches_rollout(model, stochastic, shared):
    cfg = SamplerConfig(
        mode="sde", stochastic=stochastic, window=2, noise_level=0.5, num_steps=5, h_exec=6, d_exec=5
    )
    g = torch.Generator().manual_seed(7)
    if shared:  # G rows from one observation, prefix computed once
        one = make_inputs(1, seed=11)
        inputs = one.expand(4)
        with torch.no_grad():
            cache = model.build_prefix_cache(one).expand(4)
    else:
        inputs = make_inputs(4, seed=12)
        with torch.no_grad():
            cache = model.build_prefix_cache(inputs)
    noise = torch.randn(4, H, A, generator=g)
    out = sample_chunk(model, cache, noise, cfg, g)
    j = {"single": 1, "window": 2, "all": 5}[stochastic]
    assert out.step_ids.shape == (4, j) and out.logprobs.shape == (4, j)
    assert torch.isfinite(out.logprobs).all()
    # entries outside the exec mask follow the ODE; the stochastic transition equals the Normal density
    lp, means = recompute_logprob(model, inputs, out.chain, out.step_ids, cfg)
    assert lp.requires_grad
    torch.testing.assert_close(torch.exp(lp - out.logprobs), torch.ones_like(lp), rtol=0, atol=1e-5)
    lp2, _ = recompute_logprob(model, None, out.chain, out.step_ids, cfg, cache=cache)
    torch.testing.assert_close(torch.exp(lp2 - out.logprobs), torch.ones_like(lp), rtol=0, atol=1e-5)
    grid = time_grid(cfg.num_steps)
    m = exec_mask(H, A, cfg.h_exec, cfg.d_exec)
    for r in range(4):
        for c, k in enumerate(out.step_ids[r].tolist()):
            std = 0.5 * math.sqrt(float(grid[k]) / max(k, 1)) if k else 0.5
            x_next = out.chain[r, k + 1]
            ref = (torch.distributions.Normal(means[r, c].detach(), std).log_prob(x_next) * m).sum()
            assert abs(float(ref) - float(out.logprobs[r, c])) < 1e-3
            # off-mask entries of a stochastic step are the deterministic ODE (Euler) step, not the SDE mean
            with torch.no_grad():
                row = cache.index(torch.tensor([r]))
                v = model.velocity(row, out.chain[r : r + 1, k], grid[k].expand(1))[0]  # (h, a)
            ode = out.chain[r, k] - (grid[k] - grid[k + 1]) * v
            torch.testing.assert_close(x_next[m == 0], ode[m == 0], rtol=0, atol=1e-5)
            assert not torch.allclose(x_next[m == 0], means[r, c].detach()[m == 0], atol=1e-4)
    # gradient flows to the action expert
    lp.sum().backward()
    assert model.layers[0].expert.attn.q.weight.grad is not None
    model.zero_grad(set_to_none=True)


def test_explicit_sde_noise_reproduces_the_generator_path_bitwise(model):
    """`sde_noise` replaces the generator's per-step draws: feeding the draws the generator would make
    gives the identical chunk (stochastic='all' draws one (b, h, a) xi at every step, in order)."""
    cfg = SamplerConfig(mode="sde", stochastic="all", noise_level=0.5, num_steps=4, h_exec=5, d_exec=4)
    inputs = make_inputs(3, seed=4)
    with torch.no_grad():
        cache = model.build_prefix_cache(inputs)
    noise = torch.randn(3, H, A, generator=torch.Generator().manual_seed(5))
    ref = sample_chunk(model, cache, noise, cfg, torch.Generator().manual_seed(6))
    g = torch.Generator().manual_seed(6)
    xi = torch.stack([torch.randn(3, H, A, generator=g) for _ in range(4)], dim=1)  # (b, k, h, a)
    got = sample_chunk(model, cache, noise, cfg, step_ids=ref.step_ids, sde_noise=xi)
    assert torch.equal(got.chain, ref.chain) and torch.equal(got.logprobs, ref.logprobs)
    with pytest.raises(ValueError, match="sde_noise must be"):
        sample_chunk(model, cache, noise, cfg, step_ids=ref.step_ids, sde_noise=xi[:, :3])


@pytest.mark.parametrize("stochastic", ["single", "window"])
def test_row_noise_draw_order(stochastic):
    """Row r: Generator(seed_r) -> initial noise (h, a), step ids, then K step noises; rows independent."""
    cfg = SamplerConfig(mode="sde", stochastic=stochastic, window=2, num_steps=5)
    seeds = torch.tensor([3, 2**62 + 7, 3], dtype=torch.int64)
    rn = row_noise(seeds, cfg, H, A)
    j = 1 if stochastic == "single" else 2
    assert rn.noise.shape == (3, H, A) and rn.step_ids.shape == (3, j) and rn.sde_noise.shape == (3, 5, H, A)
    for r, seed in enumerate(seeds.tolist()):
        g = torch.Generator().manual_seed(seed)
        assert torch.equal(rn.noise[r], torch.randn(H, A, generator=g))
        assert torch.equal(rn.step_ids[r : r + 1], draw_step_ids(1, cfg, g))
        assert torch.equal(rn.sde_noise[r], torch.randn(5, H, A, generator=g))
    assert torch.equal(rn.sde_noise[0], rn.sde_noise[2]) and not torch.equal(rn.noise[0], rn.noise[1])
    ode = row_noise(seeds, SamplerConfig(mode="ode", num_steps=5), H, A)
    assert torch.equal(ode.noise, rn.noise) and ode.step_ids.shape == (3, 0) and ode.sde_noise.shape[1] == 0


class _ConstantField:
    """A stand-in policy whose velocity is a fixed field u (b, h, a), for exact step algebra."""

    def __init__(self, u: torch.Tensor) -> None:
        self.u = u

    def velocity(self, cache, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.u


class _Rows:
    def __init__(self, b: int) -> None:
        self.batch_size = b


def _weights(x_next: torch.Tensor, x: torch.Tensor, v: torch.Tensor, t: float) -> tuple[float, float]:
    """Least-squares (alpha, beta) of x_next = alpha * a_hat + beta * eps_hat over the given entries, with
    a_hat = x - t v and eps_hat = x + (1 - t) v (float64). Exact when the step is such a combination."""
    xd, vd = x.double().reshape(-1), v.double().reshape(-1)
    basis = torch.stack([xd - t * vd, xd + (1 - t) * vd], dim=1)  # (entries, 2)
    sol = torch.linalg.lstsq(basis, x_next.double().reshape(-1, 1)).solution
    return float(sol[0]), float(sol[1])


@pytest.mark.parametrize("stochastic", ["single", "window", "all"])
def test_unscored_entries_take_the_ode_step_exactly(model, stochastic):
    """At every step, stochastic or not, the entries outside J (rows >= h_exec, dims >= d_exec) equal the
    Euler ODE step of the stored x^(k) bitwise; at stochastic steps the scored entries are mean + s_k xi
    bitwise, and their log-prob is the Normal density of those entries."""
    cfg = SamplerConfig(
        mode="sde", stochastic=stochastic, window=2, noise_level=0.5, num_steps=5, h_exec=6, d_exec=5
    )
    b = 4
    inputs = make_inputs(b, seed=21)
    with torch.no_grad():
        cache = model.build_prefix_cache(inputs)
    g = torch.Generator().manual_seed(22)
    noise = torch.randn(b, H, A, generator=g)
    step_ids = draw_step_ids(b, cfg, g)
    xi = torch.randn(b, cfg.num_steps, H, A, generator=g)  # (b, k, h, a)
    out = sample_chunk(model, cache, noise, cfg, step_ids=step_ids, sde_noise=xi)
    grid = time_grid(cfg.num_steps)
    m = exec_mask(H, A, cfg.h_exec, cfg.d_exec).bool()  # (h, a)
    assert bool(m.any()) and not bool(m.all())
    for k in range(cfg.num_steps):
        x = out.chain[:, k]  # (b, h, a)
        with torch.no_grad():
            v = model.velocity(cache, x, grid[k].expand(b)).float()  # the batch the sampler used
        ode = x - (grid[k] - grid[k + 1]) * v
        x_next = out.chain[:, k + 1]
        assert torch.equal(x_next[:, ~m], ode[:, ~m]), k
        hit = (step_ids == k).any(-1)  # (b,)
        assert torch.equal(x_next[~hit], ode[~hit])  # ODE steps: every entry
        if hit.any():
            mean, std = sde_step_stats(x, v, grid[k], grid[k + 1], grid[1], cfg.noise_level)
            assert torch.equal(x_next[hit][:, m], (mean + std * xi[:, k])[hit][:, m])
            normal = torch.distributions.Normal(mean[hit], std.expand_as(mean[hit]))
            want = (normal.log_prob(x_next[hit]) * m).sum((1, 2))  # (hits,)
            cols = (step_ids[hit] == k).float().argmax(-1)  # which of the row's terms is step k
            got = out.logprobs[hit].gather(1, cols[:, None])[:, 0]
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_unscored_noise_weight_is_the_ode_weight():
    """The weight on eps_hat of an unscored entry at a stochastic step is t_{k+1} (the ODE's, 0.8/0.6/0.4/
    0.2 for K=5), not the SDE mean's t_{k+1} - s_k^2/(2 t_k) (0.675/0.475/0.338/0.158 at a=0.5), which
    the scored entries' noise-free part keeps."""
    b, k_steps, a_lvl = 3, 5, 0.5
    cfg = SamplerConfig(
        mode="sde", stochastic="all", noise_level=a_lvl, num_steps=k_steps, h_exec=4, d_exec=3
    )
    g = torch.Generator().manual_seed(5)
    u = torch.randn(b, H, A, generator=g)
    noise = torch.randn(b, H, A, generator=g)
    xi = torch.randn(b, k_steps, H, A, generator=g)
    step_ids = torch.arange(k_steps).expand(b, k_steps).clone()
    out = sample_chunk(_ConstantField(u), _Rows(b), noise, cfg, step_ids=step_ids, sde_noise=xi)
    grid = time_grid(k_steps)
    m = exec_mask(H, A, cfg.h_exec, cfg.d_exec).bool()
    sde_weights = []
    for k in range(k_steps - 1):
        t, tn = float(grid[k]), float(grid[k + 1])
        x, x_next = out.chain[:, k], out.chain[:, k + 1]
        alpha, beta = _weights(x_next[:, ~m], x[:, ~m], u[:, ~m], t)
        assert alpha == pytest.approx(1 - tn, abs=1e-5) and beta == pytest.approx(tn, abs=1e-5)
        _, std = sde_step_stats(x, u, grid[k], grid[k + 1], grid[1], a_lvl)
        mean_part = x_next[:, m] - float(std) * xi[:, k][:, m]
        alpha_s, beta_s = _weights(mean_part, x[:, m], u[:, m], t)
        t_tilde = tn if k == 0 else t
        want = tn - a_lvl**2 * t / (1 - t_tilde) * (t - tn) / (2 * t)
        assert beta_s == pytest.approx(want, abs=1e-4) and alpha_s == pytest.approx(1 - tn, abs=1e-4)
        sde_weights.append(want)
    np.testing.assert_allclose(sde_weights, [0.675, 0.475, 0.3375, 0.15833], atol=1e-5)
