"""Tree values, advantages, weights and cost accounting vs brute-force enumeration.

See docs/algorithm.md#trees.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from z1.rollout.tree import (
    ROOT,
    Tree,
    TreeConfig,
    TreeError,
    branch_factor_at,
    expected_env_step_ratio,
    plan_branch_levels,
    tree_cost,
)
from z1.rollout.tree_advantages import (
    advantage_scale,
    edge_advantages,
    edge_weights,
    flat_advantages,
    local_global_advantages,
    node_values,
    trainable_edges,
)

# ---- brute-force references: plain loops over root-to-leaf paths ------------------------------------


def leaf_paths(tree: Tree) -> list[list[int]]:
    """Every root-to-leaf path as [root, trunk, ..., leaf], by explicit depth-first enumeration."""
    out, stack = [], [[ROOT]]
    while stack:
        p = stack.pop()
        kids = tree.nodes[p[-1]].children
        if kids:
            stack.extend(p + [c] for c in kids)
        else:
            out.append(p)
    return out


def path_prob(tree: Tree, path: list[int], start: int) -> float:
    """Probability that uniform choices at every branching below `start` follow `path`."""
    prob = 1.0
    i = path.index(start)
    for node in path[i:-1]:
        prob /= len(tree.nodes[node].children)
    return prob


def brute_value(tree: Tree, n: int) -> float:
    """V(n) as an explicit probability-weighted sum over the leaves below n."""
    return sum(path_prob(tree, p, n) * tree.nodes[p[-1]].leaf_return for p in leaf_paths(tree) if n in p)


def brute_mass(tree: Tree, n: int) -> float:
    """rho(n) = probability that a uniformly sampled path from the root passes through n."""
    return sum(path_prob(tree, p, ROOT) for p in leaf_paths(tree) if n in p)


def run_tree(
    trunks: int,
    levels: tuple[int, ...],
    factors: tuple[int, ...],
    total_chunks: int,
    steps: int,
    stop=lambda node, chunk: False,
) -> Tree:
    """A fake collector: roll every running leaf one chunk at a time, branching at the given levels."""
    cfg = TreeConfig(trunks=trunks, branch_levels=levels, branch_factor=factors if factors else 2)
    tree = Tree(task="t", group=0)
    for _ in range(trunks):
        tree.add_trunk()
    for c in range(total_chunks):
        for leaf in tree.frontier():
            k = branch_factor_at(tree, leaf, levels, cfg, chunks_left=total_chunks - c)
            kids = tree.branch(leaf, k) if k else [leaf]
            for kid in kids:
                tree.extend(kid, env_steps=steps)
                if stop(kid, c) or c == total_chunks - 1:
                    tree.finish(kid, success=c < total_chunks - 1)
    return tree


def uneven_tree(rng: np.random.Generator) -> Tree:
    """2 trunks; trunk a branches into 3 (one of which terminates early, one branches again into 2);
    trunk b branches into 2; returns are random."""
    t = Tree(task="uneven", group=7)
    a, b = t.add_trunk(), t.add_trunk()
    t.extend(a, 10, chunks=2)
    t.extend(b, 10, chunks=2)
    a1, a2, a3 = t.branch(a, 3)
    t.extend(a1, 5)
    t.finish(a1, success=True)  # early termination
    t.extend(a2, 5, chunks=2)
    a21, a22 = t.branch(a2, 2)
    for n in (a21, a22, a3):
        t.extend(n, 5, chunks=3)
        t.finish(n, success=False)
    b1, b2 = t.branch(b, 2)
    for n in (b1, b2):
        t.extend(n, 5, chunks=4)
        t.finish(n, success=True)
    for leaf in t.leaves():
        t.set_leaf_return(leaf, float(rng.uniform()))
    return t


@pytest.fixture
def tree() -> Tree:
    return uneven_tree(np.random.default_rng(0))


def test_values_match_enumeration(tree: Tree) -> None:
    v = node_values(tree)
    for n in range(len(tree)):
        assert v[n] == pytest.approx(brute_value(tree, n), abs=1e-12)
    # Recursive equal-weight mean is NOT the mean over leaves when subtrees are uneven.
    assert abs(v[ROOT] - tree.leaf_returns().mean()) > 1e-3
    assert v[ROOT] == pytest.approx(np.mean([v[c] for c in tree.trunks]))


def brute_combination(tree: Tree, w_loc: float, w_glob: float) -> dict[int, float]:
    """w_loc A_loc + w_glob A_glob per edge (unscaled), from enumerated values and a plain sibling loop."""
    out = {}
    for n in range(1, len(tree)):
        sibs = [s for s in tree.nodes[tree.nodes[n].parent].children if s != n]
        loc = brute_value(tree, n) - (
            np.mean([brute_value(tree, s) for s in sibs]) if sibs else brute_value(tree, n)
        )
        glob = brute_value(tree, n) - brute_value(tree, ROOT)
        out[n] = w_loc * loc + w_glob * glob
    return out


def brute_scale(tree: Tree, w_loc: float, w_glob: float) -> float:
    """c by its definition: put return 1 on one leaf and 0 on the others to read off the row L_e of every
    edge's combination, then c^2 = (mass-weighted mean over contrast edges of |L_e|^2) * G / (G - 1)."""
    t = Tree.from_json(tree.to_json())
    leaves = t.leaves()
    rows: dict[int, list[float]] = {n: [] for n in range(1, len(t))}
    for j in leaves:
        for leaf in leaves:
            t.set_leaf_return(leaf, 1.0 if leaf == j else 0.0)
        for n, val in brute_combination(t, w_loc, w_glob).items():
            rows[n].append(val)
    num = den = 0.0
    for n in range(1, len(t)):
        if len(t.nodes[t.nodes[n].parent].children) >= 2:
            num += brute_mass(t, n) * sum(x * x for x in rows[n])
            den += brute_mass(t, n)
    g = len(leaves)
    return float(np.sqrt(num / den * g / (g - 1)))


