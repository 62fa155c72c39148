"""`z1 rl` on 2 gloo ranks equals one process with the same global batch (--wave-rng True).

Each rank collects its share of the iteration's waves of groups; the ranks exchange the groups' outcomes
so every rank scores the whole batch (task statistics, pooled sigma), and the GRPO update all-reduces
term-weighted gradients over the same minibatches of the global list of trainable chunks. A rank without
trainable chunks still joins every collective (a hang fails the test through its timeout), and rank 0
alone writes files.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as tmp

from fakes import tiny_runner
from test_distributed_ddp import _assert_same_params, _free_port, _grpo, _join, _one_thread
from test_rl_update import LR
from test_rl_update import _setup as rollouts_for_update
from test_train_rl import _cfg as one_process_cfg
from test_train_rl import save_leaning_policy
from z1.models.checkpoint import load_checkpoint
from z1.rl.grpo import GRPOConfig
from z1.rl.params import apply_selective
from z1.rl.reward import RewardConfig
from z1.train import iteration as iteration_mod
from z1.train.metrics import read_metrics
from z1.train.rl import RLConfig, run_rl

WORLD = 2
TASK = "drawer-close-v3"
TIMEOUT_S = 120.0  # a rank stuck in a collective fails the test instead of blocking the suite


def _spawn(fn, *args, timeout: float = TIMEOUT_S) -> None:
    """Run fn(rank, port, *args) on WORLD processes; fail (and kill them) after `timeout` seconds."""
    ctx = tmp.start_processes(fn, args=(_free_port(), *args), nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"ranks still running after {timeout:.0f} s: a collective hangs")


# ---------------------------------------------------------------- the whole loop


@pytest.fixture(scope="module")
def init_ckpt(tmp_path_factory) -> Path:
    """A tiny policy whose actions lean toward (+x, -z): on drawer-close some group members succeed."""
    return save_leaning_policy(tmp_path_factory.mktemp("init") / "ckpt")


def _cfg(init: Path, out: str, iterations: int = 1) -> RLConfig:
    """test_train_rl's one-task run, with two groups (one wave of one group per rank) that branch."""
    base = one_process_cfg(init, Path(out), iterations)
    return replace(
        base,
        out=out,
        tasks=TASK,
        groups_per_task=2,
        image_size=16,
        wave_rng=True,
        reward=RewardConfig(kind="D1"),
        grpo=GRPOConfig(minibatches=2, kl_target=None),
        rollout=replace(base.rollout, max_steps=40, noise_level=1.0),
    )


def _recording_scores(monkeypatch_target, record: list) -> None:
    """Wrap `score_batch` in z1.train.iteration so each iteration's per-chunk advantages are kept."""
    inner = monkeypatch_target.score_batch

    def wrapped(*args, **kw):
        scored = inner(*args, **kw)
        record.append({"adv": scored.advantages.copy(), "train": scored.trainable.copy()})
        return scored

    monkeypatch_target.score_batch = wrapped


def _rl_rank(rank: int, port: int, cfg: RLConfig, workdir: str, tag: str) -> None:
    ctx = _join(rank, port)
    record: list = []
    _recording_scores(iteration_mod, record)
    if not Path(cfg.out).is_absolute():
        os.chdir(Path(workdir) / f"rank{rank}")  # a relative --out: each rank's writes land in its own dir
    run_rl(cfg)
    ctx.close()
    torch.save(record, Path(workdir) / f"{tag}.{rank}")


def _single(cfg: RLConfig) -> list:
    """One process, the ranks' thread count; returns the per-iteration recorded scores."""
    record: list = []
    inner = iteration_mod.score_batch
    _recording_scores(iteration_mod, record)
    try:
        with _one_thread():
            run_rl(cfg)
    finally:
        iteration_mod.score_batch = inner
    return record


def _ranks(tmp_path: Path, tag: str) -> list[list]:
    return [torch.load(tmp_path / f"{tag}.{r}", weights_only=False) for r in range(WORLD)]


def _assert_same_run(init: Path, one: Path, two: Path) -> None:
    """Weights equal up to float reduction order and the logged metrics of rank 0 equal to the single
    process's."""
    a = load_checkpoint(one / "rl_ckpt").model.state_dict()
    b = load_checkpoint(two / "rl_ckpt").model.state_dict()
    start = load_checkpoint(init).model.state_dict()
    assert max(float((a[k] - start[k]).abs().max()) for k in a) > 1e-4  # the updates did something
    _assert_same_params(b, a)
    m1, m2 = read_metrics(one / "rl_metrics.jsonl"), read_metrics(two / "rl_metrics.jsonl")
    assert [m["step"] for m in m1] == [m["step"] for m in m2]
    for x, y in zip(m1, m2):
        assert set(x) == set(y)
        for k in x:
            if k.startswith(("time/", "rollout/time/")) or k == "update/ode_action_shift":
                continue  # wall times; the ODE probe looks at other rows per rank
            assert y[k] == pytest.approx(x[k], rel=1e-4, abs=1e-6), (x["step"], k)


