"""LeRobotDataset reader for v3.0 and v2.1 directories (docs/model.md#datasets).

`open_dataset(root, data)` reads `meta/info.json`, picks the layout from `codebase_version`, loads the
numeric columns it needs (state, action, indices) into memory and leaves images encoded: `image` features
(PNG/JPEG bytes in parquet, struct {bytes, path}) are decoded with Pillow on access; `video` features (mp4)
are decoded with PyAV at `from_timestamp + timestamp` when `av` is installed (`pip install av`).

    v3.0: data/chunk-CCC/file-FFF.parquet (many episodes per file), meta/episodes/*/*.parquet,
          meta/tasks.parquet, meta/stats.json, videos/<key>/chunk-CCC/file-FFF.mp4
    v2.1: data/chunk-CCC/episode_EEEEEE.parquet, meta/episodes.jsonl, meta/tasks.jsonl,
          meta/episodes_stats.jsonl (or v2.0's meta/stats.json), videos/chunk-CCC/<key>/episode_EEEEEE.mp4

Names: `data` (a `DataConfig`) maps the dataset's cameras and state/action keys onto the policy's. The
`Dataset` then speaks the policy's names only: `features`, `cameras`, `stats`, `frame_images(cam, ...)` use
`observation.state`, `action` and `observation.images.<slot>`; `file_features` keeps info.json's own entries.
A feature that is not there fails with a `DatasetError` listing the dataset's cameras and vectors and the
flag that maps them.

Statistics (`data.stats`): "exact" (the default) computes state/action mean, std, q01, q99 from the loaded
columns (`normalize.compute_full_stats`, exact quantiles; the columns are small, see normalize.py).
"dataset" takes them from `meta/stats.json` when it has all four; otherwise mean/std are pooled from
`meta/episodes_stats.jsonl` when present and whatever is still missing (always the quantiles of a v2.1
dataset) is computed exactly from the loaded data.

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
from z1.data.mapping import IMAGE_PREFIX, DataConfig
from z1.data.normalize import FullStats, compute_full_stats, pool_mean_std
from z1.types import FeatureStats

STATE, ACTION = "observation.state", "action"
INDEX_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")
_VISUAL = ("image", "video")


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


def _check_finite(
    values: np.ndarray, column: str, where: Path, episodes: np.ndarray, frames: np.ndarray
) -> None:
    """DatasetError naming the file, column and first row of a NaN or infinite value in `values` (n, d)."""
    bad = ~np.isfinite(values)
    if not bad.any():
        return
    rows = np.flatnonzero(bad.any(axis=1))
    r = int(rows[0])
    raise DatasetError(
        f"{where}: column {column!r} has non-finite values (NaN or inf) in {len(rows)} row(s); first at "
        f"row {r} (episode_index {int(episodes[r])}, frame_index {int(frames[r])}), dims "
        f"{np.flatnonzero(bad[r]).tolist()[:8]}. Training on them would turn the weights into NaN: fix or "
        "drop these frames"
    )


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

    Everything public uses the policy's names after `data` is applied: `features` (info.json's entries under
    the policy's keys), `cameras` (slot names), `state` (N, s) / `action` (N, d) (the mapped keys,
    concatenated), `stats`: {"observation.state": FeatureStats, "action": FeatureStats}.
    `file_features` is info.json's `features` as written; `dataset_cameras` maps the dataset's own camera
    names to their feature keys.
    """

    def __init__(self, root: str | Path, data: DataConfig | None = None) -> None:
        self.root = Path(root)
        self.data = data if data is not None else DataConfig()
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: dataset directory does not exist")
        self._info_path = self.root / "meta" / "info.json"
        self.info: dict[str, Any] = _read_json(self._info_path)
        if not isinstance(self.info, dict):
            raise DatasetError(f"{self._info_path}: expected a JSON object")
        self.version = str(_field(self.info, "codebase_version", self._info_path, str))
        self.fps = float(_field(self.info, "fps", self._info_path, (int, float)))
        self.file_features: dict[str, dict[str, Any]] = _field(self.info, "features", self._info_path, dict)
        self._apply_mapping()
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
        self.full_stats: dict[str, FullStats] = {}  # filled by the exact statistics
        self.stats = self._load_stats()

    # -- names: the dataset's features under the policy's keys -----------------------------------
    def describe_features(self) -> str:
        """One sentence naming the dataset's cameras and vector features with shapes (info.json names)."""
        cams = [
            f"{name} {self.file_features[key].get('shape')} ({self.file_features[key].get('dtype')})"
            for name, key in self.dataset_cameras.items()
        ]
        vecs = [
            f"{k} {v.get('shape')}"
            for k, v in self.file_features.items()
            if isinstance(v, dict) and v.get("dtype") not in (*_VISUAL, "string") and k not in INDEX_COLUMNS
        ]
        return (
            f"The dataset's cameras are {', '.join(cams) if cams else 'none'}; "
            f"its state/action candidates are {', '.join(vecs) if vecs else 'none'}."
        )

    def _vector_dim(self, key: str, role: str, flag: str) -> int:
        spec = self.file_features.get(key)
        if spec is None:
            raise DatasetError(
                f"{self._info_path}: field 'features' has no {role} feature {key!r}. "
                f"{self.describe_features()} Choose the {role} with {flag} KEY (several keys joined by "
                "commas are concatenated)."
            )
        shape = spec.get("shape")
        if (
            spec.get("dtype") in (*_VISUAL, "string")
            or not isinstance(shape, list)
            or len(shape) != 1
            or not isinstance(shape[0], int)
        ):
            raise DatasetError(
                f"{self._info_path}: field 'features.{key}' is {spec.get('dtype')} with shape {shape!r}, "
                f"not a vector [d], so it cannot be the {role}. {self.describe_features()} "
                f"Choose another with {flag}."
            )
        return shape[0]

    def _apply_mapping(self) -> None:
        ff = self.file_features
        self.dataset_cameras = {  # the dataset's camera name (prefix stripped) -> its feature key
            (k[len(IMAGE_PREFIX) :] if k.startswith(IMAGE_PREFIX) else k): k
            for k, v in ff.items()
            if isinstance(v, dict) and v.get("dtype") in _VISUAL
        }
        self._state_cols = self.data.state_keys()
        self._action_cols = self.data.action_keys()
        self._col_dims = {
            **{k: self._vector_dim(k, "state", "--data.state-key") for k in self._state_cols},
            **{k: self._vector_dim(k, "action", "--data.action-key") for k in self._action_cols},
        }
        self.state_dim = sum(self._col_dims[k] for k in self._state_cols)
        self.action_dim = sum(self._col_dims[k] for k in self._action_cols)
        cmap = self.data.camera_map()
        unknown = [c for c in cmap if c not in self.dataset_cameras]
        if unknown:
            raise DatasetError(
                f"{self._info_path}: --data.cameras {self.data.cameras!r} maps camera(s) {unknown} that "
                f"the dataset does not have. {self.describe_features()} Use the dataset's camera names on "
                "the left of each `dataset:slot` pair."
            )
        self._cam_keys: dict[str, str] = {}  # policy camera name -> dataset feature key
        for name, key in self.dataset_cameras.items():
            if name in cmap:
                self._cam_keys[cmap[name]] = key
            elif name not in cmap.values() and key.startswith(IMAGE_PREFIX):  # else shadowed by a mapping
                self._cam_keys[name] = key
        self.cameras = tuple(self._cam_keys)
        self.image_keys = [IMAGE_PREFIX + c for c in self.cameras]

        def vector(cols: tuple[str, ...], dim: int) -> dict[str, Any]:
            names = [ff[c].get("names") for c in cols]
            flat = [n for ns in names for n in ns] if all(isinstance(n, list) for n in names) else None
            return {"dtype": "float32", "shape": [dim], "names": flat}

        used = {*self._state_cols, *self._action_cols, *self.dataset_cameras.values()}
        self.features: dict[str, dict[str, Any]] = {
            k: v for k, v in ff.items() if k not in used and k not in (STATE, ACTION)
        }
        self.features[STATE] = vector(self._state_cols, self.state_dim)
        self.features[ACTION] = vector(self._action_cols, self.action_dim)
        for cam, key in self._cam_keys.items():
            self.features[IMAGE_PREFIX + cam] = ff[key]

    # -- layout-specific loading ------------------------------------------------------------------
    def _load_files(self, files: list[Path]) -> None:
        """Read the numeric columns of the data files, in order, into (N, ...) arrays (no image columns)."""
        vec_cols = list(dict.fromkeys((*self._state_cols, *self._action_cols)))
        idx_cols = ["timestamp", "frame_index", "episode_index", "task_index"]
        parts: dict[str, list[np.ndarray]] = {k: [] for k in (*vec_cols, *idx_cols)}
        self._files = files
        offsets = [0]
        for f in files:
            t = _read_parquet(f, columns=vec_cols + idx_cols)
            for k in idx_cols:
                parts[k].append(np.asarray(t.column(k).to_numpy()).reshape(-1))
            for k in vec_cols:
                parts[k].append(_vector_column(t, k, self._col_dims[k], f))
                _check_finite(parts[k][-1], k, f, parts["episode_index"][-1], parts["frame_index"][-1])
            offsets.append(offsets[-1] + t.num_rows)
        self._file_offsets = np.asarray(offsets, np.int64)  # (files + 1,)

        def cat(cols: tuple[str, ...], dim: int) -> np.ndarray:
            if not files:
                return np.zeros((0, dim), np.float32)
            return np.concatenate([np.concatenate(parts[k]) for k in cols], axis=1)

        self.state = cat(self._state_cols, self.state_dim)  # (N, s) float32
        self.action = cat(self._action_cols, self.action_dim)  # (N, d) float32

        def ints(k: str) -> np.ndarray:
            return np.concatenate(parts[k]).astype(np.int64) if files else np.zeros(0, np.int64)

        self.timestamp = np.concatenate(parts["timestamp"]).astype(np.float64) if files else np.zeros(0)
        self.frame_index = ints("frame_index")
        self.episode_index = ints("episode_index")
        self.task_index = ints("task_index")

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
        out: dict[str, FeatureStats] = {}
        for key, cols, data in (
            (STATE, self._state_cols, self.state),
            (ACTION, self._action_cols, self.action),
        ):
            if self.data.stats == "exact":
                self.full_stats[key] = compute_full_stats(data)
                out[key] = self.full_stats[key].feature_stats()
            else:
                out[key] = self._dataset_stats(key, cols, data)
        return out

    def _dataset_stats(self, key: str, cols: tuple[str, ...], data: np.ndarray) -> FeatureStats:
        """Statistics as the dataset states them (stats.json, else pooled episode stats), concatenated over
        `cols`; what the files do not hold is computed from `data`."""
        path = self.root / "meta" / "stats.json"
        file_stats: dict[str, Any] = _read_json(path) if path.is_file() else {}
        ep_stats_path = self.root / "meta" / "episodes_stats.jsonl"
        got: dict[str, np.ndarray] = {}
        for k in ("mean", "std", "q01", "q99"):
            vals = []
            for col in cols:
                fs = file_stats.get(col, {})
                if k not in fs:
                    break
                try:
                    v = np.asarray(fs[k], np.float32).reshape(-1)
                except (TypeError, ValueError) as e:
                    raise DatasetError(f"{path}: field '{col}.{k}' is not a list of numbers ({e})") from e
                if v.shape != (self._col_dims[col],):
                    raise DatasetError(
                        f"{path}: field '{col}.{k}' has {v.size} values, expected {self._col_dims[col]}"
                    )
                if not np.isfinite(v).all():
                    raise DatasetError(
                        f"{path}: field '{col}.{k}' has non-finite values at dims "
                        f"{np.flatnonzero(~np.isfinite(v)).tolist()[:8]}; fix the file or use "
                        "--data.stats exact (statistics computed from the data)"
                    )
                vals.append(v)
            else:
                got[k] = np.concatenate(vals)
        if ("mean" not in got or "std" not in got) and ep_stats_path.is_file():
            rows = _read_jsonl(ep_stats_path)
            means, stds = [], []
            for col in cols:
                try:
                    per = [r["stats"][col] for r in rows]
                    m, s = pool_mean_std(
                        [p["mean"] for p in per],
                        [p["std"] for p in per],
                        [int(np.ravel(p["count"])[0]) for p in per],
                    )
                except (KeyError, TypeError, IndexError) as e:
                    raise DatasetError(f"{ep_stats_path}: field 'stats.{col}' is incomplete ({e})") from e
                means.append(m)
                stds.append(s)
            got.setdefault("mean", np.concatenate(means).astype(np.float32))
            got.setdefault("std", np.concatenate(stds).astype(np.float32))
        if len(got) < 4:
            full = compute_full_stats(data)
            for k in ("mean", "std", "q01", "q99"):
                got.setdefault(k, np.asarray(getattr(full, k), np.float32))
        return FeatureStats(**got)

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
        """Decode camera `cam` (a policy-side name, see `cameras`) at global rows -> (k, y, x, 3) uint8."""
        key = self._cam_keys.get(cam)  # the dataset's feature key
        if key is None:
            raise DatasetError(f"{self._info_path}: no camera {cam!r}; cameras are {list(self.cameras)}")
        rows = np.asarray(rows, np.int64).reshape(-1)
        if rows.size == 0:
            return np.zeros((0, *self.file_features[key].get("shape", [0, 0, 3])), np.uint8)
        if self.file_features[key]["dtype"] == "video":
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
        out = np.zeros((len(rows), *self.file_features[key]["shape"]), np.uint8)
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


