"""The acting policy: observations in, env action chunks out.

`PolicyRunner` bundles the model, the observation encoder, the normalization and the env's action
bounds. It computes the VLM prefix once per *distinct* observation (bit-identical observations share one
prefix forward, docs/algorithm.md#shared-prefix) and samples one chunk per row on the shared KV cache. The
same object runs in the learner process or, copied, in Ray env actors (`z1.distributed.ray_policy`);
per-row seeds make a row's chunk independent of where and with which other rows it is computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from z1.config import SamplerConfig
from z1.models.pi05 import Pi05Policy, PolicyInputs, PrefixCache
from z1.models.sampling import ChunkSample, row_noise, sample_chunk
from z1.models.transforms import ObservationEncoder
from z1.types import EnvSpec, Normalization, Observation


@dataclass(frozen=True)
class Acted:
    """One batched policy call."""

    env_actions: np.ndarray  # (b, h_exec, d) un-normalized, clipped to the env bounds
    sample: ChunkSample  # model-space chunk, chain, stochastic steps, log-probs
    unique_inputs: PolicyInputs  # (u, ...) encoded distinct observations
    unique_cache: PrefixCache | None  # (u, ...) their prefix KV caches (None: not kept by the caller)
    row_to_unique: torch.Tensor  # (b,) int64 index into the unique observations
    prefix_forwards: int  # prefix rows computed (u)


def dedupe(observations: list[Observation]) -> tuple[list[Observation], list[int]]:
    """Distinct observations (first occurrence order) and each row's index into them."""
    index: dict[bytes, int] = {}
    unique: list[Observation] = []
    rows: list[int] = []
    for ob in observations:
        key = ob.key()
        if key not in index:
            index[key] = len(unique)
            unique.append(ob)
        rows.append(index[key])
    return unique, rows


class PolicyRunner:
    def __init__(
        self,
        model: Pi05Policy,
        encoder: ObservationEncoder,
        norm: Normalization,
        spec: EnvSpec,
        h_exec: int,
        share_prefix: bool = True,
    ) -> None:
        if h_exec > model.config.action_horizon:
            raise ValueError(
                f"h_exec={h_exec} exceeds the policy's action horizon {model.config.action_horizon}"
            )
        if spec.action_dim > model.config.action_dim:
            raise ValueError(
                f"env {spec.suite} has {spec.action_dim} action dims but the policy only "
                f"{model.config.action_dim}; use a preset with a larger action_dim"
            )
        self.model = model
        self.encoder = encoder
        self.norm = norm
        self.spec = spec
        self.h_exec = h_exec
        self.share_prefix = share_prefix
        self._low = np.asarray(spec.action_low, dtype=np.float32)
        self._high = np.asarray(spec.action_high, dtype=np.float32)

    def sampler(
        self, mode: str, num_steps: int, noise_level: float = 0.0, stochastic: str = "single", window: int = 2
    ) -> SamplerConfig:
        return SamplerConfig(
            num_steps=num_steps,
            mode=mode,  # type: ignore[arg-type]
            noise_level=noise_level,
            stochastic=stochastic,  # type: ignore[arg-type]
            window=window,
            h_exec=self.h_exec,
            d_exec=self.spec.action_dim,
        )

    def to_env(self, chunk: np.ndarray, states: np.ndarray | None = None) -> np.ndarray:
        """(b, h, a) normalized model actions -> (b, h_exec, d) env actions, clipped to the bounds.

        states (b, s): the raw states the chunks were computed from; needed when the checkpoint predicts
        actions relative to the state (`Conventions.relative_action_dims`), which are added back here."""
        d = self.spec.action_dim
        a = self.norm.unnormalize_action(chunk[:, : self.h_exec, :d], states)
        return np.clip(a, self._low, self._high).astype(np.float32)

    @torch.no_grad()
    def act(
        self,
        observations: list[Observation],
        cfg: SamplerConfig,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        seeds: torch.Tensor | None = None,
    ) -> Acted:
        """One chunk per observation. `noise` (b, h, a) is the initial x at t=1; drawn from `generator`
        when not given; the SDE steps' noise and step ids come from `generator` too. With `seeds` (b,)
        int64 instead, every random number of row r comes from its own seed (`row_noise`), so the row's
        chunk is the same alone, in any batch, here or in an env actor."""
        if self.share_prefix:
            unique, rows = dedupe(observations)
        else:
            unique, rows = list(observations), list(range(len(observations)))
        inputs = self.encoder.encode(unique)
        cache = self.model.build_prefix_cache(inputs)
        row_idx = torch.as_tensor(rows, dtype=torch.long)
        row_cache = (
            cache
            if len(unique) == len(observations) and rows == list(range(len(rows)))
            else cache.index(row_idx)
        )
        a = self.model.config.action_dim
        h = self.model.config.action_horizon
        if seeds is not None:
            if noise is not None or seeds.shape != (len(observations),):
                raise ValueError(
                    f"seeds must be ({len(observations)},) and exclude noise, got {tuple(seeds.shape)}"
                    f"{' and noise' if noise is not None else ''}"
                )
            rn = row_noise(seeds, cfg, h, a)
            sample = sample_chunk(
                self.model, row_cache, rn.noise, cfg, step_ids=rn.step_ids, sde_noise=rn.sde_noise
            )
        else:
            if noise is None:
                noise = torch.randn((len(observations), h, a), generator=generator)  # (b, h, a)
            elif noise.shape != (len(observations), h, a):
                raise ValueError(f"noise must be ({len(observations)}, {h}, {a}), got {tuple(noise.shape)}")
            sample = sample_chunk(self.model, row_cache, noise, cfg, generator=generator)
        states = None
        if self.norm.conventions.relative_action_dims:
            states = np.stack([np.asarray(ob.state, dtype=np.float32) for ob in observations])  # (b, s)
        env_actions = self.to_env(sample.actions.float().numpy(), states)
        return Acted(env_actions, sample, inputs, cache, row_idx, len(unique))
