"""Import of real pi0.5 checkpoints (openpi PyTorch or LeRobot) as z1 policies.

Weights: openpi-PyTorch (`model.safetensors` + `config.json` + `assets/*/norm_stats.json`) or LeRobot
(`model.safetensors`, maybe `model.`-prefixed, `config.json` with "type": "pi05",
`policy_{pre,post}processor.json` and `*normalizer_processor.safetensors`). Tensors are read one at a time.

Conventions: the network is the same in both frameworks; what differs is everything around it. The import
records the source's rules as `z1.types.Conventions` inside the checkpoint's `Normalization`
(norm_stats.json), so SFT, RL and eval apply them alike:

    rule                    openpi                            LeRobot
    image resize            uint8, bilinear + antialias       float [0, 1], bilinear, no antialias
    normalization epsilon   q99 - q01 + 1e-6 (always)         eps only where q99 == q01 (`eps`, 1e-8)
    relative actions        not in the checkpoint             use_relative_actions, relative_exclude_joints
    denoise steps           10 (sample_actions default)       num_inference_steps
    camera names            fixed slots                       rename_observations_processor rename_map
    RoPE angles             positions / timescale             positions * inverse frequency (transformers)

Config fields whose effect z1 does not implement stop the import with an error naming the field;
`accept=(field, ...)` (`z1 import --accept FIELD`) imports anyway and records the accepted difference.
Fields that only matter to training or to the hub are recorded; fields z1 does not know are listed in the
summary and, when they look like a feature switch that is on (`use_*` true, `{"enabled": true}`), refused.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from z1.config import GemmaConfig, PolicyConfig, VisionConfig, policy_preset
from z1.models import pi05_keys as K
from z1.models.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    LoadedCheckpoint,
    ProgressFn,
    materialize,
    save_checkpoint,
)
from z1.models.errors import CheckpointError
from z1.types import Conventions, FeatureStats, Normalization

PRE_JSON = "policy_preprocessor.json"
POST_JSON = "policy_postprocessor.json"
IMAGE_PREFIX = "observation.images."
OPENPI_DENOISE_STEPS = 10  # openpi's sample_actions(num_steps=10)
LEROBOT_EPS = 1e-8  # LeRobot's NormalizerProcessorStep default eps


# ------------------------------------------------------------------------------------ key mapping
@dataclass(frozen=True)
class KeyPlan:
    """How the keys of a pi0.5 file map onto z1: {z1 name: file key}, plus what is skipped or unknown."""

    source: dict[str, str]
    skipped: dict[str, str]  # file key -> reason
    unexpected: list[str]
    prefixed: bool  # LeRobot `model.` prefix present


def plan_keys(file_keys: list[str]) -> KeyPlan:
    """Map the keys of an openpi/LeRobot pi0.5 safetensors file to z1 names (docs/model.md#key-mapping)."""
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


# -------------------------------------------------------------------------------- norm statistics
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


def _openpi_norm(
    path: Path, state_dim: int | None, action_dim: int | None, conventions: Conventions
) -> tuple[Normalization, dict]:
    data = json.loads(path.read_text())
    stats = data.get("norm_stats", data)
    if "state" not in stats or "actions" not in stats:
        raise CheckpointError(f"{path}: expected norm_stats with 'state' and 'actions', got {sorted(stats)}")
    st, ms = _stats_from_arrays(stats["state"], state_dim)
    ac, ma = _stats_from_arrays(stats["actions"], action_dim)
    mode = "quantile" if not ({"q01", "q99"} & set(ms + ma)) else "meanstd"
    info = {"norm_source": str(path), "norm_missing": {"state": ms, "action": ma}}
    return Normalization(state=st, action=ac, mode=mode, conventions=conventions), info


def _lerobot_norm(
    files: list[Path], mode: str, state_dim: int | None, action_dim: int | None, conventions: Conventions
) -> tuple[Normalization, dict]:
    """Stats from LeRobot normalizer files; the preprocessor's win (z1 keeps one set per feature)."""
    arrays: dict[str, np.ndarray] = {}
    post_actions: dict[str, np.ndarray] = {}
    for fp in sorted(files, key=lambda q: ("unnormalizer" in q.name, q.name)):  # preprocessor first
        with safe_open(str(fp), framework="pt") as f:
            for k in f.keys():  # noqa: SIM118
                v = f.get_tensor(k).float().numpy()
                arrays.setdefault(k, v)
                if "unnormalizer" in fp.name and k.startswith("action."):
                    post_actions[k] = v

    def feature(prefix: str, dim: int | None) -> tuple[FeatureStats, list[str]]:
        d = {s: arrays.get(f"{prefix}.{s}") for s in ("mean", "std", "q01", "q99")}
        if all(v is None for v in d.values()):
            raise CheckpointError(
                f"LeRobot normalizer files {[f.name for f in files]} have no '{prefix}.*' stats"
            )
        return _stats_from_arrays({k: v for k, v in d.items() if v is not None}, dim)

    st, ms = feature("observation.state", state_dim)
    ac, ma = feature("action", action_dim)
    differ = sorted(k for k, v in post_actions.items() if k in arrays and not np.array_equal(arrays[k], v))
    info = {
        "norm_source": [str(f) for f in files],
        "norm_missing": {"state": ms, "action": ma},
        "postprocessor_stats_differ": differ,
    }
    return Normalization(state=st, action=ac, mode=mode, conventions=conventions), info


# ------------------------------------------------------------------------------- LeRobot config
def _off(v: Any) -> bool:
    return v in (None, False, 0, "", [], {})


# Fields read into the z1 config or the conventions.
_LR_HONOURED = frozenset(
    {
        "type",
        "input_features",
        "output_features",
        "chunk_size",
        "tokenizer_max_length",
        "min_period",
        "max_period",
        "empty_cameras",
        "image_resolution",
        "normalization_mapping",
        "use_relative_actions",
        "relative_exclude_joints",
        "action_feature_names",
        "num_inference_steps",
        "max_state_dim",
        "max_action_dim",
        "paligemma_variant",
        "action_expert_variant",
    }
)
# Fields recorded only: training hyperparameters, hub metadata, runtime placement, and execution settings
# that z1 takes per run (n_action_steps = --h-exec, dtype = the import's dtype).
_LR_RECORDED = frozenset(
    {
        "n_action_steps",
        "dtype",
        "device",
        "use_amp",
        "push_to_hub",
        "repo_id",
        "private",
        "tags",
        "license",
        "pretrained_path",
        "pretrained_revision",
        "time_sampling_beta_alpha",
        "time_sampling_beta_beta",
        "time_sampling_scale",
        "time_sampling_offset",
        "gradient_checkpointing",
        "compile_model",
        "compile_mode",
        "freeze_vision_encoder",
        "train_expert_only",
        "optimizer_lr",
        "optimizer_betas",
        "optimizer_eps",
        "optimizer_weight_decay",
        "optimizer_grad_clip_norm",
        "scheduler_warmup_steps",
        "scheduler_decay_steps",
        "scheduler_decay_lr",
        "rtc_training_max_delay",
        "memory_frames",
        "memory_stride",
        "memory_temporal_attention_every",
    }
)
# Fields whose effect on the actions z1 does not implement: (value z1 acts the same with, what is missing).
_LR_REFUSED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n_obs_steps": (lambda v: v in (None, 1), "observation histories (z1 feeds one frame)"),
    "rtc_config": (
        lambda v: v is None or (isinstance(v, Mapping) and v.get("enabled", True) is False),
        "real-time chunking (denoising guided by the previous chunk)",
    ),
    "use_visual_memory": (_off, "visual memory (past frames in the prefix)"),
    "use_proprioceptive_memory": (_off, "proprioceptive memory (past states in the prompt)"),
    "use_peft": (_off, "PEFT adapters on top of the base weights"),
}


