"""Exact-resume training state: optimizer state, extra tensors, RNG states and JSON metadata.

A directory of train_state.safetensors (every tensor: optimizer moments, extra tensors such as an EMA,
torch generator states) + train_state.json (the rest of the optimizer state dict, numpy bit-generator
states, metadata, and the tensors' SHA-256), written atomically. Non-JSON values (tuples, numpy arrays,
inf/nan) are tagged so they come back as the same types: a resumed run continues bit for bit.

Saved on its own (`save_train_state`) or inside a z1 checkpoint in the same atomic rename as the weights
(`save_checkpoint(..., train_state=TrainStateSpec(...))`), so weights and resume state cannot disagree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

import z1
from z1.fsutil import atomic_directory, file_sha256, write_json
from z1.models.checkpoint import missing_dir_error, read_json_file, verify_sha256
from z1.models.errors import CheckpointError

TRAIN_TENSORS = "train_state.safetensors"
TRAIN_JSON = "train_state.json"

_TUPLE, _NDARRAY = "__tuple__", "__ndarray__"


def _enc(v: Any) -> Any:
    if isinstance(v, tuple):
        return {_TUPLE: [_enc(x) for x in v]}
    if isinstance(v, list):
        return [_enc(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _enc(x) for k, x in v.items()}
    if isinstance(v, np.ndarray):
        return {_NDARRAY: v.tolist(), "dtype": str(v.dtype)}
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return {"__float__": repr(v)}
    return v


def _dec(v: Any) -> Any:
    if isinstance(v, list):
        return [_dec(x) for x in v]
    if isinstance(v, dict):
        if _TUPLE in v:
            return tuple(_dec(x) for x in v[_TUPLE])
        if _NDARRAY in v:
            return np.asarray(v[_NDARRAY], dtype=v["dtype"])
        if "__float__" in v:
            return float(v["__float__"])
        return {k: _dec(x) for k, x in v.items()}
    return v


@dataclass
class TrainState:
    """What `load_train_state` returns besides restoring the optimizer and RNGs in place."""

    extra_tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]


@dataclass(frozen=True)
class TrainStateSpec:
    """What `save_train_state` saves; pass it to `save_checkpoint(..., train_state=...)` to write the
    weights and the resume state in one atomic step."""

    optimizer: torch.optim.Optimizer
    extra_tensors: Mapping[str, torch.Tensor] | None = None
    meta: Mapping[str, Any] | None = None
    torch_generators: Mapping[str, torch.Generator] | None = None
    numpy_rngs: Mapping[str, np.random.Generator] | None = None
    subdir: str = "train_state"

    def write(self, directory: Path) -> None:
        """Write the files into `directory` (an `atomic_directory` being built; see `save_checkpoint`)."""
        _write_train_state_files(directory, self)


def save_train_state(
    path: str | Path,
    optimizer: torch.optim.Optimizer,
    extra_tensors: Mapping[str, torch.Tensor] | None = None,
    meta: Mapping[str, Any] | None = None,
    *,
    torch_generators: Mapping[str, torch.Generator] | None = None,
    numpy_rngs: Mapping[str, np.random.Generator] | None = None,
) -> Path:
    """Write optimizer state, extra tensors, RNG states and JSON metadata atomically for an exact resume."""
    spec = TrainStateSpec(optimizer, extra_tensors, meta, torch_generators, numpy_rngs)
    with atomic_directory(path) as tmp:
        _write_train_state_files(tmp, spec)
    return Path(path)


def _write_train_state_files(directory: Path, spec: TrainStateSpec) -> None:
    optimizer, extra_tensors, meta = spec.optimizer, spec.extra_tensors, spec.meta
    torch_generators, numpy_rngs = spec.torch_generators, spec.numpy_rngs
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    state_json: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        entry: dict[str, Any] = {}
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.state.{pid}.{name}"] = v.detach().to("cpu").contiguous()
                entry[name] = {"__tensor__": f"optim.state.{pid}.{name}"}
            else:
                entry[name] = _enc(v)
        state_json[str(pid)] = entry
    groups_json = []
    for g, group in enumerate(sd["param_groups"]):
        gj: dict[str, Any] = {}
        for name, v in group.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.group.{g}.{name}"] = v.detach().to("cpu").contiguous()
                gj[name] = {"__tensor__": f"optim.group.{g}.{name}"}
            else:
                gj[name] = _enc(v)
        groups_json.append(gj)
    param_shapes = [list(p.shape) for group in optimizer.param_groups for p in group["params"]]
    for k, v in (extra_tensors or {}).items():
        tensors[f"extra.{k}"] = v.detach().to("cpu").contiguous()
    rng_json: dict[str, Any] = {"torch": [], "numpy": {}}
    for k, gen in (torch_generators or {}).items():
        if gen.device.type != "cpu":
            raise ValueError(f"torch generator {k!r} is on {gen.device}; only CPU generators are saved")
        tensors[f"rng.torch.{k}"] = gen.get_state()
        rng_json["torch"].append(k)
    for k, rng in (numpy_rngs or {}).items():
        rng_json["numpy"][k] = _enc(rng.bit_generator.state)
    doc = {
        "z1_version": z1.__version__,
        "optimizer": type(optimizer).__name__,
        "state": state_json,
        "param_groups": groups_json,
        "param_shapes": param_shapes,
        "extra_tensors": sorted((extra_tensors or {}).keys()),
        "rng": rng_json,
        "meta": _enc(dict(meta or {})),
    }
    save_file(tensors, str(directory / TRAIN_TENSORS), metadata={"format": "pt"})
    doc["sha256"] = {TRAIN_TENSORS: file_sha256(directory / TRAIN_TENSORS)}
    write_json(directory / TRAIN_JSON, doc)


def load_train_state(
    path: str | Path,
    optimizer: torch.optim.Optimizer,
    *,
    torch_generators: Mapping[str, torch.Generator] | None = None,
    numpy_rngs: Mapping[str, np.random.Generator] | None = None,
) -> TrainState:
    """Restore the optimizer (and the given RNGs, in place) from `save_train_state`.

    Returns the extra tensors and the metadata."""
    p = Path(path).expanduser()
    if not (p / TRAIN_JSON).is_file():
        raise missing_dir_error(p.absolute(), "training state")
    doc = read_json_file(p / TRAIN_JSON, "the training state")
    if not (p / TRAIN_TENSORS).is_file():
        raise CheckpointError(f"{p / TRAIN_TENSORS}: file is missing; the training state is incomplete")
    verify_sha256(p / TRAIN_TENSORS, (doc.get("sha256") or {}).get(TRAIN_TENSORS), "optimizer and RNG state")
    if doc["optimizer"] != type(optimizer).__name__:
        raise CheckpointError(
            f"{p} holds a {doc['optimizer']} state but the optimizer is {type(optimizer).__name__}"
        )
    shapes = [list(q.shape) for group in optimizer.param_groups for q in group["params"]]
    if shapes != doc["param_shapes"]:
        first = next(
            (i for i, (a, b) in enumerate(zip(shapes, doc["param_shapes"])) if a != b),
            min(len(shapes), len(doc["param_shapes"])),
        )
        raise CheckpointError(
            f"{p}: the optimizer's parameters do not match the saved ones ({len(shapes)} vs "
            f"{len(doc['param_shapes'])} params; first difference at param {first}); build the optimizer "
            "over "
            "the same parameters in the same order"
        )
    try:
        f_ctx = safe_open(str(p / TRAIN_TENSORS), framework="pt")
    except SafetensorError as e:
        raise CheckpointError(f"{p / TRAIN_TENSORS}: not a readable safetensors file ({e})") from e
    with f_ctx as f:

        def resolve(v: Any) -> Any:
            if isinstance(v, dict) and "__tensor__" in v:
                return f.get_tensor(v["__tensor__"])
            return _dec(v)

        state = {int(pid): {n: resolve(v) for n, v in st.items()} for pid, st in doc["state"].items()}
        groups = [{n: resolve(v) for n, v in g.items()} for g in doc["param_groups"]]
        extras = {k: f.get_tensor(f"extra.{k}") for k in doc["extra_tensors"]}
        saved_gens = set(doc["rng"]["torch"])
        for k, gen in (torch_generators or {}).items():
            if k not in saved_gens:
                raise CheckpointError(
                    f"{p} has no state for torch generator {k!r}; saved: {sorted(saved_gens)}"
                )
            gen.set_state(f.get_tensor(f"rng.torch.{k}"))
    for g in groups:
        g["params"] = [int(i) for i in g["params"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    for k, rng in (numpy_rngs or {}).items():
        if k not in doc["rng"]["numpy"]:
            raise CheckpointError(
                f"{p} has no state for numpy generator {k!r}; saved: {sorted(doc['rng']['numpy'])}"
            )
        rng.bit_generator.state = _dec(doc["rng"]["numpy"][k])
    return TrainState(extra_tensors=extras, meta=_dec(doc["meta"]))
