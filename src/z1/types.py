"""Data types that cross module boundaries, and the shape letters used in comments.

Shape letters (used in `# (b, h, a)` comments throughout z1):
    b  batch (env slots, samples)          h  action horizon H (chunk length)
    a  padded action dim (32 for pi0.5)    d  real action dim of the robot
    s  state (proprio) dim                 n  cameras
    c  image channels (3)                  y, x  image height, width
    p  prefix tokens                       l  text tokens
    k  denoise steps K (+1 for chains)     j  stochastic steps |S|
    w  model width                         e  env steps

Everything here is plain data: numpy on the env side, torch on the model side. Environments produce
`Observation`s; the policy consumes them through `z1.models` transforms; rollouts record `ChunkRecord`s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Observation:
    """What the policy sees at a chunk boundary.

    images: camera name -> uint8 array (y, x, 3), upright.
    state: float32 (s,) un-normalized proprio (layout given by the env's `EnvSpec.state_names`).
    instruction: natural-language task instruction.
    """

    images: dict[str, np.ndarray]
    state: np.ndarray
    instruction: str

    def key(self) -> bytes:
        """A hash key identifying bit-identical observations (used to share prefix forwards)."""
        import hashlib

        h = hashlib.blake2b(digest_size=16)
        for cam in sorted(self.images):
            h.update(cam.encode())
            h.update(np.ascontiguousarray(self.images[cam]).tobytes())
        h.update(np.ascontiguousarray(self.state, dtype=np.float32).tobytes())
        h.update(self.instruction.encode())
        return h.digest()


@dataclass(frozen=True)
class EnvSpec:
    """Static description of an environment suite as the policy sees it."""

    suite: str
    cameras: tuple[str, ...]
    image_size: tuple[int, int]  # (y, x)
    state_names: tuple[str, ...]
    action_names: tuple[str, ...]
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    max_steps: int
    control_hz: float = 20.0

    @property
    def state_dim(self) -> int:
        return len(self.state_names)

    @property
    def action_dim(self) -> int:
        return len(self.action_names)


@dataclass(frozen=True)
class StepResult:
    """Result of one env step. `observation` is only rendered when asked for."""

    reward: float
    success: bool  # the env's own success signal at this step (not latched)
    done: bool  # time limit reached (truncation); success does not end an episode by itself
    info: dict[str, Any] = field(default_factory=dict)
    observation: Observation | None = None


@dataclass(frozen=True)
class ChunkResult:
    """Result of executing up to n actions of a chunk in one env slot.

    Execution stops early at the first success when `stop_on_success` was set, or at the time limit.
    """

    steps: int  # actions actually executed
    rewards: np.ndarray  # float32 (steps,)
    success: bool  # success reached at any executed step
    success_step: int  # index within the chunk of the first success, -1 if none
    done: bool  # time limit reached
    t: int  # env step counter after the chunk
    observation: Observation | None  # rendered after the chunk (None if not requested)


@dataclass(frozen=True)
class FeatureStats:
    """Per-dimension statistics of one feature (state or action), float32 arrays of shape (d,)."""

    mean: np.ndarray
    std: np.ndarray
    q01: np.ndarray
    q99: np.ndarray

    def to_json(self) -> dict[str, list[float]]:
        return {
            k: np.asarray(getattr(self, k), dtype=np.float64).tolist() for k in ("mean", "std", "q01", "q99")
        }

    @staticmethod
    def from_json(d: dict[str, list[float]]) -> FeatureStats:
        return FeatureStats(**{k: np.asarray(d[k], dtype=np.float32) for k in ("mean", "std", "q01", "q99")})


@dataclass(frozen=True)
class Normalization:
    """How the policy sees state and actions. "quantile" maps [q01, q99] to [-1, 1] (pi0.5 default);
    "meanstd" standardizes. The inverse is applied to actions before they reach the env."""

    state: FeatureStats
    action: FeatureStats
    mode: str = "quantile"  # "quantile" | "meanstd"

    def _fwd(self, x: np.ndarray, st: FeatureStats) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if self.mode == "quantile":
            return (x - st.q01) / (st.q99 - st.q01 + 1e-6) * 2.0 - 1.0
        return (x - st.mean) / (st.std + 1e-6)

    def _inv(self, y: np.ndarray, st: FeatureStats) -> np.ndarray:
        y = np.asarray(y, dtype=np.float32)
        if self.mode == "quantile":
            return (y + 1.0) / 2.0 * (st.q99 - st.q01 + 1e-6) + st.q01
        return y * (st.std + 1e-6) + st.mean

    def normalize_state(self, x: np.ndarray) -> np.ndarray:
        return self._fwd(x, self.state)

    def normalize_action(self, x: np.ndarray) -> np.ndarray:
        return self._fwd(x, self.action)

    def unnormalize_action(self, y: np.ndarray) -> np.ndarray:
        return self._inv(y, self.action)

    def to_json(self) -> dict:
        return {"mode": self.mode, "state": self.state.to_json(), "action": self.action.to_json()}

    @staticmethod
    def from_json(d: dict) -> Normalization:
        if d.get("mode") not in ("quantile", "meanstd"):
            raise ValueError(f"normalization mode must be 'quantile' or 'meanstd', got {d.get('mode')!r}")
        return Normalization(
            FeatureStats.from_json(d["state"]), FeatureStats.from_json(d["action"]), d["mode"]
        )