def test_advantages_match_enumeration(tree: Tree) -> None:
    sigma, w_loc, w_glob = 0.3, 0.7, 1.3
    a = edge_advantages(tree, sigma, w_loc, w_glob)
    c = brute_scale(tree, w_loc, w_glob)
    assert advantage_scale(tree, w_loc, w_glob) == pytest.approx(c, abs=1e-12)
    assert c > 1.0  # the unnormalized combination is larger than flat GRPO's scale
    for n, comb in brute_combination(tree, w_loc, w_glob).items():
        assert a[n] == pytest.approx(comb / (c * sigma), abs=1e-12)
    assert a[ROOT] == 0.0
    # The scale depends on the shape and the weights, not on the returns.
    other = Tree.from_json(tree.to_json())
    for leaf in other.leaves():
        other.set_leaf_return(leaf, 5.0 * other.nodes[leaf].leaf_return - 2.0)
    assert advantage_scale(other, w_loc, w_glob) == advantage_scale(tree, w_loc, w_glob)


def test_only_child_has_zero_local_advantage() -> None:
    t = Tree()
    a = t.add_trunk()
    t.extend(a, 3)
    t.finish(a, True)
    t.set_leaf_return(a, 0.8)
    a_loc, a_glob = local_global_advantages(t)
    assert a_loc[a] == 0.0 and a_glob[a] == 0.0
    # M = 1: no contrast (docs/algorithm.md#edge-weights-and-trainable-edges)
    assert not trainable_edges(t, edge_advantages(t, 1.0)).any()


def test_weights_are_sampling_mass(tree: Tree) -> None:
    rho = edge_weights(tree)
    for n in range(1, len(tree)):
        assert rho[n] == pytest.approx(brute_mass(tree, n), abs=1e-12)
    assert rho[tree.leaves()].sum() == pytest.approx(1.0)
    for n in tree.nodes:
        if n.children and n.id != ROOT:
            assert rho[n.children].sum() == pytest.approx(rho[n.id])


def test_weights_sum_to_one_per_level_on_full_tree() -> None:
    t = run_tree(trunks=2, levels=(2, 4), factors=(3, 2), total_chunks=6, steps=4)
    rho = edge_weights(t)
    depths = np.array([n.depth for n in t.nodes])
    for d in (1, 2, 3):
        assert rho[depths == d].sum() == pytest.approx(1.0)
    assert len(t.leaves()) == 12


def test_flat_tree_equals_flat_grpo() -> None:
    rng = np.random.default_rng(1)
    g, sigma = 8, 0.4
    returns = rng.uniform(size=g)
    t = Tree()
    ids = [t.add_trunk() for _ in range(g)]
    for i, r in zip(ids, returns):
        t.extend(i, 10)
        t.finish(i, True)
        t.set_leaf_return(i, r)
    direct = np.array([(r - returns.mean()) / sigma for r in returns])
    np.testing.assert_allclose(flat_advantages(returns, sigma), direct, atol=1e-12)
    # Every weighting of the local and global terms is flat GRPO on a flat tree: the scale c is exactly
    # w_loc G/(G-1) + w_glob (leave-one-out is G/(G-1) times the group-centred advantage).
    for w_loc, w_glob in ((0.0, 1.0), (1.0, 0.0), (1.0, 1.0), (0.3, 2.0)):
        assert advantage_scale(t, w_loc, w_glob) == pytest.approx(w_loc * g / (g - 1) + w_glob, abs=1e-12)
        np.testing.assert_allclose(edge_advantages(t, sigma, w_loc, w_glob)[ids], direct, atol=1e-12)
    loo = np.array([returns[i] - np.delete(returns, i).mean() for i in range(g)]) / sigma
    a_loc, _ = local_global_advantages(t)
    np.testing.assert_allclose(a_loc[ids] / sigma, loo, atol=1e-12)
    np.testing.assert_allclose(edge_weights(t)[ids], np.full(g, 1 / g))


