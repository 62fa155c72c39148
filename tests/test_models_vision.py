"""Vision stems: the patch stem is SigLIP's (pi05 geometry), the conv stem an option for small models."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from z1.config import VisionConfig, policy_preset
from z1.models.siglip import ConvStem, SiglipEncoder


def _cfg(**kw) -> VisionConfig:
    return replace(VisionConfig(width=32, depth=1, mlp_dim=64, num_heads=2, patch=8, image_size=32), **kw)


def test_conv_stem_is_strided_convs_groupnorm_gelu_then_a_projection():
    cfg = _cfg(stem="conv", stem_channels=4)
    stem = ConvStem(cfg)
    x = torch.randn(2, 3, 32, 32)  # (b, 3, y, x)
    # Brute force: the same layers applied by hand with the functional API.
    z = x
    convs = [m for m in stem.layers if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in stem.layers if isinstance(m, torch.nn.GroupNorm)]
    assert [c.out_channels for c in convs] == [4, 8, 16, 32]  # log2(8) = 3 doublings, then 1x1 to width
    for conv, gn in zip(convs[:-1], norms, strict=True):
        z = F.conv2d(z, conv.weight, None, stride=2, padding=1)
        z = F.group_norm(z, gn.num_groups, gn.weight, gn.bias, eps=gn.eps)
        z = F.gelu(z, approximate="tanh")
    z = F.conv2d(z, convs[-1].weight, convs[-1].bias)
    out = stem(x)
    assert out.shape == (2, 32, 4, 4)  # the token grid of an 8-px patch stem
    torch.testing.assert_close(out, z, rtol=1e-5, atol=1e-6)


def test_conv_stem_tokens_do_not_depend_on_the_batch():
    torch.manual_seed(0)
    enc = SiglipEncoder(_cfg(stem="conv"), out_width=16).eval()
    imgs = torch.rand(3, 2, 3, 32, 32) * 2 - 1  # (b, n, 3, y, x)
    together = enc(imgs)
    alone = torch.cat([enc(imgs[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    assert together.shape == (3, 2 * 16, 16)


def test_stems_have_their_own_parameter_names_and_bad_geometry_is_refused():
    patch = {n for n, _ in SiglipEncoder(_cfg(), 16).named_parameters()}
    conv = {n for n, _ in SiglipEncoder(_cfg(stem="conv"), 16).named_parameters()}
    assert "patch_embed.weight" in patch and not any(n.startswith("stem.") for n in patch)
    assert "patch_embed.weight" not in conv and "stem.layers.0.weight" in conv
    with pytest.raises(ValueError, match="power-of-two patch"):
        ConvStem(_cfg(stem="conv", patch=14, image_size=28))
    with pytest.raises(ValueError, match="stem must be"):
        SiglipEncoder(_cfg(stem="dct"), 16)  # type: ignore[arg-type]


def test_pi05_keeps_the_siglip_patch_stem():
    assert policy_preset("pi05").vision.stem == "patch"
    assert policy_preset("pi05").vision.patch == 14
