"""The GRPO learner: the policy, its optimizer, the trained parameter groups and the KL reference.

`Learner.update(scored)` takes epochs x minibatches of optimizer steps on the trainable chunks of one
scored batch (`z1.records.ScoredBatch`), recomputing the log-prob of each chunk's stored stochastic
denoise steps only (docs/algorithm.md#log-prob-and-scored-entries) and minimizing the clipped Flow-SDE
surrogate of rl/grpo.py. With the VLM frozen (expert-only, the default) the prefix KV caches built during
the rollout are reused as they are.

Everything an update reads or changes that outlives one iteration is here, so the trainer's loop only
has to hand it scored batches and checkpoint `optimizer` (and the model) between them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from z1.errors import TrainingError
from z1.models.sampling import exec_mask, recompute_logprob, sample_chunk, step_std
from z1.records import RolloutBatch, ScoredBatch
from z1.rl.grpo import (
    GRPOConfig,
    combine_stats,
    gaussian_kl,
    grpo_loss,
    kl_early_stop,
    minibatch_indices,
    ratio_std,
    total_term_weight,
)
from z1.rl.params import ParamGroups, SelectiveConfig, apply_selective, frozen_prefix, grad_norms_by_group

if TYPE_CHECKING:
    from z1.distributed.ddp import DistContext

ADAM_BETAS = (0.9, 0.95)
ADAM_EPS = 1e-8


@dataclass
class Learner:
    """The trained policy and what its updates need.

    model: the policy; the rollout runner acts with this same module, so an update is what the next
        collection sees.
    optimizer: over `groups` (checkpointed with the run).
    groups: the selectively trained parameters (rl/params.py), with their learning rates.
    cfg: surrogate and update schedule; grad_clip: max global grad norm.
    prefix_frozen: nothing before the action expert trains, so the rollout's prefix caches are reused.
    generator: the minibatch permutations. In a one-process run without per-wave streams it is also the
        collector's noise stream (one run-wide stream, in lockstep on every data-parallel rank).
    ctx: the data-parallel context the update reduces gradients and statistics over
        (`z1.distributed.ddp.current()`: world size 1 outside torchrun). Given, not looked up, so the
        learner depends on no process-wide state.
    ref_model: the frozen initial policy, needed when cfg.kl_beta > 0 (docs/algorithm.md#kl-to-a-reference).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    groups: ParamGroups
    cfg: GRPOConfig
    grad_clip: float
    prefix_frozen: bool
    generator: torch.Generator
    ctx: DistContext
    ref_model: nn.Module | None = None

    def __post_init__(self) -> None:
        if self.cfg.kl_beta > 0 and self.ref_model is None:
            raise ValueError("GRPOConfig.kl_beta > 0 needs the reference policy (ref_model)")

    @classmethod
    def create(
        cls,
        model: nn.Module,
        selective: SelectiveConfig,
        lr: float,
        cfg: GRPOConfig,
        grad_clip: float,
        generator: torch.Generator,
        ctx: DistContext,
        ref_model: nn.Module | None = None,
    ) -> Learner:
        """Mark the trained parameters of `model` (`apply_selective`, which may add LoRA adapters) and
        build AdamW over them: the expert at `lr`, VLM parameters at `lr * selective.lr_vlm_scale`."""
        groups = apply_selective(model, selective, lr, generator=generator)  # LoRA's init from the run's seed
        prefix_frozen = frozen_prefix(model, selective)
        optimizer = torch.optim.AdamW(groups.optimizer_groups(), betas=ADAM_BETAS, eps=ADAM_EPS)
        return cls(model, optimizer, groups, cfg, grad_clip, prefix_frozen, generator, ctx, ref_model)

    def update(self, scored: ScoredBatch) -> dict[str, float]:
        """Epochs x minibatches of optimizer steps on the trainable chunks of `scored`; returns the
        update's statistics. The policy is in train mode during the update and in eval mode after it.

        With `cfg.kl_beta > 0`, `ref_model` adds the exact per-step Gaussian KL between the current and
        the reference step means (docs/algorithm.md#kl-to-a-reference) to the loss.

        Data-parallel (z1.distributed.ddp, torchrun): `scored` holds this rank's chunks. The trainable rows
        of all ranks, in rank order, form the global list that one process would hold; every rank draws
        the same permutation of it (`generator` runs in lockstep) and computes the loss of the rows of each
        minibatch it owns, and `allreduce_grads` turns the gradients into the global term-weighted mean. A
        rank that owns no row of a minibatch (or none at all) contributes a zero gradient with weight 0,
        so every rank takes the same optimizer steps, and the KL early stop is decided together.

        KL early stop (`kl_early_stop`): after each epoch but the last, the epoch's batch-mean k3 (the
        term-weighted mean of the minibatches' k3, each measured before its own step; global numbers
        under DDP) above `cfg.kl_target` skips the remaining epochs. Logged statistics merge every
        minibatch of every epoch run (`combine_stats`): true min / max, term-weighted means, the std from
        merged moments; grad norms are means over the optimizer steps.
        """
        self.model.train()
        try:
            return self._update(scored)
        finally:
            self.model.eval()

    def _update(self, scored: ScoredBatch) -> dict[str, float]:
        cfg, batch, ctx = self.cfg, scored.rollout, self.ctx
        idx_all = torch.as_tensor(np.flatnonzero(scored.trainable), dtype=torch.long)  # (n_local,) rows
        n_local = int(idx_all.numel())
        sizes = ctx.all_gather_object(n_local)  # trainable rows of every rank
        n_global, offset = sum(sizes), sum(sizes[: ctx.rank])
        out: dict[str, float] = {"update/terms": float(n_global), "update/steps": 0.0}
        if n_global == 0:
            return out
        adv = torch.as_tensor(scored.advantages, dtype=torch.float32)  # (n,)
        wts = torch.as_tensor(scored.weights, dtype=torch.float32)  # (n,)
        valid_all = torch.ones_like(batch.logprobs, dtype=torch.bool)  # (n, j)
        params = [p for ps in self.groups.params.values() for p in ps]
        mb_stats: list[dict[str, float]] = []  # every minibatch's (reduced) loss statistics, in order
        grad_norms: dict[str, list[float]] = {}
        epochs_run = 0
        stop = False
        for epoch in range(cfg.epochs):
            epoch_stats: list[dict[str, float]] = []
            for mb, perm in enumerate(minibatch_indices(n_global, cfg.minibatches, self.generator)):
                mine = perm[(perm >= offset) & (perm < offset + n_local)] - offset  # (m,) in permuted order
                idx = idx_all[mine]
                self.optimizer.zero_grad(set_to_none=True)
                if idx.numel() > 0:
                    new_lp, st, total = self._minibatch_backward(batch, idx, adv, wts, valid_all)
                else:  # nothing of this minibatch here: zero gradient, weight 0, the same statistic keys
                    none = batch.logprobs[:0]  # (0, j)
                    ref_kl = none if cfg.kl_beta > 0 else None
                    _, st = grpo_loss(none, none, adv[:0], wts[:0], valid_all[:0], cfg, 1.0, ref_kl=ref_kl)
                    new_lp, total = none, 0.0
                st = ctx.allreduce_grads(self.model.parameters(), total, st)  # DDP: global weighted mean
                st["ratio/std"] = ratio_std(st)  # from the (reduced) moments
                gn = grad_norms_by_group(self.groups)
                total_norm = float(torch.nn.utils.clip_grad_norm_(params, self.grad_clip))
                loss_total = float(st.get("loss/total", 0.0))
                if not (np.isfinite(total_norm) and np.isfinite(loss_total)):
                    raise TrainingError(
                        f"GRPO update, epoch {epoch + 1} minibatch {mb + 1}: the loss is {loss_total} and "
                        f"the gradient norm {total_norm}; stopped before this optimizer step, nothing of "
                        "this iteration was saved (the last checkpoint is intact). Lower --lr or check the "
                        "rewards"
                    )
                self.optimizer.step()
                out["update/steps"] += 1
                if epoch == 0 and mb == 0:
                    dev = (new_lp.detach() - batch.logprobs[idx]).abs()  # (m, j)
                    local_mean = float(dev.mean()) if dev.numel() else 0.0
                    mean = ctx.allreduce_mean({"v": local_mean}, dev.numel())["v"]
                    out["first_mb/log_ratio_abs_mean"] = mean
                epoch_stats.append(st)
                for k, v in gn.items():
                    grad_norms.setdefault(k, []).append(float(v))
            epochs_run += 1
            mb_stats.extend(epoch_stats)
            batch_k3 = combine_stats(epoch_stats).get("approx_kl/k3", 0.0)  # this epoch's batch-mean k3
            out["update/batch_k3"] = batch_k3
            if epoch + 1 < cfg.epochs and ctx.any_true(kl_early_stop(batch_k3, cfg)):
                stop = True
                break
        out.update(combine_stats(mb_stats))
        out.update({k: float(np.mean(v)) for k, v in grad_norms.items()})
        out["update/epochs_run"] = float(epochs_run)
        out["update/early_stop"] = float(stop)
        return out

    def _minibatch_backward(
        self,
        batch: RolloutBatch,
        idx: torch.Tensor,
        adv: torch.Tensor,
        wts: torch.Tensor,
        valid_all: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, float], float]:
        """Loss of the rows `idx` (m,) normalized by their own term weight, backpropagated.
        Returns the recomputed log-probs (m, j), the loss statistics and the term weight."""
        cfg, sampler = self.cfg, batch.sampler
        rows = batch.obs_index[idx]  # (m,) observation rows
        chains, step_ids = batch.chains[idx], batch.step_ids[idx]  # (m, k+1, h, a), (m, j)
        if self.prefix_frozen and batch.caches is not None:
            cache = batch.caches.index(rows)
            new_lp, means = recompute_logprob(self.model, None, chains, step_ids, sampler, cache=cache)
        else:
            cache = None
            new_lp, means = recompute_logprob(self.model, batch.inputs.index(rows), chains, step_ids, sampler)
        ref_kl = None
        if cfg.kl_beta > 0:
            with torch.no_grad():  # the frozen prefix is the same for the reference; else rebuild it
                ref_in = None if cache is not None else batch.inputs.index(rows)
                _, ref_means = recompute_logprob(
                    self.ref_model, ref_in, chains, step_ids, sampler, cache=cache
                )
            mask = exec_mask(chains.shape[2], chains.shape[3], sampler.h_exec, sampler.d_exec)
            ref_kl = gaussian_kl(means, ref_means, step_std(step_ids, sampler), mask)  # (m, j)
        total = total_term_weight(wts[idx], valid_all[idx])
        loss, st = grpo_loss(
            new_lp, batch.logprobs[idx], adv[idx], wts[idx], valid_all[idx], cfg, total, ref_kl=ref_kl
        )
        loss.backward()
        return new_lp, st, total


@torch.no_grad()
def ode_probe(model: nn.Module, batch: RolloutBatch, rows: int = 64, seed: int = 0) -> torch.Tensor | None:
    """Executed ODE actions of the policy on up to `rows` observations of `batch`, from fixed noise.

    Run before and after an update, the difference is how far the update moved the deterministic
    policy that evaluation uses (the PPO ratio only sees the stochastic denoise step).
    Returns (rows, h_exec, d_exec) in normalized units, or None without stored prefix caches.
    """
    if batch.caches is None or batch.caches.batch_size == 0:
        return None
    sampler = batch.sampler
    n = batch.caches.batch_size
    idx = torch.linspace(0, n - 1, min(rows, n)).round().long()  # (r,) spread over the batch
    cache = batch.caches.index(idx)
    h, a = batch.chains.shape[2], batch.chains.shape[3]
    noise = torch.randn(idx.numel(), h, a, generator=torch.Generator().manual_seed(seed))  # (r, h, a)
    ode = replace(sampler, mode="ode", noise_level=0.0)
    x = sample_chunk(model, cache, noise, ode).actions  # (r, h, a)
    return x[:, : sampler.h_exec, : sampler.d_exec]
