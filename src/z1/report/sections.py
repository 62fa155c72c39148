"""The headline sections of a run report: the summary and the per-task success table with intervals."""

from __future__ import annotations

from typing import Any

from z1.report.fmt import (
    Section,
    ci_bar,
    delta_class,
    esc,
    fmt_duration,
    fmt_interval,
    fmt_num,
    fmt_pct,
    fmt_points,
    html_table,
    is_number,
    last,
    md_table,
    note,
    plural,
)
from z1.report.load import KIND_NAMES, STAGES, RunData, expected_stages, rate, task_order
from z1.report.stats import Estimate, mean_estimate, task_delta

PAIRED_NOTE = (
    "Δ intervals are paired by evaluation seed (both policies started from the same initial states) "
    "where the evaluation files store per-episode seeds (Newcombe's paired score interval); a change is "
    "green or red only when its 95% interval excludes 0."
)


def task_rate(r: dict[str, Any]) -> Estimate:
    n = int(r["episodes"])
    return Estimate(float(r["rate"]), float(r["ci_low"]), float(r["ci_high"]), n)


def average_rate(data: RunData, stage: str) -> Estimate | None:
    """A stage's average success over its tasks with a MOVER interval from the per-task intervals."""
    ev = data.evals[stage]
    if not ev or not ev["tasks"]:
        return None
    return mean_estimate([task_rate(r) for r in ev["tasks"].values()])


def deltas(data: RunData) -> tuple[dict[str, Estimate], Estimate | None]:
    """Per-task SFT -> GRPO change with its interval, and the change of the average over those tasks."""
    out: dict[str, Estimate] = {}
    for t in task_order(data):
        s, r = rate(data, "sft", t), rate(data, "rl", t)
        if s and r and int(s["episodes"]) > 0 and int(r["episodes"]) > 0:
            out[t] = task_delta(s, r)
    return out, (mean_estimate(list(out.values())) if out else None)


def _expected_missing(data: RunData) -> list[str]:
    """Plain statements of what this kind of run directory lacks for a full before/after report."""
    out = []
    if data.kind == "rl":
        out.append(
            "This is a `z1 rl` directory: it holds no evaluation of the SFT policy GRPO started from, so "
            "there is no before/after table with intervals (the step-0 line of rl_metrics.jsonl is the "
            "short calibration run of that policy, drawn in the curves). `z1 demo` evaluates both."
        )
        if data.evals["rl"] is None:
            out.append("eval_final.json is missing: the run had --eval-episodes 0 or has not finished.")
    elif data.kind == "sft":
        out.append(
            "This is a `z1 sft` directory: there is no GRPO stage, so no GRPO metrics or before/after "
            "comparison."
        )
        if data.evals["sft"] is None:
            out.append(
                "No evaluation of the SFT policy (eval.json): `z1 eval --checkpoint <this dir>/sft_ckpt "
                "--tasks ...` writes one here."
            )
    elif data.kind == "unknown":
        out.append(
            "No file of a z1 run was found here (run.json, sft_metrics.jsonl, rl_metrics.jsonl, eval_*.json)."
        )
    return out


def quick_note(data: RunData) -> str | None:
    if not data.quick:
        return None
    return (
        "This is a `--quick` run: tiny budgets (a few SFT steps, one GRPO iteration, 2 evaluation "
        "episodes per task) that check the whole pipeline runs. 0% success is expected here and says "
        "nothing about the method; run without --quick for numbers."
    )


def summary(data: RunData) -> Section:
    sft, rl = average_rate(data, "sft"), average_rate(data, "rl")
    _, d_avg = deltas(data)
    n_tasks = len(task_order(data))
    over = f"Over {plural(n_tasks, 'task')}, "
    parts: list[str] = []
    if sft is not None and rl is not None:
        parts.append(
            f"{over}the SFT policy succeeds in {fmt_pct(sft.value)} of evaluation episodes on average and "
            f"the GRPO policy in {fmt_pct(rl.value)}: {fmt_points(rl.value - sft.value)} points"
            + (
                f" (95% interval {fmt_interval(d_avg.low, d_avg.high, signed=True)})."
                if d_avg is not None
                else "."
            )
        )
    elif sft is not None:
        parts.append(
            f"{over}the SFT policy succeeds in {fmt_pct(sft.value)} of evaluation episodes on average. "
            f"There is no GRPO evaluation ({data.eval_files['rl']} is missing), so no before/after "
            "comparison."
        )
    elif rl is not None:
        parts.append(
            f"{over}the GRPO policy succeeds in {fmt_pct(rl.value)} of evaluation episodes on average "
            f"({data.eval_files['rl']}); there is no SFT evaluation, so no before/after comparison."
        )
    else:
        files = " and ".join(data.eval_files[s] for s in expected_stages(data))
        parts.append(f"No evaluation results were found ({files}: missing).")
    env, flat = last(data.rl_rows, "env_steps"), last(data.rl_rows, "env_steps_flat_equiv")
    if env is not None:
        s = f"GRPO training used {fmt_num(env)} environment steps"
        if flat and flat > 0:
            saved = 100 * (1 - env / flat)
            s += f" ({fmt_num(flat)} for flat rollouts of the same leaves: {saved:.0f}% saved)"
        parts.append(s + ".")
    eval_steps = [
        int(data.evals[s]["env_steps"])
        for s in STAGES
        if data.evals[s] and is_number(data.evals[s].get("env_steps"))
    ]
    if eval_steps:
        parts.append(f"Evaluation used {fmt_num(sum(eval_steps))} more.")
    if data.timings:
        parts.append(f"Total wall time {fmt_duration(sum(data.timings.values()))}.")
    elif data.kind == "demo":
        parts.append("Wall time is unknown (timings.json is missing).")
    text = " ".join(parts)

    change = "—"
    if sft is not None and rl is not None:
        change = fmt_points(rl.value - sft.value) + " pts"
    tiles = [
        ("SFT success", fmt_pct(sft.value if sft else None), ""),
        ("GRPO success", fmt_pct(rl.value if rl else None), ""),
        ("change", change, " " + delta_class(d_avg.low, d_avg.high) if d_avg else ""),
        ("GRPO env steps", fmt_num(env), ""),
        ("wall time", fmt_duration(sum(data.timings.values())) if data.timings else "—", ""),
    ]
    tile_html = "".join(
        f'<div class="tile{cls}"><div class="v">{esc(v)}</div><div class="k">{esc(label)}</div></div>'
        for label, v, cls in tiles
    )
    h = f'<div class="tiles">{tile_html}</div><p class="lead" id="summary">{esc(text)}</p>'
    md = text
    for remark in [quick_note(data), *_expected_missing(data)]:
        if remark:
            nh, nm = note(remark)
            h, md = h + nh, md + "\n\n" + nm
    if data.problems:
        h += '<ul class="problems">' + "".join(f"<li>{esc(p)}</li>" for p in data.problems) + "</ul>"
        md += "".join(f"\n\n> {p}" for p in data.problems)
    return Section("summary", f"Summary ({KIND_NAMES[data.kind]} run)", h, md)


