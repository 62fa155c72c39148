"""Parameter names of openpi-PyTorch / LeRobot pi0.5 checkpoints and their z1 equivalents.

The table is docs/model.md#key-mapping.

Both files use torch Linear (out, in) layout like z1, so every tensor maps 1:1 by name. LeRobot files saved
by training carry a `model.` prefix; older transformers layouts (`paligemma.language_model.model.*`,
`paligemma.vision_tower.*` without `.model`) are accepted as aliases. The tied embedding is usually stored
as `paligemma.lm_head.weight` (not `embed_tokens`), and the action expert's `lm_head` is dead weight.

`plan_keys` applies the table to a whole file: which keys load into which z1 parameters, which are skipped
and why (pi0 leftovers, dead or tied weights), and which z1 does not know.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from z1.models.errors import CheckpointError

PWE = "paligemma_with_expert"
P = f"{PWE}.paligemma.model"
VIS = f"{P}.vision_tower.vision_model"
LM = f"{P}.language_model"
EXP = f"{PWE}.gemma_expert.model"
TIED_LM_HEAD = f"{PWE}.paligemma.lm_head.weight"
EXPERT_LM_HEAD = f"{PWE}.gemma_expert.lm_head.weight"
EMBED_TOKENS = f"{LM}.embed_tokens.weight"

# (z1 template, openpi template); "{i}" is a layer index.
_RULES: list[tuple[str, str]] = [
    ("vision.patch_embed.weight", f"{VIS}.embeddings.patch_embedding.weight"),
    ("vision.patch_embed.bias", f"{VIS}.embeddings.patch_embedding.bias"),
    ("vision.pos_embed", f"{VIS}.embeddings.position_embedding.weight"),
    ("vision.norm.weight", f"{VIS}.post_layernorm.weight"),
    ("vision.norm.bias", f"{VIS}.post_layernorm.bias"),
    ("vision.proj.weight", f"{P}.multi_modal_projector.linear.weight"),
    ("vision.proj.bias", f"{P}.multi_modal_projector.linear.bias"),
    ("embed_tokens.weight", EMBED_TOKENS),
    ("vlm_norm.weight", f"{LM}.norm.weight"),
    ("expert_norm.dense.weight", f"{EXP}.norm.dense.weight"),
    ("expert_norm.dense.bias", f"{EXP}.norm.dense.bias"),
]
for _leaf in ("weight", "bias"):
    for _z, _o in (
        ("ln1", "layer_norm1"),
        ("ln2", "layer_norm2"),
        ("mlp.fc1", "mlp.fc1"),
        ("mlp.fc2", "mlp.fc2"),
    ):
        _RULES.append((f"vision.blocks.{{i}}.{_z}.{_leaf}", f"{VIS}.encoder.layers.{{i}}.{_o}.{_leaf}"))
    for _z, _o in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "out_proj")):
        _RULES.append(
            (f"vision.blocks.{{i}}.attn.{_z}.{_leaf}", f"{VIS}.encoder.layers.{{i}}.self_attn.{_o}.{_leaf}")
        )
    for _name in ("action_in_proj", "action_out_proj", "time_mlp_in", "time_mlp_out"):
        _RULES.append((f"{_name}.{_leaf}", f"{_name}.{_leaf}"))
    for _z, _o in (("attn_norm", "input_layernorm"), ("ffw_norm", "post_attention_layernorm")):
        _RULES.append((f"layers.{{i}}.expert.{_z}.dense.{_leaf}", f"{EXP}.layers.{{i}}.{_o}.dense.{_leaf}"))
_RULES.append(("layers.{i}.vlm.attn_norm.weight", f"{LM}.layers.{{i}}.input_layernorm.weight"))
_RULES.append(("layers.{i}.vlm.ffw_norm.weight", f"{LM}.layers.{{i}}.post_attention_layernorm.weight"))
for _stream, _root in (("vlm", LM), ("expert", EXP)):
    for _z in ("q", "k", "v", "o"):
        _RULES.append(
            (f"layers.{{i}}.{_stream}.attn.{_z}.weight", f"{_root}.layers.{{i}}.self_attn.{_z}_proj.weight")
        )
    for _z in ("gate", "up", "down"):
        _RULES.append(
            (f"layers.{{i}}.{_stream}.mlp.{_z}.weight", f"{_root}.layers.{{i}}.mlp.{_z}_proj.weight")
        )


def _compile(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(\d+)") + "$")


_Z1_TO_OP = [(_compile(z), o) for z, o in _RULES]
_OP_TO_Z1 = [(_compile(o), z) for z, o in _RULES]
_OP_EXACT = {o: z for z, o in _RULES if "{i}" not in o}
_Z1_EXACT = {z: o for z, o in _RULES if "{i}" not in z}

# Older transformers layouts (PaliGemmaForConditionalGeneration before the `model.` wrapper) -> current.
_LEGACY_PREFIXES = (
    (f"{PWE}.paligemma.language_model.model.", f"{LM}."),
    (f"{PWE}.paligemma.language_model.lm_head.", f"{PWE}.paligemma.lm_head."),
    (f"{PWE}.paligemma.vision_tower.", f"{P}.vision_tower."),
    (f"{PWE}.paligemma.multi_modal_projector.", f"{P}.multi_modal_projector."),
)


def canonical_openpi_key(key: str) -> str:
    """Strip LeRobot's `model.` prefix and rewrite legacy transformers layouts to the current openpi names."""
    if key.startswith("model."):  # no openpi top-level module is called `model`
        key = key[len("model.") :]
    for old, new in _LEGACY_PREFIXES:
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def _sub(template: str, m: re.Match[str]) -> str:
    return template.replace("{i}", m.group(1)) if m.groups() else template


