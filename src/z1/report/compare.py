"""`z1 report DIR1 DIR2 ... --out FILE.html`: several runs side by side on one page.

Each run is represented by its last evaluation (GRPO when it has one, else SFT). The page shows, per task,
each run's success with its Wilson 95% interval and the change against the first run (the baseline) with
a 95% interval paired by evaluation seed when both runs evaluated the same seeds; and the learning curves
of every run over environment steps on one shared axis, so runs of different rollout cost compare at
equal sample budgets. The markdown twin is FILE with .md, its images in FILE's stem + "_assets/".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from z1.report.curves import NO_MATPLOTLIB, Figure, plots_module, render_figures
from z1.report.fmt import (
    Media,
    Section,
    ci_bar,
    delta_class,
    esc,
    fmt_interval,
    fmt_num,
    fmt_pct,
    fmt_points,
    html_table,
    is_number,
    last,
    md_table,
    note,
    series,
)
from z1.report.html import page, write_pages
from z1.report.load import KIND_NAMES, STAGE_NAMES, RunData, load_run, task_order
from z1.report.run import task_names
from z1.report.sections import quick_note, task_rate
from z1.report.stats import Estimate, mean_estimate, task_delta


@dataclass(frozen=True)
class Entry:
    """One run of the comparison: its data, a unique label and the stage whose evaluation stands for it."""

    label: str
    data: RunData
    stage: str | None  # "rl" | "sft" | None (no evaluation)

    def tasks(self) -> dict[str, dict[str, Any]]:
        ev = self.data.evals[self.stage] if self.stage else None
        return ev["tasks"] if ev else {}


def _labels(dirs: Sequence[Path]) -> list[str]:
    """Directory names, or enough of their paths to tell them apart."""
    for depth in range(1, 6):
        labels = ["/".join(Path(d).resolve().parts[-depth:]) for d in dirs]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{i + 1}: {Path(d).name}" for i, d in enumerate(dirs)]


def entries(dirs: Sequence[Path]) -> list[Entry]:
    out = []
    for label, d in zip(_labels(dirs), dirs):
        data = load_run(d)
        stage = "rl" if data.evals["rl"] else ("sft" if data.evals["sft"] else None)
        out.append(Entry(label, data, stage))
    return out


def _runs_section(runs: list[Entry]) -> Section:
    header = ["#", "run", "kind", "evaluation", "tasks", "episodes / task", "GRPO env steps"]
    h_rows, m_rows = [], []
    for i, e in enumerate(runs):
        eps = sorted({int(r["episodes"]) for r in e.tasks().values()})
        evaluated = f"{STAGE_NAMES[e.stage]} ({e.data.eval_files[e.stage]})" if e.stage else "none"
        row = [
            str(i + 1) + (" (baseline)" if i == 0 else ""),
            e.label,
            KIND_NAMES[e.data.kind],
            evaluated,
            str(len(e.tasks())),
            ", ".join(map(str, eps)) or "—",
            fmt_num(last(e.data.rl_rows, "env_steps")),
        ]
        h_rows.append([esc(c) for c in row])
        m_rows.append(row)
    h, m = html_table(header, h_rows, "compare-runs", num_from=4), md_table(header, m_rows)
    for i, e in enumerate(runs):
        remarks = [quick_note(e.data), *e.data.problems]
        if e.stage is None:
            remarks.append("no evaluation results (eval_*.json), so it has no column in the table.")
        for r in remarks:
            if r:
                nh, nm = note(f"Run {i + 1} ({e.label}): {r}")
                h, m = h + nh, m + "\n\n" + nm
    return Section("runs", "Runs", h, m)


def _table_section(runs: list[Entry]) -> Section:
    title = "Success per task"
    tasks: list[str] = []
    for e in runs:
        tasks += [t for t in (task_order(e.data) if e.stage else []) if t in e.tasks() and t not in tasks]
    if not tasks:
        h, m = note("None of the runs has evaluation results, so there is nothing to compare.")
        return Section("compare", title, h, m)
    base = runs[0]
    header = ["task"]
    for i, e in enumerate(runs):
        header.append(f"{i + 1}: {e.label}")
        if i > 0:
            header.append(f"Δ {i + 1} − 1 [95% CI]")
    h_rows, m_rows = [], []
    rates: list[list[Estimate]] = [[] for _ in runs]
    changes: list[list[Estimate]] = [[] for _ in runs]
    for t in tasks:
        h_row, m_row = [f"<code>{esc(t)}</code>"], [f"`{t}`"]
        for i, e in enumerate(runs):
            r = e.tasks().get(t)
            if r is None:
                h_row.append("—")
                m_row.append("—")
            else:
                est = task_rate(r)
                rates[i].append(est)
                text = f"{fmt_pct(est.value)} {fmt_interval(est.low, est.high)}"
                h_row.append(esc(text) + ci_bar(est.value, est.low, est.high))
                m_row.append(text)
            if i == 0:
                continue
            b = base.tasks().get(t)
            if b is None or r is None:
                h_row.append("—")
                m_row.append("—")
                continue
            d = task_delta(b, r)
            changes[i].append(d)
            text = f"{fmt_points(d.value)} {fmt_interval(d.low, d.high, signed=True)}" + (
                "" if d.paired else " *"
            )
            h_row.append(f'<span class="delta-ci {delta_class(d.low, d.high)}">{esc(text)}</span>')
            m_row.append(text)
        h_rows.append(h_row)
        m_rows.append(m_row)
    h_avg, m_avg = ["<strong>average</strong>"], ["**average**"]
    for i in range(len(runs)):
        cells: list[tuple[Estimate | None, bool]] = [(mean_estimate(rates[i]) if rates[i] else None, False)]
        if i > 0:
            cells.append((mean_estimate(changes[i]) if changes[i] else None, True))
        for est, is_change in cells:
            if est is None:
                h_avg.append("—")
                m_avg.append("—")
            elif is_change:
                text = f"{fmt_points(est.value)} {fmt_interval(est.low, est.high, signed=True)}"
                text += "" if est.paired else " *"
                cls = delta_class(est.low, est.high)
                h_avg.append(f'<strong class="delta-ci {cls}">{esc(text)}</strong>')
                m_avg.append(f"**{text}**")
            else:
                text = f"{fmt_pct(est.value)} {fmt_interval(est.low, est.high)}"
                h_avg.append(f"<strong>{esc(text)}</strong>")
                m_avg.append(f"**{text}**")
    h_rows.append(h_avg)
    m_rows.append(m_avg)
    expl = (
        "Success of each run's last evaluation (deterministic ODE policy) with Wilson 95% intervals, and "
        "its change against run 1 with a 95% interval paired by evaluation seed (Newcombe); the averages "
        "are over the tasks each column has, their intervals combine the per-task ones. A change is "
        "green or red only when its interval excludes 0."
    )
    if any(not d.paired for ds in changes for d in ds):
        expl += " * unpaired: no common per-episode seeds, so the rates are compared as independent samples."
    h = f'<p class="caption">{esc(expl)}</p>' + html_table(header, h_rows, "compare-table")
    return Section("compare", title, h, f"{expl}\n\n{md_table(header, m_rows)}")


def _curves_section(runs: list[Entry], media: Media) -> Section:
    rp = plots_module()
    if rp is None:
        h, m = note(NO_MATPLOTLIB)
        return Section("curves", "Learning curves over env steps", h, m)
    xmax = max((last(e.data.rl_rows, "env_steps") or 0.0 for e in runs), default=0.0)
    xlim = (0.0, xmax * 1.02) if xmax > 0 else None
    figs: list[Figure] = []
    for key, fig_title in (
        ("eval_success_avg", "Eval success (ODE)"),
        ("train_success_avg", "Train success"),
    ):
        lines = []
        for i, e in enumerate(runs):
            xs, ys = series(e.data.rl_rows, key, x="env_steps")
            if key == "eval_success_avg" and e.stage == "rl" and e.data.rl_rows:
                final = e.data.evals["rl"].get("average")
                env = last(e.data.rl_rows, "env_steps")
                if is_number(final) and env is not None and (not xs or xs[-1] != env):
                    xs, ys = [*xs, env], [*ys, float(final)]  # the final evaluation at the run's end
            if xs:
                lines.append(rp.Series(f"{i + 1}: {e.label}", xs, ys, rp.color_for(i), emphasis=i == 0))
        if not lines:
            figs.append((fig_title, None, f"no run has {key} against env_steps in rl_metrics.jsonl"))
            continue

        def draw(t: str = fig_title, ls: list = lines) -> bytes:
            return rp.line_plot(t, "GRPO env steps", "success", ls, percent=True, xlim=xlim)

        figs.append((fig_title, draw, ""))
    no_rl = [f"{i + 1}: {e.label}" for i, e in enumerate(runs) if not e.data.rl_rows]
    intro = (
        "Every run on one environment-step axis (cumulative GRPO env steps, the same range in both figures)."
    )
    if no_rl:
        intro += f" Without GRPO metrics, so not drawn: {', '.join(no_rl)}."
    return render_figures(figs, media, "curves", "Learning curves over env steps", intro)


def render_comparison(dirs: Sequence[Path], assets_dir: str) -> tuple[str, str, dict[str, bytes]]:
    runs = entries(dirs)
    media = Media(assets_dir=assets_dir)
    sections = [_runs_section(runs), _table_section(runs), _curves_section(runs, media)]
    tasks = sorted({t for e in runs for t in e.tasks()})
    title = f"z1 comparison of {len(runs)} runs — {task_names(tasks) if tasks else 'no evaluations'}"
    sub = " · ".join(f"{i + 1}: {e.label}" for i, e in enumerate(runs))
    html, md = page(title, sub, sections)
    return html, md, media.assets


def write_comparison(dirs: Sequence[Path], out: Path) -> tuple[Path, Path]:
    """Write the comparison page `out` (.html) and its markdown twin beside it; returns both paths."""
    from z1.errors import LimitError

    out = Path(out)
    if len(dirs) < 2:
        raise LimitError(f"a comparison needs at least two run directories (got {len(dirs)})")
    if out.is_dir():
        raise LimitError(f"--out {out} is a directory; give the path of the .html file to write")
    if out.suffix.lower() not in (".html", ".htm"):
        raise LimitError(f"--out {out}: the comparison page is HTML; give a path ending in .html")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out {out}: the directory {out.parent} does not exist")
    assets_dir = f"{out.stem}_assets"
    html, md, assets = render_comparison([Path(d) for d in dirs], assets_dir)
    md_path = out.with_suffix(".md")
    write_pages(out, md_path, html, md, assets, assets_dir)
    return out, md_path
