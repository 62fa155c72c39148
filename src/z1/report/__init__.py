"""`z1 report RUN_DIR [RUN_DIR ...]`: self-contained HTML pages (and markdown twins) of z1 runs.

One run directory (`z1 demo`, `z1 rl` or `z1 sft` output) gets `report.html` / `report.md` written into
it (`write_report`); several get one side-by-side comparison page (`write_comparison`). Modules:
    load      reading a run directory into RunData (any subset of its files)
    stats     intervals on success rates and paired intervals on their changes
    sections  summary and success table; curves, episodes, details: the other sections
    plots     matplotlib figures as PNG bytes
    html      the page around the sections and the atomic writes
    run       one run's report; compare: the comparison page
"""

from z1.report.compare import write_comparison
from z1.report.load import RunData, load_run
from z1.report.run import render, write_report

__all__ = ["RunData", "load_run", "render", "write_comparison", "write_report"]
