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
