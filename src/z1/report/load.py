"""Reading a run directory into `RunData`: whatever is there, with a note for what could not be read.

Three kinds of run directory exist, and each leaves a different subset of files:
    z1 demo   run.json, timings.json, eval_sft.json, eval_rl.json, sft_metrics.jsonl, rl_metrics.jsonl,
              filmstrips/<stage>_<task>.png, videos/<stage>_<task>_<outcome>.mp4
    z1 rl     rl_metrics.jsonl, rl_summary.json, eval_final.json (the GRPO evaluation), rl_config.json
              (its config; older runs: rl_ckpt/extra.json); the step-0 metrics line is the calibration
              run of the initial policy
    z1 sft    sft_metrics.jsonl, sft_config.json (or sft_ckpt/extra.json); eval.json when `z1 eval` ran
              on its checkpoint
A file that is missing is None / empty here; one that is unreadable is also recorded in `problems`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from z1.report.fmt import is_number
from z1.train.metrics import read_metrics

STAGES = ("sft", "rl")
STAGE_NAMES = {"sft": "SFT", "rl": "GRPO"}
KIND_NAMES = {"demo": "z1 demo", "rl": "z1 rl", "sft": "z1 sft", "unknown": "run"}
OUTCOMES = ("success", "failure")


@dataclass(frozen=True)
class RunData:
    """Everything the report reads; a missing or unreadable file is None / empty, with a note."""

    run_dir: Path
    kind: str  # "demo" | "rl" | "sft" | "unknown"
    run: dict[str, Any] | None  # run.json (z1 demo)
    configs: dict[str, dict[str, Any]]  # "sft"/"rl" -> the stage's resolved config
    config_files: dict[str, str]  # "sft"/"rl" -> the file that config was read from
    timings: dict[str, float] | None
    evals: dict[str, dict[str, Any] | None]  # stage -> EvalResult.to_json() or None
    eval_files: dict[str, str]  # stage -> the file its evaluation was read from
    sft_rows: list[dict[str, Any]]
    rl_rows: list[dict[str, Any]]  # merged by step, ascending
    filmstrips: dict[tuple[str, str], Path]  # (stage, task) -> png
    filmstrips_dir_exists: bool
    clips: dict[tuple[str, str, str], Path]  # (stage, task, outcome) -> mp4
    videos: list[Path]  # every other mp4 in videos/ (e.g. `z1 eval --videos N`)
    problems: list[str] = field(default_factory=list)

    @property
    def quick(self) -> bool:
        return bool(self.run and self.run.get("quick"))


def read_json(path: Path, problems: list[str]) -> dict[str, Any] | None:
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


def read_jsonl(path: Path, problems: list[str]) -> list[dict[str, Any]]:
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


def merge_by_step(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per step: the RL trainer logs a step's final evaluation as a second line."""
    merged: dict[int, dict[str, Any]] = {}
    for row in rows:
        step = row.get("step")
        if not is_number(step):
            continue
        merged.setdefault(int(step), {}).update(row)
    return [merged[s] for s in sorted(merged)]


def valid_eval(data: dict[str, Any] | None, name: str, problems: list[str]) -> dict[str, Any] | None:
    if data is None:
        return None
    tasks = data.get("tasks")
    if not isinstance(tasks, dict):
        problems.append(f"{name} has no 'tasks' object; it is treated as missing.")
        return None
    need = ("rate", "ci_low", "ci_high", "episodes")
    bad = [
        t for t, r in tasks.items() if not isinstance(r, dict) or not all(is_number(r.get(k)) for k in need)
    ]
    if bad:
        problems.append(
            f"{name}: task(s) {', '.join(bad)} lack a number for one of {need}; they are left out."
        )
        data = {**data, "tasks": {t: r for t, r in tasks.items() if t not in bad}}
    return data


def _kind(run_dir: Path, run: dict[str, Any] | None) -> str:
    if run is not None or (run_dir / "eval_sft.json").is_file() or (run_dir / "eval_rl.json").is_file():
        return "demo"
    if any(
        (run_dir / n).exists() for n in ("rl_metrics.jsonl", "rl_ckpt", "rl_summary.json", "rl_config.json")
    ):
        return "rl"
    if any((run_dir / n).exists() for n in ("sft_metrics.jsonl", "sft_ckpt", "sft_config.json")):
        return "sft"
    return "unknown"


