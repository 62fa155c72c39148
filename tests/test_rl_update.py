"""One GRPO update (`Learner.update`) on real collected groups: ratio 1 at the first minibatch, frozen
parts stay frozen."""

import math

import numpy as np
import pytest
import torch

from fakes import FakeVectorEnv, tiny_runner
from z1.distributed.ddp import current as current_dist
from z1.rl.grpo import GRPOConfig
from z1.rl.learner import Learner, ode_probe
from z1.rl.params import SelectiveConfig, apply_selective, frozen_prefix
from z1.rl.reward import RewardConfig, TaskTimeStats
from z1.rl.scoring import AdvantageConfig, score_batch
from z1.rollout.collector import RolloutConfig, collect_groups

LR = 1e-3  # the expert's learning rate of these updates


def _setup(mode: str):
    runner = tiny_runner()
    model = runner.model
    sel = SelectiveConfig(mode=mode, top_k=1)
    groups = apply_selective(model, sel, LR)
    cfg = RolloutConfig(
        group_size=8,
        trunks=2,
        branch_factor=4,
        branch_at=1,
        h_exec=4,
        num_steps=3,
        noise_level=1.0,
        max_steps=24,
    )
    venv = FakeVectorEnv(16, goal=0.08)  # reachable by some members, not all
    batch = collect_groups(
        runner,
        venv,
        [("a", 1), ("a", 2)],
        cfg,
        np.random.default_rng(0),
        torch.Generator().manual_seed(0),
        keep_caches=frozen_prefix(model, sel),
    )
    stats = TaskTimeStats()
    stats.register("a", cfg.max_steps)
    scored = score_batch(batch, RewardConfig(kind="D1"), stats, AdvantageConfig(), flat=False)
    return model, runner, groups, cfg, batch, scored, sel


def make_learner(model, groups, sel, grpo: GRPOConfig, ref_model=None) -> Learner:
    """The tests' learner: plain AdamW over `groups`, grad clip 1, minibatch permutations from seed 1."""
    opt = torch.optim.AdamW(groups.optimizer_groups())
    prefix_frozen = frozen_prefix(model, sel)
    gen = torch.Generator().manual_seed(1)
    return Learner(model, opt, groups, grpo, 1.0, prefix_frozen, gen, current_dist(), ref_model)


def _update(mode: str):
    model, runner, groups, cfg, batch, scored, sel = _setup(mode)
    assert scored.trainable.any(), "the fake task should give mixed groups"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = make_learner(model, groups, sel, GRPOConfig(minibatches=2, kl_target=None)).update(scored)
    return model, before, out


def test_expert_only_update_ratio_one_and_frozen_vlm():
    model, before, out = _update("expert")
    assert out["update/steps"] == 2
    assert out["first_mb/log_ratio_abs_mean"] < 1e-4
    after = model.state_dict()
    for k in before:
        changed = not torch.equal(before[k], after[k])
        if k.startswith(("vision.", "embed_tokens", "vlm_norm")) or ".vlm." in k:
            assert not changed, k
    assert any(not torch.equal(before[k], after[k]) for k in before if ".expert." in k)
    assert out["grad_norm/expert"] > 0


def test_top_vlm_update_trains_the_last_vlm_layer_only():
    model, before, out = _update("expert+top_vlm")
    after = model.state_dict()
    depth = model.config.vlm.depth
    assert out["first_mb/log_ratio_abs_mean"] < 1e-4
    assert any(
        not torch.equal(before[k], after[k]) for k in before if k.startswith(f"layers.{depth - 1}.vlm.")
    )
    for k in before:
        if k.startswith(("vision.", "embed_tokens")) or any(
            k.startswith(f"layers.{i}.vlm.") for i in range(depth - 1)
        ):
            assert torch.equal(before[k], after[k]), k


