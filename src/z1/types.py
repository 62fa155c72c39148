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

from dataclasses import dataclass, field, fields
from typing import Any, Literal

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


ResizeRule = Literal["uint8-antialias", "float-bilinear"]
NormRule = Literal["openpi", "lerobot"]
RopeForm = Literal["openpi", "transformers"]


@dataclass(frozen=True)
class Conventions:
    """How the framework that trained a policy prepared its inputs and read its outputs.

    SFT, RL and eval apply the same rules, so an imported checkpoint acts as it did where it was trained.
    The defaults are openpi's, which are also z1's own; a checkpoint without this record gets them.

    source: "z1" (trained here from scratch), "openpi" or "lerobot" (imported).
    resize: how a camera image of another size reaches the model's square size (`images_to_model`).
        Both keep the aspect ratio and pad centered with -1.
        "uint8-antialias": resize the uint8 image with an antialiased bilinear filter, round, then map to
        [-1, 1] (openpi resizes uint8 images in its data transforms).
        "float-bilinear": map uint8 to float [0, 1], resize bilinearly WITHOUT antialiasing, then map to
        [-1, 1] (LeRobot feeds float images and resizes them inside the policy).
    norm_rule: how `norm_eps` enters the normalization (`Normalization`).
        "openpi": quantile y = (x - q01) / (q99 - q01 + eps) * 2 - 1, inverse with the same denominator;
        mean/std y = (x - mean) / (std + eps), inverse y * (std + eps) + mean.
        "lerobot": quantile y = 2 (x - q01) / r - 1 with r = q99 - q01, replaced by eps only where r == 0;
        mean/std y = (x - mean) / (std + eps), inverse y * std + mean (no eps).
    norm_eps: 1e-6 (openpi) or the LeRobot normalizer's `eps` (1e-8 unless its JSON says otherwise).
    relative_action_dims: action dims the model predicts as offsets from the state dim of the same index
        (LeRobot `use_relative_actions`): training targets are action - state (the state of the chunk's
        first frame, before normalization), and env actions get the state of the observation the chunk
        was computed from added back after un-normalization, for the whole chunk (as LeRobot's
        predict_action_chunk; its step-by-step select_action loop adds each step's newest state instead,
        which differs when more than one action of a chunk is executed). Empty = absolute actions.
    num_inference_steps: the source's default number of denoise steps (None: it does not say).
    camera_rename: (from, to) pairs renaming env cameras before they meet the model's camera slots
        (LeRobot's `rename_observations_processor` map, `observation.images.` prefix dropped).
    source_rope: the RoPE angle form the source computed (for the record; the model runs
        `PolicyConfig.rope`).
    """

    source: str = "z1"
    resize: ResizeRule = "uint8-antialias"
    norm_rule: NormRule = "openpi"
    norm_eps: float = 1e-6
    relative_action_dims: tuple[int, ...] = ()
    num_inference_steps: int | None = None
    camera_rename: tuple[tuple[str, str], ...] = ()
    source_rope: RopeForm = "openpi"

    def __post_init__(self) -> None:
        if self.resize not in ("uint8-antialias", "float-bilinear"):
            raise ValueError(
                f"conventions.resize must be uint8-antialias or float-bilinear, got {self.resize!r}"
            )
        if self.norm_rule not in ("openpi", "lerobot"):
            raise ValueError(f"conventions.norm_rule must be openpi or lerobot, got {self.norm_rule!r}")
        if self.source_rope not in ("openpi", "transformers"):
            raise ValueError(
                f"conventions.source_rope must be openpi or transformers, got {self.source_rope!r}"
            )
        if not self.norm_eps >= 0:
            raise ValueError(f"conventions.norm_eps must be >= 0, got {self.norm_eps!r}")
        if any(d < 0 for d in self.relative_action_dims) or len(set(self.relative_action_dims)) != len(
            self.relative_action_dims
        ):
            raise ValueError(
                "conventions.relative_action_dims must be distinct dims >= 0, got "
                f"{self.relative_action_dims}"
            )
        if len({a for a, _ in self.camera_rename}) != len(self.camera_rename):
            raise ValueError(f"conventions.camera_rename renames a camera twice: {self.camera_rename}")

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "resize": self.resize,
            "norm_rule": self.norm_rule,
            "norm_eps": self.norm_eps,
            "relative_action_dims": list(self.relative_action_dims),
            "num_inference_steps": self.num_inference_steps,
            "camera_rename": [list(p) for p in self.camera_rename],
            "source_rope": self.source_rope,
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> Conventions:
        """Inverse of `to_json`; missing fields take the (openpi) defaults, unknown ones are an error."""
        known = {f.name for f in fields(Conventions)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"conventions: unknown field(s) {unknown}; known: {sorted(known)}")
        kw = dict(d)
        if "relative_action_dims" in kw:
            kw["relative_action_dims"] = tuple(int(i) for i in kw["relative_action_dims"])
        if "camera_rename" in kw:
            kw["camera_rename"] = tuple((str(a), str(b)) for a, b in kw["camera_rename"])
        if "norm_eps" in kw:
            kw["norm_eps"] = float(kw["norm_eps"])
        return Conventions(**kw)


