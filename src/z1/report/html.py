"""The page around the sections: style, a load check for headless browsers, and writing the files.

`page(...)` turns sections into one self-contained HTML document (CSS inline, media as data URIs, no
external requests) and its markdown twin; `write_report` writes both into the run directory atomically.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from z1.fsutil import write_text_atomic
from z1.report.fmt import ASSETS_DIR, Section, esc

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
#success-table, #compare-table { width:100%; }
th, td { padding:6px 10px; border-bottom:1px solid var(--line); text-align:left; vertical-align:middle; }
thead th { background:#f1f3f5; font-weight:600; font-size:12.5px; color:var(--muted); white-space:nowrap; }
tbody tr:nth-child(even) { background:#fafbfc; }
tbody tr:last-child td { border-bottom:none; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
.delta.up, .delta-ci.up { color:var(--up); font-weight:600; }
.delta.down, .delta-ci.down { color:var(--down); font-weight:600; }
.delta.flat, .delta-ci.flat { color:var(--muted); }
.tile.flat .v { color:var(--muted); }
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
.stage h4 { font-size:12.5px; margin:0 0 4px; color:var(--muted); }
.clips { display:grid; grid-template-columns:repeat(2,minmax(0,256px)); gap:10px; }
video.clip { width:100%; height:auto; image-rendering:pixelated; border-radius:4px; background:#000;
             display:block; }
.clips figure.success figcaption { color:var(--up); } .clips figure.failure figcaption { color:var(--down); }
figcaption { font-size:12.5px; color:var(--muted); margin:3px 0 8px; }
details summary { cursor:pointer; color:var(--accent); margin:12px 0 6px; }
pre { background:#f5f7fa; border:1px solid var(--line); border-radius:6px; padding:12px; overflow:auto;
      font:12px/1.45 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; max-height:560px; }
footer { color:var(--muted); font-size:12px; text-align:center; }
"""

# Marks the page once every image has decoded and every video has its metadata (or failed):
# <body data-images-total data-images-ok data-videos-total data-videos-ok>. Lets a headless browser
# (tests/test_report_browser.py) check that the embedded media render.
MEDIA_CHECK_JS = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images-total", String(imgs.length));
  document.body.setAttribute("data-images-ok", String(ok));
  var vids = Array.prototype.slice.call(document.querySelectorAll("video"));
  var settled = 0, good = 0;
  function mark() {
    document.body.setAttribute("data-videos-total", String(vids.length));
    if (settled === vids.length) { document.body.setAttribute("data-videos-ok", String(good)); }
  }
  vids.forEach(function (v) {
    function done(isOk) { settled += 1; if (isOk) { good += 1; } mark(); }
    if (v.readyState >= 1) { done(v.videoWidth > 0); return; }
    v.addEventListener("loadedmetadata", function () { done(v.videoWidth > 0); }, { once: true });
    v.addEventListener("error", function () { done(false); }, { once: true });
  });
  mark();
});
"""


def page(title: str, sub: str, sections: Sequence[Section]) -> tuple[str, str]:
    """(html, markdown) of a titled page of sections."""
    nav = "".join(f'<a href="#{s.anchor}">{esc(s.title)}</a>' for s in sections)
    body = "".join(
        f'<section id="sec-{s.anchor}"><h2 id="{s.anchor}">{esc(s.title)}</h2>{s.html}</section>'
        for s in sections
    )
    html = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style><script>{MEDIA_CHECK_JS}</script></head>"
        f'<body><main><header><h1 id="title">{esc(title)}</h1><p class="sub">{esc(sub)}</p></header>'
        f"<nav>{nav}</nav>{body}<footer>written by <code>z1 report</code></footer></main></body></html>\n"
    )
    md = f"# {title}\n\n_{sub}_\n\n" + "\n\n".join(f"## {s.title}\n\n{s.md}" for s in sections) + "\n"
    return html, md


def write_bytes_atomic(path: Path, data: bytes) -> None:
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


def write_pages(
    html_path: Path, md_path: Path, html: str, md: str, assets: dict[str, bytes], assets_dir: str = ASSETS_DIR
) -> None:
    """Assets into `assets_dir` beside the markdown (stale PNGs there removed), then the markdown, then
    the HTML; everything was rendered before this first write, and each file is replaced atomically."""
    asset_dir = md_path.parent / assets_dir
    if assets:
        asset_dir.mkdir(exist_ok=True)
        for name, png in assets.items():
            write_bytes_atomic(asset_dir / name, png)
    if asset_dir.is_dir():
        for old in asset_dir.glob("*.png"):
            if old.name not in assets:
                old.unlink()
    for path, text in ((md_path, md), (html_path, html)):
        write_text_atomic(path, text)
        path.chmod(0o644)  # mkstemp creates 0600; a report is meant to be shared
