"""Source conventions of imported pi0.5 checkpoints, each exercised both ways against a brute-force
re-implementation of the documented rule: image resize (openpi: antialiased uint8; LeRobot: float, no
antialiasing), normalization epsilon (openpi: always added; LeRobot: only for a zero range), relative
actions (LeRobot: action - state before normalizing, state added back after), camera renames, refusal of
config fields z1 does not implement, and the RoPE angle form.

Measured here (the numbers the asserts bracket):
- resize: a 480x480 noise texture to 224, the two rules differ by up to 1.19 in [-1, 1] units (mean 0.23);
  a smooth image by < 0.015.
- epsilon: on 200k uniform states, 0.56% / 2.3% / 11.5% of the prompt tokens of dims with a q01..q99
  range of 0.02 / 0.005 / 0.001 move to the neighbouring bin; ranges >= 0.5 move < 0.03%; a zero range
  none (both rules saturate). Un-normalized actions differ by < 1e-6 of their range.
- RoPE: the K cache after RoPE differs by max|dK| / max|K| = 4.8e-5 at 968 positions, head_dim 256.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import z1.models.checkpoint as ck
from fakes import SPEC, tiny_sentencepiece
from test_io_import import SMALL, synthetic_tensors, write_lerobot, write_openpi
from z1.config import GemmaConfig, PolicyConfig, SamplerConfig, VisionConfig, policy_preset
from z1.data.chunks import ChunkDataset
from z1.data.lerobot import LeRobotWriter, make_features, open_dataset
from z1.models.errors import CheckpointError
from z1.models.gemma import apply_rope, rope_tables
from z1.models.pi05 import Pi05Policy, PolicyInputs
from z1.models.pi05_import import import_cli, import_pi05
from z1.models.pi05_summary import import_summary
from z1.models.tokenizer import BuiltinTokenizer, discretize_state, make_tokenizer
from z1.models.transforms import ObservationEncoder, actions_to_env, images_to_model
from z1.rollout.runner import PolicyRunner
from z1.train.sft import camera_images_to_model
from z1.types import Conventions, FeatureStats, Normalization, Observation

# float32 sample coordinates in torch vs float64 here: ~1e-5 at 150 px, far below a level (2/255)
FLOAT_TOL = 5e-5
LEROBOT = Conventions(
    source="lerobot", resize="float-bilinear", norm_rule="lerobot", norm_eps=1e-8, source_rope="transformers"
)


# ------------------------------------------------------------------------------ brute-force resize
def _axis_weights(n_in: int, n_out: int, antialias: bool) -> np.ndarray:
    """(n_out, n_in) interpolation matrix of bilinear resizing along one axis (align_corners=False).

    Without antialias: output i samples x = (i + 0.5) * n_in / n_out - 0.5 (clamped at 0) between its two
    neighbours. With antialias (downscaling): a triangle filter stretched by the scale, centred on
    (i + 0.5) * scale, over the pixels within `scale` of it, weights normalized to sum 1."""
    scale = n_in / n_out
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        if antialias and scale > 1:
            center = (i + 0.5) * scale
            lo, hi = max(int(center - scale + 0.5), 0), min(int(center + scale + 0.5), n_in)
            for j in range(lo, hi):
                w[i, j] = max(0.0, 1.0 - abs((j + 0.5 - center) / scale))
            w[i] /= w[i].sum()
        else:
            x = max((i + 0.5) * scale - 0.5, 0.0)
            j0 = int(np.floor(x))
            j1 = min(j0 + 1, n_in - 1)
            frac = x - j0
            w[i, j0] += 1.0 - frac
            w[i, j1] += frac
    return w


def brute_resize(img: np.ndarray, size: int, antialias: bool) -> np.ndarray:
    """uint8 (y, x, 3) -> float64 (3, size, size) in [-1, 1]: aspect kept, -1 padding centred."""
    h, w = img.shape[:2]
    ratio = max(h / size, w / size)
    rh, rw = int(h / ratio), int(w / ratio)
    f = img.astype(np.float64) / 255.0  # (y, x, 3)
    out = np.einsum("iy,yxc,jx->cij", _axis_weights(h, rh, antialias), f, _axis_weights(w, rw, antialias))
    out = np.clip(out, 0.0, 1.0) * 2.0 - 1.0  # (3, rh, rw)
    full = np.full((3, size, size), -1.0)
    top, left = (size - rh) // 2, (size - rw) // 2
    full[:, top : top + rh, left : left + rw] = out
    return full


def texture(n_y: int, n_x: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n_y, n_x, 3), dtype=np.uint8)


def smooth(n: int) -> np.ndarray:
    y, x = np.mgrid[:n, :n]
    v = (127 + 100 * np.sin(x / 20) * np.cos(y / 25)).astype(np.uint8)
    return np.repeat(v[:, :, None], 3, axis=-1)


@pytest.mark.parametrize("shape,size", [((24, 24), 16), ((101, 150), 64), ((48, 20), 16)])
def test_resize_rules_match_brute_force(shape, size):
    img = texture(*shape)
    t = torch.from_numpy(img)[None]
    # LeRobot: float bilinear without antialiasing, to float precision
    got = images_to_model(t, size, "float-bilinear")[0].double().numpy()
    np.testing.assert_allclose(got, brute_resize(img, size, antialias=False), rtol=0, atol=FLOAT_TOL)
    # the same from float [0, 1] input (what ChunkDataset hands SFT for such checkpoints)
    as_float = torch.from_numpy(img.astype(np.float32) / 255.0)[None]
    torch.testing.assert_close(images_to_model(as_float, size), images_to_model(t, size, "float-bilinear"))
    # openpi: antialiased, resized in uint8 (rounded once per pass): within 2 levels, under half on average
    aa = images_to_model(t, size, "uint8-antialias")[0].double().numpy()
    ref = brute_resize(img, size, antialias=True)
    assert np.abs(aa - ref).max() <= 2 * 2 / 255 + 1e-6
    assert np.abs(aa - ref).mean() < 0.5 * 2 / 255
    torch.testing.assert_close(images_to_model(t, size), images_to_model(t, size, "uint8-antialias"))


def test_resize_gap_between_rules_on_textured_images():
    """The gap the issue measured: up to ~1 in [-1, 1] units on texture, a level on smooth images."""
    noise = torch.from_numpy(texture(480, 480))[None]
    gap = (
        images_to_model(noise, 224, "uint8-antialias") - images_to_model(noise, 224, "float-bilinear")
    ).abs()
    assert 1.0 < gap.max().item() < 1.4 and 0.15 < gap.mean().item() < 0.35  # measured 1.19, 0.23
    lib = torch.from_numpy(texture(256, 256, seed=1))[None]  # a LeRobot LIBERO-sized camera
    gap_lib = images_to_model(lib, 224, "uint8-antialias") - images_to_model(lib, 224, "float-bilinear")
    assert 0.25 < gap_lib.abs().max().item() < 0.6
    calm = torch.from_numpy(smooth(480))[None]
    gap_calm = images_to_model(calm, 224, "uint8-antialias") - images_to_model(calm, 224, "float-bilinear")
    assert gap_calm.abs().max().item() < 0.015
    with pytest.raises(ValueError, match="uint8-antialias"):
        images_to_model(noise.float() / 255, 224, "uint8-antialias")


def test_encoder_and_sft_batches_resize_by_the_checkpoint_rule(tmp_path: Path):
    cfg = policy_preset("tiny")  # 64x64, cameras scene / wrist
    tok = BuiltinTokenizer(cfg.vocab_size)
    st = FeatureStats(*(np.full(2, v, np.float32) for v in (0.0, 1.0, -1.0, 1.0)))
    img = texture(96, 96, seed=3)
    o = Observation({"scene": img, "wrist": img}, np.zeros(2, np.float32), "go")
    for conv, antialias in ((Conventions(), True), (LEROBOT, False)):
        enc = ObservationEncoder(cfg, Normalization(st, st, "quantile", conv), tok)
        x = enc.encode([o]).images[0, 0].double().numpy()  # (3, y, x)
        ref = brute_resize(img, 64, antialias)
        assert np.abs(x - ref).max() <= (2 * 2 / 255 + 1e-6 if antialias else FLOAT_TOL)
    # SFT: ChunkDataset batches go through train.sft.camera_images_to_model
    feats = make_features(["s0", "s1"], ["a0", "a1"], ["scene"], (96, 96))
    rng = np.random.default_rng(0)
    frames = np.stack([texture(96, 96, seed=s) for s in range(3)])
    with LeRobotWriter(tmp_path / "ds", 10, feats, "toy") as w:
        w.add_episode(
            {
                "observation.state": rng.normal(size=(3, 2)).astype(np.float32),
                "action": rng.normal(size=(3, 2)).astype(np.float32),
                "observation.images.scene": frames,
            },
            "task",
        )
    ds = open_dataset(tmp_path / "ds")
    for conv, antialias in ((Conventions(), True), (LEROBOT, False)):
        chunks = ChunkDataset(ds, 2, 4, Normalization(st, st, "quantile", conv), ("scene",))
        b = chunks.get_batch([1])
        assert b["images"].dtype == (np.uint8 if antialias else np.float32)
        got = camera_images_to_model(torch.as_tensor(b["images"]), 64)[0, 0].double().numpy()
        ref = brute_resize(frames[1], 64, antialias)
        assert np.abs(got - ref).max() <= (2 * 2 / 255 + 1e-6 if antialias else FLOAT_TOL)


# ----------------------------------------------------------------------------- epsilon rule
def _stats(ranges: np.ndarray, seed: int = 0) -> FeatureStats:
    d = len(ranges)
    rng = np.random.default_rng(seed)
    q01 = rng.uniform(-1, 1, d).astype(np.float32)
    return FeatureStats(
        mean=rng.normal(size=d).astype(np.float32),
        std=np.abs(ranges).astype(np.float32),
        q01=q01,
        q99=(q01 + ranges).astype(np.float32),
    )


def test_epsilon_rules_match_brute_force_both_ways():
    ranges = np.array([2.0, 0.3, 1e-3, 0.0], np.float32)
    st = _stats(ranges)
    x = (st.q01 + np.random.default_rng(1).uniform(-0.1, 1.1, (64, 4)) * np.maximum(ranges, 1.0)).astype(
        np.float32
    )
    x[:, 3] = st.q01[3] + np.float32(1e-7) * np.arange(64)  # a constant feature, nudged
    q01, q99, mean, std = (getattr(st, k).astype(np.float64) for k in ("q01", "q99", "mean", "std"))
    r = q99 - q01
    xd = x.astype(np.float64)
    brute = {
        ("openpi", "quantile"): ((xd - q01) / (r + 1e-6) * 2 - 1, lambda y: (y + 1) / 2 * (r + 1e-6) + q01),
        ("lerobot", "quantile"): (
            2 * (xd - q01) / np.where(r == 0, 1e-8, r) - 1,
            lambda y: (y + 1) * np.where(r == 0, 1e-8, r) / 2 + q01,
        ),
        ("openpi", "meanstd"): ((xd - mean) / (std + 1e-6), lambda y: y * (std + 1e-6) + mean),
        ("lerobot", "meanstd"): ((xd - mean) / (std + 1e-8), lambda y: y * std + mean),
    }
    for (rule, mode), (fwd, inv) in brute.items():
        conv = Conventions(norm_rule=rule, norm_eps=1e-6 if rule == "openpi" else 1e-8)  # type: ignore[arg-type]
        n = Normalization(st, st, mode, conv)
        y = n.normalize_state(x)
        assert y.dtype == np.float32
        np.testing.assert_allclose(y, fwd, rtol=2e-5, atol=2e-5, err_msg=f"{rule} {mode}")
        yy = np.random.default_rng(2).uniform(-1.2, 1.2, x.shape).astype(np.float32)
        np.testing.assert_allclose(n.unnormalize_action(yy), inv(yy.astype(np.float64)), rtol=1e-5, atol=1e-6)
    # the zero range: LeRobot divides by 1e-8 where openpi divides by 1e-6 (x = q01 maps to -1 in both)
    op = Normalization(st, st, "quantile").normalize_state(x)
    lr = Normalization(st, st, "quantile", LEROBOT).normalize_state(x)
    assert op[0, 3] == lr[0, 3] == -1.0
    np.testing.assert_allclose((lr[1:, 3] + 1) / (op[1:, 3] + 1), 100.0, rtol=1e-3)


def test_epsilon_rule_bin_differences():
    """How often the two epsilon rules put a state in different prompt bins (256 bins over [-1, 1])."""
    ranges = np.array([2.0, 1.0, 0.5, 0.1, 0.02, 0.005, 0.001, 0.0], np.float32)
    st = _stats(ranges)
    rng = np.random.default_rng(0)
    x = (st.q01 + rng.uniform(-0.05, 1.05, (200_000, 8)) * np.where(ranges > 0, ranges, 1)).astype(np.float32)
    x[:, -1] = np.where(rng.random(len(x)) < 0.5, st.q01[-1], x[:, -1])
    op = discretize_state(Normalization(st, st, "quantile").normalize_state(x))
    lr = discretize_state(Normalization(st, st, "quantile", LEROBOT).normalize_state(x))
    frac = (op != lr).mean(axis=0)  # (8,)
    assert np.abs(op - lr).max() == 1  # never more than the neighbouring bin
    assert (frac[:3] < 3e-4).all()  # ranges >= 0.5: measured 5.5e-5, 1.5e-4, 2.5e-4
    assert 3e-3 < frac[4] < 1e-2 and 1e-2 < frac[5] < 4e-2 and 0.07 < frac[6] < 0.17  # 5.6e-3, 2.3e-2, 0.115
    assert frac[7] == 0.0  # a constant feature: both rules saturate the same way


# ------------------------------------------------------------------------------- relative actions
REL = replace(LEROBOT, relative_action_dims=(0, 1, 2))


def _rel_norm(d: int = 4) -> Normalization:
    st = _stats(np.array([0.4, 0.6, 0.8, 1.0, 1.2, 1.4][:d], np.float32), seed=4)
    return Normalization(st, st, "quantile", REL)


def test_relative_actions_normalize_and_restore_against_brute_force(tmp_path: Path):
    norm = _rel_norm()
    q01, q99 = norm.action.q01.astype(np.float64), norm.action.q99.astype(np.float64)
    rng = np.random.default_rng(0)
    state = rng.normal(size=(3, 4)).astype(np.float32)  # (b, s)
    act = rng.normal(size=(3, 5, 4)).astype(np.float32)  # (b, h, d)
    rel = act.astype(np.float64).copy()
    rel[..., :3] -= state[:, None, :3]  # LeRobot: relative = action - state on the masked dims
    want = 2 * (rel - q01) / (q99 - q01) - 1
    np.testing.assert_allclose(norm.normalize_action(act, state), want, rtol=1e-5, atol=1e-5)
    back = norm.unnormalize_action(norm.normalize_action(act, state), state)
    np.testing.assert_allclose(back, act, rtol=0, atol=1e-5)
    y = rng.uniform(-1, 1, (3, 5, 4)).astype(np.float32)
    absolute = (y + 1) * (q99 - q01) / 2 + q01
    absolute[..., :3] += state[:, None, :3]
    np.testing.assert_allclose(actions_to_env(y, norm, 4, None, None, state), absolute, atol=1e-5)
    with pytest.raises(ValueError, match="relative_action_dims"):
        norm.unnormalize_action(y)
    # without relative dims the state is ignored: the openpi path is unchanged
    plain = Normalization(norm.state, norm.action, "quantile")
    assert np.array_equal(plain.normalize_action(act, state), plain.normalize_action(act))
    # SFT targets: the chunk starting at frame r is relative to the state at r
    feats = make_features(["s0", "s1", "s2", "s3"], ["a0", "a1", "a2", "a3"], [], (8, 8))
    ep_state = rng.normal(size=(6, 4)).astype(np.float32)
    ep_act = rng.normal(size=(6, 4)).astype(np.float32)
    with LeRobotWriter(tmp_path / "ds", 10, feats, "toy") as w:
        w.add_episode({"observation.state": ep_state, "action": ep_act}, "task")
    cd = ChunkDataset(open_dataset(tmp_path / "ds"), 4, 6, norm, ())
    b = cd.get_batch([3])  # frames 3, 4, 5 real, row 3 past the episode end
    ref = ep_act[3:6].astype(np.float64).copy()
    ref[:, :3] -= ep_state[3, :3]
    np.testing.assert_allclose(b["actions"][0, :3, :4], 2 * (ref - q01) / (q99 - q01) - 1, atol=1e-5)
    assert (b["actions"][0, 3] == 0).all() and (b["actions"][0, :, 4:] == 0).all()
    assert b["action_mask"][0, :, :4].tolist() == [[1] * 4] * 3 + [[0] * 4]


def test_runner_adds_the_observations_state_back():
    torch.manual_seed(0)
    model = Pi05Policy(policy_preset("tiny")).eval()
    norm = _rel_norm()
    enc = ObservationEncoder(model.config, norm, make_tokenizer(model.config))
    runner = PolicyRunner(model, enc, norm, SPEC, h_exec=3)
    rng = np.random.default_rng(0)
    obs = [
        Observation(
            {c: texture(64, 64, seed=10 * i + k) for k, c in enumerate(("scene", "wrist"))},
            rng.uniform(-0.3, 0.3, 4).astype(np.float32),
            "reach",
        )
        for i in range(2)
    ]
    acted = runner.act(obs, SamplerConfig(num_steps=2, h_exec=3, d_exec=4), seeds=torch.tensor([1, 2]))
    y = acted.sample.actions.float().numpy()[:, :3, :4].astype(np.float64)  # (b, h_exec, d)
    q01, q99 = norm.action.q01.astype(np.float64), norm.action.q99.astype(np.float64)
    want = (y + 1) * (q99 - q01) / 2 + q01
    want[..., :3] += np.stack([o.state for o in obs])[:, None, :3]
    np.testing.assert_allclose(acted.env_actions, np.clip(want, -1, 1), atol=1e-5)


# ----------------------------------------------------------------------------- the import
def _lerobot(
    tmp_path: Path,
    name: str = "lr",
    config: dict | None = None,
    pre_steps: list | None = None,
    post_steps=None,
) -> Path:
    root = tmp_path / name
    write_lerobot(root, synthetic_tensors(SMALL))
    cfg = json.loads((root / "config.json").read_text())
    cfg.update(config or {})
    (root / "config.json").write_text(json.dumps(cfg))
    if pre_steps is not None:
        (root / "policy_preprocessor.json").write_text(
            json.dumps({"name": "policy_preprocessor", "steps": pre_steps})
        )
    if post_steps is not None:
        (root / "policy_postprocessor.json").write_text(
            json.dumps({"name": "policy_postprocessor", "steps": post_steps})
        )
    return root


def _steps(rename=None, relative=None, eps=1e-8, norm_map=None):
    """A LeRobot 0.6 pi05 preprocessor pipeline: rename, batch, relative, normalize, state prompt, tokens."""
    return [
        {"registry_name": "rename_observations_processor", "config": {"rename_map": rename or {}}},
        {"registry_name": "to_batch_processor", "config": {}},
        {"registry_name": "relative_actions_processor", "config": relative or {"enabled": False}},
        {
            "registry_name": "normalizer_processor",
            "config": {
                "eps": eps,
                "norm_map": norm_map or {"VISUAL": "IDENTITY", "STATE": "QUANTILES", "ACTION": "QUANTILES"},
            },
            "state_file": "policy_preprocessor_step_3_normalizer_processor.safetensors",
        },
        {"registry_name": "pi05_prepare_state_tokenizer_processor_step", "config": {"max_state_dim": 32}},
        {"registry_name": "tokenizer_processor", "config": {"max_length": 48}},
        {"registry_name": "device_processor", "config": {"device": "cpu"}},
    ]


NAMES = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]


def test_import_records_conventions_by_source(tmp_path: Path):
    write_openpi(tmp_path / "op", synthetic_tensors(SMALL))
    op = import_pi05(tmp_path / "op")
    assert op.norm is not None and op.norm.conventions == Conventions(source="openpi", num_inference_steps=10)
    lr = import_pi05(_lerobot(tmp_path, config={"num_inference_steps": 4}))
    c = lr.norm.conventions
    assert (c.source, c.resize, c.norm_rule, c.norm_eps) == ("lerobot", "float-bilinear", "lerobot", 1e-8)
    assert c.relative_action_dims == () and c.num_inference_steps == 4 and c.source_rope == "transformers"
    assert lr.config.rope == "openpi" and lr.conventions == c and lr.extra["conventions"] == c.to_json()
    # relative actions: gripper excluded by name (LeRobot's substring rule); no names -> every dim
    cfg = {"use_relative_actions": True, "relative_exclude_joints": ["grip"], "action_feature_names": NAMES}
    assert import_pi05(_lerobot(tmp_path, "rel", cfg)).norm.conventions.relative_action_dims == tuple(
        range(6)
    )
    cfg_all = {"use_relative_actions": True, "action_feature_names": None}
    assert import_pi05(_lerobot(tmp_path, "all", cfg_all)).norm.conventions.relative_action_dims == tuple(
        range(7)
    )
    # the preprocessor's relative step and normalizer eps are what LeRobot runs: they win over config.json
    pre = _steps(relative={"enabled": True, "exclude_joints": ["yaw"], "action_names": NAMES}, eps=1e-5)
    post = [
        {"registry_name": "unnormalizer_processor", "config": {"eps": 1e-5}},
        {"registry_name": "absolute_actions_processor", "config": {"enabled": True}},
    ]
    c3 = import_pi05(_lerobot(tmp_path, "pre", {"use_relative_actions": False}, pre, post)).norm.conventions
    assert c3.relative_action_dims == (0, 1, 2, 3, 4, 6) and c3.norm_eps == 1e-5
    post_off = [{"registry_name": "absolute_actions_processor", "config": {"enabled": False}}]
    with pytest.raises(CheckpointError, match="absolute_actions_processor"):
        import_pi05(_lerobot(tmp_path, "incons", None, pre, post_off))
    # a relative state must cover the action dims
    small_state = {
        "use_relative_actions": True,
        "input_features": {
            "observation.images.image": {"type": "VISUAL", "shape": [3, 16, 16]},
            "observation.state": {"type": "STATE", "shape": [3]},
        },
    }
    with pytest.raises(CheckpointError, match=r"observation\.state\.shape"):
        import_pi05(_lerobot(tmp_path, "short", small_state))


def test_conventions_survive_save_and_load_and_old_files_default(tmp_path: Path):
    pytest.importorskip("sentencepiece")
    sp = tiny_sentencepiece(tmp_path)
    rename = {"observation.images.top": "observation.images.image", "observation.arm": "observation.state"}
    cfg = {"use_relative_actions": True, "action_feature_names": NAMES}
    root = _lerobot(tmp_path, config=cfg, pre_steps=_steps(rename=rename, relative=None))
    got = import_cli(root, tmp_path / "z1", tokenizer=sp, show_progress=False)
    back = ck.load_checkpoint(tmp_path / "z1")
    assert back.norm.conventions == got.norm.conventions
    # the preprocessor's relative step (disabled) is what LeRobot runs, over use_relative_actions
    assert back.norm.conventions.relative_action_dims == ()
    assert back.norm.conventions.camera_rename == (("top", "image"),)
    assert back.extra["rename_map_ignored"] == {"observation.arm": "observation.state"}
    # a norm_stats.json written before conventions existed (and before checkpoints carried hashes):
    # openpi rules
    doc = json.loads((tmp_path / "z1" / "norm_stats.json").read_text())
    del doc["conventions"]
    (tmp_path / "z1" / "norm_stats.json").write_text(json.dumps(doc))
    cfg_doc = json.loads((tmp_path / "z1" / "config.json").read_text())
    cfg_doc.pop("sha256", None)
    (tmp_path / "z1" / "config.json").write_text(json.dumps(cfg_doc))
    assert ck.load_checkpoint(tmp_path / "z1").norm.conventions == Conventions()
    with pytest.raises(ValueError, match="unknown field"):
        Conventions.from_json({"resize": "float-bilinear", "antialias": False})


def test_camera_renames_reach_the_model_slots(tmp_path: Path):
    rename = {
        "observation.images.top": "observation.images.image",
        "observation.images.hand": "observation.images.image2",
    }
    pytest.importorskip("sentencepiece")
    got = import_pi05(_lerobot(tmp_path, pre_steps=_steps(rename=rename)))
    cfg = got.config  # cameras image, image2, empty_camera_0 at 16x16
    tok = make_tokenizer(cfg, tiny_sentencepiece(tmp_path))
    enc = ObservationEncoder(cfg, got.norm, tok, include_state=False)
    top, hand = texture(20, 20, seed=1), texture(16, 16, seed=2)
    x = enc.encode([Observation({"hand": hand, "top": top}, np.zeros(8, np.float32), "go")])
    assert x.image_mask.tolist() == [[True, True, False]]
    np.testing.assert_allclose(x.images[0, 0].double().numpy(), brute_resize(top, 16, False), atol=FLOAT_TOL)
    np.testing.assert_allclose(x.images[0, 1].double().numpy(), brute_resize(hand, 16, False), atol=FLOAT_TOL)
    with pytest.raises(CheckpointError, match="not one of the policy's cameras"):
        import_pi05(
            _lerobot(
                tmp_path, "bad", pre_steps=_steps(rename={"observation.images.a": "observation.images.b"})
            )
        )


def test_fields_z1_cannot_honour_stop_the_import_by_name(tmp_path: Path):
    # a LeRobot feature z1 does not implement, a switch z1 has never heard of, real-time chunking
    for field, value in (
        ("use_proprioceptive_memory", True),
        ("use_future_trick", True),
        ("rtc_config", {"enabled": True, "execution_horizon": 10}),
    ):
        root = _lerobot(tmp_path, field, {field: value})
        with pytest.raises(CheckpointError, match=rf"{field}.*--accept {field}"):
            import_pi05(root)
        got = import_pi05(root, accept=[field])
        assert field in got.extra["accepted"]
    # neutral values are fine; a field that is not a switch is listed, not refused
    ok = import_pi05(
        _lerobot(tmp_path, "ok", {"rtc_config": None, "use_visual_memory": False, "use_xyz": False})
    )
    assert ok.extra["accepted"] == {} and ok.extra["unknown_config_fields"] == [
        "some_future_field",
        "use_xyz",
    ]
    with pytest.raises(CheckpointError, match="no such difference"):
        import_pi05(_lerobot(tmp_path, "typo"), accept=["use_proprioceptive_memry"])
    # mixed state/action modes change the prompt: refused unless accepted
    mixed = {"normalization_mapping": {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "QUANTILES"}}
    with pytest.raises(CheckpointError, match=r"normalization_mapping\.STATE"):
        import_pi05(_lerobot(tmp_path, "mixed", mixed))
    assert (
        import_pi05(_lerobot(tmp_path, "mixed2", mixed), accept=["normalization_mapping.STATE"]).norm.mode
        == "quantile"
    )
    # a config that does not fit its weights
    with pytest.raises(CheckpointError, match=r"image_resolution \[224, 224\].*16x16"):
        import_pi05(_lerobot(tmp_path, "res", {"image_resolution": [224, 224]}))
    write_openpi(tmp_path / "op", synthetic_tensors(SMALL))
    cfg = json.loads((tmp_path / "op" / "config.json").read_text())
    (tmp_path / "op" / "config.json").write_text(json.dumps({**cfg, "action_dim": 32}))
    with pytest.raises(CheckpointError, match="action_dim is 32"):
        import_pi05(tmp_path / "op")


def test_import_summary(tmp_path: Path, capsys):
    pytest.importorskip("sentencepiece")
    sp = tiny_sentencepiece(tmp_path)
    cfg = {"use_relative_actions": True, "action_feature_names": NAMES, "num_inference_steps": 5}
    root = _lerobot(
        tmp_path,
        config=cfg,
        pre_steps=_steps(
            rename={"observation.images.top": "observation.images.image"},
            relative={"enabled": True, "exclude_joints": ["gripper"], "action_names": NAMES},
        ),
    )
    import_cli(root, tmp_path / "z1", tokenizer=sp, show_progress=False)
    err = capsys.readouterr().err
    for piece in (
        "source       lerobot",
        "91 mapped, 1 skipped",
        "gemma_expert.lm_head.weight: dead weight",
        "norm stats   ",
        "quantile, state 8 dims, action 7 dims",
        "horizon 5, 7 real of 12 dims, relative to the state on dims [0, 1, 2, 3, 4, 5]",
        "5 denoise steps",
        "--num-steps 5",
        "cameras      image, image2, empty_camera_0 (env renames: top -> image)",
        "resize rule float-bilinear (no antialiasing)",
        "eps 1e-08 only where q99 == q01",
        "ignored      config fields z1 does not know: ['some_future_field']",
    ):
        assert piece in err, piece
    write_openpi(tmp_path / "op", synthetic_tensors(SMALL))
    lines = import_summary(import_pi05(tmp_path / "op"))
    assert lines[0].startswith("source       openpi") and any("uint8-antialias" in ln for ln in lines)
    assert any(ln.startswith("rope         openpi angle form") for ln in lines)


# ------------------------------------------------------------------------------------------ RoPE
def test_rope_forms_and_their_k_cache_difference():
    hd, p = 256, 968  # pi0.5's head_dim and its longest prefix (3 cameras x 256 + 200 tokens)
    pos = torch.arange(p)[None]
    half = torch.arange(hd // 2, dtype=torch.float32)
    s_op, c_op = rope_tables(pos, hd)
    s_tf, c_tf = rope_tables(pos, hd, "transformers")
    # brute force: JAX divides by the timescale; transformers multiplies by the inverse frequency
    torch.testing.assert_close(
        s_op[0, 0], torch.sin(pos[0, :, None].float() / 10000.0 ** (half * 2 / hd)), rtol=0, atol=0
    )
    inv = 1.0 / 10000.0 ** (torch.arange(0, hd, 2).float() / hd)
    torch.testing.assert_close(c_tf[0, 0], torch.cos(pos[0, :, None].float() * inv), rtol=0, atol=0)
    assert (s_op != s_tf).float().mean() > 0.1  # a quarter of the angles round differently
    k = torch.randn(2, 1, p, hd, generator=torch.Generator().manual_seed(0))  # (b, kv, p, hd)
    k_op, k_tf = apply_rope(k, s_op, c_op), apply_rope(k, s_tf, c_tf)
    rel = ((k_op - k_tf).abs().max() / k_op.abs().max()).item()
    assert 2e-5 < rel < 1e-4  # measured 4.8e-5; 6.4e-7 at 48 positions
    with pytest.raises(ValueError, match="RoPE form"):
        rope_tables(pos, hd, "jax")  # type: ignore[arg-type]


def test_rope_form_through_a_model_k_cache_and_the_config_guard(tmp_path: Path):
    """The K cache of every layer, openpi vs transformers RoPE, in a 2-layer model with 3 cameras of 64
    tokens and a 200-token prompt (392 positions, head_dim 64)."""
    cfg = PolicyConfig(
        name="rope-check",
        vision=VisionConfig(width=32, depth=1, mlp_dim=64, num_heads=2, patch=4, image_size=32),
        vlm=GemmaConfig(width=64, depth=2, mlp_dim=128, num_heads=2, num_kv_heads=1, head_dim=64),
        expert=GemmaConfig(width=32, depth=2, mlp_dim=64, num_heads=2, num_kv_heads=1, head_dim=64),
        vocab_size=300,
        max_token_len=200,
        action_dim=8,
        action_horizon=4,
        tokenizer="builtin",
    )

    torch.manual_seed(0)
    a = Pi05Policy(cfg).eval()
    b = Pi05Policy(cfg.with_(rope="transformers")).eval()
    b.load_state_dict(a.state_dict())
    g = torch.Generator().manual_seed(1)
    inputs = PolicyInputs(
        images=torch.rand(1, 3, 3, 32, 32, generator=g) * 2 - 1,  # (b, n, 3, y, x)
        image_mask=torch.ones(1, 3, dtype=torch.bool),
        tokens=torch.randint(0, 300, (1, 200), generator=g),
        token_mask=torch.ones(1, 200, dtype=torch.bool),
    )
    with torch.no_grad():
        ka, kb = a.build_prefix_cache(inputs).keys, b.build_prefix_cache(inputs).keys
    rels = [((x - y).abs().max() / x.abs().max()).item() for x, y in zip(ka, kb)]
    assert all(1e-7 < r < 1e-4 for r in rels), rels
    # The form is part of the checkpoint: a reload runs the same angles, bit for bit.
    ck.save_checkpoint(tmp_path / "c", b)
    loaded = ck.load_checkpoint(tmp_path / "c").model.eval()
    assert loaded.config.rope == "transformers"
    with torch.no_grad():
        kl = loaded.build_prefix_cache(inputs).keys
    assert all(torch.equal(x, y) for x, y in zip(kb, kl))
