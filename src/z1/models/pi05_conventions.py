"""What a pi0.5 source's config files mean for z1: the `Conventions` it acts with, and what z1 refuses.

LeRobot's config.json fields fall into three sets: honoured (read into the z1 config or the conventions),
recorded (training, hub or runtime settings that do not change the actions), and refused (features z1 does
not implement, unless they are in their neutral state). A refused field stops the import unless the user
accepts it (`check_accepted`), so a policy never silently acts differently from where it was trained.
The processor pipelines (`policy_{pre,post}processor.json`) decide normalization, relative actions and
camera renames, as they do in LeRobot; openpi keeps those in its training config, so its conventions are
fixed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from z1.models.checkpoint import CONFIG_FILE
from z1.models.errors import CheckpointError
from z1.types import Conventions

PRE_JSON = "policy_preprocessor.json"
POST_JSON = "policy_postprocessor.json"
IMAGE_PREFIX = "observation.images."
OPENPI_DENOISE_STEPS = 10  # openpi's sample_actions(num_steps=10)
LEROBOT_EPS = 1e-8  # LeRobot's NormalizerProcessorStep default eps


def _off(v: Any) -> bool:
    """A field value that leaves its feature off."""
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
class ConfigDifferences:
    """Differences found while reading a source config: {field: why z1 cannot honour it}."""

    refused: dict[str, str]
    unknown: list[str]


def lerobot_fields(cfg: Mapping[str, Any]) -> ConfigDifferences:
    """Sort a LeRobot config.json into refused fields (with why) and fields z1 does not know."""
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
    return ConfigDifferences(refused=refused, unknown=sorted(unknown))


def processor_steps(path: Path) -> dict[str, dict[str, Any]]:
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


def lerobot_conventions(
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


def lerobot_dims(lr: Mapping[str, Any]) -> tuple[int | None, int | None, list[str]]:
    """-> (state dim, action dim, camera names incl. `empty_camera_{i}`) from a LeRobot config.json."""

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


OPENPI_FIELDS = frozenset({"action_dim", "action_horizon", "paligemma_variant", "action_expert_variant"})
OPENPI_RECORDED = frozenset({"precision"})


def openpi_conventions() -> Conventions:
    """openpi's rules are fixed by its code, not stored with the checkpoint."""
    return Conventions(
        source="openpi",
        resize="uint8-antialias",
        norm_rule="openpi",
        norm_eps=1e-6,
        num_inference_steps=OPENPI_DENOISE_STEPS,
        source_rope="openpi",
    )


def check_accepted(refused: Mapping[str, str], accept: Sequence[str], where: Path) -> list[str]:
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