def openpi_to_z1(key: str) -> str | None:
    """A canonical openpi key -> the z1 parameter name, or None if it has no z1 counterpart."""
    z = _OP_EXACT.get(key)
    if z is not None:
        return z
    for pat, tmpl in _OP_TO_Z1:
        m = pat.match(key)
        if m:
            return _sub(tmpl, m)
    return None


def z1_to_openpi(name: str) -> str:
    """A z1 parameter name -> the openpi-PyTorch key (KeyError if z1 has no such parameter)."""
    o = _Z1_EXACT.get(name)
    if o is not None:
        return o
    for pat, tmpl in _Z1_TO_OP:
        m = pat.match(name)
        if m:
            return _sub(tmpl, m)
    raise KeyError(f"z1 parameter {name!r} has no openpi name; update z1.models.pi05_keys._RULES")


def layer_count(keys: Iterable[str], prefix: str) -> int:
    """Number of distinct `{prefix}.{i}.` layer indices among keys (0 if none)."""
    pat = re.compile("^" + re.escape(prefix) + r"\.(\d+)\.")
    idx = {int(m.group(1)) for k in keys if (m := pat.match(k))}
    if idx and idx != set(range(max(idx) + 1)):
        raise ValueError(f"layers under {prefix} are not contiguous: {sorted(idx)}")
    return len(idx)


# ------------------------------------------------------------------------------ a file's keys
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
        c = canonical_openpi_key(k)
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
        z = openpi_to_z1(c)
        if z is not None:
            source[z] = k
            continue
        if c == EXPERT_LM_HEAD:
            skipped[k] = "dead weight: the action expert has no embedder"
        elif c == TIED_LM_HEAD:
            skipped[k] = "tied embedding (used for embed_tokens when that key is absent)"
        elif c.startswith(("action_time_mlp_in.", "action_time_mlp_out.")):
            alias = "time_mlp_in." if c.startswith("action_time_mlp_in.") else "time_mlp_out."
            alias += c.rsplit(".", 1)[1]
            if alias in canon:
                skipped[k] = f"superseded by {alias}"
            else:
                source[openpi_to_z1(alias) or alias] = k  # older LeRobot name of the pi0.5 time MLP
        elif c.startswith("state_proj."):
            skipped[k] = "pi0 state projection, unused by pi0.5"
        elif c.startswith(f"{EXP}.") and c.endswith(
            ("input_layernorm.weight", "post_attention_layernorm.weight")
        ):
            skipped[k] = "plain norm weight of the expert; pi0.5 uses the adaRMS dense"
        elif c == f"{EXP}.norm.weight":
            skipped[k] = "plain final norm of the expert; pi0.5 uses the adaRMS dense"
        else:
            unexpected.append(k)
    if "embed_tokens.weight" not in source and TIED_LM_HEAD in canon:
        source["embed_tokens.weight"] = canon[TIED_LM_HEAD]
        skipped.pop(canon[TIED_LM_HEAD], None)
    prefixed = any(k.startswith("model.") for k in file_keys)
    return KeyPlan(source=source, skipped=skipped, unexpected=sorted(unexpected), prefixed=prefixed)
