"""Flow sampler: Euler ODE and Flow-SDE steps, Gaussian log-probs, chunk sampling and log-prob recomputation.

Pure functions over a `Pi05Policy` (docs/algorithm.md#flow-sde-step). t runs 1 (noise) -> 0 (action) on a
uniform grid.
Step k maps x^(k) at t_k to x^(k+1) at t_{k+1}, Delta = t_k - t_{k+1}:
    ODE:  x^(k+1) = x^(k) - Delta * v
    SDE:  x^(k+1) = m * (mu_k + s_k * xi) + (1 - m) * (x^(k) - Delta * v)    (xi ~ N(0, I))
m is the exec mask: 1 on the scored entries J (the first h_exec rows x d_exec dims), 0 elsewhere.
Only the steps in S (`step_ids`) are stochastic; all others are ODE steps. At a stochastic step the
scored entries take the Flow-SDE transition, whose Gaussian density is the log-prob; the unscored ones
take the deterministic ODE step, which keeps them on the flow's marginals: the SDE mean without its noise
shrinks the noise component (weight t' - s_k^2 / (2 t) on eps_hat instead of t'), so noise-free entries
that followed it would drift toward the denoised estimate at every stochastic step.

Random numbers come either from one `torch.Generator` shared by the batch (the default), or per row from
the row's own seed (`row_noise`), so that a row's chunk does not depend on which batch, process or
machine computed it (inference in the learner or in the env actors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from z1.config import SamplerConfig

if TYPE_CHECKING:
    from z1.models.pi05 import Pi05Policy, PolicyInputs, PrefixCache

LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class ChunkSample:
    actions: Tensor  # (b, h, a) x at t=0
    chain: Tensor  # (b, k+1, h, a) x^(0..K), x^(0) = initial noise
    step_ids: Tensor  # (b, j) int64 stochastic step indices (j=0 for ODE)
    logprobs: Tensor  # (b, j) float32 log p(x^(k+1) | x^(k)) summed over the scored entries


def time_grid(num_steps: int, device: torch.device | str | None = None) -> Tensor:
    """(k+1,) float32 uniform grid t_k = 1 - k/K from 1 to 0."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    k = torch.arange(num_steps + 1, dtype=torch.float64, device=device)
    return (1.0 - k / num_steps).to(torch.float32)


def _col(t: Tensor | float, like: Tensor) -> Tensor:
    """A scalar or (b,) time as a float32 tensor broadcastable against (b, h, a)."""
    t = torch.as_tensor(t, dtype=torch.float32, device=like.device)
    return t.reshape(-1, *([1] * (like.dim() - 1))) if t.dim() else t


def sde_sigma(t: Tensor, t_first_next: Tensor | float, noise_level: float) -> Tensor:
    """The Flow-SDE noise scale sigma = a * sqrt(t / (1 - t~)), t~ = t except t~ = t_1 (`t_first_next`) at
    t = 1 (docs/algorithm.md#flow-sde-step). Elementwise over t (any shape).

    The one place of the formula: the sampler's step (`sde_step_stats`) and the trainer's per-step std
    (`step_std`, for the KL to a reference) both call it, so they cannot drift apart."""
    t_tilde = torch.where(t >= 1.0, t_first_next, t)
    return noise_level * torch.sqrt(t / (1.0 - t_tilde))


def step_std(step_ids: Tensor, cfg: SamplerConfig) -> Tensor:
    """Transition std s_k = sigma_k * sqrt(Delta) at each stored step: step_ids (n, j) -> (n, j) float32.

    It depends on (k, K, a) only, not on the weights, so the trainer reads it off the stored step ids
    instead of re-running the step."""
    grid = time_grid(cfg.num_steps, step_ids.device)
    t, t_next = grid[step_ids], grid[step_ids + 1]
    return sde_sigma(t, grid[1], cfg.noise_level) * torch.sqrt(t - t_next)


