"""LeRobotDataset v3.0 writer: many episodes per parquet file, images as PNG bytes in parquet or as mp4.

See docs/model.md#datasets.

Layout written under `root` (what LeRobot v3 writes and its reader needs):
    meta/info.json                          codebase_version "v3.0", integer fps, features (yours plus
                                            timestamp, frame_index, episode_index, index, task_index),
                                            totals, chunk settings, splits, path templates
    meta/tasks.parquet                      columns task (the pandas index) and task_index
    meta/episodes/chunk-000/file-000.parquet
                                            one row per episode: episode_index, tasks, length, data file,
                                            dataset_from/to_index, meta/episodes file, and
                                            stats/<feature>/<stat> for every feature
    meta/stats.json                         dataset statistics of every feature
    data/chunk-CCC/file-FFF.parquet         frames; a new file starts when the current one passes
                                            `data_files_size_in_mb`; an episode never spans two files
    videos/<key>/chunk-CCC/file-FFF.mp4     cameras of dtype "video" only (see lerobot_video.py): episodes
                                            back to back in one stream per file, each episode's place in
                                            the episodes metadata (videos/<key>/chunk_index, file_index,
                                            from_timestamp, to_timestamp), the stream's codec, pix_fmt, fps,
                                            size in info.json `features.<key>.info`; no parquet column

Statistics (meta/stats.json and each episode's stats/... columns) hold, per feature, min, max, mean, std,
q01, q10, q50, q90, q99 and count, in LeRobot's layout: (d,) lists for vector features, (1,) for the index
columns, (3, 1, 1) per-channel values in [0, 1] (uint8 / 255) for images; count is the number of frames.
Unlike LeRobot (whose dataset quantiles are averages of per-episode quantiles, and whose image statistics
come from a sample of frames), every value here is exact: vectors through `normalize.compute_full_stats`
per episode and `StatsAccumulator` over the dataset (exact up to 2M frames, see normalize.py), images
through 256-bin pixel histograms.

Columns: a vector feature of shape [d] is a fixed-size list<dtype>[d], one of shape [1] a plain scalar
column (as LeRobot stores shape-(1,) features). Images use LeRobot's `image` dtype: a struct {bytes: binary
(PNG), path: null}. Size at 64x64, measured on 324 Meta-World frames (button-press-topdown + drawer-open,
PNG compress level 6): 5.0 KB per frame for the "corner" scene camera and 4.1 KB for "gripperPOV", so
5.0 + 4.1 MB per 1,000 frames for two cameras and 9.3 MB per 1,000 frames for the whole data file (state
and action are negligible). Uniform random noise (the worst case) is 12.4 KB per frame. Encoding costs
0.85 ms per 64x64 frame (level 1: 0.5 ms, +4% bytes; level 9: 5 ms, -0.3%).

Video instead (`make_features(..., video=True)`, `z1 collect --video`: cameras of dtype "video", as LeRobot
stores real datasets): AV1 by default (`video_codec`; lerobot_video.py says which codecs and why). Measured
on the same 324 frames (same seeds, 80 fps): 0.56 KB per frame for "scene" and 0.34 KB for "wrist", i.e.
0.11x and 0.08x the PNG bytes (0.43 MB for the whole dataset vs 3.10 MB). The price is lossy pixels: mean
absolute error 4.0 gray levels (the worst frame 6.3), 99th percentile 29 (scene) and 45 (wrist), up to
230 on thin high-contrast edges, where 4:2:0 chroma at 64x64 smears colour. Reading one random frame costs
~1.5-5 ms (open, seek, decode a few frames) vs ~0.5 ms for a PNG. The statistics are computed from the
frames as given, before encoding.

Atomic: everything goes into `<root>.tmp-<random suffix>` next to `root`, files are fsynced, and the
directory is renamed to `root` only by a successful `close()` (the context manager's exit). An exception
inside the `with` block, or a failing `close()`, removes the temporary directory, so nothing is ever left
at `root`. Permissions are the usual ones for the process umask (0o755 directories and 0o644 files under
umask 022).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from z1.data.errors import DatasetError
from z1.data.lerobot_files import fsync_tree, make_temp_dir
from z1.data.lerobot_video import (
    DEFAULT_VIDEO_CODEC,
    VIDEO_PATH,
    VideoStreamWriter,
    check_video_codec,
    video_feature_info,
)
from z1.data.normalize import FullStats, PixelStatsAccumulator, StatsAccumulator, compute_full_stats

CODEBASE_VERSION = "v3.0"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
STATE, ACTION, IMAGE_PREFIX = "observation.state", "action", "observation.images."
INDEX_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
VECTOR_DTYPES = {"float32": pa.float32(), "float64": pa.float64(), "int64": pa.int64()}
_IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
_IMAGE_STATS_SHAPE = (3, 1, 1)


def make_features(
    state_names: Sequence[str],
    action_names: Sequence[str],
    cameras: Sequence[str],
    image_size: tuple[int, int],
    video: bool = False,
) -> dict[str, dict[str, Any]]:
    """The `features` dict for a robot with these state/action dims and cameras (images (y, x, 3)), stored
    as PNG (dtype "image") or, with `video`, as mp4 (dtype "video")."""
    feats: dict[str, dict[str, Any]] = {
        STATE: {"dtype": "float32", "shape": [len(state_names)], "names": list(state_names)},
        ACTION: {"dtype": "float32", "shape": [len(action_names)], "names": list(action_names)},
    }
    for cam in cameras:
        feats[IMAGE_PREFIX + cam] = {
            "dtype": "video" if video else "image",
            "shape": [int(image_size[0]), int(image_size[1]), 3],
            "names": ["height", "width", "channels"],
        }
    return feats


def encode_png(img: np.ndarray, compress_level: int = 6) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def _mb(size: float) -> float:
    return int(size) if float(size).is_integer() else size


def _integral_fps(fps: float) -> int:
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.integer, np.floating)):
        raise DatasetError(f"LeRobotWriter: fps must be a number, got {fps!r}")
    if not np.isfinite(fps) or fps <= 0 or float(fps) != int(fps):
        raise DatasetError(
            f"LeRobotWriter: fps must be a positive whole number (LeRobot stores an int), got {fps}"
        )
    return int(fps)


def _stats_json(st: FullStats, kind: str) -> dict[str, Any]:
    """LeRobot's layout for one feature's statistics (see the module docstring)."""
    if kind == "image":
        return st.scaled(255.0).to_json(shape=_IMAGE_STATS_SHAPE)
    return st.to_json(integer=kind == "int64")


class LeRobotWriter:
    """Write a LeRobotDataset v3.0 directory. Use as a context manager; see the module docstring.

    features: feature key -> {"dtype", "shape", "names"}: vectors have dtype float32 | float64 | int64 and
    shape [d]; cameras have dtype "image" (PNG in parquet) or "video" (mp4, encoded with `video_codec`;
    a new mp4 starts past `video_files_size_in_mb`) and shape [y, x, 3] (uint8 frames). z1's own datasets hold
    "observation.state", "action" and "observation.images.<cam>" (see `make_features`); any other keys are
    written as they are. The index columns (timestamp, frame_index, ...) are added by the writer.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        fps: float,
        features: Mapping[str, Mapping[str, Any]],
        robot_type: str,
        image_format: str = "png",
        data_files_size_in_mb: float = 100,
        chunks_size: int = 1000,
        png_compress_level: int = 6,
        video_codec: str = DEFAULT_VIDEO_CODEC,
        video_files_size_in_mb: float = 200,
    ) -> None:
        self.root = Path(root)
        if image_format != "png":
            raise DatasetError(f"LeRobotWriter: image_format {image_format!r} is not supported; use 'png'")
        if self.root.exists():
            raise DatasetError(f"{self.root}: already exists; delete it or choose another output directory")
        self.fps = _integral_fps(fps)
        if not features:
            raise DatasetError("LeRobotWriter: features is empty")
        self.robot_type = robot_type
        self.features = {k: dict(v) for k, v in features.items()}
        for k, v in self.features.items():
            self._check_feature(k, v)
            v["shape"] = [int(s) for s in v["shape"]]
        self.image_keys = [k for k, v in self.features.items() if v["dtype"] == "image"]
        self.video_keys = [k for k, v in self.features.items() if v["dtype"] == "video"]
        self.vector_keys = [k for k in self.features if k not in (*self.image_keys, *self.video_keys)]
        for k in self.video_keys:
            check_video_codec(video_codec, tuple(self.features[k]["shape"]), k)
        self.video_codec = video_codec
        self.video_files_size_in_mb = video_files_size_in_mb
        self.data_files_size_in_mb = data_files_size_in_mb
        self.chunks_size = chunks_size
        self.png_compress_level = png_compress_level
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = make_temp_dir(self.root.parent, self.root.name + ".tmp-")
        self._tasks: dict[str, int] = {}
        self._episodes: list[dict[str, Any]] = []
        self._num_frames = 0
        self._file_index = 0
        self._file_bytes = 0
        self._pq: pq.ParquetWriter | None = None
        self._stats = {k: StatsAccumulator() for k in (*self.vector_keys, *INDEX_FEATURES)}
        self._pixels = {k: PixelStatsAccumulator() for k in (*self.image_keys, *self.video_keys)}
        self._videos = {
            k: VideoStreamWriter(
                self.tmp,
                k,
                self.fps,
                tuple(self.features[k]["shape"]),
                video_codec,
                video_files_size_in_mb,
                chunks_size,
            )
            for k in self.video_keys
        }
        self._closed = False
        self._schema = self._make_schema()

    @staticmethod
    def _check_feature(k: str, v: Mapping[str, Any]) -> None:
        shape = v.get("shape")
        if k in INDEX_FEATURES:
            raise DatasetError(f"LeRobotWriter: feature {k!r} is an index column the writer adds itself")
        if not isinstance(shape, (list, tuple)) or not all(isinstance(s, int) and s > 0 for s in shape):
            raise DatasetError(f"LeRobotWriter: feature {k!r} needs a shape of positive ints, got {shape!r}")
        if v.get("dtype") in ("image", "video"):
            if len(shape) != 3 or shape[2] != 3:
                raise DatasetError(
                    f"LeRobotWriter: {v['dtype']} feature {k!r} must have shape [y, x, 3], got {shape}"
                )
        elif k.startswith(IMAGE_PREFIX):
            raise DatasetError(
                f"LeRobotWriter: feature {k!r} must have dtype 'image' or 'video', got {v.get('dtype')!r}"
            )
        elif v.get("dtype") not in VECTOR_DTYPES or len(shape) != 1:
            raise DatasetError(
                f"LeRobotWriter: feature {k!r} must be a vector ({' | '.join(VECTOR_DTYPES)}, shape [d]) "
                f"or an image (dtype 'image', shape [y, x, 3]); got {dict(v)}"
            )

    # ----------------------------------------------------------------------------------------------
    def __enter__(self) -> LeRobotWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    @property
    def num_episodes(self) -> int:
        return len(self._episodes)

    @property
    def num_frames(self) -> int:
        return self._num_frames

    def _vector_type(self, spec: Mapping[str, Any]) -> pa.DataType:
        t = VECTOR_DTYPES[spec["dtype"]]
        d = int(spec["shape"][0])
        return t if d == 1 else pa.list_(t, d)  # shape-(1,) features are scalar columns, as in LeRobot

    def _make_schema(self) -> pa.Schema:
        fields = [  # video features live in the mp4 files only, as in LeRobot v3
            pa.field(k, _IMAGE_STRUCT if k in self.image_keys else self._vector_type(v))
            for k, v in self.features.items()
            if k not in self.video_keys
        ]
        fields += [pa.field(k, VECTOR_DTYPES[v["dtype"]]) for k, v in INDEX_FEATURES.items()]
        return pa.schema(fields)

    def _check_frames(self, frames: Mapping[str, np.ndarray]) -> int:
        missing = [k for k in self.features if k not in frames]
        extra = [k for k in frames if k not in self.features]
        if missing or extra:
            raise DatasetError(
                f"add_episode: frames missing {missing}, unexpected {extra}; "
                f"features are {list(self.features)}"
            )
        n = int(np.asarray(frames[next(iter(self.features))]).shape[0])
        if n == 0:
            raise DatasetError("add_episode: episode has 0 frames")
        for k, spec in self.features.items():
            a = np.asarray(frames[k])
            want = (n, *[int(v) for v in spec["shape"]])
            if a.shape != want and not (spec["shape"] == [1] and a.shape == (n,)):
                raise DatasetError(f"add_episode: {k!r} has shape {a.shape}, expected {want}")
            if spec["dtype"] in ("image", "video"):
                if a.dtype != np.uint8:
                    raise DatasetError(f"add_episode: {k!r} must be uint8, got {a.dtype}")
            elif not np.all(np.isfinite(a)):
                raise DatasetError(f"add_episode: {k!r} contains NaN or inf")
        return n

    def add_episode(self, frames: Mapping[str, np.ndarray], task: str) -> int:
        """Append one episode; returns its episode_index. frames: feature key -> (e, ...) array."""
        if self._closed:
            raise DatasetError(f"{self.root}: writer is closed")
        if not isinstance(task, str) or not task:
            raise DatasetError(f"add_episode: task must be a non-empty string, got {task!r}")
        n = self._check_frames(frames)
        ep = len(self._episodes)
        task_index = self._tasks.setdefault(task, len(self._tasks))
        frame_index = np.arange(n, dtype=np.int64)
        values: dict[str, np.ndarray] = {  # feature -> (e, d) vectors, (e,) index columns
            k: np.asarray(frames[k], dtype=self.features[k]["dtype"]).reshape(n, -1) for k in self.vector_keys
        }
        values["timestamp"] = (frame_index / self.fps).astype(np.float32)
        values["frame_index"] = frame_index
        values["episode_index"] = np.full(n, ep, np.int64)
        values["index"] = self._num_frames + frame_index
        values["task_index"] = np.full(n, task_index, np.int64)
        cols: dict[str, pa.Array] = {}
        for k, v in values.items():
            if v.ndim == 2 and v.shape[1] > 1:
                cols[k] = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1])
            else:
                cols[k] = pa.array(v.reshape(-1))
        pixels: dict[str, PixelStatsAccumulator] = {}
        for k in self.image_keys:
            imgs = np.asarray(frames[k])  # (e, y, x, 3)
            png = [encode_png(im, self.png_compress_level) for im in imgs]
            cols[k] = pa.StructArray.from_arrays(
                [pa.array(png, pa.binary()), pa.nulls(n, pa.string())], fields=list(_IMAGE_STRUCT)
            )
            pixels[k] = PixelStatsAccumulator()
            pixels[k].update(imgs)
        video_cols: dict[str, Any] = {}
        for k in self.video_keys:
            imgs = np.asarray(frames[k])
            video_cols.update(self._videos[k].add(imgs))
            pixels[k] = PixelStatsAccumulator()
            pixels[k].update(imgs)
        table = pa.table([cols[f.name] for f in self._schema], schema=self._schema)

        limit = self.data_files_size_in_mb * 1024 * 1024
        if self._pq is not None and self._file_bytes > 0 and self._file_bytes + table.nbytes > limit:
            self._pq.close()
            self._pq = None
            self._file_index += 1
            self._file_bytes = 0
        chunk_index, file_index = divmod(self._file_index, self.chunks_size)
        if self._pq is None:
            path = self.tmp / DATA_PATH.format(chunk_index=chunk_index, file_index=file_index)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._pq = pq.ParquetWriter(path, self._schema)
        self._pq.write_table(table)
        self._file_bytes += table.nbytes

        row: dict[str, Any] = {
            "episode_index": ep,
            "tasks": [task],
            "length": n,
            "data/chunk_index": chunk_index,
            "data/file_index": file_index,
            "dataset_from_index": self._num_frames,
            "dataset_to_index": self._num_frames + n,
            "meta/episodes/chunk_index": 0,
            "meta/episodes/file_index": 0,
            **video_cols,
        }
        ep_stats: dict[str, dict[str, Any]] = {}
        for k, v in values.items():
            self._stats[k].update(v)
            ep_stats[k] = _stats_json(compute_full_stats(v), self._kind(k))
        for k, acc in pixels.items():
            self._pixels[k].merge(acc)
            ep_stats[k] = _stats_json(acc.result(), "image")
        for k in (*self.features, *INDEX_FEATURES):  # LeRobot's column order: features, then indices
            for stat, val in ep_stats[k].items():
                row[f"stats/{k}/{stat}"] = val
        self._episodes.append(row)
        self._num_frames += n
        return ep

    def _kind(self, key: str) -> str:
        spec = self.features.get(key) or INDEX_FEATURES[key]
        return str(spec["dtype"])

    def add_meta_json(self, name: str, obj: Any) -> None:
        """Write an extra JSON file `meta/<name>` (e.g. collection settings); readers ignore it."""
        if self._closed:
            raise DatasetError(f"{self.root}: writer is closed")
        if "/" in name or not name.endswith(".json") or name in ("info.json", "stats.json"):
            raise DatasetError(f"add_meta_json: bad file name {name!r}; use a plain '<name>.json'")
        (self.tmp / "meta").mkdir(parents=True, exist_ok=True)
        (self.tmp / "meta" / name).write_text(json.dumps(obj, indent=2))

    # ----------------------------------------------------------------------------------------------
    def _write_meta(self) -> None:
        meta = self.tmp / "meta"
        (meta / "episodes" / "chunk-000").mkdir(parents=True, exist_ok=True)
        # tasks.parquet: task string as the pandas index (LeRobot reads it with pandas), plus task_index.
        tasks = sorted(self._tasks, key=self._tasks.__getitem__)
        pandas_meta = {
            "index_columns": ["task"],
            "column_indexes": [],
            "columns": [
                {
                    "name": "task",
                    "field_name": "task",
                    "pandas_type": "unicode",
                    "numpy_type": "object",
                    "metadata": None,
                },
                {
                    "name": "task_index",
                    "field_name": "task_index",
                    "pandas_type": "int64",
                    "numpy_type": "int64",
                    "metadata": None,
                },
            ],
            "creator": {"library": "z1"},
            "pandas_version": "2.2.0",
        }
        t = pa.table(
            {
                "task_index": pa.array([self._tasks[t] for t in tasks], pa.int64()),
                "task": pa.array(tasks, pa.string()),
            }
        ).replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
        pq.write_table(t, meta / "tasks.parquet")

        ep_table = pa.Table.from_pylist(self._episodes)
        pq.write_table(ep_table, self.tmp / EPISODES_PATH.format(chunk_index=0, file_index=0))

        stats: dict[str, Any] = {
            k: _stats_json(acc.result(), self._kind(k)) for k, acc in self._stats.items()
        }
        stats.update({k: _stats_json(acc.result(), "image") for k, acc in self._pixels.items()})
        stats = {k: stats[k] for k in (*self.features, *INDEX_FEATURES)}
        (meta / "stats.json").write_text(json.dumps(stats, indent=4))

        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": len(self._episodes),
            "total_frames": self._num_frames,
            "total_tasks": len(self._tasks),
            "chunks_size": self.chunks_size,
            "data_files_size_in_mb": _mb(self.data_files_size_in_mb),
            "video_files_size_in_mb": _mb(self.video_files_size_in_mb),
            "fps": self.fps,
            "splits": {"train": f"0:{len(self._episodes)}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self.video_keys else None,
            "features": {**self.features, **INDEX_FEATURES},
        }
        for k in self.video_keys:
            info["features"][k] = {**self.features[k], "info": video_feature_info(self._videos[k].paths[0])}
        (meta / "info.json").write_text(json.dumps(info, indent=4))

    def close(self) -> Path:
        """Finish the dataset and move it to `root`. Returns `root`."""
        if self._closed:
            return self.root
        try:
            if self._pq is not None:
                self._pq.close()
                self._pq = None
            for v in self._videos.values():
                v.close()
            if not self._episodes:
                raise DatasetError(f"{self.root}: no episodes were added; refusing to write an empty dataset")
            self._write_meta()
            fsync_tree(self.tmp)
            if self.root.exists():
                raise DatasetError(f"{self.root}: appeared while writing; the new dataset was discarded")
            os.rename(self.tmp, self.root)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return self.root

    def abort(self) -> None:
        """Discard everything written so far (nothing appears at `root`)."""
        self._closed = True
        if self._pq is not None:
            with contextlib.suppress(Exception):
                self._pq.close()
            self._pq = None
        for v in self._videos.values():
            v.abort()
        shutil.rmtree(self.tmp, ignore_errors=True)
