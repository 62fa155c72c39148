"""z1 report on every kind of run directory, its title and notes, the colouring of changes by their paired
intervals, and the policy-optimisation curves."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from test_report import (
    EPISODES,
    ITERS,
    N_LEARNING,
    N_OPTIMISATION,
    RL_SUCC,
    SFT_SUCC,
    TASKS,
    _parse,
    _pct,
    _seed_flags,
    make_run_dir,
)
from z1.report import load_run, write_report
from z1.report.stats import paired_delta, unpaired_delta

RL_CONFIG = {
    "init": "runs/sft/sft_ckpt",
    "tasks": ",".join(TASKS),
    "iterations": ITERS,
    "grad_clip": 1.0,
    "grpo": {"kl_target": 0.02, "clip_high": 0.28},
}


def make_rl_dir(root: Path) -> Path:
    """What `z1 rl --out DIR` leaves: rl_metrics.jsonl, eval_final.json, rl_summary.json, rl_ckpt/."""
    demo = make_run_dir(root / "src", filmstrips=False)
    rl = root / "rl-run"
    (rl / "rl_ckpt").mkdir(parents=True)
    shutil.copy(demo / "rl_metrics.jsonl", rl / "rl_metrics.jsonl")
    shutil.copy(demo / "eval_rl.json", rl / "eval_final.json")
    (rl / "rl_summary.json").write_text(json.dumps({"iterations": ITERS, "env_steps": 1.0}))
    extra = {"stage": "rl", "rl_config": RL_CONFIG, "sft_config": {"steps": 1500, "preset": "laptop"}}
    (rl / "rl_ckpt" / "extra.json").write_text(json.dumps(extra))
    return rl


def make_sft_dir(root: Path, with_eval: bool) -> Path:
    """What `z1 sft --out DIR` leaves (sft_metrics.jsonl, sft_ckpt/), plus `z1 eval`'s eval.json."""
    demo = make_run_dir(root / "src", rl=False, filmstrips=False)
    sft = root / "sft-run"
    (sft / "sft_ckpt").mkdir(parents=True)
    shutil.copy(demo / "sft_metrics.jsonl", sft / "sft_metrics.jsonl")
    if with_eval:
        shutil.copy(demo / "eval_sft.json", sft / "eval.json")
    extra = {"stage": "sft", "sft_config": {"steps": 1500, "preset": "laptop", "lr": 3e-4}}
    (sft / "sft_ckpt" / "extra.json").write_text(json.dumps(extra))
    return sft


def _title(html: str) -> str:
    return re.search(r'<h1 id="title">(.*?)</h1>', html).group(1)


def test_rl_directory_alone(tmp_path):
    run = make_rl_dir(tmp_path)
    assert load_run(run).kind == "rl"
    html = write_report(run)[0].read_text()
    doc = _parse(html)
    assert _title(html) == "z1 rl report — " + ", ".join(TASKS)
    rows = {r[0]: r for r in doc.tables["success-table"][1:]}
    assert rows["push-v3"][1:5] == ["—", "—", _pct(RL_SUCC["push-v3"]), rows["push-v3"][4]]
    assert rows["push-v3"][5] == "—"  # no SFT evaluation: no change
    assert "This is a <code>z1 rl</code> directory: it holds no evaluation of the SFT policy" in html
    # The configuration comes from the checkpoint, not "unknown".
    assert "configuration is unknown" not in html
    assert "From rl_ckpt/extra.json (rl_config), with the SFT config from rl_ckpt/extra.json." in html
    assert "&quot;kl_target&quot;: 0.02" in html
    # Learning curves minus the SFT loss, and all four optimisation curves; no filmstrips.
    assert len(doc.imgs) == (N_LEARNING - 1) + N_OPTIMISATION
    assert "<code>z1 rl</code> records none; <code>z1 demo</code>" in html
    assert "This is a `z1 rl` directory" in (run / "report.md").read_text()
    assert "SFT loss: no sft_metrics.jsonl" in html

    # Newer runs record the resolved config beside the metrics; it wins over the checkpoint's copy.
    record = {"format": 1, "stage": "rl", "config": {**RL_CONFIG, "grad_clip": 0.5}, "argv": ["z1", "rl"]}
    (run / "rl_config.json").write_text(json.dumps(record))
    html = write_report(run)[0].read_text()
    assert "From rl_config.json, with the SFT config from rl_ckpt/extra.json." in html
    assert "&quot;grad_clip&quot;: 0.5" in html

    (run / "eval_final.json").unlink()  # --eval-episodes 0: only the training metrics
    html = write_report(run)[0].read_text()
    assert "No evaluation results were found (eval_final.json: missing)." in html
    assert "eval_final.json is missing: the run had --eval-episodes 0" in html
    assert "eval_sft" not in html and "eval_rl.json" not in html  # files a z1 rl run never has


