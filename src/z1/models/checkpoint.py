"""Checkpoints: z1 policy directories, exact-resume training state, and import of real pi0.5 files.

Everything is safetensors (tensors) + JSON (config, stats, metadata); nothing is pickled. Directories are
written atomically: into a hidden temporary sibling, every file and the directory fsynced, then renamed
into place (an existing checkpoint is renamed aside first and deleted only after the new one is in).

z1 checkpoint directory:
    model.safetensors   the Pi05Policy state dict (z1 names)
    config.json         {"z1_version", "preset", "policy": PolicyConfig as nested JSON}
    norm_stats.json     Normalization.to_json() (optional)
    extra.json          free-form JSON (optional)

Training-state directory (`save_train_state`): train_state.safetensors + train_state.json with the
optimizer state flattened, extra tensors, RNG states and user metadata.

The import of openpi / LeRobot pi0.5 files (`import_pi05`, `import_cli`) lives in `z1.models.pi05_import`
and is reachable from here too. The source's preprocessing conventions (`z1.types.Conventions`) travel in
norm_stats.json with the statistics they belong to.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import types
import typing
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

import z1
from z1.config import PolicyConfig
from z1.errors import Z1Error
from z1.models import pi05_keys as K
from z1.models.pi05 import Pi05Policy
from z1.types import Conventions, Normalization

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
NORM_FILE = "norm_stats.json"
TOKENIZER_FILE = "tokenizer.model"
EXTRA_FILE = "extra.json"
TRAIN_TENSORS = "train_state.safetensors"
TRAIN_JSON = "train_state.json"

ProgressFn = Callable[[int, int, str], None]  # (done, total, key)


class CheckpointError(Z1Error, ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


@dataclass
class LoadedCheckpoint:
    model: Pi05Policy
    config: PolicyConfig
    norm: Normalization | None
    extra: dict[str, Any]
    tokenizer_path: Path | None = None
    """The SentencePiece file stored with the checkpoint (real pi0.5 needs it), or None."""

    @property
    def conventions(self) -> Conventions:
        """The preprocessing rules of the framework that trained the checkpoint (openpi defaults if the
        checkpoint does not record them)."""
        if self.norm is not None:
            return self.norm.conventions
        return Conventions.from_json(self.extra.get("conventions") or {})


# ------------------------------------------------------------------------------------ config JSON
def policy_config_to_json(config: PolicyConfig) -> dict[str, Any]:
    """Nested frozen dataclasses -> plain JSON (tuples become lists)."""
    return json.loads(json.dumps(asdict(config)))


def _from_json(cls: type, data: Mapping[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise CheckpointError(
            f"{where}: unknown field(s) {unknown} for {cls.__name__}; known: {sorted(names)}"
        )
    kw: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in data:
            continue  # the dataclass default
        kw[f.name] = _coerce(hints[f.name], data[f.name], f"{where}.{f.name}")
    return cls(**kw)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    if isinstance(tp, type) and is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise CheckpointError(f"{where}: expected an object for {tp.__name__}, got {value!r}")
        return _from_json(tp, value, where)
    origin = typing.get_origin(tp)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise CheckpointError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        return tuple(_coerce(inner, v, where) for v in value)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None
        for a in args:
            try:
                return _coerce(a, value, where)
            except CheckpointError:
                continue
        raise CheckpointError(f"{where}: {value!r} is not a {tp}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise CheckpointError(f"{where}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise CheckpointError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CheckpointError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CheckpointError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise CheckpointError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def policy_config_from_json(data: Mapping[str, Any], where: str = "policy") -> PolicyConfig:
    """Inverse of `policy_config_to_json` (tuples restored, missing fields take their defaults; a field of
    the wrong type is a CheckpointError naming it)."""
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{where}: expected an object, got {type(data).__name__}")
    try:
        return _from_json(PolicyConfig, data, where)
    except CheckpointError:
        raise
    except (ValueError, TypeError) as e:  # PolicyConfig's own checks
        raise CheckpointError(f"{where}: {e}") from e


# --------------------------------------------------------------------------------- atomic writes
def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, allow_nan=False)
        fh.write("\n")


def _tag_pid(name: str) -> int | None:
    """The writer's pid in a `.NAME.tmp-PID-HEX` / `.NAME.old-PID-HEX` sibling (None: an older format)."""
    tag = name.rsplit(".", 1)[-1].partition("-")[2]
    pid, sep, _ = tag.partition("-")
    return int(pid) if sep and pid.isdigit() else None


