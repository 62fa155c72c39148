"""Filmstrips (PNG) and videos (mp4, H.264 through PyAV) of evaluation episodes.

A run directory keeps, per evaluated stage and task, one filmstrip `filmstrips/<stage>_<task>.png` and
up to two short clips `videos/<stage>_<task>_{success,failure}.mp4` of the episodes that
`EvalConfig.record_examples` kept; the report embeds both. Videos need PyAV (`pip install 'z1[video]'`);
without it the filmstrips are still written and `save_examples` says why there are no videos.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

VIDEO_SCALE = 2  # 64 px renders, enlarged so yuv420p's half-resolution chroma does not smear objects
VIDEO_FPS = 8  # one frame per executed chunk: a 160-step episode at h_exec 4 plays in 5 s
VIDEO_CRF = 28  # x264 quality; a 40-frame clip of 128 x 256 px is a few tens of KB


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


def _save_filmstrip(frames: list[np.ndarray], path: Path) -> Path:
    from PIL import Image

    img = filmstrip(frames)
    scale = max(1, 96 // img.shape[0])
    if scale > 1:
        img = img.repeat(scale, axis=0).repeat(scale, axis=1)
    Image.fromarray(img).save(path)
    return path


def save_filmstrips(frames: dict[str, list[list[np.ndarray]]], out_dir: Path, stage: str) -> list[Path]:
    """One PNG per task from its first recorded episode: `<out_dir>/<stage>_<task>.png`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        _save_filmstrip(episodes[0], out_dir / f"{stage}_{task}.png")
        for task, episodes in frames.items()
        if episodes and episodes[0]
    ]


def video_unavailable() -> str | None:
    """Why mp4 files cannot be written here (PyAV or its H.264 encoder missing), or None."""
    try:
        import av
    except ImportError:
        return "PyAV is not installed: pip install -e '.[video]' in the z1 checkout"
    if "libx264" not in av.codecs_available:
        return f"PyAV {av.__version__} has no libx264 encoder (install the PyPI wheel of av)"
    return None


def write_mp4(frames: list[np.ndarray], path: Path, fps: int = VIDEO_FPS, scale: int = VIDEO_SCALE) -> Path:
    """H.264 mp4 (yuv420p, faststart: plays in every browser) of (y, x, 3) uint8 frames, written
    atomically. Odd sizes are padded by one edge pixel (4:2:0 needs even dimensions)."""
    reason = video_unavailable()
    if reason:
        raise RuntimeError(f"cannot write {path}: {reason}")
    if not frames:
        raise ValueError(f"{path}: a video needs at least one frame")
    import av

    imgs = [np.asarray(f, dtype=np.uint8).repeat(scale, axis=0).repeat(scale, axis=1) for f in frames]
    h, w = imgs[0].shape[:2]
    pad = ((0, h % 2), (0, w % 2), (0, 0))
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".mp4")
    os.close(fd)
    try:
        with av.open(tmp, mode="w", format="mp4", options={"movflags": "+faststart"}) as out:
            stream = out.add_stream("libx264", rate=fps)
            stream.width, stream.height = w + w % 2, h + h % 2
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(VIDEO_CRF), "preset": "medium"}
            for img in imgs:
                frame = av.VideoFrame.from_ndarray(np.pad(img, pad, mode="edge"), format="rgb24")
                out.mux(stream.encode(frame))
            out.mux(stream.encode(None))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_videos(
    frames: dict[str, list[list[np.ndarray]]], out_dir: Path, prefix: str, fps: int = VIDEO_FPS
) -> list[Path]:
    """mp4 per recorded episode, `<out_dir>/<prefix>_<task>_<i>.mp4` (needs PyAV: the `video` extra)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        write_mp4(ep, out_dir / f"{prefix}_{task}_{i}.mp4", fps)
        for task, episodes in frames.items()
        for i, ep in enumerate(episodes)
        if ep
    ]


@dataclass
class MediaWritten:
    """What `save_examples` wrote, and why videos were skipped (None when they were written)."""

    filmstrips: list[Path] = field(default_factory=list)
    videos: list[Path] = field(default_factory=list)
    videos_skipped: str | None = None


def save_examples(examples: dict, run_dir: Path, stage: str) -> MediaWritten:
    """Filmstrip of each task's first example (its success when it has one) and one mp4 per example.

    `examples` is `EvalResult.examples` (task -> `z1.evaluate.Example`s, success first). Clips from an
    earlier evaluation of this stage that this one has no example for are removed, so the report never
    shows a stale episode.
    """
    run_dir = Path(run_dir)
    done = MediaWritten()
    film_dir, video_dir = run_dir / "filmstrips", run_dir / "videos"
    film_dir.mkdir(parents=True, exist_ok=True)
    for task, eps in examples.items():
        if eps and eps[0].frames:
            done.filmstrips.append(_save_filmstrip(eps[0].frames, film_dir / f"{stage}_{task}.png"))
    done.videos_skipped = video_unavailable()
    if done.videos_skipped:
        done.videos_skipped = f"no videos of the {stage} evaluation: {done.videos_skipped}"
        return done
    video_dir.mkdir(parents=True, exist_ok=True)
    for task, eps in examples.items():
        for outcome in ("success", "failure"):
            path = video_dir / f"{stage}_{task}_{outcome}.mp4"
            ep = next((e for e in eps if e.success == (outcome == "success")), None)
            if ep is None or not ep.frames:
                path.unlink(missing_ok=True)
                continue
            done.videos.append(write_mp4(ep.frames, path))
    return done
