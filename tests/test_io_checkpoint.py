"""z1 checkpoints (round trip, atomic replace) and exact-resume training state."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import z1.models.checkpoint as ck
import z1.train.state as ts
from z1.config import GemmaConfig, PolicyConfig, VisionConfig, policy_preset
from z1.models.config_json import policy_config_from_json, policy_config_to_json
from z1.models.errors import CheckpointError
from z1.models.pi05 import Pi05Policy
from z1.types import FeatureStats, Normalization

MICRO = PolicyConfig(
    name="micro",
    vision=VisionConfig(width=16, depth=1, mlp_dim=32, num_heads=2, patch=8, image_size=16),
    vlm=GemmaConfig(width=32, depth=2, mlp_dim=48, num_heads=2, num_kv_heads=1, head_dim=8),
    expert=GemmaConfig(width=16, depth=2, mlp_dim=24, num_heads=2, num_kv_heads=1, head_dim=8),
    vocab_size=400,
    cameras=("a", "b"),
    max_token_len=12,
    action_dim=6,
    action_horizon=4,
    tokenizer="builtin",
)


def randomized(cfg: PolicyConfig, seed: int) -> Pi05Policy:
    torch.manual_seed(seed)
    m = Pi05Policy(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.5)
    return m


def norm(d: int = 3) -> Normalization:
    rng = np.random.default_rng(1)
    st = FeatureStats(*(rng.normal(size=d).astype(np.float32) for _ in range(4)))
    return Normalization(state=st, action=st, mode="meanstd")


def test_config_json_round_trip():
    for cfg in (policy_preset("pi05"), policy_preset("tiny"), policy_preset("small"), MICRO):
        js = json.loads(json.dumps(policy_config_to_json(cfg)))
        back = policy_config_from_json(js)
        assert back == cfg and isinstance(back.cameras, tuple) and isinstance(back.vision, VisionConfig)
    with pytest.raises(CheckpointError, match="unknown field"):
        policy_config_from_json({**policy_config_to_json(MICRO), "widht": 3})


def test_z1_checkpoint_round_trip_bitwise(tmp_path):
    m = randomized(MICRO, 0)
    nm = norm()
    ck.save_checkpoint(tmp_path / "c", m, nm, {"step": 7, "note": "x"})
    meta = json.loads((tmp_path / "c" / "config.json").read_text())
    assert meta["preset"] == "micro" and meta["z1_version"]
    got = ck.load_checkpoint(tmp_path / "c")
    assert got.config == MICRO and got.extra == {"step": 7, "note": "x"}
    assert got.norm is not None and got.norm.mode == "meanstd"
    for k in ("mean", "std", "q01", "q99"):
        assert np.array_equal(getattr(got.norm.state, k), getattr(nm.state, k))
    sd0, sd1 = m.state_dict(), got.model.state_dict()
    assert sd0.keys() == sd1.keys()
    for k in sd0:
        assert sd1[k].dtype == sd0[k].dtype and torch.equal(sd0[k], sd1[k]), k
    # bf16 save -> dtype kept with dtype=None, exact fp32 upcast with dtype=float32
    ck.save_checkpoint(tmp_path / "h", m.to(torch.bfloat16))
    h = ck.load_checkpoint(tmp_path / "h")
    assert h.norm is None and next(h.model.parameters()).dtype == torch.bfloat16
    f = ck.load_checkpoint(tmp_path / "h", dtype=torch.float32)
    assert torch.equal(f.model.time_mlp_in.weight, m.time_mlp_in.weight.float())


def test_atomic_replace_and_failure_keeps_previous(tmp_path, monkeypatch):
    dst = tmp_path / "ckpt"
    m1, m2 = randomized(MICRO, 1), randomized(MICRO, 2)
    ck.save_checkpoint(dst, m1, extra={"v": 1})
    ck.save_checkpoint(dst, m2, extra={"v": 2})  # replace
    assert ck.load_checkpoint(dst).extra == {"v": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no .tmp-/.old- leftovers

    real = ck.write_json

    def failing(path, data):
        if path.name == "config.json":
            raise OSError("disk full (simulated)")
        real(path, data)

    monkeypatch.setattr(ck, "write_json", failing)
    with pytest.raises(OSError, match="disk full"):
        ck.save_checkpoint(dst, m1, extra={"v": 3})
    monkeypatch.setattr(ck, "write_json", real)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    back = ck.load_checkpoint(dst)
    assert back.extra == {"v": 2}
    assert all(torch.equal(a, b) for a, b in zip(back.model.state_dict().values(), m2.state_dict().values()))
    with pytest.raises(CheckpointError, match="not found"):
        ck.load_checkpoint(tmp_path / "missing")


def test_load_checkpoint_wrong_shape_names_key(tmp_path):
    ck.save_checkpoint(tmp_path / "c", randomized(MICRO, 0))
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    cfg["policy"]["expert"]["mlp_dim"] = 20
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        CheckpointError, match=r"layers\.0\.expert\.mlp\.gate\.weight.*\(24, 16\).*\(20, 16\)"
    ):
        ck.load_checkpoint(tmp_path / "c")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(5, 7)
        self.b = nn.Linear(7, 3)
        self.unused = nn.Linear(3, 3)  # never gets a gradient -> no optimizer state


def train_step(net: Net, opt: torch.optim.Optimizer, gen: torch.Generator, rng: np.random.Generator) -> None:
    x = torch.randn(16, 5, generator=gen)
    scale = float(rng.uniform(0.5, 2.0))
    loss = (net.b(torch.tanh(net.a(x))) * scale).pow(2).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def make_opt(net: Net) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        [
            {"params": list(net.a.parameters()), "lr": 1e-2},
            {
                "params": list(net.b.parameters()) + list(net.unused.parameters()),
                "lr": 3e-3,
                "weight_decay": 0.1,
            },
        ],
        betas=(0.9, 0.95),
    )


def test_train_state_resume_is_bit_identical(tmp_path):
    torch.manual_seed(0)
    net = Net()
    opt = make_opt(net)
    gen, rng = torch.Generator().manual_seed(5), np.random.default_rng(9)
    for _ in range(3):
        train_step(net, opt, gen, rng)
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    ts.save_train_state(
        tmp_path / "ts",
        opt,
        {"ema.a.weight": net.a.weight.detach() * 2},
        {"step": 3, "betas_seen": (0.9, 0.95), "name": "run"},
        torch_generators={"noise": gen},
        numpy_rngs={"env": rng},
    )
    for _ in range(2):
        train_step(net, opt, gen, rng)
    want = {k: v.clone() for k, v in net.state_dict().items()}

    net2 = Net()
    net2.load_state_dict(weights)
    opt2 = make_opt(net2)
    gen2, rng2 = torch.Generator().manual_seed(123), np.random.default_rng(0)
    st = ts.load_train_state(
        tmp_path / "ts", opt2, torch_generators={"noise": gen2}, numpy_rngs={"env": rng2}
    )
    assert st.meta == {"step": 3, "betas_seen": (0.9, 0.95), "name": "run"}
    assert torch.equal(st.extra_tensors["ema.a.weight"], weights["a.weight"] * 2)
    assert opt2.param_groups[1]["betas"] == (0.9, 0.95) and opt2.param_groups[1]["weight_decay"] == 0.1
    for _ in range(2):
        train_step(net2, opt2, gen2, rng2)
    for k in want:
        assert torch.equal(want[k], net2.state_dict()[k]), k

    with pytest.raises(CheckpointError, match="parameters do not match"):
        ts.load_train_state(tmp_path / "ts", torch.optim.AdamW(nn.Linear(2, 2).parameters()))
    with pytest.raises(CheckpointError, match="holds a AdamW"):
        ts.load_train_state(tmp_path / "ts", torch.optim.SGD(Net().parameters(), lr=0.1))
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_checkpoint_with_train_state_is_one_atomic_unit(tmp_path, monkeypatch):
    model = randomized(MICRO, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.action_out_proj.weight.sum().backward()
    opt.step()
    gen = torch.Generator().manual_seed(1)
    spec = ts.TrainStateSpec(opt, meta={"step": 1}, torch_generators={"g": gen})
    ck.save_checkpoint(tmp_path / "c", model, train_state=spec)
    assert (tmp_path / "c" / "train_state" / ts.TRAIN_JSON).is_file()
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    st = ts.load_train_state(tmp_path / "c" / "train_state", opt2)
    assert st.meta == {"step": 1}
    p = model.action_out_proj.weight
    assert torch.equal(opt2.state[p]["exp_avg"], opt.state[p]["exp_avg"])

    # a failure while writing the train state keeps the previous weights AND train state
    def boom(directory, spec):
        raise OSError("interrupted (simulated)")

    monkeypatch.setattr(ts, "_write_train_state_files", boom)
    with pytest.raises(OSError, match="interrupted"):
        ck.save_checkpoint(
            tmp_path / "c", randomized(MICRO, 4), train_state=ts.TrainStateSpec(opt, meta={"step": 2})
        )
    monkeypatch.undo()
    assert sorted(q.name for q in tmp_path.iterdir()) == ["c"]
    assert torch.equal(ck.load_checkpoint(tmp_path / "c").model.action_out_proj.weight, p.detach())
    assert ts.load_train_state(tmp_path / "c" / "train_state", opt2).meta == {"step": 1}
