"""`z1 report RUN_DIR`: one self-contained HTML page and a markdown twin from a run directory.

Reads what the pipeline leaves in the run directory (any subset of it):
    run.json, timings.json, eval_sft.json, eval_rl.json, sft_metrics.jsonl, rl_metrics.jsonl,
    filmstrips/<stage>_<task>.png, videos/*.mp4
and writes
    report.html   CSS inline, every image a base64 PNG data URI, no external requests
    report.md     the same sections; images are files in report_assets/
Every section states what is missing instead of failing, so a run that stopped after SFT (or a
half-written metrics file from a run still going) still gets a report. Both pages are rendered in
memory first and then written atomically (temporary file + rename).
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from z1.fsutil import write_text_atomic
from z1.train.metrics import read_metrics

ASSETS_DIR = "report_assets"
STAGES = ("sft", "rl")
STAGE_NAMES = {"sft": "SFT", "rl": "GRPO"}
MAX_FILMSTRIP_TASKS = 6
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TIMING_NAMES = {
    "collect": "demonstrations",
    "sft": "supervised fine-tuning",
    "eval_sft": "evaluate SFT",
    "rl": "GRPO",
    "eval_rl": "evaluate GRPO",
}
# Per-iteration optimisation metrics shown in the "policy update" table, when logged.
UPDATE_KEYS = (
    "ratio/mean",
    "ratio/std",
    "ratio/abs_dev",
    "clip/frac",
    "clip_frac/high",
    "clip_frac/low",
    "clip_frac/dual",
    "approx_kl/k3",
    "loss/policy",
    "groups/signal_frac",
    "adv/frac_nonzero",
    "time/rollout",
    "time/update",
)


# ----------------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True)
class RunData:
    """Everything the report reads; a missing or unreadable file is None / empty, with a note."""

    run_dir: Path
    run: dict[str, Any] | None
    timings: dict[str, float] | None
    evals: dict[str, dict[str, Any] | None]  # stage -> EvalResult.to_json() or None
    sft_rows: list[dict[str, Any]]
    rl_rows: list[dict[str, Any]]  # merged by step, ascending
    filmstrips: dict[tuple[str, str], Path]  # (stage, task) -> png
    filmstrips_dir_exists: bool
    videos: list[Path]
    problems: list[str] = field(default_factory=list)


def _read_json(path: Path, problems: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        problems.append(f"{path.name} could not be parsed ({e}); it is treated as missing.")
        return None
    if not isinstance(data, dict):
        problems.append(
            f"{path.name} holds a {type(data).__name__}, not an object; it is treated as missing."
        )
        return None
    return data


def _read_jsonl(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    """`read_metrics`, tolerating unparsable lines (e.g. the last line of a run still writing)."""
    try:
        return [r for r in read_metrics(path) if isinstance(r, dict)]
    except (json.JSONDecodeError, UnicodeDecodeError):
        pass
    rows: list[dict[str, Any]] = []
    bad = 0
    for ln in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not ln.strip():
            continue
        try:
            row = json.loads(ln)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
    problems.append(f"{path.name}: skipped {bad} line(s) that are not valid JSON.")
    return rows


def _merge_by_step(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per step: the RL trainer logs a step's final evaluation as a second line."""
    merged: dict[int, dict[str, Any]] = {}
    for row in rows:
        step = row.get("step")
        if not isinstance(step, (int, float)):
            continue
        merged.setdefault(int(step), {}).update(row)
    return [merged[s] for s in sorted(merged)]


def _valid_eval(data: dict[str, Any] | None, name: str, problems: list[str]) -> dict[str, Any] | None:
    if data is None:
        return None
    tasks = data.get("tasks")
    if not isinstance(tasks, dict):
        problems.append(f"{name} has no 'tasks' object; it is treated as missing.")
        return None
    need = ("rate", "ci_low", "ci_high", "episodes")
    bad = [
        t for t, r in tasks.items() if not isinstance(r, dict) or not all(_is_number(r.get(k)) for k in need)
    ]
    if bad:
        problems.append(
            f"{name}: task(s) {', '.join(bad)} lack a number for one of {need}; they are left out."
        )
        data = {**data, "tasks": {t: r for t, r in tasks.items() if t not in bad}}
    return data


