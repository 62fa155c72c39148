"""The clipped GRPO surrogate for flow policies and its statistics (docs/algorithm.md#grpo-objective,
#metrics; the `#...` anchors below name sections of docs/algorithm.md).

One PPO term u = (row i, stochastic step j): a row is one recorded chunk (flat trajectory chunk or tree
edge chunk) and j indexes its stochastic denoise steps (|S| = 1 by default). The trainer computes the
log-probs (#log-prob-and-scored-entries, summed over the scored entries J) and passes per-row advantages
and weights:

    W = total_term_weight(weights, valid)                  # over the WHOLE rollout batch, once
    for epoch in range(cfg.epochs):
        parts = []
        for idx in minibatch_indices(n, cfg.minibatches, gen):
            loss, st = grpo_loss(new_lp[idx], old_lp[idx], adv[idx], w[idx], valid[idx], cfg, W)
            (loss * cfg.minibatches).backward(); opt.step()   # or accumulate micro-batches and step once
            parts.append(st)
        if kl_early_stop(combine_stats(parts)["approx_kl/k3"], cfg): break   # the batch-mean k3

Sharing the global denominator W makes micro-batch gradient accumulation exact: summing `grpo_loss`
over any partition of the batch gives exactly the full-batch loss (#grpo-objective, "token-mean" over the
global batch). When each minibatch is its own optimizer step, scale by the number of minibatches (or pass the
minibatch's own weight) so the step size does not shrink with the minibatch count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


class GRPOError(ValueError):
    """Mismatched shapes or an invalid config given to the GRPO loss."""


@dataclass(frozen=True)
class GRPOConfig:
    """Surrogate and update schedule (defaults: docs/algorithm.md#defaults)."""

    clip_low: float = 0.2
    """ε_low: the ratio is clipped below at 1 - ε_low (clip-higher, DAPO's 0.2)."""
    clip_high: float = 0.28
    """ε_high: the ratio is clipped above at 1 + ε_high (clip-higher, DAPO's 0.28)."""
    dual_clip: float | None = 3.0
    """c of the dual clip: for negative advantages the loss is capped at -c A; None disables it."""
    kl_beta: float = 0.0
    """β of the exact per-step Gaussian KL to the starting policy (docs/algorithm.md#kl-to-a-reference);
    0 = no KL term and no reference copy."""
    adv_clip: float | None = 5.0
    """Advantages are clipped to [-adv_clip, adv_clip]; None disables."""
    epochs: int = 1
    """Update passes over one rollout batch (docs/algorithm.md#kl-early-stop)."""
    minibatches: int = 4
    """Optimizer steps per pass: the batch's trainable chunks split into this many minibatches."""
    kl_target: float | None = 0.02
    """Skip the remaining update epochs when an epoch's batch-mean k3 approx-KL exceeds this; None
    disables. An epoch always runs to its end, so with epochs = 1 it only logs."""
    log_ratio_clamp: float = 20.0
    """The log-ratio is clamped to [-c, c] before exp (guards against overflow, not a trust region)."""

    def __post_init__(self) -> None:
        from z1.errors import check_float

        check_float(self.log_ratio_clamp, "--grpo.log-ratio-clamp", low=0.0, low_open=True)
        if self.kl_target is not None:
            check_float(self.kl_target, "--grpo.kl-target", low=0.0)  # 0: stop after the first epoch
        if self.adv_clip is not None:
            check_float(self.adv_clip, "--grpo.adv-clip", low=0.0, low_open=True)
        if not (0.0 < self.clip_low < 1.0 and self.clip_high > 0.0):
            raise GRPOError(f"need 0 < clip_low < 1 and clip_high > 0, got {self.clip_low}, {self.clip_high}")
        if self.dual_clip is not None and self.dual_clip <= 1.0:
            raise GRPOError(f"dual_clip must be > 1 (or None to disable), got {self.dual_clip}")
        if self.kl_beta < 0:
            raise GRPOError(f"kl_beta must be >= 0, got {self.kl_beta}")
        if self.epochs < 1 or self.minibatches < 1:
            raise GRPOError(f"epochs and minibatches must be >= 1, got {self.epochs}, {self.minibatches}")


def total_term_weight(weights: Tensor, valid: Tensor) -> float:
    """The loss denominator W: row weights summed over all valid terms. weights (n,), valid (n, j)."""
    if weights.ndim != 1 or valid.ndim != 2 or valid.shape[0] != weights.shape[0]:
        raise GRPOError(
            f"weights must be (n,) and valid (n, j); got {tuple(weights.shape)}, {tuple(valid.shape)}"
        )
    return float((weights.double()[:, None] * valid.double()).sum())


def grpo_loss(
    new_logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    weights: Tensor,
    valid: Tensor,
    cfg: GRPOConfig,
    total_weight: float,
    ref_kl: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped surrogate (#grpo-objective) of one (micro-)batch, normalized by the global term weight.

    new_logprobs, old_logprobs: (n, j) per-step log-probs summed over J; new carries gradient.
    advantages: (n,) one per row (flat: the trajectory's A_i; tree: the edge's A(e)).
    weights: (n,) w_u per row (the edge mass rho; 1/G for the members of a flat group).
    valid: (n, j) bool, 0 for padding, chunks after termination and filtered groups.
    total_weight: `total_term_weight` over the whole rollout batch (not this minibatch).
    ref_kl: (n, j) exact per-step KL to the reference (`gaussian_kl`), needed when cfg.kl_beta > 0.

        l_u = max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high));  if A < 0: l_u = min(l_u, -c A)
        L   = sum_u w_u l_u / W  +  beta sum_u w_u KL_u / W

    Returns (loss, stats). Stats are w-weighted means over this batch's valid terms, keyed "ratio/mean",
    "ratio/std", "ratio/min", "ratio/max", "ratio/abs_dev", "clip_frac/{low,high,dual}",
    "approx_kl/{k1,k2,k3}", "adv/clip_frac", "loss/{policy,total,ref_kl}", plus "terms/weight" (this
    batch's share of W) and "terms/count", so the trainer can combine them across minibatches.
    """
    n, j = new_logprobs.shape if new_logprobs.ndim == 2 else (-1, -1)
    for name, t, shape in (
        ("new_logprobs", new_logprobs, (n, j)),
        ("old_logprobs", old_logprobs, (n, j)),
        ("valid", valid, (n, j)),
        ("advantages", advantages, (n,)),
        ("weights", weights, (n,)),
    ):
        if n < 0 or tuple(t.shape) != shape:
            raise GRPOError(f"{name} has shape {tuple(t.shape)}; expected {shape} with new_logprobs (n, j)")
    if ref_kl is not None and tuple(ref_kl.shape) != (n, j):
        raise GRPOError(f"ref_kl has shape {tuple(ref_kl.shape)}; expected ({n}, {j})")
    if cfg.kl_beta > 0 and ref_kl is None:
        raise GRPOError("cfg.kl_beta > 0 needs ref_kl (per-step gaussian_kl to the reference)")
    if not total_weight > 0:
        raise GRPOError(
            f"total_weight must be > 0 (no valid terms in the rollout batch?), got {total_weight}"
        )

    mask = valid.bool()  # (n, j)
    diff = (new_logprobs.float() - old_logprobs.float().detach()).masked_fill(~mask, 0.0)
    log_ratio = diff.clamp(-cfg.log_ratio_clamp, cfg.log_ratio_clamp)  # (n, j)
    ratio = log_ratio.exp()  # (n, j)
    adv_raw = advantages.float().detach()
    adv = adv_raw if cfg.adv_clip is None else adv_raw.clamp(-cfg.adv_clip, cfg.adv_clip)
    adv2 = adv[:, None].expand(n, j)  # (n, j)

    surr = -adv2 * ratio
    surr_clipped = -adv2 * ratio.clamp(1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    term = torch.maximum(surr, surr_clipped)  # (n, j)
    if cfg.dual_clip is not None:
        term = torch.where(adv2 < 0, torch.minimum(term, -cfg.dual_clip * adv2), term)

    w = weights.float().detach()[:, None] * mask  # (n, j)
    policy_loss = (w * term.masked_fill(~mask, 0.0)).sum() / total_weight
    loss = policy_loss
    kl_loss = None
    if ref_kl is not None:
        kl_loss = (w * ref_kl.float().masked_fill(~mask, 0.0)).sum() / total_weight
        if cfg.kl_beta > 0:
            loss = loss + cfg.kl_beta * kl_loss

    with torch.no_grad():
        stats = _stats(log_ratio, ratio, adv2, adv_raw, w, mask, cfg)
        stats["loss/policy"] = float(policy_loss)
        stats["loss/total"] = float(loss)
        if kl_loss is not None:
            stats["loss/ref_kl"] = float(kl_loss)
    return loss, stats


def _stats(
    log_ratio: Tensor, ratio: Tensor, adv2: Tensor, adv_raw: Tensor, w: Tensor, mask: Tensor, cfg: GRPOConfig
) -> dict[str, float]:
    """Always the same keys. A batch without valid terms (a data-parallel rank whose share of a minibatch
    is empty) gets neutral values: 0 for the means (it enters the rank-weighted mean with weight 0),
    +inf for minima and -inf for maxima (the min / max over ranks ignores them)."""
    wsum = float(w.sum())
    n_terms = int(mask.sum())
    empty = n_terms == 0 or wsum <= 0
    out: dict[str, float] = {"terms/weight": wsum, "terms/count": float(n_terms)}

    def wmean(x: Tensor) -> float:
        return 0.0 if empty else float((w * x.float()).sum() / wsum)

    r_valid = ratio[mask]  # (terms,)
    mean_r = wmean(ratio)
    out.update(
        {
            "ratio/mean": mean_r,
            "ratio/sq_dev": wmean((ratio - 1.0) ** 2),
            "ratio/min": math.inf if empty else float(r_valid.min()),
            "ratio/max": -math.inf if empty else float(r_valid.max()),
            "ratio/abs_dev": wmean((ratio - 1.0).abs()),
            "log_ratio/abs_max": -math.inf if empty else float(log_ratio[mask].abs().max()),
            # Zero-gradient regions of the clipped objective (#metrics, clip fractions).
            "clip_frac/high": wmean((adv2 > 0) & (ratio > 1.0 + cfg.clip_high)),
            "clip_frac/low": wmean((adv2 < 0) & (ratio < 1.0 - cfg.clip_low)),
            "clip_frac/dual": wmean((adv2 < 0) & (ratio > cfg.dual_clip))
            if cfg.dual_clip is not None
            else 0.0,
            # approx-KL estimators of KL(old || new) from samples of the old policy (#metrics).
            "approx_kl/k1": wmean(-log_ratio),
            "approx_kl/k2": wmean(0.5 * log_ratio**2),
            "approx_kl/k3": wmean(ratio - 1.0 - log_ratio),
            "adv/clip_frac": float((adv_raw.abs() > cfg.adv_clip).float().mean())
            if cfg.adv_clip is not None and adv_raw.numel() > 0
            else 0.0,
        }
    )
    out["ratio/std"] = ratio_std(out)
    return out


def kl_early_stop(approx_kl_k3: float, cfg: GRPOConfig) -> bool:
    """Whether to skip the remaining epochs (#kl-early-stop), decided after each epoch on its batch-mean k3.

    `approx_kl_k3` is the batch-mean k3 approx-KL of the epoch that just ended: the term-weighted mean of
    k3 = r - 1 - log r over all terms of the batch, each measured by its minibatch just before that
    minibatch's step (the epoch's minibatches partition the batch), i.e. `combine_stats` of the epoch's
    minibatch statistics. True when it exceeds cfg.kl_target. A single minibatch above the target does
    not stop anything by itself; the epoch always runs to its end.
    """
    return cfg.kl_target is not None and approx_kl_k3 > cfg.kl_target


def combine_stats(parts: Sequence[dict[str, float]]) -> dict[str, float]:
    """The `grpo_loss` statistics of several minibatches (of one or more epochs) as one set.

    Keys ending in "min" / "max" take the true min / max over the parts (empty parts hold +inf / -inf);
    "terms/..." are summed; every other key is a weighted mean over the batch's terms, so the parts'
    values are averaged with their "terms/weight" (parts of weight 0 drop out), and "ratio/std" is
    recomputed from the merged moments. The same rules merge data-parallel ranks' statistics.
    """
    if not parts:
        return {}
    weights = [float(p.get("terms/weight", 0.0)) for p in parts]
    total = sum(weights)
    out: dict[str, float] = {}
    for k in dict.fromkeys(k for p in parts for k in p):
        vals = [(float(p[k]), w) for p, w in zip(parts, weights) if k in p]
        if k.endswith("min"):
            out[k] = min(v for v, _ in vals)
        elif k.endswith("max"):
            out[k] = max(v for v, _ in vals)
        elif k.startswith("terms/"):
            out[k] = sum(v for v, _ in vals)
        else:
            den = sum(w for _, w in vals)
            out[k] = sum(v * w for v, w in vals) / den if den > 0 else 0.0
    if "ratio/std" in out:
        out["ratio/std"] = ratio_std(out) if total > 0 else 0.0
    return out


def ratio_by_step(
    new_logprobs: Tensor, old_logprobs: Tensor, valid: Tensor, step_ids: Tensor, num_steps: int
) -> dict[str, float]:
    """Ratio mean/min/max per denoise-step index k. step_ids (n, j) long: the k of each term."""
    out: dict[str, float] = {}
    with torch.no_grad():
        ratio = (new_logprobs.float() - old_logprobs.float()).exp()
        for k in range(num_steps):
            sel = valid.bool() & (step_ids == k)
            if sel.any():
                r = ratio[sel]
                out[f"ratio_by_step/mean_k{k}"] = float(r.mean())
                out[f"ratio_by_step/min_k{k}"] = float(r.min())
                out[f"ratio_by_step/max_k{k}"] = float(r.max())
    return out


def gaussian_kl(
    mean_new: Tensor, mean_ref: Tensor, std: Tensor | float, mask: Tensor | None = None
) -> Tensor:
    """Exact KL(N(mu_new, s^2 I) || N(mu_ref, s^2 I)) of one stochastic step, summed over J
    (#kl-to-a-reference).

    mean_new, mean_ref: (..., h, a) step means; std: s_k, a float or a tensor broadcastable to (...);
    mask: scored entries J, broadcastable to (..., h, a) (e.g. (h, a) with ones on H_exec x d).
    Returns (...) = sum_J (mu_new - mu_ref)^2 / (2 s^2). Computed in fp32.
    """
    if mean_new.shape != mean_ref.shape or mean_new.ndim < 2:
        raise GRPOError(
            f"mean_new {tuple(mean_new.shape)} and mean_ref {tuple(mean_ref.shape)} must match, (..., h, a)"
        )
    s = torch.as_tensor(std, dtype=torch.float32, device=mean_new.device)
    sq = (mean_new.float() - mean_ref.float()) ** 2  # (..., h, a)
    if mask is not None:
        sq = sq * mask.to(sq.dtype)
    return sq.sum(dim=(-2, -1)) / (2.0 * s**2)


def minibatch_indices(n: int, minibatches: int, generator: torch.Generator | None = None) -> list[Tensor]:
    """A random permutation of range(n) split into `minibatches` nearly equal parts (long tensors)."""
    if not 1 <= minibatches <= n:
        raise GRPOError(f"need 1 <= minibatches <= n rows, got minibatches={minibatches}, n={n}")
    return list(torch.randperm(n, generator=generator).tensor_split(minibatches))


def ratio_std(stats: dict[str, float]) -> float:
    """The weighted std of the ratio from the mergeable moments "ratio/mean" and "ratio/sq_dev" (the
    weighted mean of (r - 1)^2): recomputed after data-parallel ranks average their statistics, where a
    mean of per-rank stds would not be the global std. Centred at 1, where the ratios are, so float32
    reduction keeps its precision."""
    if "ratio/sq_dev" not in stats:
        return 0.0
    d = stats["ratio/mean"] - 1.0
    return max(stats["ratio/sq_dev"] - d * d, 0.0) ** 0.5
