"""`z1 rl` on one Meta-World task: an iteration runs end to end and updates the policy, and --resume
reproduces it exactly."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fakes import identity_norm
from z1.config import policy_preset
from z1.models.checkpoint import load_checkpoint, save_checkpoint
from z1.models.pi05 import Pi05Policy
from z1.presets import rl_preset
from z1.rl.reward import RewardConfig
from z1.rl.task_sampling import TaskSamplingConfig
from z1.train.metrics import read_metrics
from z1.train.rl import RLConfig, group_plan, run_rl

pytestmark = pytest.mark.sim
TASK = "button-press-topdown-v3"
LEANING_TASK = "drawer-close-v3"  # the task the leaning policy solves sometimes


def save_leaning_policy(path: Path) -> Path:
    """A tiny policy whose actions lean toward (+x, -z): on drawer-close some group members succeed, so
    groups are mixed and GRPO has chunks to train on."""
    torch.manual_seed(0)
    model = Pi05Policy(policy_preset("tiny"))
    with torch.no_grad():
        model.action_out_proj.weight.mul_(0.1)
        bias = torch.zeros_like(model.action_out_proj.bias)
        bias[:3] = torch.tensor([-1.5, 0.0, 1.5])  # actions ~ -bias: the flow integrates x0 = x1 - v
        model.action_out_proj.bias.copy_(bias)
    save_checkpoint(path, model, identity_norm(), extra={"stage": "sft"})
    return path


@pytest.fixture(scope="module")
def leaning_ckpt(tmp_path_factory) -> Path:
    return save_leaning_policy(tmp_path_factory.mktemp("leaning") / "ckpt")


def _cfg(init: Path, out: Path, iterations: int) -> RLConfig:
    """The `debug` run preset (1 task, groups of 4 branched once, K=3, in-process envs) on TASK."""
    return replace(
        rl_preset("debug"), init=str(init), out=str(out), tasks=TASK, iterations=iterations, seed=3
    )


def _updating_cfg(init: Path, out: Path, iterations: int) -> RLConfig:
    """`_cfg` on the leaning policy's task, with groups that branch and succeed in part (D1 rewards, more
    noise, a longer cap): the iterations have trainable chunks and take optimizer steps."""
    base = _cfg(init, out, iterations)
    return replace(
        base,
        tasks=LEANING_TASK,
        groups_per_task=2,
        num_slots=8,
        image_size=16,
        reward=RewardConfig(kind="D1"),
        rollout=replace(base.rollout, max_steps=40, noise_level=1.0),
    )


def _comparable(m: dict) -> dict:
    return {k: v for k, v in m.items() if not k.startswith(("time", "rollout/time"))}


def test_group_plan_seeds_are_disjoint():
    a = group_plan(["x", "y"], [2, 2], 0)
    b = group_plan(["x", "y"], [2, 2], 1)
    assert len({s for _, s in a + b}) == 8


@pytest.mark.parametrize("sampling", ["uniform", "uncertain"])
def test_rl_iteration_and_exact_resume(leaning_ckpt, tmp_path, sampling):
    def cfg(out: Path, iterations: int) -> RLConfig:
        return replace(
            _updating_cfg(leaning_ckpt, out, iterations), task_sampling=TaskSamplingConfig(mode=sampling)
        )

    full = tmp_path / "full"
    run_rl(cfg(full, 2))
    mf = read_metrics(full / "rl_metrics.jsonl")
    assert [m["step"] for m in mf] == [1, 2]
    m1 = mf[0]
    assert m1["env_steps"] > 0 and m1["env_steps"] <= m1["env_steps_flat_equiv"]
    assert m1[f"groups_of/{LEANING_TASK}"] == 2
    assert m1["rollout/prefix_forwards"] < m1["chunks/total"]  # shared prefixes at the root and branch
    assert all(m["update/terms"] > 0 and m["update/steps"] > 0 for m in mf)  # both iterations update
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


def test_expert_only_training_keeps_the_vlm_bit_identical(leaning_ckpt, tmp_path):
    run_rl(replace(_updating_cfg(leaning_ckpt, tmp_path / "r", 1), lr=1e-2))
    before = load_checkpoint(leaning_ckpt).model.state_dict()
    after = load_checkpoint(tmp_path / "r" / "rl_ckpt").model.state_dict()
    m = read_metrics(tmp_path / "r" / "rl_metrics.jsonl")[0]
    for k in before:
        if k.startswith(("vision.", "embed_tokens", "vlm_norm")) or ".vlm." in k:
            assert torch.equal(before[k], after[k]), k
    assert m["update/terms"] > 0 and m["update/steps"] > 0
    assert any(not torch.equal(before[k], after[k]) for k in before if ".expert." in k)


def test_lora_run_saves_a_loadable_merged_policy_and_refuses_resume(leaning_ckpt, tmp_path):
    """A `--selective.mode lora` run's checkpoint is a plain pi0.5 (adapters folded in) that load_checkpoint
    reads, it differs from the start only in the LoRA'd VLM layers and the expert, and --resume says why it
    cannot continue such a run."""
    from z1.config import ConfigError
    from z1.rl.params import SelectiveConfig

    cfg = replace(
        _updating_cfg(leaning_ckpt, tmp_path / "r", 1),
        lr=1e-2,
        selective=SelectiveConfig(mode="lora", lora_layers=1, lora_rank=2),
    )
    metrics = run_rl(cfg)
    assert metrics["iterations"] == 1
    start = load_checkpoint(leaning_ckpt).model.state_dict()
    after = load_checkpoint(tmp_path / "r" / "rl_ckpt").model.state_dict()
    assert after.keys() == start.keys()  # no lora_A / lora_B keys
    changed = {k for k in start if not torch.equal(start[k], after[k])}
    depth = max(int(k.split(".")[1]) for k in start if k.startswith("layers.")) + 1
    assert any(k.startswith(f"layers.{depth - 1}.vlm.") for k in changed)  # the merged adapters
    assert not any(k.startswith(f"layers.{depth - 2}.vlm.") or k.startswith("vision.") for k in changed)
    with pytest.raises(ConfigError, match="LoRA run's merged weights"):
        run_rl(replace(cfg, resume=True, iterations=2))


def test_training_seeds_never_reach_the_evaluation_seeds():
    from z1.config import ConfigError
    from z1.evaluate import EVAL_SEED_BASE
    from z1.train.rl import check_seed_ranges

    cfg = replace(rl_preset("robocasa24-pi05"), init="x")  # 24 tasks x 8 groups, 200 iterations
    check_seed_ranges(cfg, 24)  # uniform: 192 seeds per iteration, 48,400 at the end
    uncertain = replace(cfg, task_sampling=TaskSamplingConfig(mode="uncertain"))
    with pytest.raises(ConfigError, match=f"past the first evaluation seed {EVAL_SEED_BASE}"):
        check_seed_ranges(uncertain, 24)  # 4,608 per iteration: would cross at iteration 20
    check_seed_ranges(replace(uncertain, iterations=19), 24)
    plan = group_plan(["t"] * 24, [8] * 24, 18, 8 * 24)  # the last iteration's seeds stay below
    assert max(s for _, s in plan) < EVAL_SEED_BASE
