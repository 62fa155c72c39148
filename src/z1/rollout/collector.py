"""Group rollouts for task-wise GRPO: shared initial states, shared prefixes, tree branching.

For each group (task, seed) the collector:
1. resets one env slot to the group's initial state and clones it into the other trunk slots, so every
   member starts from the bit-identical simulator state (algorithms.md B.1);
2. steps all live slots of all groups of a wave together: one batched policy call per chunk boundary,
   with the VLM prefix computed once per *distinct* observation (the M trunks at c=0 and the k children
   at a branch point see one identical observation, C.1), chunks sampled with the Flow-SDE sampler, the
   first H_exec actions executed in the env slots (in parallel worker processes);
3. at the group's branch level (a chunk boundary, C.2) snapshots each live trunk and restores it into k-1
   free slots; each child then draws its own noise (never a copy of the parent's RNG);
4. records, per executed chunk, what the trainer needs: the index of its (encoded) observation, the
   denoise chain, the stochastic step ids and their log-probs, and the tree edge it belongs to; per
   leaf, success and the success time in env steps (counting the shared prefix).

Flat GRPO is the same code with G trunks and no branch level.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from z1.models.pi05 import PolicyInputs, PrefixCache
from z1.rollout.runner import PolicyRunner
from z1.rollout.tree import Tree, TreeConfig, branch_factor_at, plan_branch_levels, tree_cost
from z1.types import Observation


@dataclass(frozen=True)
class RolloutConfig:
    """How groups are rolled out (algorithms.md A, C)."""

    group_size: int = 8
    """Leaves per group G (tree: trunks * branch_factor; flat: G members from the same state)."""
    mode: Literal["tree", "flat"] = "tree"
    """tree: M trunks branched once into k children at a chunk boundary; flat: plain GRPO groups."""
    trunks: int = 2
    """M, independent rollouts from the group's initial state (tree mode)."""
    branch_factor: int = 4
    """k, children per branch node (tree mode)."""
    branch_at: int | None = None
    """Fixed branch chunk index; None draws b ~ U{1..floor(0.5 * C_med(task))} per group (C.2)."""
    branch_frac: float | None = None
    """Branch at this fraction of the episode cap (chunk round(f * max_steps / h_exec)); overrides
    branch_at. With M=2, k=4 and f=0.5 the env-step saving is at most 37.5% (algorithms.md C.8)."""
    h_exec: int = 4
    """Actions executed per chunk before the policy looks again."""
    num_steps: int = 5
    """Denoise steps K (the same K is used for evaluation)."""
    noise_level: float = 0.5
    """a of the Flow-SDE: sigma_t = a * sqrt(t / (1 - t))."""
    stochastic: Literal["single", "window", "all"] = "single"
    """Stochastic denoise steps: one random (not the last), a window, or all (A.5)."""
    window: int = 2
    """Window length for stochastic='window'."""
    share_prefix: bool = True
    """Compute the VLM prefix once per distinct observation (ablation switch)."""
    max_steps: int = 200
    """Episode cap in env steps for training rollouts."""

    def __post_init__(self) -> None:
        if self.mode not in ("tree", "flat"):
            raise ValueError(f"RolloutConfig.mode must be 'tree' or 'flat', got {self.mode!r}")
        if self.mode == "tree" and self.trunks * self.branch_factor != self.group_size:
            raise ValueError(
                f"tree mode needs group_size == trunks * branch_factor, got {self.group_size} != "
                f"{self.trunks} * {self.branch_factor}; change --rollout.group-size or the tree shape"
            )
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 for a group baseline, got {self.group_size}")

    def tree_config(self) -> TreeConfig:
        if self.mode == "flat":
            return TreeConfig.flat(self.group_size)
        levels = None if self.branch_at is None else (self.branch_at,)
        if self.branch_frac is not None:
            levels = (max(1, round(self.branch_frac * self.max_steps / self.h_exec)),)
        return TreeConfig(trunks=self.trunks, branch_levels=levels, branch_factor=self.branch_factor)


