"""Group rollouts for task-wise GRPO: shared initial states, shared prefixes, tree branching.

For each group (task, seed) the collector:
1. resets one env slot to the group's initial state and clones it into the other trunk slots, so every
   member starts from the bit-identical simulator state (docs/algorithm.md#groups);
2. steps all live slots of all groups of a wave together: one batched policy call per chunk boundary,
   with the VLM prefix computed once per *distinct* observation (the M trunks at c=0 and the k children
   at a branch point see one identical observation, #shared-prefix), chunks sampled with the Flow-SDE
   sampler, the first H_exec actions executed in the env slots (in parallel worker processes);
3. at the group's branch level (a chunk boundary, #tree-shape-and-branching) snapshots each live trunk
   and restores it into k-1 free slots; each child then draws its own noise (never a copy of the
   parent's RNG);
4. records, per executed chunk, what the trainer needs: the index of its (encoded) observation, the
   denoise chain, the stochastic step ids and their log-probs, and the tree edge it belongs to; per
   leaf, success and the success time in env steps (counting the shared prefix). The records form one
   `z1.records.RolloutBatch`, which scoring (rl/scoring.py) reads and never modifies.

Flat GRPO is the same code with G trunks and no branch level.

Where the policy runs (`RolloutConfig.inference`): "learner" batches inference over all slots of the wave
in this process (observations come back from the env hosts); "actors" has every Ray env actor run a copy
of the policy on its own slots (observations stay in the actors; the learner sends per-row noise seeds and
gets the records back; the prefix dedupe then happens per actor). The learner pushes its weights to the
actors before each wave when they changed (`RayVectorEnv.sync_policy`). The two placements live in
rollout/inference.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from z1.config import FlowSDEConfig
from z1.envs.vector import EnvWorkerError
from z1.models.pi05 import PolicyInputs, PrefixCache
from z1.records import GroupRollout, RolloutBatch
from z1.rollout.inference import (
    ACTOR_INFERENCE_METHODS,
    ActorInference,
    LearnerInference,
    cat_caches,
    cat_inputs,
)
from z1.rollout.runner import PolicyRunner
from z1.rollout.tree import Tree, TreeConfig, branch_factor_at, plan_branch_levels, tree_cost


@dataclass(frozen=True)
class RolloutConfig(FlowSDEConfig):
    """How groups are rolled out (docs/algorithm.md#flow-sde-step, #trees): the Flow-SDE settings
    (`FlowSDEConfig`: K, noise level, stochastic steps) and the group's shape and plumbing."""

    group_size: int = 8
    """Leaves per group G (tree: trunks * branch_factor; flat: G members from the same state)."""
    mode: Literal["tree", "flat"] = "tree"
    """tree: M trunks branched once into k children at a chunk boundary; flat: plain GRPO groups."""
    trunks: int = 2
    """M, independent rollouts from the group's initial state (tree mode)."""
    branch_factor: int = 4
    """k, children per branch node (tree mode)."""
    branch_at: int | None = None
    """Fixed branch chunk index; None draws b ~ U{1..floor(0.5 * C_med(task))} per group
    (docs/algorithm.md#tree-shape-and-branching)."""
    branch_frac: float | None = None
    """Branch at this fraction of the episode cap (chunk round(f * max_steps / h_exec)); overrides
    branch_at. With M=2, k=4 and f=0.5 the env-step saving is at most 37.5%
    (docs/algorithm.md#env-step-savings)."""
    h_exec: int = 4
    """Actions executed per chunk before the policy looks again."""
    share_prefix: bool = True
    """Compute the VLM prefix once per distinct observation (ablation switch)."""
    max_steps: int = 200
    """Episode cap in env steps for training rollouts."""
    inference: Literal["learner", "actors"] = "learner"
    """Where the policy computes the chunks. learner: in this process, batched over all slots of a wave
    (the observations travel from the env hosts). actors: a copy of the policy in every Ray env actor acts
    on that actor's slots (needs --ray; observations stay in the actors, the records come back; the
    learner pushes its changed weights to the actors before each wave; noise from per-row seeds; the
    shared-prefix dedupe is per actor, see the prefix_forwards stats)."""
    row_seeds: bool = False
    """Draw every row's noise from its own seed (drawn from the collection's generator) instead of one
    generator for the batch, so a chunk does not depend on the batch or host that computed it: the
    learner then samples what actors would. Always on with inference='actors'."""

    def __post_init__(self) -> None:
        from z1.errors import check_float, check_int

        check_int(self.group_size, "--rollout.group-size", low=2)
        check_int(self.trunks, "--rollout.trunks", low=1)
        check_int(self.branch_factor, "--rollout.branch-factor", low=1)
        if self.branch_at is not None:
            check_int(self.branch_at, "--rollout.branch-at", low=1)
        if self.branch_frac is not None:
            check_float(
                self.branch_frac, "--rollout.branch-frac", low=0.0, high=1.0, low_open=True, high_open=True
            )
        check_int(self.h_exec, "--rollout.h-exec", low=1)
        check_int(self.num_steps, "--rollout.num-steps", low=1)
        check_float(self.noise_level, "--rollout.noise-level", low=0.0, low_open=True)
        check_int(self.window, "--rollout.window", low=1)
        if self.stochastic == "window" and self.window > self.num_steps:
            raise ValueError(
                f"--rollout.window {self.window} is longer than --rollout.num-steps {self.num_steps}"
            )
        check_int(self.max_steps, "--rollout.max-steps", low=1)
        if self.mode not in ("tree", "flat"):
            raise ValueError(f"RolloutConfig.mode must be 'tree' or 'flat', got {self.mode!r}")
        if self.inference not in ("learner", "actors"):
            raise ValueError(f"RolloutConfig.inference must be 'learner' or 'actors', got {self.inference!r}")
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
    n_obs_one_host: int = 0  # distinct observations per chunk round over all hosts (one-host dedupe)
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
        self.n_obs_one_host += wave.n_obs_one_host
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

    cfg.inference="actors" needs a Ray vector env (`z1.distributed.RayVectorEnv`, `--ray`); then
    `stats["prefix_forwards"]` counts the prefix forwards the actors computed (each dedupes its own
    slots) and `stats["prefix_forwards_one_host"]` what one host's dedupe would have computed.
    """
    actors = cfg.inference == "actors"
    if actors and not all(hasattr(venv, m) for m in ACTOR_INFERENCE_METHODS):
        raise ValueError(
            f"--rollout.inference actors runs the policy inside Ray env actors, but the env slots are hosted "
            f"by a {type(venv).__name__}; add --ray local (or --ray auto on a cluster) to host them on Ray "
            "actors, or use --rollout.inference learner"
        )
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

    with venv.holding_observations() if actors else nullcontext():
        for w0 in range(0, len(groups), per_wave):
            rng_state, gen_state = rng.bit_generator.state, generator.get_state()
            for attempt in range(max_wave_retries + 1):
                try:
                    if actors:  # the actors act with the learner's current weights
                        venv.sync_policy(runner)
                    place = (ActorInference if actors else LearnerInference)(
                        runner, venv, sampler, generator, cfg.row_seeds, keep_caches
                    )
                    wave = _roll_wave(
                        place,
                        groups[w0 : w0 + per_wave],
                        w0,
                        cfg,
                        tree_cfg,
                        rng,
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
                            f"wave of groups {w0}..{min(w0 + per_wave, len(groups)) - 1} failed "
                            f"{attempt + 1} times; last error: {e}"
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
        "prefix_forwards_one_host": float(done.n_obs_one_host),
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
        sampler=sampler,
        stats=stats,
    )


def _roll_wave(
    place: LearnerInference | ActorInference,
    wave_groups: list[tuple[str, int]],
    w0: int,
    cfg: RolloutConfig,
    tree_cfg: TreeConfig,
    rng: np.random.Generator,
    c_med: dict[str, float] | None,
    keep_caches: bool,
    progress: Callable[[int, int], None] | None,
    times: dict[str, float],
) -> _Wave:
    """Roll out the groups of one wave together; group w0 + i uses slots i * G ... (i + 1) * G - 1."""
    wave = _Wave()
    live: dict[int, tuple[int, int]] = {}  # slot -> (group index, node id)
    steps: dict[int, int] = {}
    group_slots: dict[int, list[int]] = {}
    for wi, (task, seed) in enumerate(wave_groups):
        gi = w0 + wi
        base = wi * cfg.group_size
        group_slots[gi] = list(range(base, base + cfg.group_size))
        levels = plan_branch_levels(tree_cfg, (c_med or {}).get(task), rng)
        g = GroupRollout(task=task, seed=seed, tree=Tree(task=task, group=gi), levels=levels)
        wave.groups.append(g)
        place.reset(base, task, seed)
        t0 = time.perf_counter()
        trunk_slots = list(range(base, base + tree_cfg.trunks))
        if len(trunk_slots) > 1:  # identical initial state: clones of the reset slot
            place.clone(base, trunk_slots[1:])
            wave.clones += len(trunk_slots) - 1
        for slot in trunk_slots:
            live[slot] = (gi, g.tree.add_trunk())
            steps[slot] = 0
        times["restore"] += time.perf_counter() - t0

    while live:
        slots = sorted(live)
        acted, results, one_host = place.act_step(
            {s: max(1, min(cfg.h_exec, cfg.max_steps - steps[s])) for s in slots}, times
        )
        wave.inputs.append(acted.unique_inputs)
        if keep_caches:
            assert acted.unique_cache is not None
            wave.caches.append(acted.unique_cache)
        wave.obs.append(acted.row_to_unique + wave.n_obs)
        wave.n_obs += acted.prefix_forwards
        wave.n_obs_one_host += one_host
        wave.policy_rows += len(slots)
        wave.chain.append(acted.sample.chain)
        wave.steps.append(acted.sample.step_ids)
        wave.lp.append(acted.sample.logprobs)
        wave.group.append(np.array([live[s][0] for s in slots]))
        wave.node.append(np.array([live[s][1] for s in slots]))
        for s in slots:
            gi, node = live[s]
            g = wave.groups[gi - w0]
            r = results[s]
            g.tree.extend(node, env_steps=r.steps)
            steps[s] += r.steps
            if r.success or r.done or steps[s] >= cfg.max_steps:
                g.tree.finish(node, success=r.success)
                g.length[node] = steps[s]
                if r.success:
                    g.success_time[node] = steps[s]
                del live[s]
                if progress is not None:
                    progress(1, 0)
        # Branch at chunk boundaries (#tree-shape-and-branching): children restored from the parent's state
        # into free slots.
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
            place.clone(s, dsts)
            wave.clones += len(dsts)
            for kid, dst in zip(kids[1:], dsts):
                live[dst] = (gi, kid)
                steps[dst] = steps[s]
        times["restore"] += time.perf_counter() - t0
    return wave
