"""`spillover bootstrap`: an Envoy bootstrap that takes its configuration from spillover, over mTLS with
SDS files when asked."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    boot = commands.add_parser("bootstrap", help="print an Envoy bootstrap pointing at spillover")
    boot.add_argument("--node-id", required=True)
    boot.add_argument("--cluster", required=True, help="the node group (Envoys of one group share config)")
    boot.add_argument(
        "--xds-address", required=True, action="append",
        help="HOST:PORT of spillover's xDS server; repeat it for each replica (Envoy reconnects to the next one)",
    )
    boot.add_argument("--admin-port", type=int, default=9901)
    boot.add_argument("--admin-address", default="127.0.0.1")
    boot.add_argument("--delta", action="store_true", help="use incremental (Delta) xDS")
    boot.add_argument(
        "--split-weights", choices=("route", "runtime"), default="route",
        help="'runtime' for a spillover serving with --split-weights runtime: adds the RTDS layer Envoy reads "
        "the local/remote splits from (default: route)",
    )
    boot.add_argument(
        "--stats-port", type=int, default=0,
        help="also serve GET /stats/prometheus (only that) on this port, for Prometheus (default: none)",
    )
    boot.add_argument(
        "--xds-tls-dir", metavar="DIR",
        help="mTLS to spillover: DIR (on the Envoy's host) holds tls.crt and tls.key (Envoy's client certificate) "
        "and ca.crt (the CA of spillover's certificate), as a Kubernetes TLS Secret does; Envoy reloads them on change",
    )
    boot.add_argument(
        "--xds-sds-dir", metavar="DIR",
        help="where Envoy finds the two SDS files that point at those certificates (default: --output-dir)",
    )
    boot.add_argument(
        "--xds-server-name", metavar="NAME",
        help="SNI and the DNS SAN spillover's certificate must carry, the same for every replica (default: the "
        "host of the first --xds-address)",
    )
    boot.add_argument(
        "--output-dir", type=Path, metavar="DIR",
        help="write bootstrap.yaml (and, with --xds-tls-dir, the SDS files) into DIR instead of printing",
    )


def run(args: argparse.Namespace) -> int:
    from spillover.translate.bootstrap import (
        XdsTls,
        build_xds_tls_sds,
        dump_yaml,
        parse_host_port,
        render_bootstrap_yaml,
    )

    try:
        tls = None
        if args.xds_tls_dir is not None:
            sds_dir = args.xds_sds_dir or (str(args.output_dir.resolve()) if args.output_dir else None)
            if sds_dir is None:
                raise ValueError("--xds-tls-dir needs --xds-sds-dir or --output-dir (where the SDS files go)")
            host, _ = parse_host_port(args.xds_address[0])
            tls = XdsTls(tls_dir=args.xds_tls_dir, sds_dir=sds_dir, server_name=args.xds_server_name or host)
        elif args.xds_sds_dir or args.xds_server_name:
            raise ValueError("--xds-sds-dir and --xds-server-name need --xds-tls-dir")
        text = render_bootstrap_yaml(
            args.node_id,
            args.cluster,
            args.xds_address,
            admin_port=args.admin_port,
            admin_address=args.admin_address,
            delta=args.delta,
            stats_port=args.stats_port,
            tls=tls,
            split_weights=args.split_weights,
        )
    except ValueError as error:
        print(f"spillover bootstrap: {error}", file=sys.stderr)
        return 2
    if args.output_dir is None:
        sys.stdout.write(text)
        if tls is not None:
            print("spillover bootstrap: the SDS files it reads are written with --output-dir", file=sys.stderr)
        return 0
    files = {"bootstrap.yaml": text}
    if tls is not None:
        files.update({name: dump_yaml(document) for name, document in build_xds_tls_sds(tls).items()})
    try:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            (args.output_dir / name).write_text(content)
    except OSError as error:
        print(f"spillover bootstrap: --output-dir: {error}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(files)} to {args.output_dir}", file=sys.stderr)
    return 0
