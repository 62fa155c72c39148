"""Observation -> model inputs, and model actions -> env actions.

See docs/model.md#images-and-cameras, #normalisation and #prompt-and-tokenizer.

Order (as openpi): normalize the state -> build the prompt from the normalized, unpadded state ->
tokenize. Images: uint8 (y, x, 3) -> resize-with-pad to the model's square size by the checkpoint's rule
(`Conventions.resize`: openpi's antialiased uint8 resize, or LeRobot's float resize without antialiasing)
-> float [-1, 1] (3, y, x), padding -1. Env cameras (renamed first by `Conventions.camera_rename`) map
onto the model's fixed camera slots; a slot with no camera gets an all -1 image and mask False (it still
goes through the vision tower). Actions go back through `Normalization.unnormalize_action`, which also
adds the state back on relative action dims.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from z1.config import PolicyConfig
from z1.models.pi05 import PolicyInputs
from z1.models.tokenizer import Tokenizer, tokenize_prompt
from z1.types import Conventions, Normalization, Observation, ResizeRule


def images_to_model(images: torch.Tensor, size: int, resize: ResizeRule | None = None) -> torch.Tensor:
    """(b, y, x, 3) uint8, or float32 in [0, 1] -> float32 (b, 3, size, size) in [-1, 1].

    An image of another size keeps its aspect ratio (`resize_with_pad`): scale by max(y, x) / size, then
    pad centered with -1 (the extra pixel on the bottom/right). `resize` (`Conventions.resize`) chooses the
    filter; None takes the input's own: uint8 -> "uint8-antialias", float -> "float-bilinear".
      "uint8-antialias" (openpi): resize the uint8 image (bilinear, antialiased, rounded; torch's
        channels-last uint8 kernel, ~7x faster than resizing floats), then x * 2/255 - 1.
      "float-bilinear" (LeRobot): x / 255 for uint8 input, bilinear resize WITHOUT antialiasing
        (align_corners=False), clamp to [0, 1], then x * 2 - 1.
    The two differ where the image has detail finer than the output grid: downscaling 2x without
    antialiasing samples 2 of every 4 pixels instead of averaging them.
    """
    if images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (b, y, x, 3), got {tuple(images.shape)} {images.dtype}")
    is_uint8 = images.dtype == torch.uint8
    if not is_uint8 and images.dtype != torch.float32:
        raise ValueError(f"images must be uint8 or float32 in [0, 1], got {images.dtype}")
    rule = resize if resize is not None else ("uint8-antialias" if is_uint8 else "float-bilinear")
    if rule not in ("uint8-antialias", "float-bilinear"):
        raise ValueError(f"resize must be 'uint8-antialias' or 'float-bilinear', got {rule!r}")
    if rule == "uint8-antialias" and not is_uint8:
        raise ValueError("resize 'uint8-antialias' needs uint8 images; float images resize 'float-bilinear'")
    u = images.permute(0, 3, 1, 2)  # (b, 3, y, x), channels-last strides
    h, w = u.shape[-2:]
    rh, rw = h, w
    if (h, w) != (size, size):
        ratio = max(h / size, w / size)
        rh, rw = int(h / ratio), int(w / ratio)
    if rule == "uint8-antialias":
        if (rh, rw) != (h, w):
            u = F.interpolate(u, size=(rh, rw), mode="bilinear", align_corners=False, antialias=True)
        x = u.to(torch.float32) * (2.0 / 255.0) - 1.0  # (b, 3, rh, rw)
    else:
        f = u.to(torch.float32) / 255.0 if is_uint8 else u  # (b, 3, y, x) in [0, 1]
        if (rh, rw) != (h, w):
            f = F.interpolate(f, size=(rh, rw), mode="bilinear", align_corners=False, antialias=False)
            f = f.clamp(0.0, 1.0)
        x = f * 2.0 - 1.0  # (b, 3, rh, rw)
    if (rh, rw) == (size, size):
        return x
    top, left = (size - rh) // 2, (size - rw) // 2
    return F.pad(x, (left, size - rw - left, top, size - rh - top), value=-1.0)


def resolve_camera_map(
    slots: Sequence[str], env_cameras: Sequence[str], camera_map: Mapping[str, str] | None
) -> dict[str, str]:
    """-> {model slot: env camera}. Explicit `camera_map` is {env camera: model slot}. Without one, slots
    named like an env camera take it; if no name matches, env cameras fill the slots in order."""
    if camera_map is not None:
        out: dict[str, str] = {}
        for env_cam, slot in camera_map.items():
            if slot not in slots:
                raise ValueError(
                    f"camera_map sends {env_cam!r} to unknown model slot {slot!r}; slots: {list(slots)}"
                )
            if slot in out:
                raise ValueError(f"camera_map sends both {out[slot]!r} and {env_cam!r} to slot {slot!r}")
            out[slot] = env_cam
        return out
    by_name = {s: s for s in slots if s in env_cameras}
    if by_name:
        return by_name
    if len(env_cameras) > len(slots):
        raise ValueError(
            f"{len(env_cameras)} env cameras {list(env_cameras)} but the model has {len(slots)} slots "
            f"{list(slots)}; pass camera_map={{env_camera: slot}} to choose"
        )
    return dict(zip(slots, env_cameras))


class ObservationEncoder:
    """Batches `Observation`s into `PolicyInputs`.

    norm: state normalization (quantile for pi0.5). With None the observation's state is assumed to be
        normalized already.
    camera_map: {env camera name: model camera slot}; None maps by equal names (after the conventions'
        camera renames), else in order.
    include_state: put the discretized state into the prompt (False = openpi's pi05_libero format).
    conventions: the checkpoint's resize rule and camera renames; default `norm.conventions` (z1's own
        openpi rules without a norm).
    """

    def __init__(
        self,
        config: PolicyConfig,
        norm: Normalization | None,
        tokenizer: Tokenizer,
        camera_map: Mapping[str, str] | None = None,
        *,
        include_state: bool = True,
        device: torch.device | str = "cpu",
        conventions: Conventions | None = None,
    ) -> None:
        self.config = config
        self.norm = norm
        self.tokenizer = tokenizer
        self.camera_map = dict(camera_map) if camera_map is not None else None
        self.include_state = include_state
        self.device = torch.device(device)
        if conventions is None:
            conventions = norm.conventions if norm is not None else Conventions()
        self.conventions = conventions
        if tokenizer.vocab_size > config.vocab_size:
            raise ValueError(
                f"tokenizer has {tokenizer.vocab_size} ids but the policy {config.name!r} only "
                f"{config.vocab_size} embeddings"
            )
        self._slot_cache: dict[tuple[str, ...], dict[str, str]] = {}

    def _slots_for(self, env_cameras: tuple[str, ...]) -> dict[str, str]:
        """{model slot: env camera} for an observation with these cameras."""
        m = self._slot_cache.get(env_cameras)
        if m is None:
            if self.camera_map is None and self.conventions.camera_rename:
                rename = dict(self.conventions.camera_rename)
                renamed = tuple(rename.get(c, c) for c in env_cameras)
                if len(set(renamed)) != len(renamed):
                    raise ValueError(
                        f"conventions.camera_rename {rename} maps two of the env cameras {list(env_cameras)} "
                        "to the same name; pass camera_map={env_camera: slot} to choose"
                    )
                original = dict(zip(renamed, env_cameras))
                by_renamed = resolve_camera_map(self.config.cameras, renamed, None)
                m = {slot: original[name] for slot, name in by_renamed.items()}
            else:
                m = resolve_camera_map(self.config.cameras, env_cameras, self.camera_map)
            missing = [c for c in m.values() if c not in env_cameras]
            if missing:
                raise ValueError(
                    f"camera_map names cameras {missing} that the observation lacks: {list(env_cameras)}"
                )
            self._slot_cache[env_cameras] = m
        return m

    def prompt_state(self, obs: Observation) -> np.ndarray | None:
        if not self.include_state:
            return None
        s = np.asarray(obs.state, dtype=np.float32)
        return self.norm.normalize_state(s) if self.norm is not None else s

    def encode(self, obs_list: Sequence[Observation]) -> PolicyInputs:
        if not obs_list:
            raise ValueError("encode needs at least one observation")
        cfg = self.config
        b, n, size = len(obs_list), len(cfg.cameras), cfg.vision.image_size
        images = torch.full((b, n, 3, size, size), -1.0, dtype=torch.float32)  # (b, n, 3, y, x)
        image_mask = torch.zeros((b, n), dtype=torch.bool)
        # group rows with the same camera set, then one resize call per (slot, source size)
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, ob in enumerate(obs_list):
            groups.setdefault(tuple(ob.images), []).append(i)
        for cams, rows in groups.items():
            slot_map = self._slots_for(cams)
            for j, slot in enumerate(cfg.cameras):
                cam = slot_map.get(slot)
                if cam is None:
                    continue
                by_shape: dict[tuple[int, ...], list[int]] = {}
                for r in rows:
                    by_shape.setdefault(np.shape(obs_list[r].images[cam]), []).append(r)
                for shape, rs in by_shape.items():
                    arr = np.stack([np.asarray(obs_list[r].images[cam]) for r in rs])  # (k, y, x, 3)
                    if arr.dtype != np.uint8:
                        raise ValueError(
                            f"camera {cam!r} images must be uint8 (y, x, 3), got {arr.dtype} {shape}"
                        )
                    idx = torch.as_tensor(rs)
                    images[idx, j] = images_to_model(torch.from_numpy(arr), size, self.conventions.resize)
                    image_mask[idx, j] = True
        tokens = np.zeros((b, cfg.max_token_len), dtype=np.int64)
        token_mask = np.zeros((b, cfg.max_token_len), dtype=bool)
        for i, ob in enumerate(obs_list):
            tokens[i], token_mask[i] = tokenize_prompt(
                self.tokenizer, ob.instruction, self.prompt_state(ob), cfg.max_token_len
            )
        dev = self.device
        return PolicyInputs(
            images=images.to(dev),
            image_mask=image_mask.to(dev),
            tokens=torch.from_numpy(tokens).to(dev),
            token_mask=torch.from_numpy(token_mask).to(dev),
        )


def pad_actions(actions: np.ndarray | torch.Tensor, action_dim: int) -> np.ndarray | torch.Tensor:
    """(..., d) -> (..., a) zero-padded (numpy or torch, same type out)."""
    d = actions.shape[-1]
    if d > action_dim:
        raise ValueError(f"actions have {d} dims, more than the model's action_dim={action_dim}")
    if d == action_dim:
        return actions
    if isinstance(actions, torch.Tensor):
        return F.pad(actions, (0, action_dim - d))
    pad = [(0, 0)] * (actions.ndim - 1) + [(0, action_dim - d)]
    return np.pad(actions, pad)


def action_dim_mask(d: int, a: int) -> torch.Tensor:
    """(a,) bool, True on the first d (real) dims."""
    if not 0 < d <= a:
        raise ValueError(f"real action dim d={d} must be in 1..{a}")
    return torch.arange(a) < d


def actions_to_env(
    chunk: np.ndarray,
    norm: Normalization | None,
    d: int,
    low: np.ndarray | None,
    high: np.ndarray | None,
    state: np.ndarray | None = None,
) -> np.ndarray:
    """Normalized model actions (..., h, a) -> env actions (..., h, d): slice the real dims, un-normalize
    (adding the raw `state` (..., s) back on relative action dims, `Conventions.relative_action_dims`),
    clip to [low, high] (either may be None)."""
    a = np.asarray(chunk, dtype=np.float32)[..., :d]
    if norm is not None:
        a = norm.unnormalize_action(a, state)
    if low is not None or high is not None:
        a = np.clip(a, low, high)
    return a.astype(np.float32, copy=False)