def open_dataset(root: str | Path, data: DataConfig | None = None) -> Dataset:
    """Open a LeRobotDataset directory (v3.0 or v2.1, detected from meta/info.json) under the names and
    statistics `data` asks for (default: the dataset's names, exact statistics)."""
    return Dataset(root, data)


def _camera_hint(ds: Dataset, cameras: tuple[str, ...]) -> str:
    """A --data.cameras value that would feed every slot in `cameras`, or what stands in the way."""
    inverse = {key: name for name, key in ds.dataset_cameras.items()}
    pairs = {inverse[ds._cam_keys[c]]: c for c in cameras if c in ds._cam_keys}  # dataset name -> slot
    missing = [c for c in cameras if c not in ds._cam_keys]
    free = [n for n in ds.dataset_cameras if n not in pairs]
    for name, slot in zip(free, missing):
        pairs[name] = slot
    flag = "--data.cameras " + ",".join(f"{n}:{s}" for n, s in pairs.items() if n != s)
    if len(free) < len(missing):
        return (
            f"The dataset has {len(ds.dataset_cameras)} camera(s) for the policy's {len(cameras)} slot(s), "
            f"so even {flag} leaves {missing[len(free) :]} empty; use a policy preset with fewer camera "
            "slots."
        )
    return f"Map the dataset's cameras onto the slots with {flag} (dataset:slot pairs, comma-separated)."


