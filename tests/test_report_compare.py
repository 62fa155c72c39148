"""z1 report DIR1 DIR2 ... --out FILE.html: the comparison page (tables, paired intervals against the first
run, curves on one env-step axis), its CLI rules, and its DOM in headless Chromium."""

from __future__ import annotations

import re

import pytest

from test_report import EPISODES, RL_SUCC, SFT_SUCC, TASKS, _parse, _seed_flags, make_run_dir
from test_report_browser import CHROMIUM, _chromium
from test_report_runs import make_sft_dir
from z1.errors import LimitError
from z1.report import write_comparison
from z1.report.stats import mean_estimate, paired_delta

BETTER = {"reach-v3": 29, "push-v3": 27, "button-press-topdown-v3": 16}


@pytest.fixture
def runs(tmp_path):
    base = make_run_dir(tmp_path / "a", filmstrips=False, name="baseline")
    better = make_run_dir(tmp_path / "b", filmstrips=False, name="better", rl_succ=BETTER)
    sft = make_sft_dir(tmp_path / "c", with_eval=True)
    return [base, better, sft]


def _fmt(d) -> str:
    return f"{100 * d.value:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]"


def test_comparison_table_intervals_and_curves(runs, tmp_path):
    out = tmp_path / "cmp" / "compare.html"
    out.parent.mkdir()
    html_path, md_path = write_comparison(runs, out)
    assert (html_path, md_path) == (out, out.with_suffix(".md"))
    html = out.read_text()
    doc = _parse(html)
    header, *body = doc.tables["compare-table"]
    assert header == [
        "task",
        "1: baseline",
        "2: better",
        "Δ 2 − 1 [95% CI]",
        "3: sft-run",
        "Δ 3 − 1 [95% CI]",
    ]
    rows = {r[0]: r for r in body}
    assert [r[0] for r in body] == [*TASKS, "average"]
    base, better, sft = _seed_flags(RL_SUCC), _seed_flags(BETTER), _seed_flags(SFT_SUCC)
    d2 = {t: paired_delta(base[t], better[t]) for t in TASKS}
    d3 = {t: paired_delta(base[t], sft[t]) for t in TASKS}  # the SFT run evaluated the same seeds
    for t in TASKS:
        assert rows[t][1].startswith(f"{100 * RL_SUCC[t] / EPISODES:.1f}% [")
        assert rows[t][3] == _fmt(d2[t]) and rows[t][5] == _fmt(d3[t])
    assert rows["average"][3] == _fmt(mean_estimate(list(d2.values())))
    # push gained 11 seeds and lost none: green; button-press +1 seed: grey.
    assert f'<span class="delta-ci up">{_fmt(d2["push-v3"])}</span>' in html
    assert f'<span class="delta-ci flat">{_fmt(d2["button-press-topdown-v3"])}</span>' in html

    runs_table = {r[1]: r for r in doc.tables["compare-runs"][1:]}
    assert runs_table["sft-run"][2:4] == ["z1 sft", "SFT (eval.json)"]
    assert runs_table["baseline"][3] == "GRPO (eval_rl.json)"
    # Two curves (eval, train success) with every GRPO run on one env-step axis; the SFT run is named.
    assert len(doc.imgs) == 2
    assert "Without GRPO metrics, so not drawn: 3: sft-run." in html
    md = md_path.read_text()
    assert "| `push-v3` |" in md and _fmt(d2["push-v3"]) in md
    assert len(re.findall(r"\(compare_assets/[^)]+\.png\)", md)) == 2
    assert sorted(p.name for p in (out.parent / "compare_assets").iterdir()) == sorted(
        re.findall(r"\(compare_assets/([^)]+)\)", md)
    )


def test_comparison_cli_rules(runs, tmp_path, capsys):
    from z1.cli import ReportCmd, main

    with pytest.raises(LimitError, match="pass --out FILE.html"):
        ReportCmd(run_dirs=(str(runs[0]), str(runs[1])))
    with pytest.raises(LimitError, match="--out is for comparison pages"):
        ReportCmd(run_dirs=(str(runs[0]),), out=str(tmp_path / "x.html"))
    with pytest.raises(LimitError, match="ending in .html"):
        write_comparison(runs[:2], tmp_path / "x.txt")
    out = tmp_path / "cli.html"
    main(["report", str(runs[0]), str(runs[1]), "--out", str(out)])
    assert f"wrote {out}" in capsys.readouterr().out
    assert '<table id="compare-table">' in out.read_text()


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs /usr/bin/chromium")
def test_comparison_dom_in_chromium(runs, tmp_path):
    out = tmp_path / "compare.html"
    write_comparison(runs, out)
    proc = _chromium(tmp_path / "profile", "--dump-dom", out.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert re.search(r'data-images-ok="2"', dom) and re.search(r'data-images-total="2"', dom)
    table = re.search(r'<table id="compare-table">.*?</table>', dom, re.S).group(0)
    assert len(re.findall(r"<tr>", table)) == 1 + len(TASKS) + 1
    cis = re.findall(r'class="delta-ci (up|down|flat)">([+-]\d+\.\d) \[([+-]\d+\.\d), ([+-]\d+\.\d)\]', table)
    assert len(cis) == 2 * (len(TASKS) + 1)  # two compared runs, every task and the average
    for cls, value, lo, hi in cis:
        lo_f, hi_f = float(lo), float(hi)
        assert lo_f <= float(value) <= hi_f
        assert cls == ("up" if lo_f > 0 else "down" if hi_f < 0 else "flat")
