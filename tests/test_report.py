"""z1 report: HTML + markdown from a fabricated run directory (realistic files, no simulator)."""

from __future__ import annotations

import base64
import io
import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from z1.evaluate import EVAL_SEED_BASE, EvalResult, Example, TaskResult, wilson_interval
from z1.media import save_examples, save_filmstrips
from z1.report import load_run, write_report
from z1.report.stats import mean_estimate, paired_delta

TASKS = ("reach-v3", "push-v3", "button-press-topdown-v3")
SFT_SUCC = {"reach-v3": 24, "push-v3": 9, "button-press-topdown-v3": 17}  # of 30
RL_SUCC = {"reach-v3": 28, "push-v3": 16, "button-press-topdown-v3": 15}
EPISODES = 30
ITERS = 10
N_LEARNING = 5  # eval, train, groups, env steps, SFT loss (no SFT eval in the fake metrics)
N_OPTIMISATION = 4  # KL, clip fractions, ratio, grad norm
N_CURVES_FULL = N_LEARNING + N_OPTIMISATION
SEEDS = [EVAL_SEED_BASE + i for i in range(EPISODES)]


def _seed_flags(succ: dict[str, int], seed: int = 0) -> dict[str, list[bool]]:
    """Per task, success of each eval seed (SEEDS order). With the same `seed`, the successes of a run
    with fewer successes are a subset of those of a run with more: SFT -> RL pairs that only win (or
    only lose), as a policy that keeps what it could do."""
    rng = np.random.default_rng(seed)
    out = {}
    for t, k in succ.items():
        rank = rng.permutation(EPISODES)  # rank[i]: how easy seed i is
        out[t] = [bool(rank[i] < k) for i in range(EPISODES)]
    return out


def _eval(
    flags_by_task: dict[str, list[bool]],
    rng: np.random.Generator,
    max_steps: int = 160,
    reverse: bool = False,
    seeds: bool = True,
) -> EvalResult:
    """An EvalResult of per-seed flags; `reverse` stores the episodes in reverse seed order (the report
    must pair by seed, not by position), `seeds=False` as results written before seeds were stored."""
    tasks = {}
    for t, flags in flags_by_task.items():
        k = sum(flags)
        lengths = [int(rng.integers(40, 120)) if f else max_steps for f in flags]
        order = list(range(EPISODES))[::-1] if reverse else list(range(EPISODES))
        lo, hi = wilson_interval(k, EPISODES)
        ok = [n for n, f in zip(lengths, flags) if f]
        tasks[t] = TaskResult(
            t,
            EPISODES,
            k,
            k / EPISODES,
            lo,
            hi,
            float(np.mean(lengths)),
            float(np.mean(ok)),
            [lengths[i] for i in order],
            [flags[i] for i in order],
            [SEEDS[i] for i in order] if seeds else [],
        )
    avg = float(np.mean([r.rate for r in tasks.values()]))
    return EvalResult(tasks, avg, int(sum(sum(r.lengths) for r in tasks.values())))


def _examples(result: EvalResult, rng: np.random.Generator) -> dict[str, list[Example]]:
    """The lowest-seed success and failure of each task, with toy frames (as evaluate() keeps them)."""
    out = {}
    for t, r in result.tasks.items():
        out[t] = []
        for outcome in (True, False):
            hits = sorted((s, n) for s, f, n in zip(r.seeds, r.success_flags, r.lengths) if f == outcome)
            if hits:
                out[t].append(Example(hits[0][0], outcome, hits[0][1], _episode_frames(rng, n=12)))
    return out


