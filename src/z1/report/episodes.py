"""The before/after section: per task, each policy's filmstrip and its example clips (one success and one
failure where the evaluation had both), embedded so the page stays a single file."""

from __future__ import annotations

import math
from pathlib import Path

from z1.report.fmt import PNG_MAGIC, Media, Section, esc, note
from z1.report.load import OUTCOMES, STAGE_NAMES, STAGES, RunData, examples, rate, task_order

MAX_FILMSTRIP_TASKS = 6
MAX_EMBED_VIDEO_BYTES = 1_500_000  # a larger clip is linked instead (the page stays loadable)
MP4_BRAND = b"ftyp"  # bytes 4..8 of every ISO-BMFF (mp4) file


def _example_text(ex: dict, episodes_label: str = "") -> str:
    ok, n, seed = bool(ex.get("success")), ex.get("length"), ex.get("seed")
    what = f"success after {n} steps" if ok else f"failure ({n} steps)"
    return f"{episodes_label}seed {seed} · {what}"


def filmstrip_caption(data: RunData, stage: str, task: str) -> str:
    """Which episode the filmstrip shows: the first recorded example, else the first eval episode."""
    name = STAGE_NAMES[stage]
    ex = examples(data, stage, task)
    if ex:
        return f"{name} · " + _example_text(ex[0])
    r = rate(data, stage, task)
    if not r or not r.get("success_flags") or not r.get("lengths"):
        return name
    ok, n = bool(r["success_flags"][0]), int(r["lengths"][0])
    return f"{name} · first eval episode · " + (f"success after {n} steps" if ok else f"failure ({n} steps)")


def _clip_caption(data: RunData, stage: str, task: str, outcome: str) -> str:
    want = outcome == "success"
    ex = next((e for e in examples(data, stage, task) if bool(e.get("success")) == want), None)
    return f"{STAGE_NAMES[stage]} · " + (_example_text(ex) if ex else outcome)


def _clip(data: RunData, path: Path, label: str) -> tuple[str, str]:
    rel = path.relative_to(data.run_dir).as_posix()
    mp4 = path.read_bytes()
    if mp4[4:8] != MP4_BRAND:
        return f'<p class="note">{esc(path.name)} is not an mp4 file.</p>', f"{path.name} is not an mp4 file."
    if len(mp4) > MAX_EMBED_VIDEO_BYTES:
        kb = len(mp4) // 1000
        return f'<p><a href="{esc(rel)}">{esc(label)} ({kb} KB, not embedded)</a></p>', f"[{label}]({rel})"
    return Media.video(mp4, rel, label)


def _stage_block(data: RunData, media: Media, stage: str, task: str) -> tuple[str, list[str]]:
    name = STAGE_NAMES[stage]
    h, m = f'<div class="stage"><h4>{esc(name)}</h4>', []
    path = data.filmstrips.get((stage, task))
    cap = filmstrip_caption(data, stage, task)
    if path is None:
        h += f'<p class="note">{esc(name)}: no filmstrip.</p>'
        m.append(f"{name}: no filmstrip.")
    else:
        png = path.read_bytes()
        if png.startswith(PNG_MAGIC):
            tag, ref = media.image(f"filmstrip-{stage}-{task}", png, f"{cap} ({task})", css="strip")
            h += f"<figure>{tag}<figcaption>{esc(cap)}</figcaption></figure>"
            m.append(f"{cap}\n\n{ref}")
        else:
            h += f'<p class="note">{esc(path.name)} is not a PNG file.</p>'
            m.append(f"{path.name} is not a PNG file.")
    clips = [(o, data.clips[(stage, task, o)]) for o in OUTCOMES if (stage, task, o) in data.clips]
    if clips:
        h += '<div class="clips">'
        for outcome, p in clips:
            label = _clip_caption(data, stage, task, outcome)
            tag, ref = _clip(data, p, label)
            h += f'<figure class="{outcome}">{tag}<figcaption>{esc(label)}</figcaption></figure>'
            m.append(ref)
        h += "</div>"
    return h + "</div>", m


def filmstrip_section(data: RunData, media: Media) -> Section:
    title = "Before / after"
    if not data.filmstrips_dir_exists and not data.clips:
        why = "No filmstrips/ or videos/ in this run, so there are no rollout pictures."
        if data.kind in ("rl", "sft"):
            why += f" `z1 {data.kind}` records none; `z1 demo` (or `z1 eval --videos N`) does."
        h, m = note(why)
        return Section("filmstrips", title, h, m)
    tasks = [
        t
        for t in task_order(data)
        if any((s, t) in data.filmstrips or any((s, t, o) in data.clips for o in OUTCOMES) for s in STAGES)
    ]
    if not tasks:
        h, m = note("filmstrips/ holds no <stage>_<task>.png files and videos/ no example clips.")
        return Section("filmstrips", title, h, m)
    if data.evals["sft"] and data.evals["rl"]:  # most improved first

        def gain(t: str) -> float:
            s, r = rate(data, "sft", t), rate(data, "rl", t)
            return float(r["rate"]) - float(s["rate"]) if s and r else -math.inf

        tasks = sorted(tasks, key=gain, reverse=True)
    shown, rest = tasks[:MAX_FILMSTRIP_TASKS], tasks[MAX_FILMSTRIP_TASKS:]
    h_parts, m_parts = [], []
    for t in shown:
        h_parts.append(f'<div class="film"><h3><code>{esc(t)}</code></h3><div class="pair">')
        m_parts.append(f"### `{t}`")
        for s in STAGES:
            bh, bm = _stage_block(data, media, s, t)
            h_parts.append(bh)
            m_parts.extend(bm)
        h_parts.append("</div></div>")
    intro = (
        "Frames evenly spaced over one evaluation episode of each policy, and clips of a successful and a "
        "failed episode (the lowest-seed ones) where the evaluation had both."
    )
    if not data.clips:
        intro += " This run has no example clips (videos/<stage>_<task>_<outcome>.mp4)."
    h = f'<p class="caption">{esc(intro)}</p>' + "".join(h_parts)
    m = intro + "\n\n" + "\n\n".join(m_parts)
    if rest:
        more = f"{len(rest)} more task(s) in filmstrips/: {', '.join(rest)}."
        h += f'<p class="note">{esc(more)}</p>'
        m += f"\n\n{more}"
    if data.videos:
        rel = [v.relative_to(data.run_dir).as_posix() for v in data.videos]
        h += "<p>Other videos: " + ", ".join(f'<a href="{esc(r)}">{esc(r)}</a>' for r in rel) + "</p>"
        m += "\n\nOther videos: " + ", ".join(f"[{r}]({r})" for r in rel)
    return Section("filmstrips", title, h, m)
