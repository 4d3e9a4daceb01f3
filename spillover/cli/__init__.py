"""The `spillover` command line: the parser and the dispatch here, the commands with many options in
their own modules (`serve`, `bootstrap`, `status`), the argument types they share in `options`."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from spillover import __version__
from spillover.cli import bootstrap, serve, status
from spillover.cli.options import host_port, port, seconds
from spillover.cli.status import format_copy, format_models, format_status

__all__ = ["build_parser", "format_copy", "format_models", "format_status", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spillover", description="Envoy control plane for AI model serving")
    parser.add_argument("--version", action="version", version=f"spillover {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True)

    serve.add_parser(commands)
    bootstrap.add_parser(commands)

    validate = commands.add_parser("validate", help="check ModelDeployment documents offline")
    validate.add_argument("files", nargs="+", help="YAML files (multi-document)")
    validate.add_argument(
        "--config", type=Path, metavar="FILE", help="the controller config serve uses (its defaultRemoteBackend, ...)"
    )

    status.add_parser(commands)

    load = commands.add_parser("load", help="send concurrent requests to a model and show who served them")
    load.add_argument("--url", default="http://127.0.0.1:10000/v1/chat/completions")
    load.add_argument("--model", default="demo-llm")
    load.add_argument("--concurrency", type=int, default=16)
    load.add_argument("--seconds", type=seconds, default=20.0)

    report = commands.add_parser(
        "report", help="draw a model's overflow episode (metric, remote share, requests, 429s) as a PNG from Prometheus"
    )
    report.add_argument("--prometheus-url", required=True, help="a Prometheus that scrapes spillover and the Envoys")
    report.add_argument("--prometheus-token-file", type=Path, help="a file holding a bearer token for Prometheus")
    report.add_argument("--model", required=True, help="the model (its name, or its `model` label)")
    report.add_argument("--since", default="1h", help="how far back from now, e.g. 15m, 1h, 1h30m (default 1h)")
    report.add_argument("--scrape-interval", default="15s", help="Prometheus's scrape interval (sets the rate window)")
    report.add_argument("--out", type=Path, default=Path("episode.png"), help="the PNG to write")

    demo = commands.add_parser("demo", help="the embedded default: upstreams, spillover and a real Envoy")
    demo.add_argument("--listen-port", type=port, default=10000, help="Envoy's model listener (make run PORT=)")
    demo.add_argument("--xds-address", default="127.0.0.1:18000", type=host_port, help="make run XDS_PORT=")
    demo.add_argument("--admin-address", default="127.0.0.1:19000", type=host_port, help="make run ADMIN_PORT=")
    demo.add_argument("--envoy-admin-port", type=port, default=9901, help="make run ENVOY_ADMIN_PORT=")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler = {
        "serve": serve.run,
        "bootstrap": bootstrap.run,
        "status": status.run,
        "validate": _validate,
        "demo": _demo,
        "load": _load,
        "report": _report,
    }[args.command]
    return handler(args)


def _report(args: argparse.Namespace) -> int:
    from spillover.observe.report import report_command

    return report_command(args.prometheus_url, args.model, args.since, args.out, args.scrape_interval,
                          args.prometheus_token_file)


def _validate(args: argparse.Namespace) -> int:
    from spillover.policy import validate_main

    config = serve.controller_config(args.config, "validate")
    if config is None:
        return validate_main(args.files)
    return validate_main(args.files, config.defaults)


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