def _rms(tree: Tree, adv: np.ndarray) -> float:
    """Mass-weighted RMS of the advantages of the edges with contrast (how the loss weights them)."""
    rho = edge_weights(tree)
    keep = np.array([n.parent is not None and len(tree.nodes[n.parent].children) >= 2 for n in tree.nodes])
    return float(np.sqrt((rho[keep] * adv[keep] ** 2).sum() / rho[keep].sum()))


@pytest.mark.parametrize(
    ("trunks", "levels", "factors", "early"),
    [
        (2, (3,), (4,), False),
        (1, (2, 4), (2, 4), False),
        (2, (2, 5), (2, 2), False),
        (4, (3,), (2,), False),
        (2, (1,), (4,), False),
        (2, (3,), (4,), True),  # odd children stop one chunk after the branch: uneven subtrees
    ],
)
@pytest.mark.parametrize("kind", ["binary", "uniform"])
def test_tree_and_flat_advantages_have_the_same_scale(trunks, levels, factors, early, kind) -> None:
    """Equal outcomes: the same leaf returns, drawn i.i.d. per leaf, scored once as a tree and once as a
    flat group, with the pooled sigma of the batch. Both RMS agree within 10% (flat is 1 by construction);
    the unnormalized default (A_loc + A_glob) / sigma was 1.75x for 2 trunks of 4 branches."""
    rng = np.random.default_rng(3)
    stop = (lambda node, c: c >= levels[0] and node % 2 == 1) if early else (lambda node, c: False)
    t = run_tree(trunks, levels, factors, total_chunks=8, steps=3, stop=stop)
    g = len(t.leaves())
    groups = [
        rng.binomial(1, 0.5, size=g).astype(float) if kind == "binary" else rng.uniform(size=g)
        for _ in range(600)
    ]
    sigma = float(np.sqrt(np.mean([r.var() for r in groups])))  # pooled, population variance
    tree_sq = flat_sq = raw_sq = 0.0
    for r in groups:
        for leaf, value in zip(t.leaves(), r):
            t.set_leaf_return(leaf, float(value))
        tree_sq += _rms(t, edge_advantages(t, sigma)) ** 2
        a_loc, a_glob = local_global_advantages(t)
        raw_sq += _rms(t, (a_loc + a_glob) / sigma) ** 2
        flat_sq += float(np.mean(flat_advantages(r, sigma) ** 2))
    tree_rms, flat_rms, raw_rms = (np.sqrt(x / len(groups)) for x in (tree_sq, flat_sq, raw_sq))
    assert flat_rms == pytest.approx(1.0, abs=1e-9)
    assert tree_rms == pytest.approx(flat_rms, rel=0.1), (tree_rms, flat_rms)
    assert raw_rms > 1.4 * flat_rms  # the test can tell the unnormalized combination apart
    if (trunks, factors) == (2, (4,)):
        assert raw_rms / flat_rms == pytest.approx(1.75, abs=0.1)


def test_trainable_rule(tree: Tree) -> None:
    # Make two siblings equal so their local advantage vanishes, and check the mask rule by rule.
    b1, b2 = tree.nodes[tree.trunks[1]].children
    tree.set_leaf_return(b1, 0.5)
    tree.set_leaf_return(b2, 0.5)
    a = edge_advantages(tree, 1.0, w_loc=1.0, w_glob=0.0)
    mask = trainable_edges(tree, a)
    assert not mask[b1] and not mask[b2] and not mask[ROOT]
    expect = np.array([n.parent is not None and abs(a[n.id]) > 1e-6 for n in tree.nodes])
    np.testing.assert_array_equal(mask, expect)
    stoch = np.ones(len(tree), bool)
    stoch[tree.trunks[0]] = False
    assert not trainable_edges(tree, a, stochastic=stoch)[tree.trunks[0]]


