"""Writes the dashboards as JSON: `python -m spillover.dashboards [--out DIR] [--check]`.

The JSON is committed in the repository's `dashboards/` directory (the Helm chart turns each file into a
ConfigMap for Grafana's sidecar); tests/dashboards fails when it differs from what this writes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as dashboard_b
from grafana_foundation_sdk.cog.encoder import JSONEncoder

from spillover.dashboards import control_plane, fleet, model

__all__ = ["DASHBOARDS", "DEFAULT_DIRECTORY", "main", "render"]

DASHBOARDS: dict[str, Callable[[], dashboard_b.Dashboard]] = {
    "spillover-fleet.json": fleet.build,
    "spillover-model.json": model.build,
    "spillover-control-plane.json": control_plane.build,
}
DEFAULT_DIRECTORY = Path(__file__).resolve().parents[2] / "dashboards"


def render(build: Callable[[], dashboard_b.Dashboard]) -> str:
    """The dashboard as Grafana's JSON model, byte-stable."""
    return json.dumps(build().build(), cls=JSONEncoder, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spillover.dashboards", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_DIRECTORY, help="directory to write (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a file differs")
    args = parser.parse_args(argv)
    stale = []
    for name, build in DASHBOARDS.items():
        path = args.out / name
        text = render(build)
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            args.out.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for path in stale:
        print(f"{path}: {'out of date' if args.check else 'written'}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
