"""The z1 checkpoint format: a policy directory written atomically, read back with every file checked.

Everything is safetensors (tensors) + JSON (config, stats, metadata); nothing is pickled. The directory is
written with `z1.fsutil.atomic_directory`, so a crash leaves the previous checkpoint or the new one, never a
mix. SHA-256 hashes of the files (and of the policy geometry) are recorded at save time, so a damaged or
edited file is reported by name instead of loading wrong weights.

z1 checkpoint directory:
    model.safetensors   the Pi05Policy state dict (z1 names)
    config.json         {"z1_version", "preset", "policy": PolicyConfig as nested JSON, "sha256"}
    norm_stats.json     Normalization.to_json() (optional)
    extra.json          free-form JSON (optional)
    tokenizer.model     the SentencePiece file (optional)
    train_state/        the training state (`z1.train.state`), saved in the same atomic rename (optional)

The source's preprocessing conventions (`z1.types.Conventions`) travel in norm_stats.json with the
statistics they belong to. The import of openpi / LeRobot pi0.5 files lives in `z1.models.pi05_import`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

import z1
from z1.config import PolicyConfig
from z1.fsutil import atomic_directory, file_sha256, interrupted_save_hint, recover_directory, write_json
from z1.models import pi05_keys as K
from z1.models.config_json import policy_config_from_json, policy_config_to_json
from z1.models.errors import CheckpointError
from z1.models.pi05 import Pi05Policy
from z1.types import Conventions, Normalization

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
NORM_FILE = "norm_stats.json"
TOKENIZER_FILE = "tokenizer.model"
EXTRA_FILE = "extra.json"

ProgressFn = Callable[[int, int, str], None]  # (done, total, key)


class CheckpointPart(Protocol):
    """Files saved in a subdirectory of a checkpoint in the same atomic rename as the weights: the training
    state (`z1.train.state.TrainStateSpec`). A protocol, so the model layer does not import train/."""

    @property
    def subdir(self) -> str: ...

    def write(self, directory: Path) -> None: ...


@dataclass
class LoadedCheckpoint:
    """A policy read from disk (`load_checkpoint`, or `import_pi05` before it is saved) with what was stored
    beside its weights."""

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


# ------------------------------------------------------------------------------ checked files
def _policy_sha256(preset: Any, policy: Any) -> str:
    text = json.dumps({"preset": preset, "policy": policy}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def read_json_file(path: Path, what: str) -> Any:
    """Parse a checkpoint's JSON file; a damaged one is a CheckpointError naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: {what} is not valid JSON ({e}); the file is damaged") from e


def verify_sha256(path: Path, expected: str | None, what: str) -> None:
    """CheckpointError unless the file hashes to `expected` (None: saved before z1 recorded hashes)."""
    if expected is None:
        return
    got = file_sha256(path)
    if got != expected:
        raise CheckpointError(
            f"{path}: content differs from the hash recorded when the checkpoint was saved ({what}); "
            "the file is damaged or was changed. Restore it from a copy, or re-create the checkpoint"
        )


def missing_dir_error(path: Path, what: str) -> CheckpointError:
    """The error for a missing checkpoint directory, naming a previous version an interrupted save left."""
    return CheckpointError(f"{what} not found: {path}.{interrupted_save_hint(path)}")


# ------------------------------------------------------------------------------ z1 checkpoints
def save_checkpoint(
    path: str | Path,
    model: Pi05Policy,
    norm: Normalization | None = None,
    extra: Mapping[str, Any] | None = None,
    *,
    train_state: CheckpointPart | None = None,
    tokenizer: str | Path | None = None,
) -> Path:
    """Write a z1 checkpoint directory atomically. Returns its path.

    `tokenizer` (a SentencePiece file) is copied in as `tokenizer.model`, so every stage that loads the
    checkpoint (SFT, RL, eval) tokenizes prompts the way the checkpoint was trained; pass
    `loaded.tokenizer_path` along when re-saving a loaded checkpoint.

    With `train_state`, the optimizer/RNG state goes into the subdirectory `train_state.subdir` of the same
    directory in the same atomic rename, so the weights and the resume state can never disagree (a crash
    between two separate saves could leave new weights next to an old or missing train state). Read it
    back with `z1.train.state.load_train_state(path / subdir, optimizer, ...)`.
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
            write_json(tmp / NORM_FILE, norm.to_json())
            hashes[NORM_FILE] = file_sha256(tmp / NORM_FILE)
        write_json(
            tmp / CONFIG_FILE,
            {"z1_version": z1.__version__, "preset": config.name, "policy": policy, "sha256": hashes},
        )
        if extra is not None:
            write_json(tmp / EXTRA_FILE, dict(extra))
        if train_state is not None:
            sub = tmp / train_state.subdir
            sub.mkdir(parents=True)
            train_state.write(sub)
    return Path(path)


def _read_config_doc(p: Path, check_policy: bool = True) -> dict[str, Any]:
    if not p.exists():
        recover_directory(p)  # a save killed between its two renames leaves only .NAME.old-*
    if not (p / CONFIG_FILE).is_file():
        if not p.exists():
            raise missing_dir_error(p.absolute(), "z1 checkpoint")
        if not p.is_dir():
            raise CheckpointError(f"{p} is a file, not a z1 checkpoint directory")
        raise CheckpointError(
            f"{p} has no {CONFIG_FILE}; is it a z1 checkpoint? (use `z1 import` for pi0.5 files)"
        )
    data = read_json_file(p / CONFIG_FILE, "the checkpoint config")
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
        verify_sha256(p / MODEL_FILE, hashes.get(MODEL_FILE), "weights")
        if (p / NORM_FILE).is_file():
            verify_sha256(p / NORM_FILE, hashes.get(NORM_FILE), "normalization statistics")
    norm = None
    if (p / NORM_FILE).is_file():
        try:
            norm = Normalization.from_json(read_json_file(p / NORM_FILE, "the normalization statistics"))
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{p / NORM_FILE}: cannot read the normalization statistics ({e})") from e
    extra = read_json_file(p / EXTRA_FILE, "extra.json") if (p / EXTRA_FILE).is_file() else {}
    try:
        with safe_open(str(p / MODEL_FILE), framework="pt") as f:
            keys = list(f.keys())
            source = {k: k for k in keys}
            model = materialize(config, f, source, map_location, dtype, what=str(p / MODEL_FILE))
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


def materialize(
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
