"""The report renders in a real browser: headless Chromium loads report.html from disk, its inline
script counts decoded images, and a screenshot shows a page with content (not one flat colour)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_report import N_CURVES_FULL, TASKS, make_run_dir
from z1.report import write_report

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.is_file(),
        reason="needs /usr/bin/chromium (Debian package 'chromium'; scripts/setup.sh installs it)",
    ),
]


def _chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    run = make_run_dir(tmp_path_factory.mktemp("browser"))
    html, _ = write_report(run)
    return html


def test_dom_has_table_and_every_image_decodes(report, tmp_path):
    proc = _chromium(tmp_path / "profile", "--dump-dom", report.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    total = re.search(r'data-images-total="(\d+)"', dom)
    ok = re.search(r'data-images-ok="(\d+)"', dom)
    assert total and ok, "the load handler did not run: " + dom[:500]
    n_expected = report.read_text().count("<img ")
    assert n_expected == N_CURVES_FULL + 2 * len(TASKS)
    assert int(total.group(1)) == n_expected and int(ok.group(1)) == n_expected
    table = re.search(r'<table id="success-table">.*?</table>', dom, re.S)
    assert table is not None
    rows = re.findall(r"<tr>(.*?)</tr>", table.group(0), re.S)
    assert len(rows) == 1 + len(TASKS) + 1  # header, tasks, average
    for t in TASKS:
        assert f"<code>{t}</code>" in table.group(0)


def test_screenshot_shows_a_rendered_page(report, tmp_path):
    shot = tmp_path / "report.png"
    proc = _chromium(tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,2000", report.as_uri())
    assert shot.is_file(), proc.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB"))  # (y, x, 3)
    assert img.shape == (2000, 1200, 3)
    colours = np.unique(img.reshape(-1, 3), axis=0)
    assert len(colours) > 200, f"only {len(colours)} colours: the page did not render"
    # The plots (coloured lines on white) lie in the first 2000 px: saturated pixels are present.
    rgb = img.astype(int)
    saturated = (rgb.max(axis=2) - rgb.min(axis=2)) > 80
    assert saturated.mean() > 0.002