@dataclass
class GroupRollout:
    task: str
    seed: int
    tree: Tree
    levels: tuple[int, ...]
    success_time: dict[int, int] = field(default_factory=dict)  # leaf node -> env steps to first success
    length: dict[int, int] = field(default_factory=dict)  # leaf node -> episode length in env steps

    def leaf_outcomes(self) -> tuple[list[int], np.ndarray, np.ndarray]:
        """Leaves in tree order with success flags (g,) and success times (g,) (0 for failures)."""
        leaves = self.tree.leaves()
        succ = np.array([self.tree.node(i).success for i in leaves], dtype=bool)
        times = np.array([self.success_time.get(i, 0) for i in leaves], dtype=np.float64)
        return leaves, succ, times


@dataclass
class RolloutBatch:
    """Everything the GRPO update needs from one collection round."""

    groups: list[GroupRollout]
    inputs: PolicyInputs  # (u, ...) every distinct observation seen, encoded
    caches: PrefixCache | None  # (u, ...) their prefix caches (kept when the prefix is frozen in training)
    obs_index: torch.Tensor  # (n,) int64 chunk -> observation row
    chains: torch.Tensor  # (n, k+1, h, a)
    step_ids: torch.Tensor  # (n, j)
    logprobs: torch.Tensor  # (n, j) rollout log-probs
    chunk_group: np.ndarray  # (n,) group index
    chunk_node: np.ndarray  # (n,) tree node id (edge) of the chunk
    stats: dict[str, float]

    @property
    def num_chunks(self) -> int:
        return int(self.obs_index.shape[0])


def cat_inputs(parts: list[PolicyInputs]) -> PolicyInputs:
    return PolicyInputs(
        images=torch.cat([p.images for p in parts]),
        image_mask=torch.cat([p.image_mask for p in parts]),
        tokens=torch.cat([p.tokens for p in parts]),
        token_mask=torch.cat([p.token_mask for p in parts]),
    )


def cat_caches(parts: list[PrefixCache]) -> PrefixCache:
    n_layers = len(parts[0].keys)
    return PrefixCache(
        keys=tuple(torch.cat([p.keys[i] for p in parts]) for i in range(n_layers)),
        values=tuple(torch.cat([p.values[i] for p in parts]) for i in range(n_layers)),
        mask=torch.cat([p.mask for p in parts]),
    )


