"""Where a wave's chunks are computed: in this process, or in the Ray env actors next to the env slots.

The collector (rollout/collector.py) drives a wave through one of these placements: `LearnerInference`
batches the policy over all live slots in this process (the observations come back from the env hosts);
`ActorInference` has every Ray env actor run its own copy of the policy on its slots (observations stay
there, noise comes from per-row seeds, the records come back). Both expose reset / clone / act_step, so
the wave loop does not know which one runs. The Ray vector env is reached by duck typing
(`ACTOR_INFERENCE_METHODS`): rollout never imports z1.distributed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from z1.config import SamplerConfig
from z1.models.pi05 import PolicyInputs, PrefixCache
from z1.models.sampling import ChunkSample
from z1.rollout.runner import Acted, PolicyRunner
from z1.types import ChunkResult, Observation

ACTOR_INFERENCE_METHODS = ("holding_observations", "sync_policy", "act_and_step")
"""What a vector env needs for inference='actors' (`z1.distributed.RayVectorEnv` has them)."""


def cat_inputs(parts: list[PolicyInputs]) -> PolicyInputs:
    """Encoded observations of several policy calls as one (u, ...) batch, in order."""
    return PolicyInputs(
        images=torch.cat([p.images for p in parts]),
        image_mask=torch.cat([p.image_mask for p in parts]),
        tokens=torch.cat([p.tokens for p in parts]),
        token_mask=torch.cat([p.token_mask for p in parts]),
    )


def cat_caches(parts: list[PrefixCache]) -> PrefixCache:
    """Prefix caches of several policy calls as one (u, ...) cache, layer by layer, in order."""
    n_layers = len(parts[0].keys)
    return PrefixCache(
        keys=tuple(torch.cat([p.keys[i] for p in parts]) for i in range(n_layers)),
        values=tuple(torch.cat([p.values[i] for p in parts]) for i in range(n_layers)),
        mask=torch.cat([p.mask for p in parts]),
    )


def draw_row_seeds(generator: torch.Generator, n: int) -> torch.Tensor:
    """(n,) int64 noise seeds, one per policy row, drawn from the collection's generator."""
    return torch.randint(0, 2**63 - 1, (n,), generator=generator, dtype=torch.int64)


@dataclass
class Inference:
    """Where a wave's chunks are computed: resets, clones and act-and-step of the wave's slots."""

    runner: PolicyRunner
    venv: Any
    sampler: SamplerConfig
    generator: torch.Generator
    row_seeds: bool
    keep_caches: bool


@dataclass
class LearnerInference(Inference):
    """The policy in this process, batched over all live slots; observations come back from the env hosts."""

    obs: dict[int, Observation] = field(default_factory=dict)  # slot -> its latest observation

    def reset(self, slot: int, task: str, seed: int) -> None:
        (self.obs[slot],) = self.venv.reset([slot], [task], [seed])

    def clone(self, src: int, dsts: list[int]) -> None:
        self.venv.clone_many(src, dsts)
        for d in dsts:
            self.obs[d] = self.obs[src]

    def act_step(
        self, n_actions: dict[int, int], times: dict[str, float]
    ) -> tuple[Acted, dict[int, ChunkResult], int]:
        """Chunks for the slots of `n_actions` (ascending), the first n actions executed; returns the
        policy call, the chunk results and the distinct observations over all slots."""
        slots = sorted(n_actions)
        obs = [self.obs[s] for s in slots]
        t0 = time.perf_counter()
        if self.row_seeds:
            acted = self.runner.act(obs, self.sampler, seeds=draw_row_seeds(self.generator, len(slots)))
        else:
            acted = self.runner.act(obs, self.sampler, self.generator)
        t1 = time.perf_counter()
        results = self.venv.run_chunks(
            {s: acted.env_actions[i][: n_actions[s]] for i, s in enumerate(slots)},
            stop_on_success=True,
            observe=True,
        )
        times["policy"] += t1 - t0
        times["env"] += time.perf_counter() - t1
        for s in slots:
            self.obs[s] = results[s].observation
        return acted, results, acted.prefix_forwards


class ActorInference(Inference):
    """A copy of the policy in every Ray env actor, acting on that actor's slots (observations stay there;
    noise from per-row seeds). The caller brings the actors' weights up to date first (`sync_policy`)."""

    def reset(self, slot: int, task: str, seed: int) -> None:
        self.venv.reset([slot], [task], [seed])  # the observation stays in the actor

    def clone(self, src: int, dsts: list[int]) -> None:
        self.venv.clone_many(src, dsts)  # the snapshot carries src's observation to the clones' actors

    def act_step(
        self, n_actions: dict[int, int], times: dict[str, float]
    ) -> tuple[Acted, dict[int, ChunkResult], int]:
        slots = sorted(n_actions)
        seeds = draw_row_seeds(self.generator, len(slots)).tolist()
        t0 = time.perf_counter()
        steps = self.venv.act_and_step(
            {s: (seed, n_actions[s]) for s, seed in zip(slots, seeds)},
            self.sampler,
            self.runner.share_prefix,
            self.keep_caches,
        )
        # The actors run in parallel: the slowest one's inference time, the rest of the round as env time
        # (stepping, transfer, the learner's merge).
        policy_s = max(st.policy_seconds for st in steps)
        times["policy"] += policy_s
        times["env"] += time.perf_counter() - t0 - policy_s
        return merge_actor_steps(steps, slots, self.runner.share_prefix)


def merge_actor_steps(steps: list[Any], slots: list[int], share_prefix: bool) -> tuple[Acted, dict, int]:
    """The actors' `ActorStep`s as one policy call with rows in `slots` order: each actor's distinct
    observations follow the previous actor's. Also returns the merged chunk results and the number of
    distinct observations over all actors (what one host's dedupe would have computed)."""
    row_of: dict[int, int] = {}
    to_unique: list[torch.Tensor] = []
    keys: set[bytes] = set()
    rows = unique = 0
    for st in steps:
        for i, s in enumerate(st.slots):
            row_of[s] = rows + i
        to_unique.append(st.acted.row_to_unique + unique)
        rows += len(st.slots)
        unique += st.acted.prefix_forwards
        keys.update(st.unique_keys)
    order = torch.as_tensor([row_of[s] for s in slots], dtype=torch.long)  # (b,) slot order -> row

    def rows_of(get: Callable[[Acted], torch.Tensor]) -> torch.Tensor:
        return torch.cat([get(st.acted) for st in steps])[order]

    caches = [st.acted.unique_cache for st in steps]
    acted = Acted(
        env_actions=np.concatenate([st.acted.env_actions for st in steps])[order.numpy()],
        sample=ChunkSample(
            actions=rows_of(lambda a: a.sample.actions),  # (b, h, a)
            chain=rows_of(lambda a: a.sample.chain),  # (b, k+1, h, a)
            step_ids=rows_of(lambda a: a.sample.step_ids),  # (b, j)
            logprobs=rows_of(lambda a: a.sample.logprobs),  # (b, j)
        ),
        unique_inputs=cat_inputs([st.acted.unique_inputs for st in steps]),
        unique_cache=None if any(c is None for c in caches) else cat_caches(caches),
        row_to_unique=torch.cat(to_unique)[order],
        prefix_forwards=unique,
    )
    results = {s: r for st in steps for s, r in st.results.items()}
    return acted, results, len(keys) if share_prefix else len(slots)
