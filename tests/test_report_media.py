"""Example episodes for the report: evaluate() keeps the lowest-seed success and failure of each task,
media writes their filmstrips and mp4 clips, the report embeds the clips, and Chromium plays them."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest

from fakes import FakeVectorEnv, tiny_runner
from test_report import TASKS, make_run_dir
from test_report_browser import CHROMIUM, _chromium
from z1.evaluate import EvalConfig, Example, evaluate
from z1.media import save_examples, write_mp4
from z1.report import write_report

av = pytest.importorskip("av", reason="videos need PyAV: pip install 'z1[video]'")


def _decode(mp4: bytes) -> list[np.ndarray]:
    with av.open(io.BytesIO(mp4)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_evaluate_keeps_the_lowest_seed_success_and_failure():
    # goal 0.08: the untrained policy's drift reaches it from some start positions and not others
    tasks = ["a", "b"]
    cfg = EvalConfig(episodes_per_task=8, num_steps=2, max_steps=16, record_examples=True)
    out = [evaluate(tiny_runner(), FakeVectorEnv(n, goal=0.08), tasks, cfg) for n in (1, 3)]
    for res in out:
        for t in tasks:
            r = res.tasks[t]
            assert r.seeds == sorted(r.seeds) == [cfg.seed_base + i for i in range(8)]
            outcomes = {
                f: min(s for s, g in zip(r.seeds, r.success_flags) if g == f) for f in set(r.success_flags)
            }
            exs = res.examples[t]
            assert [e.success for e in exs] == sorted(outcomes, reverse=True)  # success first
            for e in exs:
                assert e.seed == outcomes[e.success]
                assert e.length == r.lengths[r.seeds.index(e.seed)]
                assert len(e.frames) >= 2 and e.frames[0].shape == (64, 128, 3)
        doc = res.to_json()["examples"]
        assert doc == {
            t: [{"seed": e.seed, "success": e.success, "length": e.length} for e in res.examples[t]]
            for t in tasks
        }
    assert any(len(res.examples[t]) == 2 for t in tasks for res in out), "no task had both outcomes"
    # independent of how many slots ran the episodes
    a, b = out
    for t in tasks:
        assert a.tasks[t].success_flags == b.tasks[t].success_flags
        for x, y in zip(a.examples[t], b.examples[t], strict=True):
            assert (x.seed, x.length) == (y.seed, y.length)
            assert all(np.array_equal(f, g) for f, g in zip(x.frames, y.frames, strict=True))
    assert (
        evaluate(tiny_runner(), FakeVectorEnv(2, goal=0.08), tasks, EvalConfig(8, num_steps=2)).examples == {}
    )


def test_mp4_is_small_h264_of_the_frames(tmp_path):
    frames = []
    for i in range(40):  # a block moving over a flat background, 64 x 128 as two cameras side by side
        img = np.full((64, 128, 3), 180, np.uint8)
        img[20:36, 2 * i : 2 * i + 16] = (200, 30, 30)
        frames.append(img)
    path = write_mp4(frames, tmp_path / "clip.mp4")
    mp4 = path.read_bytes()
    assert len(mp4) < 60_000
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
    got = _decode(mp4)
    assert len(got) == 40 and got[0].shape == (128, 256, 3)  # enlarged 2x
    # lossy, but the block is where it was
    mean_err = np.abs(got[10][::2, ::2].astype(int) - frames[10].astype(int)).mean()
    assert mean_err < 8, mean_err
    odd = write_mp4([f[:63, :127] for f in frames[:3]], tmp_path / "odd.mp4", scale=1)
    assert _decode(odd.read_bytes())[0].shape == (64, 128, 3)  # padded to even
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_report_embeds_one_success_and_one_failure_clip_per_stage(tmp_path):
    run = make_run_dir(tmp_path, videos=True)
    clips = sorted(p.name for p in (run / "videos").iterdir())
    assert len(clips) == 2 * 2 * len(TASKS)  # every fixture task has both outcomes in both stages
    html = write_report(run)[0].read_text()
    videos = re.findall(r'<video class="clip"[^>]*src="data:video/mp4;base64,([^"]+)"', html)
    assert len(videos) == len(clips)
    for name in clips:  # embedded unchanged
        b64 = base64.b64encode((run / "videos" / name).read_bytes()).decode()
        assert b64 in videos
    assert all(len(_decode(base64.b64decode(v))) == 12 for v in videos)
    assert sum(len(base64.b64decode(v)) for v in videos) < 300_000 * len(TASKS)
    assert re.search(
        r'<figure class="failure"><video[^>]*></video><figcaption>GRPO · seed \d+ · failure', html
    )
    assert "GRPO · seed" in html and "success after" in html  # captions name the episode shown
    md = (run / "report.md").read_text()
    assert "(videos/rl_push-v3_success.mp4)" in md
    assert "no example clips" not in html

    # A stage re-evaluated without a failure removes its stale failure clip.
    ex = [Example(100_000, True, 30, [np.zeros((64, 128, 3), np.uint8)] * 3)]
    save_examples({"push-v3": ex}, run, "rl")
    assert not (run / "videos" / "rl_push-v3_failure.mp4").exists()


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs /usr/bin/chromium")
def test_chromium_plays_the_clips(tmp_path):
    run = make_run_dir(tmp_path, videos=True)
    html, _ = write_report(run)
    proc = _chromium(tmp_path / "profile", "--virtual-time-budget=10000", "--dump-dom", html.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    total = re.search(r'data-videos-total="(\d+)"', proc.stdout)
    ok = re.search(r'data-videos-ok="(\d+)"', proc.stdout)
    assert total and int(total.group(1)) == 2 * 2 * len(TASKS)
    assert ok and int(ok.group(1)) == int(total.group(1)), "Chromium did not decode every clip"
