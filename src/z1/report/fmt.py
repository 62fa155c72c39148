"""Formatting shared by every report section: numbers, escaping, tables, embedded media, notes.

Each section is rendered twice from the same facts, as HTML and as markdown, so the helpers here come in
pairs (`html_table` / `md_table`, `note`, `Media.image` returning both forms).
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

ASSETS_DIR = "report_assets"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def series(rows: Sequence[dict[str, Any]], key: str, x: str = "step") -> tuple[list[float], list[float]]:
    """(x, values) of the rows that hold a finite number under both `x` and `key`."""
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if is_number(v) and is_number(r.get(x)):
            xs.append(float(r[x]))
            ys.append(float(v))
    return xs, ys


def last(rows: Sequence[dict[str, Any]], key: str) -> float | None:
    _, ys = series(rows, key)
    return ys[-1] if ys else None


def fmt_pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def fmt_points(d: float | None) -> str:
    return "—" if d is None else f"{100 * d:+.1f}"


def fmt_interval(lo: float, hi: float, signed: bool = False) -> str:
    """[lo, hi] in percentage points, one decimal; `signed` for a change (+/- on both ends)."""
    f = "+.1f" if signed else ".1f"
    return f"[{100 * lo:{f}}, {100 * hi:{f}}]"


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


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def md_cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in text).strip("-") or "x"


@dataclass(frozen=True)
class Section:
    anchor: str
    title: str
    html: str
    md: str


def note(text: str) -> tuple[str, str]:
    """A plainly visible remark (what is missing, what to expect), as HTML and markdown; `code` spans
    become <code> in HTML."""
    body = re.sub(r"`([^`]+)`", r"<code>\1</code>", esc(text))
    return f'<p class="note">{body}</p>', f"> {text}"


def html_table(
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


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def delta_class(lo: float | None, hi: float | None) -> str:
    """CSS class of a change: "up"/"down" only when its 95% interval excludes 0, else neutral."""
    if lo is None or hi is None:
        return "flat"
    return "up" if lo > 0 else ("down" if hi < 0 else "flat")


def ci_bar(rate: float, lo: float, hi: float) -> str:
    """A small horizontal bar of a 0..1 interval with a tick at the estimate."""
    lo, hi, p = 100 * lo, 100 * hi, 100 * rate
    return (
        f'<span class="ci" aria-hidden="true"><span class="ci-r" style="left:{lo:.1f}%;width:{hi - lo:.1f}%">'
        f'</span><span class="ci-p" style="left:{p:.1f}%"></span></span>'
    )


@dataclass
class Media:
    """Collects embedded media: a data URI for HTML, a file in report_assets/ for markdown."""

    assets: dict[str, bytes] = field(default_factory=dict)
    assets_dir: str = ASSETS_DIR  # where the markdown twin finds the images, relative to itself

    def image(self, name: str, png: bytes, alt: str, css: str = "") -> tuple[str, str]:
        if not png.startswith(PNG_MAGIC):
            raise ValueError(f"image {name!r} is not a PNG (first bytes {png[:8]!r})")
        fname = f"{slug(name)}.png"
        self.assets[fname] = png
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        cls = f' class="{css}"' if css else ""
        return (
            f'<img{cls} src="{uri}" alt="{esc(alt)}" title="{esc(alt)}">',
            f"![{md_cell(alt)}]({self.assets_dir}/{fname})",
        )

    @staticmethod
    def video(mp4: bytes, rel_path: str, label: str) -> tuple[str, str]:
        """An inline <video> (data URI, so the page stays one file); markdown links the run's own file."""
        uri = "data:video/mp4;base64," + base64.b64encode(mp4).decode("ascii")
        tag = (
            f'<video class="clip" controls loop muted playsinline preload="auto" title="{esc(label)}" '
            f'src="{uri}"></video>'
        )
        return tag, f"[{md_cell(label)} (mp4)]({rel_path})"
