"""LeRobotDataset v3.0 writer (pi05.md §6): many episodes per parquet file, images as PNG bytes in parquet.

Layout written under `root`:
    meta/info.json                          codebase_version "v3.0", features, totals, path templates
    meta/tasks.parquet                      columns task (pandas index) and task_index
    meta/episodes/chunk-000/file-000.parquet
                                            one row per episode: ranges, file location, stats/<key>/<stat>
    meta/stats.json                         global mean/std/min/max/count (+ q01/q99 for state and action)
    data/chunk-CCC/file-FFF.parquet         frames; a new file starts when the current one passes
                                            `data_files_size_in_mb`; an episode never spans two files

Image columns use LeRobot's `image` dtype: a struct {bytes: binary (PNG), path: null}. Size at 64x64,
measured on 324 Meta-World frames (button-press-topdown + drawer-open, PNG compress level 6): 5.0 KB per
frame for the "corner" scene camera and 4.1 KB for "gripperPOV", so 5.0 + 4.1 MB per 1,000 frames for two
cameras and 9.3 MB per 1,000 frames for the whole data file (state and action are negligible). Uniform
random noise (the worst case) is 12.4 KB per frame. Encoding costs 0.85 ms per 64x64 frame (level 1: 0.5 ms,
+4% bytes; level 9: 5 ms, -0.3%).

Atomic: everything goes into `<root>.tmp-XXXX` next to `root`, files are fsynced, and the directory is renamed
to `root` only by a successful `close()` (the context manager's exit). An exception inside the `with` block,
or a failing `close()`, removes the temporary directory, so nothing is ever left at `root`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from z1.data.errors import DatasetError
from z1.data.normalize import StatsAccumulator, compute_full_stats

CODEBASE_VERSION = "v3.0"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
STATE, ACTION, IMAGE_PREFIX = "observation.state", "action", "observation.images."
INDEX_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
_IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def make_features(
    state_names: Sequence[str],
    action_names: Sequence[str],
    cameras: Sequence[str],
    image_size: tuple[int, int],
) -> dict[str, dict[str, Any]]:
    """The `features` dict for a robot with these state/action dims and cameras (images (y, x, 3))."""
    feats: dict[str, dict[str, Any]] = {
        STATE: {"dtype": "float32", "shape": [len(state_names)], "names": list(state_names)},
        ACTION: {"dtype": "float32", "shape": [len(action_names)], "names": list(action_names)},
    }
    for cam in cameras:
        feats[IMAGE_PREFIX + cam] = {
            "dtype": "image",
            "shape": [int(image_size[0]), int(image_size[1]), 3],
            "names": ["height", "width", "channel"],
        }
    return feats


def encode_png(img: np.ndarray, compress_level: int = 6) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class LeRobotWriter:
    """Write a LeRobotDataset v3.0 directory. Use as a context manager; see the module docstring.

    features: {"observation.state": {"dtype": "float32", "shape": [s], "names": [...]}, "action": {...},
    "observation.images.<cam>": {"dtype": "image", "shape": [y, x, 3], ...}} (see `make_features`).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        fps: float,
        features: Mapping[str, Mapping[str, Any]],
        robot_type: str,
        image_format: str = "png",
        data_files_size_in_mb: float = 100.0,
        chunks_size: int = 1000,
        png_compress_level: int = 6,
    ) -> None:
        self.root = Path(root)
        if image_format != "png":
            raise DatasetError(f"LeRobotWriter: image_format {image_format!r} is not supported; use 'png'")
        if self.root.exists():
            raise DatasetError(f"{self.root}: already exists; delete it or choose another output directory")
        if fps <= 0:
            raise DatasetError(f"LeRobotWriter: fps must be > 0, got {fps}")
        for key in (STATE, ACTION):
            if key not in features:
                raise DatasetError(f"LeRobotWriter: features must contain {key!r}; got {sorted(features)}")
        self.fps = fps
        self.robot_type = robot_type
        self.features = {k: dict(v) for k, v in features.items()}
        for k, v in self.features.items():
            if k in (STATE, ACTION) and (v.get("dtype") != "float32" or len(v.get("shape", [])) != 1):
                raise DatasetError(f"LeRobotWriter: feature {k!r} must be float32 with shape [d], got {v}")
            if k.startswith(IMAGE_PREFIX) and v.get("dtype") != "image":
                raise DatasetError(
                    f"LeRobotWriter: feature {k!r} must have dtype 'image', got {v.get('dtype')!r}"
                )
            if k not in (STATE, ACTION) and not k.startswith(IMAGE_PREFIX):
                raise DatasetError(
                    f"LeRobotWriter: unsupported feature {k!r}; "
                    f"expected {STATE!r}, {ACTION!r} or {IMAGE_PREFIX}<cam>"
                )
        self.image_keys = [k for k in self.features if k.startswith(IMAGE_PREFIX)]
        self.data_files_size_in_mb = data_files_size_in_mb
        self.chunks_size = chunks_size
        self.png_compress_level = png_compress_level
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=self.root.name + ".tmp-", dir=self.root.parent))
        self._tasks: dict[str, int] = {}
        self._episodes: list[dict[str, Any]] = []
        self._num_frames = 0
        self._file_index = 0
        self._file_bytes = 0
        self._pq: pq.ParquetWriter | None = None
        self._stats = {STATE: StatsAccumulator(), ACTION: StatsAccumulator()}
        self._img_sums = {k: np.zeros((3, 3)) for k in self.image_keys}  # rows: sum, sum sq, count
        self._img_min = {k: np.full(3, 255.0) for k in self.image_keys}
        self._img_max = {k: np.zeros(3) for k in self.image_keys}
        self._closed = False
        self._schema = self._make_schema()

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

    def _make_schema(self) -> pa.Schema:
        fields = [
            pa.field(STATE, pa.list_(pa.float32(), int(self.features[STATE]["shape"][0]))),
            pa.field(ACTION, pa.list_(pa.float32(), int(self.features[ACTION]["shape"][0]))),
        ]
        fields += [pa.field(k, _IMAGE_STRUCT) for k in self.image_keys]
        fields += [
            pa.field("timestamp", pa.float32()),
            pa.field("frame_index", pa.int64()),
            pa.field("episode_index", pa.int64()),
            pa.field("index", pa.int64()),
            pa.field("task_index", pa.int64()),
        ]
        return pa.schema(fields)

    def _check_frames(self, frames: Mapping[str, np.ndarray]) -> int:
        missing = [k for k in self.features if k not in frames]
        extra = [k for k in frames if k not in self.features]
        if missing or extra:
            raise DatasetError(
                f"add_episode: frames missing {missing}, unexpected {extra}; "
                f"features are {list(self.features)}"
            )
        n = int(np.asarray(frames[ACTION]).shape[0])
        if n == 0:
            raise DatasetError("add_episode: episode has 0 frames")
        for k, spec in self.features.items():
            a = np.asarray(frames[k])
            want = (n, *[int(v) for v in spec["shape"]])
            if a.shape != want:
                raise DatasetError(f"add_episode: {k!r} has shape {a.shape}, expected {want}")
            if spec["dtype"] == "image":
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
        state = np.asarray(frames[STATE], dtype=np.float32)  # (e, s)
        action = np.asarray(frames[ACTION], dtype=np.float32)  # (e, d)
        cols: dict[str, pa.Array] = {
            STATE: pa.FixedSizeListArray.from_arrays(pa.array(state.reshape(-1)), state.shape[1]),
            ACTION: pa.FixedSizeListArray.from_arrays(pa.array(action.reshape(-1)), action.shape[1]),
        }
        for k in self.image_keys:
            imgs = np.asarray(frames[k])  # (e, y, x, 3)
            png = [encode_png(im, self.png_compress_level) for im in imgs]
            cols[k] = pa.StructArray.from_arrays(
                [pa.array(png, pa.binary()), pa.nulls(n, pa.string())], fields=list(_IMAGE_STRUCT)
            )
            px = imgs.reshape(n, -1, 3).astype(np.float64)
            self._img_sums[k] += np.stack(
                [px.sum((0, 1)), (px**2).sum((0, 1)), np.full(3, px.shape[0] * px.shape[1])]
            )
            self._img_min[k] = np.minimum(self._img_min[k], px.min((0, 1)))
            self._img_max[k] = np.maximum(self._img_max[k], px.max((0, 1)))
        frame_index = np.arange(n, dtype=np.int64)
        cols["timestamp"] = pa.array((frame_index / self.fps).astype(np.float32))
        cols["frame_index"] = pa.array(frame_index)
        cols["episode_index"] = pa.array(np.full(n, ep, np.int64))
        cols["index"] = pa.array(self._num_frames + frame_index)
        cols["task_index"] = pa.array(np.full(n, task_index, np.int64))
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

        self._stats[STATE].update(state)
        self._stats[ACTION].update(action)
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
        }
        for key, arr in ((STATE, state), (ACTION, action)):
            fs = compute_full_stats(arr)
            for stat in ("min", "max", "mean", "std", "q01", "q99"):
                row[f"stats/{key}/{stat}"] = np.asarray(getattr(fs, stat), np.float64).tolist()
            row[f"stats/{key}/count"] = [n]
        self._episodes.append(row)
        self._num_frames += n
        return ep

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

        stats: dict[str, Any] = {k: acc.result().to_json() for k, acc in self._stats.items()}
        for k in self.image_keys:  # per channel, scaled to [0, 1], shape (3, 1, 1) like LeRobot
            s, s2, c = self._img_sums[k]
            mean = s / c
            std = np.sqrt(np.maximum(s2 / c - mean**2, 0.0))
            stats[k] = {
                name: (v / 255.0).reshape(3, 1, 1).tolist()
                for name, v in (
                    ("mean", mean),
                    ("std", std),
                    ("min", self._img_min[k]),
                    ("max", self._img_max[k]),
                )
            }
            stats[k]["count"] = [self._num_frames]
        (meta / "stats.json").write_text(json.dumps(stats, indent=2))

        features = {**self.features, **INDEX_FEATURES}
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": len(self._episodes),
            "total_frames": self._num_frames,
            "total_tasks": len(self._tasks),
            "chunks_size": self.chunks_size,
            "data_files_size_in_mb": self.data_files_size_in_mb,
            "video_files_size_in_mb": 200,
            "fps": self.fps,
            "splits": {"train": f"0:{len(self._episodes)}"},
            "data_path": DATA_PATH,
            "video_path": None,
            "features": features,
        }
        (meta / "info.json").write_text(json.dumps(info, indent=4))

    def close(self) -> Path:
        """Finish the dataset and move it to `root`. Returns `root`."""
        if self._closed:
            return self.root
        try:
            if self._pq is not None:
                self._pq.close()
                self._pq = None
            if not self._episodes:
                raise DatasetError(f"{self.root}: no episodes were added; refusing to write an empty dataset")
            self._write_meta()
            _fsync_tree(self.tmp)
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
        shutil.rmtree(self.tmp, ignore_errors=True)
