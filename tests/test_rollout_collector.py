"""Collector: identical group starts, shared prefixes, tree branching, log-prob parity of the records."""

import copy

import numpy as np
import pytest
import torch

from fakes import FakeVectorEnv, tiny_runner
from z1.models.sampling import recompute_logprob
from z1.rl.reward import RewardConfig, TaskTimeStats
from z1.rl.scoring import AdvantageConfig, score_batch
from z1.rollout.collector import RolloutConfig, collect_groups
from z1.rollout.runner import dedupe
from z1.rollout.tree import Tree
from z1.rollout.tree_advantages import edge_weights, node_values


@pytest.fixture(scope="module")
def runner():
    return tiny_runner()


def _collect(runner, mode, share_prefix=True, groups=(("a", 1), ("b", 2)), slots=16, branch_at=2, seed=0):
    cfg = RolloutConfig(
        group_size=8,
        mode=mode,
        trunks=2,
        branch_factor=4,
        branch_at=branch_at if mode == "tree" else None,
        h_exec=4,
        num_steps=3,
        max_steps=24,
        share_prefix=share_prefix,
    )
    runner.share_prefix = share_prefix
    venv = FakeVectorEnv(slots)
    batch = collect_groups(
        runner, venv, list(groups), cfg, np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    )
    return batch, cfg, venv


def test_dedupe_groups_identical_observations():
    env = FakeVectorEnv(3)
    obs = env.reset([0, 1, 2], ["a", "a", "a"], [5, 5, 6])
    unique, rows = dedupe(obs)
    assert len(unique) == 2 and rows == [0, 0, 1]


def test_tree_shape_env_steps_and_prefix_sharing(runner):
    batch, cfg, venv = _collect(runner, "tree")
    assert venv.resets == 2  # one reset per group; the other members are clones of it
    for g in batch.groups:
        assert len(g.tree.trunks) == 2
        leaves = g.tree.leaves()
        # Branch at chunk 2 (8 env steps) unless a trunk finished before: then fewer leaves.
        assert len(leaves) <= 8
        for n in g.tree.branch_nodes():
            assert g.tree.node(n).chunk_end == 2 and len(g.tree.node(n).children) == 4
        for leaf in leaves:
            assert g.tree.node(leaf).done
    # Tree rollouts execute fewer env steps than the flat equivalent of the same leaves.
    assert batch.stats["env_steps"] < batch.stats["env_steps_flat_equiv"]
    # Every chunk record points at a node of its group's tree, and edge chunk counts match the records.
    for gi, g in enumerate(batch.groups):
        for node in g.tree.nodes[1:]:
            n_rec = int(((batch.chunk_group == gi) & (batch.chunk_node == node.id)).sum())
            assert n_rec == node.num_chunks
    # Prefix forwards: at c=0 the trunks of a group share one observation, and so do siblings at a branch.
    rows = batch.num_chunks
    assert batch.stats["prefix_forwards"] < rows
    assert batch.stats["prefix_forwards"] == batch.inputs.tokens.shape[0]


def test_no_prefix_sharing_computes_one_prefix_per_row(runner):
    batch, _, _ = _collect(runner, "tree", share_prefix=False)
    assert batch.stats["prefix_forwards"] == batch.num_chunks
    runner.share_prefix = True


def test_flat_groups_start_identically_and_have_no_branches(runner):
    batch, cfg, _ = _collect(runner, "flat")
    for g in batch.groups:
        assert len(g.tree.trunks) == 8 and not g.tree.branch_nodes()
    # First chunk observations of a group's 8 members are identical -> one shared prefix row.
    first = [
        np.flatnonzero((batch.chunk_group == gi) & np.isin(batch.chunk_node, g.tree.trunks))[:8]
        for gi, g in enumerate(batch.groups)
    ]
    for idx in first:
        assert len(set(batch.obs_index[idx].tolist())) == 1


def test_recorded_logprobs_match_recompute(runner):
    batch, cfg, _ = _collect(runner, "tree")
    sampler = runner.sampler("sde", cfg.num_steps, cfg.noise_level, cfg.stochastic, cfg.window)
    with torch.no_grad():
        cache = batch.caches.index(batch.obs_index)
        lp, _ = recompute_logprob(runner.model, None, batch.chains, batch.step_ids, sampler, cache=cache)
        lp2, _ = recompute_logprob(
            runner.model, batch.inputs.index(batch.obs_index), batch.chains, batch.step_ids, sampler
        )
    assert torch.allclose(lp, batch.logprobs, atol=1e-4, rtol=0)
    assert torch.allclose(lp2, batch.logprobs, atol=1e-4, rtol=0)
    assert float((lp - batch.logprobs).abs().max()) < 1e-4


def test_scoring_matches_plain_loop(runner):
    batch, cfg, _ = _collect(runner, "tree", groups=(("a", 1), ("a", 2)))
    stats = TaskTimeStats()
    stats.register("a", cfg.max_steps)
    rcfg = RewardConfig(kind="D1")
    before = copy.deepcopy(stats)
    trees_before = [g.tree.to_json() for g in batch.groups]
    scored = score_batch(batch, rcfg, stats, AdvantageConfig(), flat=False)
    # Scoring is pure: the rollout's trees and the given statistics are as they were; the scored copies
    # carry the returns, and the returned statistics fold in the batch's outcomes.
    assert [g.tree.to_json() for g in batch.groups] == trees_before
    assert stats == before and scored.rollout is batch
    folded = copy.deepcopy(stats)
    # one task: one update with all its leaves, in plan order
    succ = np.concatenate([g.leaf_outcomes()[1] for g in batch.groups])
    times = np.concatenate([g.leaf_outcomes()[2] for g in batch.groups])
    folded.update("a", succ, times, rcfg)
    assert scored.task_stats == folded and scored.task_stats != stats
    for tree, r in zip(scored.trees, scored.returns):
        np.testing.assert_array_equal(tree.leaf_returns(), r)

    # Brute force: every chunk's advantage is its edge's (V(m) - mean siblings + V(m) - V(root)) / (c sigma),
    # with c^2 = G/(G-1) * the mass-weighted mean, over edges with siblings, of the squared coefficients of
    # that combination on the leaf returns (read off by putting return 1 on one leaf at a time).
    def combination(tree, v):
        out = {}
        for m in range(1, len(tree)):
            p = tree.node(m).parent
            sib = [s for s in tree.node(p).children if s != m]
            out[m] = (v[m] - np.mean(v[sib]) if sib else 0.0) + v[m] - v[0]
        return out

    for gi, g in enumerate(scored.trees):
        if not scored.kept[gi]:
            assert np.all(scored.advantages[batch.chunk_group == gi] == 0)
            continue
        unit = Tree.from_json(g.to_json())
        leaves = unit.leaves()
        sq = dict.fromkeys(range(1, len(unit)), 0.0)
        for j in leaves:
            for leaf in leaves:
                unit.set_leaf_return(leaf, float(leaf == j))
            for m, x in combination(unit, node_values(unit)).items():
                sq[m] += x * x
        rho = edge_weights(g)
        contrast = [m for m in sq if len(g.node(g.node(m).parent).children) >= 2]
        c2 = sum(rho[m] * sq[m] for m in contrast) / sum(rho[m] for m in contrast)
        c = np.sqrt(c2 * len(leaves) / (len(leaves) - 1))
        comb = combination(g, node_values(g))
        for ch in np.flatnonzero(batch.chunk_group == gi):
            expect = comb[batch.chunk_node[ch]] / (c * scored.sigma)
            assert scored.advantages[ch] == pytest.approx(expect, abs=1e-9)
