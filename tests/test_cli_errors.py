"""Bad input through the real `z1` command: one message naming the flag/file, exit 1 (2 for a bad flag),
nothing written or lost; --debug / Z1_DEBUG=1 show the traceback.

Most cases run as a batch in one subprocess (`run_batch`: `z1.cli.main(argv)` per case, the way the
`z1` script calls it) so that torch is imported once; a few run `.venv/bin/z1` itself."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from z1.config import policy_preset
from z1.data.lerobot import open_dataset
from z1.data.normalize import normalization_from_dataset
from z1.models import checkpoint as ck
from z1.models.pi05 import Pi05Policy
from z1.train import state as ts

Z1 = Path(sys.executable).with_name("z1")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": "egl", "Z1_DEBUG": ""}

BATCH = textwrap.dedent(
    """
    import contextlib, io, json, sys
    from z1.cli import main
    results = []
    for argv in json.loads(sys.argv[1]):
        err, out = io.StringIO(), io.StringIO()
        code = 0
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                main(argv)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException as e:  # an escaped exception: what a user would see as a traceback
                code = f"escaped {type(e).__name__}: {e}"
        results.append({"argv": argv, "code": code, "stderr": err.getvalue(), "stdout": out.getvalue()})
    print("@@RESULTS@@" + json.dumps(results))
    """
)


def run_batch(cases: list[list[str]], cwd: Path, timeout: float = 600) -> list[dict]:
    p = subprocess.run(
        [sys.executable, "-c", BATCH, json.dumps(cases)],
        env=ENV,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert "@@RESULTS@@" in p.stdout, p.stderr[-3000:]
    return json.loads(p.stdout.split("@@RESULTS@@", 1)[1])


def z1(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Z1), *args], env=env or ENV, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def message(r: dict) -> str:
    """The text a user reads: tyro's usage box or z1's error line."""
    return r["stderr"] + r["stdout"]


# ------------------------------------------------------------------------------------------ fixtures
def write_dataset(root: Path, size: int = 32, episodes: int = 2, length: int = 10) -> Path:
    from test_train_sft import write_dataset as write

    return write(root, episodes=episodes, length=length)


def rewrite_actions(root: Path, fn) -> None:
    """Apply fn to the (n, d) action column of every data file, in place (stats.json untouched)."""
    for f in sorted((root / "data").rglob("*.parquet")):
        t = pq.read_table(f)
        a = np.asarray(t.column("action").to_pylist(), np.float32)
        a = fn(a)
        col = pa.array(a.tolist(), type=t.schema.field("action").type)
        pq.write_table(t.set_column(t.schema.get_field_index("action"), "action", col), f)


def tiny_checkpoint(path: Path, ds_root: Path, extra: dict | None = None) -> Path:
    torch.manual_seed(0)
    norm = normalization_from_dataset(open_dataset(ds_root))
    return ck.save_checkpoint(path, Pi05Policy(policy_preset("tiny")), norm, extra=extra)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    return build_world(tmp_path_factory.mktemp("cli"))


def build_world(base: Path) -> dict[str, Path]:
    """Datasets, checkpoints and directories of every case, built in-process (no training)."""
    w: dict[str, Path] = {"base": base}
    w["ds"] = write_dataset(base / "ds")
    w["ckpt"] = tiny_checkpoint(base / "ckpt", w["ds"])

    w["nan_ds"] = base / "nan_ds"
    shutil.copytree(w["ds"], w["nan_ds"])
    rewrite_actions(w["nan_ds"], lambda a: np.where(np.arange(len(a))[:, None] % 3 == 1, np.nan, a))

    w["nan_stats_ds"] = base / "nan_stats_ds"
    shutil.copytree(w["ds"], w["nan_stats_ds"])
    stats_path = w["nan_stats_ds"] / "meta" / "stats.json"
    stats = json.loads(stats_path.read_text())
    stats["action"]["q99"][0] = float("nan")
    stats_path.write_text(json.dumps(stats))

    w["shape_ds"] = base / "shape_ds"  # info.json says 32x32, the frames are 64x64
    shutil.copytree(w["ds"], w["shape_ds"])
    info_path = w["shape_ds"] / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    info["features"]["observation.images.wrist"]["shape"] = [32, 32, 3]
    info_path.write_text(json.dumps(info))

    w["trunc"] = base / "trunc"
    shutil.copytree(w["ckpt"], w["trunc"])
    mf = w["trunc"] / "model.safetensors"
    mf.write_bytes(mf.read_bytes()[:1000])

    w["pickle"] = base / "pickle"  # a torch pickle renamed .safetensors, no hash recorded
    shutil.copytree(w["ckpt"], w["pickle"])
    torch.save({"a": torch.zeros(2)}, w["pickle"] / "model.safetensors")
    cfg = json.loads((w["pickle"] / "config.json").read_text())
    del cfg["sha256"]
    (w["pickle"] / "config.json").write_text(json.dumps(cfg))

    w["flip"] = base / "flip"  # one bit flipped in the weights
    shutil.copytree(w["ckpt"], w["flip"])
    raw = bytearray((w["flip"] / "model.safetensors").read_bytes())
    raw[-10] ^= 0x01
    (w["flip"] / "model.safetensors").write_bytes(bytes(raw))

    w["horizon"] = base / "horizon"  # action_horizon edited in config.json
    shutil.copytree(w["ckpt"], w["horizon"])
    cfg = json.loads((w["horizon"] / "config.json").read_text())
    cfg["policy"]["action_horizon"] += 2
    (w["horizon"] / "config.json").write_text(json.dumps(cfg))

    w["badjson"] = base / "badjson"
    shutil.copytree(w["ckpt"], w["badjson"])
    (w["badjson"] / "config.json").write_text('{"policy": {"action_horizon": 8,')

    w["wrongtype"] = base / "wrongtype"
    shutil.copytree(w["ckpt"], w["wrongtype"])
    cfg = json.loads((w["wrongtype"] / "config.json").read_text())
    cfg["policy"]["action_horizon"] = "8"
    del cfg["sha256"]
    (w["wrongtype"] / "config.json").write_text(json.dumps(cfg))

    w["ckpt8"] = base / "ckpt8"  # normalization of an 8-dim robot
    torch.manual_seed(0)
    from fakes import identity_norm

    ck.save_checkpoint(w["ckpt8"], Pi05Policy(policy_preset("tiny")), identity_norm(8))

    from z1.train.sft import SFTConfig

    w["sft_run"] = base / "sft_run"  # an earlier SFT run
    w["sft_run"].mkdir()
    (w["sft_run"] / "sft_metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    run_cfg = SFTConfig(dataset=str(w["ds"]), out=str(w["sft_run"]), steps=2, batch_size=2, threads=1)
    tiny_checkpoint(w["sft_run"] / "sft_ckpt", w["ds"], extra={"sft_config": asdict(run_cfg)})
    w["metrics_only"] = base / "metrics_only"
    w["metrics_only"].mkdir()
    (w["metrics_only"] / "sft_metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    w["user_dir"] = base / "user_dir"  # someone's files
    w["user_dir"].mkdir()
    (w["user_dir"] / "notes.txt").write_text("mine")

    from z1.train.rl import RLConfig

    w["rl_run"] = base / "rl_run"  # a GRPO run started from ckpt
    saved = RLConfig(init=str(w["ckpt"]), out=str(w["rl_run"]), tasks="reach-v3")
    extra = {"stage": "rl", "iteration": 0, "rl_config": asdict(saved)}
    w["rl_run"].mkdir()
    tiny_checkpoint(w["rl_run"] / "rl_ckpt", w["ds"], extra=extra)
    (w["rl_run"] / "rl_metrics.jsonl").write_text('{"step": 1}\n')
    w["ckpt_b"] = tiny_checkpoint(base / "ckpt_b", w["ds"])
    w["textfile"] = base / "file.txt"
    w["textfile"].write_text("hello")
    return w


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def bad_input_cases(w: dict[str, Path]) -> list[tuple[list[str], int, str]]:
    """(argv, exit code, text the message must contain) for every bad input the CLI must explain."""
    b, ds, ckpt = w["base"], str(w["ds"]), str(w["ckpt"])
    sft = ["sft", "--dataset", ds, "--steps", "2", "--batch-size", "2", "--threads", "1"]
    rl = ["rl", "--init", ckpt, "--tasks", "reach-v3", "--workers", "0"]
    ev = ["eval", "--tasks", "reach-v3", "--episodes", "1", "--workers", "0", "--num-slots", "1"]
    new = str(b / "new_run")
    return [
        (["sft", "--dataset", ds, "--steps", "0"], 2, "--steps must be >= 1"),
        (["sft", "--dataset", ds, "--ckpt-every", "0"], 2, "--ckpt-every must be >= 1"),
        (["sft", "--dataset", ds, "--log-every", "0"], 2, "--log-every must be >= 1"),
        (["sft", "--dataset", ds, "--batch-size", "0"], 2, "--batch-size must be >= 1"),
        (["sft", "--dataset", ds, "--lr", "-1"], 2, "--lr must be > 0"),
        (["sft", "--dataset", ds, "--ema", "1.0"], 2, "--ema must be < 1"),
        (["sft", "--dataset", ds, "--steps", "5", "--stop-after", "9"], 2, "--stop-after must be <= 5"),
        (["sft", "--dataset", ds, "--eval-every", "5"], 2, "needs --eval-tasks"),
        (["sft", "--dataset", ds, "--resume", "--overwrite"], 2, "contradict"),
        (["sft", "--dataset", ds, "--steps", "x"], 2, "--steps"),
        ([*sft, "--out", new, "--dataset", str(b / "missing")], 1, "does not exist"),
        ([*sft, "--out", new, "--dataset", str(w["textfile"])], 1, "is a file"),
        ([*sft, "--out", new, "--dataset", str(b / "missing.hdf5")], 1, "missing.hdf5: file is missing"),
        ([*sft, "--out", new, "--dataset", str(w["nan_ds"])], 1, "column 'action' has non-finite values"),
        (
            [*sft, "--out", new, "--dataset", str(w["nan_stats_ds"]), "--data.stats", "dataset"],
            1,
            "field 'action.q99' has non-finite values",
        ),
        ([*sft, "--out", new, "--dataset", str(w["shape_ds"])], 1, "decode to [64, 64, 3]"),
        ([*sft, "--out", str(w["sft_run"])], 1, "already holds a sft run"),
        ([*sft, "--out", str(w["user_dir"])], 1, "not a z1 run directory"),
        ([*sft, "--out", str(w["metrics_only"]), "--resume"], 1, "no checkpoint"),
        ([*sft, "--out", str(w["sft_run"]), "--resume", "--batch-size", "3"], 2, "--batch-size: 2"),
        ([*sft, "--out", new, "--init", str(w["trunc"])], 1, "content differs from the hash"),
        ([*sft, "--out", new, "--init", str(w["pickle"])], 1, "not a readable safetensors file"),
        ([*sft, "--out", new, "--init", str(w["ckpt8"])], 1, "trained on 8"),
        ([*sft, "--out", new, "--policy", "huge"], 2, "unknown policy preset 'huge'"),
        ([*sft, "--out", new, "--preset", "mw-quik"], 2, "Did you mean 'mw-quick'"),
        ([*sft, "--out", new, "--preset", "mw-quick", "--config", ckpt], 2, "--preset and --config"),
        ([*sft, "--out", new, "--config", str(b / "nothing.json")], 2, "nothing.json"),
        (["rl", "--init", ckpt, "--groups-per-task", "0"], 2, "--groups-per-task must be >= 1"),
        (["rl", "--init", ckpt, "--iterations", "0"], 2, "--iterations must be >= 1"),
        (["rl", "--init", ckpt, "--num-slots", "4"], 2, "smaller than --rollout.group-size"),
        (["rl", "--init", ckpt, "--rollout.h-exec", "0"], 2, "--rollout.h-exec must be >= 1"),
        (["rl", "--init", ckpt, "--grpo.epochs", "0"], 2, "epochs and minibatches must be >= 1"),
        (["rl", "--init", ckpt, "--reward.lam", "1.5"], 2, "lam must be in [0, 1)"),
        (["rl", "--preset", "mw-quik", "--init", ckpt], 2, "mw-quick"),
        ([*rl, "--out", new, "--init", str(b / "missing")], 1, "z1 checkpoint not found"),
        ([*rl, "--out", new, "--rollout.h-exec", "99"], 2, "--rollout.h-exec 99 must be in 1..8"),
        ([*rl, "--out", str(w["rl_run"])], 1, "already holds a rl run"),
        ([*rl, "--out", str(w["rl_run"]), "--resume", "--init", str(w["ckpt_b"])], 2, "--init:"),
        ([*rl, "--out", str(w["rl_run"]), "--resume", "--seed", "3"], 2, "--seed: 0 in the run, now 3"),
        (["eval", "--checkpoint", ckpt, "--episodes", "0"], 2, "--episodes must be >= 1"),
        (["eval", "--checkpoint", ckpt, "--num-slots", "0"], 2, "--num-slots must be >= 1"),
        ([*ev, "--checkpoint", str(b / "missing")], 1, "z1 checkpoint not found"),
        ([*ev, "--checkpoint", str(w["flip"])], 1, "content differs from the hash"),
        ([*ev, "--checkpoint", str(w["horizon"])], 1, "field 'policy' differs from the one saved"),
        ([*ev, "--checkpoint", str(w["badjson"])], 1, "config.json: the checkpoint config is not valid JSON"),
        ([*ev, "--checkpoint", str(w["wrongtype"])], 1, "action_horizon: expected an integer, got '8'"),
        ([*ev, "--checkpoint", ckpt, "--h-exec", "99"], 2, "--h-exec 99 must be in 1..8"),
        (["import", ckpt, str(w["user_dir"])], 1, "exists and is not empty"),
        (["import", ckpt, ckpt], 1, "not empty"),
        (["import", str(b / "missing"), str(b / "imported")], 1, "missing"),
        (["report", str(w["user_dir"])], 1, "not a z1 run directory"),
        (["report", str(b / "missing")], 1, "does not exist"),
        (["collect", "--out", str(b / "c"), "--episodes", "0"], 2, "--episodes must be >= 1"),
        (["collect", "--out", ds, "--tasks", "reach-v3", "--episodes", "1"], 1, "already exists"),
        (["envs", "check", "metaworld", "--seeds", "0"], 2, "--seeds must be >= 1"),
        (["envs", "check", "nosuchsuite", "--seeds", "1"], 2, "unknown env suite 'nosuchsuite'"),
        (["envs", "check", "metaworld", "--tasks", "reach-v9", "--seeds", "1"], 2, "unknown task set"),
        (["envs", "check", "metaworld", "--tasks", "reach-v9,push-v3", "--seeds", "1"], 1, "'reach-v9'"),
        (["envs", "list", "nosuchsuite"], 2, "unknown env suite 'nosuchsuite'"),
    ]


def test_bad_inputs_are_one_message_and_touch_nothing(world):
    before = {k: snapshot(v) for k, v in world.items() if isinstance(v, Path) and v.is_dir() and k != "base"}
    cases = bad_input_cases(world)
    results = run_batch([argv for argv, _, _ in cases], cwd=world["base"])
    failures = []
    for (argv, code, text), r in zip(cases, results):
        msg = message(r)
        if r["code"] != code or text not in msg or "Traceback" in msg:
            failures.append(f"{argv}: exit {r['code']} (want {code}, {text!r}):\n{msg[-800:]}")
    assert not failures, "\n\n".join(failures)
    for r in results:  # z1's own errors are short
        if r["code"] == 1:
            assert len(r["stderr"].strip().splitlines()) <= 3, r
    after = {k: snapshot(world[k]) for k in before}
    assert after == before  # no file of any input changed
    assert not (world["base"] / "new_run").exists() and not (world["base"] / "imported").exists()
    assert not [p for p in world["base"].iterdir() if p.name.endswith((".html", ".md"))]


def test_debug_shows_the_traceback(world):
    bad = ["eval", "--checkpoint", str(world["flip"])]
    plain = z1(*bad, cwd=world["base"])
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    assert plain.stderr.startswith("z1 eval: error: ") and str(world["flip"]) in plain.stderr
    debug = z1(*bad, "--debug", cwd=world["base"])
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "CheckpointError" in debug.stderr
    env = z1(*bad, cwd=world["base"], env={**ENV, "Z1_DEBUG": "1"})
    assert "Traceback" in env.stderr


@pytest.mark.sim
def test_envs_check_runs_as_typed(world):
    r = z1("envs", "check", "metaworld", "--tasks", "reach-v3", "--seeds", "1", cwd=world["base"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "reach-v3" in r.stdout


def test_sft_refuses_to_overwrite_and_stops_on_a_non_finite_loss(world, tmp_path):
    """A real SFT run, then a second one into the same --out: refused, --overwrite replaces, changed
    settings on --resume are named; a non-finite loss stops training before the step and the save."""
    out = tmp_path / "run"
    sft = ["sft", "--dataset", str(world["ds"]), "--steps", "2", "--batch-size", "2", "--threads", "1"]
    sft += ["--warmup", "1", "--log-every", "1", "--out", str(out)]
    inf_out = tmp_path / "inf"
    cases = [
        sft,
        sft,
        [*sft, "--overwrite"],
        [*sft, "--resume", "--seed", "5"],
        [*sft, "--resume", "--steps", "3"],
        # the first step's update (lr 1e30) makes the next loss non-finite
        [*sft[:-1], str(inf_out), "--lr", "1e30", "--final-lr", "1e30", "--warmup", "0", "--steps", "3"],
    ]
    r = run_batch(cases, cwd=tmp_path)
    assert r[0]["code"] == 0, message(r[0])[-2000:]
    assert (out / "sft_ckpt" / "model.safetensors").is_file()
    assert r[1]["code"] == 1 and "already holds a sft run" in message(r[1])
    assert r[2]["code"] == 0, message(r[2])[-2000:]
    lines = (out / "sft_metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3]  # overwritten, then resumed to step 3
    assert r[3]["code"] == 2 and "--seed: 0 in the run, now 5" in message(r[3])
    assert r[4]["code"] == 0, message(r[4])[-2000:]
    assert r[5]["code"] == 1 and "step 2: the loss is nan" in message(r[5]), message(r[5])[-2000:]
    assert not (inf_out / "sft_ckpt").exists()


def _write_hdf5(path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "env_kwargs": {}})
        for i in range(2):
            g = data.create_group(f"demo_{i}")
            g.attrs["ep_meta"] = json.dumps({"lang": "lift the cube"})
            g.create_dataset("actions", data=rng.normal(size=(8, 4)).astype(np.float32))
            obs = g.create_group("obs")
            obs.create_dataset("eef_pos", data=rng.normal(size=(8, 3)).astype(np.float32))
            obs.create_dataset("gripper", data=rng.normal(size=(8, 1)).astype(np.float32))
            for cam in ("scene_image", "wrist_image"):
                obs.create_dataset(cam, data=rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8))


def test_sft_reads_a_robomimic_hdf5_file(tmp_path):
    path = tmp_path / "demos.hdf5"
    _write_hdf5(path)
    out = tmp_path / "run"
    common = ["sft", "--dataset", str(path), "--steps", "1", "--batch-size", "2", "--threads", "1"]
    r = run_batch([[*common, "--out", str(out)]], cwd=tmp_path)
    assert r[0]["code"] == 0, message(r[0])[-2000:]
    loaded = ck.load_checkpoint(out / "sft_ckpt")
    assert np.asarray(loaded.norm.state.mean).shape == (4,)  # eef_pos (3) + gripper (1)
    assert not list(tmp_path.glob("z1-hdf5-*"))


# ---------------------------------------------------------------------------- checkpoint debris
def test_interrupted_swap_is_recovered_and_stale_copies_removed(tmp_path, world):
    dst = tmp_path / "sft_ckpt"
    shutil.copytree(world["ckpt"], dst)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    # Killed between the two renames: only the previous checkpoint, renamed aside, remains.
    os.replace(dst, tmp_path / f".sft_ckpt.old-{dead.pid}-deadbeef")
    (tmp_path / f".sft_ckpt.tmp-{dead.pid}-cafebabe").mkdir()  # a half-written copy
    back = ck.load_checkpoint(dst)  # recovered on load, the half-written copy removed
    assert back.config.action_horizon == policy_preset("tiny").action_horizon
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sft_ckpt"]
    shutil.copytree(world["ckpt"], tmp_path / f".sft_ckpt.old-{dead.pid}-12345678")  # killed after both
    (tmp_path / f".sft_ckpt.tmp-{dead.pid}-87654321").mkdir()
    ck.save_checkpoint(dst, back.model, back.norm)  # the next write removes the stale copies
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sft_ckpt"]
    # A copy of a writer that still runs is left alone.
    live = tmp_path / f".sft_ckpt.tmp-{os.getppid()}-00000000"
    live.mkdir()
    ck.save_checkpoint(dst, back.model, back.norm)
    assert live.is_dir()


def test_old_checkpoints_without_hashes_still_load(tmp_path, world):
    p = tmp_path / "old"
    shutil.copytree(world["ckpt"], p)
    cfg = json.loads((p / "config.json").read_text())
    del cfg["sha256"]
    (p / "config.json").write_text(json.dumps(cfg))
    assert ck.load_checkpoint(p).config == ck.load_checkpoint(world["ckpt"]).config


KILL_WRITER = textwrap.dedent(
    """
    import sys, torch
    from z1.config import policy_preset
    from z1.models import checkpoint as ck
    from z1.models.pi05 import Pi05Policy
    from z1.train import state as ts
    torch.manual_seed(0)
    model = Pi05Policy(policy_preset("tiny"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    print("ready", flush=True)
    i = 0
    while True:
        i += 1
        with torch.no_grad():
            model.action_out_proj.bias.fill_(float(i))
        spec = ts.TrainStateSpec(opt, meta={"step": i})
        ck.save_checkpoint(sys.argv[1], model, extra={"step": i}, train_state=spec)
    """
)


@pytest.mark.slow
def test_sigkill_during_checkpoint_writes_leaves_a_loadable_checkpoint(tmp_path):
    """20 writers killed at random moments of their save loop: the checkpoint always loads (hashes
    checked), weights and train state agree, and no debris survives the next write."""
    dst = tmp_path / "ckpt"
    rng = np.random.default_rng(0)
    seen: list[tuple[int, bool]] = []  # (debris entries, checkpoint present) after each kill
    for _ in range(20):
        p = subprocess.Popen(
            [sys.executable, "-c", KILL_WRITER, str(dst)], env=ENV, stdout=subprocess.PIPE, text=True
        )
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(0.05, 0.6)))
        p.send_signal(signal.SIGKILL)
        p.wait()
        debris = [q.name.split("-")[0] for q in tmp_path.iterdir() if q.name.startswith(".ckpt.")]
        seen.append((len(debris), dst.exists()))
        if not dst.exists() and not list(tmp_path.glob(".ckpt.old-*")):
            continue  # killed before its first save finished
        loaded = ck.load_checkpoint(dst)
        step = loaded.extra["step"]
        assert float(loaded.model.action_out_proj.bias[0].detach()) == float(step)
        opt = torch.optim.AdamW(loaded.model.parameters(), lr=1e-3)
        assert ts.load_train_state(dst / "train_state", opt).meta["step"] == step
    print(
        f"kills leaving debris: {sum(d > 0 for d, _ in seen)}/20; without {dst.name}: "
        f"{sum(not e for _, e in seen)}/20"
    )
    ck.save_checkpoint(dst, loaded.model, extra={"step": -1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
