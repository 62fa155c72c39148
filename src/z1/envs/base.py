"""The environment protocol every simulator adapter implements.

Contract (docs/environments.md#snapshot-and-restore): `snapshot()` returns a small picklable value;
`restore(s)` puts the env back so that the same actions produce bit-identical observations, rewards and
success flags. Images are rendered only when an observation is requested (`observe()` or
`step(..., observe=True)`).
"""

from __future__ import annotations

import difflib
from typing import Any, Protocol, runtime_checkable

import numpy as np

from z1.types import ChunkResult, EnvSpec, Observation, StepResult


class EnvError(ValueError):
    """Bad input to an environment: unknown task, malformed action, foreign snapshot."""


@runtime_checkable
class Env(Protocol):
    spec: EnvSpec

    @property
    def task(self) -> str | None: ...

    @property
    def t(self) -> int:
        """Env steps taken since the last reset."""
        ...

    def tasks(self) -> list[str]: ...

    def instruction(self, task: str) -> str: ...

    def reset(self, task: str, seed: int) -> Observation: ...

    def step(self, action: np.ndarray, observe: bool = False) -> StepResult: ...

    def observe(self) -> Observation: ...

    def snapshot(self) -> Any: ...

    def restore(self, snapshot: Any) -> None: ...

    def expert_action(self) -> np.ndarray:
        """The scripted expert's action for the current state (un-normalized, within bounds)."""
        ...

    def close(self) -> None: ...


def unknown_task_error(task: str, known: list[str], suite: str) -> EnvError:
    close = difflib.get_close_matches(task, known, n=3, cutoff=0.4)
    hint = f" Did you mean: {', '.join(close)}?" if close else f" Run `z1 envs list {suite}` for all tasks."
    return EnvError(f"unknown {suite} task {task!r}.{hint}")


def check_action(action: np.ndarray, spec: EnvSpec) -> np.ndarray:
    """Validate an action: shape (d,), finite. Returns it as float64, clipped to the bounds."""
    a = np.asarray(action, dtype=np.float64)
    if a.shape != (spec.action_dim,):
        raise EnvError(
            f"{spec.suite}: action has shape {a.shape}, expected ({spec.action_dim},) "
            f"with layout {list(spec.action_names)}"
        )
    if not np.all(np.isfinite(a)):
        raise EnvError(f"{spec.suite}: action contains NaN or inf: {a.tolist()}")
    return np.clip(a, spec.action_low, spec.action_high)


def check_action_chunks(actions: dict[int, np.ndarray], spec: EnvSpec) -> dict[int, np.ndarray]:
    """Validate a batch of action chunks (slot -> (n>0, d), finite) before it is sent to the slots' hosts.

    Checked on the caller side, so a malformed chunk fails as an `EnvError` naming its slot before any
    slot of the batch has stepped (the per-step `check_action` inside the env would fail half-way).
    Returns the chunks as float64 arrays, unclipped (each step is clipped by the env).
    """
    out: dict[int, np.ndarray] = {}
    for s, a in actions.items():
        a = np.asarray(a, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != spec.action_dim or a.shape[0] == 0:
            raise EnvError(f"slot {s}: action chunk has shape {a.shape}, expected (n>0, {spec.action_dim})")
        if not np.all(np.isfinite(a)):
            raise EnvError(f"slot {s}: action chunk contains NaN or inf")
        out[s] = a
    return out


def run_chunk(
    env: Env, actions: np.ndarray, stop_on_success: bool = True, observe: bool = True
) -> ChunkResult:
    """Execute the rows of `actions` (n, d) until success (optionally) or the time limit."""
    rewards: list[float] = []
    success_step = -1
    done = False
    for i, a in enumerate(actions):
        r = env.step(a)
        rewards.append(r.reward)
        if r.success and success_step < 0:
            success_step = i
        done = r.done
        if done or (stop_on_success and success_step >= 0):
            break
    obs = env.observe() if observe else None
    return ChunkResult(
        steps=len(rewards),
        rewards=np.asarray(rewards, dtype=np.float32),
        success=success_step >= 0,
        success_step=success_step,
        done=done,
        t=env.t,
        observation=obs,
    )
