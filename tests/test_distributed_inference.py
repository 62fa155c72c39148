"""Policy inference in the Ray env actors (`RolloutConfig.inference="actors"`), per-row noise seeds, the
weight push after an update, and Ray call timeouts.

Per-row seeds make a row's chunk independent of the batch it was computed in, so the actors sample what
the learner would; the actors' records are what the trainer recomputes; a stale weight version is never
acted with; a call that hangs surfaces as `EnvWorkerError` and the collector re-collects its wave.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fakes import FakeVectorEnv, tiny_runner
from test_distributed_rollouts import assert_each_group_once, assert_same_batch
from z1.config import SamplerConfig
from z1.envs.vector import EnvWorkerError
from z1.models.sampling import draw_step_ids, recompute_logprob, time_grid
from z1.rollout.collector import RolloutBatch, RolloutConfig, collect_groups

# One trunk per group branched in two at chunk 1; 4 slots = 2 groups per wave. Slots 0, 2 (the trunks)
# live on actor 0 and slots 1, 3 (the children) on actor 1, so every branch clones across actors.
MW_CFG = RolloutConfig(
    group_size=2, trunks=1, branch_factor=2, branch_at=1, h_exec=4, num_steps=3, max_steps=12
)
MW_GROUPS = [("reach-v3", 1), ("push-v3", 2), ("reach-v3", 3)]  # two waves
ACTORS = RolloutConfig(**{**MW_CFG.__dict__, "inference": "actors"})
LEARNER_SEEDED = RolloutConfig(**{**MW_CFG.__dict__, "row_seeds": True})


@pytest.fixture(scope="module")
def runner():
    return tiny_runner()


def _collect(runner, venv, cfg: RolloutConfig, progress=None) -> RolloutBatch:
    return collect_groups(
        runner,
        venv,
        list(MW_GROUPS),
        cfg,
        np.random.default_rng(0),
        torch.Generator().manual_seed(0),
        progress=progress,
    )


def _logprob_error(runner, batch: RolloutBatch, cfg: RolloutConfig) -> float:
    """Largest |recomputed - stored| log-prob over the batch, recomputed on the learner's weights."""
    sampler = runner.sampler("sde", cfg.num_steps, cfg.noise_level, cfg.stochastic, cfg.window)
    with torch.no_grad():
        lp, _ = recompute_logprob(
            runner.model, batch.inputs.index(batch.obs_index), batch.chains, batch.step_ids, sampler
        )
    return float((lp - batch.logprobs).abs().max())


# ---------------------------------------------------------------- per-row seeds (no Ray)


