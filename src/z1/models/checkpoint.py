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

pi0.5 import (`import_pi05`, pi05.md §5.2-5.3): openpi-PyTorch (`model.safetensors` + `config.json` +
`assets/*/norm_stats.json`) or LeRobot (`model.safetensors`, maybe `model.`-prefixed, `config.json` with
"type": "pi05", `*normalizer_processor.safetensors`). Tensors are read one at a time.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import types
import typing
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import z1
from z1.config import GemmaConfig, PolicyConfig, VisionConfig, policy_preset
from z1.models import pi05_keys as K
from z1.models.pi05 import Pi05Policy
from z1.types import FeatureStats, Normalization

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
NORM_FILE = "norm_stats.json"
TOKENIZER_FILE = "tokenizer.model"
EXTRA_FILE = "extra.json"
TRAIN_TENSORS = "train_state.safetensors"
TRAIN_JSON = "train_state.json"

ProgressFn = Callable[[int, int, str], None]  # (done, total, key)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


@dataclass
class LoadedCheckpoint:
    model: Pi05Policy
    config: PolicyConfig
    norm: Normalization | None
    extra: dict[str, Any]
    tokenizer_path: Path | None = None
    """The SentencePiece file stored with the checkpoint (real pi0.5 needs it), or None."""


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
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        return tuple(_coerce(inner, v, where) for v in value)
    if origin in (typing.Union, types.UnionType):
        return value
    if tp is float and isinstance(value, int):
        return float(value)
    return value