def sde_step_stats(
    x: Tensor,
    v: Tensor,
    t: Tensor | float,
    t_next: Tensor | float,
    t_first_next: Tensor | float,
    noise_level: float,
) -> tuple[Tensor, Tensor]:
    """Flow-SDE Euler-Maruyama step (docs/algorithm.md#flow-sde-step). x, v (b, h, a); t, t_next scalars
    or (b,).

    sigma = a * sqrt(t / (1 - t~)), t~ = t except t~ = t_1 (`t_first_next`) at t = 1.
    mean = x (1 - sigma^2 Delta / (2t)) - Delta v (1 + sigma^2 (1 - t) / (2t)); std = sigma sqrt(Delta).
    Returns mean (b, h, a) float32 and std broadcastable to it (b, 1, 1) or scalar-shaped.
    """
    x, v = x.float(), v.float()
    tc, tn, t1 = _col(t, x), _col(t_next, x), _col(t_first_next, x)
    delta = tc - tn
    sigma = sde_sigma(tc, t1, noise_level)
    s2 = sigma * sigma
    mean = x * (1.0 - s2 * delta / (2.0 * tc)) - delta * v * (1.0 + s2 * (1.0 - tc) / (2.0 * tc))
    std = sigma * torch.sqrt(delta)
    return mean, std


def gaussian_logprob(x_next: Tensor, mean: Tensor, std: Tensor, mask: Tensor) -> Tensor:
    """Sum over mask entries of log N(x_next; mean, std^2), in fp32. x_next, mean (b, h, a) -> (b,).
    The formula: docs/algorithm.md#log-prob-and-scored-entries.

    std broadcasts against (b, h, a) and is constant over the scored entries of a row (Flow-SDE);
    the constant terms are computed once per row so that equal inputs give bit-equal log-probs.
    """
    x_next, mean = x_next.float(), mean.float()
    m = mask.float().expand_as(x_next)
    b = x_next.shape[0]
    s = std.float().expand_as(x_next).reshape(b, -1)[:, 0]  # (b,)
    quad = ((x_next - mean).pow(2) * m).reshape(b, -1).sum(-1)  # (b,)
    n = m.reshape(b, -1).sum(-1)  # (b,)
    return -quad / (2.0 * s * s) - n * torch.log(s) - 0.5 * LOG_2PI * n


def exec_mask(h: int, a: int, h_exec: int, d_exec: int, device: torch.device | str | None = None) -> Tensor:
    """(h, a) float32, 1 on the first min(h_exec, h) rows x min(d_exec, a) dims."""
    if h_exec < 1 or d_exec < 1:
        raise ValueError(f"h_exec and d_exec must be >= 1, got {h_exec}, {d_exec}")
    m = torch.zeros(h, a, dtype=torch.float32, device=device)
    m[: min(h_exec, h), : min(d_exec, a)] = 1.0
    return m