def _stage_configs(run_dir: Path, problems: list[str]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The config of each stage and the file it came from: `<stage>_config.json` (what `z1 sft|rl` write
    beside their metrics), else the stage's checkpoint's extra.json (runs from before that file); an RL
    checkpoint also carries the SFT config of the checkpoint it started from."""
    configs: dict[str, dict[str, Any]] = {}
    sources: dict[str, str] = {}
    for stage in STAGES:
        record = read_json(run_dir / f"{stage}_config.json", problems)
        if record is not None and isinstance(record.get("config"), dict):
            configs[stage], sources[stage] = record["config"], f"{stage}_config.json"
    for stage in STAGES:
        extra = read_json(run_dir / f"{stage}_ckpt" / "extra.json", problems)
        for s in STAGES:
            cfg = extra.get(f"{s}_config") if extra else None
            if isinstance(cfg, dict) and s not in configs and (s == stage or s not in sources):
                configs[s], sources[s] = cfg, f"{stage}_ckpt/extra.json"
    return configs, sources


def _eval_paths(run_dir: Path, kind: str) -> dict[str, Path]:
    """Where each stage's evaluation lives for this kind of run directory."""
    paths = {"sft": run_dir / "eval_sft.json", "rl": run_dir / "eval_rl.json"}
    if kind == "rl" or (not paths["rl"].is_file() and (run_dir / "eval_final.json").is_file()):
        paths["rl"] = run_dir / "eval_final.json"  # what `z1 rl` writes
    if kind in ("rl", "sft") and (run_dir / "eval.json").is_file() and not paths[kind].is_file():
        paths[kind] = run_dir / "eval.json"  # `z1 eval --checkpoint <run>/<stage>_ckpt` default output
    return paths


def load_run(run_dir: Path) -> RunData:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"run directory {run_dir} does not exist; pass the directory that `z1 demo`, `z1 sft --out` "
            "or `z1 rl --out` wrote (it holds run.json, sft_metrics.jsonl or rl_metrics.jsonl, ...)"
        )
    problems: list[str] = []
    run = read_json(run_dir / "run.json", problems)
    kind = _kind(run_dir, run)
    timings_raw = read_json(run_dir / "timings.json", problems)
    timings = None
    if timings_raw is not None:
        timings = {k: float(v) for k, v in timings_raw.items() if is_number(v)}
    paths = _eval_paths(run_dir, kind)
    evals = {s: valid_eval(read_json(p, problems), p.name, problems) for s, p in paths.items()}
    sft_path, rl_path = run_dir / "sft_metrics.jsonl", run_dir / "rl_metrics.jsonl"
    sft_rows = merge_by_step(read_jsonl(sft_path, problems)) if sft_path.is_file() else []
    rl_rows = merge_by_step(read_jsonl(rl_path, problems)) if rl_path.is_file() else []
    film_dir = run_dir / "filmstrips"
    filmstrips: dict[tuple[str, str], Path] = {}
    if film_dir.is_dir():
        for p in sorted(film_dir.glob("*.png")):
            stage, sep, task = p.stem.partition("_")
            if sep and stage in STAGES and task:
                filmstrips[(stage, task)] = p
    clips: dict[tuple[str, str, str], Path] = {}
    videos: list[Path] = []
    video_dir = run_dir / "videos"
    for p in sorted(video_dir.glob("*.mp4")) if video_dir.is_dir() else []:
        stage, sep, rest = p.stem.partition("_")
        task, _, outcome = rest.rpartition("_")
        if sep and stage in STAGES and task and outcome in OUTCOMES:
            clips[(stage, task, outcome)] = p
        else:
            videos.append(p)
    configs, config_files = _stage_configs(run_dir, problems)
    return RunData(
        run_dir=run_dir,
        kind=kind,
        run=run,
        configs=configs,
        config_files=config_files,
        timings=timings,
        evals=evals,
        eval_files={s: p.name for s, p in paths.items()},
        sft_rows=sft_rows,
        rl_rows=rl_rows,
        filmstrips=filmstrips,
        filmstrips_dir_exists=film_dir.is_dir(),
        clips=clips,
        videos=videos,
        problems=problems,
    )


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


def tasks_run(data: RunData) -> list[str]:
    """The tasks the run was configured with (run.json, else the RL config), else those found in it."""
    listed = data.run.get("tasks") if data.run else None
    if isinstance(listed, list) and listed and all(isinstance(t, str) for t in listed):
        return list(listed)
    spec = data.configs.get("rl", {}).get("tasks")
    found = task_order(data)
    if isinstance(spec, str) and "," in spec:
        return [t.strip() for t in spec.split(",") if t.strip()]
    return found


def expected_stages(data: RunData) -> tuple[str, ...]:
    """The stages this kind of run directory evaluates: a `z1 rl` or `z1 sft` run only its own."""
    return (data.kind,) if data.kind in STAGES else STAGES


def rate(data: RunData, stage: str, task: str) -> dict[str, Any] | None:
    ev = data.evals[stage]
    return ev["tasks"].get(task) if ev else None


def average(data: RunData, stage: str) -> float | None:
    ev = data.evals[stage]
    if not ev:
        return None
    if is_number(ev.get("average")):
        return float(ev["average"])
    rates = [float(r["rate"]) for r in ev["tasks"].values()]
    return sum(rates) / len(rates) if rates else None


def examples(data: RunData, stage: str, task: str) -> list[dict[str, Any]]:
    """The recorded example episodes (seed, success, length) of a stage's evaluation of a task."""
    ev = data.evals[stage]
    ex = ev.get("examples", {}).get(task) if ev and isinstance(ev.get("examples"), dict) else None
    return [e for e in ex if isinstance(e, dict)] if isinstance(ex, list) else []
