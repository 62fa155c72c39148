"""Checked reads of the files of a LeRobotDataset: JSON, JSON lines, parquet, info.json fields, vector
columns. Each failure is a `DatasetError` naming the file, the field or column, and what was expected, so a
malformed dataset is reported where it is malformed instead of surfacing later as a shape error.

Also the writer's two file-system steps (a temporary directory with normal permissions, fsync before the
rename), shared by the parquet and mp4 parts of a dataset.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from z1.data.errors import DatasetError


def read_json(path: Path) -> Any:
    """A JSON file; missing or invalid is a DatasetError naming it."""
    if not path.is_file():
        raise DatasetError(f"{path}: file is missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from e


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file (blank lines skipped); a bad line is named by number."""
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


def read_parquet(path: Path, columns: list[str] | None = None) -> pa.Table:
    """A parquet table (only `columns` if given, each required); unreadable files name themselves."""
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


def require_field(
    d: dict[str, Any], key: str, where: Path, kind: type | tuple[type, ...] | None = None
) -> Any:
    """`d[key]`, required and (with `kind`) of that type."""
    if key not in d:
        raise DatasetError(f"{where}: field {key!r} is missing")
    v = d[key]
    if kind is not None and not isinstance(v, kind):
        raise DatasetError(f"{where}: field {key!r} has type {type(v).__name__}, expected {kind}")
    return v


def vector_column(table: pa.Table, name: str, dim: int, where: Path) -> np.ndarray:
    """A list column (or a scalar one, for dim 1) as an (n, dim) float32 array."""
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


def check_finite(
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


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under `root`, so a rename after it publishes complete files."""
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


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """A fresh directory created with mode 0o777 minus the umask (tempfile.mkdtemp would force 0o700, so
    the renamed dataset would be private to its owner)."""
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            os.mkdir(path, 0o777)
        except FileExistsError:
            continue
        return path
    raise DatasetError(f"{parent}: cannot create a temporary directory named {prefix}<random suffix>")
