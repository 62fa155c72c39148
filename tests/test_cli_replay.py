"""Runs you can reproduce from their directory: `<out>/sft_config.json` holds the resolved config and its
provenance, `z1 sft --config` replays it bit for bit, presets supply defaults, TensorBoard gets hparams."""

import json
from pathlib import Path

import numpy as np
import pytest

from test_train_sft import write_dataset
from z1.cli import main
from z1.config import ConfigError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("ds") / "demo")


def _tensors(run: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(run / "sft_ckpt" / "model.safetensors"))


def _sft(dataset: Path, out: Path, *extra: str) -> None:
    main(["sft", "--dataset", str(dataset), "--out", str(out), *extra])


SHORT = ["--policy", "tiny", "--steps", "3", "--batch-size", "4", "--warmup", "1", "--log-every", "1"]
SHORT += ["--threads", "1", "--seed", "5"]


def test_sft_config_replays_bit_for_bit(dataset, tmp_path):
    first, again, other = tmp_path / "first", tmp_path / "again", tmp_path / "other"
    _sft(dataset, first, *SHORT)
    record = json.loads((first / "sft_config.json").read_text())
    assert record["stage"] == "sft" and record["config"]["seed"] == 5 and record["config"]["steps"] == 3
    assert record["config"]["policy"] == "tiny" and record["config"]["data"]["stats"] == "exact"
    assert record["z1_version"] and "git_commit" in record and record["machine"]["cpus"] >= 1
    assert "--seed" in record["argv"] or record["argv"]  # the command line as the process saw it

    main(["sft", "--config", str(first), "--out", str(again)])  # the run directory works as well as the file
    replayed = json.loads((again / "sft_config.json").read_text())["config"]
    assert {**replayed, "out": None} == {**record["config"], "out": None}
    weights = _tensors(first)
    again_w = _tensors(again)
    assert weights.keys() == again_w.keys()
    assert all(np.array_equal(weights[k], again_w[k]) for k in weights)

    # A flag after --config overrides that one field: another seed trains other weights.
    main(["sft", "--config", str(first / "sft_config.json"), "--out", str(other), "--seed", "6"])
    assert json.loads((other / "sft_config.json").read_text())["config"]["seed"] == 6
    other_w = _tensors(other)
    assert not all(np.array_equal(weights[k], other_w[k]) for k in weights)


def test_tensorboard_gets_the_runs_hparams_and_final_loss(dataset, tmp_path):
    _sft(dataset, tmp_path / "r", *SHORT)
    events = b"".join(f.read_bytes() for f in (tmp_path / "r" / "tb" / "sft").rglob("events.out.tfevents.*"))
    assert b"_hparams_/session_start_info" in events and b"final/final_loss" in events
    assert b"batch_size" in events and b"data/stats" in events  # nested fields flattened with '/'


def test_sft_preset_supplies_the_recipe_and_flags_override_it():
    from z1.cli_config import stage_cli
    from z1.presets import run_preset

    p = run_preset("mw-quick")
    cfg = stage_cli("sft", ["--preset", "mw-quick", "--dataset", "d"])
    assert (cfg.policy, cfg.steps, cfg.batch_size) == (p.policy, p.sft_steps, p.sft_batch)
    assert (cfg.lr, cfg.final_lr) == (p.sft_lr, p.sft_lr / 10)
    assert stage_cli("sft", ["--preset=mw-quick", "--dataset", "d", "--steps", "7"]).steps == 7
    rl = stage_cli("rl", ["--preset", "mw-quick", "--init", "x", "--lr", "1e-5"])
    assert rl.lr == 1e-5 and rl.rollout == p.rl.rollout and rl.iterations == p.rl.iterations


def test_config_of_another_stage_or_with_a_bad_field_is_refused(dataset, tmp_path):
    from z1.cli_config import stage_cli

    _sft(dataset, tmp_path / "r", *SHORT)
    with pytest.raises(ConfigError, match="records a `z1 sft` run, not `z1 rl`"):
        stage_cli("rl", ["--config", str(tmp_path / "r" / "sft_config.json")])
    record = json.loads((tmp_path / "r" / "sft_config.json").read_text())
    record["config"]["stepz"] = 3
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['stepz'\]"):
        stage_cli("sft", ["--config", str(bad)])
    record["config"].pop("stepz")
    record["config"]["steps"] = "three"
    bad.write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="steps: expected an integer"):
        stage_cli("sft", ["--config", str(bad)])


def test_wandb_offline_mirrors_the_metrics_without_a_network(dataset, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    _sft(dataset, tmp_path / "r", *SHORT, "--wandb", "offline")
    runs = list((tmp_path / "r" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))


def test_rl_config_round_trips_through_its_record(tmp_path):
    """Every field of a preset's nested RLConfig (tuples, literals, None, nested dataclasses) survives
    `rl_config.json`, so `z1 rl --config` starts exactly the run that was recorded."""
    from dataclasses import replace

    from z1.cli_config import stage_cli
    from z1.presets import rl_preset
    from z1.train.runinfo import write_run_config

    cfg = rl_preset("robocasa24-pi05")
    cfg = replace(cfg, init="ckpt", max_minutes=12.5, rollout=replace(cfg.rollout, branch_frac=0.25))
    write_run_config(tmp_path, "rl", cfg)
    assert stage_cli("rl", ["--config", str(tmp_path)]) == cfg
    assert stage_cli("rl", ["--config", str(tmp_path), "--grpo.epochs", "3"]) == replace(
        cfg, grpo=replace(cfg.grpo, epochs=3)
    )


def test_replay_neither_resumes_nor_overwrites_and_a_resume_keeps_the_record(tmp_path):
    from dataclasses import replace

    from z1.cli_config import stage_cli
    from z1.presets import rl_preset
    from z1.train.runinfo import config_path, write_run_config

    cfg = replace(rl_preset("debug"), init="ckpt", overwrite=True)
    write_run_config(tmp_path, "rl", cfg)
    replayed = stage_cli("rl", ["--config", str(tmp_path)])
    assert (replayed.overwrite, replayed.resume) == (False, False)
    assert replace(replayed, overwrite=True) == cfg
    first = config_path(tmp_path, "rl").read_text()
    write_run_config(tmp_path, "rl", replace(cfg, overwrite=False, resume=True, iterations=9), resumed=True)
    assert config_path(tmp_path, "rl").read_text() == first  # the resumed run's own record stays
