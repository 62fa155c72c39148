"""DDP on 2 CPU processes (gloo) equals one process on the same global batch; Ray stays optional.

Each rank takes its share of the global batch; gradients are averaged weighted by the share's loss terms,
so the parameters after a GRPO update and after SFT steps match the single-process run up to float
reduction order.
"""

from __future__ import annotations

import copy
import os
import socket
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as tmp

from fakes import tiny_runner
from test_rl_update import LR, make_learner
from test_rl_update import _setup as rollouts_for_update
from test_train_sft import write_dataset
from z1.distributed.cluster import RayUnavailableError, start_ray
from z1.distributed.ddp import DistContext, allreduce_grads
from z1.rl.grpo import GRPOConfig
from z1.rl.params import apply_selective
from z1.train.sft import SFTConfig, run_sft

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, port: int) -> DistContext:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2"
    )
    torch.set_num_threads(1)
    return DistContext.init_from_env()


def _spawn(fn, *args) -> None:
    tmp.spawn(fn, args=(_free_port(), *args), nprocs=WORLD, join=True)


@contextmanager
def _one_thread():
    """The single-process reference with the ranks' thread count (matmul sums depend on it)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _assert_same_params(got: dict, want: dict) -> None:
    """Parameters equal up to float reduction order. Adam divides by sqrt(v), so an entry whose gradient is
    ~0 (a float32 cancellation of ~1e-10) can step by +-lr on one side and -+lr on the other: a few such
    entries are tolerated (at most 0.1% of all). A wrongly weighted gradient mean moves ~70% of the entries
    of the SFT test by more than 1e-6 (measured), so the check still fails on real weighting bugs."""
    off = total = 0
    for k, v in want.items():
        off += int(((got[k] - v).abs() > 1e-6).sum())
        total += v.numel()
    assert off <= 1e-3 * total, f"{off} of {total} parameter entries differ by more than 1e-6"


# ---------------------------------------------------------------- GRPO


def _grpo(model, groups, sel, scored, trainable, grpo: GRPOConfig | None = None) -> dict:
    """One `Learner.update` on `scored` with `trainable` as this process's rows (built after joining the
    process group, so the learner reduces over it)."""
    grpo = grpo or GRPOConfig(minibatches=1, epochs=2, kl_target=None)
    return make_learner(model, groups, sel, grpo).update(replace(scored, trainable=trainable))


def _grpo_rank(rank: int, port: int, state: dict, sel, scored, grpo, out: str) -> None:
    ctx = _join(rank, port)
    model = tiny_runner().model
    model.load_state_dict(state)
    mine = np.zeros_like(scored.trainable)
    mine[ctx.shard(np.flatnonzero(scored.trainable))] = True  # this rank's share of the trainable chunks
    st = _grpo(model, apply_selective(model, sel, LR), sel, scored, mine, grpo)
    torch.save({"state": model.state_dict(), "stats": st, "terms": int(mine.sum())}, f"{out}.{rank}")
    ctx.close()


@pytest.mark.parametrize(
    "grpo",
    [
        None,
        # 2 minibatches x up to 3 epochs; the first epoch's batch-mean k3 > 0 skips the other two
        GRPOConfig(minibatches=2, epochs=3, kl_target=0.0),
    ],
    ids=["one-minibatch", "kl-stop"],
)
def test_grpo_update_on_two_ranks_equals_one_process(tmp_path, grpo):
    model, _, groups, _, _, scored, sel = rollouts_for_update("expert")
    assert scored.trainable.sum() >= 2
    start = copy.deepcopy(model.state_dict())
    with _one_thread():
        single = _grpo(model, groups, sel, scored, scored.trainable, grpo)
    _spawn(_grpo_rank, start, sel, scored, grpo, str(tmp_path / "grpo"))
    ranks = [torch.load(tmp_path / f"grpo.{r}", weights_only=True) for r in range(WORLD)]
    assert sum(r["terms"] for r in ranks) == scored.trainable.sum() and all(r["terms"] > 0 for r in ranks)
    want = model.state_dict()
    moved = max(float((want[k] - start[k]).abs().max()) for k in want)
    assert moved > 1e-4  # the update did something
    for r in ranks:
        _assert_same_params(r["state"], want)
        # the loss, the early-stop statistic and the ratio extremes are global numbers on every rank
        for key in ("loss/policy", "approx_kl/k3", "update/batch_k3", "ratio/min", "ratio/max", "ratio/std"):
            assert r["stats"][key] == pytest.approx(single[key], rel=1e-4, abs=1e-7), key
        for key in ("update/steps", "update/epochs_run", "update/early_stop"):
            assert r["stats"][key] == single[key], key
    if grpo is not None:
        assert single["update/epochs_run"] == 1 and single["update/early_stop"] == 1.0
        assert single["update/steps"] == 2 and single["ratio/max"] > single["ratio/min"]


# ---------------------------------------------------------------- SFT


def _sft_cfg(dataset: Path, out: Path) -> SFTConfig:
    return SFTConfig(
        dataset=str(dataset),
        out=str(out),
        steps=3,
        batch_size=7,  # uneven shares (4 + 3): the weighting must still give the global mean
        lr=1e-3,
        warmup=1,
        log_every=1,
        ckpt_every=3,
        threads=1,
        augment=True,
    )


def _sft_rank(rank: int, port: int, dataset: str, out: str) -> None:
    ctx = _join(rank, port)
    run_sft(_sft_cfg(Path(dataset), Path(out)))
    ctx.close()


def test_sft_on_two_ranks_equals_one_process(tmp_path):
    from z1.models.checkpoint import load_checkpoint
    from z1.train.metrics import read_metrics

    ds = write_dataset(tmp_path / "ds", episodes=2, length=10)
    with _one_thread():
        run_sft(_sft_cfg(ds, tmp_path / "one"))
    _spawn(_sft_rank, str(ds), str(tmp_path / "two"))
    one = load_checkpoint(tmp_path / "one" / "sft_ckpt").model.state_dict()
    two = load_checkpoint(tmp_path / "two" / "sft_ckpt").model.state_dict()
    _assert_same_params(two, one)
    m1 = read_metrics(tmp_path / "one" / "sft_metrics.jsonl")
    m2 = read_metrics(tmp_path / "two" / "sft_metrics.jsonl")
    assert len(m1) == len(m2) == 3  # rank 0 alone logs
    assert [m["loss"] for m in m2] == pytest.approx([m["loss"] for m in m1], rel=1e-5)


# ---------------------------------------------------------------- single process, no Ray


def test_single_process_context_is_a_no_op():
    ctx = DistContext()
    assert ctx.is_main and not ctx.is_distributed and ctx.shard([1, 2, 3]) == [1, 2, 3]
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    stats = {"loss": 1.5}
    assert allreduce_grads([p], 7.0, stats) is stats and torch.equal(p.grad, torch.full((3,), 2.0))
    shares = [DistContext(rank=r, world_size=3).shard(list(range(7))) for r in range(3)]
    assert shares == [[0, 1, 2], [3, 4], [5, 6]]


def test_start_ray_without_ray_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(RayUnavailableError, match=r"pip install -e '\.\[ray\]'"):
        start_ray("local")
    with pytest.raises(ValueError, match="local"):
        start_ray("cluster")  # type: ignore[arg-type]


def test_cli_ray_fails_fast_without_ray(monkeypatch, tmp_path):
    from z1.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(SystemExit, match=r"--ray local: .*pip install -e '\.\[ray\]'"):
        main(["eval", "--checkpoint", str(tmp_path / "not-there"), "--ray", "local"])
