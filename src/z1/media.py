"""Filmstrips (PNG) and videos (mp4) of evaluation episodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def filmstrip(frames: list[np.ndarray], n: int = 8) -> np.ndarray:
    """n frames evenly spaced over the episode (first and last included), side by side: (y, n*x, 3)."""
    if not frames:
        raise ValueError("filmstrip needs at least one frame")
    idx = np.unique(np.linspace(0, len(frames) - 1, num=min(n, len(frames))).round().astype(int))
    sep = np.full((frames[0].shape[0], 2, 3), 255, dtype=np.uint8)
    parts: list[np.ndarray] = []
    for i in idx:
        parts.extend([frames[i], sep])
    return np.concatenate(parts[:-1], axis=1)


def save_filmstrips(frames: dict[str, list[list[np.ndarray]]], out_dir: Path, stage: str) -> list[Path]:
    """One PNG per task from its first recorded episode: `<out_dir>/<stage>_<task>.png`."""
    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for task, episodes in frames.items():
        if not episodes or not episodes[0]:
            continue
        img = filmstrip(episodes[0])
        scale = max(1, 96 // img.shape[0])
        if scale > 1:
            img = img.repeat(scale, axis=0).repeat(scale, axis=1)
        path = out_dir / f"{stage}_{task}.png"
        Image.fromarray(img).save(path)
        paths.append(path)
    return paths


def save_videos(
    frames: dict[str, list[list[np.ndarray]]], out_dir: Path, prefix: str, fps: int = 10
) -> list[Path]:
    """mp4 per recorded episode (needs the `report` extra: imageio + imageio-ffmpeg)."""
    try:
        import imageio.v2 as imageio
    except ImportError as e:  # pragma: no cover
        raise RuntimeError("videos need imageio: pip install 'z1[report]'") from e
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for task, episodes in frames.items():
        for i, ep in enumerate(episodes):
            path = out_dir / f"{prefix}_{task}_{i}.mp4"
            frames_up = [f.repeat(4, axis=0).repeat(4, axis=1) for f in ep]  # 64 px frames are tiny
            imageio.mimsave(path, frames_up, fps=fps, macro_block_size=1)
            paths.append(path)
    return paths
