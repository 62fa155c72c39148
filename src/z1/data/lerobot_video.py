"""mp4 camera streams for the LeRobotDataset v3.0 writer: one encoder per camera, many episodes per file.

Layout (LeRobot v3): `videos/<feature key>/chunk-CCC/file-FFF.mp4`. The episodes of one file follow each
other in a single constant-rate stream (frame k of the file has pts k / fps), so episode e's frames sit at
`from_timestamp = (frames of the file's earlier episodes) / fps` up to `to_timestamp = from_timestamp +
length / fps`, the two values the episodes metadata stores per camera. A new file starts at an episode
boundary once the current one holds `video_files_size_in_mb`; because an encoder holds back up to a few
dozen frames (SVT-AV1's lookahead is 28 frames at 64x64), a file can pass the limit by that much.

Codecs (`video_codec`), all with yuv420p pixels and a key frame every 2 frames (LeRobot's `g=2`, so a
randomly sampled frame costs at most one extra decoded frame):
    libsvtav1  AV1 at crf 30: LeRobot v3's default, the smallest files; the default here because this
               PyAV wheel ships SVT-AV1 (encode ~1 ms per 64x64 frame on one core, decode with dav1d).
    h264       libx264 at crf 23 (x264's default quality): plays everywhere, encodes faster, ~1.3x the bytes.
    mpeg4      MPEG-4 part 2 at qscale 2: the fallback of FFmpeg builds without those two libraries.
LeRobot's third codec, hevc, is left out: this PyAV wheel's libx265 corrupts the heap (the process aborts)
when a second encoder is opened in the same process, i.e. at the second dataset written.
All three are lossy: decoded pixels differ from the written ones (and chroma is stored at half
resolution), so a video dataset trains on slightly different images than the PNG dataset of the same
frames: 4 gray levels on average on 64x64 Meta-World frames with AV1, much more on thin edges
(lerobot_write.py has the measurements; tests/test_data_lerobot_video.py states the bounds per codec on
smooth frames). Reading (lerobot_frames.decode_video_frames) is exact in which frame comes back (frame
index = round(timestamp * fps)) and deterministic: the same file and timestamps give the same pixels.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from z1.data.errors import DatasetError
from z1.data.lerobot_frames import import_av

VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
PIX_FMT = "yuv420p"
KEYFRAME_INTERVAL = 2
CODEC_OPTIONS: dict[str, dict[str, str]] = {
    "libsvtav1": {"crf": "30"},
    "h264": {"crf": "23"},
    "mpeg4": {"flags": "+qscale", "global_quality": str(2 * 118)},  # qscale 2 (FF_QP2LAMBDA = 118)
}
DEFAULT_VIDEO_CODEC = "libsvtav1"


def check_video_codec(codec: str, shape: tuple[int, ...], key: str) -> None:
    """DatasetError unless `codec` is one of CODEC_OPTIONS, this PyAV can encode it, and frames of `shape`
    (y, x, 3) fit yuv420p (even sizes: chroma is stored at half resolution)."""
    if codec not in CODEC_OPTIONS:
        raise DatasetError(
            f"LeRobotWriter: video_codec {codec!r} is not supported; use one of {list(CODEC_OPTIONS)}"
        )
    av = import_av()
    try:
        av.codec.Codec(codec, "w")
    except Exception:
        usable = [c for c in CODEC_OPTIONS if _can_encode(av, c)]
        raise DatasetError(
            f"LeRobotWriter: PyAV {av.__version__} here cannot encode {codec!r}; it can encode {usable}"
        ) from None
    if shape[0] % 2 or shape[1] % 2:
        raise DatasetError(
            f"LeRobotWriter: video feature {key!r} has frames of {shape[0]}x{shape[1]}; {PIX_FMT} video "
            "needs an even height and width (store this camera as PNG with dtype 'image', or resize it)"
        )


def _can_encode(av: Any, codec: str) -> bool:
    try:
        av.codec.Codec(codec, "w")
    except Exception:
        return False
    return True


class VideoStreamWriter:
    """The mp4 files of one camera (feature `key`) under the writer's temporary root; see module docstring."""

    def __init__(
        self, root: Path, key: str, fps: int, shape: tuple[int, ...], codec: str, limit_mb: float, chunks: int
    ) -> None:
        self.av = import_av()
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints a 20-line banner per encoder otherwise
        self.root, self.key, self.fps, self.codec = root, key, fps, codec
        self.height, self.width = int(shape[0]), int(shape[1])
        self.limit = limit_mb * 1024 * 1024
        self.chunks = chunks
        self.paths: list[Path] = []  # every file written, in order
        self._file_index = -1
        self._container: Any = None
        self._stream: Any = None
        self._frames = 0  # frames in the current file
        self._bytes = 0  # bytes muxed into the current file

    def add(self, frames: np.ndarray) -> dict[str, Any]:
        """Encode one episode's (e, y, x, 3) uint8 frames; returns its `videos/<key>/...` metadata columns."""
        if self._container is None or self._bytes >= self.limit:
            self._open_next()
        start = self._frames
        try:
            for img in frames:
                frame = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
                frame.pts = self._frames
                self._mux(self._stream.encode(frame))
                self._frames += 1
        except Exception as e:
            raise DatasetError(f"{self.paths[-1]}: cannot encode video frames ({self.codec}): {e}") from e
        chunk, file = divmod(self._file_index, self.chunks)
        return {
            f"videos/{self.key}/chunk_index": chunk,
            f"videos/{self.key}/file_index": file,
            f"videos/{self.key}/from_timestamp": start / self.fps,
            f"videos/{self.key}/to_timestamp": self._frames / self.fps,
        }

    def _mux(self, packets: list[Any]) -> None:
        for p in packets:
            self._container.mux(p)
            self._bytes += p.size

    def _open_next(self) -> None:
        self.close()
        self._file_index += 1
        chunk, file = divmod(self._file_index, self.chunks)
        path = self.root / VIDEO_PATH.format(video_key=self.key, chunk_index=chunk, file_index=file)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.paths.append(path)
        options = {"g": str(KEYFRAME_INTERVAL), **CODEC_OPTIONS[self.codec]}
        self._container = self.av.open(str(path), "w")
        self._stream = self._container.add_stream(self.codec, rate=self.fps, options=options)
        self._stream.width, self._stream.height, self._stream.pix_fmt = self.width, self.height, PIX_FMT
        self._frames = self._bytes = 0

    def close(self) -> None:
        """Flush the encoder and finish the current file (its index is written here)."""
        if self._container is None:
            return
        container, self._container = self._container, None
        try:
            for p in self._stream.encode():
                container.mux(p)
        finally:
            container.close()

    def abort(self) -> None:
        if self._container is not None:
            container, self._container = self._container, None
            with contextlib.suppress(Exception):  # the files are about to be removed; the first error counts
                container.close()


def video_feature_info(path: Path) -> dict[str, Any]:
    """The `info` of a video feature in info.json, read back from its first mp4 as LeRobot v3 does:
    video.height/width/codec (the codec's canonical name, e.g. "av1")/pix_fmt/is_depth_map/fps/channels and
    has_audio."""
    av = import_av()
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return {
            "video.height": int(s.height),
            "video.width": int(s.width),
            "video.codec": str(s.codec.canonical_name),
            "video.pix_fmt": str(s.pix_fmt),
            "video.is_depth_map": False,
            "video.fps": int(s.base_rate),
            "video.channels": 3,
            "has_audio": len(c.streams.audio) > 0,
        }
