"""Figure sections of a run report: learning curves, and the policy-optimisation curves (KL, clip
fractions, importance ratio, gradient norm per GRPO iteration) that show whether an update was tame.

Each figure is either drawn or listed under "not shown" with the metric it lacked, so a report of a
partial run says which curves are missing and why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from z1.report.fmt import Media, Section, esc, is_number, note, series
from z1.report.load import RunData, average, task_order

Figure = tuple[str, Callable[[], bytes] | None, str]  # (title, render or None, why it is missing)
NO_MATPLOTLIB = (
    "matplotlib is not installed, so there are no curves: pip install -e '.[report]' in the z1 checkout."
)


def plots_module():
    """`z1.report.plots` when matplotlib can be imported, else None (the sections then say so)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return None
    from z1.report import plots

    return plots


def render_figures(figs: list[Figure], media: Media, name: str, title: str, intro: str = "") -> Section:
    h_figs, m_figs, missing = [], [], []
    for fig_title, render, why in figs:
        if render is None:
            missing.append(f"{fig_title}: {why}")
            continue
        tag, ref = media.image(f"curve-{fig_title.lower()}", render(), fig_title)
        h_figs.append(f"<figure>{tag}</figure>")
        m_figs.append(ref)
    h = f'<p class="caption">{esc(intro)}</p>' if intro else ""
    h += f'<div class="grid">{"".join(h_figs)}</div>' if h_figs else ""
    m = (intro + "\n\n" if intro else "") + "\n\n".join(m_figs)
    if missing:
        h += '<ul class="missing">' + "".join(f"<li>{esc(x)}</li>" for x in missing) + "</ul>"
        m += ("\n\n" if m_figs else "") + "\n".join(f"- not shown: {x}" for x in missing)
    return Section(name, title, h, m)


def learning_curves(data: RunData, media: Media) -> Section:
    rp = plots_module()
    if rp is None:
        h, m = note(NO_MATPLOTLIB)
        return Section("curves", "Learning curves", h, m)
    tasks = task_order(data)
    color = {t: rp.color_for(i) for i, t in enumerate(tasks)}
    figs: list[Figure] = []
    rl, sft_rows = data.rl_rows, data.sft_rows

    def per_task(prefix: str) -> list:
        out = []
        for t in tasks:
            xs, ys = series(rl, f"{prefix}/{t}")
            if xs:
                out.append(rp.Series(t, xs, ys, color[t]))
        return out

    # Eval success: GRPO per iteration, against the SFT policy's evaluation.
    ex, ey = series(rl, "eval_success_avg")
    sft_avg, rl_avg = average(data, "sft"), average(data, "rl")
    eval_series = per_task("eval_success")
    if ex:
        eval_series.append(rp.Series("GRPO average", ex, ey, rp.INK, emphasis=True, marker="o"))
    if rl_avg is not None:
        last_x = max((float(r["step"]) for r in rl if is_number(r.get("step"))), default=0.0)
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
        figs.append(
            ("Eval success (ODE)", None, "no eval_success in rl_metrics.jsonl and no GRPO evaluation")
        )

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
    g_rows = [r for r in rl if all(is_number(r.get(k)) for _, k, _ in group_keys)]
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
        loss = [rp.Series("loss", lx, ly, "#0072B2", emphasis=True)]
        figs.append(
            (
                "SFT loss",
                lambda: rp.line_plot("SFT loss (flow matching)", "SFT step", "loss", loss, log_y=log_y),
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
    return render_figures(figs, media, "curves", "Learning curves")


# (title, y label, [(metric, label, emphasised)], prefix of further metrics drawn thin, reference name)
OPTIMISATION_FIGURES: tuple[tuple[str, str, tuple[tuple[str, str, bool], ...], str, str], ...] = (
    (
        "KL to the rollout policy",
        "approx. KL",
        (("approx_kl/k3", "k3", True), ("approx_kl/k1", "k1", False), ("approx_kl/k2", "k2", False)),
        "",
        "kl_target",
    ),
    ("Clip fractions", "fraction of terms", (("clip/frac", "clipped", True),), "clip_frac/", ""),
    (
        "Importance ratio",
        "ratio new / old",
        (("ratio/mean", "mean", True), ("ratio/min", "min", False), ("ratio/max", "max", False)),
        "",
        "ratio=1",
    ),
    (
        "Gradient norm",
        "L2 norm (before clipping)",
        (("grad_norm/total", "total", True),),
        "grad_norm/",
        "grad_clip",
    ),
)


def _reference(name: str, data: RunData) -> tuple[str, float] | None:
    """A horizontal reference of an optimisation figure: the config's KL target or gradient clip."""
    if name == "ratio=1":
        return "ratio 1", 1.0
    cfg: dict[str, Any] = data.configs.get("rl", {})  # RLConfig as the RL checkpoint recorded it
    grpo = cfg.get("grpo") if isinstance(cfg.get("grpo"), dict) else {}
    value = grpo.get("kl_target") if name == "kl_target" else cfg.get(name)
    return (f"{name.replace('_', ' ')} {value:g}", float(value)) if is_number(value) and value > 0 else None


def optimisation_curves(data: RunData, media: Media) -> Section:
    """KL, clip fractions, ratio and gradient norm over the GRPO iterations (rl_metrics.jsonl keys)."""
    title = "Policy optimisation"
    if not data.rl_rows:
        h, m = note("No GRPO metrics (rl_metrics.jsonl is missing or empty), so no optimisation curves.")
        return Section("optimisation", title, h, m)
    rp = plots_module()
    if rp is None:
        h, m = note(NO_MATPLOTLIB)
        return Section("optimisation", title, h, m)
    logged = sorted({k for r in data.rl_rows for k in r})
    figs: list[Figure] = []
    for fig_title, ylabel, keys, prefix, ref in OPTIMISATION_FIGURES:
        chosen: dict[str, tuple[str, bool]] = {}  # metric -> (label, emphasised), first mention wins
        for key, label, bold in keys:
            chosen.setdefault(key, (label, bold))
        for key in logged:
            if prefix and key.startswith(prefix):
                chosen.setdefault(key, (key.removeprefix(prefix), False))
        lines = []
        for i, (key, (label, bold)) in enumerate(chosen.items()):
            xs, ys = series(data.rl_rows, key)
            if xs:
                lines.append(rp.Series(label, xs, ys, rp.INK if bold else rp.color_for(i), emphasis=bold))
        wanted = ", ".join(dict.fromkeys([k for k, _, _ in keys] + ([f"{prefix}*"] if prefix else [])))
        if not lines:
            figs.append((fig_title, None, f"none of {wanted} in rl_metrics.jsonl"))
            continue
        refs = [rp.HLine(*r) for r in [_reference(ref, data)] if r] if ref else []

        def draw(t: str = fig_title, y: str = ylabel, ls: list = lines, hs: list = refs) -> bytes:
            return rp.line_plot(t, "GRPO iteration", y, ls, hs)

        figs.append((fig_title, draw, ""))
    intro = (
        "Per GRPO iteration, means over its optimizer steps: the approximate KL of the updated policy to "
        "the one that collected the rollouts, the share of PPO terms whose ratio was clipped, the ratio "
        "itself, and the gradient norm before clipping."
    )
    return render_figures(figs, media, "optimisation", title, intro)