def test_step_std_is_the_documented_std_and_the_density_of_the_stored_steps():
    """`step_std` (the KL's s_k) on the uniform grid is a * sqrt(t_k / k), a at k = 0
    (docs/algorithm.md#flow-sde-step: std/a = 1.00, .949, .632, ... for K = 10), and it is the std of the
    density the rollout's log-probs were drawn under: the stored log-prob of every chunk is the Gaussian
    log-density of its stored step with the recomputed mean and this std."""
    from z1.config import SamplerConfig
    from z1.models.sampling import exec_mask, gaussian_logprob, recompute_logprob, step_std

    ten = SamplerConfig(num_steps=10, mode="sde", noise_level=0.7)
    got = step_std(torch.arange(10)[None, :], ten)[0] / 0.7  # (k,)
    want = [1.0] + [math.sqrt((1 - k / 10) / k) for k in range(1, 10)]
    torch.testing.assert_close(got, torch.tensor(want), rtol=1e-6, atol=1e-6)
    assert [round(float(v), 3) for v in got[:4]] == [1.0, 0.949, 0.632, 0.483]

    _, runner, _, cfg, batch, _, _ = _setup("expert")
    sampler = batch.sampler
    with torch.no_grad():
        cache = batch.caches.index(batch.obs_index)
        _, means = recompute_logprob(runner.model, None, batch.chains, batch.step_ids, sampler, cache=cache)
    n, j = batch.step_ids.shape
    rows = torch.arange(n)[:, None]
    x_next = batch.chains[rows, batch.step_ids + 1].reshape(n * j, *batch.chains.shape[2:])  # (n*j, h, a)
    std = step_std(batch.step_ids, sampler).reshape(n * j, 1, 1)
    mask = exec_mask(*batch.chains.shape[2:], sampler.h_exec, sampler.d_exec)
    lp = gaussian_logprob(x_next, means.reshape(n * j, *means.shape[2:]), std, mask).reshape(n, j)
    torch.testing.assert_close(lp, batch.logprobs, rtol=0, atol=1e-4)


def test_kl_to_reference_enters_the_update():
    import copy

    model, runner, groups, cfg, batch, scored, sel = _setup("expert")
    ref = copy.deepcopy(model).requires_grad_(False)
    grpo = GRPOConfig(minibatches=2, kl_target=None, kl_beta=0.1)
    out = make_learner(model, groups, sel, grpo, ref_model=ref).update(scored)
    assert out["update/steps"] == 2
    # after the first optimizer step the policy differs from the reference, so the KL is positive, and it
    # enters the loss with weight beta (stats are means over the minibatches, so this is linear)
    assert out["loss/ref_kl"] > 0.0
    assert out["loss/total"] == pytest.approx(out["loss/policy"] + 0.1 * out["loss/ref_kl"], rel=1e-5)


def test_ode_probe_measures_the_eval_policy_move():
    from z1.models.sampling import sample_chunk

    model, runner, groups, cfg, batch, scored, sel = _setup("expert")
    sampler = runner.sampler("sde", cfg.num_steps, cfg.noise_level)
    assert batch.sampler == sampler  # the probe reads the batch's own sampler
    before = ode_probe(model, batch, rows=5, seed=7)
    assert before is not None and before.shape == (5, cfg.h_exec, sampler.d_exec)
    # The probe is the ODE sampler on the stored prefixes from fixed noise: same numbers by hand.
    n = batch.caches.batch_size
    idx = torch.linspace(0, n - 1, 5).round().long()
    noise = torch.randn(5, *batch.chains.shape[2:], generator=torch.Generator().manual_seed(7))
    ode = runner.sampler("ode", cfg.num_steps)
    ref = sample_chunk(model, batch.caches.index(idx), noise, ode).actions[:, : cfg.h_exec, : sampler.d_exec]
    torch.testing.assert_close(before, ref)
    assert torch.equal(before, ode_probe(model, batch, rows=5, seed=7))  # deterministic
    with torch.no_grad():  # move the action expert: the eval-time actions move
        for p in groups.params["expert"]:
            p.add_(0.05 * torch.randn_like(p))
    assert (ode_probe(model, batch, rows=5, seed=7) - before).abs().max() > 1e-3
    no_cache = type(batch)(**{**batch.__dict__, "caches": None})
    assert ode_probe(model, no_cache) is None


def _run_update(monkeypatch, grpo: GRPOConfig, k3_script=None):
    """One `Learner.update` on the fake rollouts, recording every `grpo_loss` call: its inputs (for
    brute-force references) and its statistics. With `k3_script`, call i reports approx_kl/k3 =
    k3_script[i] (the losses and gradients are the real ones), so the early-stop rule sees a constructed KL
    sequence."""
    import z1.rl.grpo
    import z1.rl.learner as learner_mod

    model, runner, groups, cfg, batch, scored, sel = _setup("expert")
    real = z1.rl.grpo.grpo_loss
    calls: list[dict] = []

    def recording(new_lp, old_lp, adv, w, valid, gcfg, total, ref_kl=None):
        loss, st = real(new_lp, old_lp, adv, w, valid, gcfg, total, ref_kl=ref_kl)
        if k3_script is not None:
            st = {**st, "approx_kl/k3": k3_script[len(calls)]}
        calls.append({"new": new_lp.detach().clone(), "old": old_lp.clone(), "w": w.clone(), "st": st})
        return loss, st

    monkeypatch.setattr(learner_mod, "grpo_loss", recording)
    out = make_learner(model, groups, sel, grpo).update(scored)
    return out, calls