def _writer_alive(pid: int | None) -> bool:
    if pid is None or pid == os.getpid():
        return pid == os.getpid()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def recover_directory(path: str | Path) -> list[str]:
    """Repair what a killed `atomic_directory` left next to `path`; returns what was done (for logs).

    A crash between its two renames leaves only `.NAME.old-*` (the previous, complete directory): it is
    renamed back to `path`. Temporary `.NAME.tmp-*` copies and `.NAME.old-*` copies next to an intact
    `path` are deleted. Siblings of a writer that is still running are left alone."""
    dst = Path(path).expanduser().absolute()
    if not dst.parent.is_dir():
        return []
    done: list[str] = []
    olds = [
        p for p in dst.parent.glob(f".{dst.name}.old-*") if p.is_dir() and not _writer_alive(_tag_pid(p.name))
    ]
    if not dst.exists() and olds:
        newest = max(olds, key=lambda p: p.stat().st_mtime)
        os.replace(newest, dst)
        _fsync_dir(dst.parent)
        olds.remove(newest)
        done.append(f"restored {dst} from {newest.name} (a save was interrupted)")
    stale = olds + [
        p for p in dst.parent.glob(f".{dst.name}.tmp-*") if p.is_dir() and not _writer_alive(_tag_pid(p.name))
    ]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
        done.append(f"removed {p.name} (left by an interrupted save)")
    return done


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success fsync it and move it to `path` (replacing any old
    directory there); on failure delete it and leave `path` untouched. What an earlier killed write left
    behind is repaired first (`recover_directory`)."""
    dst = Path(path).expanduser().absolute()
    dst.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(dst)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = dst.parent / f".{dst.name}.tmp-{tag}"
    tmp.mkdir()
    try:
        yield tmp
        for d, _, files in os.walk(tmp, topdown=False):
            for name in files:
                _fsync_file(Path(d) / name)
            _fsync_dir(Path(d))
        if dst.exists():
            old = dst.parent / f".{dst.name}.old-{tag}"
            os.replace(dst, old)
            try:
                os.replace(tmp, dst)
            except BaseException:
                os.replace(old, dst)  # put the previous checkpoint back
                raise
            _fsync_dir(dst.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dst)
            _fsync_dir(dst.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (read in 8 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def _policy_sha256(preset: Any, policy: Any) -> str:
    text = json.dumps({"preset": preset, "policy": policy}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _read_json_file(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: {what} is not valid JSON ({e}); the file is damaged") from e


def _verify(path: Path, expected: str | None, what: str) -> None:
    if expected is None:
        return
    got = file_sha256(path)
    if got != expected:
        raise CheckpointError(
            f"{path}: content differs from the hash recorded when the checkpoint was saved ({what}); "
            "the file is damaged or was changed. Restore it from a copy, or re-create the checkpoint"
        )


def _missing_dir_error(path: Path, what: str) -> CheckpointError:
    leftovers = (
        sorted(p.name for p in path.parent.glob(f".{path.name}.old-*")) if path.parent.exists() else []
    )
    hint = (
        f" A previous version survives as {leftovers} (an interrupted save); "
        f"rename it to {path.name} to use it."
        if leftovers
        else ""
    )
    return CheckpointError(f"{what} not found: {path}.{hint}")


# ------------------------------------------------------------------------------ z1 checkpoints
def save_checkpoint(
    path: str | Path,
    model: Pi05Policy,
    norm: Normalization | None = None,
    extra: Mapping[str, Any] | None = None,
    *,
    train_state: TrainStateSpec | None = None,
    tokenizer: str | Path | None = None,
) -> Path:
    """Write a z1 checkpoint directory atomically. Returns its path.

    `tokenizer` (a SentencePiece file) is copied in as `tokenizer.model`, so every stage that loads the
    checkpoint (SFT, RL, eval) tokenizes prompts the way the checkpoint was trained; pass
    `loaded.tokenizer_path` along when re-saving a loaded checkpoint.

    With `train_state`, the optimizer/RNG state goes into the subdirectory `train_state.subdir` of the same
    directory in the same atomic rename, so the weights and the resume state can never disagree (a crash
    between two separate saves could leave new weights next to an old or missing train state). Read it
    back with `load_train_state(path / subdir, optimizer, ...)`.
    """
    config: PolicyConfig = model.config
    if tokenizer is not None and not Path(tokenizer).is_file():
        raise CheckpointError(f"tokenizer file not found: {tokenizer}")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_directory(path) as tmp:
        if tokenizer is not None:
            shutil.copyfile(tokenizer, tmp / TOKENIZER_FILE)
        save_file(tensors, str(tmp / MODEL_FILE), metadata={"format": "pt", "z1_version": z1.__version__})
        policy = policy_config_to_json(config)
        hashes = {MODEL_FILE: file_sha256(tmp / MODEL_FILE), "policy": _policy_sha256(config.name, policy)}
        if norm is not None:
            _write_json(tmp / NORM_FILE, norm.to_json())
            hashes[NORM_FILE] = file_sha256(tmp / NORM_FILE)
        _write_json(
            tmp / CONFIG_FILE,
            {"z1_version": z1.__version__, "preset": config.name, "policy": policy, "sha256": hashes},
        )
        if extra is not None:
            _write_json(tmp / EXTRA_FILE, dict(extra))
        if train_state is not None:
            sub = tmp / train_state.subdir
            sub.mkdir(parents=True)
            _write_train_state_files(sub, train_state)
    return Path(path)


def _read_config_doc(p: Path, check_policy: bool = True) -> dict[str, Any]:
    if not p.exists():
        recover_directory(p)  # a save killed between its two renames leaves only .NAME.old-*
    if not (p / CONFIG_FILE).is_file():
        if not p.exists():
            raise _missing_dir_error(p.absolute(), "z1 checkpoint")
        if not p.is_dir():
            raise CheckpointError(f"{p} is a file, not a z1 checkpoint directory")
        raise CheckpointError(
            f"{p} has no {CONFIG_FILE}; is it a z1 checkpoint? (use `z1 import` for pi0.5 files)"
        )
    data = _read_json_file(p / CONFIG_FILE, "the checkpoint config")
    if not isinstance(data, dict) or "policy" not in data:
        raise CheckpointError(
            f"{p / CONFIG_FILE} has no 'policy' entry; it is not a z1 config "
            "(openpi/LeRobot: use `z1 import`)"
        )
    if check_policy:
        _check_policy_hash(p, data)
    return data


def _check_policy_hash(p: Path, data: dict[str, Any]) -> None:
    expected = (data.get("sha256") or {}).get("policy") if isinstance(data.get("sha256"), dict) else None
    if expected is not None and _policy_sha256(data.get("preset"), data["policy"]) != expected:
        raise CheckpointError(
            f"{p / CONFIG_FILE}: field 'policy' differs from the one saved with the weights (its hash does "
            "not match): the file was edited. The weights were trained with the saved geometry; restore "
            "config.json, or re-create the checkpoint"
        )


def read_config(path: str | Path) -> PolicyConfig:
    """The PolicyConfig of a z1 checkpoint directory."""
    p = Path(path).expanduser()
    data = _read_config_doc(p)
    return policy_config_from_json(data["policy"], f"{p / CONFIG_FILE}: field 'policy'")


def load_checkpoint(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    verify: bool = True,
) -> LoadedCheckpoint:
    """Load a z1 checkpoint. `dtype=None` keeps the stored dtypes of the float tensors.

    `verify`: compare the files with the SHA-256 hashes recorded at save time (checkpoints written before
    z1 recorded them load without the check)."""
    p = Path(path).expanduser()
    doc = _read_config_doc(p, check_policy=False)  # checked after the shapes (a clearer message first)
    config = policy_config_from_json(doc["policy"], f"{p / CONFIG_FILE}: field 'policy'")
    hashes = doc.get("sha256") if isinstance(doc.get("sha256"), dict) else {}
    if not (p / MODEL_FILE).is_file():
        raise CheckpointError(f"{p / MODEL_FILE}: file is missing; the checkpoint is incomplete")
    if verify:
        _verify(p / MODEL_FILE, hashes.get(MODEL_FILE), "weights")
        if (p / NORM_FILE).is_file():
            _verify(p / NORM_FILE, hashes.get(NORM_FILE), "normalization statistics")
    norm = None
    if (p / NORM_FILE).is_file():
        try:
            norm = Normalization.from_json(_read_json_file(p / NORM_FILE, "the normalization statistics"))
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{p / NORM_FILE}: cannot read the normalization statistics ({e})") from e
    extra = _read_json_file(p / EXTRA_FILE, "extra.json") if (p / EXTRA_FILE).is_file() else {}
    try:
        with safe_open(str(p / MODEL_FILE), framework="pt") as f:
            keys = list(f.keys())
            source = {k: k for k in keys}
            model = _materialize(config, f, source, map_location, dtype, what=str(p / MODEL_FILE))
    except SafetensorError as e:
        raise CheckpointError(
            f"{p / MODEL_FILE}: not a readable safetensors file ({e}); it is truncated, damaged or in "
            "another format (a pickled .pt/.bin renamed?)"
        ) from e
    _check_policy_hash(p, doc)
    tok = p / TOKENIZER_FILE
    return LoadedCheckpoint(
        model=model, config=config, norm=norm, extra=extra, tokenizer_path=tok if tok.is_file() else None
    )


def _materialize(
    config: PolicyConfig,
    f: Any,
    source: Mapping[str, str],
    device: str | torch.device,
    dtype: torch.dtype | None,
    what: str,
    progress: ProgressFn | None = None,
) -> Pi05Policy:
    """Build Pi05Policy(config) without initializing it and fill it tensor by tensor.

    source: {z1 name: key in the safetensors file `f`}. Every parameter/buffer must be present with the
    right shape (checked before any memory is allocated).
    """
    with torch.device("meta"):
        model = Pi05Policy(config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in source]
    unexpected = [k for k in source if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"{what} does not fit the {config.name!r} model: {len(missing)} missing key(s)"
            + (f", first {missing[0]!r} (file name {_file_name_hint(missing[0])})" if missing else "")
            + f"; {len(unexpected)} unexpected key(s)"
            + (f", first {source[unexpected[0]]!r}" if unexpected else "")
            + ". Is the config right for this file?"
        )
    for k, t in expected.items():
        shape = tuple(f.get_slice(source[k]).get_shape())
        if shape != tuple(t.shape):
            raise CheckpointError(
                f"{what}: tensor {source[k]!r} (z1 {k!r}) has shape {shape} but the {config.name!r} model "
                f"expects "
                f"{tuple(t.shape)}"
            )
    if dtype is not None:
        model = model.to(dtype)
    model = model.to_empty(device=device)
    params = dict(model.named_parameters())
    params.update(dict(model.named_buffers()))
    total = len(expected)
    with torch.no_grad():
        for n, k in enumerate(expected):
            t = f.get_tensor(source[k])
            dst = params[k]
            if dtype is None and t.dtype != dst.dtype and t.is_floating_point():
                dst.data = torch.empty_like(dst, dtype=t.dtype)
            dst.copy_(t)
            del t
            if progress is not None:
                progress(n + 1, total, k)
    return model


def _file_name_hint(z1_name: str) -> str:
    try:
        return repr(K.z1_to_openpi(z1_name))
    except KeyError:
        return "unknown"


# --------------------------------------------------------------------------------- train state
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
    _write_json(directory / TRAIN_JSON, doc)


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
        raise _missing_dir_error(p.absolute(), "training state")
    doc = _read_json_file(p / TRAIN_JSON, "the training state")
    if not (p / TRAIN_TENSORS).is_file():
        raise CheckpointError(f"{p / TRAIN_TENSORS}: file is missing; the training state is incomplete")
    _verify(p / TRAIN_TENSORS, (doc.get("sha256") or {}).get(TRAIN_TENSORS), "optimizer and RNG state")
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


# ----------------------------------------------------------------------------------- pi0.5 import
_IMPORT_NAMES = ("KeyPlan", "import_cli", "import_pi05", "import_summary", "infer_policy_config", "plan_keys")


def __getattr__(name: str) -> Any:
    """The pi0.5 import lives in `z1.models.pi05_import` (it builds on this module); its names stay
    reachable from here."""
    if name in _IMPORT_NAMES:
        from z1.models import pi05_import

        return getattr(pi05_import, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