def policy_config_from_json(data: Mapping[str, Any]) -> PolicyConfig:
    """Inverse of `policy_config_to_json` (tuples restored, missing fields take their defaults)."""
    return _from_json(PolicyConfig, data, "policy")


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


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success fsync it and move it to `path` (replacing any old
    directory there); on failure delete it and leave `path` untouched."""
    dst = Path(path).expanduser().absolute()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
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
        _write_json(
            tmp / CONFIG_FILE,
            {"z1_version": z1.__version__, "preset": config.name, "policy": policy_config_to_json(config)},
        )
        if norm is not None:
            _write_json(tmp / NORM_FILE, norm.to_json())
        if extra is not None:
            _write_json(tmp / EXTRA_FILE, dict(extra))
        if train_state is not None:
            sub = tmp / train_state.subdir
            sub.mkdir(parents=True)
            _write_train_state_files(sub, train_state)
    return Path(path)


def read_config(path: str | Path) -> PolicyConfig:
    """The PolicyConfig of a z1 checkpoint directory."""
    p = Path(path).expanduser()
    if not (p / CONFIG_FILE).is_file():
        if not p.exists():
            raise _missing_dir_error(p.absolute(), "z1 checkpoint")
        raise CheckpointError(
            f"{p} has no {CONFIG_FILE}; is it a z1 checkpoint? (use import_pi05 for pi0.5 files)"
        )
    data = json.loads((p / CONFIG_FILE).read_text())
    if "policy" not in data:
        raise CheckpointError(
            f"{p / CONFIG_FILE} has no 'policy' entry; it is not a z1 config "
            "(openpi/LeRobot: use import_pi05)"
        )
    return policy_config_from_json(data["policy"])


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> LoadedCheckpoint:
    """Load a z1 checkpoint. `dtype=None` keeps the stored dtypes of the float tensors."""
    p = Path(path).expanduser()
    config = read_config(p)
    norm = (
        Normalization.from_json(json.loads((p / NORM_FILE).read_text()))
        if (p / NORM_FILE).is_file()
        else None
    )
    extra = json.loads((p / EXTRA_FILE).read_text()) if (p / EXTRA_FILE).is_file() else {}
    with safe_open(str(p / MODEL_FILE), framework="pt") as f:
        keys = list(f.keys())
        source = {k: k for k in keys}
        model = _materialize(config, f, source, map_location, dtype, what=str(p / MODEL_FILE))
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
    doc = json.loads((p / TRAIN_JSON).read_text())
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
    with safe_open(str(p / TRAIN_TENSORS), framework="pt") as f:

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
@dataclass(frozen=True)
class KeyPlan:
    """How the keys of a pi0.5 file map onto z1: {z1 name: file key}, plus what is skipped or unknown."""

    source: dict[str, str]
    skipped: dict[str, str]  # file key -> reason
    unexpected: list[str]
    prefixed: bool  # LeRobot `model.` prefix present


def plan_keys(file_keys: list[str]) -> KeyPlan:
    """Map the keys of an openpi/LeRobot pi0.5 safetensors file to z1 names (pi05.md §5.2-5.3)."""
    canon: dict[str, str] = {}
    for k in file_keys:
        c = K.canonical_openpi_key(k)
        if c in canon:
            raise CheckpointError(f"keys {canon[c]!r} and {k!r} both map to {c!r}; the file mixes layouts")
        canon[c] = k
    is_pi05 = "time_mlp_in.weight" in canon or any(c.endswith("input_layernorm.dense.weight") for c in canon)
    if not is_pi05:
        if "state_proj.weight" in canon or "action_time_mlp_in.weight" in canon:
            raise CheckpointError(
                "this is a pi0 checkpoint (it has state_proj / action_time_mlp_in and no adaRMS norms); "
                "pi0 is not supported, only pi0.5"
            )
        raise CheckpointError(
            "not a pi0.5 checkpoint: found neither 'time_mlp_in.weight' nor '*input_layernorm.dense.weight' "
            f"(first keys: {sorted(canon)[:3]})"
        )
    source: dict[str, str] = {}
    skipped: dict[str, str] = {}
    unexpected: list[str] = []
    for c, k in canon.items():
        z = K.openpi_to_z1(c)
        if z is not None:
            source[z] = k
            continue
        if c == K.EXPERT_LM_HEAD:
            skipped[k] = "dead weight: the action expert has no embedder"
        elif c == K.TIED_LM_HEAD:
            skipped[k] = "tied embedding (used for embed_tokens when that key is absent)"
        elif c.startswith(("action_time_mlp_in.", "action_time_mlp_out.")):
            alias = "time_mlp_in." if c.startswith("action_time_mlp_in.") else "time_mlp_out."
            alias += c.rsplit(".", 1)[1]
            if alias in canon:
                skipped[k] = f"superseded by {alias}"
            else:
                source[K.openpi_to_z1(alias) or alias] = k  # older LeRobot name of the pi0.5 time MLP
        elif c.startswith("state_proj."):
            skipped[k] = "pi0 state projection, unused by pi0.5"
        elif c.startswith(f"{K.EXP}.") and c.endswith(
            ("input_layernorm.weight", "post_attention_layernorm.weight")
        ):
            skipped[k] = "plain norm weight of the expert; pi0.5 uses the adaRMS dense"
        elif c == f"{K.EXP}.norm.weight":
            skipped[k] = "plain final norm of the expert; pi0.5 uses the adaRMS dense"
        else:
            unexpected.append(k)
    if "embed_tokens.weight" not in source and K.TIED_LM_HEAD in canon:
        source["embed_tokens.weight"] = canon[K.TIED_LM_HEAD]
        skipped.pop(canon[K.TIED_LM_HEAD], None)
    prefixed = any(k.startswith("model.") for k in file_keys)
    return KeyPlan(source=source, skipped=skipped, unexpected=sorted(unexpected), prefixed=prefixed)


def _shape(shapes: Mapping[str, tuple[int, ...]], plan: KeyPlan, z1_name: str) -> tuple[int, ...]:
    if z1_name not in plan.source:
        raise CheckpointError(
            f"pi0.5 file lacks {K.z1_to_openpi(z1_name)!r} (z1 {z1_name!r}); cannot infer the model geometry"
        )
    return shapes[plan.source[z1_name]]


def infer_policy_config(
    shapes: Mapping[str, tuple[int, ...]],
    plan: KeyPlan,
    *,
    base: PolicyConfig | None = None,
    action_horizon: int | None = None,
) -> PolicyConfig:
    """The PolicyConfig whose parameter shapes match the file. Head counts cannot be read from shapes: they
    come from `base` (default: the pi05 preset; openpi's PyTorch port hard-codes 8 Gemma heads)."""
    base = base or policy_preset("pi05")
    names = list(plan.source)

    def sh(n: str) -> tuple[int, ...]:
        return _shape(shapes, plan, n)

    pe = sh("vision.patch_embed.weight")  # (w, 3, patch, patch)
    pos = sh("vision.pos_embed")  # (t, w)
    vw, patch, tpc = pe[0], pe[2], pos[0]
    side = math.isqrt(tpc)
    if side * side != tpc:
        raise CheckpointError(f"vision position embedding has {tpc} tokens, not a square grid")
    vheads = next(
        h
        for h in (base.vision.num_heads, vw // 72 if vw % 72 == 0 else 0, 16, 8, 4, 2, 1)
        if h and vw % h == 0
    )
    vision = VisionConfig(
        width=vw,
        depth=K.layer_count(names, "vision.blocks"),
        mlp_dim=sh("vision.blocks.0.mlp.fc1.weight")[0],
        num_heads=vheads,
        patch=patch,
        image_size=side * patch,
    )

    def gemma(stream: str, b: GemmaConfig) -> GemmaConfig:
        q = sh(f"layers.0.{stream}.attn.q.weight")  # (heads*hd, w)
        kk = sh(f"layers.0.{stream}.attn.k.weight")  # (kv*hd, w)
        heads = b.num_heads
        if q[0] % heads:
            raise CheckpointError(f"{stream} q_proj has {q[0]} outputs, not divisible by {heads} heads")
        hd = q[0] // heads
        if kk[0] % hd:
            raise CheckpointError(f"{stream} k_proj has {kk[0]} outputs, not a multiple of head_dim {hd}")
        return GemmaConfig(
            width=q[1],
            depth=K.layer_count(names, "layers"),
            mlp_dim=sh(f"layers.0.{stream}.mlp.gate.weight")[0],
            num_heads=heads,
            num_kv_heads=kk[0] // hd,
            head_dim=hd,
        )

    cfg = replace(
        base,
        vision=vision,
        vlm=gemma("vlm", base.vlm),
        expert=gemma("expert", base.expert),
        vocab_size=sh("embed_tokens.weight")[0],
        action_dim=sh("action_in_proj.weight")[1],
        action_horizon=action_horizon if action_horizon is not None else base.action_horizon,
    )
    preset = policy_preset("pi05")
    geometry = ("vision", "vlm", "expert", "vocab_size", "action_dim")
    same = all(getattr(cfg, g) == getattr(preset, g) for g in geometry)
    return replace(cfg, name="pi05" if same else f"{base.name}-imported")


def _stats_from_arrays(d: Mapping[str, np.ndarray], dim: int | None) -> tuple[FeatureStats, list[str]]:
    n = dim
    if n is None:
        n = next(len(np.asarray(v).reshape(-1)) for v in d.values())
    filler = {"mean": 0.0, "std": 1.0, "q01": -1.0, "q99": 1.0}
    out, missing = {}, []
    for k, fill in filler.items():
        if k in d and d[k] is not None:
            v = np.asarray(d[k], dtype=np.float32).reshape(-1)
            if len(v) < n:
                raise CheckpointError(f"norm stat {k!r} has {len(v)} dims but {n} are needed")
            out[k] = v[:n]
        else:
            out[k] = np.full(n, fill, dtype=np.float32)
            missing.append(k)
    return FeatureStats(**out), missing


def _openpi_norm(path: Path, state_dim: int | None, action_dim: int | None) -> tuple[Normalization, dict]:
    data = json.loads(path.read_text())
    stats = data.get("norm_stats", data)
    if "state" not in stats or "actions" not in stats:
        raise CheckpointError(f"{path}: expected norm_stats with 'state' and 'actions', got {sorted(stats)}")
    st, ms = _stats_from_arrays(stats["state"], state_dim)
    ac, ma = _stats_from_arrays(stats["actions"], action_dim)
    mode = "quantile" if not ({"q01", "q99"} & set(ms + ma)) else "meanstd"
    info = {"norm_source": str(path), "norm_missing": {"state": ms, "action": ma}}
    return Normalization(state=st, action=ac, mode=mode), info


def _lerobot_norm(
    files: list[Path], lr_config: Mapping[str, Any], state_dim: int | None, action_dim: int | None
) -> tuple[Normalization, dict]:
    arrays: dict[str, np.ndarray] = {}
    for fp in sorted(files, key=lambda q: ("unnormalizer" in q.name, q.name)):  # preprocessor first
        with safe_open(str(fp), framework="pt") as f:
            for k in f.keys():  # noqa: SIM118
                arrays.setdefault(k, f.get_tensor(k).float().numpy())

    def feature(prefix: str, dim: int | None) -> tuple[FeatureStats, list[str]]:
        d = {s: arrays.get(f"{prefix}.{s}") for s in ("mean", "std", "q01", "q99")}
        if all(v is None for v in d.values()):
            raise CheckpointError(
                f"LeRobot normalizer files {[f.name for f in files]} have no '{prefix}.*' stats"
            )
        return _stats_from_arrays({k: v for k, v in d.items() if v is not None}, dim)

    st, ms = feature("observation.state", state_dim)
    ac, ma = feature("action", action_dim)
    mapping = lr_config.get("normalization_mapping") or {}
    modes = {k: str(v).upper() for k, v in mapping.items() if k in ("STATE", "ACTION")}
    want = modes.get("ACTION", "QUANTILES")
    if modes.get("STATE", want) != want:
        warnings.warn(
            f"LeRobot config normalizes STATE with {modes['STATE']} and ACTION with {want}; z1 uses one mode "
            f"for both and takes the action's",
            stacklevel=3,
        )
    mode = "meanstd" if want == "MEAN_STD" else "quantile"
    if want not in ("MEAN_STD", "QUANTILES"):
        raise CheckpointError(
            f"LeRobot ACTION normalization {want!r} is not supported (QUANTILES or MEAN_STD)"
        )
    info = {"norm_source": [str(f) for f in files], "norm_missing": {"state": ms, "action": ma}}
    return Normalization(state=st, action=ac, mode=mode), info


def _lerobot_dims(lr: Mapping[str, Any]) -> tuple[int | None, int | None, list[str]]:
    def dim(group: str, name: str) -> int | None:
        feat = (lr.get(group) or {}).get(name) or {}
        shape = feat.get("shape")
        return int(shape[0]) if shape else None

    cams = [
        n.removeprefix("observation.images.")
        for n, feat in (lr.get("input_features") or {}).items()
        if str(feat.get("type", "")).upper() == "VISUAL"
    ]
    cams += [f"empty_camera_{i}" for i in range(int(lr.get("empty_cameras", 0) or 0))]
    return dim("input_features", "observation.state"), dim("output_features", "action"), cams


def import_pi05(
    path: str | Path,
    *,
    action_horizon: int | None = None,
    norm_stats: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    base: PolicyConfig | None = None,
    strict: bool = True,
    progress: ProgressFn | None = None,
) -> LoadedCheckpoint:
    """Import an openpi-PyTorch or LeRobot pi0.5 checkpoint (a directory or its model.safetensors).

    action_horizon: overrides the file's (openpi config.json `action_horizon`, LeRobot `chunk_size`).
    norm_stats: an openpi norm_stats.json or a LeRobot *normalizer_processor.safetensors; by default found
        next to the weights (assets/*/norm_stats.json, or *normalizer_processor.safetensors).
    base: supplies what shapes cannot tell (head counts, cameras, tokenizer); default the pi05 preset.
    strict: unknown tensors in the file are an error (else a warning).
    """
    p = Path(path).expanduser()
    root, weights = (p.parent, p) if p.is_file() else (p, p / MODEL_FILE)
    if not weights.is_file():
        raise CheckpointError(f"no {MODEL_FILE} in {root}; pass the checkpoint directory or the weights file")
    cfg_json: dict[str, Any] = {}
    if (root / CONFIG_FILE).is_file():
        cfg_json = json.loads((root / CONFIG_FILE).read_text())
    is_lerobot = cfg_json.get("type") is not None
    if is_lerobot and cfg_json.get("type") != "pi05":
        raise CheckpointError(
            f"{root / CONFIG_FILE} is a LeRobot {cfg_json.get('type')!r} policy; only pi05 is supported"
        )
    if "policy" in cfg_json and "z1_version" in cfg_json:
        raise CheckpointError(f"{root} is already a z1 checkpoint; use load_checkpoint")

    base = base or policy_preset("pi05")
    state_dim: int | None = None
    real_action_dim: int | None = None
    if is_lerobot:
        state_dim, real_action_dim, cams = _lerobot_dims(cfg_json)
        over: dict[str, Any] = {}
        if cams:
            over["cameras"] = tuple(cams)
        for ours, theirs in (
            ("max_token_len", "tokenizer_max_length"),
            ("min_period", "min_period"),
            ("max_period", "max_period"),
        ):
            if cfg_json.get(theirs) is not None:
                over[ours] = type(getattr(base, ours))(cfg_json[theirs])
        if cfg_json.get("chunk_size") is not None:
            over["action_horizon"] = int(cfg_json["chunk_size"])
        res = cfg_json.get("image_resolution")
        if res and res[0] != res[1]:
            raise CheckpointError(f"non-square image_resolution {res} is not supported")
        base = replace(base, **over)
    elif cfg_json.get("action_horizon") is not None:
        base = replace(base, action_horizon=int(cfg_json["action_horizon"]))

    with safe_open(str(weights), framework="pt") as f:
        file_keys = list(f.keys())
        plan = plan_keys(file_keys)
        if plan.unexpected:
            msg = (
                f"{weights}: {len(plan.unexpected)} tensor(s) with no z1 counterpart, first "
                f"{plan.unexpected[0]!r}"
                + (f" (all: {plan.unexpected[:8]}...)" if len(plan.unexpected) > 1 else "")
            )
            if strict:
                raise CheckpointError(msg + "; pass strict=False to ignore them")
            warnings.warn(msg, stacklevel=2)
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in plan.source.values()}
        config = infer_policy_config(shapes, plan, base=base, action_horizon=action_horizon)
        model = _materialize(config, f, plan.source, "cpu", dtype, what=str(weights), progress=progress)

    norm, norm_info = None, {}
    if norm_stats is not None:
        ns = Path(norm_stats).expanduser()
        if not ns.is_file():
            raise CheckpointError(f"norm_stats file not found: {ns}")
        if ns.suffix == ".safetensors":
            norm, norm_info = _lerobot_norm([ns], cfg_json, state_dim, real_action_dim)
        else:
            norm, norm_info = _openpi_norm(ns, state_dim, real_action_dim)
    else:
        lr_files = sorted(root.glob("*normalizer_processor.safetensors"))
        op_files = sorted(root.glob("assets/*/norm_stats.json"))
        if lr_files:
            norm, norm_info = _lerobot_norm(lr_files, cfg_json, state_dim, real_action_dim)
        elif len(op_files) == 1:
            norm, norm_info = _openpi_norm(op_files[0], state_dim, real_action_dim)
        elif len(op_files) > 1:
            raise CheckpointError(
                f"{root} has several norm stats {[str(q.relative_to(root)) for q in op_files]}; "
                "choose one with "
                "norm_stats=..."
            )
    extra = {
        "source": "lerobot" if (is_lerobot or plan.prefixed) else "openpi",
        "source_path": str(weights),
        "real_action_dim": real_action_dim
        if real_action_dim is not None
        else (len(norm.action.q01) if norm else None),
        "real_state_dim": state_dim if state_dim is not None else (len(norm.state.q01) if norm else None),
        "skipped_keys": plan.skipped,
        "unexpected_keys": plan.unexpected,
        **norm_info,
    }
    return LoadedCheckpoint(model=model, config=config, norm=norm, extra=extra)


def import_cli(
    src: str | Path,
    dst: str | Path,
    *,
    action_horizon: int | None = None,
    norm_stats: str | Path | None = None,
    tokenizer: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    show_progress: bool = True,
) -> LoadedCheckpoint:
    """`z1 import`: import a pi0.5 checkpoint and save it as a z1 checkpoint, with a progress bar.

    `tokenizer`: PaliGemma's SentencePiece `tokenizer.model`, stored in the checkpoint (real pi0.5
    configs tokenize with it; without it the checkpoint could not act).
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(
        TextColumn("[bold]importing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
        disable=not show_progress,
    ) as bar:
        task = bar.add_task("", total=None)

        def step(done: int, total: int, key: str) -> None:
            bar.update(task, completed=done, total=total, description=key)

        ck = import_pi05(
            src, action_horizon=action_horizon, norm_stats=norm_stats, dtype=dtype, progress=step
        )
        if ck.config.tokenizer == "sentencepiece":
            if tokenizer is None:
                raise CheckpointError(
                    f"{src}: this pi0.5 tokenizes prompts with SentencePiece; pass --tokenizer PATH to "
                    "PaliGemma's tokenizer.model (openpi caches it at "
                    "~/.cache/openpi/big_vision/paligemma_tokenizer.model)"
                )
            from z1.models.tokenizer import make_tokenizer

            make_tokenizer(ck.config, tokenizer)  # fails now, naming the file, if it does not fit the model
        bar.update(task, description=f"saving {dst}")
        save_checkpoint(dst, ck.model, ck.norm, {**ck.extra, "imported_from": str(src)}, tokenizer=tokenizer)
    n = sum(t.numel() for t in ck.model.parameters())
    console.print(
        f"imported {ck.extra['source']} pi0.5 ({n:,} params, config {ck.config.name!r}, horizon "
        f"{ck.config.action_horizon}, norm {'yes' if ck.norm else 'none'}) -> {dst}"
    )
    return ck
