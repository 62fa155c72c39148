"""Policy inference inside the Ray env actors (`--rollout.inference actors`).

Each env actor of a `RayVectorEnv` can hold a copy of the acting policy (a `PolicyRunner`: model,
observation encoder, normalization) and compute the chunks of its own slots, so raw observations stay in
the actor: the actor keeps every slot's latest observation (`PolicySlots`), acts on it with per-row seeds
drawn by the learner, steps the env and returns what the trainer records (the encoded distinct
observations, optionally their prefix caches, the denoise chains, step ids, log-probs, each row's index
into the distinct observations, and the chunk results without observations).

Learner side, `WeightVersions` numbers the learner's weights: the version goes up when any tensor of the
model changed since the last look (torch bumps a tensor's version counter on every in-place write, which
the optimizer's step and `load_state_dict` make). An actor that holds an older version gets the tensors
changed since then; one that holds none (new, restarted or replaced) gets the whole policy. Each payload
is `ray.put` once and every actor needing it loads the same object ref.

This module imports torch: the env actors import it on their first policy command only, so actors of a
learner-inference run stay light.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from z1.config import SamplerConfig
from z1.envs.base import EnvError, check_action_chunks
from z1.envs.hosting import SlotEnvs
from z1.rollout.runner import Acted, PolicyRunner
from z1.types import ChunkResult, Observation


@dataclass(frozen=True)
class PolicyPayload:
    """What one weight push carries: the whole policy (`base` None) or the tensors changed since `base`."""

    version: int
    base: int | None
    runner: PolicyRunner | None  # the whole acting policy (model with its current weights) when base is None
    tensors: dict[str, torch.Tensor]  # state_dict key -> new value, for a delta push


@dataclass(frozen=True)
class ActorStep:
    """One actor's act-and-step of its rows (in the order they were asked for)."""

    slots: list[int]
    acted: Acted  # unique_cache None unless asked for; env_actions (b, h_exec, d)
    unique_keys: list[bytes]  # (u,) `Observation.key()` of the distinct observations
    results: dict[int, ChunkResult]  # observation stripped (it stays in the actor)
    policy_seconds: float
    env_seconds: float


def _stamp(t: torch.Tensor) -> tuple:
    # `_version` is torch's per-tensor in-place write counter (what autograd uses to detect modified
    # saved tensors). Writes that bypass it (through `.data`, or a fused optimizer) are not seen.
    return (t.data_ptr(), t._version, tuple(t.shape), t.dtype)


class WeightVersions:
    """Learner side: a version number of the acting policy's weights and what changed since each version.

    `update(runner)` compares every state_dict tensor's (storage, in-place write counter) with the last
    look and bumps the version if any differs; a different runner or model structure (e.g. LoRA merged)
    starts over and needs whole-policy pushes.
    """

    def __init__(self) -> None:
        self.version = 0
        self._runner: weakref.ref[PolicyRunner] | None = None
        self._stamps: dict[str, tuple] = {}
        self._changed_at: dict[str, int] = {}
        self._whole_since = 0  # versions below this cannot take a delta

    def update(self, runner: PolicyRunner) -> int:
        state = runner.model.state_dict(keep_vars=True)
        stamps = {k: _stamp(t) for k, t in state.items()}
        same_owner = self._runner is not None and self._runner() is runner
        if not same_owner or stamps.keys() != self._stamps.keys():
            self.version += 1
            self._whole_since = self.version
            self._changed_at = dict.fromkeys(stamps, self.version)
        else:
            changed = [k for k, s in stamps.items() if s != self._stamps[k]]
            if changed:
                self.version += 1
                self._changed_at.update(dict.fromkeys(changed, self.version))
        self._runner = weakref.ref(runner)
        self._stamps = stamps
        return self.version

    def delta_base(self, held: int | None) -> int | None:
        """The version a delta push to an actor holding `held` starts from (None: push the whole policy)."""
        return held if held is not None and held >= self._whole_since else None

    def payload(self, runner: PolicyRunner, base: int | None) -> PolicyPayload:
        if base is None:
            # The whole policy, pickled with its current weights: the structure (LoRA wrappers included),
            # the encoder and the normalization. A real pi0.5 sends its 3.35B parameters (6.7 GB in bf16)
            # once per actor incarnation this way; the object store must hold them (or load them from the
            # checkpoint on each node instead).
            return PolicyPayload(self.version, None, runner, {})
        # Only the tensors written since `base`: with --selective.mode expert that is the 300M action
        # expert of a pi0.5 (0.6 GB in bf16), with lora only the adapters; the frozen VLM never travels.
        state = runner.model.state_dict()
        tensors = {k: state[k].detach().cpu() for k, v in self._changed_at.items() if v > base}
        return PolicyPayload(self.version, base, None, tensors)


