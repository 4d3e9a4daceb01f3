"""`spillover report`: a model's overflow episode (metric against threshold, remote share, requests local
and remote, 429s) from Prometheus as a PNG; the drawing is spillover.dashboards.report's, from the
dashboards' own queries."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from spillover.dashboards.report import ReportError, report

__all__ = ["report_command"]


def report_command(
    prometheus_url: str, model: str, since: str, out: Path, scrape_interval: str = "15s",
    token_file: Path | None = None,
) -> int:
    """Draws the episode into `out` and prints one line about it; the exit code (1 with one line on stderr
    for a Prometheus that can't answer, an unknown model, a file that can't be read or written, or no
    matplotlib: an optional dependency, absent from the image)."""
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        print("spillover report: drawing needs matplotlib: pip install 'spillover[report]'", file=sys.stderr)
        return 1
    try:
        token = token_file.read_text().strip() if token_file else None
        episode, _ = report(prometheus_url, model, since, out, scrape_interval=scrape_interval, token=token)
    except ReportError as error:
        print(f"spillover report: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"spillover report: {error.filename or out}: {error.strerror}", file=sys.stderr)
        return 1
    spans = episode.spans()
    spilled = sum(b - a for _, a, b in spans)
    print(f"{out}: model {episode.model}, {len(spans)} overflow stretch(es), {spilled:.0f}s spilling")
    return 0
