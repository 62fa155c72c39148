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

from z1.envs.vector import EnvWorkerError
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


@dataclass
class _Wave:
    """The records of one wave of groups; merged into the batch only once the whole wave finished."""

    groups: list[GroupRollout] = field(default_factory=list)
    inputs: list[PolicyInputs] = field(default_factory=list)
    caches: list[PrefixCache] = field(default_factory=list)
    obs: list[torch.Tensor] = field(default_factory=list)  # (rows,) into this wave's observations
    chain: list[torch.Tensor] = field(default_factory=list)
    steps: list[torch.Tensor] = field(default_factory=list)
    lp: list[torch.Tensor] = field(default_factory=list)
    group: list[np.ndarray] = field(default_factory=list)
    node: list[np.ndarray] = field(default_factory=list)
    n_obs: int = 0  # distinct observations = prefix forwards
    policy_rows: int = 0
    clones: int = 0

    def commit(self, wave: _Wave) -> None:
        """Append a finished wave's records (its observation indices shifted past ours)."""
        self.obs.extend(o + self.n_obs for o in wave.obs)
        for mine, theirs in (
            (self.groups, wave.groups),
            (self.inputs, wave.inputs),
            (self.caches, wave.caches),
            (self.chain, wave.chain),
            (self.steps, wave.steps),
            (self.lp, wave.lp),
            (self.group, wave.group),
            (self.node, wave.node),
        ):
            mine.extend(theirs)
        self.n_obs += wave.n_obs
        self.policy_rows += wave.policy_rows
        self.clones += wave.clones


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
    max_wave_retries: int = 3,
) -> RolloutBatch:
    """Roll out every (task, seed) group; groups run in waves of venv.num_slots // group_size.

    When an env host dies during a wave (`EnvWorkerError`), the wave's records are dropped and the wave
    is collected again from the same RNG states (so the batch equals an undisturbed run's), at most
    `max_wave_retries` times; `stats` counts `env_restarts` and `waves_retried`.
    """
    per_wave = venv.num_slots // cfg.group_size
    if per_wave < 1:
        raise ValueError(
            f"the vector env has {venv.num_slots} slots but one group needs {cfg.group_size}; "
            f"use at least {cfg.group_size} env slots"
        )
    sampler = runner.sampler("sde", cfg.num_steps, cfg.noise_level, cfg.stochastic, cfg.window)
    tree_cfg = cfg.tree_config()
    done = _Wave()
    times = {"policy": 0.0, "env": 0.0, "restore": 0.0}
    restarts_before = getattr(venv, "restarts", None)
    worker_errors = waves_retried = 0
    started = time.perf_counter()

    for w0 in range(0, len(groups), per_wave):
        rng_state, gen_state = rng.bit_generator.state, generator.get_state()
        for attempt in range(max_wave_retries + 1):
            try:
                wave = _roll_wave(
                    runner,
                    venv,
                    groups[w0 : w0 + per_wave],
                    w0,
                    cfg,
                    tree_cfg,
                    sampler,
                    rng,
                    generator,
                    c_med,
                    keep_caches,
                    progress,
                    times,
                )
                break
            except EnvWorkerError as e:
                worker_errors += 1
                if attempt == max_wave_retries:
                    raise EnvWorkerError(
                        f"wave of groups {w0}..{min(w0 + per_wave, len(groups)) - 1} failed {attempt + 1} "
                        f"times; last error: {e}"
                    ) from e
                waves_retried += 1
                rng.bit_generator.state = rng_state  # the retry draws what the failed attempt drew
                generator.set_state(gen_state)
        done.commit(wave)

    out_groups = done.groups
    costs = [tree_cost(g.tree) for g in out_groups]
    env_steps = sum(c.env_steps for c in costs)
    flat_steps = sum(c.flat_env_steps for c in costs)
    flat_prefix = sum(c.flat_prefix_forwards for c in costs)
    restarts = worker_errors if restarts_before is None else venv.restarts - restarts_before
    stats = {
        "env_steps": float(env_steps),
        "env_steps_flat_equiv": float(flat_steps),
        "env_step_ratio": env_steps / flat_steps if flat_steps else float("nan"),
        "prefix_forwards": float(done.n_obs),
        "prefix_forwards_flat": float(flat_prefix),
        "prefix_forwards_saved": float(done.policy_rows - done.n_obs),
        "clones": float(done.clones),
        "env_restarts": float(restarts),
        "waves_retried": float(waves_retried),
        "time/policy": times["policy"],
        "time/env": times["env"],
        "time/restore": times["restore"],
        "time/rollout": time.perf_counter() - started,
    }
    return RolloutBatch(
        groups=out_groups,
        inputs=cat_inputs(done.inputs),
        caches=cat_caches(done.caches) if keep_caches else None,
        obs_index=torch.cat(done.obs),
        chains=torch.cat(done.chain),
        step_ids=torch.cat(done.steps),
        logprobs=torch.cat(done.lp),
        chunk_group=np.concatenate(done.group),
        chunk_node=np.concatenate(done.node),
        stats=stats,
    )


