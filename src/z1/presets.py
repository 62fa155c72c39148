"""Named run presets (docs/algorithm.md#defaults): the one registry of settings, each for the whole pipeline.

    z1 demo --preset mw-quick                                    # collect -> SFT -> eval -> GRPO -> eval
    z1 sft --preset mw-quick --dataset runs/data                 # the preset's SFT recipe
    z1 rl --preset mw-quick --init runs/demo/sft_ckpt            # the preset's GRPO settings
    z1 rl --preset robocasa24-pi05 --init ckpts/pi05_robocasa --rollout.group-size 8 ...

A preset holds the GRPO config (`RunPreset.rl`), the SFT recipe (policy size, steps, batch), how many
demonstrations to collect and how many episodes to evaluate; `z1 sft|rl --preset` take it as the defaults
of every field and the flags after it override field by field; `z1 demo` runs it as it is (only paths,
workers and seed come from the demo's own flags). `mw-quick` and `mt10` run on 2 CPU cores with the
laptop policy; `robocasa24-pi05` is the paper's setting (a real pi0.5 imported with `z1 import`, RoboCasa
v0.2's 24 tasks, 24 env worker processes, `--ray auto` to spread them over a cluster) and needs GPUs plus
a user-installed RoboCasa. Policy geometries (`--policy tiny|laptop|small|pi05`) are a separate, lower-level
registry: z1.config.POLICY_PRESETS.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from z1.config import lookup
from z1.rl.grpo import GRPOConfig
from z1.rl.params import SelectiveConfig
from z1.rl.reward import RewardConfig
from z1.rl.task_sampling import TaskSamplingConfig
from z1.rollout.collector import RolloutConfig
from z1.train.rl import RLConfig
from z1.train.sft import SFTConfig


@dataclass(frozen=True)
class RunPreset:
    """One named setting of the whole pipeline."""

    doc: str
    """One line for `--help`."""
    rl: RLConfig
    """The GRPO stage (`z1 rl --preset`, the demo's GRPO stage)."""
    policy: str = "laptop"
    """Policy geometry SFT builds from scratch (z1.config.POLICY_PRESETS)."""
    demos_per_task: int = 20
    """Scripted demonstrations the demo collects per task."""
    sft_steps: int = 2000
    sft_batch: int = 32
    sft_lr: float = 1e-3
    """Peak SFT learning rate (cosine to a tenth of it). From scratch on the laptop policy 1e-3 beat 3e-4
    by +20.5 points on mw-quick (bench/results/sft_mw-quick.md, conv16-lr vs conv16)."""
    eval_episodes: int = 30
    """ODE episodes per task of the demo's SFT and final evaluations (same seeds, so deltas are paired)."""

    def sft(self, dataset: Any, **overrides: Any) -> SFTConfig:
        """The preset's SFT recipe (`z1 sft --preset`, the demo's SFT stage), other fields as given."""
        recipe = dict(
            policy=self.policy,
            steps=self.sft_steps,
            batch_size=self.sft_batch,
            lr=self.sft_lr,
            final_lr=self.sft_lr / 10,
        )
        return SFTConfig(dataset=dataset, **{**recipe, **overrides})


_RL: dict[str, RLConfig] = {
    # 4 Meta-World tasks, laptop policy, 2 cores: 16 env slots in 2 worker processes, K=5 denoise steps.
    "mw-quick": RLConfig(
        init="",
        suite="metaworld",
        tasks="mw-quick",
        # 20 iterations of 3 groups per task: about 25 minutes of GRPO on 2 cores (the demo's budget; a
        # demo run from the laptop SFT went 53.3% -> 56.7%). Evaluations (10 episodes per task) after
        # iterations 4, 8, 12, 16 and 20 give the report a 5-point curve beside the SFT evaluation.
        iterations=20,
        groups_per_task=3,
        # Measured on this preset (bench/results/rl.md): lr 1e-4..2e-4 with one random stochastic step
        # lost 14-16 points; lr 5e-5 with every denoise step stochastic gained +5.5 in 26 iterations.
        lr=5e-5,
        eval_every=4,
        eval_episodes=10,
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


RUN_PRESETS: dict[str, RunPreset] = {
    "mw-quick": RunPreset(
        "4 Meta-World tasks, laptop policy, 2 CPU cores (the embedded default; `make demo` runs it)",
        _RL["mw-quick"],
    ),
    "mt10": RunPreset(
        "Meta-World MT10, laptop policy, 2 CPU cores", _RL["mt10"], demos_per_task=10, eval_episodes=20
    ),
    "robosuite": RunPreset(
        "robosuite Lift / PickPlaceCan / Door at 64 px (no scripted experts: bring a dataset)",
        _RL["robosuite"],
        demos_per_task=0,
    ),
    # The smallest run that walks every stage of a GRPO iteration (tree branching included) in seconds; the
    # tests start from it instead of hand-built configs. Its numbers mean nothing.
    "debug": RunPreset(
        "seconds-long smoke run: 1 Meta-World task, groups of 4 branched once, K=3, no evaluation",
        RLConfig(
            init="",
            tasks="button-press-topdown-v3",
            iterations=1,
            groups_per_task=1,
            lr=1e-3,
            eval_episodes=0,
            calibration_episodes=0,
            num_slots=4,
            workers=0,
            threads=1,
            rollout=RolloutConfig(
                group_size=4, trunks=2, branch_factor=2, branch_at=2, h_exec=4, num_steps=3, max_steps=20
            ),
        ),
        policy="tiny",
        demos_per_task=2,
        sft_steps=20,
        sft_batch=8,
        eval_episodes=2,
    ),
    "robocasa24-pi05": RunPreset(
        "the paper's setting: an imported pi0.5 on RoboCasa's 24 tasks, 24 env workers (--ray auto), GPUs",
        _RL["robocasa24-pi05"],
        policy="pi05",
        demos_per_task=0,
        sft_steps=30000,
        sft_batch=32,
        sft_lr=2.5e-5,  # openpi's pi0.5 fine-tuning rate
        eval_episodes=50,
    ),
}


def run_preset(name: str) -> RunPreset:
    return lookup(RUN_PRESETS, name, "preset")


def rl_preset(name: str) -> RLConfig:
    return run_preset(name).rl


def quick(p: RunPreset) -> RunPreset:
    """`z1 demo --quick`: the preset's settings with budgets so small that the whole path runs in minutes
    (the numbers mean nothing; the demo says so)."""
    return replace(
        p,
        demos_per_task=3,
        sft_steps=60,
        eval_episodes=2,
        rl=replace(
            p.rl,
            iterations=1,
            groups_per_task=1,
            eval_every=0,
            eval_episodes=2,
            calibration_episodes=2,
            rollout=replace(p.rl.rollout, max_steps=40, num_steps=3),
        ),
    )


def presets_help() -> str:
    """The preset list for `--help` texts."""
    return "Presets (--preset NAME, flags after it override field by field):\n" + "\n".join(
        f"  {name}: {p.doc}" for name, p in RUN_PRESETS.items()
    )
