"""`z1 rl` on one Meta-World task: an iteration runs end to end, and --resume reproduces it exactly."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fakes import identity_norm
from z1.config import policy_preset
from z1.models.checkpoint import load_checkpoint, save_checkpoint
from z1.models.pi05 import Pi05Policy
from z1.rl.task_sampling import TaskSamplingConfig
from z1.rollout.collector import RolloutConfig
from z1.train.metrics import read_metrics
from z1.train.rl import RLConfig, group_plan, run_rl

pytestmark = pytest.mark.sim
TASK = "button-press-topdown-v3"


@pytest.fixture(scope="module")
def init_ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = Pi05Policy(policy_preset("tiny"))
    path = tmp_path_factory.mktemp("init") / "ckpt"
    save_checkpoint(path, model, identity_norm(), extra={"stage": "sft"})
    return path


def _cfg(init: Path, out: Path, iterations: int) -> RLConfig:
    return RLConfig(
        init=str(init),
        out=str(out),
        tasks=TASK,
        iterations=iterations,
        groups_per_task=1,
        lr=1e-3,
        eval_episodes=0,
        calibration_episodes=0,
        num_slots=4,
        workers=0,
        threads=1,
        seed=3,
        rollout=RolloutConfig(
            group_size=4, trunks=2, branch_factor=2, branch_at=2, h_exec=4, num_steps=3, max_steps=20
        ),
    )


def _comparable(m: dict) -> dict:
    return {k: v for k, v in m.items() if not k.startswith(("time", "rollout/time"))}


def test_group_plan_seeds_are_disjoint():
    a = group_plan(["x", "y"], [2, 2], 0)
    b = group_plan(["x", "y"], [2, 2], 1)
    assert len({s for _, s in a + b}) == 8


@pytest.mark.parametrize("sampling", ["uniform", "uncertain"])
def test_rl_iteration_and_exact_resume(init_ckpt, tmp_path, sampling):
    def cfg(out: Path, iterations: int) -> RLConfig:
        return replace(_cfg(init_ckpt, out, iterations), task_sampling=TaskSamplingConfig(mode=sampling))

    full = tmp_path / "full"
    run_rl(cfg(full, 2))
    mf = read_metrics(full / "rl_metrics.jsonl")
    assert [m["step"] for m in mf] == [1, 2]
    m1 = mf[0]
    assert m1["env_steps"] > 0 and m1["env_steps"] <= m1["env_steps_flat_equiv"]
    assert m1[f"groups_of/{TASK}"] == 1
    assert m1["rollout/prefix_forwards"] < m1["chunks/total"]  # shared prefixes at the root and branch
    if m1["update/terms"] > 0:
        assert abs(m1["first_mb/log_ratio_abs_mean"]) < 1e-4  # rollout and trainer log-probs agree
    # Interrupted after iteration 1, resumed to 2: identical metrics and weights.
    part = tmp_path / "part"
    run_rl(cfg(part, 1))
    run_rl(replace(cfg(part, 2), resume=True))
    mp = read_metrics(part / "rl_metrics.jsonl")
    assert [_comparable(m) for m in mp] == [_comparable(m) for m in mf]
    a = load_checkpoint(full / "rl_ckpt").model.state_dict()
    b = load_checkpoint(part / "rl_ckpt").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_expert_only_training_keeps_the_vlm_bit_identical(init_ckpt, tmp_path):
    run_rl(replace(_cfg(init_ckpt, tmp_path / "r", 1), lr=1e-2))
    before = load_checkpoint(init_ckpt).model.state_dict()
    after = load_checkpoint(tmp_path / "r" / "rl_ckpt").model.state_dict()
    m = read_metrics(tmp_path / "r" / "rl_metrics.jsonl")[0]
    for k in before:
        if k.startswith(("vision.", "embed_tokens", "vlm_norm")) or ".vlm." in k:
            assert torch.equal(before[k], after[k]), k
    if m["update/terms"] > 0:
        assert any(not torch.equal(before[k], after[k]) for k in before if ".expert." in k)