def load_run(run_dir: Path) -> RunData:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"run directory {run_dir} does not exist; pass the directory that `z1 demo` printed "
            "(it holds run.json, eval_sft.json, ...)"
        )
    problems: list[str] = []
    run = _read_json(run_dir / "run.json", problems)
    timings_raw = _read_json(run_dir / "timings.json", problems)
    timings = None
    if timings_raw is not None:
        timings = {k: float(v) for k, v in timings_raw.items() if _is_number(v)}
    evals = {
        s: _valid_eval(_read_json(run_dir / f"eval_{s}.json", problems), f"eval_{s}.json", problems)
        for s in STAGES
    }
    sft_path, rl_path = run_dir / "sft_metrics.jsonl", run_dir / "rl_metrics.jsonl"
    sft_rows = _merge_by_step(_read_jsonl(sft_path, problems)) if sft_path.is_file() else []
    rl_rows = _merge_by_step(_read_jsonl(rl_path, problems)) if rl_path.is_file() else []
    film_dir = run_dir / "filmstrips"
    filmstrips: dict[tuple[str, str], Path] = {}
    if film_dir.is_dir():
        for p in sorted(film_dir.glob("*.png")):
            stage, sep, task = p.stem.partition("_")
            if sep and stage in STAGES and task:
                filmstrips[(stage, task)] = p
    video_dir = run_dir / "videos"
    videos = sorted(video_dir.glob("*.mp4")) if video_dir.is_dir() else []
    return RunData(
        run_dir, run, timings, evals, sft_rows, rl_rows, filmstrips, film_dir.is_dir(), videos, problems
    )


