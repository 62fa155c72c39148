"""Frozen dataclass configs and the named preset registries.

Model geometry lives in `PolicyConfig` (presets `tiny` for tests, `laptop` the CPU default, `small`,
`pi05`); sampling in `SamplerConfig`.
Run-level presets (`mw-quick`, `mt10`, `robosuite`, `robocasa24-pi05`, `debug`) live in z1/presets.py (above
the training layer, whose configs they hold). Every registry lookup gives a did-you-mean error.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from typing import Literal

from z1.errors import Z1Error


class ConfigError(Z1Error, ValueError):
    """A bad preset name or an invalid combination of options."""


def lookup(registry: dict, name: str, what: str):
    if name in registry:
        return registry[name]
    close = difflib.get_close_matches(name, list(registry), n=3, cutoff=0.3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(f"unknown {what} {name!r}.{hint} Known: {', '.join(sorted(registry))}.")


@dataclass(frozen=True)
class VisionConfig:
    """SigLIP-style ViT. `width`, `depth`, `mlp_dim`, `num_heads` as in big_vision; `patch` in pixels.

    stem: how pixels become tokens. "patch" is SigLIP's single conv with kernel = stride = patch (the
    pi05 geometry, required to import real checkpoints). "conv" is a stack of log2(patch) 3x3 stride-2
    convolutions (GroupNorm + GELU after each, channels `stem_channels`, doubling) and a 1x1 projection
    to `width`: the same token grid, but early convolutions see edges and small objects that a 16-px
    linear patch blurs together (Xiao et al. 2021, "Early convolutions help transformers see better").
    """

    width: int = 1152
    depth: int = 27
    mlp_dim: int = 4304
    num_heads: int = 16
    patch: int = 14
    image_size: int = 224
    stem: Literal["patch", "conv"] = "patch"
    stem_channels: int = 32


@dataclass(frozen=True)
class GemmaConfig:
    """One Gemma stream (the VLM or the action expert). Attention geometry must match across streams."""

    width: int = 2048
    depth: int = 18
    mlp_dim: int = 16384
    num_heads: int = 8
    num_kv_heads: int = 1
    head_dim: int = 256


@dataclass(frozen=True)
class PolicyConfig:
    """pi0.5 geometry and I/O sizes. `pi05` is the exact 3.35B model."""

    name: str = "pi05"
    vision: VisionConfig = field(default_factory=VisionConfig)
    vlm: GemmaConfig = field(default_factory=GemmaConfig)
    expert: GemmaConfig = field(
        default_factory=lambda: GemmaConfig(
            width=1024, depth=18, mlp_dim=4096, num_heads=8, num_kv_heads=1, head_dim=256
        )
    )
    vocab_size: int = 257152
    cameras: tuple[str, ...] = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
    max_token_len: int = 200
    action_dim: int = 32  # padded model I/O dim
    action_horizon: int = 50
    min_period: float = 4e-3
    max_period: float = 4.0
    tokenizer: Literal["builtin", "sentencepiece"] = "sentencepiece"
    rope: Literal["openpi", "transformers"] = "openpi"
    """RoPE angle form: "openpi" = positions / timescale (JAX, the checkpoints' training form),
    "transformers" = positions * (1 / timescale) (Hugging Face Gemma, as LeRobot runs it)."""

    def with_(self, **kw) -> PolicyConfig:
        return replace(self, **kw)


# Chosen for 2 CPU cores: 2 cameras at 64x64, 16x16 patches -> 16 tokens per camera, a short
# word-level prompt, a narrow MoT. See bench/policy.py for the measured training rate.
_TINY = PolicyConfig(
    name="tiny",
    vision=VisionConfig(width=64, depth=2, mlp_dim=128, num_heads=2, patch=16, image_size=64),
    vlm=GemmaConfig(width=64, depth=3, mlp_dim=128, num_heads=2, num_kv_heads=1, head_dim=32),
    expert=GemmaConfig(width=32, depth=3, mlp_dim=64, num_heads=2, num_kv_heads=1, head_dim=32),
    vocab_size=1024,
    cameras=("scene", "wrist"),
    max_token_len=32,
    action_dim=8,
    action_horizon=8,
    tokenizer="builtin",
)


POLICY_PRESETS: dict[str, PolicyConfig] = {
    "pi05": PolicyConfig(),
    "tiny": _TINY,
    # The embedded default (demo, mw-quick): `tiny` with a convolutional stem (3 stride-2 3x3 convs, 16-32-64
    # channels, then a 1x1 to the 64-wide ViT) on the same 16-token-per-camera grid. Measured side by side
    # (bench/results/sft_mw-quick.md, 2000 SFT steps x 32, 50 episodes/task): 47.5% vs 28.0% for `tiny`
    # (+19.5 [+12.7, +26.3] paired); 8-px patches (64 tokens) gave only +4.5 at twice the training cost, and
    # augmentation (+0.5) or 50 instead of 20 demonstrations per task (-7.0) did not help. With a peak SFT lr
    # of 1e-3 instead of 3e-4 (the run presets' recipe, z1.presets) the same model reaches 68.0% (button 100,
    # drawer 96, push 42, pick-place 34; +40.0 [+32.8, +47.2] over `tiny`) in 4.6 minutes of SFT.
    "laptop": replace(_TINY, name="laptop", vision=replace(_TINY.vision, stem="conv", stem_channels=16)),
    "small": PolicyConfig(
        name="small",
        vision=VisionConfig(width=384, depth=6, mlp_dim=1536, num_heads=6, patch=16, image_size=128),
        vlm=GemmaConfig(width=512, depth=8, mlp_dim=2048, num_heads=8, num_kv_heads=1, head_dim=64),
        expert=GemmaConfig(width=256, depth=8, mlp_dim=1024, num_heads=8, num_kv_heads=1, head_dim=64),
        vocab_size=4096,
        cameras=("scene", "wrist"),
        max_token_len=48,
        action_dim=32,
        action_horizon=16,
        tokenizer="builtin",
    ),
}


def policy_preset(name: str) -> PolicyConfig:
    return lookup(POLICY_PRESETS, name, "policy preset")


@dataclass(frozen=True)
class FlowSDEConfig:
    """The Flow-SDE settings (docs/algorithm.md#flow-sde-step), declared once: the sampler (`SamplerConfig`)
    and GRPO's rollouts (`RolloutConfig`, the `--rollout.*` flags) both take them from here."""

    num_steps: int = 10
    """Denoise steps K: t runs from 1 (noise) to 0 (action) on a uniform grid of K steps (GRPO evaluates
    with the same K)."""
    noise_level: float = 0.5
    """a of the Flow-SDE: σ_t = a * sqrt(t / (1 - t))."""
    stochastic: Literal["single", "window", "all"] = "single"
    """Which denoise steps are stochastic (and scored) in SDE mode: single = one random step per chunk,
    window = `window` consecutive steps at a random start, all = every step; single and window never pick
    the last step (docs/algorithm.md#stochastic-steps)."""
    window: int = 2
    """Window length for stochastic = window."""


@dataclass(frozen=True)
class SamplerConfig(FlowSDEConfig):
    """The flow sampler of one call: the Flow-SDE settings plus which sampler and which entries count."""

    mode: Literal["ode", "sde"] = "ode"
    """ode: the deterministic Euler sampler (evaluation); sde: noise at the stochastic steps."""
    h_exec: int = 50
    """Noise is injected (and log-probs scored) only on the first h_exec rows of the chunk ..."""
    d_exec: int = 32
    """... and the first d_exec action dims: the entries the env executes."""
