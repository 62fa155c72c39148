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

Here: the `Dataset` (names, columns, episode ranges, frame access). Beside it: `lerobot_layout` (where each
version keeps its files), `lerobot_files` (checked reads), `lerobot_frames` (`Episode`, image and video
decoding), `lerobot_stats` (the dataset's own statistics), `lerobot_checks` (does a dataset fit a policy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from z1.data.errors import DatasetError
from z1.data.lerobot_files import check_finite, read_json, read_parquet, require_field, vector_column
from z1.data.lerobot_frames import Episode, ImageSequence, decode_image_bytes, decode_video_frames
from z1.data.lerobot_layout import read_layout, video_location
from z1.data.lerobot_stats import dataset_stats
from z1.data.mapping import IMAGE_PREFIX, DataConfig
from z1.data.normalize import FullStats, compute_full_stats
from z1.types import FeatureStats

STATE, ACTION = "observation.state", "action"
INDEX_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")
_VISUAL = ("image", "video")


class Dataset:
    """A LeRobotDataset held in memory (numeric columns) with lazily decoded images. See module docstring.

    Everything public uses the policy's names after `data` is applied: `features` (info.json's entries under
    the policy's keys), `cameras` (slot names), `state` (N, s) / `action` (N, d) (the mapped keys,
    concatenated), `stats`: {"observation.state": FeatureStats, "action": FeatureStats}.
    `file_features` is info.json's `features` as written; `dataset_cameras` maps the dataset's own camera
    names to their feature keys, `camera_keys` the policy's camera names to them.
    """

    def __init__(self, root: str | Path, data: DataConfig | None = None) -> None:
        self.root = Path(root)
        self.data = data if data is not None else DataConfig()
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: dataset directory does not exist")
        self._info_path = self.root / "meta" / "info.json"
        self.info: dict[str, Any] = read_json(self._info_path)
        if not isinstance(self.info, dict):
            raise DatasetError(f"{self._info_path}: expected a JSON object")
        self.version = str(require_field(self.info, "codebase_version", self._info_path, str))
        self.fps = float(require_field(self.info, "fps", self._info_path, (int, float)))
        self.file_features: dict[str, dict[str, Any]] = require_field(
            self.info, "features", self._info_path, dict
        )
        self._apply_mapping()
        self.robot_type = self.info.get("robot_type")
        layout = read_layout(self.root, self.info, self._info_path, self.version)
        self.tasks = layout.tasks
        self._ep_meta = layout.episodes
        self._load_files(layout.files)
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
        self.camera_keys: dict[str, str] = {}  # policy camera name -> dataset feature key
        for name, key in self.dataset_cameras.items():
            if name in cmap:
                self.camera_keys[cmap[name]] = key
            elif name not in cmap.values() and key.startswith(IMAGE_PREFIX):  # else shadowed by a mapping
                self.camera_keys[name] = key
        self.cameras = tuple(self.camera_keys)
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
        for cam, key in self.camera_keys.items():
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
            t = read_parquet(f, columns=vec_cols + idx_cols)
            for k in idx_cols:
                parts[k].append(np.asarray(t.column(k).to_numpy()).reshape(-1))
            for k in vec_cols:
                parts[k].append(vector_column(t, k, self._col_dims[k], f))
                check_finite(parts[k][-1], k, f, parts["episode_index"][-1], parts["frame_index"][-1])
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
                out[key] = dataset_stats(self.root, cols, self._col_dims, data)
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
        """Decode camera `cam` (a policy-side name, see `cameras`) at global rows -> (k, y, x, 3) uint8."""
        key = self.camera_keys.get(cam)  # the dataset's feature key
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
            out.append(decode_image_bytes(b, p, self.root, f"{self._files[fi]}: column {key!r} row {r}"))
        return np.stack(out)

    def _image_column(self, file_i: int, key: str) -> pa.Array:
        """The encoded image column of one data file (kept after the first read; bytes stay compressed)."""
        cache: dict[tuple[int, str], pa.Array] = self.__dict__.setdefault("_img_cols", {})
        if (file_i, key) not in cache:
            cache[(file_i, key)] = (
                read_parquet(self._files[file_i], columns=[key]).column(key).combine_chunks()
            )
        return cache[(file_i, key)]

    def _video_frames(self, key: str, rows: np.ndarray) -> np.ndarray:
        out = np.zeros((len(rows), *self.file_features[key]["shape"]), np.uint8)
        eps = self.frame_episode[rows]
        for i in np.unique(eps):
            sel = np.nonzero(eps == i)[0]
            path, t0 = video_location(
                self.root, self.info, self._info_path, self.version, self._ep_meta[int(i)], key
            )
            got = decode_video_frames(path, t0 + self.timestamp[rows[sel]], self.fps)
            if got.shape[1:] != out.shape[1:]:
                raise DatasetError(
                    f"{path}: frames are {list(got.shape[1:])} but {self._info_path} field "
                    f"'features.{key}.shape' says {list(out.shape[1:])}"
                )
            out[sel] = got
        return out

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
