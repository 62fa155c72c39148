"""ObservationEncoder: shapes, pixels, resizing, camera slots, prompt tokens; action padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from z1.config import policy_preset
from z1.models.tokenizer import BuiltinTokenizer, tokenize_prompt
from z1.models.transforms import (
    ObservationEncoder,
    action_dim_mask,
    actions_to_env,
    images_to_model,
    pad_actions,
    resolve_camera_map,
)
from z1.types import FeatureStats, Normalization, Observation

CFG = policy_preset("tiny")  # cameras ("scene", "wrist"), 64x64, max_token_len 32


def norm4() -> Normalization:
    st = FeatureStats(
        mean=np.zeros(4, np.float32),
        std=np.ones(4, np.float32),
        q01=np.array([-1, -2, 0, 0], np.float32),
        q99=np.array([1, 2, 4, 1], np.float32),
    )
    return Normalization(state=st, action=st, mode="quantile")


def obs(seed: int, size: int = 64, cams=("scene", "wrist"), instr="reach the goal") -> Observation:
    rng = np.random.default_rng(seed)
    images = {c: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for c in cams}
    return Observation(images=images, state=rng.uniform(-1, 1, 4).astype(np.float32), instruction=instr)


def test_encode_shapes_values_and_prompt():
    tok = BuiltinTokenizer(CFG.vocab_size)
    norm = norm4()
    enc = ObservationEncoder(CFG, norm, tok)
    obs_list = [obs(0), obs(1, instr="push_the button")]
    x = enc.encode(obs_list)
    assert x.images.shape == (2, 2, 3, 64, 64) and x.images.dtype == torch.float32
    assert x.image_mask.tolist() == [[True, True], [True, True]]
    assert x.tokens.shape == x.token_mask.shape == (2, CFG.max_token_len)
    assert x.tokens.dtype == torch.int64 and x.token_mask.dtype == torch.bool
    # pixels: uint8 -> [-1, 1], (y, x, 3) -> (3, y, x), no resize at the native size
    src = obs_list[1].images["wrist"]
    want = torch.from_numpy(src.astype(np.float32) / 255.0 * 2.0 - 1.0).permute(2, 0, 1)
    torch.testing.assert_close(x.images[1, 1], want, rtol=0, atol=1e-6)
    assert x.images.min() >= -1.0 and x.images.max() <= 1.0
    # prompt: normalized state, digitized
    ids, mask = tokenize_prompt(
        tok, "push_the button", norm.normalize_state(obs_list[1].state), CFG.max_token_len
    )
    assert x.tokens[1].tolist() == ids.tolist() and x.token_mask[1].tolist() == mask.tolist()
    s = norm.normalize_state(obs_list[1].state)
    ids_raw, _ = tokenize_prompt(tok, "push_the button", obs_list[1].state, CFG.max_token_len)
    assert not np.allclose(s, obs_list[1].state) and ids_raw.tolist() != ids.tolist()


def test_encode_resizes_with_antialias_and_pads_non_square():
    tok = BuiltinTokenizer(CFG.vocab_size)
    enc = ObservationEncoder(CFG, None, tok)
    o = obs(3, size=128)
    x = enc.encode([o])
    src = torch.from_numpy(o.images["scene"]).permute(2, 0, 1)[None].float()
    ref = F.interpolate(src, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)[0]
    want = ref.round().clamp(0, 255) / 255.0 * 2 - 1  # uint8 resize = float resize rounded (to 1 level)
    torch.testing.assert_close(x.images[0, 0], want, rtol=0, atol=2.0 / 255.0 + 1e-6)
    assert (x.images[0, 0] - want).abs().mean() < 1.0 / 255.0  # under half a level on average
    # a smooth gradient: the box filter gives the exact 2x2 means
    ramp = np.broadcast_to(np.arange(128, dtype=np.uint8)[None, :, None] * 2, (128, 128, 3)).copy()
    out = images_to_model(torch.from_numpy(ramp)[None], 64)[0, 0, 0]  # (x,)
    expect = (np.arange(64) * 4 + 1) / 255.0 * 2 - 1  # mean of 4k and 4k+2
    np.testing.assert_allclose(out.numpy(), expect, atol=1.0 / 255.0 + 1e-6)
    # a 32x64 image: scaled to 32x64 -> fits width; 16 rows of -1 padding above and below
    wide = np.full((32, 64, 3), 255, np.uint8)
    out = images_to_model(torch.from_numpy(wide)[None], 64)
    assert out.shape == (1, 3, 64, 64)
    assert (out[0, :, :16] == -1).all() and (out[0, :, 48:] == -1).all() and (out[0, :, 16:48] == 1).all()


def test_camera_mapping_and_missing_cameras():
    tok = BuiltinTokenizer(CFG.vocab_size)
    # explicit map {env camera: model slot}; the slot "wrist" has no camera -> -1 image, mask False
    enc = ObservationEncoder(CFG, None, tok, camera_map={"corner": "scene"})
    o = obs(4, cams=("corner", "gripper"))
    x = enc.encode([o])
    assert x.image_mask.tolist() == [[True, False]]
    assert (x.images[0, 1] == -1).all()
    want = torch.from_numpy(o.images["corner"]).permute(2, 0, 1).float() / 255.0 * 2 - 1
    torch.testing.assert_close(x.images[0, 0], want, rtol=0, atol=1e-6)
    # by name, and in order when no name matches
    assert resolve_camera_map(("scene", "wrist"), ("wrist", "scene"), None) == {
        "scene": "scene",
        "wrist": "wrist",
    }
    assert resolve_camera_map(("base", "left", "right"), ("a", "b"), None) == {"base": "a", "left": "b"}
    # a batch mixing camera sets: row 1 lacks the wrist camera
    enc2 = ObservationEncoder(CFG, None, tok)
    x2 = enc2.encode([obs(5), obs(6, cams=("scene",))])
    assert x2.image_mask.tolist() == [[True, True], [True, False]]
    assert (x2.images[1, 1] == -1).all()
    with pytest.raises(ValueError, match="unknown model slot"):
        resolve_camera_map(("scene",), ("a",), {"a": "nope"})
    with pytest.raises(ValueError, match="camera_map"):
        resolve_camera_map(("s",), ("a", "b"), None)
    with pytest.raises(ValueError, match="lacks"):
        ObservationEncoder(CFG, None, tok, camera_map={"zzz": "scene"}).encode([obs(7)])


def test_action_padding_and_to_env():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    p = pad_actions(a, 5)
    assert p.shape == (2, 5) and (p[:, 3:] == 0).all() and (p[:, :3] == a).all()
    pt = pad_actions(torch.from_numpy(a), 5)
    assert isinstance(pt, torch.Tensor) and torch.equal(pt, torch.from_numpy(p))
    with pytest.raises(ValueError, match="action_dim"):
        pad_actions(a, 2)
    assert action_dim_mask(3, 5).tolist() == [True, True, True, False, False]
    norm = norm4()
    chunk = np.random.default_rng(0).uniform(-1.5, 1.5, (8, 6)).astype(np.float32)  # (h, a)
    low, high = np.full(4, -1.5, np.float32), np.full(4, 1.5, np.float32)
    env = actions_to_env(chunk, norm, 4, low, high)
    ref = np.clip(
        (chunk[:, :4] + 1) / 2 * (norm.action.q99 - norm.action.q01 + 1e-6) + norm.action.q01, low, high
    )
    assert env.shape == (8, 4) and env.dtype == np.float32
    np.testing.assert_allclose(env, ref, rtol=0, atol=1e-6)
    assert np.array_equal(actions_to_env(chunk, None, 2, None, None), chunk[:, :2])