class PolicySlots:
    """Actor side: one actor's env slots with each slot's latest observation kept here, and the policy
    copy that acts on them. The env commands mirror `SlotEnvs` but return no observations."""

    def __init__(self, slots: SlotEnvs) -> None:
        torch.set_num_threads(1)  # one actor, one core: the env and the policy take turns
        self.slots = slots
        self.obs: dict[int, Observation] = {}
        self.runner: PolicyRunner | None = None
        self.version: int | None = None

    # ------------------------------------------------------------ env commands keeping observations here

    def reset(self, items: list[tuple[int, str, int]]) -> dict[int, None]:
        self.obs.update(self.slots.reset(items))
        return {s: None for s, _, _ in items}

    def snapshot(self, slot: int) -> tuple[Any, Observation | None]:
        """The env snapshot with the slot's observation (a clone restored elsewhere acts on it)."""
        return self.slots.snapshot(slot), self.obs.get(slot)

    def restore(self, slot: int, snap_obs: tuple[Any, Observation | None]) -> None:
        snap, ob = snap_obs
        self.slots.restore(slot, snap)
        self._keep(slot, ob)

    def clone_into(
        self, items: list[tuple[int, str, int]], snap_obs: tuple[Any, Observation | None], observe: bool
    ) -> dict[int, None]:
        snap, ob = snap_obs
        self.slots.clone_into(items, snap, observe=False)  # the source's observation is the clones'
        for s, _, _ in items:
            self._keep(s, ob)
        return {s: None for s, _, _ in items}

    def run_chunks(self, actions: dict[int, np.ndarray], stop_on_success: bool, observe: bool) -> dict:
        results = self.slots.run_chunks(actions, stop_on_success, observe)
        out = {}
        for s, r in results.items():
            self._keep(s, r.observation)
            out[s] = replace(r, observation=None)
        return out

    def observe(self, slots: list[int]) -> dict[int, None]:
        self.obs.update(self.slots.observe(slots))
        return dict.fromkeys(slots)

    def _keep(self, slot: int, ob: Observation | None) -> None:
        if ob is None:
            self.obs.pop(slot, None)
        else:
            self.obs[slot] = ob

    def forget(self) -> None:
        """Drop the kept observations (the envs were driven by commands that return observations)."""
        self.obs.clear()

    # ------------------------------------------------------------ policy

    def load_policy(self, payload: PolicyPayload) -> int:
        """Take a weight push; returns the version now held."""
        if payload.base is None:
            assert payload.runner is not None
            runner = payload.runner
            runner.model.eval().requires_grad_(False)
            self.runner = runner
        else:
            if self.runner is None or self.version != payload.base:
                raise EnvError(
                    f"weight push from version {payload.base} to {payload.version}, but this actor holds "
                    f"version {self.version}"
                )
            state = self.runner.model.state_dict()
            with torch.no_grad():
                for k, t in payload.tensors.items():
                    state[k].copy_(t)
        self.version = payload.version
        return payload.version

    def act_step(
        self,
        rows: list[tuple[int, int, int]],
        cfg: SamplerConfig,
        share_prefix: bool,
        keep_cache: bool,
        stop_on_success: bool,
    ) -> ActorStep:
        """rows: (slot, noise seed, actions to execute). Act on the kept observations of those slots with
        per-row seeds, execute each chunk's first actions, keep the new observations."""
        if self.runner is None:
            raise EnvError("this env actor holds no policy; RayVectorEnv.sync_policy(runner) sends it")
        missing = [s for s, _, _ in rows if s not in self.obs]
        if missing:
            raise EnvError(
                f"slots {missing} have no observation kept in this actor; reset or clone them while the "
                "env holds observations (RayVectorEnv.holding_observations)"
            )
        slots = [s for s, _, _ in rows]
        obs = [self.obs[s] for s in slots]
        self.runner.share_prefix = share_prefix
        t0 = time.perf_counter()
        acted = self.runner.act(
            obs, cfg, seeds=torch.tensor([seed for _, seed, _ in rows], dtype=torch.int64)
        )
        t1 = time.perf_counter()
        firsts: dict[int, int] = {}
        for r, u in enumerate(acted.row_to_unique.tolist()):
            firsts.setdefault(u, r)
        keys = [obs[firsts[u]].key() for u in range(acted.prefix_forwards)]
        actions = {s: acted.env_actions[i][: max(1, n)] for i, (s, _, n) in enumerate(rows)}
        results = self.run_chunks(check_action_chunks(actions, self.slots.spec()), stop_on_success, True)
        t2 = time.perf_counter()
        if not keep_cache:
            acted = replace(acted, unique_cache=None)
        return ActorStep(slots, acted, keys, results, t1 - t0, t2 - t1)