def _switched_on(name: str, value: Any) -> bool:
    """An unknown field that looks like a LeRobot feature switch that is on: `use_*` with a non-empty
    value, or a sub-config with "enabled": true."""
    if isinstance(value, Mapping):
        return value.get("enabled") is True
    return name.startswith("use_") and not _off(value)


@dataclass(frozen=True)
class _Differences:
    """Differences found while reading a source config: {field: why z1 cannot honour it}."""

    refused: dict[str, str]
    unknown: list[str]


def _lerobot_fields(cfg: Mapping[str, Any]) -> _Differences:
    refused: dict[str, str] = {}
    unknown: list[str] = []
    for name, value in cfg.items():
        if name in _LR_REFUSED:
            neutral, what = _LR_REFUSED[name]
            if not neutral(value):
                refused[name] = f"{name}={json.dumps(value)}: z1 does not implement {what}"
        elif name in _LR_HONOURED or name in _LR_RECORDED:
            continue
        elif _switched_on(name, value):
            refused[name] = (
                f"{name}={json.dumps(value)}: an option z1 does not know is switched on; it may change the "
                "actions"
            )
        else:
            unknown.append(name)
    return _Differences(refused=refused, unknown=sorted(unknown))


def _processor_steps(path: Path) -> dict[str, dict[str, Any]]:
    """{registry_name: step config} of a LeRobot processor pipeline JSON ({} if the file is absent)."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    steps = data.get("steps")
    if not isinstance(steps, list):
        raise CheckpointError(f"{path}: field 'steps' must be a list of processor steps")
    out: dict[str, dict[str, Any]] = {}
    for st in steps:
        name = st.get("registry_name") or st.get("class")
        if name:
            out[str(name)] = dict(st.get("config") or {})
    return out


def _relative_mask(d: int, exclude: Sequence[str], names: Sequence[str] | None) -> list[bool]:
    """LeRobot's rule: every dim is relative unless its action name contains an excluded joint name
    (case-insensitive); with no names (or nothing excluded) all dims are relative."""
    tokens = [str(t).lower() for t in exclude if t]
    if not tokens or names is None:
        return [True] * d
    mask = [not any(t in str(n).lower() for t in tokens) for n in list(names)[:d]]
    return mask + [True] * (d - len(mask))


def _lerobot_conventions(
    root: Path,
    cfg: Mapping[str, Any],
    pre: Mapping[str, Mapping[str, Any]],
    post: Mapping[str, Mapping[str, Any]],
    state_dim: int | None,
    action_dim: int | None,
    cameras: Sequence[str],
) -> tuple[Conventions, str, dict[str, str], dict[str, Any]]:
    """-> (conventions, normalization mode, refused {field: why}, info to record)."""
    refused: dict[str, str] = {}
    info: dict[str, Any] = {}
    # normalization: the preprocessor's normalizer step is what LeRobot runs; config.json says the same
    norm_step = pre.get("normalizer_processor", {})
    mapping = {str(k).upper(): str(v).upper() for k, v in (norm_step.get("norm_map") or {}).items()}
    if not mapping:
        mapping = {
            str(k).upper(): str(v).upper() for k, v in (cfg.get("normalization_mapping") or {}).items()
        }
    act_mode = mapping.get("ACTION", "QUANTILES")
    if act_mode not in ("QUANTILES", "MEAN_STD"):
        raise CheckpointError(
            f"{root / CONFIG_FILE}: normalization_mapping.ACTION is {act_mode!r}; z1 supports QUANTILES "
            "and MEAN_STD"
        )
    if mapping.get("STATE", act_mode) != act_mode:
        refused["normalization_mapping.STATE"] = (
            f"STATE is normalized with {mapping['STATE']} but ACTION with {act_mode}; z1 normalizes both "
            f"with one mode (accepting uses {act_mode} for the state too, which changes the prompt)"
        )
    if mapping.get("VISUAL", "IDENTITY") != "IDENTITY":
        refused["normalization_mapping.VISUAL"] = (
            f"images are normalized with {mapping['VISUAL']}; z1 feeds them in [-1, 1] (IDENTITY)"
        )
    eps = float(norm_step.get("eps", LEROBOT_EPS))
    post_eps = post.get("unnormalizer_processor", {}).get("eps")
    if post_eps is not None and float(post_eps) != eps:
        refused["unnormalizer_processor.eps"] = (
            f"the postprocessor un-normalizes with eps {post_eps} but the preprocessor normalizes with "
            f"{eps}; z1 keeps one eps"
        )

    # relative actions: the relative step of the preprocessor (what LeRobot runs), else config.json
    rel = pre.get("relative_actions_processor", {})
    enabled = bool(rel.get("enabled", cfg.get("use_relative_actions", False)))
    exclude = rel.get("exclude_joints", cfg.get("relative_exclude_joints", ["gripper"])) or []
    names = rel.get("action_names", cfg.get("action_feature_names"))
    absolute = post.get("absolute_actions_processor")
    if absolute is not None and bool(absolute.get("enabled", False)) != enabled:
        raise CheckpointError(
            f"{root}: {PRE_JSON} relative_actions_processor.enabled={enabled} but {POST_JSON} "
            f"absolute_actions_processor.enabled={absolute.get('enabled')}; the checkpoint is inconsistent"
        )
    dims: tuple[int, ...] = ()
    if enabled:
        if action_dim is None:
            raise CheckpointError(
                f"{root / CONFIG_FILE}: use_relative_actions needs output_features.action.shape to know "
                "which dims are relative"
            )
        dims = tuple(i for i, m in enumerate(_relative_mask(action_dim, exclude, names)) if m)
        if state_dim is None or state_dim < action_dim:
            raise CheckpointError(
                f"{root / CONFIG_FILE}: use_relative_actions subtracts the state from the first {action_dim} "
                f"action dims, but input_features.observation.state.shape is "
                f"{[state_dim] if state_dim is not None else 'missing'}"
            )
        info["relative_actions"] = {
            "exclude_joints": list(exclude),
            "action_names": list(names) if names is not None else None,
            "relative_dims": list(dims),
        }

    # camera renames (env/dataset name -> policy name); only camera entries mean anything to z1
    rename_map = dict(pre.get("rename_observations_processor", {}).get("rename_map") or {})
    renames: list[tuple[str, str]] = []
    ignored: dict[str, str] = {}
    for a, b in rename_map.items():
        if str(a).startswith(IMAGE_PREFIX) and str(b).startswith(IMAGE_PREFIX):
            src, dst = str(a).removeprefix(IMAGE_PREFIX), str(b).removeprefix(IMAGE_PREFIX)
            if dst not in cameras:
                raise CheckpointError(
                    f"{root / PRE_JSON}: rename_map sends {a!r} to {b!r}, which is not one of the policy's "
                    f"cameras {list(cameras)}"
                )
            renames.append((src, dst))
        else:
            ignored[str(a)] = str(b)
    if ignored:
        info["rename_map_ignored"] = ignored  # state/other keys: z1 passes state positionally

    steps = cfg.get("num_inference_steps")
    conv = Conventions(
        source="lerobot",
        resize="float-bilinear",
        norm_rule="lerobot",
        norm_eps=eps,
        relative_action_dims=dims,
        num_inference_steps=int(steps) if steps is not None else 10,
        camera_rename=tuple(renames),
        source_rope="transformers",
    )
    mode = "meanstd" if act_mode == "MEAN_STD" else "quantile"
    return conv, mode, refused, info


def _lerobot_dims(lr: Mapping[str, Any]) -> tuple[int | None, int | None, list[str]]:
    def dim(group: str, name: str) -> int | None:
        feat = (lr.get(group) or {}).get(name) or {}
        shape = feat.get("shape")
        return int(shape[0]) if shape else None

    cams = [
        n.removeprefix(IMAGE_PREFIX)
        for n, feat in (lr.get("input_features") or {}).items()
        if str(feat.get("type", "")).upper() == "VISUAL"
    ]
    cams += [f"empty_camera_{i}" for i in range(int(lr.get("empty_cameras", 0) or 0))]
    return dim("input_features", "observation.state"), dim("output_features", "action"), cams


_OPENPI_FIELDS = frozenset({"action_dim", "action_horizon", "paligemma_variant", "action_expert_variant"})
_OPENPI_RECORDED = frozenset({"precision"})


def _openpi_conventions() -> Conventions:
    return Conventions(
        source="openpi",
        resize="uint8-antialias",
        norm_rule="openpi",
        norm_eps=1e-6,
        num_inference_steps=OPENPI_DENOISE_STEPS,
        source_rope="openpi",
    )


def _check_accepted(refused: Mapping[str, str], accept: Sequence[str], where: Path) -> list[str]:
    """Raise for refused fields not in `accept`; -> the accepted ones. Unused `accept` names are errors."""
    unused = sorted(set(accept) - set(refused))
    if unused:
        raise CheckpointError(
            f"accept={unused}: {where} has no such difference to accept"
            + (f" (differences: {sorted(refused)})" if refused else " (it has none)")
        )
    pending = {k: v for k, v in refused.items() if k not in accept}
    if pending:
        lines = "; ".join(f"{k}: {v}" for k, v in sorted(pending.items()))
        flags = " ".join(f"--accept {k}" for k in sorted(pending))
        raise CheckpointError(
            f"{where}: z1 would not act as the source does: {lines}. To import anyway and record the "
            f"difference, pass accept={sorted(pending)} (z1 import ... {flags})"
        )
    return sorted(refused)


# ------------------------------------------------------------------------------------ the import
def import_pi05(
    path: str | Path,
    *,
    action_horizon: int | None = None,
    norm_stats: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    base: PolicyConfig | None = None,
    strict: bool = True,
    accept: Sequence[str] = (),
    progress: ProgressFn | None = None,
) -> LoadedCheckpoint:
    """Import an openpi-PyTorch or LeRobot pi0.5 checkpoint (a directory or its model.safetensors).

    action_horizon: overrides the file's (openpi config.json `action_horizon`, LeRobot `chunk_size`).
    norm_stats: an openpi norm_stats.json or a LeRobot *normalizer_processor.safetensors; by default found
        next to the weights (assets/*/norm_stats.json, or *normalizer_processor.safetensors).
    base: supplies what shapes cannot tell (head counts, cameras, tokenizer); default the pi05 preset.
    strict: unknown tensors in the file are an error (else a warning).
    accept: config fields whose effect z1 does not implement, to import anyway (recorded in
        `extra["accepted"]`); without them such a field stops the import with an error naming it.

    The source's conventions (module docstring) end up in `norm.conventions` and `extra["conventions"]`.
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
    refused: dict[str, str] = {}
    unknown: list[str] = []
    recorded: dict[str, Any] = {}
    pre: dict[str, dict[str, Any]] = {}
    post: dict[str, dict[str, Any]] = {}
    if is_lerobot:
        state_dim, real_action_dim, cams = _lerobot_dims(cfg_json)
        diffs = _lerobot_fields(cfg_json)
        refused.update(diffs.refused)
        unknown = diffs.unknown
        recorded = {k: cfg_json[k] for k in ("n_action_steps", "dtype", "use_amp") if k in cfg_json}
        pre, post = _processor_steps(root / PRE_JSON), _processor_steps(root / POST_JSON)
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
    else:
        if cfg_json.get("action_horizon") is not None:
            base = replace(base, action_horizon=int(cfg_json["action_horizon"]))
        unknown = sorted(set(cfg_json) - _OPENPI_FIELDS - _OPENPI_RECORDED)
        recorded = {k: cfg_json[k] for k in sorted(_OPENPI_RECORDED) if k in cfg_json}

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
        source = "lerobot" if (is_lerobot or plan.prefixed) else "openpi"
        # every check that can refuse the import runs before the weights are read
        mode = "quantile"
        lr_info: dict[str, Any] = {}
        if source == "lerobot":
            res = cfg_json.get("image_resolution")
            size = config.vision.image_size
            if res and int(res[0]) != size:
                raise CheckpointError(
                    f"{root / CONFIG_FILE}: image_resolution {list(res)} but the weights' vision tower takes "
                    f"{size}x{size} images ({config.vision.image_size // config.vision.patch}^2 patches of "
                    f"{config.vision.patch} px); the file does not fit its config"
                )
            conventions, mode, norm_refused, lr_info = _lerobot_conventions(
                root, cfg_json, pre, post, state_dim, real_action_dim, config.cameras
            )
            refused.update(norm_refused)
        else:
            conventions = _openpi_conventions()
            op_dim = cfg_json.get("action_dim")
            if op_dim is not None and int(op_dim) != config.action_dim:
                raise CheckpointError(
                    f"{root / CONFIG_FILE}: action_dim is {op_dim} but action_in_proj.weight takes "
                    f"{config.action_dim} dims; the file does not fit its config"
                )
        accepted = _check_accepted(refused, accept, root / CONFIG_FILE if cfg_json else weights)
        model = materialize(config, f, plan.source, "cpu", dtype, what=str(weights), progress=progress)

    norm, norm_info = None, {}
    lr_files = sorted(root.glob("*normalizer_processor.safetensors"))
    op_files = sorted(root.glob("assets/*/norm_stats.json"))
    if norm_stats is not None:
        ns = Path(norm_stats).expanduser()
        if not ns.is_file():
            raise CheckpointError(f"norm_stats file not found: {ns}")
        lr_files, op_files = ([ns], []) if ns.suffix == ".safetensors" else ([], [ns])
    if lr_files:
        norm, norm_info = _lerobot_norm(lr_files, mode, state_dim, real_action_dim, conventions)
    elif len(op_files) == 1:
        norm, norm_info = _openpi_norm(op_files[0], state_dim, real_action_dim, conventions)
    elif len(op_files) > 1:
        raise CheckpointError(
            f"{root} has several norm stats {[str(q.relative_to(root)) for q in op_files]}; "
            "choose one with norm_stats=..."
        )
    extra = {
        "source": source,
        "source_path": str(weights),
        "real_action_dim": real_action_dim
        if real_action_dim is not None
        else (len(norm.action.q01) if norm else None),
        "real_state_dim": state_dim if state_dim is not None else (len(norm.state.q01) if norm else None),
        "mapped_keys": len(plan.source),
        "skipped_keys": plan.skipped,
        "unexpected_keys": plan.unexpected,
        "conventions": conventions.to_json(),
        "source_config": recorded,
        "unknown_config_fields": unknown,
        "accepted": {k: refused[k] for k in accepted},
        **lr_info,
        **norm_info,
    }
    return LoadedCheckpoint(model=model, config=config, norm=norm, extra=extra)


# -------------------------------------------------------------------------------------- summary
def import_summary(ck: LoadedCheckpoint) -> list[str]:
    """What an import mapped, skipped, found and will apply, one line per item (printed by `z1 import`)."""
    ex, cfg = ck.extra, ck.config
    conv = Conventions.from_json(ex.get("conventions") or {})
    lines = [f"source       {ex.get('source')} ({ex.get('source_path')})"]
    skipped = ex.get("skipped_keys") or {}
    lines.append(f"keys         {ex.get('mapped_keys', '?')} mapped, {len(skipped)} skipped")
    lines += [f"  skipped    {k}: {why}" for k, why in sorted(skipped.items())]
    if ex.get("unexpected_keys"):
        lines.append(
            f"  ignored    {len(ex['unexpected_keys'])} unknown tensor(s): {ex['unexpected_keys'][:4]}"
        )
    if ck.norm is None:
        lines.append(
            "norm stats   none found: SFT computes them from its dataset (with z1's own conventions); "
            "RL/eval need them"
        )
    else:
        src = ex.get("norm_source")
        names = [Path(s).name for s in src] if isinstance(src, list) else [Path(str(src)).name]
        lines.append(
            f"norm stats   {', '.join(names)}: {ck.norm.mode}, state {len(ck.norm.state.q01)} dims, action "
            f"{len(ck.norm.action.q01)} dims"
        )
        if ex.get("postprocessor_stats_differ"):
            lines.append(
                f"  note       the postprocessor's {ex['postprocessor_stats_differ']} differ from the "
                "preprocessor's; z1 uses the preprocessor's both ways"
            )
    d = ex.get("real_action_dim")
    lines.append(
        f"actions      horizon {cfg.action_horizon}, {d if d is not None else '?'} real of "
        f"{cfg.action_dim} dims"
        + (
            f", relative to the state on dims {list(conv.relative_action_dims)} (state added back per chunk)"
            if conv.relative_action_dims
            else ", absolute"
            if conv.source == "lerobot"
            else " (openpi keeps delta/absolute in its training config, not in the checkpoint)"
        )
    )
    n_exec = (ex.get("source_config") or {}).get("n_action_steps")
    if n_exec is not None:
        lines.append(f"  note       the source executes {n_exec} actions per chunk; z1 executes --h-exec")
    steps = conv.num_inference_steps
    lines.append(
        f"inference    {steps} denoise steps in the source (recorded: z1 eval --num-steps and rl "
        "--rollout.num-steps choose per run, eval's default is 10)"
    )
    if steps is not None and steps != 10:
        lines.append(f"  note       pass --num-steps {steps} to z1 eval to denoise as the source does")
    renames = ", ".join(f"{a} -> {b}" for a, b in conv.camera_rename)
    lines.append(f"cameras      {', '.join(cfg.cameras)}" + (f" (env renames: {renames})" if renames else ""))
    lines.append(
        f"images       {cfg.vision.image_size}x{cfg.vision.image_size}, resize rule {conv.resize}"
        + (" (no antialiasing)" if conv.resize == "float-bilinear" else "")
    )
    lines.append(
        f"normalize    {conv.norm_rule} epsilon rule, eps {conv.norm_eps:g}"
        + (" only where q99 == q01" if conv.norm_rule == "lerobot" else " added to every range")
    )
    if conv.source_rope == cfg.rope:
        lines.append(f"rope         {cfg.rope} angle form, as the source")
    else:
        lines.append(
            f"rope         the source computes {conv.source_rope} angles, z1 runs {cfg.rope} (the two differ "
            "by fp32 rounding of the angles, ~5e-5 of the K cache at 1000 positions)"
        )
    src_cfg = ex.get("source_config") or {}
    src_dtype = src_cfg.get("dtype", src_cfg.get("precision"))
    if src_dtype is not None:
        ours = str(next(ck.model.parameters()).dtype).removeprefix("torch.")
        lines.append(f"dtype        the source ran {src_dtype}; the z1 weights are {ours}")
    if ex.get("unknown_config_fields"):
        lines.append(f"ignored      config fields z1 does not know: {ex['unknown_config_fields']}")
    for k, why in sorted((ex.get("accepted") or {}).items()):
        lines.append(f"accepted     {k}: {why}")
    return lines


def import_cli(
    src: str | Path,
    dst: str | Path,
    *,
    action_horizon: int | None = None,
    norm_stats: str | Path | None = None,
    tokenizer: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    accept: Sequence[str] = (),
    show_progress: bool = True,
) -> LoadedCheckpoint:
    """`z1 import`: import a pi0.5 checkpoint and save it as a z1 checkpoint, with a progress bar and a
    summary of what was mapped, skipped and recorded.

    `tokenizer`: PaliGemma's SentencePiece `tokenizer.model`, stored in the checkpoint (real pi0.5
    configs tokenize with it; without it the checkpoint could not act).
    """
    from rich.console import Console
    from rich.markup import escape
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
            src,
            action_horizon=action_horizon,
            norm_stats=norm_stats,
            dtype=dtype,
            accept=accept,
            progress=step,
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
        escape(
            f"imported {ck.extra['source']} pi0.5 ({n:,} params, config {ck.config.name!r}, horizon "
            f"{ck.config.action_horizon}, norm {'yes' if ck.norm else 'none'}) -> {dst}"
        ),
        soft_wrap=True,
    )
    for line in import_summary(ck):
        console.print(escape(line), highlight=False, soft_wrap=True)
    return ck