def check_images(ds: Dataset, cameras: tuple[str, ...] | list[str]) -> None:
    """Raise DatasetError unless every camera in `cameras` is (y, x, 3) in info.json, all of one size, and
    the first decoded frame has that shape (what the batches stack)."""
    info = ds.root / "meta" / "info.json"
    shapes: dict[str, tuple[int, ...]] = {}
    for cam in cameras:
        key = ds._cam_keys.get(cam)
        if key is None:
            continue  # check_compatible names missing cameras
        shape = ds.file_features[key].get("shape")
        if (
            not isinstance(shape, list)
            or len(shape) != 3
            or shape[2] != 3
            or not all(isinstance(v, int) and v > 0 for v in shape)
        ):
            raise DatasetError(
                f"{info}: field 'features.{key}.shape' is {shape!r}; a camera must be [height, width, 3]"
            )
        shapes[cam] = tuple(shape)
        got = ds.frame_images(cam, np.asarray([0]))
        if tuple(got.shape[1:]) != tuple(shape):
            raise DatasetError(
                f"{info}: field 'features.{key}.shape' says {shape} but the stored frames of camera {cam!r} "
                f"decode to {list(got.shape[1:])}; fix info.json or re-encode the images"
            )
    if len(set(shapes.values())) > 1:
        raise DatasetError(
            f"{info}: the policy's cameras have different image sizes {shapes}; every camera fed to the "
            "policy must have the same [height, width, 3] (resize the images, or map other cameras with "
            "--data.cameras)"
        )