def test_rl_iteration_on_two_ranks_equals_one_process(init_ckpt, tmp_path):
    single = _single(_cfg(init_ckpt, str(tmp_path / "one")))
    for r in range(WORLD):
        (tmp_path / f"rank{r}").mkdir()
    _spawn(_rl_rank, _cfg(init_ckpt, "run"), str(tmp_path), "scores")
    ranks = _ranks(tmp_path, "scores")
    # One group per rank; every chunk of both groups is trainable (the advantages do the work).
    assert all(int(r[0]["train"].sum()) > 0 for r in ranks)
    adv = np.concatenate([r[0]["adv"] for r in ranks])
    train = np.concatenate([r[0]["train"] for r in ranks])
    np.testing.assert_array_equal(train, single[0]["train"])
    np.testing.assert_allclose(adv, single[0]["adv"], rtol=0, atol=1e-12)
    assert np.abs(adv).max() > 0.1
    _assert_same_run(init_ckpt, tmp_path / "one", tmp_path / "rank0" / "run")
    # Rank 0 alone writes: rank 1 ran in its own directory with the same relative --out.
    assert list((tmp_path / "rank1").iterdir()) == []
    written = {p.name for p in (tmp_path / "rank0" / "run").iterdir()}
    assert {"rl_ckpt", "rl_metrics.jsonl", "rl_summary.json"} <= written


def test_rank_without_trainable_chunks_and_resume(init_ckpt, tmp_path):
    """Iteration 2's handle-press group fails entirely (dropped): rank 1 has no trainable chunk and
    still takes every optimizer step. The run is interrupted after iteration 1 and resumed on 2 ranks;
    tasks are sampled by uncertainty (the run's numpy RNG stays in lockstep) and the final evaluation is
    split over the ranks by task."""

    def cfg(out: Path, iterations: int) -> RLConfig:
        return replace(
            _cfg(init_ckpt, str(out), iterations),
            tasks=f"{TASK},handle-press-v3",
            groups_per_task=1,
            eval_episodes=1,
        )

    # The reference is interrupted and resumed the same way (each launch ends with its final evaluation).
    single = _single(cfg(tmp_path / "one", 1)) + _single(replace(cfg(tmp_path / "one", 2), resume=True))
    two = tmp_path / "two"
    _spawn(_rl_rank, cfg(two, 1), str(tmp_path), "it1")
    _spawn(_rl_rank, replace(cfg(two, 2), resume=True), str(tmp_path), "it2")
    for it, tag in enumerate(["it1", "it2"]):
        ranks = _ranks(tmp_path, tag)
        assert all(len(r) == 1 for r in ranks)  # one scored iteration per launch
        adv = np.concatenate([r[0]["adv"] for r in ranks])
        np.testing.assert_allclose(adv, single[it]["adv"], rtol=0, atol=1e-12)
    it2 = _ranks(tmp_path, "it2")
    assert it2[0][0]["train"].sum() > 0 and it2[1][0]["train"].sum() == 0
    _assert_same_run(init_ckpt, tmp_path / "one", two)
    assert (two / "eval_final.json").read_text() == (tmp_path / "one" / "eval_final.json").read_text()


# ---------------------------------------------------------------- one update, a rank without rows


def _update_rank(rank, port, state, sel, scored, grpo, out) -> None:
    ctx = _join(rank, port)
    model = tiny_runner().model
    model.load_state_dict(state)
    # Rank 0 holds every trainable chunk, rank 1 none (its rows are all masked out).
    mine = scored.trainable if rank == 0 else np.zeros_like(scored.trainable)
    st = _grpo(model, apply_selective(model, sel, LR), sel, scored, mine, grpo)
    torch.save({"state": model.state_dict(), "stats": st}, f"{out}.{rank}")
    ctx.close()


@pytest.mark.parametrize("kl_target", [None, 1e-9])
def test_update_with_a_rank_without_rows_equals_one_process(tmp_path, kl_target):
    """Same optimizer steps on both ranks (no hang), the single-process weights, and with a tiny
    kl_target the same early stop (after the second minibatch: the first one has ratio 1)."""
    model, _, groups, _, _, scored, sel = rollouts_for_update("expert")
    grpo = GRPOConfig(minibatches=2, epochs=2, kl_target=kl_target)
    start = copy.deepcopy(model.state_dict())
    with _one_thread():
        single = _grpo(model, groups, sel, scored, scored.trainable, grpo)
    _spawn(_update_rank, start, sel, scored, grpo, str(tmp_path / "upd"))
    ranks = [torch.load(tmp_path / f"upd.{r}", weights_only=True) for r in range(WORLD)]
    assert single["update/steps"] == (2 if kl_target else 4)
    want = model.state_dict()
    for r in ranks:
        assert r["stats"]["update/steps"] == single["update/steps"]
        assert r["stats"]["update/early_stop"] == single["update/early_stop"]
        assert r["stats"]["update/terms"] == single["update/terms"]
        for key in ("loss/policy", "approx_kl/k3", "ratio/min", "ratio/max"):
            assert r["stats"][key] == pytest.approx(single[key], rel=1e-4, abs=1e-7), key
        _assert_same_params(r["state"], want)
