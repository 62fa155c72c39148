"""Values, advantages and weights on a rollout tree (docs/algorithm.md#node-values-and-edge-advantages,
#edge-weights-and-trainable-edges). Pure numpy over `rollout.tree.Tree`; arrays are indexed by node id.
"""

from __future__ import annotations

import math

import numpy as np

from z1.rollout.tree import ROOT, Tree, TreeError


def node_values(tree: Tree) -> np.ndarray:
    """V per node id: leaves V = R; internal V(n) = (1/k_n) sum_children V(m) (recursive equal-weight
    mean, not a mean over leaves); the root is the mean over the M trunks. Returns (nodes,) float64."""
    returns = np.zeros(len(tree), dtype=np.float64)  # (nodes,) leaf returns, 0 elsewhere
    for n in tree.nodes[1:]:
        if not n.children:
            if n.leaf_return is None:
                raise TreeError(
                    f"leaf {n.id} of group {tree.group} ({tree.task!r}) has no return; call set_leaf_return"
                )
            returns[n.id] = n.leaf_return
    return _backup(tree, returns)


def _backup(tree: Tree, leaf_values: np.ndarray) -> np.ndarray:
    """The recursive equal-weight mean of `leaf_values` (nodes, ...) up the tree: leaf rows are kept, every
    internal row becomes the mean of its children's rows. Linear in the leaf rows; (nodes, ...) float64."""
    if not tree.nodes[ROOT].children:
        raise TreeError(f"group {tree.group} ({tree.task!r}) has no trunks")
    v = np.array(leaf_values, dtype=np.float64)  # (nodes, ...)
    # Children always have larger ids than their parent, so a reverse sweep is a post-order traversal.
    for n in reversed(tree.nodes):
        if n.children:
            v[n.id] = v[n.children].mean(axis=0)
    return v


