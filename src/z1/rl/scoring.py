"""From a rollout batch to per-chunk advantages, weights and trainable masks.

Order of operations (algorithms.md D -> B.6 -> D.4 -> C.4-C.6):
1. calibrate each leaf's return from its success and completion time (D0/D1/D4), using the task
   statistics *before* this batch (then fold the batch into them);
2. drop groups whose returns carry no information (range filter, B.6): all-fail and identical groups go,
   all-success groups whose completion times differ stay;
3. one pooled reward scale sigma over the kept groups (N3), or per group (N5), or none (N2);
4. tree values, edge advantages A(e) = (w_loc A_loc + w_glob A_glob) / sigma, edge masses rho and the
   trainable-edge rule; every chunk on an edge inherits the edge's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from z1.rl.reward import (
    RewardConfig,
    TaskTimeStats,
    calibrate,
    group_stats,
    pooled_sigma,
    range_filter,
)
from z1.rollout.collector import RolloutBatch
from z1.rollout.tree import edge_advantages, edge_weights, local_global_advantages, trainable_edges


@dataclass(frozen=True)
class AdvantageConfig:
    """Edge advantage weights (C1). Flat GRPO always uses w_loc=0, w_glob=1, i.e. (R - mean) / sigma."""

    w_loc: float = 1.0
    """Weight of the leave-one-out sibling baseline A_loc (tree mode)."""
    w_glob: float = 1.0
    """Weight of the group-global advantage A_glob = V(m) - V(root) (tree mode)."""


@dataclass
class ScoredBatch:
    advantages: np.ndarray  # (n,) per chunk
    weights: np.ndarray  # (n,) per chunk: the edge's sampling mass rho
    trainable: np.ndarray  # (n,) bool
    returns: list[np.ndarray]  # per group (g,) calibrated leaf returns
    kept: np.ndarray  # (groups,) bool, survived the range filter
    sigma: float
    stats: dict[str, float]


def score_batch(
    batch: RolloutBatch,
    reward_cfg: RewardConfig,
    task_stats: TaskTimeStats,
    adv_cfg: AdvantageConfig,
    flat: bool,
) -> ScoredBatch:
    returns: list[np.ndarray] = []
    successes: list[np.ndarray] = []
    times_by_group: list[np.ndarray] = []
    for g in batch.groups:
        leaves, succ, times = g.leaf_outcomes()
        times_by_group.append(times)
        r = calibrate(succ, times, g.task, task_stats, reward_cfg)
        for leaf, value in zip(leaves, r):
            g.tree.set_leaf_return(leaf, float(value))
        returns.append(r)
        successes.append(succ)
    kept = range_filter(returns, reward_cfg.range_delta)
    kept_returns = [r for r, k in zip(returns, kept) if k]
    if reward_cfg.norm == "pooled":
        sigma = pooled_sigma(kept_returns, reward_cfg)
        sigmas = [sigma] * len(returns)
    elif reward_cfg.norm == "group":
        sigmas = [max(float(r.std()), reward_cfg.sigma_min) for r in returns]
        sigma = float(np.mean([s for s, k in zip(sigmas, kept) if k])) if kept.any() else reward_cfg.sigma_min
    else:
        sigma, sigmas = 1.0, [1.0] * len(returns)

    w_loc, w_glob = (0.0, 1.0) if flat else (adv_cfg.w_loc, adv_cfg.w_glob)
    n = batch.num_chunks
    adv = np.zeros(n, dtype=np.float64)
    wts = np.zeros(n, dtype=np.float64)
    train = np.zeros(n, dtype=bool)
    loc_zero = trainable_count = edges = 0
    depth_abs: dict[int, list[float]] = {}
    for gi, g in enumerate(batch.groups):
        on_group = batch.chunk_group == gi
        if not kept[gi]:
            continue
        a_nodes = edge_advantages(g.tree, sigmas[gi], w_loc, w_glob)
        rho = edge_weights(g.tree)
        tr = trainable_edges(g.tree, a_nodes)
        a_loc, _ = local_global_advantages(g.tree)
        nodes = batch.chunk_node[on_group]
        adv[on_group] = a_nodes[nodes]
        wts[on_group] = rho[nodes]
        train[on_group] = tr[nodes]
        for node in g.tree.nodes[1:]:
            edges += 1
            trainable_count += int(tr[node.id])
            loc_zero += int(abs(a_loc[node.id]) < 1e-12)
            depth_abs.setdefault(node.depth, []).append(abs(float(a_nodes[node.id])))

    # Fold this batch into the task statistics only after it was scored (D.1 uses p_hat from before).
    by_task: dict[str, tuple[list, list]] = {}
    for g, s, times in zip(batch.groups, successes, times_by_group):
        by_task.setdefault(g.task, ([], []))
        by_task[g.task][0].append(s)
        by_task[g.task][1].append(times)
    for task, (ss, ts) in by_task.items():
        task_stats.update(task, np.concatenate(ss), np.concatenate(ts), reward_cfg)

    stats = group_stats(successes, returns, reward_cfg.range_delta)
    stats = {f"groups/{k.removeprefix('frac_')}": v for k, v in stats.items()}
    stats.update(
        {
            "groups/kept": float(kept.sum()),
            # (c) of the GRPO benchmark: groups carrying learning signal under the active calibration vs
            # under binary rewards (D0 keeps only mixed groups).
            "groups/signal_frac": float(kept.mean()) if len(kept) else 0.0,
            "groups/signal_frac_D0": float(np.mean([s.any() and not s.all() for s in successes]))
            if successes
            else 0.0,
            "adv/sigma": float(sigma),
            "adv/mean": float(adv[train].mean()) if train.any() else 0.0,
            "adv/std": float(adv[train].std()) if train.any() else 0.0,
            "adv/abs_max": float(np.abs(adv).max()) if n else 0.0,
            "adv/frac_nonzero": float((np.abs(adv) > 1e-6).mean()) if n else 0.0,
            "tree/trainable_edge_frac": trainable_count / max(1, edges),
            "tree/a_loc_zero_frac": loc_zero / max(1, edges),
            "chunks/total": float(n),
            "chunks/trainable": float(train.sum()),
        }
    )
    for d, vals in sorted(depth_abs.items()):
        stats[f"adv/abs_depth{d}"] = float(np.mean(vals))
    return ScoredBatch(adv, wts, train, returns, kept, float(sigma), stats)
