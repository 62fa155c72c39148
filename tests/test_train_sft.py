"""SFT: the loss goes down, checkpoints load, and --resume reproduces the uninterrupted run exactly."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from z1.data.lerobot import DatasetError, LeRobotWriter, make_features
from z1.models.checkpoint import load_checkpoint
from z1.train.metrics import read_metrics
from z1.train.sft import SFTConfig, run_sft


def write_dataset(
    root: Path, episodes: int = 3, length: int = 14, seed: int = 0, cameras=("scene", "wrist")
) -> Path:
    rng = np.random.default_rng(seed)
    feats = make_features(("x", "y", "z", "g"), ("dx", "dy", "dz", "dg"), cameras, (64, 64))
    with LeRobotWriter(root, fps=20, features=feats, robot_type="fake") as w:
        for e in range(episodes):
            t = np.linspace(0, 1, length, dtype=np.float32)[:, None]
            goal = rng.uniform(-1, 1, size=(1, 4)).astype(np.float32)
            state = (t * goal).astype(np.float32)  # (e, 4)
            action = np.repeat(goal, length, axis=0) * 0.5 + 0.01 * rng.standard_normal((length, 4)).astype(
                np.float32
            )
            frames = {"observation.state": state, "action": action}
            for c, cam in enumerate(cameras):
                img = np.zeros((length, 64, 64, 3), np.uint8)
                img[..., c] = (127 + 120 * goal[0, c % 4]).astype(np.uint8)
                img[:, :, :, 2] = (255 * t[:, :, None]).astype(np.uint8)
                frames[f"observation.images.{cam}"] = img
            w.add_episode(frames, task=f"reach goal {e % 2}")
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("ds") / "demo")


def _losses(out: Path) -> list[float]:
    return [m["loss"] for m in read_metrics(out / "sft_metrics.jsonl")]


def test_sft_lowers_the_loss_and_writes_a_loadable_checkpoint(dataset, tmp_path):
    cfg = SFTConfig(
        dataset=str(dataset),
        out=str(tmp_path / "run"),
        steps=40,
        batch_size=16,
        lr=1e-3,
        warmup=5,
        log_every=5,
        ckpt_every=40,
        threads=1,
    )
    summary = run_sft(cfg)
    losses = _losses(tmp_path / "run")
    assert len(losses) == 8
    assert np.mean(losses[-2:]) < 0.7 * np.mean(losses[:2]), losses
    loaded = load_checkpoint(Path(summary["checkpoint"]))
    assert loaded.norm is not None and loaded.model.config.name == "laptop"  # the default --policy


def test_resume_reproduces_the_uninterrupted_run(dataset, tmp_path):
    base = SFTConfig(
        dataset=str(dataset),
        steps=8,
        batch_size=8,
        lr=1e-3,
        warmup=2,
        log_every=1,
        ckpt_every=4,
        threads=1,
        augment=True,
        ema=0.9,
    )
    run_sft(replace(base, out=str(tmp_path / "full")))
    full = _losses(tmp_path / "full")
    assert len(full) == 8
    # Interrupted after the step-4 checkpoint, then resumed: the loss curve is bit-identical.
    run_sft(replace(base, out=str(tmp_path / "half"), stop_after=4))
    assert len(_losses(tmp_path / "half")) == 4
    run_sft(replace(base, out=str(tmp_path / "half"), resume=True))
    assert _losses(tmp_path / "half") == full


def test_dataset_camera_mismatch_is_named(tmp_path):
    ds = write_dataset(tmp_path / "onecam", episodes=1, cameras=("scene",))
    with pytest.raises(DatasetError, match="wrist"):
        run_sft(SFTConfig(dataset=str(ds), out=str(tmp_path / "r"), steps=1, threads=1))
    assert not (tmp_path / "r" / "sft_ckpt").exists()


def test_resume_with_another_policy_is_refused(dataset, tmp_path):
    from z1.config import ConfigError

    out = tmp_path / "r"
    run_sft(SFTConfig(dataset=str(dataset), out=str(out), steps=2, batch_size=4, threads=1, policy="tiny"))
    with pytest.raises(ConfigError, match="--policy: 'tiny' in the run, now 'small'"):
        run_sft(
            SFTConfig(dataset=str(dataset), out=str(out), steps=4, policy="small", resume=True, threads=1)
        )


@pytest.mark.sim
def test_periodic_eval_is_logged(dataset, tmp_path):
    cfg = SFTConfig(
        dataset=str(dataset),
        out=str(tmp_path / "e"),
        steps=2,
        batch_size=4,
        threads=1,
        eval_every=2,
        eval_tasks="reach-v3",
        eval_episodes=1,
    )
    run_sft(cfg)
    rows = [m for m in read_metrics(tmp_path / "e" / "sft_metrics.jsonl") if "eval_success_avg" in m]
    assert len(rows) == 1 and 0.0 <= rows[0]["eval_success/reach-v3"] <= 1.0


def test_random_shift_is_seeded_and_equals_pad_and_crop():
    import torch

    from z1.train.sft import random_shift, shift_offsets

    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    o1, o2 = shift_offsets(5, 2, 4, g1), shift_offsets(5, 2, 4, g2)
    assert torch.equal(o1, o2) and o1.shape == (5, 2, 2)
    assert int(o1.min()) >= 0 and int(o1.max()) <= 8
    assert not torch.equal(o1, shift_offsets(5, 2, 4, torch.Generator().manual_seed(4)))
    imgs = torch.rand(5, 2, 3, 16, 16)  # (b, n, c, y, x)
    out = random_shift(imgs, 4, o1)
    for i in range(5):
        for j in range(2):
            padded = np.pad(imgs[i, j].numpy(), ((0, 0), (4, 4), (4, 4)), mode="edge")
            oy, ox = o1[i, j].tolist()
            np.testing.assert_array_equal(out[i, j].numpy(), padded[:, oy : oy + 16, ox : ox + 16])
    centre = torch.full((5, 2, 2), 4, dtype=torch.long)
    assert torch.equal(random_shift(imgs, 4, centre), imgs)  # offset = pad is the identity


def test_augmented_sft_is_reproducible_and_differs_from_plain(dataset, tmp_path):
    base = SFTConfig(dataset=str(dataset), steps=4, batch_size=8, warmup=1, log_every=1, threads=1)
    run_sft(replace(base, out=str(tmp_path / "a"), augment=True))
    run_sft(replace(base, out=str(tmp_path / "b"), augment=True))
    run_sft(replace(base, out=str(tmp_path / "c"), augment=False))
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    assert _losses(tmp_path / "a") != _losses(tmp_path / "c")


def test_conv_stem_policy_trains_and_round_trips(dataset, tmp_path):
    import torch

    from z1.config import policy_preset

    tiny = policy_preset("tiny")
    pc = replace(tiny, name="tiny-conv", vision=replace(tiny.vision, stem="conv", patch=8))
    cfg = SFTConfig(
        dataset=str(dataset),
        out=str(tmp_path / "r"),
        steps=30,
        batch_size=16,
        lr=1e-3,
        warmup=3,
        log_every=5,
        ckpt_every=30,
        threads=1,
    )
    summary = run_sft(cfg, geometry=pc)
    losses = _losses(tmp_path / "r")
    assert np.mean(losses[-2:]) < 0.7 * np.mean(losses[:2]), losses
    loaded = load_checkpoint(Path(summary["checkpoint"]))
    assert loaded.model.config == pc
    assert any(n.startswith("vision.stem.") for n, _ in loaded.model.named_parameters())
    x = torch.rand(2, 2, 3, 64, 64) * 2 - 1
    from z1.models.pi05 import Pi05Policy

    fresh = Pi05Policy(pc)
    fresh.load_state_dict(loaded.model.state_dict())
    torch.testing.assert_close(fresh.vision(x), loaded.model.vision(x), rtol=0, atol=0)


def test_sft_on_a_dataset_from_elsewhere_after_mapping(tmp_path):
    """Cameras `front`/`wrist_cam` and state `observation.joints`: mapped with `data`, SFT trains and the
    checkpoint's normalization holds the exact quantiles; unmapped, it stops naming the features and flag."""
    from foreign_data import MAPPING, STATE_KEY, lerobot_style_stats, write_foreign_dataset
    from z1.data.lerobot import open_dataset
    from z1.data.mapping import DataConfig

    root = write_foreign_dataset(tmp_path / "foreign")
    lerobot_style_stats(root)  # stats.json as LeRobot v3 aggregates it: the default must not use it
    base = SFTConfig(dataset=str(root), steps=3, batch_size=4, warmup=1, log_every=1, threads=1)
    with pytest.raises(DatasetError, match=r"front \[64, 64, 3\].*--data.state-key"):
        run_sft(replace(base, out=str(tmp_path / "no-map")))
    with pytest.raises(DatasetError, match="--data.cameras front:scene,wrist_cam:wrist"):
        run_sft(replace(base, out=str(tmp_path / "half"), data=DataConfig(state_key=STATE_KEY)))
    data = DataConfig(cameras=MAPPING, state_key=STATE_KEY)
    summary = run_sft(replace(base, out=str(tmp_path / "run"), data=data))
    assert np.isfinite(summary["final_loss"]) and len(_losses(tmp_path / "run")) == 3
    norm = load_checkpoint(Path(summary["checkpoint"])).norm
    action = open_dataset(root, data).action.astype(np.float64)
    np.testing.assert_allclose(norm.action.q01, np.quantile(action, 0.01, axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(norm.action.q99, np.quantile(action, 0.99, axis=0), rtol=1e-5, atol=1e-6)