def test_sft_directory_alone_with_and_without_eval(tmp_path):
    run = make_sft_dir(tmp_path / "a", with_eval=False)
    assert load_run(run).kind == "sft"
    html = write_report(run)[0].read_text()
    assert _title(html) == "z1 sft report — no tasks found"
    assert "No evaluation of the SFT policy (eval.json)" in html
    assert "there is no GRPO stage" in html
    assert "From sft_ckpt/extra.json (sft_config)." in html and "configuration is unknown" not in html
    assert len(_parse(html).imgs) == 1  # the SFT loss

    run = make_sft_dir(tmp_path / "b", with_eval=True)
    html = write_report(run)[0].read_text()
    rows = {r[0]: r for r in _parse(html).tables["success-table"][1:]}
    assert rows["push-v3"][1] == _pct(SFT_SUCC["push-v3"]) and rows["push-v3"][3] == "—"
    assert _title(html) == "z1 sft report — " + ", ".join(TASKS)
    assert "No evaluation of the SFT policy" not in html


def test_title_names_tasks_and_quick_runs_say_zero_is_expected(tmp_path):
    html = write_report(make_run_dir(tmp_path / "a"))[0].read_text()
    assert _title(html) == "z1 demo report — mw-quick: " + ", ".join(TASKS)
    assert "--quick" not in html

    html = write_report(make_run_dir(tmp_path / "b", tasks_override="push-v3,reach-v3", quick=True))[
        0
    ].read_text()
    title = _title(html)
    assert "mw-quick" not in title and title.startswith("z1 demo report — reach-v3, push-v3")
    assert title.endswith("(--quick)")
    assert "0% success is expected here" in html


def test_changes_are_coloured_only_when_their_paired_interval_excludes_zero(tmp_path):
    run = make_run_dir(tmp_path, filmstrips=False)
    sft = json.loads((run / "eval_sft.json").read_text())
    rl = json.loads((run / "eval_rl.json").read_text())
    # button-press: RL now fails every seed SFT solved except 3, a clear loss (red).
    flags = _seed_flags(SFT_SUCC)["button-press-topdown-v3"]
    order = rl["tasks"]["button-press-topdown-v3"]["seeds"]  # reverse seed order
    seed_flag = dict(zip(sft["tasks"]["button-press-topdown-v3"]["seeds"], flags))
    kept = sorted(s for s, f in seed_flag.items() if f)[:3]
    new = [s in kept for s in order]
    entry = rl["tasks"]["button-press-topdown-v3"]
    entry.update(success_flags=new, successes=3, rate=3 / EPISODES)
    # push: the same counts as the fixture, but without seeds: compared unpaired, the gain is unclear.
    for key in ("seeds",):
        del rl["tasks"]["push-v3"][key]
    (run / "eval_rl.json").write_text(json.dumps(rl))
    html = write_report(run)[0].read_text()
    rows = {r[0]: r for r in _parse(html).tables["success-table"][1:]}

    d = paired_delta([seed_flag[s] for s in order], new)
    assert d.high < 0
    assert rows["button-press-topdown-v3"][6] == f"[{100 * d.low:+.1f}, {100 * d.high:+.1f}]"
    assert 'class="delta down">-46.7<' in html

    u = unpaired_delta(SFT_SUCC["push-v3"], EPISODES, RL_SUCC["push-v3"], EPISODES)
    p = paired_delta(_seed_flags(SFT_SUCC)["push-v3"], _seed_flags(RL_SUCC)["push-v3"])
    assert u.low < 0 < p.low  # pairing is what makes the push gain clear
    assert rows["push-v3"][6] == f"[{100 * u.low:+.1f}, {100 * u.high:+.1f}] *"
    assert 'class="delta flat">+23.3<' in html
    assert "* unpaired: an evaluation file has no per-episode seeds" in html
    assert 'class="delta up">+13.3<' in html  # reach stays paired and clear


def test_optimisation_curves_and_what_is_missing(tmp_path):
    run = make_run_dir(tmp_path, filmstrips=False)
    html = write_report(run)[0].read_text()
    for title in ("KL to the rollout policy", "Clip fractions", "Importance ratio", "Gradient norm"):
        assert f'alt="{title}"' in html
    assert len(_parse(html).imgs) == N_LEARNING + N_OPTIMISATION

    lines = [json.loads(ln) for ln in (run / "rl_metrics.jsonl").read_text().splitlines()]
    for row in lines:
        for k in [k for k in row if k.startswith(("grad_norm/", "clip_frac/"))]:
            del row[k]
    (run / "rl_metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    html = write_report(run)[0].read_text()
    assert 'alt="Gradient norm"' not in html and 'alt="KL to the rollout policy"' in html
    assert "Gradient norm: none of grad_norm/total, grad_norm/* in rl_metrics.jsonl" in html
    assert "Clip fractions: none of clip/frac, clip_frac/* in rl_metrics.jsonl" in html
    assert len(_parse(html).imgs) == N_LEARNING + N_OPTIMISATION - 2
