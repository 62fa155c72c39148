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
from typing import Any

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


def import_av() -> Any:
    """PyAV, or a DatasetError with the install command (it is the optional `video` extra)."""
    try:
        import av
    except ImportError as e:
        raise DatasetError(
            "camera frames stored as mp4 video need PyAV: pip install -e '.[video]' in the z1 checkout "
            "(or pip install av)"
        ) from e
    return av


SEEK_MARGIN_FRAMES = 4  # start decoding this many frame periods early (see decode_video_frames)


def _decode_span(path: Path, seek_to: float | None, t_lo: float, t_hi: float):
    """(times, rgb frames) decoded in [t_lo, t_hi] (plus the first frame past it), starting at the key frame
    at or before `seek_to` (None: at the start), and the time of the last frame decoded."""
    av = import_av()
    got_t: list[float] = []
    got_f: list[np.ndarray] = []
    last_t = None
    # one reformatter per read keeps its YUV -> RGB conversion context: 0.05 ms per 64x64 frame instead of
    # 0.42 ms for frame.to_ndarray(format="rgb24"), which builds a new one each time (same pixels)
    rgb = av.video.reformatter.VideoReformatter()
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            # one decoder thread: a read decodes a few frames, and starting a pool per read costs more
            # (1.4 ms vs 3 ms to open a 64x64 AV1 file and get one frame) on cores the trainer uses anyway
            stream.codec_context.thread_count = 1
            if seek_to is not None and stream.time_base is not None:
                container.seek(int(seek_to / stream.time_base), stream=stream, backward=True)
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else float(frame.pts * stream.time_base)
                last_t = t
                if t < t_lo:
                    continue
                got_t.append(t)
                got_f.append(rgb.reformat(frame, format="rgb24").to_ndarray())
                if t > t_hi:
                    break
    except DatasetError:
        raise
    except Exception as e:
        raise DatasetError(f"{path}: cannot decode video: {e}") from e
    return got_t, got_f, last_t


def decode_video_frames(path: Path, times: np.ndarray, fps: float) -> np.ndarray:
    """Frames of an mp4 at the given times in seconds: for each, the decoded frame nearest in time, which
    must be within half a frame period, so for a constant-rate stream it is frame round(t * fps).

    Decoding starts at the key frame at or before SEEK_MARGIN_FRAMES frame periods ahead of the first time:
    the margin covers streams whose frames are decoded before their display time (B-frames), where a seek
    by display time can land just after the frame asked for; if it still did, the file is decoded from the
    start. Deterministic: the decoder's output does not depend on where decoding started (every key frame
    starts afresh), so the same file and times always give the same pixels."""
    if not path.is_file():
        raise DatasetError(f"{path}: video file is missing")
    times = np.asarray(times, np.float64)
    tol = 0.5 / fps + 1e-4
    t_lo, t_hi = float(times.min()) - tol, float(times.max()) + tol
    seek_to = float(times.min()) - SEEK_MARGIN_FRAMES / fps
    got_t, got_f, last_t = _decode_span(path, seek_to if seek_to > 0 else None, t_lo, t_hi)
    if seek_to > 0 and (not got_t or got_t[0] > times.min() + tol):
        got_t, got_f, last_t = _decode_span(path, None, t_lo, t_hi)
    first = f"frame {round(times.min() * fps)} at t={times.min():.3f}s"
    if last_t is None:
        raise DatasetError(f"{path}: holds no decodable video frame ({first} was asked for)")
    if not got_t:
        raise DatasetError(
            f"{path}: the video ends at t={last_t:.3f}s (frame {round(last_t * fps)}), before {first}: the "
            "file is shorter than the episodes metadata says (truncated or replaced?)"
        )
    tt = np.asarray(got_t)
    j = np.abs(tt[None, :] - times[:, None]).argmin(1)
    err = np.abs(tt[j] - times)
    if err.max() > tol:
        k = int(err.argmax())
        raise DatasetError(
            f"{path}: no frame within {tol:.4f}s of t={times[k]:.4f}s (frame {round(times[k] * fps)}; "
            f"nearest {tt[j[k]]:.4f}s, last decoded {last_t:.4f}s)"
        )
    return np.stack([got_f[i] for i in j])
