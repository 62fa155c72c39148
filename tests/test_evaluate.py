"""Evaluation: Wilson intervals, and results that depend only on (checkpoint, task, seed)."""

import numpy as np
import pytest
import torch

from fakes import identity_norm
from z1.config import policy_preset
from z1.evaluate import EvalConfig, evaluate, markdown_table, wilson_interval
from z1.models.pi05 import Pi05Policy
from z1.models.tokenizer import make_tokenizer
from z1.models.transforms import ObservationEncoder
from z1.rollout.runner import PolicyRunner


def test_wilson_interval_reference_values():
    # Reference: 7/10 -> [0.3968, 0.8922] (Wilson score interval, z = 1.96).
    lo, hi = wilson_interval(7, 10)
    assert lo == pytest.approx(0.3968, abs=1e-4) and hi == pytest.approx(0.8922, abs=1e-4)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.sim
def test_results_do_not_depend_on_slots_or_workers():
    from z1.envs.vector import InProcessVectorEnv, VectorEnv

    torch.manual_seed(0)
    model = Pi05Policy(policy_preset("tiny")).eval()
    norm = identity_norm()
    cfg = EvalConfig(episodes_per_task=3, num_steps=2, max_steps=12, videos_per_task=3)
    tasks = ["reach-v3", "push-v3"]
    out = []
    for venv in (InProcessVectorEnv("metaworld", 1), VectorEnv("metaworld", 3, num_workers=2)):
        with venv:
            runner = PolicyRunner(
                model,
                ObservationEncoder(model.config, norm, make_tokenizer(model.config)),
                norm,
                venv.spec,
                h_exec=4,
            )
            torch.manual_seed(123 + len(out))  # the global RNG must not matter
            out.append(evaluate(runner, venv, tasks, cfg))
    a, b = out
    for t in tasks:
        assert a.tasks[t].lengths == b.tasks[t].lengths
        assert a.tasks[t].success_flags == b.tasks[t].success_flags
        # every rendered frame of every episode is identical, so the actions were too
        for ep_a, ep_b in zip(a.frames[t], b.frames[t], strict=True):
            assert len(ep_a) == len(ep_b) and all(np.array_equal(x, y) for x, y in zip(ep_a, ep_b))
    assert "| reach-v3 |" in markdown_table(a)
