"""Named run presets (docs/algorithm.md#defaults): GRPO settings per setting, overridable field by field.

    z1 rl --preset mw-quick --init runs/demo/sft_ckpt            # the laptop default
    z1 rl --preset robocasa24-pi05 --init ckpts/pi05_robocasa --rollout.group-size 8 ...

`mw-quick` and `mt10` run on 2 CPU cores with the tiny policy; `robocasa24-pi05` is the paper's
setting (a real pi0.5 imported with `z1 import`, RoboCasa v0.2's 24 tasks, Ray env workers) and needs
GPUs plus a user-installed RoboCasa.
"""

from __future__ import annotations

from z1.config import lookup
from z1.rl.grpo import GRPOConfig
from z1.rl.params import SelectiveConfig
from z1.rl.reward import RewardConfig
from z1.rl.task_sampling import TaskSamplingConfig
from z1.rollout.collector import RolloutConfig
from z1.train.rl import RLConfig

RL_PRESETS: dict[str, RLConfig] = {
    # 4 Meta-World tasks, tiny policy, 2 cores: 16 env slots in 2 worker processes, K=5 denoise steps.
    "mw-quick": RLConfig(
        init="",
        suite="metaworld",
        tasks="mw-quick",
        iterations=40,
        groups_per_task=3,
        # Measured on this preset (bench/results/rl.md): lr 1e-4..2e-4 with one random stochastic step
        # lost 14-16 points; lr 5e-5 with every denoise step stochastic gained +5.5 in 26 iterations.
        lr=5e-5,
        eval_every=10,
        eval_episodes=20,
        # Groups spread over tasks by sqrt(p (1 - p)) + eps of train success (docs/algorithm.md#task-sampling)
        # as all-fail pick-place/push groups taught nothing. From a 28-29% SFT (bench/results/rl.md):
        # tree +12.0/+11.5 (seeds 0/1, 26 it) vs +5.5/+10.5 with uniform; flat +14.5 vs +7.5 (16 it).
        task_sampling=TaskSamplingConfig(mode="uncertain"),
        # Branch half-way through the cap: failures (which run to the cap) save 37.5% of their env steps.
        # All K steps stochastic: more groups with mixed outcomes (0.56 vs 0.38 of flat groups from the SFT
        # policy), and the ratio sees, so the update steers, the whole denoise chain.
        rollout=RolloutConfig(
            group_size=8,
            trunks=2,
            branch_factor=4,
            branch_frac=0.5,
            h_exec=4,
            num_steps=5,
            max_steps=160,
            stochastic="all",
        ),
    ),
    "mt10": RLConfig(
        init="",
        suite="metaworld",
        tasks="mt10",
        iterations=60,
        groups_per_task=1,
        lr=3e-5,
        eval_every=10,
        eval_episodes=20,
        rollout=RolloutConfig(group_size=8, trunks=2, branch_factor=4, h_exec=4, num_steps=5, max_steps=200),
    ),
    "robosuite": RLConfig(
        init="",
        suite="robosuite",
        tasks="Lift,PickPlaceCan,Door",
        iterations=60,
        groups_per_task=2,
        lr=3e-5,
        image_size=64,
        rollout=RolloutConfig(group_size=8, trunks=2, branch_factor=4, h_exec=5, num_steps=5, max_steps=300),
    ),
    # The paper's setting (docs/algorithm.md#defaults): G=8, K=10, a=0.5, single-random SDE step,
    # clip 0.2/0.28, lr 5e-6 on the action expert, D4 rewards with pooled normalization.
    "robocasa24-pi05": RLConfig(
        init="",
        suite="robocasa",
        tasks="robocasa24",
        iterations=200,
        groups_per_task=8,
        lr=5e-6,
        eval_every=20,
        eval_episodes=50,
        num_slots=192,
        workers=24,
        image_size=224,
        rollout=RolloutConfig(
            group_size=8, trunks=2, branch_factor=4, h_exec=10, num_steps=10, max_steps=500
        ),
        reward=RewardConfig(kind="D4"),
        grpo=GRPOConfig(minibatches=4),
        selective=SelectiveConfig(mode="expert"),
    ),
}


def rl_preset(name: str) -> RLConfig:
    return lookup(RL_PRESETS, name, "RL preset")