def _loc_glob(tree: Tree, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(A_loc, A_glob) of node values `v` (nodes, ...); linear in `v`, root rows 0."""
    a_loc = np.zeros_like(v)  # (nodes, ...)
    a_glob = np.zeros_like(v)
    for p in tree.nodes:
        k = len(p.children)
        if k == 0:
            continue
        total = v[p.children].sum(axis=0)
        for c in p.children:
            a_glob[c] = v[c] - v[ROOT]
            a_loc[c] = v[c] - (total - v[c]) / (k - 1) if k >= 2 else 0.0
    return a_loc, a_glob


def local_global_advantages(tree: Tree) -> tuple[np.ndarray, np.ndarray]:
    """Unscaled (A_loc, A_glob) per node id (#node-values-and-edge-advantages); root entries are 0.

    A_loc(e) = V(m) - mean_{m' sibling of m} V(m') (leave-one-out; trunks' siblings are the other trunks;
    an only child gets 0). A_glob(e) = V(m) - V(root).
    """
    return _loc_glob(tree, node_values(tree))


def advantage_scale(tree: Tree, w_loc: float = 1.0, w_glob: float = 1.0) -> float:
    """The factor c that `edge_advantages` divides w_loc A_loc + w_glob A_glob by, so that tree and flat
    rollouts give advantages of the same scale.

    Derivation. Node values are averages of leaf returns, so the combination is linear in the G leaf
    returns R: w_loc A_loc(e) + w_glob A_glob(e) = L_e . R, and every row L_e sums to 0 (both terms are
    differences of averages). When the leaf returns carry no credit to assign (exchangeable, variance s^2
    each), E[(L_e . R)^2] = s^2 |L_e|^2. Flat GRPO, A_i = R_i - mean R, has |L_i|^2 = (G - 1)/G for every
    leaf. So

        c^2 = (sum_e rho_e |L_e|^2 / sum_e rho_e) / ((G - 1)/G)

    over the edges with contrast (parent with >= 2 children, the ones `trainable_edges` may keep),
    weighted by the sampling mass rho as in the loss, gives the tree's edge advantages the mass-weighted
    mean square of flat GRPO on the same number of leaves, i.e. unit scale after dividing by the pooled
    sigma. On a flat tree (G trunks) A_loc = G/(G - 1) (R - mean) and A_glob = R - mean, so
    c = w_loc G/(G - 1) + w_glob and every weighting reproduces flat GRPO exactly (the unnormalized default
    w_loc = w_glob = 1 was 1 + G/(G - 1) times it; about 1.75 times for M = 2 trunks of k = 4). c depends
    on the tree's shape and the weights only, never on the returns. Returns 1.0 when nothing has contrast.
    """
    leaves = tree.leaves()
    g = len(leaves)
    if g < 2:
        return 1.0
    unit = np.zeros((len(tree), g), dtype=np.float64)  # (nodes, leaves): leaf j's return is e_j
    unit[leaves, np.arange(g)] = 1.0
    a_loc, a_glob = _loc_glob(tree, _backup(tree, unit))  # (nodes, leaves) each
    rows = w_loc * a_loc + w_glob * a_glob  # (nodes, leaves): L_e
    rho = edge_weights(tree)  # (nodes,)
    contrast = np.array(
        [n.parent is not None and len(tree.nodes[n.parent].children) >= 2 for n in tree.nodes]
    )
    mass = float(rho[contrast].sum())
    if mass <= 0:
        return 1.0
    mean_sq = float((rho[contrast] * (rows[contrast] ** 2).sum(axis=1)).sum()) / mass
    c = math.sqrt(mean_sq * g / (g - 1))
    return c if c > 0 else 1.0


def edge_advantages(tree: Tree, sigma: float, w_loc: float = 1.0, w_glob: float = 1.0) -> np.ndarray:
    """A(e) = (w_loc A_loc + w_glob A_glob) / (c sigma) per node id; sigma is the pooled reward scale
    and c = `advantage_scale(tree, w_loc, w_glob)` puts tree and flat advantages on the same (unit) scale.

    On a flat tree (M = G trunks) every weighting gives the flat GRPO advantage of `flat_advantages`.
    """
    if not sigma > 0:
        raise TreeError(f"sigma must be > 0 (use rl.reward.pooled_sigma, floored at sigma_min), got {sigma}")
    a_loc, a_glob = local_global_advantages(tree)
    return (w_loc * a_loc + w_glob * a_glob) / (advantage_scale(tree, w_loc, w_glob) * sigma)


def edge_weights(tree: Tree) -> np.ndarray:
    """Sampling mass rho per node id: trunk 1/M, child rho(parent)/k_parent; root 0
    (#edge-weights-and-trainable-edges).

    The masses of the leaves sum to 1, and the children of any node sum to the node's mass.
    """
    rho = np.zeros(len(tree), dtype=np.float64)
    rho[ROOT] = 1.0
    for n in tree.nodes:  # parents come before children
        if n.children:
            rho[n.children] = rho[n.id] / len(n.children)
    rho[ROOT] = 0.0
    return rho


def trainable_edges(
    tree: Tree, advantages: np.ndarray, stochastic: np.ndarray | None = None, tau_a: float = 1e-6
) -> np.ndarray:
    """Bool mask per node id of edges that enter the loss (#edge-weights-and-trainable-edges).

    An edge is trainable when (1) it has stochastic denoise steps (`stochastic[id]`, default: it has at
    least one chunk), (2) |A(e)| > tau_a, and (3) its parent has >= 2 children (for trunks: M >= 2).
    """
    if advantages.shape != (len(tree),):
        raise TreeError(
            f"advantages must have shape ({len(tree)},) (one per node id), got {advantages.shape}"
        )
    has_chunks = np.array([n.num_chunks > 0 for n in tree.nodes])
    stoch = has_chunks if stochastic is None else (np.asarray(stochastic, dtype=bool) & has_chunks)
    contrast = np.array(
        [n.parent is not None and len(tree.nodes[n.parent].children) >= 2 for n in tree.nodes]
    )
    return stoch & contrast & (np.abs(advantages) > tau_a)


def flat_advantages(returns: np.ndarray, sigma: float) -> np.ndarray:
    """Flat GRPO (#reward-normalisation): A_i = (R_i - mean_g R) / sigma, sigma pooled. (g,) -> (g,)."""
    r = np.asarray(returns, dtype=np.float64)
    if r.ndim != 1 or r.size == 0:
        raise TreeError(f"returns must be a non-empty 1-D array (one group), got shape {r.shape}")
    if not sigma > 0:
        raise TreeError(f"sigma must be > 0, got {sigma}")
    return (r - r.mean()) / sigma