@pytest.mark.parametrize(
    ("trunks", "fracs", "factors", "expected"),
    [
        (2, (0.5,), (4,), 0.625),
        (1, (0.25, 0.5), (2, 4), 0.594),
        (2, (1 / 3, 2 / 3), (2, 2), 0.583),
        (1, (0.2, 0.4, 0.6), (2, 2, 2), 0.575),
        (4, (0.5,), (2,), 0.75),
    ],
)
def test_env_step_accounting_matches_c2_table(trunks, fracs, factors, expected) -> None:
    total = 60  # chunks; every fraction in the table is a whole number of chunks
    levels = tuple(round(f * total) for f in fracs)
    t = run_tree(trunks, levels, factors, total_chunks=total, steps=5)
    cost = tree_cost(t)
    assert cost.leaves == trunks * int(np.prod(factors)) == 8
    assert cost.flat_env_steps == 8 * total * 5
    assert cost.env_step_ratio == pytest.approx(expected, abs=5e-4)
    assert cost.env_step_ratio == pytest.approx(expected_env_step_ratio(trunks, fracs, factors), abs=1e-12)
    # Prefix forwards: one per unique chunk, minus the shared first chunks at the root and branch nodes.
    unique = sum(n.num_chunks for n in t.nodes)
    shared = (trunks - 1) + sum(len(n.children) - 1 for n in t.nodes[1:] if n.children)
    assert cost.prefix_forwards == unique - shared
    assert cost.prefix_forwards_saved == 8 * total - unique + shared


def test_early_termination_shortens_both_sums() -> None:
    # Every child with an odd id stops right after the branch chunk.
    t = run_tree(2, (3,), (4,), total_chunks=8, steps=2, stop=lambda node, c: c >= 3 and node % 2 == 1)
    cost = tree_cost(t)
    brute_tree = sum(n.env_steps for n in t.nodes)
    brute_flat = sum(sum(t.nodes[i].env_steps for i in p[1:]) for p in leaf_paths(t))
    assert (cost.env_steps, cost.flat_env_steps) == (brute_tree, brute_flat)
    assert brute_flat < 8 * 8 * 2


def test_branching_respects_budget_and_done() -> None:
    cfg = TreeConfig(trunks=1, branch_levels=(2,), branch_factor=4, min_budget_chunks=2)
    t = Tree()
    a = t.add_trunk()
    t.extend(a, 4, chunks=2)
    assert branch_factor_at(t, a, (2,), cfg, chunks_left=1) == 0
    assert branch_factor_at(t, a, (2,), cfg, chunks_left=2) == 4
    assert branch_factor_at(t, a, (3,), cfg, chunks_left=5) == 0
    t.finish(a, False)
    assert branch_factor_at(t, a, (2,), cfg, chunks_left=5) == 0
    with pytest.raises(TreeError, match="done"):
        t.extend(a, 1)


def test_plan_branch_levels() -> None:
    rng = np.random.default_rng(0)
    cfg = TreeConfig()
    draws = [plan_branch_levels(cfg, 10.0, rng)[0] for _ in range(400)]
    assert set(draws) == {1, 2, 3, 4, 5}  # U{1..floor(0.5*10)}
    assert plan_branch_levels(cfg, 1.0, rng) == ()
    assert plan_branch_levels(cfg, None, rng) == ()
    assert plan_branch_levels(TreeConfig(branch_levels=(3, 6)), 10.0, rng) == (3, 6)
    assert plan_branch_levels(TreeConfig.flat(8), 10.0, rng) == ()


def test_missing_return_and_bad_config_errors(tree: Tree) -> None:
    t = Tree()
    a = t.add_trunk()
    t.extend(a, 1)
    with pytest.raises(TreeError, match="set_leaf_return"):
        node_values(t)
    with pytest.raises(TreeError, match="branch_levels"):
        TreeConfig(branch_levels=(3, 2))
    with pytest.raises(TreeError, match="sigma"):
        edge_advantages(tree, 0.0)


def test_json_roundtrip(tree: Tree) -> None:
    import json

    t2 = Tree.from_json(json.loads(json.dumps(tree.to_json())))
    np.testing.assert_array_equal(node_values(t2), node_values(tree))
    assert t2.leaves() == tree.leaves()


def test_exhaustive_small_trees() -> None:
    """All shapes with 2 trunks and branch factors in {none, 2, 3} at two levels, random returns."""
    rng = np.random.default_rng(3)
    for k1, k2 in itertools.product((0, 2, 3), repeat=2):
        t = Tree()
        for trunk in (t.add_trunk(), t.add_trunk()):
            t.extend(trunk, 1)
            kids = t.branch(trunk, k1) if k1 else []
            for kid in kids[:1]:  # only the first child branches again
                t.extend(kid, 1)
                for g in t.branch(kid, k2) if k2 else []:
                    t.extend(g, 1)
        for leaf in t.frontier():
            if t.nodes[leaf].num_chunks == 0:
                t.extend(leaf, 1)
            t.finish(leaf, True)
        for leaf in t.leaves():
            t.set_leaf_return(leaf, float(rng.uniform()))
        v, rho = node_values(t), edge_weights(t)
        for n in range(1, len(t)):
            assert v[n] == pytest.approx(brute_value(t, n))
            assert rho[n] == pytest.approx(brute_mass(t, n))