def _brute_force_row(runner, ob, seed: int, cfg: SamplerConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """One row alone, written out: its generator gives x^(0), the step ids, then one xi per step; Euler
    steps, and at the stochastic ones the Flow-SDE mean/std (docs/algorithm.md#flow-sde-step) on the
    executed entries (the others take the Euler step) with the Normal log-density over them. Returns the
    chain (k+1, h, a) and the log-probs (j,)."""
    model = runner.model
    h, a, k_steps = model.config.action_horizon, model.config.action_dim, cfg.num_steps
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(h, a, generator=g)[None]  # (1, h, a)
    ids = draw_step_ids(1, cfg, g)[0].tolist()
    xi = torch.randn(k_steps, h, a, generator=g)  # (k, h, a)
    with torch.no_grad():
        cache = model.build_prefix_cache(runner.encoder.encode([ob]))
    mask = torch.zeros(h, a)
    mask[: cfg.h_exec, : cfg.d_exec] = 1.0
    grid = time_grid(k_steps)
    chain, lps = [x[0]], []
    for k in range(k_steps):
        t, tn = float(grid[k]), float(grid[k + 1])
        with torch.no_grad():
            v = model.velocity(cache, x, torch.tensor([t]))
        delta = t - tn
        if k in ids:
            t_tilde = float(grid[1]) if k == 0 else t
            sigma = cfg.noise_level * math.sqrt(t / (1.0 - t_tilde))
            mean = x * (1 - sigma**2 * delta / (2 * t)) - delta * v * (1 + sigma**2 * (1 - t) / (2 * t))
            std = sigma * math.sqrt(delta)
            # executed entries: the SDE transition; the others: the Euler ODE step
            x = mask * (mean + std * xi[k]) + (1 - mask) * (x - delta * v)
            lps.append(float((torch.distributions.Normal(mean, std).log_prob(x) * mask).sum()))
        else:
            x = x - delta * v
        chain.append(x[0])
    return torch.stack(chain), torch.tensor(lps)


def test_per_row_seeds_do_not_depend_on_the_batch(runner):
    env = FakeVectorEnv(4)
    obs = env.reset([0, 1, 2, 3], ["a", "b", "a", "c"], [1, 2, 1, 3])  # rows 0 and 2 share a prefix
    cfg = runner.sampler("sde", 4, 0.5, "window", 2)
    seeds = torch.tensor([11, 2**62 + 3, 12, 13], dtype=torch.int64)
    batch = runner.act(obs, cfg, seeds=seeds)
    assert batch.prefix_forwards == 3
    assert not torch.allclose(batch.sample.chain[0], batch.sample.chain[2])  # same observation, own noise
    for r in range(4):
        alone = runner.act([obs[r]], cfg, seeds=seeds[r : r + 1])
        torch.testing.assert_close(alone.sample.chain[0], batch.sample.chain[r], rtol=0, atol=1e-5)
        assert torch.equal(alone.sample.step_ids[0], batch.sample.step_ids[r])
        torch.testing.assert_close(alone.sample.logprobs[0], batch.sample.logprobs[r], rtol=0, atol=1e-5)
        chain, lps = _brute_force_row(runner, obs[r], int(seeds[r]), cfg)
        torch.testing.assert_close(batch.sample.chain[r], chain, rtol=0, atol=1e-5)
        torch.testing.assert_close(batch.sample.logprobs[r], lps, rtol=0, atol=1e-4)
    # the generator path (the default) is untouched by all this
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(runner.act(obs, cfg, g1).sample.chain, runner.act(obs, cfg, g2).sample.chain)
    with pytest.raises(ValueError, match="seeds must be"):
        runner.act(obs, cfg, seeds=seeds[:2])


def test_actor_inference_needs_a_ray_env(runner):
    with pytest.raises(ValueError, match="--rollout.inference actors .* FakeVectorEnv; add --ray local"):
        collect_groups(
            runner, FakeVectorEnv(4), list(MW_GROUPS), ACTORS, np.random.default_rng(0), torch.Generator()
        )


def test_weight_versions_send_only_what_changed():
    from z1.distributed.ray_policy import WeightVersions

    runner = tiny_runner(seed=2)
    wv = WeightVersions()
    v1 = wv.update(runner)
    assert wv.update(runner) == v1 and wv.delta_base(None) is None and wv.delta_base(v1) == v1
    whole = wv.payload(runner, None)
    assert whole.runner is runner and whole.base is None
    expert = [p for n, p in runner.model.named_parameters() if ".expert." in n]
    opt = torch.optim.AdamW(expert, lr=1e-3)  # the trainer's optimizer, on a subset of the parameters
    for p in expert:
        p.grad = torch.ones_like(p)
    opt.step()
    v2 = wv.update(runner)
    assert v2 == v1 + 1
    delta = wv.payload(runner, v1)
    names = {n for n, p in runner.model.named_parameters() if ".expert." in n}
    assert set(delta.tensors) == names and delta.base == v1 and delta.version == v2
    assert all(torch.equal(delta.tensors[n], p) for n, p in runner.model.named_parameters() if n in names)
    assert wv.update(tiny_runner(seed=2)) == v2 + 1 and wv.delta_base(v2) is None  # another policy


# ---------------------------------------------------------------- Ray actors


@pytest.fixture(scope="module")
def ray_slots() -> int:
    """4 slots for `ray_venv` (conftest.py): 2 groups per wave, trunks on actor 0, children on actor 1."""
    return 4


@pytest.fixture(scope="module")
def actor_batch(runner, ray_venv) -> RolloutBatch:
    return _collect(runner, ray_venv, ACTORS)


@pytest.mark.sim
def test_actors_collect_a_valid_batch_like_the_learner(runner, ray_venv, actor_batch):
    got = actor_batch
    assert_each_group_once(got, MW_GROUPS)
    assert got.stats["env_restarts"] == 0 and got.caches is not None
    learner = _collect(runner, ray_venv, LEARNER_SEEDED)
    assert [len(g.tree.leaves()) for g in got.groups] == [len(g.tree.leaves()) for g in learner.groups]
    assert all(g.tree.branch_nodes() for g in got.groups)
    # The actors' log-probs are what the trainer recomputes on the learner, from the inputs and from the
    # prefix caches the actors sent back.
    assert _logprob_error(runner, got, ACTORS) < 1e-4
    sampler = runner.sampler("sde", 3, ACTORS.noise_level, ACTORS.stochastic, ACTORS.window)
    with torch.no_grad():
        lp, _ = recompute_logprob(
            runner.model, None, got.chains, got.step_ids, sampler, cache=got.caches.index(got.obs_index)
        )
    torch.testing.assert_close(lp, got.logprobs, rtol=0, atol=1e-4)
    # Same seeds, same first chunks: the first round (the two trunks of wave 1, both on actor 0) equals the
    # learner's. Later rounds are computed in other batches (per actor, and each actor dedupes only its own
    # slots), so float reductions differ in the last bits and the simulator can amplify that; they are
    # not compared.
    torch.testing.assert_close(got.chains[:2], learner.chains[:2], rtol=0, atol=1e-5)
    assert torch.equal(got.step_ids[:2], learner.step_ids[:2])
    # Each actor dedupes its own slots: a child restored on the other actor is a second prefix forward.
    assert learner.stats["prefix_forwards"] == learner.stats["prefix_forwards_one_host"]
    assert got.stats["prefix_forwards"] > got.stats["prefix_forwards_one_host"]
    assert got.stats["prefix_forwards"] == got.inputs.tokens.shape[0]


@pytest.mark.sim
def test_a_hung_actor_times_out_and_the_wave_is_collected_again(runner, ray_venv, actor_batch):
    """A call with no reply within `call_timeout` names the actor, the command and the timeout; the actor
    is replaced and the collector re-collects the wave, which then equals an undisturbed collection."""
    before = ray_venv.restarts
    fired: list = []

    def hang_actor_1(*_):  # when the first episode ends (wave 1), actor 1 hangs on its next call
        if not fired:
            fired.append(ray_venv.actors[1].call.remote(None, "_sleep_for_test", (60.0,)))
            ray_venv.call_timeout = 2.0

    sync = ray_venv.sync_policy

    def sync_with_normal_timeout(r):  # the retry (its whole-policy push to the new actor 1 included) runs
        if ray_venv._stale[1]:  # with the usual timeout
            ray_venv.call_timeout = 600.0
        return sync(r)

    ray_venv.sync_policy = sync_with_normal_timeout
    try:
        got = _collect(runner, ray_venv, ACTORS, progress=hang_actor_1)
    finally:
        del ray_venv.sync_policy
        ray_venv.call_timeout = 600.0
    assert fired and ray_venv.restarts == before + 1
    assert got.stats["env_restarts"] == 1 and got.stats["waves_retried"] == 1
    assert_same_batch(got, actor_batch)
    # the error itself
    ray_venv.call_timeout = 0.5
    try:
        with pytest.raises(
            EnvWorkerError, match=r"env actor 0 .*'_sleep_for_test' within the call timeout of 0.5 s"
        ):
            ray_venv.call_workers({0: ("_sleep_for_test", (60.0,))}, "a test")
    finally:
        ray_venv.call_timeout = 600.0
    ray_venv.ping()


@pytest.mark.sim
def test_actors_act_with_the_updated_weights(ray_venv):
    """After an update on the learner, the next collection pushes the changed tensors and acts with them."""
    runner = tiny_runner(seed=3)
    assert ray_venv.sync_policy(runner) == 2 and ray_venv.sync_policy(runner) == 0  # whole policy, once
    old = {k: v.clone() for k, v in runner.model.state_dict().items()}
    expert = [p for n, p in runner.model.named_parameters() if ".expert." in n]
    opt = torch.optim.AdamW(expert, lr=0.05)
    for p in expert:
        p.grad = torch.randn_like(p)
    opt.step()
    got = _collect(runner, ray_venv, ACTORS)  # pushes the delta to both actors before the first wave
    assert ray_venv.sync_policy(runner) == 0
    assert _logprob_error(runner, got, ACTORS) < 1e-4
    learner = _collect(runner, ray_venv, LEARNER_SEEDED)
    torch.testing.assert_close(got.chains[:2], learner.chains[:2], rtol=0, atol=1e-5)
    # and the old weights would not have produced these records
    runner.model.load_state_dict(old)
    assert _logprob_error(runner, got, ACTORS) > 1e-2