@dataclass(frozen=True)
class Normalization:
    """How the policy sees state and actions. "quantile" maps [q01, q99] to [-1, 1] (pi0.5 default);
    "meanstd" standardizes. The inverse is applied to actions before they reach the env.

    `conventions` says where the epsilon goes and which action dims are relative to the state (see
    `Conventions`); it travels with the statistics, so every stage that normalizes applies the same rules.
    """

    state: FeatureStats
    action: FeatureStats
    mode: str = "quantile"  # "quantile" | "meanstd"
    conventions: Conventions = field(default_factory=Conventions)

    def _fwd(self, x: np.ndarray, st: FeatureStats) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        eps = self.conventions.norm_eps
        if self.conventions.norm_rule == "openpi":
            if self.mode == "quantile":
                return (x - st.q01) / (st.q99 - st.q01 + eps) * 2.0 - 1.0
            return (x - st.mean) / (st.std + eps)
        if self.mode == "quantile":
            return 2.0 * (x - st.q01) / _nonzero(st.q99 - st.q01, eps) - 1.0
        return (x - st.mean) / (st.std + eps)

    def _inv(self, y: np.ndarray, st: FeatureStats) -> np.ndarray:
        y = np.asarray(y, dtype=np.float32)
        eps = self.conventions.norm_eps
        if self.conventions.norm_rule == "openpi":
            if self.mode == "quantile":
                return (y + 1.0) / 2.0 * (st.q99 - st.q01 + eps) + st.q01
            return y * (st.std + eps) + st.mean
        if self.mode == "quantile":
            return (y + 1.0) * _nonzero(st.q99 - st.q01, eps) / 2.0 + st.q01
        return y * st.std + st.mean

    def _state_offset(self, like: np.ndarray, state: np.ndarray | None) -> np.ndarray:
        """(..., d) zeros except the relative dims, which hold the state (broadcast over a chunk's h)."""
        dims = list(self.conventions.relative_action_dims)
        if state is None:
            raise ValueError(
                f"actions are relative to the state on dims {dims} (conventions.relative_action_dims); "
                "pass the raw state the chunk starts from"
            )
        s = np.asarray(state, dtype=np.float32)
        d = like.shape[-1]
        use = [i for i in dims if i < d]
        if use and max(use) >= s.shape[-1]:
            raise ValueError(
                f"relative action dim {max(use)} needs a state of > {max(use)} dims, got {s.shape}"
            )
        off = np.zeros((*s.shape[:-1], d), dtype=np.float32)  # (..., d)
        off[..., use] = s[..., use]
        return off[..., None, :] if like.ndim > s.ndim else off  # (..., 1, d) against a chunk (..., h, d)

    def normalize_state(self, x: np.ndarray) -> np.ndarray:
        return self._fwd(x, self.state)

    def normalize_action(self, x: np.ndarray, state: np.ndarray | None = None) -> np.ndarray:
        """Env actions (..., d) or chunks (..., h, d) -> model space. With relative dims, `state` (..., s) is
        the raw state they are relative to (the chunk's first frame), subtracted before normalizing."""
        if self.conventions.relative_action_dims:
            x = np.asarray(x, dtype=np.float32)
            x = x - self._state_offset(x, state)
        return self._fwd(x, self.action)

    def unnormalize_action(self, y: np.ndarray, state: np.ndarray | None = None) -> np.ndarray:
        """Inverse of `normalize_action`: un-normalize, then add the raw `state` back on the relative dims."""
        a = self._inv(y, self.action)
        if self.conventions.relative_action_dims:
            a = a + self._state_offset(a, state)
        return a

    def to_json(self) -> dict:
        return {
            "mode": self.mode,
            "state": self.state.to_json(),
            "action": self.action.to_json(),
            "conventions": self.conventions.to_json(),
        }

    @staticmethod
    def from_json(d: dict) -> Normalization:
        """Files written before conventions were recorded get the openpi (z1) defaults."""
        if d.get("mode") not in ("quantile", "meanstd"):
            raise ValueError(f"normalization mode must be 'quantile' or 'meanstd', got {d.get('mode')!r}")
        return Normalization(
            FeatureStats.from_json(d["state"]),
            FeatureStats.from_json(d["action"]),
            d["mode"],
            Conventions.from_json(d.get("conventions") or {}),
        )


def _nonzero(r: np.ndarray, eps: float) -> np.ndarray:
    """r with its exact zeros replaced by eps (LeRobot's guard for a constant feature)."""
    r = np.asarray(r, dtype=np.float32)
    return np.where(r == 0, np.float32(eps), r)
