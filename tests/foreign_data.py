"""A LeRobot v3 dataset named the way datasets from elsewhere are (cameras `front` and `wrist_cam`, state
`observation.joints`), and a meta/stats.json rewritten the way LeRobot v3 aggregates quantiles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from z1.data.lerobot import LeRobotWriter
from z1.data.normalize import QUANTILE_KEYS

CAMERAS = ("front", "wrist_cam")
STATE_KEY = "observation.joints"
MAPPING = "front:scene,wrist_cam:wrist"


def write_foreign_dataset(root: Path, episodes: int = 4, length: int = 12, seed: int = 0) -> Path:
    """4-dim joints/actions, two 64x64 cameras. Each episode's actions sit around its own goal, so the
    per-episode quantiles are narrow and their average is far from the dataset's quantiles."""
    rng = np.random.default_rng(seed)
    image = {"dtype": "image", "shape": [64, 64, 3], "names": ["height", "width", "channels"]}
    feats = {
        STATE_KEY: {"dtype": "float32", "shape": [4], "names": ["j0", "j1", "j2", "g"]},
        "action": {"dtype": "float32", "shape": [4], "names": ["d0", "d1", "d2", "dg"]},
        **{f"observation.images.{c}": dict(image) for c in CAMERAS},
    }
    with LeRobotWriter(root, fps=10, features=feats, robot_type="elsewhere") as w:
        for e in range(episodes):
            t = np.linspace(0, 1, length, dtype=np.float32)[:, None]
            goal = rng.uniform(-1, 1, size=(1, 4)).astype(np.float32) * [1, 2, 5, 10]
            frames = {
                STATE_KEY: (t * goal).astype(np.float32),  # (e, 4)
                "action": (goal + 0.05 * rng.standard_normal((length, 4))).astype(np.float32),  # (e, 4)
            }
            for c, cam in enumerate(CAMERAS):
                img = np.zeros((length, 64, 64, 3), np.uint8)
                img[..., c] = np.uint8(127 + 12 * np.clip(goal[0, c], -10, 10))
                img[:, :, :, 2] = (255 * t[:, :, None]).astype(np.uint8)
                frames[f"observation.images.{cam}"] = img
            w.add_episode(frames, task=f"reach goal {e % 2}")
    return root


def lerobot_style_stats(root: Path) -> dict:
    """Rewrite meta/stats.json's quantiles the way LeRobot v3 aggregates episodes (count-weighted averages
    of per-episode quantiles); returns the new stats.json content."""
    eps = pq.read_table(root / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pylist()
    path = root / "meta" / "stats.json"
    stats = json.loads(path.read_text())
    counts = np.asarray([e["length"] for e in eps], np.float64)
    for key, st in stats.items():
        for q in QUANTILE_KEYS:
            per = np.stack([np.asarray(e[f"stats/{key}/{q}"], np.float64) for e in eps])  # (E, ...)
            w = counts.reshape(-1, *([1] * (per.ndim - 1)))
            st[q] = ((per * w).sum(0) / counts.sum()).tolist()
    path.write_text(json.dumps(stats, indent=4))
    return stats
