"""The report of one run directory: `render` it in memory, `write_report` it into the directory."""

from __future__ import annotations

from pathlib import Path

from z1.report.curves import learning_curves, optimisation_curves
from z1.report.details import config_section, timings_section, tree_section
from z1.report.episodes import filmstrip_section
from z1.report.fmt import ASSETS_DIR, Media
from z1.report.html import page, write_pages
from z1.report.load import KIND_NAMES, RunData, load_run, tasks_run
from z1.report.sections import success_table, summary

MAX_TITLE_TASKS = 4


def task_names(tasks: list[str]) -> str:
    if len(tasks) <= MAX_TITLE_TASKS:
        return ", ".join(tasks)
    return ", ".join(tasks[: MAX_TITLE_TASKS - 1]) + f" and {len(tasks) - MAX_TITLE_TASKS + 1} more"


def title(data: RunData) -> tuple[str, str]:
    """(title, subtitle). The title names the tasks that ran; the preset only when it chose them (a
    `--tasks` override makes the preset name misleading)."""
    tasks = tasks_run(data)
    preset = data.run.get("preset") if data.run else None
    cfg = data.run.get("config") if data.run else None
    overridden = isinstance(cfg, dict) and bool(cfg.get("tasks"))
    what = task_names(tasks) if tasks else "no tasks found"
    if preset and not overridden:
        what = f"{preset}: {what}"
    head = f"{KIND_NAMES[data.kind]} report" if data.kind != "unknown" else "z1 run report"
    full = f"{head} — {what}" + (" (--quick)" if data.quick else "")
    bits = [data.run_dir.name]
    if len(tasks) > MAX_TITLE_TASKS:
        bits.append(f"{len(tasks)} tasks: {', '.join(tasks)}")
    if data.run and data.run.get("started"):
        bits.append(f"started {data.run['started']}")
    if data.run and data.run.get("command"):
        bits.append(f"$ {data.run['command']}")
    return full, " · ".join(bits)


def render(data: RunData) -> tuple[str, str, dict[str, bytes]]:
    """(html, markdown, assets for report_assets/) of a loaded run."""
    media = Media()
    sections = [
        summary(data),
        success_table(data),
        learning_curves(data, media),
        optimisation_curves(data, media),
        tree_section(data),
        filmstrip_section(data, media),
        timings_section(data),
        config_section(data),
    ]
    html, md = page(*title(data), sections)
    return html, md, media.assets


def check_write_location(run_dir: Path) -> None:
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
    check_write_location(run_dir)
    html, md, assets = render(load_run(run_dir))
    html_path, md_path = run_dir / "report.html", run_dir / "report.md"
    write_pages(html_path, md_path, html, md, assets)
    return html_path, md_path
