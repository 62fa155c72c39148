"""`z1 demo --quick` walks the whole path on one task and leaves a complete run directory."""

import json

import pytest

from z1.demo import DemoConfig, run_demo

pytestmark = pytest.mark.sim


def test_demo_quick_end_to_end(tmp_path):
    run = run_demo(
        DemoConfig(quick=True, out=str(tmp_path / "run"), tasks="button-press-topdown-v3", workers=1)
    )
    for name in (
        "run.json",
        "timings.json",
        "eval_sft.json",
        "eval_rl.json",
        "sft_metrics.jsonl",
        "rl_metrics.jsonl",
        "report.html",
        "report.md",
        "summary.md",
    ):
        assert (run / name).is_file(), name
    assert (run / "sft_ckpt" / "model.safetensors").is_file()
    assert (run / "rl_ckpt" / "model.safetensors").is_file()
    assert (run / "data" / "meta" / "info.json").is_file()
    timings = json.loads((run / "timings.json").read_text())
    assert set(timings) == {"collect", "sft", "eval_sft", "rl", "eval_rl"}
    assert list((run / "filmstrips").glob("sft_*.png")) and list((run / "filmstrips").glob("rl_*.png"))
    html = (run / "report.html").read_text()
    assert "button-press-topdown-v3" in html and "<table" in html
    assert not list(run.glob(".*tmp*"))
