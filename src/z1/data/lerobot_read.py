"""LeRobotDataset reader for v3.0 and v2.1 directories (pi05.md §6).

`open_dataset(root)` reads `meta/info.json`, picks the layout from `codebase_version`, loads every numeric
column (state, action, indices) into memory and leaves images encoded: `image` features (PNG/JPEG bytes in
parquet, struct {bytes, path}) are decoded with Pillow on access; `video` features (mp4) are decoded with PyAV
at `from_timestamp + timestamp` when `av` is installed (`pip install av`).

    v3.0: data/chunk-CCC/file-FFF.parquet (many episodes per file), meta/episodes/*/*.parquet,
          meta/tasks.parquet, meta/stats.json, videos/<key>/chunk-CCC/file-FFF.mp4
    v2.1: data/chunk-CCC/episode_EEEEEE.parquet, meta/episodes.jsonl, meta/tasks.jsonl,
          meta/episodes_stats.jsonl (or v2.0's meta/stats.json), videos/chunk-CCC/<key>/episode_EEEEEE.mp4

Statistics: state/action mean, std, q01, q99 come from `meta/stats.json` when it has all four; otherwise
mean/std are pooled from `meta/episodes_stats.jsonl` when present and whatever is still missing (always the
quantiles of a v2.1 dataset) is computed exactly from the loaded data.

Every error is a `DatasetError` whose message names the file and the field at fault.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from z1.data.errors import DatasetError
from z1.data.normalize import compute_full_stats, pool_mean_std
from z1.types import FeatureStats

STATE, ACTION, IMAGE_PREFIX = "observation.state", "action", "observation.images."
_NUMERIC = (STATE, ACTION, "timestamp", "frame_index", "episode_index", "index", "task_index")


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


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DatasetError(f"{path}: file is missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from e


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DatasetError(f"{path}: file is missing")
    rows = []
    for i, line in enumerate(path.read_text().splitlines()):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}: line {i + 1} is not valid JSON ({e})") from e
    return rows


def _read_parquet(path: Path, columns: list[str] | None = None) -> pa.Table:
    if not path.is_file():
        raise DatasetError(f"{path}: file is missing")
    try:
        schema = pq.read_schema(path)
        if columns is not None:
            missing = [c for c in columns if c not in schema.names]
            if missing:
                raise DatasetError(f"{path}: missing column(s) {missing}; has {schema.names}")
        return pq.read_table(path, columns=columns)
    except DatasetError:
        raise
    except (pa.ArrowException, OSError) as e:
        raise DatasetError(f"{path}: cannot read parquet (truncated or corrupt?): {e}") from e


def _field(d: dict[str, Any], key: str, where: Path, kind: type | tuple[type, ...] | None = None) -> Any:
    if key not in d:
        raise DatasetError(f"{where}: field {key!r} is missing")
    v = d[key]
    if kind is not None and not isinstance(v, kind):
        raise DatasetError(f"{where}: field {key!r} has type {type(v).__name__}, expected {kind}")
    return v


def _vector_column(table: pa.Table, name: str, dim: int, where: Path) -> np.ndarray:
    col = table.column(name).combine_chunks()
    if not (
        pa.types.is_list(col.type)
        or pa.types.is_fixed_size_list(col.type)
        or pa.types.is_large_list(col.type)
    ):
        if dim == 1:
            return np.asarray(col.to_numpy(zero_copy_only=False), np.float32)[:, None]
        raise DatasetError(f"{where}: column {name!r} has type {col.type}, expected a list of {dim} numbers")
    flat = np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    if flat.size != len(col) * dim:
        raise DatasetError(f"{where}: column {name!r} rows do not all have {dim} values (info.json shape)")
    return flat.reshape(len(col), dim)


def _decode_image_bytes(b: bytes | None, path: str | None, root: Path, where: str) -> np.ndarray:
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


class Dataset:
    """A LeRobotDataset held in memory (numeric columns) with lazily decoded images. See module docstring.

    stats: {"observation.state": FeatureStats, "action": FeatureStats}.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: dataset directory does not exist")
        self._info_path = self.root / "meta" / "info.json"
        self.info: dict[str, Any] = _read_json(self._info_path)
        if not isinstance(self.info, dict):
            raise DatasetError(f"{self._info_path}: expected a JSON object")
        self.version = str(_field(self.info, "codebase_version", self._info_path, str))
        self.fps = float(_field(self.info, "fps", self._info_path, (int, float)))
        self.features: dict[str, dict[str, Any]] = _field(self.info, "features", self._info_path, dict)
        for key in (STATE, ACTION):
            if key not in self.features:
                raise DatasetError(f"{self._info_path}: field 'features' has no {key!r} entry")
        self.state_dim = self._dim(STATE)
        self.action_dim = self._dim(ACTION)
        self.image_keys = [
            k
            for k, v in self.features.items()
            if k.startswith(IMAGE_PREFIX) and v.get("dtype") in ("image", "video")
        ]
        self.cameras = tuple(k[len(IMAGE_PREFIX) :] for k in self.image_keys)
        self.robot_type = self.info.get("robot_type")
        if self.version.startswith("v3"):
            self._load_v3()
        elif self.version in ("v2.0", "v2.1"):
            self._load_v2()
        else:
            raise DatasetError(
                f"{self._info_path}: field 'codebase_version' is {self.version!r}; "
                "supported: v3.0, v2.1, v2.0"
            )
        if self.num_episodes == 0 or self.num_frames == 0:
            raise DatasetError(f"{self.root}: dataset is empty (0 episodes or 0 frames)")
        self._check_ranges()
        self.stats = self._load_stats()

    # -- layout-specific loading ------------------------------------------------------------------
    def _dim(self, key: str) -> int:
        shape = self.features[key].get("shape")
        if not isinstance(shape, list) or len(shape) != 1 or not isinstance(shape[0], int):
            raise DatasetError(f"{self._info_path}: field 'features.{key}.shape' is {shape!r}, expected [d]")
        return shape[0]

    def _load_files(self, files: list[Path]) -> None:
        """Read numeric columns of the data files, in order, into (N, ...) arrays."""
        states, actions, cols = [], [], {k: [] for k in _NUMERIC[2:]}
        self._files = files
        offsets = [0]
        for f in files:
            t = _read_parquet(f, columns=[c for c in _NUMERIC if c != "index"])
            states.append(_vector_column(t, STATE, self.state_dim, f))
            actions.append(_vector_column(t, ACTION, self.action_dim, f))
            for k in ("timestamp", "frame_index", "episode_index", "task_index"):
                cols[k].append(np.asarray(t.column(k).to_numpy()).reshape(-1))
            offsets.append(offsets[-1] + t.num_rows)
        self._file_offsets = np.asarray(offsets, np.int64)  # (files + 1,)
        self.state = np.concatenate(states) if states else np.zeros((0, self.state_dim), np.float32)  # (N, s)
        self.action = (
            np.concatenate(actions) if actions else np.zeros((0, self.action_dim), np.float32)
        )  # (N, d)
        self.timestamp = np.concatenate(cols["timestamp"]).astype(np.float64) if files else np.zeros(0)
        self.frame_index = (
            np.concatenate(cols["frame_index"]).astype(np.int64) if files else np.zeros(0, np.int64)
        )
        self.episode_index = (
            np.concatenate(cols["episode_index"]).astype(np.int64) if files else np.zeros(0, np.int64)
        )
        self.task_index = (
            np.concatenate(cols["task_index"]).astype(np.int64) if files else np.zeros(0, np.int64)
        )

    def _load_v3(self) -> None:
        meta = self.root / "meta"
        tpath = meta / "tasks.parquet"
        tt = _read_parquet(tpath)
        name_col = next((c for c in ("task", "__index_level_0__") if c in tt.column_names), None)
        if name_col is None or "task_index" not in tt.column_names:
            raise DatasetError(
                f"{tpath}: needs columns 'task' (or the pandas index) and 'task_index'; has {tt.column_names}"
            )
        self.tasks = self._task_list(
            tt.column(name_col).to_pylist(), tt.column("task_index").to_pylist(), tpath
        )
        ep_files = sorted((meta / "episodes").glob("chunk-*/file-*.parquet"))
        if not ep_files:
            raise DatasetError(f"{meta / 'episodes'}: no episode metadata files (chunk-XXX/file-YYY.parquet)")
        need = ["episode_index", "length", "data/chunk_index", "data/file_index"]
        eps = pa.concat_tables([_read_parquet(f) for f in ep_files], promote_options="default")
        for c in need:
            if c not in eps.column_names:
                raise DatasetError(f"{ep_files[0]}: missing column {c!r}")
        self._ep_meta = sorted(eps.to_pylist(), key=lambda r: r["episode_index"])
        data_path = str(_field(self.info, "data_path", self._info_path, str))
        keys = sorted({(r["data/chunk_index"], r["data/file_index"]) for r in self._ep_meta})
        try:
            files = [self.root / data_path.format(chunk_index=c, file_index=f) for c, f in keys]
        except (KeyError, IndexError, ValueError) as e:
            raise DatasetError(
                f"{self._info_path}: field 'data_path' {data_path!r} is not a valid template: {e}"
            ) from e
        self._load_files(files)

    def _load_v2(self) -> None:
        meta = self.root / "meta"
        tasks = _read_jsonl(meta / "tasks.jsonl")
        try:
            self.tasks = self._task_list(
                [t["task"] for t in tasks], [t["task_index"] for t in tasks], meta / "tasks.jsonl"
            )
        except KeyError as e:
            raise DatasetError(f"{meta / 'tasks.jsonl'}: field {e} is missing") from e
        self._ep_meta = sorted(_read_jsonl(meta / "episodes.jsonl"), key=lambda r: r.get("episode_index", -1))
        for r in self._ep_meta:
            for k in ("episode_index", "length"):
                _field(r, k, meta / "episodes.jsonl", int)
        data_path = str(_field(self.info, "data_path", self._info_path, str))
        chunks = int(self.info.get("chunks_size", 1000))
        try:
            files = [
                self.root
                / data_path.format(
                    episode_chunk=r["episode_index"] // chunks, episode_index=r["episode_index"]
                )
                for r in self._ep_meta
            ]
        except (KeyError, IndexError, ValueError) as e:
            raise DatasetError(
                f"{self._info_path}: field 'data_path' {data_path!r} is not a valid template: {e}"
            ) from e
        self._load_files(files)

    def _task_list(self, names: list[Any], idx: list[Any], where: Path) -> list[str]:
        if sorted(idx) != list(range(len(idx))):
            raise DatasetError(f"{where}: field 'task_index' must be 0..{len(idx) - 1}, got {sorted(idx)}")
        out = [""] * len(idx)
        for n, i in zip(names, idx):
            out[int(i)] = str(n)
        return out

    def _check_ranges(self) -> None:
        """Episode row ranges from the episode_index column; must be contiguous and match metadata lengths."""
        ep = self.episode_index
        starts = np.concatenate([[0], np.nonzero(np.diff(ep))[0] + 1])
        ends = np.concatenate([starts[1:], [len(ep)]])
        ids = ep[starts]
        if len(np.unique(ids)) != len(ids):
            raise DatasetError(
                f"{self.root}: field 'episode_index' in the data files is not contiguous per episode"
            )
        meta_ids = [int(r["episode_index"]) for r in self._ep_meta]
        if sorted(ids.tolist()) != sorted(meta_ids):
            raise DatasetError(
                f"{self.root}: episodes in the data files {sorted(ids.tolist())[:10]}... "
                "differ from the episode "
                f"metadata {meta_ids[:10]}... (field 'episode_index')"
            )
        pos = {int(e): k for k, e in enumerate(ids)}
        self._ranges = np.zeros((len(meta_ids), 2), np.int64)  # (episodes, 2) row [start, end)
        for i, r in enumerate(self._ep_meta):
            k = pos[int(r["episode_index"])]
            self._ranges[i] = (starts[k], ends[k])
            if ends[k] - starts[k] != int(r["length"]):
                raise DatasetError(
                    f"{self.root}: episode {r['episode_index']} has {ends[k] - starts[k]} frames "
                    "in the data but "
                    f"field 'length' = {r['length']} in the episode metadata"
                )
        bad = (self.task_index < 0) | (self.task_index >= len(self.tasks))
        if bad.any():
            raise DatasetError(f"{self.root}: field 'task_index' has values outside 0..{len(self.tasks) - 1}")
        # row -> episode position, used by samplers
        self.frame_episode = np.zeros(self.num_frames, np.int64)  # (N,)
        for i, (s, e) in enumerate(self._ranges):
            self.frame_episode[s:e] = i

    def _load_stats(self) -> dict[str, FeatureStats]:
        path = self.root / "meta" / "stats.json"
        file_stats: dict[str, Any] = _read_json(path) if path.is_file() else {}
        ep_stats_path = self.root / "meta" / "episodes_stats.jsonl"
        out: dict[str, FeatureStats] = {}
        for key, data, dim in ((STATE, self.state, self.state_dim), (ACTION, self.action, self.action_dim)):
            got: dict[str, np.ndarray] = {}
            fs = file_stats.get(key, {})
            for k in ("mean", "std", "q01", "q99"):
                if k in fs:
                    v = np.asarray(fs[k], np.float32).reshape(-1)
                    if v.shape != (dim,):
                        raise DatasetError(f"{path}: field '{key}.{k}' has {v.size} values, expected {dim}")
                    got[k] = v
            if ("mean" not in got or "std" not in got) and ep_stats_path.is_file():
                rows = _read_jsonl(ep_stats_path)
                try:
                    per = [r["stats"][key] for r in rows]
                    m, s = pool_mean_std(
                        [p["mean"] for p in per],
                        [p["std"] for p in per],
                        [int(np.ravel(p["count"])[0]) for p in per],
                    )
                except (KeyError, TypeError, IndexError) as e:
                    raise DatasetError(f"{ep_stats_path}: field 'stats.{key}' is incomplete ({e})") from e
                got.setdefault("mean", m.astype(np.float32))
                got.setdefault("std", s.astype(np.float32))
            if len(got) < 4:
                full = compute_full_stats(data)
                for k in ("mean", "std", "q01", "q99"):
                    got.setdefault(k, np.asarray(getattr(full, k), np.float32))
            out[key] = FeatureStats(**got)
        return out

    # -- public API --------------------------------------------------------------------------------
    @property
    def num_episodes(self) -> int:
        return len(self._ep_meta)

    @property
    def num_frames(self) -> int:
        return int(self.action.shape[0])

    def episode_range(self, i: int) -> tuple[int, int]:
        """Rows [start, end) of the i-th episode (in episode_index order)."""
        if not 0 <= i < self.num_episodes:
            raise IndexError(f"episode {i} out of range: {self.root} has {self.num_episodes} episodes")
        s, e = self._ranges[i]
        return int(s), int(e)

    def episode(self, i: int) -> Episode:
        s, e = self.episode_range(i)
        rows = np.arange(s, e)
        images = {
            cam: ImageSequence(
                (lambda pos, cam=cam, rows=rows: self.frame_images(cam, rows[pos])),
                e - s,
                tuple(self.features[IMAGE_PREFIX + cam].get("shape", [])),
            )
            for cam in self.cameras
        }
        return Episode(
            index=int(self._ep_meta[i]["episode_index"]),
            state=self.state[s:e],
            action=self.action[s:e],
            images=images,
            task=self.tasks[int(self.task_index[s])],
        )

    def frame_task(self, row: int) -> str:
        return self.tasks[int(self.task_index[row])]

    def frame_images(self, cam: str, rows: np.ndarray) -> np.ndarray:
        """Decode camera `cam` at global rows -> (k, y, x, 3) uint8."""
        key = IMAGE_PREFIX + cam
        if key not in self.features:
            raise DatasetError(f"{self._info_path}: no camera {cam!r}; cameras are {list(self.cameras)}")
        rows = np.asarray(rows, np.int64).reshape(-1)
        if rows.size == 0:
            return np.zeros((0, *self.features[key].get("shape", [0, 0, 3])), np.uint8)
        if self.features[key]["dtype"] == "video":
            return self._video_frames(key, rows)
        out = []
        fidx = np.searchsorted(self._file_offsets, rows, side="right") - 1
        for r, fi in zip(rows, fidx):
            col = self._image_column(int(fi), key)
            item = col[int(r - self._file_offsets[fi])]
            if isinstance(item, pa.StructScalar):
                b, p = item["bytes"].as_py(), item["path"].as_py() if "path" in item else None
            else:  # plain binary column
                b, p = item.as_py(), None
            out.append(_decode_image_bytes(b, p, self.root, f"{self._files[fi]}: column {key!r} row {r}"))
        return np.stack(out)

    def _image_column(self, file_i: int, key: str) -> pa.Array:
        """The encoded image column of one data file (kept after the first read; bytes stay compressed)."""
        cache: dict[tuple[int, str], pa.Array] = self.__dict__.setdefault("_img_cols", {})
        if (file_i, key) not in cache:
            cache[(file_i, key)] = (
                _read_parquet(self._files[file_i], columns=[key]).column(key).combine_chunks()
            )
        return cache[(file_i, key)]

    def _video_frames(self, key: str, rows: np.ndarray) -> np.ndarray:
        out = np.zeros((len(rows), *self.features[key]["shape"]), np.uint8)
        eps = self.frame_episode[rows]
        for i in np.unique(eps):
            sel = np.nonzero(eps == i)[0]
            path, t0 = self._video_location(key, int(i))
            out[sel] = decode_video_frames(path, t0 + self.timestamp[rows[sel]], self.fps)
        return out

    def _video_location(self, key: str, i: int) -> tuple[Path, float]:
        r = self._ep_meta[i]
        vp = self.info.get("video_path")
        if not isinstance(vp, str):
            raise DatasetError(
                f"{self._info_path}: feature {key!r} is a video but field 'video_path' is {vp!r}"
            )
        if self.version.startswith("v3"):
            try:
                c, f = r[f"videos/{key}/chunk_index"], r[f"videos/{key}/file_index"]
                t0 = float(r.get(f"videos/{key}/from_timestamp", 0.0) or 0.0)
            except KeyError as e:
                raise DatasetError(f"{self.root / 'meta' / 'episodes'}: field {e} is missing") from e
            return self.root / vp.format(video_key=key, chunk_index=c, file_index=f), t0
        chunks = int(self.info.get("chunks_size", 1000))
        ep = int(r["episode_index"])
        return self.root / vp.format(video_key=key, episode_chunk=ep // chunks, episode_index=ep), 0.0

    def __repr__(self) -> str:
        return (
            f"Dataset({str(self.root)!r}, {self.version}, episodes={self.num_episodes}, "
            f"frames={self.num_frames}, fps={self.fps:g}, cameras={list(self.cameras)}, "
            f"state_dim={self.state_dim}, action_dim={self.action_dim})"
        )


def open_dataset(root: str | Path) -> Dataset:
    """Open a LeRobotDataset directory (v3.0 or v2.1, detected from meta/info.json)."""
    return Dataset(root)


def check_compatible(
    ds: Dataset,
    cameras: tuple[str, ...] | list[str] | None = None,
    state_dim: int | None = None,
    action_dim: int | None = None,
    max_action_dim: int | None = None,
) -> None:
    """Raise DatasetError if the dataset lacks a camera or its state/action dims differ from the caller's.

    max_action_dim: the model's padded action dim; the dataset's action dim must not exceed it.
    """
    info = ds.root / "meta" / "info.json"
    if max_action_dim is not None and ds.action_dim > max_action_dim:
        raise DatasetError(
            f"{info}: field 'features.{ACTION}.shape' is [{ds.action_dim}], more than the model's padded "
            f"action dim {max_action_dim}; use a policy preset with action_dim >= {ds.action_dim}"
        )
    if state_dim is not None and ds.state_dim != state_dim:
        raise DatasetError(
            f"{info}: field 'features.{STATE}.shape' is [{ds.state_dim}]"
            f" but the policy/env expects [{state_dim}]"
        )
    if action_dim is not None and ds.action_dim != action_dim:
        raise DatasetError(
            f"{info}: field 'features.{ACTION}.shape' is [{ds.action_dim}]"
            f" but the policy/env expects [{action_dim}]"
        )
    if cameras is not None:
        missing = [c for c in cameras if c not in ds.cameras]
        if missing:
            raise DatasetError(
                f"{info}: field 'features' has no camera(s) {missing} ({IMAGE_PREFIX}<cam>); the dataset has "
                f"{list(ds.cameras)}. Pick cameras from that list or map names when collecting."
            )