def check_compatible(
    ds: Dataset,
    cameras: tuple[str, ...] | list[str] | None = None,
    state_dim: int | None = None,
    action_dim: int | None = None,
    max_action_dim: int | None = None,
) -> None:
    """Raise DatasetError if the dataset lacks a camera or its state/action dims differ from the caller's.

    cameras: the policy's camera slots, compared with the dataset's cameras after `ds.data`'s mapping.
    max_action_dim: the model's padded action dim; the dataset's action dim must not exceed it.
    """
    info = ds.root / "meta" / "info.json"
    keys = {STATE: "+".join(ds.data.state_keys()), ACTION: "+".join(ds.data.action_keys())}
    if max_action_dim is not None and ds.action_dim > max_action_dim:
        raise DatasetError(
            f"{info}: field 'features.{keys[ACTION]}.shape' is [{ds.action_dim}], more than the model's "
            f"padded action dim {max_action_dim}; use a policy preset with action_dim >= {ds.action_dim} "
            f"or choose another action with --data.action-key. {ds.describe_features()}"
        )
    for key, got, want, flag in (
        (STATE, ds.state_dim, state_dim, "--data.state-key"),
        (ACTION, ds.action_dim, action_dim, "--data.action-key"),
    ):
        if want is not None and got != want:
            raise DatasetError(
                f"{info}: field 'features.{keys[key]}.shape' is [{got}] but the policy/env expects [{want}]"
                f" for {key}. {ds.describe_features()} Choose the feature with {flag}."
            )
    if cameras is not None:
        cameras = tuple(cameras)
        missing = [c for c in cameras if c not in ds.cameras]
        if missing:
            mapped = f" after --data.cameras {ds.data.cameras}" if ds.data.cameras else ""
            raise DatasetError(
                f"{info}: field 'features' has no camera(s) {missing} ({IMAGE_PREFIX}<cam>) for the "
                f"policy's camera slots {list(cameras)}; the dataset provides {list(ds.cameras)}{mapped}. "
                f"{ds.describe_features()} {_camera_hint(ds, cameras)}"
            )
