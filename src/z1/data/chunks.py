"""Training samples for flow-matching SFT: one sample per dataset frame (docs/model.md#datasets).

Sample i (global frame row r = i, inside episode [s, e)):
    images        (n, y, x, 3) uint8   the cameras at frame r, in the order asked for (float32 in [0, 1]
                                       when the checkpoint resizes floats, see below)
    state         (s,) float32         normalized state at frame r
    instruction   str                  the episode's task string
    actions       (h, a) float32       normalized actions r .. r+h-1, zero beyond the episode end and beyond d
    action_mask   (h, a) float32       1 on real dims (< d) of real rows (< e), else 0

The normalization's `Conventions` decide what the model trained on where the checkpoint comes from:
actions on `relative_action_dims` become offsets from the raw state at frame r before they are normalized
(LeRobot's relative actions), and with `resize == "float-bilinear"` (LeRobot) the images leave as float
[0, 1], which `z1.models.transforms.images_to_model` resizes without antialiasing.

Images are decoded once into one uint8 array when they fit in `preload_max_bytes` (a few 10k frames at 64x64
take a few hundred MB); otherwise each batch decodes its frames from the dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from z1.data.errors import DatasetError
from z1.data.lerobot_checks import check_compatible
from z1.data.lerobot_read import Dataset
from z1.types import Normalization


class ChunkDataset(torch.utils.data.Dataset):
    """A torch Dataset over every frame of `ds`; see the module docstring for what a sample holds."""

    def __init__(
        self,
        ds: Dataset,
        horizon: int,
        action_dim_pad: int,
        normalization: Normalization,
        cameras: Sequence[str],
        preload_max_bytes: int = 2 * 1024**3,
    ) -> None:
        if horizon < 1:
            raise DatasetError(f"ChunkDataset: horizon must be >= 1, got {horizon}")
        if ds.action_dim > action_dim_pad:
            raise DatasetError(
                f"{ds.root / 'meta' / 'info.json'}: field 'features.action.shape' is [{ds.action_dim}], "
                f"more than the model's padded action dim {action_dim_pad}"
            )
        check_compatible(ds, cameras=tuple(cameras))
        self.ds = ds
        self.horizon = horizon
        self.action_dim_pad = action_dim_pad
        self.cameras = tuple(cameras)
        self.norm = normalization
        n, d = ds.num_frames, ds.action_dim
        self.state = normalization.normalize_state(ds.state).astype(np.float32)  # (N, s)
        self._raw_state = np.asarray(ds.state, np.float32)  # (N, s): relative actions are offsets from it
        raw = np.zeros((n + horizon, d), np.float32)  # (N + h, d): zero rows past the data
        raw[:n] = ds.action
        self._raw_act = raw
        self._float_images = normalization.conventions.resize == "float-bilinear"
        ranges = np.asarray([ds.episode_range(i) for i in range(ds.num_episodes)], np.int64)  # (E, 2)
        self.episode_end = ranges[ds.frame_episode, 1]  # (N,) exclusive end row of each frame's episode
        self._task_ids = ds.task_index.copy()  # (N,)
        self._offsets = np.arange(horizon)  # (h,)
        self._dim_mask = (np.arange(action_dim_pad) < d).astype(np.float32)  # (a,)
        y, x = ds.features[f"observation.images.{self.cameras[0]}"]["shape"][:2] if self.cameras else (0, 0)
        need = n * len(self.cameras) * y * x * 3
        self.images: np.ndarray | None = None  # (N, n, y, x, 3) uint8 when preloaded
        if self.cameras and need <= preload_max_bytes:
            self.images = np.empty((n, len(self.cameras), y, x, 3), np.uint8)
            step = 4096
            for k, cam in enumerate(self.cameras):
                for s in range(0, n, step):
                    self.images[s : s + step, k] = ds.frame_images(cam, np.arange(s, min(n, s + step)))

    def __len__(self) -> int:
        return self.ds.num_frames

    def _rows(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = idx[:, None] + self._offsets[None, :]  # (b, h)
        valid = rows < self.episode_end[idx][:, None]  # (b, h)
        return np.where(valid, rows, self.ds.num_frames), valid  # row N is all zeros

    def _images(self, idx: np.ndarray) -> np.ndarray:
        if not self.cameras:
            return np.zeros((len(idx), 0, 0, 0, 3), np.uint8)
        if self.images is not None:
            return self.images[idx]  # (b, n, y, x, 3)
        return np.stack([self.ds.frame_images(cam, idx) for cam in self.cameras], axis=1)

    def prompt_inputs(self, i: int) -> tuple[str, np.ndarray]:
        """(instruction, normalized state (s,)) of sample i: what the prompt tokenizer needs."""
        return self.ds.tasks[int(self._task_ids[i])], self.state[i]

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, Any]:
        """A batch as numpy arrays: images (b, n, y, x, 3) uint8 (float32 [0, 1] for checkpoints that resize
        floats), state (b, s), actions (b, h, a), action_mask (b, h, a), instruction (list of b strings),
        index (b,)."""
        idx = np.asarray(indices, np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"sample index out of range 0..{len(self) - 1}")
        rows, valid = self._rows(idx)
        d = self.ds.action_dim
        y = self.norm.normalize_action(self._raw_act[rows], self._raw_state[idx])  # (b, h, d)
        actions = np.zeros((len(idx), self.horizon, self.action_dim_pad), np.float32)  # (b, h, a)
        actions[:, :, :d] = np.where(valid[:, :, None], y, np.float32(0.0))
        mask = valid[:, :, None].astype(np.float32) * self._dim_mask[None, None, :]  # (b, h, a)
        images = self._images(idx)  # (b, n, y, x, 3) uint8
        if self._float_images:
            images = images.astype(np.float32) / np.float32(255.0)  # LeRobot's float [0, 1] images
        return {
            "images": images,
            "state": self.state[idx],
            "actions": actions,
            "action_mask": mask,
            "instruction": [self.ds.tasks[int(t)] for t in self._task_ids[idx]],
            "index": idx,
        }

    def __getitem__(self, i: int) -> dict[str, Any]:
        b = self.get_batch([int(i)])
        return {
            "images": torch.from_numpy(b["images"][0]),  # (n, y, x, 3) uint8 or float32
            "state": torch.from_numpy(b["state"][0]),  # (s,)
            "instruction": b["instruction"][0],
            "actions": torch.from_numpy(b["actions"][0]),  # (h, a)
            "action_mask": torch.from_numpy(b["action_mask"][0]),  # (h, a)
        }
