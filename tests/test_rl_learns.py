"""End-to-end learning check: tree GRPO moves the tiny policy toward success on a task with a clean signal.

The fake task succeeds when the point is pushed right past a goal (positive first action dim). The
SFT-free policy starts pushing left; a correct update (signs, advantages, log-prob ratio, tree weights)
must move the deterministic ODE policy's first action dim up. A sign or bookkeeping error moves it down.
"""

import numpy as np
import torch

from fakes import FakeVectorEnv, tiny_runner
from z1.distributed.ddp import current as current_dist
from z1.rl.grpo import GRPOConfig
from z1.rl.learner import Learner
from z1.rl.params import SelectiveConfig, apply_selective
from z1.rl.reward import RewardConfig, TaskTimeStats
from z1.rl.scoring import AdvantageConfig
from z1.rollout.collector import RolloutConfig
from z1.train.iteration import IterationConfig, iteration


def _ode_first_dim(runner) -> float:
    venv = FakeVectorEnv(8, goal=0.25)
    obs = venv.reset(list(range(8)), ["a"] * 8, list(range(1000, 1008)))
    acted = runner.act(obs, runner.sampler("ode", 5), torch.Generator().manual_seed(1))
    return float(acted.env_actions[:, :, 0].mean())


def test_tree_grpo_improves_a_clean_task():
    runner = tiny_runner()
    model = runner.model
    groups = apply_selective(model, SelectiveConfig(mode="expert"), 1e-3)
    opt = torch.optim.AdamW(groups.optimizer_groups())
    cfg = RolloutConfig(
        group_size=8, trunks=2, branch_factor=4, branch_at=1, h_exec=4, num_steps=5, max_steps=12
    )
    stats = TaskTimeStats()
    stats.register("a", cfg.max_steps)
    gen, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
    # One run-wide torch stream: the collector's noise and the learner's minibatch permutations.
    learner = Learner(model, opt, groups, GRPOConfig(kl_target=None), 1.0, True, gen, current_dist())
    it_cfg = IterationConfig(cfg, RewardConfig(kind="D0"), AdvantageConfig())
    before = _ode_first_dim(runner)
    success = []
    for it in range(12):
        plan = [("a", 100 * it + g) for g in range(4)]
        res = iteration(learner, runner, FakeVectorEnv(16, goal=0.25), plan, stats, it_cfg, rng, index=it)
        stats = res.task_stats
        success.append(np.mean([g.leaf_outcomes()[1].mean() for g in res.scored.rollout.groups]))
    after = _ode_first_dim(runner)
    assert after > before + 0.1, (before, after)
    assert np.mean(success[-4:]) > np.mean(success[:4]) + 0.1, success
