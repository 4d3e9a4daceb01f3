"""Rewrites the gateway bootstrap in templates/gateway.yaml from `spillover bootstrap`'s output, with
the xDS host, xDS port, Envoy admin port and the server name the gateways check as template
expressions: the mTLS bootstrap and its two SDS files (`tls.enabled`), and the plain-text one, each with
the RTDS layer of `--split-weights runtime` under `splitWeights: runtime`. Run it
when the bootstrap generator changes (and regenerate manifests/gateway.yaml's ConfigMap with its
annotated command and `--output-dir`):

    .venv/bin/python charts/spillover/bootstrap.py

tests/install/test_chart.py fails while the chart's bootstrap differs from what this writes.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent / "templates" / "gateway.yaml"
BEGIN = "\ndata:\n"
END = "---\napiVersion: apps/v1\n"
# Sentinels no real value collides with, swapped for the template expressions afterwards.
SENTINELS = {
    "xds-host.invalid": '{{ include "spillover.xdsHost" . }}',
    "xds-name.invalid": '{{ include "spillover.serverName" . }}',
    "54321": "{{ .Values.controller.xdsPort }}",
    "54322": "{{ .Values.gateway.adminPort }}",
    "54323": "{{ .Values.gateway.statsPort }}",
}
COMMAND = [
    sys.executable, "-m", "spillover", "bootstrap", "--node-id", "spillover-gateway", "--cluster",
    "spillover-gateway", "--xds-address", "xds-host.invalid:54321", "--admin-address", "0.0.0.0",
    "--admin-port", "54322", "--stats-port", "54323",
]
# Where the gateway Deployment mounts its client certificate's Secret and the ConfigMap.
TLS = ["--xds-tls-dir", "/etc/spillover/xds-tls", "--xds-sds-dir", "/etc/envoy", "--xds-server-name", "xds-name.invalid"]


RUNTIME = ["--split-weights", "runtime"]


def _indented(text: str) -> str:
    for sentinel, expression in SENTINELS.items():
        text = text.replace(sentinel, expression)
    return "".join(f"    {line}" if line.strip() else line for line in text.splitlines(keepends=True))


def _entry(name: str, text: str) -> str:
    return f"  {name}: |\n{_indented(text)}"


def _bootstrap_entry(route: str, runtime: str) -> str:
    """bootstrap.yaml, and the generator's RTDS layer after it under splitWeights=runtime. The `{{-` of the
    `if` eats the newline the `end` gives back, so with `route` the text is exactly the route bootstrap."""
    if not runtime.startswith(route) or runtime == route:
        # The template can only append: a layer anywhere else needs another way to template it.
        raise SystemExit("spillover bootstrap --split-weights runtime no longer only appends to the route bootstrap")
    layer = _indented(runtime[len(route):])
    return _entry("bootstrap.yaml", route) + '{{- if eq .Values.splitWeights "runtime" }}\n' + layer + "{{- end }}\n"


def _written(command: list[str]) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as directory:
        subprocess.run([*command, "--output-dir", directory], capture_output=True, text=True, check=True, timeout=60)
        return {p.name: p.read_text() for p in Path(directory).iterdir()}


def _printed(command: list[str]) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=60).stdout


def templated_data() -> str:
    """The ConfigMap's data: the mTLS files when tls.enabled, else the plain-text bootstrap."""
    written, written_runtime = _written([*COMMAND, *TLS]), _written([*COMMAND, *TLS, *RUNTIME])
    tls = [_bootstrap_entry(written.pop("bootstrap.yaml"), written_runtime.pop("bootstrap.yaml"))]
    if written_runtime != written:
        raise SystemExit("spillover bootstrap --split-weights runtime changed the SDS files: template them too")
    tls += [_entry(name, written[name]) for name in sorted(written)]
    plain = _bootstrap_entry(_printed(COMMAND), _printed([*COMMAND, *RUNTIME]))
    return "{{- if .Values.tls.enabled }}\n" + "".join(tls) + "{{- else }}\n" + plain + "{{- end }}\n"


def rewritten(text: str) -> str:
    start = text.index(BEGIN) + len(BEGIN)
    end = text.index(END, start)
    return text[:start] + templated_data() + text[end:]


def main() -> int:
    text = TEMPLATE.read_text()
    new = rewritten(text)
    if new != text:
        TEMPLATE.write_text(new)
        print(f"rewrote the bootstrap in {TEMPLATE}")
    else:
        print(f"{TEMPLATE}: bootstrap up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
