"""The `spillover` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from spillover import __version__


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r}: expected HOST:PORT with a port 0-65535")
    return host, int(port)


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a number of seconds") from None
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"{value!r}: must be >= 0")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spillover", description="Envoy control plane for AI model serving")
    parser.add_argument("--version", action="version", version=f"spillover {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the xDS server")
    serve.add_argument("--xds-address", default="127.0.0.1:18000", type=_host_port, help="gRPC ADS listen address")
    serve.add_argument("--admin-address", default="127.0.0.1:19000", type=_host_port, help="admin HTTP address")
    source = serve.add_mutually_exclusive_group(required=True)
    source.add_argument("--policies", type=Path, help="a directory of ModelDeployment YAML files (watched)")
    source.add_argument("--resources", type=Path, help="a YAML/JSON file of Envoy resources (each with @type)")
    source.add_argument(
        "--kubernetes", action="store_true",
        help="watch ModelDeployment resources (and their Services, EndpointSlices, Secrets, workloads) in a cluster",
    )
    kube = serve.add_argument_group("Kubernetes mode (--kubernetes)")
    kube.add_argument(
        "--namespace", action="append", default=[], metavar="NS",
        help="watch this namespace (repeatable); default: every namespace",
    )
    kube.add_argument("--kubeconfig", type=Path, help="a kubeconfig file; default: the in-cluster service account")
    kube.add_argument("--context", help="the kubeconfig context to use (default: its current context)")
    kube.add_argument(
        "--beamlit", action="store_true", help="also watch Beamlit's deployment.beamlit.com/v1alpha1 ModelDeployments"
    )
    kube.add_argument(
        "--no-aibrix", dest="aibrix", action="store_false",
        help="do not serve pods labelled model.aibrix.ai/name without a ModelDeployment",
    )
    kube.add_argument(
        "--leader-election-namespace", help="where the Lease lives (default: $POD_NAMESPACE, else spillover-system)"
    )
    kube.add_argument("--leader-election-name", default="spillover-leader", help="the Lease's name")
    kube.add_argument(
        "--no-leader-election", dest="leader_election", action="store_false",
        help="write status without a Lease (a single replica)",
    )
    serve.add_argument(
        "--listen", default="0.0.0.0:10000", type=_host_port,
        help="the Envoy listener serving models (with --policies or --kubernetes)",
    )
    serve.add_argument("--prometheus-url", help="Prometheus for `source: prometheus` metrics, e.g. http://prometheus:9090")
    serve.add_argument("--prometheus-token-file", type=Path, help="a file holding a bearer token for Prometheus")
    serve.add_argument(
        "--evaluation-interval", type=_seconds, default=0.5, help="how often metrics are sampled and models decided (s)"
    )
    serve.add_argument("--debounce", type=_seconds, default=0.1, help="quiet period before a push (s)")
    serve.add_argument("--debounce-max", type=_seconds, default=1.0, help="longest delay of a push (s)")
    serve.add_argument(
        "--group-by",
        default="cluster",
        help="how Envoys share snapshots: 'cluster' (node.cluster) or 'metadata:KEY' (a node metadata string)",
    )

    boot = commands.add_parser("bootstrap", help="print an Envoy bootstrap pointing at spillover")
    boot.add_argument("--node-id", required=True)
    boot.add_argument("--cluster", required=True, help="the node group (Envoys of one group share config)")
    boot.add_argument("--xds-address", required=True, help="HOST:PORT of spillover's xDS server")
    boot.add_argument("--admin-port", type=int, default=9901)
    boot.add_argument("--admin-address", default="127.0.0.1")
    boot.add_argument("--delta", action="store_true", help="use incremental (Delta) xDS")

    validate = commands.add_parser("validate", help="check ModelDeployment documents offline")
    validate.add_argument("files", nargs="+", help="YAML files (multi-document)")

    status = commands.add_parser("status", help="show connected proxies and their sync state")
    status.add_argument("--admin-address", default="127.0.0.1:19000", type=_host_port)
    status.add_argument("--json", action="store_true", help="print the raw JSON")

    load = commands.add_parser("load", help="send concurrent requests to a model and show who served them")
    load.add_argument("--url", default="http://127.0.0.1:10000/v1/chat/completions")
    load.add_argument("--model", default="demo-llm")
    load.add_argument("--concurrency", type=int, default=16)
    load.add_argument("--seconds", type=_seconds, default=20.0)

    demo = commands.add_parser("demo", help="the embedded default: upstreams, spillover and a real Envoy")
    demo.add_argument("--listen-port", type=int, default=10000)
    demo.add_argument("--xds-address", default="127.0.0.1:18000", type=_host_port)
    demo.add_argument("--admin-address", default="127.0.0.1:19000", type=_host_port)
    demo.add_argument("--envoy-admin-port", type=int, default=9901)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler = {
        "serve": _serve,
        "bootstrap": _bootstrap,
        "status": _status,
        "validate": _validate,
        "demo": _demo,
        "load": _load,
    }[args.command]
    return handler(args)


def _group_of(spec: str) -> Any:
    from spillover.server.service import group_by_cluster, group_by_metadata

    if spec == "cluster":
        return group_by_cluster
    if spec.startswith("metadata:") and spec.removeprefix("metadata:"):
        return group_by_metadata(spec.removeprefix("metadata:"))
    raise SystemExit(f"--group-by: {spec!r} is not 'cluster' or 'metadata:KEY'")


def _serve(args: argparse.Namespace) -> int:
    from spillover.app import ControlPlane, StaticResourcesFile, run_until_signalled

    options: dict[str, Any] = {
        "debounce": args.debounce,
        "max_delay": max(args.debounce, args.debounce_max),
        "group_of": _group_of(args.group_by),
    }
    if args.policies is not None or args.kubernetes:
        policies: Any = args.policies
        api: Any = None
        if args.kubernetes:
            try:
                policies, api = _kubernetes_source(args)
            except Exception as error:  # no kubeconfig, not in a cluster, a broken kubeconfig
                print(f"spillover serve: --kubernetes: {error}", file=sys.stderr)
                return 2
        elif args.namespace or args.kubeconfig or args.context or args.beamlit:
            print("spillover serve: --namespace/--kubeconfig/--context/--beamlit need --kubernetes", file=sys.stderr)
            return 2
        token = None
        if args.prometheus_token_file is not None:
            try:
                token = args.prometheus_token_file.read_text().strip()
            except OSError as error:
                print(f"spillover serve: --prometheus-token-file: {error.strerror}", file=sys.stderr)
                return 2
        plane = policy_control_plane(
            policies,
            args.listen,
            prometheus_url=args.prometheus_url,
            prometheus_token=token,
            evaluation_interval=args.evaluation_interval,
            **options,
        )
        if api is not None:
            from spillover.kube.publishing import StatusPublishing

            plane.services.append(
                StatusPublishing(
                    api,
                    plane.provider.status_sinks,
                    leader_election=args.leader_election,
                    lease_namespace=args.leader_election_namespace,
                    lease_name=args.leader_election_name,
                    beamlit=args.beamlit,
                )
            )
    else:
        try:
            provider = StaticResourcesFile(args.resources)
        except (OSError, ValueError) as error:
            print(f"spillover serve: {error}", file=sys.stderr)
            return 2
        plane = ControlPlane(provider, **options)
    xds_host, xds_port = args.xds_address
    admin_host, admin_port = args.admin_address
    asyncio.run(run_until_signalled(plane, f"{xds_host}:{xds_port}", admin_host, admin_port))
    return 0


def _kubernetes_source(args: argparse.Namespace) -> Any:
    from spillover.kube.source import KubernetesPolicySource, api_client

    api = api_client(str(args.kubeconfig) if args.kubeconfig else None, context=args.context)
    source = KubernetesPolicySource(api, namespaces=args.namespace, beamlit=args.beamlit, aibrix=args.aibrix)
    return source, api


def policy_control_plane(
    policies: Any,
    listen: tuple[str, int],
    prometheus_url: str | None = None,
    prometheus_token: str | None = None,
    evaluation_interval: float = 0.5,
    **options: Any,
) -> Any:
    from aiohttp import web

    from spillover.admin import json_response
    from spillover.app import ControlPlane
    from spillover.metrics.prometheus import PrometheusSource
    from spillover.policies import PolicyProvider
    from spillover.translate import ir

    prometheus = PrometheusSource(prometheus_url, bearer_token=prometheus_token) if prometheus_url else None
    # `policies`: a directory of YAML files, or a PolicySource (e.g. spillover.kube.KubernetesPolicySource).
    provider = PolicyProvider(
        policies,
        ir.Listener(address=listen[0], port=listen[1]),
        evaluation_interval=evaluation_interval,
        prometheus=prometheus,
    )

    async def models(request: web.Request) -> web.Response:
        return json_response(provider.models_json())

    return ControlPlane(
        provider, registries=[provider.registry], debug_routes=[web.get("/debug/models", models)], **options
    )


def _bootstrap(args: argparse.Namespace) -> int:
    from spillover.bootstrap import render_bootstrap_yaml

    try:
        text = render_bootstrap_yaml(
            args.node_id,
            args.cluster,
            args.xds_address,
            admin_port=args.admin_port,
            admin_address=args.admin_address,
            delta=args.delta,
        )
    except ValueError as error:
        print(f"spillover bootstrap: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


def _validate(args: argparse.Namespace) -> int:
    from spillover.policy import validate_main

    return validate_main(args.files)


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def _status(args: argparse.Namespace) -> int:
    host, port = args.admin_address
    base = f"http://{host}:{port}"
    try:
        payload = _get_json(f"{base}/debug/proxies")
    except (urllib.error.URLError, OSError) as error:
        print(f"spillover status: cannot read {base}/debug/proxies: {error}", file=sys.stderr)
        return 1
    try:
        models = _get_json(f"{base}/debug/models")
    except urllib.error.HTTPError as error:
        if error.code != 404:  # 404: a server without policies (serve --resources)
            raise
        models = None
    if args.json:
        print(json.dumps({**payload, "models": (models or {}).get("models", {})}, indent=2, sort_keys=True))
        return 0
    print(format_status(payload["proxies"]))
    if models is not None:
        print()
        print(format_models(models))
    return 0


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def format_models(payload: dict[str, Any]) -> str:
    """One row per model: state, remote share, time in state, each metric against its threshold, why."""
    rows = [["MODEL", "STATE", "REMOTE%", "IN STATE", "METRICS", "REASON"]]
    for name, model in sorted(payload.get("models", {}).items()):
        status = model.get("status") or {}
        metrics = []
        for metric in status.get("metrics") or []:
            value = metric.get("value")
            shown = "?" if value is None or metric.get("condition") == "unknown" else f"{value:g}"
            metrics.append(f"{metric['name']}={shown}/{metric['threshold']:g}")
        in_state = status.get("timeInState")
        rows.append(
            [
                name,
                model.get("state", ""),
                str(model.get("remote_share", 0)),
                "-" if in_state is None else f"{in_state:.0f}s",
                ",".join(metrics) or "-",
                (model.get("reason") or "")[:80] + (" (stale)" if model.get("stale") else ""),
            ]
        )
    errors = payload.get("errors") or []
    text = _table(rows) if len(rows) > 1 else "(no models)"
    return text + "".join(f"\ninvalid: {error}" for error in errors)


def format_status(proxies: list[dict[str, Any]]) -> str:
    """A table like `istioctl proxy-status`: one row per stream, one column per xDS type."""
    columns = ["CDS", "EDS", "SDS", "LDS", "RDS"]
    header = ["NODE", "GROUP", "MODE", "STATUS", *columns]
    rows = [header]
    for proxy in proxies:
        by_type = {state["type"]: state for state in proxy["types"].values()}
        cells = []
        for column in columns:
            state = by_type.get(column)
            # The acked version's prefix tells at a glance whether two proxies run the same config.
            cells.append("-" if state is None else f"{state['status']} {state['acked_version'][:8]}".rstrip())
        rows.append([proxy["node_id"], proxy["group"], proxy["mode"], proxy["status"], *cells])
    if len(rows) == 1:
        return _table(rows) + "\n(no proxies connected)"
    return _table(rows)


def _load(args: argparse.Namespace) -> int:
    from spillover.demo import run_load

    return asyncio.run(run_load(args.url, args.model, max(1, args.concurrency), args.seconds))


def _demo(args: argparse.Namespace) -> int:
    from spillover.demo import run_demo

    xds_host, xds_port = args.xds_address
    admin_host, admin_port = args.admin_address
    return asyncio.run(
        run_demo(
            listen_port=args.listen_port,
            xds_address=f"{xds_host}:{xds_port}",
            admin_host=admin_host,
            admin_port=admin_port,
            envoy_admin_port=args.envoy_admin_port,
        )
    )


if __name__ == "__main__":
    raise SystemExit(main())
