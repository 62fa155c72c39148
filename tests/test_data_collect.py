"""Demonstration collection: success cut, dropped episodes, clean labels, atomic output; real Meta-World."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from z1.data.collect import collect
from z1.data.lerobot import check_compatible, open_dataset
from z1.types import EnvSpec, Observation, StepResult


class FakeEnv:
    """2-D reach: p += a; success when |p - goal| < 0.05. The expert is broken for seed % 3 == 1."""

    spec = EnvSpec(
        suite="fake",
        cameras=("cam",),
        image_size=(4, 4),
        state_names=("p0", "p1"),
        action_names=("a0", "a1"),
        action_low=(-1.0, -1.0),
        action_high=(1.0, 1.0),
        max_steps=40,
        control_hz=10.0,
    )

    def __init__(self, **kw) -> None:
        self.closed = False

    def instruction(self, task: str) -> str:
        return f"do {task}"

    def reset(self, task: str, seed: int) -> Observation:
        self.task, self.seed, self.t = task, seed, 0
        self.p = np.zeros(2)
        self.goal = np.array([0.5 + 0.1 * (seed % 4), -0.3])
        return self.observe()

    def observe(self) -> Observation:
        img = np.full((4, 4, 3), self.t, np.uint8)
        return Observation({"cam": img}, self.p.astype(np.float32), self.instruction(self.task))

    def expert_action(self) -> np.ndarray:
        d = self.goal - self.p
        return np.clip(-d if self.seed % 3 == 1 else d, -0.2, 0.2)

    def step(self, action: np.ndarray, observe: bool = False) -> StepResult:
        self.p = self.p + np.asarray(action)
        self.t += 1
        ok = bool(np.linalg.norm(self.p - self.goal) < 0.05)
        return StepResult(0.0, ok, self.t >= self.spec.max_steps, {}, self.observe() if observe else None)

    def close(self) -> None:
        self.closed = True


def test_collect_with_fake_env(tmp_path: Path) -> None:
    out = tmp_path / "demos"
    s = collect(
        ["a", "b"],
        3,
        out,
        noise=0.05,
        seed=0,
        workers=0,
        extra_steps_after_success=2,
        progress=False,
        env_factory=FakeEnv,
    )
    # seeds 0,1,2 per task; seed 1 fails -> one replacement (seed 3) per task
    assert s.kept == {"a": 3, "b": 3} and s.dropped == {"a": 1, "b": 1} and not s.shortfall
    ds = open_dataset(out)
    assert ds.num_episodes == 6 and ds.tasks == ["do a", "do b"] and ds.fps == 10.0
    check_compatible(ds, cameras=("cam",), state_dim=2, action_dim=2)
    assert s.frames == ds.num_frames and s.bytes > 0
    noises = []
    for i in range(6):
        ep = ds.episode(i)
        # written in job order: round 1 a(0, 2) b(0, 2), replacements round 2 a(3) b(3) (seed 1 fails)
        seed = [0, 2, 0, 2, 3, 3][i]
        assert ep.task == "do " + "aabbab"[i]
        goal = np.array([0.5 + 0.1 * (seed % 4), -0.3])
        # the stored label is the clean expert action for the recorded state
        np.testing.assert_allclose(ep.action, np.clip(goal - ep.state, -0.2, 0.2), atol=1e-6)
        # executed action (= next state - state) is the label plus noise
        noises.append(np.diff(ep.state, axis=0) - ep.action[:-1])
        # cut 2 steps after the first success: state k+1 (after step k) is the first inside the goal
        inside = np.linalg.norm(ep.state - goal, axis=1) < 0.05
        first_step = int(np.argmax(inside)) - 1
        assert inside.any() and not inside[: first_step + 1].any()
        assert ep.length == first_step + 1 + 2
        np.testing.assert_array_equal(np.asarray(ep.images["cam"])[:, 0, 0, 0], np.arange(ep.length))
    noise = np.concatenate(noises)
    assert 0.03 < noise.std() < 0.07 and abs(noise.mean()) < 0.03  # N(0, 0.05^2)
    # reproducible
    s2 = collect(
        ["a", "b"],
        3,
        tmp_path / "again",
        noise=0.05,
        seed=0,
        workers=0,
        extra_steps_after_success=2,
        progress=False,
        env_factory=FakeEnv,
    )
    np.testing.assert_array_equal(open_dataset(tmp_path / "again").action, ds.action)
    assert s2.frames == s.frames


def test_collect_all_fail_and_errors_leave_nothing(tmp_path: Path) -> None:
    class Broken(FakeEnv):
        def expert_action(self) -> np.ndarray:
            return np.array([-0.2, 0.2])

    class Crash(FakeEnv):
        def step(self, action, observe=False):
            if self.t == 3:
                raise RuntimeError("simulator exploded")
            return super().step(action, observe)

    with pytest.raises(Exception, match="no episodes"):
        collect(["a"], 2, tmp_path / "x", workers=0, progress=False, env_factory=Broken)
    with pytest.raises(RuntimeError, match="exploded"):
        collect(["a"], 2, tmp_path / "y", workers=0, progress=False, env_factory=Crash)
    assert list(tmp_path.iterdir()) == []
    s = collect(
        ["a"], 2, tmp_path / "z", workers=0, progress=False, env_factory=FakeEnv, max_attempts_per_episode=1
    )
    assert s.kept == {"a": 1} and s.shortfall == {"a": 1}


@pytest.mark.sim
def test_collect_metaworld_real(tmp_path: Path) -> None:
    pytest.importorskip("metaworld")
    out = tmp_path / "mw"
    s = collect(["button-press-topdown-v3"], 2, out, seed=0, workers=1, progress=False)
    assert s.kept == {"button-press-topdown-v3": 2}
    ds = open_dataset(out)
    assert (
        ds.num_episodes == 2 and ds.cameras == ("scene", "wrist") and (ds.state_dim, ds.action_dim) == (4, 4)
    )
    assert ds.tasks == ["press the button from the top"]
    for i in range(2):
        ep = ds.episode(i)
        # median 66 steps to success + 5 extra (docs/environments.md#scripted-experts)
        assert 20 < ep.length < 200
        img = ep.images["scene"][ep.length // 2]
        assert img.shape == (64, 64, 3) and img.std() > 5  # a real render, not a blank frame
        assert np.abs(ep.action).max() <= 1.0