def draw_step_ids(
    b: int,
    cfg: SamplerConfig,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """(b, j) int64 stochastic steps per row.

    ode: j=0. single: one step in 0..K-2 (never the last). window: W consecutive steps starting in 0..K-1-W.
    all: every step 0..K-1.
    """
    k = cfg.num_steps
    if cfg.mode == "ode":
        return torch.zeros(b, 0, dtype=torch.int64, device=device)
    if cfg.stochastic == "single":
        if k < 2:
            raise ValueError("stochastic='single' excludes the last step, so it needs num_steps >= 2")
        return torch.randint(0, k - 1, (b, 1), generator=generator).to(device)
    if cfg.stochastic == "window":
        w = cfg.window
        if not 1 <= w <= k - 1:
            raise ValueError(f"window={w} must be in 1..num_steps-1={k - 1} (the last step is excluded)")
        start = torch.randint(0, k - w, (b, 1), generator=generator)
        return (start + torch.arange(w)).to(device)
    if cfg.stochastic == "all":
        return torch.arange(k, device=device).expand(b, k).clone()
    raise ValueError(f"unknown stochastic mode {cfg.stochastic!r}; use 'single', 'window' or 'all'")


@dataclass(frozen=True)
class RowNoise:
    """Every random number of a chunk, drawn per row from the row's seed (`row_noise`)."""

    noise: Tensor  # (b, h, a) initial x at t=1
    step_ids: Tensor  # (b, j) int64 stochastic step indices
    sde_noise: Tensor  # (b, k, h, a) xi of every denoise step (read at the stochastic ones); k=0 for ODE


def row_noise(seeds: Tensor, cfg: SamplerConfig, h: int, a: int) -> RowNoise:
    """Row r's random numbers from `torch.Generator().manual_seed(seeds[r])`, in this order: the initial
    noise (h, a), its stochastic step ids (`draw_step_ids` of one row), then one xi (h, a) for each of the
    K denoise steps (SDE only; drawn for every step, so the stream does not depend on which are stochastic).

    seeds: (b,) int64. A row's draws depend on its seed only: the same seed gives the same chunk alone, in
    any batch, in this process or in a Ray actor.
    """
    if seeds.dim() != 1:
        raise ValueError(f"seeds must be (b,), got {tuple(seeds.shape)}")
    k = cfg.num_steps if cfg.mode == "sde" else 0
    noise, ids, xis = [], [], []
    for seed in seeds.tolist():
        g = torch.Generator().manual_seed(int(seed))
        noise.append(torch.randn((h, a), generator=g))  # (h, a)
        ids.append(draw_step_ids(1, cfg, g))  # (1, j)
        xis.append(torch.randn((k, h, a), generator=g))  # (k, h, a)
    b = len(noise)
    if b == 0:
        j = draw_step_ids(0, cfg, torch.Generator()).shape[1]
        return RowNoise(torch.zeros(0, h, a), torch.zeros(0, j, dtype=torch.int64), torch.zeros(0, k, h, a))
    return RowNoise(torch.stack(noise), torch.cat(ids), torch.stack(xis))


@torch.no_grad()
def sample_chunk(
    policy: Pi05Policy,
    cache: PrefixCache,
    noise: Tensor,
    cfg: SamplerConfig,
    generator: torch.Generator | None = None,
    step_ids: Tensor | None = None,
    sde_noise: Tensor | None = None,
) -> ChunkSample:
    """Integrate x from t=1 (noise (b, h, a)) to t=0 with the cached prefix; SDE at `step_ids` in sde mode.

    The SDE steps' xi comes from `generator` (one (b, h, a) draw per step where any row is stochastic),
    or from `sde_noise` (b, K, h, a) when given (per-row noise, `row_noise`).
    """
    b, h, a = noise.shape
    if cache.batch_size != b:
        raise ValueError(f"cache has {cache.batch_size} rows but noise has {b}; use cache.expand(g)")
    grid = time_grid(cfg.num_steps, noise.device)
    k_steps = cfg.num_steps
    if cfg.mode == "ode":
        step_ids = torch.zeros(b, 0, dtype=torch.int64, device=noise.device)
    elif step_ids is None:
        step_ids = draw_step_ids(b, cfg, generator, noise.device)
    if step_ids.shape[0] != b or (step_ids.numel() and (step_ids.min() < 0 or step_ids.max() >= k_steps)):
        raise ValueError(f"step_ids must be (b={b}, j) with values in 0..{k_steps - 1}")
    if sde_noise is not None and cfg.mode == "sde" and sde_noise.shape != (b, k_steps, h, a):
        raise ValueError(f"sde_noise must be ({b}, {k_steps}, {h}, {a}), got {tuple(sde_noise.shape)}")
    m = exec_mask(h, a, cfg.h_exec, cfg.d_exec, noise.device)  # (h, a)
    scored = m.bool()  # (h, a) the entries J that take the SDE transition and are scored
    x = noise.float()
    chain = [x]
    logprobs = torch.zeros(step_ids.shape, dtype=torch.float32, device=noise.device)
    for k in range(k_steps):
        t, t_next = grid[k], grid[k + 1]
        v = policy.velocity(cache, x, t.expand(b)).float()
        x_ode = x - (t - t_next) * v
        hit = step_ids == k  # (b, j)
        if cfg.mode == "sde" and bool(hit.any()):
            mean, std = sde_step_stats(x, v, t, t_next, grid[1], cfg.noise_level)
            if sde_noise is None:
                xi = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            else:
                xi = sde_noise[:, k].to(device=x.device, dtype=x.dtype)  # (b, h, a)
            # Scored entries: the SDE transition; unscored ones: the ODE step (they carry no noise).
            x_sde = torch.where(scored, mean + std * xi, x_ode)  # (b, h, a)
            lp = gaussian_logprob(x_sde, mean, std.expand(b, 1, 1), m)  # (b,) over the scored entries
            logprobs = torch.where(hit, lp[:, None], logprobs)
            x = torch.where(hit.any(-1)[:, None, None], x_sde, x_ode)
        else:
            x = x_ode
        chain.append(x)
    return ChunkSample(actions=x, chain=torch.stack(chain, dim=1), step_ids=step_ids, logprobs=logprobs)


def recompute_logprob(
    policy: Pi05Policy,
    inputs: PolicyInputs | None,
    chain: Tensor,
    step_ids: Tensor,
    cfg: SamplerConfig,
    cache: PrefixCache | None = None,
) -> tuple[Tensor, Tensor]:
    """Log-probs of the stored transitions at the stochastic steps, with grad (for the GRPO trainer).

    chain (b, k+1, h, a); step_ids (b, j). Builds the prefix once (unless `cache` is given) and evaluates the
    velocity only at (x^(k), t_k) for k in step_ids. Returns logprobs (b, j) and means (b, j, h, a): the
    Flow-SDE step means. The log-prob reads only the scored entries of the stored x^(k+1), the ones
    `sample_chunk` drew from N(mean, s_k^2); its unscored entries are ODE steps and carry no density.
    """
    b, kp1, h, a = chain.shape
    if kp1 != cfg.num_steps + 1:
        raise ValueError(
            f"chain has {kp1} states but cfg.num_steps={cfg.num_steps} needs {cfg.num_steps + 1}"
        )
    j = step_ids.shape[1]
    if step_ids.shape[0] != b:
        raise ValueError(f"step_ids has {step_ids.shape[0]} rows, chain has {b}")
    if cache is None:
        if inputs is None:
            raise ValueError("recompute_logprob needs either inputs or a prefix cache")
        cache = policy.build_prefix_cache(inputs)
    if cache.batch_size != b:
        raise ValueError(f"prefix has {cache.batch_size} rows but the chain has {b}")
    if j == 0:
        empty = chain.new_zeros(b, 0)
        return empty, chain.new_zeros(b, 0, h, a)
    grid = time_grid(cfg.num_steps, chain.device)
    rows = torch.arange(b, device=chain.device)[:, None]
    x_k = chain[rows, step_ids].reshape(b * j, h, a)  # (b*j, h, a)
    x_next = chain[rows, step_ids + 1].reshape(b * j, h, a)
    t = grid[step_ids].reshape(b * j)
    t_next = grid[step_ids + 1].reshape(b * j)
    v = policy.velocity(cache.expand(j), x_k, t)
    mean, std = sde_step_stats(x_k, v, t, t_next, grid[1], cfg.noise_level)
    m = exec_mask(h, a, cfg.h_exec, cfg.d_exec, chain.device)
    lp = gaussian_logprob(x_next, mean, std, m)
    return lp.reshape(b, j), mean.reshape(b, j, h, a)