# ----------------------------------------------------------------------------------------------------
# Small formatting helpers


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def series(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the rows that hold a finite number under `key`."""
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if _is_number(v) and _is_number(r.get("step")):
            xs.append(float(r["step"]))
            ys.append(float(v))
    return xs, ys


def fmt_pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def fmt_points(d: float | None) -> str:
    return "—" if d is None else f"{100 * d:+.1f}"


def fmt_num(v: float | None) -> str:
    if v is None:
        return "—"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if float(v).is_integer():
        return f"{int(v)}"
    return f"{v:.4g}"


def fmt_duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(round(seconds), 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _md_cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in text).strip("-") or "x"


# ----------------------------------------------------------------------------------------------------
# Rendering: each section is rendered twice (HTML, markdown) from the same facts.


@dataclass
class Images:
    """Collects images: an <img> data URI for HTML, a file in report_assets/ for markdown."""

    assets: dict[str, bytes] = field(default_factory=dict)

    def add(self, name: str, png: bytes, alt: str, css: str = "") -> tuple[str, str]:
        if not png.startswith(PNG_MAGIC):
            raise ValueError(f"image {name!r} is not a PNG (first bytes {png[:8]!r})")
        fname = f"{_slug(name)}.png"
        self.assets[fname] = png
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        cls = f' class="{css}"' if css else ""
        return (
            f'<img{cls} src="{uri}" alt="{_esc(alt)}" title="{_esc(alt)}">',
            f"![{_md_cell(alt)}]({ASSETS_DIR}/{fname})",
        )


@dataclass(frozen=True)
class Section:
    anchor: str
    title: str
    html: str
    md: str


def _note(text: str) -> tuple[str, str]:
    return f'<p class="note">{_esc(text)}</p>', f"> {text}"


def _html_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], table_id: str = "", num_from: int = 1
) -> str:
    """Cells are pre-escaped HTML; columns from `num_from` on are right-aligned numbers."""
    tid = f' id="{table_id}"' if table_id else ""
    head = "".join(f"<th{' class=num' if i >= num_from else ''}>{h}</th>" for i, h in enumerate(header))
    body = []
    for row in rows:
        cells = "".join(f"<td{' class=num' if i >= num_from else ''}>{c}</td>" for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table{tid}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def task_order(data: RunData) -> list[str]:
    """Tasks in evaluation order (SFT first), then any that only appear in RL metrics or filmstrips."""
    tasks: list[str] = []
    for s in STAGES:
        ev = data.evals[s]
        for t in ev["tasks"] if ev else ():
            if t not in tasks:
                tasks.append(t)
    for r in data.rl_rows:
        for k in r:
            for prefix in ("eval_success/", "train_success/"):
                if k.startswith(prefix) and k[len(prefix) :] not in tasks:
                    tasks.append(k[len(prefix) :])
    for _, t in data.filmstrips:
        if t not in tasks:
            tasks.append(t)
    return tasks


def _rate(data: RunData, stage: str, task: str) -> dict[str, Any] | None:
    ev = data.evals[stage]
    return ev["tasks"].get(task) if ev else None


def _average(data: RunData, stage: str) -> float | None:
    ev = data.evals[stage]
    if not ev:
        return None
    if _is_number(ev.get("average")):
        return float(ev["average"])
    rates = [float(r["rate"]) for r in ev["tasks"].values()]
    return sum(rates) / len(rates) if rates else None


def _last(rows: Sequence[dict[str, Any]], key: str) -> float | None:
    _, ys = series(rows, key)
    return ys[-1] if ys else None


def _summary(data: RunData) -> Section:
    sft, rl = _average(data, "sft"), _average(data, "rl")
    n_tasks = len(task_order(data))
    parts: list[str] = []
    if sft is not None and rl is not None:
        parts.append(
            f"Over {n_tasks} task{'s' * (n_tasks != 1)}, the SFT policy succeeds in {fmt_pct(sft)} of "
            f"evaluation episodes on average and the GRPO policy in {fmt_pct(rl)}: "
            f"{fmt_points(rl - sft)} points."
        )
    elif sft is not None:
        parts.append(
            f"Over {n_tasks} task{'s' * (n_tasks != 1)}, the SFT policy succeeds in {fmt_pct(sft)} of "
            "evaluation episodes on average. There is no GRPO evaluation (eval_rl.json is missing), "
            "so no before/after comparison."
        )
    elif rl is not None:
        parts.append(
            f"The GRPO policy succeeds in {fmt_pct(rl)} of evaluation episodes on average; the SFT "
            "evaluation (eval_sft.json) is missing, so no before/after comparison."
        )
    else:
        parts.append("No evaluation results were found (eval_sft.json and eval_rl.json are both missing).")
    env, flat = _last(data.rl_rows, "env_steps"), _last(data.rl_rows, "env_steps_flat_equiv")
    if env is not None:
        s = f"GRPO training used {fmt_num(env)} environment steps"
        if flat and flat > 0:
            saved = 100 * (1 - env / flat)
            s += f" ({fmt_num(flat)} for flat rollouts of the same leaves: {saved:.0f}% saved)"
        parts.append(s + ".")
    eval_steps = [
        int(data.evals[s]["env_steps"]) for s in STAGES if data.evals[s] and "env_steps" in data.evals[s]
    ]
    if eval_steps:
        parts.append(f"Evaluation used {fmt_num(sum(eval_steps))} more.")
    if data.timings:
        parts.append(f"Total wall time {fmt_duration(sum(data.timings.values()))}.")
    else:
        parts.append("Wall time is unknown (timings.json is missing).")
    text = " ".join(parts)

    tiles = [
        ("SFT success", fmt_pct(sft)),
        ("GRPO success", fmt_pct(rl)),
        ("change", fmt_points(rl - sft) + " pts" if sft is not None and rl is not None else "—"),
        ("GRPO env steps", fmt_num(env)),
        ("wall time", fmt_duration(sum(data.timings.values())) if data.timings else "—"),
    ]
    delta_cls = ""
    if sft is not None and rl is not None:
        delta_cls = " up" if rl > sft else (" down" if rl < sft else "")
    tile_html = "".join(
        f'<div class="tile{delta_cls if label == "change" else ""}"><div class="v">{_esc(v)}</div>'
        f'<div class="k">{_esc(label)}</div></div>'
        for label, v in tiles
    )
    h = f'<div class="tiles">{tile_html}</div><p class="lead" id="summary">{_esc(text)}</p>'
    if data.problems:
        h += '<ul class="problems">' + "".join(f"<li>{_esc(p)}</li>" for p in data.problems) + "</ul>"
    md = text + "".join(f"\n\n> {p}" for p in data.problems)
    return Section("summary", "Summary", h, md)


def _ci_bar(r: dict[str, Any] | None) -> str:
    if r is None:
        return ""
    lo, hi, p = (100 * float(r[k]) for k in ("ci_low", "ci_high", "rate"))
    return (
        f'<span class="ci" aria-hidden="true"><span class="ci-r" style="left:{lo:.1f}%;width:{hi - lo:.1f}%">'
        f'</span><span class="ci-p" style="left:{p:.1f}%"></span></span>'
    )


def _success_table(data: RunData) -> Section:
    tasks = [t for t in task_order(data) if _rate(data, "sft", t) or _rate(data, "rl", t)]
    if not tasks:
        h, m = _note("No per-task evaluation results: eval_sft.json and eval_rl.json are missing.")
        return Section("success", "Success per task", h, m)
    header = [
        "task",
        "SFT",
        "SFT 95% CI",
        "GRPO",
        "GRPO 95% CI",
        "Δ points",
        "episodes",
        "success length SFT → GRPO",
    ]
    h_rows, m_rows = [], []
    for t in tasks:
        s, r = _rate(data, "sft", t), _rate(data, "rl", t)
        d = float(r["rate"]) - float(s["rate"]) if s and r else None
        cells = []
        for x in (s, r):
            rate = fmt_pct(float(x["rate"])) if x else "—"
            ci = f"[{100 * float(x['ci_low']):.1f}, {100 * float(x['ci_high']):.1f}]" if x else "—"
            cells.append((rate, ci, x))
        eps = " / ".join(str(int(x["episodes"])) for x in (s, r) if x)
        lens = " → ".join(
            f"{float(x['mean_success_length']):.1f}"
            if x and _is_number(x.get("mean_success_length"))
            else "—"
            for x in (s, r)
        )
        dcls = "up" if d is not None and d > 0 else ("down" if d is not None and d < 0 else "")
        h_rows.append(
            [
                f"<code>{_esc(t)}</code>",
                _esc(cells[0][0]),
                _esc(cells[0][1]) + _ci_bar(cells[0][2]),
                _esc(cells[1][0]),
                _esc(cells[1][1]) + _ci_bar(cells[1][2]),
                f'<span class="delta {dcls}">{_esc(fmt_points(d))}</span>',
                _esc(eps),
                _esc(lens),
            ]
        )
        m_rows.append(
            [f"`{t}`", cells[0][0], cells[0][1], cells[1][0], cells[1][1], fmt_points(d), eps, lens]
        )
    sft, rl = _average(data, "sft"), _average(data, "rl")
    d_avg = rl - sft if sft is not None and rl is not None else None
    avg = ["average", fmt_pct(sft), "", fmt_pct(rl), "", fmt_points(d_avg), "", ""]
    h_rows.append([f"<strong>{_esc(c)}</strong>" if c else "" for c in avg])
    m_rows.append([f"**{c}**" if c else "" for c in avg])
    h = _html_table(header, h_rows, "success-table")
    m = _md_table(header, m_rows)
    expl = (
        "Success rate of the deterministic (ODE) policy at fixed evaluation seeds, with Wilson 95% "
        "intervals; success length is the mean episode length of successful episodes (shorter is better)."
    )
    missing = [f"eval_{s}.json" for s in STAGES if data.evals[s] is None]
    if missing:
        expl += f" Missing: {', '.join(missing)}."
    return Section(
        "success", "Success per task", f'<p class="caption">{_esc(expl)}</p>' + h, f"{expl}\n\n{m}"
    )


def _curve_sections(data: RunData, images: Images) -> Section:
    try:
        import matplotlib  # noqa: F401

        from z1 import report_plots as rp
    except ImportError:
        h, m = _note("matplotlib is not installed, so there are no curves: pip install 'z1[report]'.")
        return Section("curves", "Learning curves", h, m)
    tasks = task_order(data)
    color = {t: rp.color_for(i) for i, t in enumerate(tasks)}
    figs: list[tuple[str, Callable[[], bytes] | None, str]] = []  # (title, render or None, why missing)
    rl, sft_rows = data.rl_rows, data.sft_rows

    def per_task(prefix: str) -> list[rp.Series]:
        out = []
        for t in tasks:
            xs, ys = series(rl, f"{prefix}/{t}")
            if xs:
                out.append(rp.Series(t, xs, ys, color[t]))
        return out

    # Eval success: GRPO per iteration, against the SFT policy's evaluation.
    ex, ey = series(rl, "eval_success_avg")
    sft_avg, rl_avg = _average(data, "sft"), _average(data, "rl")
    eval_series = per_task("eval_success")
    if ex:
        eval_series.append(rp.Series("GRPO average", ex, ey, rp.INK, emphasis=True, marker="o"))
    if rl_avg is not None:
        last_x = max((float(r["step"]) for r in rl if _is_number(r.get("step"))), default=0.0)
        eval_series.append(rp.Series("GRPO final eval", [last_x], [rl_avg], "#D55E00", marker="*"))
    hl = [rp.HLine("SFT eval", sft_avg)] if sft_avg is not None else []
    if ex or rl_avg is not None:
        figs.append(
            (
                "Eval success (ODE)",
                lambda: rp.line_plot(
                    "Eval success (ODE)", "GRPO iteration", "success", eval_series, hl, percent=True
                ),
                "",
            )
        )
    else:
        figs.append(("Eval success (ODE)", None, "no eval_success in rl_metrics.jsonl and no eval_rl.json"))

    tx, ty = series(rl, "train_success_avg")
    train_series = per_task("train_success")
    if tx:
        train_series.append(rp.Series("average", tx, ty, rp.INK, emphasis=True))
        figs.append(
            (
                "Train success (SDE rollouts)",
                lambda: rp.line_plot(
                    "Train success (SDE rollouts)",
                    "GRPO iteration",
                    "success",
                    train_series,
                    hl,
                    percent=True,
                ),
                "",
            )
        )
    else:
        figs.append(("Train success (SDE rollouts)", None, "no train_success_avg in rl_metrics.jsonl"))

    group_keys = [
        ("mixed", "groups/mixed", "#009E73"),
        ("all success", "groups/all_success", "#56B4E9"),
        ("all fail", "groups/all_fail", "#D55E00"),
    ]
    g_rows = [r for r in rl if all(_is_number(r.get(k)) for _, k, _ in group_keys)]
    if g_rows:
        gx = [float(r["step"]) for r in g_rows]
        layers = [(label, [float(r[k]) for r in g_rows], c) for label, k, c in group_keys]
        figs.append(
            ("Group outcomes", lambda: rp.stack_plot("Group outcomes", "GRPO iteration", gx, layers), "")
        )
    else:
        figs.append(("Group outcomes", None, "no groups/{all_success,all_fail,mixed} in rl_metrics.jsonl"))

    sx, sy = series(rl, "env_steps")
    fx, fy = series(rl, "env_steps_flat_equiv")
    if sx:
        env_series = [rp.Series("tree rollouts (used)", sx, sy, "#0072B2", emphasis=True)]
        if fx:
            env_series.append(rp.Series("flat equivalent", fx, fy, rp.MUTED, dashed=True))
        figs.append(
            (
                "Cumulative env steps",
                lambda: rp.line_plot("Cumulative env steps", "GRPO iteration", "env steps", env_series),
                "",
            )
        )
    else:
        figs.append(("Cumulative env steps", None, "no env_steps in rl_metrics.jsonl"))

    lx, ly = series(sft_rows, "loss")
    if lx:
        log_y = min(ly) > 0 and max(ly) / min(ly) > 10  # log axis only when the loss spans a decade
        figs.append(
            (
                "SFT loss",
                lambda: rp.line_plot(
                    "SFT loss (flow matching)",
                    "SFT step",
                    "loss",
                    [rp.Series("loss", lx, ly, "#0072B2", emphasis=True)],
                    log_y=log_y,
                ),
                "",
            )
        )
    else:
        figs.append(("SFT loss", None, "no sft_metrics.jsonl (or no loss in it)"))

    sex, sey = series(sft_rows, "eval_success_avg")
    if sex:
        sft_eval = [rp.Series("average", sex, sey, rp.INK, emphasis=True, marker="o")]
        for t in tasks:
            xs, ys = series(sft_rows, f"eval_success/{t}")
            if xs:
                sft_eval.append(rp.Series(t, xs, ys, color[t]))
        figs.append(
            (
                "Eval success during SFT",
                lambda: rp.line_plot(
                    "Eval success during SFT", "SFT step", "success", sft_eval, percent=True
                ),
                "",
            )
        )

    h_figs, m_figs, missing = [], [], []
    for title, render, why in figs:
        if render is None:
            missing.append(f"{title}: {why}")
            continue
        tag, ref = images.add(f"curve-{title.lower()}", render(), title)
        h_figs.append(f"<figure>{tag}</figure>")
        m_figs.append(ref)
    h = f'<div class="grid">{"".join(h_figs)}</div>' if h_figs else ""
    m = "\n\n".join(m_figs)
    if missing:
        h += '<ul class="missing">' + "".join(f"<li>{_esc(x)}</li>" for x in missing) + "</ul>"
        m += ("\n\n" if m else "") + "\n".join(f"- not shown: {x}" for x in missing)
    return Section("curves", "Learning curves", h, m)


def _stats_rows(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[list[str]]:
    out = []
    for k in keys:
        _, ys = series(rows, k)
        if ys:
            out.append([k, fmt_num(ys[-1]), fmt_num(sum(ys) / len(ys)), fmt_num(min(ys)), fmt_num(max(ys))])
    return out


def _tree_section(data: RunData) -> Section:
    if not data.rl_rows:
        h, m = _note("No GRPO metrics (rl_metrics.jsonl is missing or empty).")
        return Section("tree", "Tree rollouts and policy update", h, m)
    tree_keys = sorted({k for r in data.rl_rows for k in r if k.startswith("tree/")})
    header = ["metric", "latest", "mean", "min", "max"]
    tree_rows = _stats_rows(data.rl_rows, tree_keys)
    env, flat = _last(data.rl_rows, "env_steps"), _last(data.rl_rows, "env_steps_flat_equiv")
    if env is not None and flat:
        tree_rows.append(["env steps / flat equivalent (cumulative)", f"{env / flat:.3f}", "", "", ""])
    upd_rows = _stats_rows(data.rl_rows, UPDATE_KEYS)
    n_iter = len(series(data.rl_rows, "train_success_avg")[0])
    h, m = f'<p class="caption">Over {n_iter} GRPO iterations.</p>', f"Over {n_iter} GRPO iterations."
    for title, rows, empty in (
        ("Tree statistics", tree_rows, "No tree/* metrics were logged (flat rollouts?)."),
        ("Policy update", upd_rows, "No policy-update metrics were logged."),
    ):
        if rows:
            h += f"<h3>{title}</h3>" + _html_table(
                header,
                [[f"<code>{_esc(r[0])}</code>", *map(_esc, r[1:])] for r in rows],
                _slug(title.lower()),
            )
            m += f"\n\n### {title}\n\n" + _md_table(header, [[f"`{r[0]}`", *r[1:]] for r in rows])
        else:
            nh, nm = _note(empty)
            h += f"<h3>{title}</h3>{nh}"
            m += f"\n\n### {title}\n\n{nm}"
    return Section("tree", "Tree rollouts and policy update", h, m)


def _episode_caption(data: RunData, stage: str, task: str) -> str:
    r = _rate(data, stage, task)
    name = STAGE_NAMES[stage]
    if not r or not r.get("success_flags") or not r.get("lengths"):
        return name
    ok, n = bool(r["success_flags"][0]), int(r["lengths"][0])
    return f"{name} · first eval episode · " + (f"success after {n} steps" if ok else f"failure ({n} steps)")


def _filmstrip_section(data: RunData, images: Images) -> Section:
    title = "Before / after"
    if not data.filmstrips_dir_exists:
        h, m = _note("No filmstrips/ directory in this run, so there are no rollout pictures.")
        return Section("filmstrips", title, h, m)
    tasks = [t for t in task_order(data) if any((s, t) in data.filmstrips for s in STAGES)]
    if not tasks:
        h, m = _note("filmstrips/ holds no <stage>_<task>.png files.")
        return Section("filmstrips", title, h, m)
    if data.evals["sft"] and data.evals["rl"]:  # most improved first

        def gain(t: str) -> float:
            s, r = _rate(data, "sft", t), _rate(data, "rl", t)
            return float(r["rate"]) - float(s["rate"]) if s and r else -math.inf

        tasks = sorted(tasks, key=gain, reverse=True)
    shown, rest = tasks[:MAX_FILMSTRIP_TASKS], tasks[MAX_FILMSTRIP_TASKS:]
    h_parts, m_parts = [], []
    for t in shown:
        h_parts.append(f'<div class="film"><h3><code>{_esc(t)}</code></h3><div class="pair">')
        m_parts.append(f"### `{t}`")
        for s in STAGES:
            path = data.filmstrips.get((s, t))
            cap = _episode_caption(data, s, t)
            if path is None:
                h_parts.append(f'<p class="note">{_esc(STAGE_NAMES[s])}: no filmstrip.</p>')
                m_parts.append(f"{STAGE_NAMES[s]}: no filmstrip.")
                continue
            png = path.read_bytes()
            if not png.startswith(PNG_MAGIC):
                h_parts.append(f'<p class="note">{_esc(path.name)} is not a PNG file.</p>')
                m_parts.append(f"{path.name} is not a PNG file.")
                continue
            tag, ref = images.add(f"filmstrip-{s}-{t}", png, f"{cap} ({t})", css="strip")
            h_parts.append(f"<figure>{tag}<figcaption>{_esc(cap)}</figcaption></figure>")
            m_parts.append(f"{cap}\n\n{ref}")
        h_parts.append("</div></div>")
    h = '<p class="caption">Frames evenly spaced over the first evaluation episode of each policy.</p>'
    h += "".join(h_parts)
    m = "\n\n".join(m_parts)
    if rest:
        more = f"{len(rest)} more task(s) in filmstrips/: {', '.join(rest)}."
        h += f'<p class="note">{_esc(more)}</p>'
        m += f"\n\n{more}"
    if data.videos:
        rel = [v.relative_to(data.run_dir).as_posix() for v in data.videos]
        h += "<p>Videos: " + ", ".join(f'<a href="{_esc(r)}">{_esc(r)}</a>' for r in rel) + "</p>"
        m += "\n\nVideos: " + ", ".join(f"[{r}]({r})" for r in rel)
    return Section("filmstrips", title, h, m)


def _timings_section(data: RunData) -> Section:
    if not data.timings:
        h, m = _note("timings.json is missing, so wall time per stage is unknown.")
        return Section("timings", "Wall time", h, m)
    total = sum(data.timings.values())
    header = ["stage", "wall time", "seconds", "share"]
    h_rows, m_rows = [], []
    for k, v in data.timings.items():
        share = v / total if total > 0 else 0.0
        name = TIMING_NAMES.get(k, k)
        bar = f'<span class="bar"><span style="width:{100 * share:.1f}%"></span></span>'
        h_rows.append([_esc(name), _esc(fmt_duration(v)), f"{v:.1f}", f"{100 * share:.0f}% {bar}"])
        m_rows.append([name, fmt_duration(v), f"{v:.1f}", f"{100 * share:.0f}%"])
    h_rows.append(
        ["<strong>total</strong>", f"<strong>{_esc(fmt_duration(total))}</strong>", f"{total:.1f}", ""]
    )
    m_rows.append(["**total**", f"**{fmt_duration(total)}**", f"{total:.1f}", ""])
    return Section(
        "timings", "Wall time", _html_table(header, h_rows, "timings-table"), _md_table(header, m_rows)
    )


def _config_section(data: RunData) -> Section:
    if data.run is None:
        h, m = _note("run.json is missing, so the configuration is unknown.")
        return Section("config", "Configuration", h, m)
    facts = [
        (k, v) for k, v in data.run.items() if k not in ("config", "machine") and not isinstance(v, dict)
    ]
    machine = data.run.get("machine")
    if isinstance(machine, dict):
        facts += [(f"machine.{k}", v) for k, v in machine.items()]
    value = {k: json.dumps(v) if isinstance(v, list) else str(v) for k, v in facts}
    h = _html_table(
        ["field", "value"], [[_esc(k), f"<code>{_esc(value[k])}</code>"] for k, _ in facts], num_from=2
    )
    m = _md_table(["field", "value"], [[k, f"`{value[k]}`"] for k, _ in facts]) if facts else ""
    config = {k: v for k, v in data.run.items() if isinstance(v, dict) and k != "machine"}
    text = json.dumps(config.get("config", config) if list(config) == ["config"] else config, indent=2)
    h += f"<details><summary>config used (JSON)</summary><pre>{_esc(text)}</pre></details>"
    m += f"\n\n<details><summary>config used (JSON)</summary>\n\n```json\n{text}\n```\n\n</details>"
    return Section("config", "Configuration", h, m)


CSS = """
:root { --ink:#1f2933; --muted:#616e7c; --line:#e4e7eb; --bg:#f7f8fa; --accent:#0072B2;
        --up:#1b7f4c; --down:#c0392b; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
       font:15px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif; }
main { max-width:1180px; margin:0 auto; padding:28px 28px 60px; }
header h1 { font-size:26px; margin:0 0 2px; letter-spacing:-.01em; }
header .sub { color:var(--muted); margin:0 0 18px; }
nav { font-size:13px; margin:0 0 18px; }
nav a { color:var(--accent); text-decoration:none; margin-right:14px; }
section { background:#fff; border:1px solid var(--line); border-radius:10px; padding:18px 22px;
          margin:0 0 18px; }
h2 { font-size:18px; margin:0 0 10px; }
h3 { font-size:14px; margin:16px 0 6px; color:var(--muted); font-weight:600; }
code { font:12.5px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; }
.tiles { display:grid; grid-template-columns:repeat(auto-fit,minmax(150px,1fr)); gap:10px; margin:0 0 14px; }
.tile { border:1px solid var(--line); border-radius:8px; padding:10px 12px; background:#fbfcfd; }
.tile .v { font-size:22px; font-weight:650; font-variant-numeric:tabular-nums; }
.tile .k { font-size:12px; color:var(--muted); text-transform:uppercase; letter-spacing:.04em; }
.tile.up .v { color:var(--up); } .tile.down .v { color:var(--down); }
.lead { margin:0; font-size:15.5px; }
.caption { color:var(--muted); font-size:13px; margin:0 0 10px; }
.note { color:#8a5a00; background:#fff8e6; border-left:3px solid #f0b429; padding:6px 10px; margin:6px 0;
        border-radius:4px; }
ul.problems li, ul.missing li { color:#8a5a00; font-size:13px; }
table { border-collapse:collapse; width:auto; min-width:55%; font-size:13.5px; }
#success-table { width:100%; }
th, td { padding:6px 10px; border-bottom:1px solid var(--line); text-align:left; vertical-align:middle; }
thead th { background:#f1f3f5; font-weight:600; font-size:12.5px; color:var(--muted); white-space:nowrap; }
tbody tr:nth-child(even) { background:#fafbfc; }
tbody tr:last-child td { border-bottom:none; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
.delta.up { color:var(--up); font-weight:600; } .delta.down { color:var(--down); font-weight:600; }
.ci { display:inline-block; position:relative; width:64px; height:8px; margin-left:8px; background:#eef0f2;
      border-radius:4px; vertical-align:middle; }
.ci-r { position:absolute; top:0; height:8px; background:#9ecae1; border-radius:4px; }
.ci-p { position:absolute; top:-2px; width:2px; height:12px; margin-left:-1px; background:var(--ink); }
.bar { display:inline-block; width:90px; height:8px; background:#eef0f2; border-radius:4px;
       margin-left:8px; vertical-align:middle; overflow:hidden; }
.bar span { display:block; height:8px; background:var(--accent); }
.grid { display:grid; grid-template-columns:repeat(auto-fit,minmax(420px,1fr)); gap:14px; }
figure { margin:0; }
.grid img { width:100%; height:auto; border:1px solid var(--line); border-radius:6px; }
.film { margin:0 0 10px; }
.pair { display:grid; grid-template-columns:repeat(auto-fit,minmax(360px,1fr)); gap:12px; align-items:start; }
img.strip { width:100%; height:auto; image-rendering:pixelated; border-radius:4px; display:block; }
figcaption { font-size:12.5px; color:var(--muted); margin:3px 0 8px; }
details summary { cursor:pointer; color:var(--accent); margin:12px 0 6px; }
pre { background:#f5f7fa; border:1px solid var(--line); border-radius:6px; padding:12px; overflow:auto;
      font:12px/1.45 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; max-height:560px; }
footer { color:var(--muted); font-size:12px; text-align:center; }
"""

# Marks the page once every image has decoded: <body data-images-total data-images-ok>. Lets a headless
# browser (tests/test_report_browser.py) check that the embedded images render.
IMAGE_CHECK_JS = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images-total", String(imgs.length));
  document.body.setAttribute("data-images-ok", String(ok));
});
"""


def _title(data: RunData) -> tuple[str, str]:
    preset = data.run.get("preset") if data.run else None
    title = f"z1 run report — {preset}" if preset else "z1 run report"
    bits = [data.run_dir.name]
    if data.run and data.run.get("started"):
        bits.append(f"started {data.run['started']}")
    if data.run and data.run.get("command"):
        bits.append(f"$ {data.run['command']}")
    return title, " · ".join(bits)


def render(data: RunData) -> tuple[str, str, dict[str, bytes]]:
    """(html, markdown, assets for report_assets/) of a loaded run."""
    images = Images()
    sections = [
        _summary(data),
        _success_table(data),
        _curve_sections(data, images),
        _tree_section(data),
        _filmstrip_section(data, images),
        _timings_section(data),
        _config_section(data),
    ]
    title, sub = _title(data)
    nav = "".join(f'<a href="#{s.anchor}">{_esc(s.title)}</a>' for s in sections)
    body = "".join(
        f'<section id="sec-{s.anchor}"><h2 id="{s.anchor}">{_esc(s.title)}</h2>{s.html}</section>'
        for s in sections
    )
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{CSS}</style><script>{IMAGE_CHECK_JS}</script></head>"
        f'<body><main><header><h1>{_esc(title)}</h1><p class="sub">{_esc(sub)}</p></header>'
        f"<nav>{nav}</nav>{body}<footer>written by <code>z1 report</code></footer></main></body></html>\n"
    )
    md = f"# {title}\n\n_{sub}_\n\n" + "\n\n".join(f"## {s.title}\n\n{s.md}" for s in sections) + "\n"
    return page, md, images.assets


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_write_location(run_dir: Path) -> None:
    """Reports are written only into run directories (files z1 writes there, `fsutil.RUN_MARKERS`, or an
    earlier report) or an empty directory, never into an arbitrary one."""
    from z1.errors import RunDirError
    from z1.fsutil import is_run_dir

    if not run_dir.is_dir() or is_run_dir(run_dir) or not any(run_dir.iterdir()):
        return  # a missing directory is load_run's error
    if any((run_dir / n).exists() for n in ("report.html", "report.md", "filmstrips", ASSETS_DIR)):
        return
    names = sorted(p.name for p in run_dir.iterdir())[:4]
    raise RunDirError(
        f"{run_dir} is not a z1 run directory (none of run.json, sft_metrics.jsonl, rl_metrics.jsonl, "
        f"eval_*.json, sft_ckpt, rl_ckpt; it holds {', '.join(names)}{', ...' if len(names) == 4 else ''}"
        "), so no report is written into it; pass the directory that `z1 demo`, `z1 sft --out` or "
        "`z1 rl --out` wrote"
    )


def write_report(run_dir: Path) -> tuple[Path, Path]:
    """Write `report.html` and `report.md` (+ `report_assets/`) into `run_dir`; returns both paths.

    Everything is rendered before the first write; each file is replaced atomically, and assets left
    from an earlier report that this one no longer uses are removed.
    """
    run_dir = Path(run_dir)
    _check_write_location(run_dir)
    page, md, assets = render(load_run(run_dir))
    asset_dir = run_dir / ASSETS_DIR
    if assets:
        asset_dir.mkdir(exist_ok=True)
        for name, png in assets.items():
            _write_bytes_atomic(asset_dir / name, png)
    if asset_dir.is_dir():
        for old in asset_dir.glob("*.png"):
            if old.name not in assets:
                old.unlink()
    md_path = write_text_atomic(run_dir / "report.md", md)
    html_path = write_text_atomic(run_dir / "report.html", page)
    for p in (md_path, html_path):
        p.chmod(0o644)  # mkstemp creates 0600; a report is meant to be shared
    return html_path, md_path
