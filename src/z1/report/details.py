"""The reference sections of a run report: tree/update statistics, wall time and configuration."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from z1.report.fmt import (
    Section,
    esc,
    fmt_duration,
    fmt_num,
    html_table,
    last,
    md_table,
    note,
    series,
    slug,
)
from z1.report.load import RunData

TIMING_NAMES = {
    "collect": "demonstrations",
    "sft": "supervised fine-tuning",
    "eval_sft": "evaluate SFT",
    "rl": "GRPO",
    "eval_rl": "evaluate GRPO",
}
# Per-iteration optimisation metrics shown in the "policy update" table, when logged (their curves are in
# the optimisation section).
UPDATE_KEYS = (
    "ratio/mean",
    "ratio/std",
    "ratio/abs_dev",
    "clip/frac",
    "clip_frac/high",
    "clip_frac/low",
    "clip_frac/dual",
    "approx_kl/k3",
    "grad_norm/total",
    "loss/policy",
    "groups/signal_frac",
    "adv/frac_nonzero",
    "time/rollout",
    "time/update",
)


def _stats_rows(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[list[str]]:
    out = []
    for k in keys:
        _, ys = series(rows, k)
        if ys:
            out.append([k, fmt_num(ys[-1]), fmt_num(sum(ys) / len(ys)), fmt_num(min(ys)), fmt_num(max(ys))])
    return out


def tree_section(data: RunData) -> Section:
    title = "Tree rollouts and policy update"
    if not data.rl_rows:
        h, m = note("No GRPO metrics (rl_metrics.jsonl is missing or empty).")
        return Section("tree", title, h, m)
    tree_keys = sorted({k for r in data.rl_rows for k in r if k.startswith("tree/")})
    header = ["metric", "latest", "mean", "min", "max"]
    tree_rows = _stats_rows(data.rl_rows, tree_keys)
    env, flat = last(data.rl_rows, "env_steps"), last(data.rl_rows, "env_steps_flat_equiv")
    if env is not None and flat:
        tree_rows.append(["env steps / flat equivalent (cumulative)", f"{env / flat:.3f}", "", "", ""])
    upd_rows = _stats_rows(data.rl_rows, UPDATE_KEYS)
    n_iter = len(series(data.rl_rows, "train_success_avg")[0])
    h, m = f'<p class="caption">Over {n_iter} GRPO iterations.</p>', f"Over {n_iter} GRPO iterations."
    for sub, rows, empty in (
        ("Tree statistics", tree_rows, "No tree/* metrics were logged (flat rollouts?)."),
        ("Policy update", upd_rows, "No policy-update metrics were logged."),
    ):
        if rows:
            h += f"<h3>{sub}</h3>" + html_table(
                header,
                [[f"<code>{esc(r[0])}</code>", *map(esc, r[1:])] for r in rows],
                slug(sub.lower()),
            )
            m += f"\n\n### {sub}\n\n" + md_table(header, [[f"`{r[0]}`", *r[1:]] for r in rows])
        else:
            nh, nm = note(empty)
            h += f"<h3>{sub}</h3>{nh}"
            m += f"\n\n### {sub}\n\n{nm}"
    return Section("tree", title, h, m)


def timings_section(data: RunData) -> Section:
    if not data.timings:
        why = "timings.json is missing, so wall time per stage is unknown."
        if data.kind in ("rl", "sft"):
            why = f"`z1 {data.kind}` writes no timings.json, so wall time per stage is unknown."
        h, m = note(why)
        return Section("timings", "Wall time", h, m)
    total = sum(data.timings.values())
    header = ["stage", "wall time", "seconds", "share"]
    h_rows, m_rows = [], []
    for k, v in data.timings.items():
        share = v / total if total > 0 else 0.0
        name = TIMING_NAMES.get(k, k)
        bar = f'<span class="bar"><span style="width:{100 * share:.1f}%"></span></span>'
        h_rows.append([esc(name), esc(fmt_duration(v)), f"{v:.1f}", f"{100 * share:.0f}% {bar}"])
        m_rows.append([name, fmt_duration(v), f"{v:.1f}", f"{100 * share:.0f}%"])
    h_rows.append(
        ["<strong>total</strong>", f"<strong>{esc(fmt_duration(total))}</strong>", f"{total:.1f}", ""]
    )
    m_rows.append(["**total**", f"**{fmt_duration(total)}**", f"{total:.1f}", ""])
    return Section(
        "timings", "Wall time", html_table(header, h_rows, "timings-table"), md_table(header, m_rows)
    )


def _config_source(data: RunData) -> tuple[list[tuple[str, Any]], Any, str] | None:
    """(top-level facts, config JSON, where it came from): run.json, else the checkpoints' extra.json."""
    if data.run is not None:
        facts = [
            (k, v) for k, v in data.run.items() if k not in ("config", "machine") and not isinstance(v, dict)
        ]
        machine = data.run.get("machine")
        if isinstance(machine, dict):
            facts += [(f"machine.{k}", v) for k, v in machine.items()]
        config = {k: v for k, v in data.run.items() if isinstance(v, dict) and k != "machine"}
        return facts, config.get("config", config) if list(config) == ["config"] else config, "run.json"
    if data.configs:
        stage = "rl" if "rl" in data.configs else "sft"
        cfg = data.configs[stage]
        facts = [(k, v) for k, v in cfg.items() if not isinstance(v, dict)]
        where = data.config_files[stage]
        if where.endswith("extra.json"):
            where += f" ({stage}_config)"
        others = [data.config_files[s] for s in data.configs if s != stage]
        if others:
            where += f", with the SFT config from {', '.join(others)}"
        return facts, data.configs, where
    return None


def config_section(data: RunData) -> Section:
    found = _config_source(data)
    if found is None:
        h, m = note(
            "run.json is missing and no checkpoint records its config, so the configuration is unknown."
        )
        return Section("config", "Configuration", h, m)
    facts, config, where = found
    value = {k: json.dumps(v) if isinstance(v, list) else str(v) for k, v in facts}
    cap = f"From {where}."
    h = f'<p class="caption">{esc(cap)}</p>' + html_table(
        ["field", "value"], [[esc(k), f"<code>{esc(value[k])}</code>"] for k, _ in facts], num_from=2
    )
    m = (
        cap
        + "\n\n"
        + (md_table(["field", "value"], [[k, f"`{value[k]}`"] for k, _ in facts]) if facts else "")
    )
    text = json.dumps(config, indent=2)
    h += f"<details><summary>config used (JSON)</summary><pre>{esc(text)}</pre></details>"
    m += f"\n\n<details><summary>config used (JSON)</summary>\n\n```json\n{text}\n```\n\n</details>"
    return Section("config", "Configuration", h, m)