def _episode_frames(rng: np.random.Generator, n: int = 40, size: int = 64) -> list[np.ndarray]:
    """A toy scene: grey table, a gripper block moving towards a red object. (y, x, 3) uint8 frames."""
    goal = rng.integers(8, size - 16, size=2)
    frames = []
    for i in range(n):
        img = np.full((size, size, 3), (190, 186, 178), dtype=np.uint8)
        img[size // 2 :] = (150, 120, 90)  # table
        gy, gx = goal
        img[gy : gy + 8, gx : gx + 8] = (200, 40, 40)
        py, px = (np.array([4, 4]) + (goal - 4) * i / (n - 1)).astype(int)
        img[py : py + 6, px : px + 6] = (40, 60, 200)
        frames.append(img)
    return frames


def make_run_dir(
    root: Path,
    *,
    rl: bool = True,
    filmstrips: bool = True,
    timings: bool = True,
    sft_metrics: bool = True,
    videos: bool = False,
    quick: bool = False,
    tasks_override: str | None = None,
    name: str = "demo-run",
    rl_succ: dict[str, int] | None = None,
) -> Path:
    """A run directory as `z1 demo` leaves it: 3 tasks, 10 GRPO iterations, filmstrips (or, with `videos`,
    the example filmstrips and clips of `media.save_examples`)."""
    rng = np.random.default_rng(0)
    run = root / name
    run.mkdir(parents=True)
    (run / "run.json").write_text(
        json.dumps(
            {
                "preset": "mw-quick",
                "quick": quick,
                "command": "z1 demo --preset mw-quick",
                "started": "2026-05-01T12:00:00+00:00",
                "tasks": list(TASKS),
                "config": {
                    "preset": "mw-quick",
                    "tasks": tasks_override,
                    "seed": 0,
                    "rl": {
                        "iterations": ITERS,
                        "groups_per_task": 2,
                        "rollout": {"h_exec": 4, "mode": "tree"},
                    },
                    "sft": {"steps": 1500, "batch_size": 64, "lr": 3e-4},
                },
                "machine": {"platform": "Linux-x86_64", "python": "3.11.2", "torch": "2.13.0", "cpus": 2},
            }
        )
    )
    t = {"collect": 41.5, "sft": 610.2, "eval_sft": 95.0}
    if rl:
        t.update({"rl": 1330.7, "eval_rl": 97.3})
    if timings:
        (run / "timings.json").write_text(json.dumps(t))
    sft_eval = _eval(_seed_flags(SFT_SUCC), rng)
    (run / "eval_sft.json").write_text(json.dumps(sft_eval.to_json()))
    t0 = 1.7e9
    if sft_metrics:
        with (run / "sft_metrics.jsonl").open("w") as fh:
            for step in range(50, 1501, 50):
                loss = 1.2 * np.exp(-step / 400) + 0.08 + 0.01 * rng.standard_normal()
                row = {
                    "step": step,
                    "time": t0 + step * 0.4,
                    "loss": float(loss),
                    "lr": 3e-4,
                    "samples_per_s": 310.0,
                }
                fh.write(json.dumps(row) + "\n")
    if rl:
        rl_eval = _eval(_seed_flags(rl_succ or RL_SUCC), rng, reverse=True)
        (run / "eval_rl.json").write_text(json.dumps(rl_eval.to_json()))
        with (run / "rl_metrics.jsonl").open("w") as fh:
            base = {f"eval_success/{k}": r.rate for k, r in sft_eval.tasks.items()}
            fh.write(json.dumps({"step": 0, "time": t0, **base, "eval_success_avg": sft_eval.average}) + "\n")
            env = flat = 0.0
            for it in range(1, ITERS + 1):
                env += 2600 + 10 * it
                flat += 4100 + 10 * it
                mixed = 0.3 + 0.03 * it
                train = {
                    f"train_success/{k}": float(min(1.0, 0.3 + 0.05 * it + 0.1 * i))
                    for i, k in enumerate(TASKS)
                }
                row = {
                    "step": it,
                    "time": t0 + 130 * it,
                    **train,
                    "train_success_avg": float(np.mean(list(train.values()))),
                    "groups/all_success": 0.5 - 0.02 * it,
                    "groups/all_fail": 1 - mixed - (0.5 - 0.02 * it),
                    "groups/mixed": mixed,
                    "env_steps": env,
                    "env_steps_flat_equiv": flat,
                    "tree/leaves_per_group": 8.0,
                    "tree/branch_nodes": 3.0 + (it % 2),
                    "tree/prefix_forwards_saved": 120.0 + it,
                    "tree/trainable_edge_frac": 0.6 + 0.01 * it,
                    "ratio/mean": 1.0 + 0.001 * it,
                    "ratio/min": 0.8,
                    "ratio/max": 1.2 + 0.01 * it,
                    "clip_frac/high": 0.02,
                    "clip_frac/low": 0.01,
                    "approx_kl/k1": 2e-4 * it,
                    "approx_kl/k3": 1e-4 * it,
                    "grad_norm/total": 0.5 + 0.05 * it,
                    "grad_norm/expert": 0.4 + 0.05 * it,
                    "loss/policy": -0.01 * it,
                    "time/rollout": 100.0,
                    "time/update": 25.0,
                }
                if it == 5:
                    row.update({f"eval_success/{k}": 0.6 for k in TASKS} | {"eval_success_avg": 0.6})
                fh.write(json.dumps(row) + "\n")
            # The trainer logs the final evaluation as a second line with the last step.
            final = {f"eval_success/{k}": r.rate for k, r in rl_eval.tasks.items()}
            fh.write(
                json.dumps({"step": ITERS, "time": t0 + 1400, **final, "eval_success_avg": rl_eval.average})
                + "\n"
            )
    if videos:  # the demo's writer: a filmstrip and a clip of each example episode
        for stage, result in (("sft", sft_eval), ("rl", rl_eval)) if rl else (("sft", sft_eval),):
            result.examples = _examples(result, rng)
            (run / f"eval_{stage}.json").write_text(json.dumps(result.to_json()))
            save_examples(result.examples, run, stage)
    elif filmstrips:  # written by the pipeline's own writer: 8 frames of 64 px, upscaled to 96 px high
        for stage in ("sft", "rl") if rl else ("sft",):
            save_filmstrips({t: [_episode_frames(rng)] for t in TASKS}, run / "filmstrips", stage)
    return run


class _Tables(HTMLParser):
    """Rows of text cells of every <table id=...> plus every <img src>."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.imgs: list[str] = []
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id", "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "img":
            self.imgs.append(a["src"])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _parse(html: str) -> _Tables:
    p = _Tables()
    p.feed(html)
    return p


def _pct(k: int) -> str:
    return f"{100 * k / EPISODES:.1f}%"


def _ci(k: int) -> str:
    lo, hi = wilson_interval(k, EPISODES)
    return f"[{100 * lo:.1f}, {100 * hi:.1f}]"


def test_full_report_table_images_and_markdown(tmp_path):
    run = make_run_dir(tmp_path)
    rc_before = dict(matplotlib.rcParams)
    backend_before = matplotlib.get_backend()
    html_path, md_path = write_report(run)
    assert (html_path, md_path) == (run / "report.html", run / "report.md")
    html = html_path.read_text()
    doc = _parse(html)

    # Per-task table: numbers recomputed here from the successes, independently of the report.
    rows = doc.tables["success-table"]
    header, body = rows[0], rows[1:]
    assert header[:7] == ["task", "SFT", "SFT 95% CI", "GRPO", "GRPO 95% CI", "Δ points", "Δ 95% CI"]
    by_task = {r[0]: r for r in body}
    sft_flags, rl_flags = _seed_flags(SFT_SUCC), _seed_flags(RL_SUCC)
    for t in TASKS:
        s, r = SFT_SUCC[t], RL_SUCC[t]
        assert by_task[t][1:6] == [_pct(s), _ci(s), _pct(r), _ci(r), f"{100 * (r - s) / EPISODES:+.1f}"]
        d = paired_delta(sft_flags[t], rl_flags[t])  # eval_rl.json stores its episodes in reverse order
        assert by_task[t][6] == f"[{100 * d.low:+.1f}, {100 * d.high:+.1f}]"
        assert by_task[t][7] == f"{EPISODES} / {EPISODES}"
    sft_avg = np.mean([SFT_SUCC[t] / EPISODES for t in TASKS])
    rl_avg = np.mean([RL_SUCC[t] / EPISODES for t in TASKS])
    assert by_task["average"][1] == f"{100 * sft_avg:.1f}%"
    assert by_task["average"][3] == f"{100 * rl_avg:.1f}%"
    assert by_task["average"][5] == f"{100 * (rl_avg - sft_avg):+.1f}"
    avg = mean_estimate([paired_delta(sft_flags[t], rl_flags[t]) for t in TASKS])
    assert by_task["average"][6] == f"[{100 * avg.low:+.1f}, {100 * avg.high:+.1f}]"
    assert [r[0] for r in body] == [*TASKS, "average"]
    # Colour only when the paired interval excludes 0: push and reach only gained (green); button-press
    # lost 2 of 30 episodes and nothing else, which its interval does not tell apart from 0 (grey).
    assert 'class="delta up">+23.3<' in html and 'class="delta up">+13.3<' in html
    assert 'class="delta flat">-6.7<' in html and 'class="delta down"' not in html

    # Summary paragraph: averages, delta, env steps, saving, wall time.
    summary = re.search(r'<p class="lead" id="summary">(.*?)</p>', html).group(1)
    env = sum(2600 + 10 * it for it in range(1, ITERS + 1))
    flat = sum(4100 + 10 * it for it in range(1, ITERS + 1))
    assert f"{100 * sft_avg:.1f}%" in summary and f"{100 * rl_avg:.1f}%" in summary
    assert f"{100 * (rl_avg - sft_avg):+.1f} points" in summary
    assert (
        f"{env:,}" in summary and f"{flat:,}" in summary and f"{100 * (1 - env / flat):.0f}% saved" in summary
    )
    assert "36 min 15 s" in summary  # 41.5 + 610.2 + 95.0 + 1330.7 + 97.3 = 2174.7 s

    # Self-contained: every image an embedded PNG; 5 curves + 3 tasks x 2 stages of filmstrips.
    assert len(doc.imgs) == N_CURVES_FULL + 2 * len(TASKS)
    for src in doc.imgs:
        assert src.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    assert not re.search(r"(src|href)=\"(https?:)?//", html) and "@import" not in html and "url(" not in html
    for t in TASKS:  # the filmstrip bytes are embedded unchanged
        png = (run / "filmstrips" / f"rl_{t}.png").read_bytes()
        assert "data:image/png;base64," + base64.b64encode(png).decode() in html

    # Tree statistics: latest / mean / min / max of tree/* metrics over the iterations.
    tree = {r[0]: r[1:] for r in doc.tables["tree-statistics"][1:]}
    assert tree["tree/branch_nodes"] == ["3", "3.5", "3", "4"]
    assert tree["tree/leaves_per_group"] == ["8", "8", "8", "8"]
    assert tree["env steps / flat equivalent (cumulative)"][0] == f"{env / flat:.3f}"
    assert "approx_kl/k3" in {r[0] for r in doc.tables["policy-update"]}

    timings = {r[0]: r[1:] for r in doc.tables["timings-table"][1:]}
    assert timings["GRPO"][:2] == ["22 min 11 s", "1330.7"]
    assert timings["total"][1] == "2174.7"
    assert (
        "<details><summary>config used (JSON)</summary>" in html and "&quot;groups_per_task&quot;: 2" in html
    )

    # Markdown twin: same numbers, images as files in report_assets/ that exist and are PNGs.
    md = md_path.read_text()
    s, r = SFT_SUCC["push-v3"], RL_SUCC["push-v3"]
    assert f"| `push-v3` | {_pct(s)} | {_ci(s)} | {_pct(r)} | {_ci(r)} | +23.3 |" in md
    refs = re.findall(r"!\[[^\]]*\]\((report_assets/[^)]+)\)", md)
    assert len(refs) == len(doc.imgs)
    for ref in refs:
        Image.open(run / ref).verify()
    assert sorted(p.name for p in (run / "report_assets").iterdir()) == sorted(Path(x).name for x in refs)

    # No global matplotlib state touched; no temporary files left.
    assert dict(matplotlib.rcParams) == rc_before and matplotlib.get_backend() == backend_before
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []


def test_final_eval_line_is_merged_into_last_iteration(tmp_path):
    data = load_run(make_run_dir(tmp_path))
    assert [r["step"] for r in data.rl_rows] == list(range(ITERS + 1))
    last = data.rl_rows[-1]
    assert "train_success_avg" in last and last["eval_success_avg"] == pytest.approx(
        np.mean([RL_SUCC[t] / EPISODES for t in TASKS])
    )


def test_sft_only_run_says_what_is_missing(tmp_path):
    run = make_run_dir(tmp_path, rl=False, filmstrips=False)
    html = write_report(run)[0].read_text()
    doc = _parse(html)
    rows = {r[0]: r for r in doc.tables["success-table"][1:]}
    assert rows["push-v3"][1:6] == [_pct(9), _ci(9), "—", "—", "—"]
    assert "no GRPO evaluation (eval_rl.json is missing)" in html
    assert "No GRPO metrics (rl_metrics.jsonl is missing or empty)." in html
    assert "No filmstrips/ or videos/ in this run" in html
    assert "Missing: eval_rl.json." in html
    # Only the SFT loss curve can be drawn; the others are listed as not shown.
    assert len(doc.imgs) == 1
    assert "Train success (SDE rollouts): no train_success_avg in rl_metrics.jsonl" in html
    assert "No GRPO metrics (rl_metrics.jsonl is missing or empty), so no optimisation curves." in html
    md = (run / "report.md").read_text()
    assert "No filmstrips/ or videos/" in md and "not shown: Group outcomes" in md


def test_empty_and_broken_run_dirs(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    html = write_report(empty)[0].read_text()
    for text in (
        "No evaluation results were found",
        "timings.json is missing",
        "run.json is missing",
        "No per-task evaluation results",
    ):
        assert text in html
    assert "<img" not in html

    run = make_run_dir(tmp_path / "broken", timings=False, sft_metrics=False)
    (run / "eval_rl.json").write_text('{"average": 0.5, "tas')  # interrupted write
    with (run / "rl_metrics.jsonl").open("a") as fh:
        fh.write('{"step": 11, "time": 1.0, "train_succ')  # a run still writing its last line
    html = write_report(run)[0].read_text()
    assert "eval_rl.json could not be parsed" in html
    assert "rl_metrics.jsonl: skipped 1 line(s) that are not valid JSON." in html
    assert "Wall time is unknown (timings.json is missing)." in html
    assert "SFT loss: no sft_metrics.jsonl" in html
    assert len(_parse(html).imgs) == (N_CURVES_FULL - 1) + 2 * len(TASKS)

    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        write_report(tmp_path / "does-not-exist")


def test_filmstrip_subset_and_stale_assets(tmp_path, monkeypatch):
    import z1.report.episodes as episodes

    run = make_run_dir(tmp_path)
    (run / "filmstrips" / "rl_push-v3.png").unlink()
    (run / "filmstrips" / "notes.png").write_bytes(b"not a stage_task name")  # ignored
    write_report(run)
    md = (run / "report.md").read_text()
    assert "GRPO: no filmstrip." in md
    # Most improved task first: push (+23.3) before reach (+13.3) before button-press (-6.7).
    order = [m for m in re.findall(r"### `([^`]+)`", md)]
    assert order == ["push-v3", "reach-v3", "button-press-topdown-v3"]
    assert (run / "report_assets" / "filmstrip-sft-push-v3.png").is_file()

    # A later report with fewer tasks shown removes the assets it no longer references.
    monkeypatch.setattr(episodes, "MAX_FILMSTRIP_TASKS", 1)
    write_report(run)
    md = (run / "report.md").read_text()
    assert "2 more task(s) in filmstrips/: reach-v3, button-press-topdown-v3." in md
    assets = {p.name for p in (run / "report_assets").iterdir()}
    assert "filmstrip-sft-reach-v3.png" not in assets and "filmstrip-sft-push-v3.png" in assets
    assert assets == set(re.findall(r"report_assets/([^)]+)\)", md))


def test_write_is_atomic(tmp_path, monkeypatch):
    run = make_run_dir(tmp_path)
    (run / "report.html").write_text("previous report")
    (run / "report.md").write_text("previous md")
    real_fsync = os.fsync
    calls = {"n": 0}

    n_assets = N_CURVES_FULL + 2 * len(TASKS)

    def failing_fsync(fd):
        calls["n"] += 1
        if calls["n"] > n_assets:  # every asset written, then the markdown fails mid-write
            raise OSError("disk full")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_report(run)
    assert (run / "report.html").read_text() == "previous report"
    assert (run / "report.md").read_text() == "previous md"
    leftovers = [p for d in (run, run / "report_assets") for p in d.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    monkeypatch.setattr(os, "fsync", real_fsync)
    write_report(run)
    assert (run / "report.html").read_text().startswith("<!DOCTYPE html>")


def test_without_matplotlib_the_curves_section_says_so(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    html = write_report(make_run_dir(tmp_path))[0].read_text()
    assert "matplotlib is not installed, so there are no curves: pip install -e &#x27;.[report]&#x27;" in html
    assert len(_parse(html).imgs) == 2 * len(TASKS)  # the filmstrips still show


def test_malformed_eval_entries_are_left_out(tmp_path):
    run = make_run_dir(tmp_path)
    data = json.loads((run / "eval_rl.json").read_text())
    data["tasks"]["push-v3"]["rate"] = "n/a"
    (run / "eval_rl.json").write_text(json.dumps(data))
    html = write_report(run)[0].read_text()
    assert "eval_rl.json: task(s) push-v3 lack a number for one of" in html
    rows = {r[0]: r for r in _parse(html).tables["success-table"][1:]}
    assert rows["push-v3"][1] == _pct(SFT_SUCC["push-v3"]) and rows["push-v3"][3] == "—"
    assert rows["reach-v3"][3] == _pct(RL_SUCC["reach-v3"])
