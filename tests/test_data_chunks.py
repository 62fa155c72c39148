"""ChunkDataset: action chunks, masks and padding at episode ends; normalization; images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from z1.data.chunks import ChunkDataset
from z1.data.lerobot import LeRobotWriter, make_features, open_dataset
from z1.data.normalize import normalization_from_dataset

H, A = 4, 6


def _dataset(tmp_path: Path, lengths=(3, 6, 2)):
    rng = np.random.default_rng(0)
    feats = make_features(["s0", "s1"], ["a0", "a1", "a2"], ["scene", "wrist"], (8, 8))
    eps = []
    with LeRobotWriter(tmp_path / "ds", 10, feats, "toy") as w:
        for e, n in enumerate(lengths):
            ep = {
                "observation.state": rng.normal(size=(n, 2)).astype(np.float32),
                "action": rng.normal(size=(n, 3)).astype(np.float32),
                "observation.images.scene": rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
                "observation.images.wrist": rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
            }
            w.add_episode(ep, f"task {e}")
            eps.append(ep)
    return open_dataset(tmp_path / "ds"), eps


def _reference(eps, norm, i):
    """Brute force: find episode and frame of global sample i, build the chunk row by row."""
    e = 0
    while i >= len(eps[e]["action"]):
        i -= len(eps[e]["action"])
        e += 1
    ep, n = eps[e], len(eps[e]["action"])
    acts = np.zeros((H, A), np.float32)
    mask = np.zeros((H, A), np.float32)
    for h in range(H):
        if i + h < n:
            acts[h, :3] = norm.normalize_action(ep["action"][i + h])
            mask[h, :3] = 1
    return e, i, acts, mask


def test_chunks_exact_at_episode_ends(tmp_path: Path) -> None:
    ds, eps = _dataset(tmp_path)
    norm = normalization_from_dataset(ds, "quantile")
    cd = ChunkDataset(ds, H, A, norm, ("wrist", "scene"))
    assert len(cd) == 11 and cd.images is not None
    for i in range(len(cd)):
        e, f, acts, mask = _reference(eps, norm, i)
        s = cd[i]
        np.testing.assert_allclose(s["actions"].numpy(), acts, atol=1e-6)
        np.testing.assert_array_equal(s["action_mask"].numpy(), mask)
        np.testing.assert_allclose(
            s["state"].numpy(), norm.normalize_state(eps[e]["observation.state"][f]), atol=1e-6
        )
        assert s["instruction"] == f"task {e}"
        assert s["images"].dtype == torch.uint8 and tuple(s["images"].shape) == (2, 8, 8, 3)
        np.testing.assert_array_equal(s["images"][0].numpy(), eps[e]["observation.images.wrist"][f])
        np.testing.assert_array_equal(s["images"][1].numpy(), eps[e]["observation.images.scene"][f])
    # last frame of episode 1 (row 8): one real row, 3 padded rows
    m = cd[8]["action_mask"].numpy()
    assert m[:, :3].sum(1).tolist() == [3, 0, 0, 0] and m[:, 3:].sum() == 0
    # normalization really applied: actions in [-1, 1]-ish and not the raw values
    raw = eps[1]["action"][0]
    assert not np.allclose(cd[3]["actions"][0, :3].numpy(), raw)


def test_get_batch_matches_items_and_lazy_images(tmp_path: Path) -> None:
    ds, eps = _dataset(tmp_path)
    norm = normalization_from_dataset(ds, "meanstd")
    pre = ChunkDataset(ds, H, A, norm, ("scene",))
    lazy = ChunkDataset(ds, H, A, norm, ("scene",), preload_max_bytes=0)
    assert lazy.images is None
    idx = np.array([10, 0, 2, 3, 2])
    b1, b2 = pre.get_batch(idx), lazy.get_batch(idx)
    assert b1["images"].shape == (5, 1, 8, 8, 3) and b1["actions"].shape == (5, H, A)
    for k in ("images", "state", "actions", "action_mask"):
        np.testing.assert_array_equal(b1[k], b2[k])
    for j, i in enumerate(idx):
        np.testing.assert_array_equal(b1["actions"][j], pre[int(i)]["actions"].numpy())
    assert b1["instruction"] == ["task 2", "task 0", "task 0", "task 1", "task 0"]
    instr, state = pre.prompt_inputs(4)
    assert instr == "task 1"
    np.testing.assert_allclose(state, norm.normalize_state(eps[1]["observation.state"][1]), atol=1e-6)