def _roll_wave(
    runner: PolicyRunner,
    venv,
    wave_groups: list[tuple[str, int]],
    w0: int,
    cfg: RolloutConfig,
    tree_cfg: TreeConfig,
    sampler,
    rng: np.random.Generator,
    generator: torch.Generator,
    c_med: dict[str, float] | None,
    keep_caches: bool,
    progress: Callable[[int, int], None] | None,
    times: dict[str, float],
) -> _Wave:
    """Roll out the groups of one wave together; group w0 + i uses slots i * G ... (i + 1) * G - 1."""
    wave = _Wave()
    live: dict[int, tuple[int, int]] = {}  # slot -> (group index, node id)
    steps: dict[int, int] = {}
    obs: dict[int, Observation] = {}
    group_slots: dict[int, list[int]] = {}
    for wi, (task, seed) in enumerate(wave_groups):
        gi = w0 + wi
        base = wi * cfg.group_size
        group_slots[gi] = list(range(base, base + cfg.group_size))
        levels = plan_branch_levels(tree_cfg, (c_med or {}).get(task), rng)
        g = GroupRollout(task=task, seed=seed, tree=Tree(task=task, group=gi), levels=levels)
        wave.groups.append(g)
        (ob0,) = venv.reset([base], [task], [seed])
        t0 = time.perf_counter()
        trunk_slots = list(range(base, base + tree_cfg.trunks))
        if len(trunk_slots) > 1:  # identical initial state: clones of the reset slot
            venv.clone_many(base, trunk_slots[1:])
            wave.clones += len(trunk_slots) - 1
        for slot in trunk_slots:
            live[slot] = (gi, g.tree.add_trunk())
            steps[slot] = 0
            obs[slot] = ob0
        times["restore"] += time.perf_counter() - t0

    while live:
        slots = sorted(live)
        t0 = time.perf_counter()
        acted = runner.act([obs[s] for s in slots], sampler, generator)
        times["policy"] += time.perf_counter() - t0
        wave.inputs.append(acted.unique_inputs)
        if keep_caches:
            wave.caches.append(acted.unique_cache)
        wave.obs.append(acted.row_to_unique + wave.n_obs)
        wave.n_obs += acted.prefix_forwards
        wave.policy_rows += len(slots)
        wave.chain.append(acted.sample.chain)
        wave.steps.append(acted.sample.step_ids)
        wave.lp.append(acted.sample.logprobs)
        wave.group.append(np.array([live[s][0] for s in slots]))
        wave.node.append(np.array([live[s][1] for s in slots]))
        t0 = time.perf_counter()
        results = venv.run_chunks(
            {
                s: acted.env_actions[i][: max(1, min(cfg.h_exec, cfg.max_steps - steps[s]))]
                for i, s in enumerate(slots)
            },
            stop_on_success=True,
            observe=True,
        )
        times["env"] += time.perf_counter() - t0
        for s in slots:
            gi, node = live[s]
            g = wave.groups[gi - w0]
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
            g = wave.groups[gi - w0]
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
            wave.clones += len(dsts)
            for kid, dst in zip(kids[1:], dsts):
                live[dst] = (gi, kid)
                steps[dst] = steps[s]
                obs[dst] = obs[s]
        times["restore"] += time.perf_counter() - t0
    return wave
