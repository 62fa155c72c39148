"""The `z1` command line: help texts, env listing, and `z1 eval` writing a well-formed result."""

import json

import pytest
import torch

from fakes import identity_norm
from z1.cli import main
from z1.config import policy_preset
from z1.models.checkpoint import save_checkpoint
from z1.models.pi05 import Pi05Policy


@pytest.mark.parametrize("cmd", [[], ["sft"], ["rl"], ["eval"], ["demo"], ["collect"], ["envs"]])
def test_help_explains_every_command(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([*cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage" in out.lower()


def test_rl_help_lists_ablation_switches(capsys):
    with pytest.raises(SystemExit):
        main(["rl", "--help"])
    out = capsys.readouterr().out
    for flag in ("--rollout.mode", "--rollout.share-prefix", "--reward.kind", "--selective.mode"):
        assert flag in out


def _flag_rows(text: str) -> dict[str, str]:
    """{flag: its help text} of a plain-text tyro help."""
    import re

    rows: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r" {1,2}(--[a-z][-\w.]*),?(.*)", line)
        if m:
            current = m.group(1)
            rows[current] = m.group(2)
        elif current and re.match(r" {3,}\S", line):
            rows[current] += " " + line.strip()
        else:
            current = None
    return rows


@pytest.mark.parametrize("stage", ["rl", "sft"])
def test_every_flag_has_its_own_help_and_rl_help_shows_at_most_40(stage, capsys):
    import re

    from z1.cli_config import RL_ADVANCED_FLAGS

    with pytest.raises(SystemExit):
        main([stage, "--help-all"])
    every = _flag_rows(capsys.readouterr().out)
    for flag, text in every.items():
        words = re.sub(r"\((default: .*|required)\)|\{[^}]*\}|\b[A-Z]+\b", "", text).split()
        assert len(words) >= 2, f"{flag} has no help of its own: {text!r}"
    with pytest.raises(SystemExit):
        main([stage, "--help"])
    out = capsys.readouterr().out
    shown = _flag_rows(out)
    if stage == "rl":
        assert len(shown) <= 40 and set(every) - set(shown) == RL_ADVANCED_FLAGS, sorted(shown)
        assert f"{len(RL_ADVANCED_FLAGS)} advanced options are not shown" in out
        assert "mw-quick:" in out and "--config FILE" in out  # presets and replay are explained
    else:
        assert shown == every


def test_hidden_rl_flags_still_set_their_fields():
    from z1.cli_config import stage_cli

    cfg = stage_cli(
        "rl", ["--init", "x", "--grpo.dual-clip", "2.5", "--reward.sigma-min", "0.2", "--suite", "metaworld"]
    )
    assert (cfg.grpo.dual_clip, cfg.reward.sigma_min, cfg.suite) == (2.5, 0.2, "metaworld")


def test_unknown_task_set_gets_did_you_mean(tmp_path):
    from z1.config import ConfigError
    from z1.train.setup import resolve_tasks

    with pytest.raises(ConfigError, match="mw-quick"):
        resolve_tasks("mw-quik")


@pytest.mark.sim
def test_eval_writes_table_and_json(tmp_path, capsys):
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "ckpt", Pi05Policy(policy_preset("tiny")), identity_norm())
    out = tmp_path / "eval.json"
    main(
        [
            "eval",
            "--checkpoint",
            str(ckpt),
            "--tasks",
            "button-press-topdown-v3,reach-v3",
            "--episodes",
            "2",
            "--max-steps",
            "8",
            "--num-slots",
            "2",
            "--workers",
            "0",
            "--num-steps",
            "2",
            "--out",
            str(out),
        ]
    )
    res = json.loads(out.read_text())
    assert set(res["tasks"]) == {"button-press-topdown-v3", "reach-v3"}
    for r in res["tasks"].values():
        assert r["episodes"] == 2 and 0.0 <= r["ci_low"] <= r["rate"] <= r["ci_high"] <= 1.0
        assert all(1 <= ln <= 8 for ln in r["lengths"])
    text = capsys.readouterr().out
    assert "| button-press-topdown-v3 |" in text and "average" in text


@pytest.mark.sim
def test_eval_defaults_to_the_checkpoints_inference_steps(tmp_path, capsys):
    """An imported checkpoint that records its source's `num_inference_steps` is evaluated with that K
    unless --num-steps says otherwise; without a record K is the sampler's default, 10."""
    from dataclasses import replace

    from z1.types import Conventions

    torch.manual_seed(0)
    model = Pi05Policy(policy_preset("tiny"))
    norm = replace(identity_norm(), conventions=Conventions(source="lerobot", num_inference_steps=3))
    recorded = save_checkpoint(tmp_path / "recorded", model, norm)
    plain = save_checkpoint(tmp_path / "plain", model, identity_norm())
    common = ["--tasks", "reach-v3", "--episodes", "1", "--max-steps", "4", "--num-slots", "1"]
    common += ["--workers", "0"]
    for ckpt, extra, want in ((recorded, [], 3), (recorded, ["--num-steps", "2"], 2), (plain, [], 10)):
        main(["eval", "--checkpoint", str(ckpt), *common, *extra, "--out", str(tmp_path / "e.json")])
        assert f"ODE, K={want}, 1 episodes per task" in capsys.readouterr().out


def test_sft_cli_maps_a_dataset_from_elsewhere(tmp_path):
    """The real `z1 sft` command in a subprocess: the --data.* flags reach run_sft; without them the run
    stops with the message naming the dataset's features and the flag."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from foreign_data import MAPPING, STATE_KEY, write_foreign_dataset

    root = write_foreign_dataset(tmp_path / "foreign")
    z1 = Path(sys.executable).with_name("z1")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": "egl"}
    common = [str(z1), "sft", "--dataset", str(root), "--steps", "2", "--batch-size", "4"]
    common += ["--warmup", "1", "--log-every", "1", "--threads", "1"]
    bad = subprocess.run(
        [*common, "--out", str(tmp_path / "bad"), "--data.state-key", STATE_KEY],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode != 0
    assert "front [64, 64, 3] (image)" in bad.stderr and f"--data.cameras {MAPPING}" in bad.stderr
    ok = subprocess.run(
        [*common, "--out", str(tmp_path / "ok"), "--data.cameras", MAPPING, "--data.state-key", STATE_KEY],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert (tmp_path / "ok" / "sft_ckpt" / "model.safetensors").is_file()
    assert "'final_loss'" in ok.stdout
