"""From a rollout batch to per-chunk advantages, weights and trainable masks.

Order of operations (docs/algorithm.md#scoring-order; the anchors below name its sections):
1. calibrate each leaf's return from its success and completion time (D0/D1/D4), using the task
   statistics *before* this batch (the returned statistics then fold the batch in);
2. drop groups whose returns carry no information (#range-filter): all-fail and identical groups go,
   all-success groups whose completion times differ stay;
3. one pooled reward scale sigma over the kept groups, or per group, or none
   (#reward-normalisation);
4. tree values, edge advantages A(e) = (w_loc A_loc + w_glob A_glob) / (c sigma), edge masses rho and the
   trainable-edge rule; every chunk on an edge inherits the edge's numbers. c (`advantage_scale`, a
   function of the tree's shape and the weights) gives tree and flat groups the same advantage scale.

Scoring is pure: the rollout batch and the task statistics it is given stay as they were, and the
`z1.records.ScoredBatch` carries everything derived (scored trees, updated statistics), so a caller can
score the same batch twice, or under two configs, and compare.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from z1.records import ChunkSummary, RolloutBatch, ScoredBatch
from z1.rl.reward import (
    RewardConfig,
    TaskTimeStats,
    calibrate,
    group_stats,
    pooled_sigma,
    range_filter,
)
from z1.rollout.tree_advantages import edge_advantages, edge_weights, local_global_advantages, trainable_edges


@dataclass(frozen=True)
class AdvantageConfig:
    """Edge advantage weights (docs/algorithm.md#node-values-and-edge-advantages). Flat GRPO always uses
    w_loc=0, w_glob=1, i.e. (R - mean) / sigma.

    Only the ratio w_loc : w_glob matters: `edge_advantages` rescales the combination to the flat scale."""

    w_loc: float = 1.0
    """Weight of the leave-one-out sibling baseline A_loc (tree mode)."""
    w_glob: float = 1.0
    """Weight of the group-global advantage A_glob = V(m) - V(root) (tree mode)."""


@dataclass(frozen=True)
class GroupOutcome:
    """What scoring needs of one group beyond its tree: the task and its leaves' outcomes in tree order.
    Small and picklable: data-parallel ranks exchange these so that every rank scores the whole batch."""

    task: str
    successes: np.ndarray  # (g,) bool
    times: np.ndarray  # (g,) float64 env steps to the first success (0 for failures)


def group_outcomes(batch: RolloutBatch) -> list[GroupOutcome]:
    """The outcomes of the batch's groups, in batch order."""
    out = []
    for g in batch.groups:
        _, succ, times = g.leaf_outcomes()
        out.append(GroupOutcome(g.task, succ, times))
    return out


def chunk_stats(parts: Sequence[ChunkSummary]) -> dict[str, float]:
    """Advantage, trainable-edge and chunk-count statistics of the concatenation of `parts`."""
    adv = np.concatenate([p.adv for p in parts])
    train = np.concatenate([p.train for p in parts])
    edge_train = np.concatenate([p.edge_train for p in parts])
    edge_loc_zero = np.concatenate([p.edge_loc_zero for p in parts])
    edge_depth = np.concatenate([p.edge_depth for p in parts])
    edge_abs = np.concatenate([p.edge_abs_adv for p in parts])
    n, edges = adv.shape[0], edge_train.shape[0]
    stats = {
        "adv/mean": float(adv[train].mean()) if train.any() else 0.0,
        "adv/std": float(adv[train].std()) if train.any() else 0.0,
        "adv/abs_max": float(np.abs(adv).max()) if n else 0.0,
        "adv/frac_nonzero": float((np.abs(adv) > 1e-6).mean()) if n else 0.0,
        "tree/trainable_edge_frac": int(edge_train.sum()) / max(1, edges),
        "tree/a_loc_zero_frac": int(edge_loc_zero.sum()) / max(1, edges),
        "chunks/total": float(n),
        "chunks/trainable": float(train.sum()),
    }
    for d in sorted(set(edge_depth.tolist())):
        stats[f"adv/abs_depth{d}"] = float(np.mean(edge_abs[edge_depth == d]))
    return stats


def score_batch(
    batch: RolloutBatch,
    reward_cfg: RewardConfig,
    task_stats: TaskTimeStats,
    adv_cfg: AdvantageConfig,
    flat: bool,
    plan_outcomes: Sequence[GroupOutcome] | None = None,
    first_group: int = 0,
) -> ScoredBatch:
    """Score `batch` (see the module docstring). Pure: neither `batch` nor `task_stats` changes; the
    returned `ScoredBatch` holds copies of the batch's trees with their leaf returns set, and the task
    statistics with the batch's outcomes folded in (what the trainer carries to the next iteration).

    Data-parallel: when `batch` holds only this rank's groups, `plan_outcomes` are the outcomes of every
    group of the iteration in plan order (all ranks' `group_outcomes`, concatenated) and `first_group`
    is the plan index of the batch's first group. Calibration, the range filter, the pooled sigma, the
    group statistics and the `task_stats` update then use the whole plan, identically on every rank, and
    the per-chunk arrays cover this batch's chunks. Default: the batch is the whole plan.
    """
    mine = group_outcomes(batch)
    plan = mine if plan_outcomes is None else list(plan_outcomes)
    if first_group + len(mine) > len(plan):
        raise ValueError(f"the batch's {len(mine)} groups from {first_group} exceed the plan's {len(plan)}")
    for gi, (own, listed) in enumerate(zip(mine, plan[first_group : first_group + len(mine)])):
        if own.task != listed.task or not np.array_equal(own.successes, listed.successes):
            raise ValueError(
                f"group {gi} of the batch ({own.task!r}) is not plan group {first_group + gi} "
                f"({listed.task!r}): plan_outcomes / first_group do not describe this batch"
            )
    returns_all = [calibrate(o.successes, o.times, o.task, task_stats, reward_cfg) for o in plan]
    returns = returns_all[first_group : first_group + len(mine)]
    trees = [copy.deepcopy(g.tree) for g in batch.groups]  # the scored copies; the rollout keeps its own
    for tree, r in zip(trees, returns):
        for leaf, value in zip(tree.leaves(), r):
            tree.set_leaf_return(leaf, float(value))
    kept_all = range_filter(returns_all, reward_cfg.range_delta)
    kept = kept_all[first_group : first_group + len(mine)]
    kept_returns = [r for r, k in zip(returns_all, kept_all) if k]
    if reward_cfg.norm == "pooled":
        sigma = pooled_sigma(kept_returns, reward_cfg)
        sigmas = [sigma] * len(returns_all)
    elif reward_cfg.norm == "group":
        sigmas = [max(float(r.std()), reward_cfg.sigma_min) for r in returns_all]
        sigma = (
            float(np.mean([s for s, k in zip(sigmas, kept_all) if k]))
            if kept_all.any()
            else reward_cfg.sigma_min
        )
    else:
        sigma, sigmas = 1.0, [1.0] * len(returns_all)

    w_loc, w_glob = (0.0, 1.0) if flat else (adv_cfg.w_loc, adv_cfg.w_glob)
    n = batch.num_chunks
    adv = np.zeros(n, dtype=np.float64)
    wts = np.zeros(n, dtype=np.float64)
    train = np.zeros(n, dtype=bool)
    edge_train: list[bool] = []
    edge_loc_zero: list[bool] = []
    edge_depth: list[int] = []
    edge_abs: list[float] = []
    for gi, tree in enumerate(trees):
        on_group = batch.chunk_group == gi
        if not kept[gi]:
            continue
        a_nodes = edge_advantages(tree, sigmas[first_group + gi], w_loc, w_glob)
        rho = edge_weights(tree)
        tr = trainable_edges(tree, a_nodes)
        a_loc, _ = local_global_advantages(tree)
        nodes = batch.chunk_node[on_group]
        adv[on_group] = a_nodes[nodes]
        wts[on_group] = rho[nodes]
        train[on_group] = tr[nodes]
        for node in tree.nodes[1:]:
            edge_train.append(bool(tr[node.id]))
            edge_loc_zero.append(bool(abs(a_loc[node.id]) < 1e-12))
            edge_depth.append(int(node.depth))
            edge_abs.append(abs(float(a_nodes[node.id])))
    chunks = ChunkSummary(
        adv=adv,
        train=train,
        edge_train=np.array(edge_train, dtype=bool),
        edge_loc_zero=np.array(edge_loc_zero, dtype=bool),
        edge_depth=np.array(edge_depth, dtype=np.int64),
        edge_abs_adv=np.array(edge_abs, dtype=np.float64),
    )

    # Fold this batch into (a copy of) the task statistics only after it was scored: calibration used the
    # statistics from before it.
    new_stats = copy.deepcopy(task_stats)
    by_task: dict[str, tuple[list, list]] = {}
    for o in plan:
        by_task.setdefault(o.task, ([], []))
        by_task[o.task][0].append(o.successes)
        by_task[o.task][1].append(o.times)
    for task, (ss, ts) in by_task.items():
        new_stats.update(task, np.concatenate(ss), np.concatenate(ts), reward_cfg)

    successes = [o.successes for o in plan]
    stats = group_stats(successes, returns_all, reward_cfg.range_delta)
    stats = {f"groups/{k.removeprefix('frac_')}": v for k, v in stats.items()}
    stats.update(
        {
            "groups/kept": float(kept_all.sum()),
            # (c) of the GRPO benchmark: groups carrying learning signal under the active calibration vs
            # under binary rewards (D0 keeps only mixed groups).
            "groups/signal_frac": float(kept_all.mean()) if len(kept_all) else 0.0,
            "groups/signal_frac_D0": float(np.mean([s.any() and not s.all() for s in successes]))
            if successes
            else 0.0,
            "adv/sigma": float(sigma),
        }
    )
    stats.update(chunk_stats([chunks]))
    return ScoredBatch(
        rollout=batch,
        advantages=adv,
        weights=wts,
        trainable=train,
        returns=returns,
        kept=kept,
        sigma=float(sigma),
        stats=stats,
        chunks=chunks,
        trees=trees,
        task_stats=new_stats,
    )
