"""Episodes and their camera frames, decoded only when indexed.

A dataset's images stay encoded in memory: `image` features (PNG/JPEG bytes in parquet) are decoded with
Pillow, `video` features (mp4) with PyAV (`pip install av`, imported only when a video is read), at the
rows a batch asks for. `ImageSequence` gives one camera of one episode the indexing of an (e, y, x, 3)
array on top of that.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from z1.data.errors import DatasetError


class ImageSequence:
    """A lazy (e, y, x, 3) uint8 sequence of one camera's frames; indexing decodes only what is asked for."""

    def __init__(self, decode: Callable[[np.ndarray], np.ndarray], length: int, frame_shape: tuple[int, ...]):
        self._decode = decode  # (k,) positions within the sequence -> (k, y, x, 3)
        self._len = length
        self.frame_shape = frame_shape

    def __len__(self) -> int:
        return self._len

    @property
    def shape(self) -> tuple[int, ...]:
        return (self._len, *self.frame_shape)

    def __getitem__(self, idx: int | slice | np.ndarray) -> np.ndarray:
        if isinstance(idx, slice):
            return self._decode(np.arange(self._len)[idx])
        arr = np.asarray(idx)
        if arr.ndim == 0:
            i = int(arr)
            if not -self._len <= i < self._len:
                raise IndexError(f"frame {i} out of range for {self._len} frames")
            return self._decode(np.asarray([i % self._len]))[0]
        if arr.size and (arr.min() < -self._len or arr.max() >= self._len):
            raise IndexError(f"frame indices out of range for {self._len} frames")
        return self._decode(arr % self._len)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self._decode(np.arange(self._len))
        return out if dtype is None else out.astype(dtype)


@dataclass(frozen=True)
class Episode:
    """One episode. images: camera name (without the `observation.images.` prefix) -> (e, y, x, 3) uint8."""

    index: int  # the episode_index stored in the dataset
    state: np.ndarray  # (e, s) float32
    action: np.ndarray  # (e, d) float32
    images: dict[str, ImageSequence]
    task: str

    @property
    def length(self) -> int:
        return int(self.action.shape[0])


def decode_image_bytes(b: bytes | None, path: str | None, root: Path, where: str) -> np.ndarray:
    """An `image` feature cell (PNG/JPEG bytes, or a path relative to the dataset root) as (y, x, 3) uint8."""
    try:
        if b is None:
            if not path:
                raise DatasetError(f"{where}: image has neither bytes nor path")
            return np.asarray(Image.open(root / path).convert("RGB"))
        return np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))
    except DatasetError:
        raise
    except Exception as e:
        raise DatasetError(f"{where}: cannot decode image: {e}") from e


def _import_av():
    try:
        import av
    except ImportError as e:
        raise DatasetError(
            "this dataset stores camera frames as mp4 video; decoding needs PyAV: `pip install av` "
            "(or install z1 with the `video` extra)"
        ) from e
    return av


def decode_video_frames(path: Path, times: np.ndarray, fps: float) -> np.ndarray:
    """Frames of an mp4 at the given times in seconds (nearest frame within half a frame period)."""
    av = _import_av()
    if not path.is_file():
        raise DatasetError(f"{path}: video file is missing")
    times = np.asarray(times, np.float64)
    tol = 0.5 / fps + 1e-4
    got_t: list[float] = []
    got_f: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if stream.time_base is not None and times.min() > 1.0:
                container.seek(
                    int(max(times.min() - 1.0, 0.0) / stream.time_base), stream=stream, backward=True
                )
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else float(frame.pts * stream.time_base)
                if t < times.min() - tol:
                    continue
                got_t.append(t)
                got_f.append(frame.to_ndarray(format="rgb24"))
                if t > times.max() + tol:
                    break
    except DatasetError:
        raise
    except Exception as e:
        raise DatasetError(f"{path}: cannot decode video: {e}") from e
    if not got_t:
        raise DatasetError(f"{path}: no frames near t={times.min():.3f}s")
    tt = np.asarray(got_t)
    j = np.abs(tt[None, :] - times[:, None]).argmin(1)
    err = np.abs(tt[j] - times)
    if err.max() > tol:
        k = int(err.argmax())
        raise DatasetError(
            f"{path}: no frame within {tol:.4f}s of t={times[k]:.4f}s (nearest {tt[j[k]]:.4f}s)"
        )
    return np.stack([got_f[i] for i in j])