def _rate_cells(r: dict[str, Any] | None) -> tuple[str, str, str]:
    """(rate, interval text, interval bar HTML) of one task entry, dashes when missing."""
    if r is None:
        return "—", "—", ""
    e = task_rate(r)
    return fmt_pct(e.value), fmt_interval(e.low, e.high), ci_bar(e.value, e.low, e.high)


def _delta_cells(d: Estimate | None) -> tuple[str, str, str]:
    """(Δ points, Δ interval text, CSS class) of a change; the interval is marked * when unpaired."""
    if d is None:
        return "—", "—", "flat"
    ci = fmt_interval(d.low, d.high, signed=True) + ("" if d.paired else " *")
    return fmt_points(d.value), ci, delta_class(d.low, d.high)


def success_table(data: RunData) -> Section:
    title = "Success per task"
    tasks = [t for t in task_order(data) if rate(data, "sft", t) or rate(data, "rl", t)]
    if not tasks:
        files = " and ".join(data.eval_files[s] for s in expected_stages(data))
        h, m = note(f"No per-task evaluation results: {files} missing.")
        return Section("success", title, h, m)
    header = [
        "task",
        "SFT",
        "SFT 95% CI",
        "GRPO",
        "GRPO 95% CI",
        "Δ points",
        "Δ 95% CI",
        "episodes",
        "success length SFT → GRPO",
    ]
    per_task, d_avg = deltas(data)
    h_rows, m_rows = [], []
    for t in tasks:
        s, r = rate(data, "sft", t), rate(data, "rl", t)
        (sp, sci, sbar), (rp, rci, rbar) = _rate_cells(s), _rate_cells(r)
        dp, dci, dcls = _delta_cells(per_task.get(t))
        eps = " / ".join(str(int(x["episodes"])) for x in (s, r) if x)
        lens = " → ".join(
            f"{float(x['mean_success_length']):.1f}" if x and is_number(x.get("mean_success_length")) else "—"
            for x in (s, r)
        )
        h_rows.append(
            [
                f"<code>{esc(t)}</code>",
                esc(sp),
                esc(sci) + sbar,
                esc(rp),
                esc(rci) + rbar,
                f'<span class="delta {dcls}">{esc(dp)}</span>',
                f'<span class="delta-ci {dcls}">{esc(dci)}</span>',
                esc(eps),
                esc(lens),
            ]
        )
        m_rows.append([f"`{t}`", sp, sci, rp, rci, dp, dci, eps, lens])
    sft, rl = average_rate(data, "sft"), average_rate(data, "rl")
    dp, dci, dcls = _delta_cells(d_avg)
    avg = [
        "average",
        fmt_pct(sft.value) if sft else "—",
        fmt_interval(sft.low, sft.high) if sft else "",
        fmt_pct(rl.value) if rl else "—",
        fmt_interval(rl.low, rl.high) if rl else "",
    ]
    h_rows.append(
        [f"<strong>{esc(c)}</strong>" if c else "" for c in avg]
        + [
            f'<strong class="delta {dcls}">{esc(dp)}</strong>',
            f'<strong class="delta-ci {dcls}">{esc(dci)}</strong>',
            "",
            "",
        ]
    )
    m_rows.append([f"**{c}**" if c else "" for c in avg] + [f"**{dp}**", f"**{dci}**", "", ""])
    expl = (
        "Success rate of the deterministic (ODE) policy at fixed evaluation seeds, with Wilson 95% "
        "intervals (the average's interval combines them); success length is the mean episode length of "
        "successful episodes (shorter is better). " + PAIRED_NOTE
    )
    if any(not d.paired for d in per_task.values()):
        expl += " * unpaired: an evaluation file has no per-episode seeds, so the two rates are compared as "
        expl += "independent samples (a wider interval)."
    missing = [data.eval_files[s] for s in expected_stages(data) if data.evals[s] is None]
    if missing:
        expl += f" Missing: {', '.join(missing)}."
    return Section(
        "success",
        title,
        f'<p class="caption">{esc(expl)}</p>' + html_table(header, h_rows, "success-table"),
        f"{expl}\n\n{md_table(header, m_rows)}",
    )
