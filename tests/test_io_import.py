"""Import of openpi-PyTorch and LeRobot pi0.5 checkpoints.

The expected openpi key -> shape table below is written from the real checkpoint key names
(docs/model.md#key-mapping), not derived from z1.models.pi05_keys, so the name mapping is checked against
an independent source.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import z1.models.checkpoint as ck
from fakes import tiny_sentencepiece
from z1.config import GemmaConfig, PolicyConfig, VisionConfig, policy_preset
from z1.models.errors import CheckpointError
from z1.models.pi05 import Pi05Policy, PolicyInputs
from z1.models.pi05_geometry import infer_policy_config
from z1.models.pi05_import import import_cli, import_pi05
from z1.models.pi05_keys import plan_keys, z1_to_openpi


@dataclass(frozen=True)
class Geo:
    vw: int
    vdepth: int
    vmlp: int
    patch: int
    tokens: int
    lw: int
    ldepth: int
    lmlp: int
    ew: int
    emlp: int
    heads: int
    hd: int
    vocab: int
    a: int


FULL = Geo(1152, 27, 4304, 14, 256, 2048, 18, 16384, 1024, 4096, 8, 256, 257152, 32)
SMALL = Geo(
    vw=32,
    vdepth=2,
    vmlp=40,
    patch=4,
    tokens=16,
    lw=64,
    ldepth=2,
    lmlp=96,
    ew=32,
    emlp=48,
    heads=8,
    hd=8,
    vocab=300,
    a=12,
)


def openpi_table(g: Geo) -> list[tuple[str, str | None, tuple[int, ...]]]:
    """(openpi key, z1 name or None for keys z1 does not load, shape), as a converted pi05 file holds them."""
    P = "paligemma_with_expert.paligemma.model"
    V = f"{P}.vision_tower.vision_model"
    L = f"{P}.language_model"
    E = "paligemma_with_expert.gemma_expert.model"
    rows: list[tuple[str, str | None, tuple[int, ...]]] = [
        (f"{V}.embeddings.patch_embedding.weight", "vision.patch_embed.weight", (g.vw, 3, g.patch, g.patch)),
        (f"{V}.embeddings.patch_embedding.bias", "vision.patch_embed.bias", (g.vw,)),
        (f"{V}.embeddings.position_embedding.weight", "vision.pos_embed", (g.tokens, g.vw)),
    ]
    for i in range(g.vdepth):
        pre = f"{V}.encoder.layers.{i}"
        z = f"vision.blocks.{i}"
        for n, zn in (("layer_norm1", "ln1"), ("layer_norm2", "ln2")):
            rows += [
                (f"{pre}.{n}.weight", f"{z}.{zn}.weight", (g.vw,)),
                (f"{pre}.{n}.bias", f"{z}.{zn}.bias", (g.vw,)),
            ]
        for n, zn in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"), ("out_proj", "o")):
            rows += [
                (f"{pre}.self_attn.{n}.weight", f"{z}.attn.{zn}.weight", (g.vw, g.vw)),
                (f"{pre}.self_attn.{n}.bias", f"{z}.attn.{zn}.bias", (g.vw,)),
            ]
        rows += [
            (f"{pre}.mlp.fc1.weight", f"{z}.mlp.fc1.weight", (g.vmlp, g.vw)),
            (f"{pre}.mlp.fc1.bias", f"{z}.mlp.fc1.bias", (g.vmlp,)),
            (f"{pre}.mlp.fc2.weight", f"{z}.mlp.fc2.weight", (g.vw, g.vmlp)),
            (f"{pre}.mlp.fc2.bias", f"{z}.mlp.fc2.bias", (g.vw,)),
        ]
    rows += [
        (f"{V}.post_layernorm.weight", "vision.norm.weight", (g.vw,)),
        (f"{V}.post_layernorm.bias", "vision.norm.bias", (g.vw,)),
        (f"{P}.multi_modal_projector.linear.weight", "vision.proj.weight", (g.lw, g.vw)),
        (f"{P}.multi_modal_projector.linear.bias", "vision.proj.bias", (g.lw,)),
        ("paligemma_with_expert.paligemma.lm_head.weight", "embed_tokens.weight", (g.vocab, g.lw)),  # tied
    ]
    nq, nkv = g.heads * g.hd, g.hd
    for i in range(g.ldepth):
        for root, s, w, f in ((L, "vlm", g.lw, g.lmlp), (E, "expert", g.ew, g.emlp)):
            pre, z = f"{root}.layers.{i}", f"layers.{i}.{s}"
            rows += [
                (f"{pre}.self_attn.q_proj.weight", f"{z}.attn.q.weight", (nq, w)),
                (f"{pre}.self_attn.k_proj.weight", f"{z}.attn.k.weight", (nkv, w)),
                (f"{pre}.self_attn.v_proj.weight", f"{z}.attn.v.weight", (nkv, w)),
                (f"{pre}.self_attn.o_proj.weight", f"{z}.attn.o.weight", (w, nq)),
                (f"{pre}.mlp.gate_proj.weight", f"{z}.mlp.gate.weight", (f, w)),
                (f"{pre}.mlp.up_proj.weight", f"{z}.mlp.up.weight", (f, w)),
                (f"{pre}.mlp.down_proj.weight", f"{z}.mlp.down.weight", (w, f)),
            ]
            if s == "vlm":
                rows += [
                    (f"{pre}.input_layernorm.weight", f"{z}.attn_norm.weight", (w,)),
                    (f"{pre}.post_attention_layernorm.weight", f"{z}.ffw_norm.weight", (w,)),
                ]
            else:
                for n, zn in (("input_layernorm", "attn_norm"), ("post_attention_layernorm", "ffw_norm")):
                    rows += [
                        (f"{pre}.{n}.dense.weight", f"{z}.{zn}.dense.weight", (3 * w, w)),
                        (f"{pre}.{n}.dense.bias", f"{z}.{zn}.dense.bias", (3 * w,)),
                    ]
    rows += [
        (f"{L}.norm.weight", "vlm_norm.weight", (g.lw,)),
        (f"{E}.norm.dense.weight", "expert_norm.dense.weight", (3 * g.ew, g.ew)),
        (f"{E}.norm.dense.bias", "expert_norm.dense.bias", (3 * g.ew,)),
        ("paligemma_with_expert.gemma_expert.lm_head.weight", None, (g.vocab, g.ew)),  # dead weight
        ("action_in_proj.weight", "action_in_proj.weight", (g.ew, g.a)),
        ("action_in_proj.bias", "action_in_proj.bias", (g.ew,)),
        ("action_out_proj.weight", "action_out_proj.weight", (g.a, g.ew)),
        ("action_out_proj.bias", "action_out_proj.bias", (g.a,)),
        ("time_mlp_in.weight", "time_mlp_in.weight", (g.ew, g.ew)),
        ("time_mlp_in.bias", "time_mlp_in.bias", (g.ew,)),
        ("time_mlp_out.weight", "time_mlp_out.weight", (g.ew, g.ew)),
        ("time_mlp_out.bias", "time_mlp_out.bias", (g.ew,)),
    ]
    return rows


def small_config(horizon: int) -> PolicyConfig:
    g = SMALL
    return policy_preset("pi05").with_(
        vision=VisionConfig(
            width=g.vw, depth=g.vdepth, mlp_dim=g.vmlp, num_heads=16, patch=g.patch, image_size=16
        ),
        vlm=GemmaConfig(
            width=g.lw, depth=g.ldepth, mlp_dim=g.lmlp, num_heads=8, num_kv_heads=1, head_dim=g.hd
        ),
        expert=GemmaConfig(
            width=g.ew, depth=g.ldepth, mlp_dim=g.emlp, num_heads=8, num_kv_heads=1, head_dim=g.hd
        ),
        vocab_size=g.vocab,
        action_dim=g.a,
        action_horizon=horizon,
    )


def synthetic_tensors(g: Geo, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=gen).to(torch.bfloat16) for k, _, shape in openpi_table(g)}


def write_openpi(root: Path, tensors: dict[str, torch.Tensor], horizon: int = 7) -> None:
    root.mkdir(parents=True)
    save_file(tensors, str(root / "model.safetensors"))
    (root / "config.json").write_text(
        json.dumps(
            {
                "action_dim": 12,
                "action_horizon": horizon,
                "paligemma_variant": "gemma_2b",
                "action_expert_variant": "gemma_300m",
                "precision": "bfloat16",
            }
        )
    )
    (root / "assets" / "my_robot").mkdir(parents=True)
    stats = {
        "state": {"mean": [0.1] * 6, "std": [1.5] * 6, "q01": [-2.0] * 6, "q99": [3.0] * 6},
        "actions": {
            "mean": [0.0] * 5,
            "std": [1.0] * 5,
            "q01": [-1.0, -2, -3, -4, -5],
            "q99": [1.0, 2, 3, 4, 5],
        },
    }
    (root / "assets" / "my_robot" / "norm_stats.json").write_text(json.dumps({"norm_stats": stats}))


def write_lerobot(root: Path, tensors: dict[str, torch.Tensor]) -> None:
    root.mkdir(parents=True)
    save_file({f"model.{k}": v for k, v in tensors.items()}, str(root / "model.safetensors"))
    cfg = {
        "type": "pi05",
        "n_obs_steps": 1,
        "input_features": {
            "observation.images.image": {"type": "VISUAL", "shape": [3, 256, 256]},
            "observation.images.image2": {"type": "VISUAL", "shape": [3, 256, 256]},
            "observation.state": {"type": "STATE", "shape": [8]},
        },
        "output_features": {"action": {"type": "ACTION", "shape": [7]}},
        "normalization_mapping": {"VISUAL": "IDENTITY", "STATE": "QUANTILES", "ACTION": "QUANTILES"},
        "chunk_size": 5,
        "n_action_steps": 5,
        "max_state_dim": 32,
        "max_action_dim": 32,
        "tokenizer_max_length": 48,
        "empty_cameras": 1,
        "image_resolution": [16, 16],  # the SMALL vision tower's input (4x4 patches of 4 px)
        "some_future_field": {"x": 1},
    }
    (root / "config.json").write_text(json.dumps(cfg))
    rng = np.random.default_rng(0)
    pre = {
        f"{feat}.{s}": torch.from_numpy(rng.normal(size=d).astype(np.float32))
        for feat, d in (("observation.state", 8), ("action", 7))
        for s in ("mean", "std", "q01", "q99", "min", "max")
    }
    save_file(pre, str(root / "policy_preprocessor_step_3_normalizer_processor.safetensors"))
    post = {
        k: v + 100 for k, v in pre.items() if k.startswith("action.")
    }  # must not override the preprocessor
    save_file(post, str(root / "policy_postprocessor_step_0_unnormalizer_processor.safetensors"))


def assert_loaded_equals_source(model: Pi05Policy, tensors: dict[str, torch.Tensor]) -> None:
    sd = model.state_dict()
    table = openpi_table(SMALL)
    loaded = {z for _, z, _ in table if z is not None}
    assert set(sd) == loaded  # zero missing, zero unexpected
    for key, z, _ in table:
        if z is not None:
            assert sd[z].dtype == torch.float32
            assert torch.equal(sd[z], tensors[key].float()), (z, key)


def run_forward(model: Pi05Policy) -> torch.Tensor:
    cfg = model.config
    b, n, s = 2, len(cfg.cameras), cfg.vision.image_size
    inputs = PolicyInputs(
        images=torch.zeros(b, n, 3, s, s),
        image_mask=torch.ones(b, n, dtype=torch.bool),
        tokens=torch.ones(b, 6, dtype=torch.long),
        token_mask=torch.ones(b, 6, dtype=torch.bool),
    )
    x = torch.zeros(b, cfg.action_horizon, cfg.action_dim)
    with torch.no_grad():
        return model.forward_joint(inputs, x, torch.full((b,), 0.5))


def test_import_openpi_layout(tmp_path):
    tensors = synthetic_tensors(SMALL)
    write_openpi(tmp_path / "op", tensors)
    got = import_pi05(tmp_path / "op")
    assert got.config == small_config(horizon=7).with_(name="pi05-imported")
    assert_loaded_equals_source(got.model, tensors)
    assert got.extra["source"] == "openpi" and got.extra["unexpected_keys"] == []
    assert set(got.extra["skipped_keys"]) == {"paligemma_with_expert.gemma_expert.lm_head.weight"}
    assert got.extra["real_action_dim"] == 5 and got.extra["real_state_dim"] == 6
    assert got.norm is not None and got.norm.mode == "quantile"
    assert got.norm.action.q99.tolist() == [1, 2, 3, 4, 5] and got.norm.state.mean.tolist() == pytest.approx(
        [0.1] * 6
    )
    assert run_forward(got.model).shape == (2, 7, 12)
    # horizon override, and the weights file given directly
    assert import_pi05(tmp_path / "op" / "model.safetensors", action_horizon=3).config.action_horizon == 3


def test_import_lerobot_layout_and_save(tmp_path):
    tensors = synthetic_tensors(SMALL, seed=1)
    write_lerobot(tmp_path / "lr", tensors)
    got = import_pi05(tmp_path / "lr")
    assert_loaded_equals_source(got.model, tensors)
    cfg = got.config
    assert cfg.cameras == ("image", "image2", "empty_camera_0") and cfg.max_token_len == 48
    assert cfg.action_horizon == 5 and got.extra["source"] == "lerobot"
    assert got.extra["real_action_dim"] == 7 and got.extra["real_state_dim"] == 8
    with __import__("safetensors").safe_open(
        str(tmp_path / "lr" / "policy_preprocessor_step_3_normalizer_processor.safetensors"), "pt"
    ) as f:
        assert np.array_equal(got.norm.action.q01, f.get_tensor("action.q01").numpy())
        assert np.array_equal(got.norm.state.std, f.get_tensor("observation.state.std").numpy())
    # import -> z1 checkpoint -> load: identical
    with pytest.raises(CheckpointError, match="--tokenizer"):  # SentencePiece config, no tokenizer file
        import_cli(tmp_path / "lr", tmp_path / "z1", show_progress=False)
    assert not (tmp_path / "z1").exists()
    pytest.importorskip("sentencepiece")
    sp = tiny_sentencepiece(tmp_path)
    import_cli(tmp_path / "lr", tmp_path / "z1", tokenizer=sp, show_progress=False)
    back = ck.load_checkpoint(tmp_path / "z1")
    assert back.config == cfg and back.extra["real_action_dim"] == 7
    # the tokenizer travels with the checkpoint: every later stage tokenizes the same way
    assert back.tokenizer_path == tmp_path / "z1" / "tokenizer.model"
    assert back.tokenizer_path.read_bytes() == sp.read_bytes()
    ck.save_checkpoint(tmp_path / "again", back.model, back.norm, back.extra, tokenizer=back.tokenizer_path)
    assert ck.load_checkpoint(tmp_path / "again").tokenizer_path.read_bytes() == sp.read_bytes()
    assert ck.load_checkpoint(tmp_path / "again").tokenizer_path.parent == tmp_path / "again"
    assert all(
        torch.equal(a, b) for a, b in zip(back.model.state_dict().values(), got.model.state_dict().values())
    )


def test_full_size_mapping_matches_pi05_preset():
    """812 tensors of a real pi05 file <-> the 811 parameters of the pi05 preset (meta device, no memory)."""
    table = openpi_table(FULL)
    assert len(table) == 812
    with torch.device("meta"):
        model = Pi05Policy(policy_preset("pi05"))
    model_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    file_shapes = {k: shape for k, _, shape in table}
    # z1 -> openpi names via the module's mapping vs the independent table
    expected = {k: shape for k, z, shape in table if z is not None and "lm_head" not in k}
    expected["paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight"] = (257152, 2048)
    mapped = {z1_to_openpi(k): s for k, s in model_shapes.items()}
    assert sorted(set(expected) - set(mapped)) == [] and sorted(set(mapped) - set(expected)) == []
    assert mapped == expected
    # file keys -> z1 plan: zero missing, zero unexpected; geometry inferred = the pi05 preset
    plan = plan_keys(list(file_shapes))
    assert plan.unexpected == [] and set(plan.source) == set(model_shapes)
    assert all(file_shapes[plan.source[k]] == s for k, s in model_shapes.items())
    cfg = infer_policy_config(file_shapes, plan, action_horizon=10)
    assert cfg == policy_preset("pi05").with_(action_horizon=10)
    # docs/model.md#parameter-count
    assert sum(int(np.prod(s)) for s in model_shapes.values()) == 3_353_433_872
    # LeRobot prefix
    plan_lr = plan_keys([f"model.{k}" for k in file_shapes])
    assert plan_lr.prefixed and set(plan_lr.source) == set(model_shapes)


def test_import_errors(tmp_path):
    tensors = synthetic_tensors(SMALL)
    bad = dict(tensors)
    key = "paligemma_with_expert.paligemma.model.language_model.layers.1.mlp.up_proj.weight"
    bad[key] = torch.zeros(95, 64, dtype=torch.bfloat16)
    write_openpi(tmp_path / "shape", bad)
    with pytest.raises(CheckpointError, match=r"layers\.1\.mlp\.up_proj\.weight.*\(95, 64\).*\(96, 64\)"):
        import_pi05(tmp_path / "shape")

    missing = dict(tensors)
    del missing["paligemma_with_expert.gemma_expert.model.layers.1.self_attn.v_proj.weight"]
    write_openpi(tmp_path / "missing", missing)
    with pytest.raises(CheckpointError, match=r"1 missing key.*layers\.1\.expert\.attn\.v\.weight.*v_proj"):
        import_pi05(tmp_path / "missing")

    extra = {**tensors, "paligemma_with_expert.mystery.weight": torch.zeros(2)}
    write_openpi(tmp_path / "extra", extra)
    with pytest.raises(CheckpointError, match="mystery"):
        import_pi05(tmp_path / "extra")
    with pytest.warns(UserWarning, match="mystery"):
        import_pi05(tmp_path / "extra", strict=False)

    pi0 = {k: v for k, v in tensors.items() if "time_mlp" not in k and ".dense." not in k}
    pi0["state_proj.weight"] = torch.zeros(32, 12)
    write_openpi(tmp_path / "pi0", pi0)
    with pytest.raises(CheckpointError, match="pi0 is not supported"):
        import_pi05(tmp_path / "pi0")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        import_pi05(tmp_path / "nowhere")