def collect_groups(
    runner: PolicyRunner,
    venv,
    groups: list[tuple[str, int]],
    cfg: RolloutConfig,
    rng: np.random.Generator,
    generator: torch.Generator,
    c_med: dict[str, float] | None = None,
    keep_caches: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> RolloutBatch:
    """Roll out every (task, seed) group; groups run in waves of venv.num_slots // group_size."""
    per_wave = venv.num_slots // cfg.group_size
    if per_wave < 1:
        raise ValueError(
            f"the vector env has {venv.num_slots} slots but one group needs {cfg.group_size}; "
            f"use at least {cfg.group_size} env slots"
        )
    sampler = runner.sampler("sde", cfg.num_steps, cfg.noise_level, cfg.stochastic, cfg.window)
    tree_cfg = cfg.tree_config()
    out_groups: list[GroupRollout] = []
    inputs_parts: list[PolicyInputs] = []
    cache_parts: list[PrefixCache] = []
    rec_obs: list[torch.Tensor] = []
    rec_chain: list[torch.Tensor] = []
    rec_steps: list[torch.Tensor] = []
    rec_lp: list[torch.Tensor] = []
    rec_group: list[np.ndarray] = []
    rec_node: list[np.ndarray] = []
    n_obs = 0
    prefix_forwards = 0
    policy_rows = 0
    clones = 0
    t_policy = t_env = t_restore = 0.0
    started = time.perf_counter()

    for w0 in range(0, len(groups), per_wave):
        wave = groups[w0 : w0 + per_wave]
        live: dict[int, tuple[int, int]] = {}  # slot -> (group index, node id)
        steps: dict[int, int] = {}
        obs: dict[int, Observation] = {}
        group_slots: dict[int, list[int]] = {}
        for wi, (task, seed) in enumerate(wave):
            gi = w0 + wi
            base = wi * cfg.group_size
            group_slots[gi] = list(range(base, base + cfg.group_size))
            levels = plan_branch_levels(tree_cfg, (c_med or {}).get(task), rng)
            g = GroupRollout(task=task, seed=seed, tree=Tree(task=task, group=gi), levels=levels)
            out_groups.append(g)
            (ob0,) = venv.reset([base], [task], [seed])
            t0 = time.perf_counter()
            trunk_slots = list(range(base, base + tree_cfg.trunks))
            if len(trunk_slots) > 1:  # identical initial state: clones of the reset slot
                venv.clone_many(base, trunk_slots[1:])
                clones += len(trunk_slots) - 1
            for slot in trunk_slots:
                live[slot] = (gi, g.tree.add_trunk())
                steps[slot] = 0
                obs[slot] = ob0
            t_restore += time.perf_counter() - t0

        while live:
            slots = sorted(live)
            t0 = time.perf_counter()
            acted = runner.act([obs[s] for s in slots], sampler, generator)
            t_policy += time.perf_counter() - t0
            inputs_parts.append(acted.unique_inputs)
            if keep_caches:
                cache_parts.append(acted.unique_cache)
            rec_obs.append(acted.row_to_unique + n_obs)
            n_obs += acted.prefix_forwards
            prefix_forwards += acted.prefix_forwards
            policy_rows += len(slots)
            rec_chain.append(acted.sample.chain)
            rec_steps.append(acted.sample.step_ids)
            rec_lp.append(acted.sample.logprobs)
            rec_group.append(np.array([live[s][0] for s in slots]))
            rec_node.append(np.array([live[s][1] for s in slots]))
            t0 = time.perf_counter()
            results = venv.run_chunks(
                {
                    s: acted.env_actions[i][: max(1, min(cfg.h_exec, cfg.max_steps - steps[s]))]
                    for i, s in enumerate(slots)
                },
                stop_on_success=True,
                observe=True,
            )
            t_env += time.perf_counter() - t0
            for s in slots:
                gi, node = live[s]
                g = out_groups[gi]
                r = results[s]
                g.tree.extend(node, env_steps=r.steps)
                steps[s] += r.steps
                obs[s] = r.observation
                if r.success or r.done or steps[s] >= cfg.max_steps:
                    g.tree.finish(node, success=r.success)
                    g.length[node] = steps[s]
                    if r.success:
                        g.success_time[node] = steps[s]
                    del live[s]
                    if progress is not None:
                        progress(1, 0)
            # Branch at chunk boundaries (C.2): children restored from the parent's state into free slots.
            t0 = time.perf_counter()
            for s in sorted(live):
                gi, node = live[s]
                g = out_groups[gi]
                chunks_left = (cfg.max_steps - steps[s]) // cfg.h_exec
                k = branch_factor_at(g.tree, node, g.levels, tree_cfg, chunks_left)
                if k == 0:
                    continue
                busy = {sl for sl, (gj, _) in live.items() if gj == gi}
                free = [sl for sl in group_slots[gi] if sl not in busy]
                if len(free) < k - 1:
                    continue  # not enough slots (only with uneven custom trees); keep going unbranched
                kids = g.tree.branch(node, k)
                live[s] = (gi, kids[0])
                dsts = free[: k - 1]
                venv.clone_many(s, dsts)
                clones += len(dsts)
                for kid, dst in zip(kids[1:], dsts):
                    live[dst] = (gi, kid)
                    steps[dst] = steps[s]
                    obs[dst] = obs[s]
            t_restore += time.perf_counter() - t0

    costs = [tree_cost(g.tree) for g in out_groups]
    env_steps = sum(c.env_steps for c in costs)
    flat_steps = sum(c.flat_env_steps for c in costs)
    flat_prefix = sum(c.flat_prefix_forwards for c in costs)
    stats = {
        "env_steps": float(env_steps),
        "env_steps_flat_equiv": float(flat_steps),
        "env_step_ratio": env_steps / flat_steps if flat_steps else float("nan"),
        "prefix_forwards": float(prefix_forwards),
        "prefix_forwards_flat": float(flat_prefix),
        "prefix_forwards_saved": float(policy_rows - prefix_forwards),
        "clones": float(clones),
        "time/policy": t_policy,
        "time/env": t_env,
        "time/restore": t_restore,
        "time/rollout": time.perf_counter() - started,
    }
    return RolloutBatch(
        groups=out_groups,
        inputs=cat_inputs(inputs_parts),
        caches=cat_caches(cache_parts) if keep_caches else None,
        obs_index=torch.cat(rec_obs),
        chains=torch.cat(rec_chain),
        step_ids=torch.cat(rec_steps),
        logprobs=torch.cat(rec_lp),
        chunk_group=np.concatenate(rec_group),
        chunk_node=np.concatenate(rec_node),
        stats=stats,
    )