def _wmean(calls: list[dict], key: str) -> float:
    w = [c["st"]["terms/weight"] for c in calls]
    return sum(c["st"][key] * wi for c, wi in zip(calls, w)) / sum(w)


def test_kl_early_stop_uses_the_batch_mean_k3(monkeypatch):
    """Constructed KL sequence, target 0.02, 4 minibatches per epoch. Epoch 0 has one minibatch at 0.05
    and epoch 1 ends at 0.04, so a per-minibatch rule would stop after 2 steps; their batch means (~0.0125,
    ~0.0175) stay below the target, so both epochs run in full. Epoch 2's mean (~0.03) exceeds it: the
    fourth epoch is skipped."""
    script = [0.0, 0.05, 0.0, 0.0] + [0.01, 0.01, 0.01, 0.04] + [0.02, 0.04, 0.03, 0.025] + [0.0] * 4
    grpo = GRPOConfig(minibatches=4, epochs=4, kl_target=0.02)
    out, calls = _run_update(monkeypatch, grpo, script)
    assert len(calls) == 12 and out["update/steps"] == 12
    assert out["update/epochs_run"] == 3 and out["update/early_stop"] == 1.0
    epoch_means = [_wmean(calls[4 * e : 4 * e + 4], "approx_kl/k3") for e in range(3)]
    assert epoch_means[0] < 0.02 and epoch_means[1] < 0.02 < epoch_means[2]
    assert max(script[:8]) > 0.02  # the per-minibatch rule would have stopped in epoch 0
    assert out["update/batch_k3"] == pytest.approx(epoch_means[2], rel=1e-12)
    assert out["approx_kl/k3"] == pytest.approx(_wmean(calls, "approx_kl/k3"), rel=1e-12)
    # With 3 epochs the same sequence runs every epoch: the last epoch has no remaining epochs to skip.
    out, calls = _run_update(monkeypatch, GRPOConfig(minibatches=4, epochs=3, kl_target=0.02), script)
    assert out["update/epochs_run"] == 3 and out["update/early_stop"] == 0.0 and len(calls) == 12


def test_update_logs_true_ratio_extremes_and_batch_moments(monkeypatch):
    """ratio/min and ratio/max are the min and max over every term of every minibatch and epoch (not the
    mean of the minibatches' extremes); ratio/mean and ratio/std are the term-weighted moments of all of
    them. Brute force: the ratios of the recorded log-probs, in one plain pass."""
    out, calls = _run_update(monkeypatch, GRPOConfig(minibatches=2, epochs=3, kl_target=None))
    assert len(calls) == 6
    ratios, weights = [], []
    for c in calls:
        r = (c["new"].float() - c["old"].float()).clamp(-20, 20).exp()  # (m, j), every term valid
        ratios.append(r.reshape(-1).double())
        weights.append(c["w"].double()[:, None].expand_as(r).reshape(-1))
    r_all, w_all = torch.cat(ratios), torch.cat(weights)
    assert float(r_all.max() - r_all.min()) > 1e-3  # the update moved the policy
    assert out["ratio/min"] == pytest.approx(float(r_all.min()), abs=1e-6)
    assert out["ratio/max"] == pytest.approx(float(r_all.max()), abs=1e-6)
    mean_of_mins = np.mean([c["st"]["ratio/min"] for c in calls])
    mean_of_maxs = np.mean([c["st"]["ratio/max"] for c in calls])
    assert out["ratio/min"] < mean_of_mins - 1e-6 and out["ratio/max"] > mean_of_maxs + 1e-6
    mean = float((w_all * r_all).sum() / w_all.sum())
    std = float(((w_all * (r_all - mean) ** 2).sum() / w_all.sum()).sqrt())
    assert out["ratio/mean"] == pytest.approx(mean, abs=1e-6)
    assert out["ratio/std"] == pytest.approx(std, rel=1e-3, abs=1e-7)
    log_r = torch.cat([(c["new"] - c["old"]).abs().reshape(-1) for c in calls])
    assert out["log_ratio/abs_max"] == pytest.approx(float(log_r.max()), abs=1e-6)
