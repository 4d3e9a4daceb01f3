"""`spillover serve`: its options, the controller config they override, and the control plane they make."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spillover.cli.options import host_port, positive_int, seconds
from spillover.names import FAILOVER_REMOTE
from spillover.server import event_loop

if TYPE_CHECKING:
    from spillover.app import ControllerConfig, Security

__all__ = ["add_parser", "controller_config", "run"]


def add_parser(commands: Any) -> None:
    serve = commands.add_parser("serve", help="run the xDS server")
    serve.add_argument("--xds-address", default="127.0.0.1:18000", type=host_port, help="gRPC ADS listen address")
    serve.add_argument(
        "--admin-address", type=host_port, help="admin HTTP address (default 127.0.0.1:19000, or the config's metricsAddr)"
    )
    serve.add_argument(
        "--config", type=Path, metavar="FILE",
        help="a controller config in Beamlit's shape (namespaces, defaultRemoteBackend, metricInformer, admission, "
        "...); flags override it",
    )
    source = serve.add_mutually_exclusive_group(required=True)
    source.add_argument("--policies", type=Path, help="a directory of ModelDeployment YAML files (watched)")
    source.add_argument("--resources", type=Path, help="a YAML/JSON file of Envoy resources (each with @type)")
    source.add_argument(
        "--kubernetes", action="store_true",
        help="watch ModelDeployment resources (and their Services, EndpointSlices, Secrets, workloads) in a cluster",
    )
    _add_kubernetes_options(serve)
    serve.add_argument(
        "--listen", type=host_port,
        help="the Envoy listener serving models (with --policies or --kubernetes; default 0.0.0.0:10000, or the "
        "config's proxyService.port)",
    )
    serve.add_argument("--prometheus-url", help="Prometheus for `source: prometheus` metrics, e.g. http://prometheus:9090")
    serve.add_argument("--prometheus-token-file", type=Path, help="a file holding a bearer token for Prometheus")
    serve.add_argument(
        "--evaluation-interval", type=seconds, default=0.5, help="how often metrics are sampled and models decided (s)"
    )
    _add_safety_options(serve)
    serve.add_argument("--debounce", type=seconds, default=0.1, help="quiet period before a push (s)")
    serve.add_argument("--debounce-max", type=seconds, default=1.0, help="longest delay of a push (s)")
    serve.add_argument(
        "--group-by",
        default="cluster",
        help="how Envoys share snapshots: 'cluster' (node.cluster) or 'metadata:KEY' (a node metadata string)",
    )
    serve.add_argument(
        "--split-weights", choices=("route", "runtime"),
        help="where each model's local/remote split goes: 'route' (default, or the config's splitWeights) in "
        "its route, so a flip resends the route table; 'runtime' in one Runtime resource over RTDS, the routes "
        "staying the same (the Envoys' bootstrap needs its layer: spillover bootstrap --split-weights runtime)",
    )
    serve.add_argument(
        "--failover-remote", choices=FAILOVER_REMOTE,
        help="how a failover model's local-first aggregates reach its remote: 'internal-listener' (default, or "
        "the config's failoverRemote) through an Envoy internal listener, their local attempts then cheaper; "
        "'in-place' the remote cluster itself, for Envoys whose bootstrap lacks envoy.bootstrap.internal_listener "
        "(they refuse the internal listeners, and would lose the failover to the remote)",
    )
    serve.add_argument(
        "--xds-workers", type=positive_int, default=1, metavar="N",
        help="serve the xDS streams from N worker processes sharing the port (SO_REUSEPORT); snapshots are "
        "still built once, here. Default 1: the streams are served in this process (see benchmarks/results/workers.md)",
    )
    serve.add_argument(
        "--gc", choices=("tuned", "python"), default="python",
        help="garbage collection: 'python' (default) keeps Python's; 'tuned' collects rarely and freezes long-lived "
        "state after start-up and each push: far less collector time per push with thousands of Envoys, but "
        "cyclic garbage waits until the frozen objects double, and forgetting thousands of node groups at once "
        "was ~2x slower (benchmarks/results/streams.md)",
    )
    serve.add_argument(
        "--event-loop", choices=event_loop.KINDS, default=event_loop.DEFAULT,
        help=f"the event loop of this process and of the xDS workers (default {event_loop.DEFAULT}; "
        "benchmarks/results/peer-1000-uvloop-notes.md)",
    )
    _add_security_options(serve)


def _add_kubernetes_options(serve: argparse.ArgumentParser) -> None:
    kube = serve.add_argument_group("Kubernetes mode (--kubernetes)")
    kube.add_argument(
        "--namespace", action="append", default=[], metavar="NS",
        help="watch this namespace (repeatable); default: every namespace",
    )
    kube.add_argument("--kubeconfig", type=Path, help="a kubeconfig file; default: the in-cluster service account")
    kube.add_argument("--context", help="the kubeconfig context to use (default: its current context)")
    kube.add_argument(
        "--beamlit", action="store_true", default=None,
        help="also watch Beamlit's deployment.beamlit.com/v1alpha1 ModelDeployments",
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
        "--no-leader-election", dest="leader_election", action="store_false", default=None,
        help="write status without a Lease (a single replica)",
    )
    kube.add_argument("--lease-duration", type=seconds, default=15.0,
                      help="how long a replica's Leases hold without renewal (leader election, fleet membership; s)")
    kube.add_argument("--renew-deadline", type=seconds, default=10.0,
                      help="a replica that could not renew for this long stops leading and hands its Envoys over (s)")
    kube.add_argument("--retry-period", type=seconds, default=2.0, help="how often the leader Lease is tried (s)")
    fleet = serve.add_argument_group(
        "fleet (--kubernetes with leader election: several replicas, one decision, limits for the whole fleet)"
    )
    fleet.add_argument("--no-fleet", dest="fleet", action="store_false",
                       help="each replica counts and decides alone (no membership Leases, no decision table)")
    fleet.add_argument("--fleet-address", type=host_port, metavar="HOST:PORT",
                       help="the peer channel: where other replicas read this one's Envoy readings (needs "
                       "--fleet-token-file); without it the leader decides only from what Kubernetes and "
                       "Prometheus tell, and other replicas' Envoy metrics are unknown")
    fleet.add_argument("--fleet-advertise", metavar="HOST",
                       help="the address other replicas reach this one at (default: $POD_IP)")
    fleet.add_argument("--fleet-token-file", type=Path, metavar="FILE",
                       help="the peer channel's shared token (a Secret's file; first line sent, any line accepted)")
    fleet.add_argument("--fleet-heartbeat", type=seconds,
                       help="how often a replica renews its membership Lease (s; default renew deadline / 2, at most 5)")


def _add_safety_options(serve: argparse.ArgumentParser) -> None:
    safety = serve.add_argument_group("safety (restarts and policy changes)")
    safety.add_argument(
        "--state-file", type=Path,
        help="where decisions and group sizes survive restarts (default with --policies: beside the directory, "
        "DIR.spillover-state.json; with --kubernetes decisions come back from the status, groups need this)",
    )
    safety.add_argument("--no-state-file", dest="persist", action="store_false", help="keep nothing across restarts")
    safety.add_argument(
        "--replica-grace", type=seconds, default=60.0,
        help="after a start, a group counts at least the Envoys it had before for this long (s)",
    )
    safety.add_argument(
        "--removal-grace", type=seconds, default=30.0,
        help="a change removing more than half of the models is held this long before it applies (s; 0: never)",
    )
    safety.add_argument(
        "--max-policy-bytes", type=int, default=1 << 20, help="policy files larger than this are refused (bytes)"
    )
    safety.add_argument(
        "--policy-parse-timeout", type=seconds, default=2.0,
        help="a policy file still being read or parsed after this long keeps its last good config meanwhile (s)",
    )


def _add_security_options(serve: argparse.ArgumentParser) -> None:
    xds = serve.add_argument_group(
        "xDS security",
        "mTLS needs all three of --xds-tls-cert, --xds-tls-key and --xds-client-ca (files are re-read when they "
        "change). Without them the xDS port speaks plain text, which only a loopback address gets without "
        "--insecure-xds.",
    )
    xds.add_argument("--xds-tls-cert", type=Path, metavar="FILE", help="the xDS server's certificate chain (PEM)")
    xds.add_argument("--xds-tls-key", type=Path, metavar="FILE", help="its private key (PEM)")
    xds.add_argument(
        "--xds-client-ca", type=Path, metavar="FILE", help="the CA bundle that signs the Envoys' client certificates"
    )
    xds.add_argument(
        "--insecure-xds", action="store_true",
        help="allow plain-text xDS on a non-loopback address (anyone who reaches it reads every config and secret)",
    )
    xds.add_argument(
        "--admission", type=Path, metavar="FILE",
        help="which client identities may use which node groups and node ids (YAML; default: the config's "
        "admission section, else every client)",
    )
    xds.add_argument("--max-groups", type=positive_int, default=1024, help="node groups at once (default 1024)")
    xds.add_argument(
        "--group-grace", type=seconds, default=120.0,
        help="how long a node group without streams is kept before it is forgotten (s, default 120)",
    )
    xds.add_argument(
        "--max-request-bytes", type=positive_int, default=4 * 1024 * 1024,
        help="the largest DiscoveryRequest accepted (default 4 MiB)",
    )
    xds.add_argument(
        "--max-node-metadata-bytes", type=positive_int, default=64 * 1024,
        help="the largest node metadata accepted (default 64 KiB)",
    )
    admin = serve.add_argument_group(
        "admin endpoint",
        "/healthz, /readyz and /metrics are always open. The debug views need a credential when one is given, "
        "and always when --admin-address is not loopback (without one they are closed).",
    )
    admin.add_argument("--admin-token-file", type=Path, metavar="FILE", help="a bearer token for the debug views")
    admin.add_argument("--admin-tls-cert", type=Path, metavar="FILE", help="serve the admin endpoint over HTTPS")
    admin.add_argument("--admin-tls-key", type=Path, metavar="FILE")
    admin.add_argument(
        "--admin-client-ca", type=Path, metavar="FILE",
        help="client certificates signed by this CA may read the debug views (with --admin-tls-cert/-key)",
    )


def _group_of(spec: str) -> Any:
    from spillover.server.service import group_by_cluster, group_by_metadata

    if spec == "cluster":
        return group_by_cluster
    if spec.startswith("metadata:") and spec.removeprefix("metadata:"):
        return group_by_metadata(spec.removeprefix("metadata:"))
    raise SystemExit(f"--group-by: {spec!r} is not 'cluster' or 'metadata:KEY'")


def controller_config(path: Path | None, command: str) -> ControllerConfig | None:
    """The controller config of --config (None without one); an unusable one is each of its errors on
    stderr and exit status 2."""
    if path is None:
        return None
    from spillover import app

    try:
        config = app.load_controller_config(path)
    except app.ConfigError as error:
        for problem in error.errors:
            print(f"spillover {command}: --config {problem}", file=sys.stderr)
        raise SystemExit(2) from None
    for note in config.notes:
        logging.getLogger("spillover.config").info("%s: %s", path, note)
    return config


def _security(args: argparse.Namespace, config: ControllerConfig | None) -> Security:
    from spillover import app

    try:
        return app.security_options(
            xds_host=args.xds_address[0],
            xds_tls=(args.xds_tls_cert, args.xds_tls_key, args.xds_client_ca),
            insecure_xds=args.insecure_xds,
            admission_file=args.admission,
            admission=config.admission if config is not None else None,
            max_groups=args.max_groups,
            group_grace=args.group_grace,
            max_request_bytes=args.max_request_bytes,
            max_node_metadata_bytes=args.max_node_metadata_bytes,
            admin_token_file=args.admin_token_file,
            admin_tls=(args.admin_tls_cert, args.admin_tls_key, args.admin_client_ca),
        )
    except ValueError as error:
        print(f"spillover serve: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def run(args: argparse.Namespace) -> int:
    from spillover import app
    from spillover.policy.defaults import NO_DEFAULTS

    config = controller_config(args.config, "serve")
    push = app.PushOptions(
        debounce=args.debounce, max_delay=max(args.debounce, args.debounce_max), group_of=_group_of(args.group_by),
        xds_workers=args.xds_workers, event_loop=args.event_loop,
    )
    if config is not None and args.resources is not None:
        print("spillover serve: --config applies to --policies and --kubernetes", file=sys.stderr)
        return 2
    # The command line wins over the file, which wins over the built-in defaults.
    admin = args.admin_address or (config.admin_address if config else None) or ("127.0.0.1", 19000)
    listen = args.listen or (("0.0.0.0", config.listen_port) if config and config.listen_port else ("0.0.0.0", 10000))
    prometheus_url = args.prometheus_url or (config.prometheus_url if config else None)
    defaults = config.defaults if config else NO_DEFAULTS
    split_weights = args.split_weights or (config.split_weights if config else None) or "route"
    if args.resources is not None and args.split_weights is not None:
        print("spillover serve: --split-weights applies to --policies and --kubernetes", file=sys.stderr)
        return 2
    failover_remote = args.failover_remote or (config.failover_remote if config else None) or FAILOVER_REMOTE[0]
    if args.resources is not None and args.failover_remote is not None:
        print("spillover serve: --failover-remote applies to --policies and --kubernetes", file=sys.stderr)
        return 2
    if args.max_policy_bytes < 1:
        print("spillover serve: --max-policy-bytes must be >= 1", file=sys.stderr)
        return 2
    safety = app.SafetyOptions(
        state_file=args.state_file,
        persist=args.persist,
        replica_grace=args.replica_grace,
        removal_grace=args.removal_grace,
        max_policy_bytes=args.max_policy_bytes,
        policy_parse_timeout=args.policy_parse_timeout,
    )
    security = _security(args, config)
    if args.policies is not None or args.kubernetes:
        if not args.kubernetes and (args.namespace or args.kubeconfig or args.context or args.beamlit):
            print("spillover serve: --namespace/--kubeconfig/--context/--beamlit need --kubernetes", file=sys.stderr)
            return 2
        if args.policies is not None and not args.policies.is_dir():
            print(f"spillover serve: --policies {args.policies}: no such directory", file=sys.stderr)
            return 2
        token = None
        if args.prometheus_token_file is not None:
            try:
                token = args.prometheus_token_file.read_text().strip()
            except OSError as error:
                print(f"spillover serve: --prometheus-token-file: {error.strerror}", file=sys.stderr)
                return 2
        if args.kubernetes:
            namespaces = args.namespace or list(config.namespaces or ()) if config else args.namespace
            beamlit = args.beamlit if args.beamlit is not None else bool(config and config.beamlit)
            leader_election = args.leader_election
            if leader_election is None:
                leader_election = config.leader_election if config and config.leader_election is not None else True
            if args.fleet_address is not None and args.fleet_token_file is None:
                print("spillover serve: --fleet-address needs --fleet-token-file", file=sys.stderr)
                return 2
            if not args.lease_duration > args.renew_deadline > args.retry_period * 1.2 > 0:
                print("spillover serve: need --lease-duration > --renew-deadline > 1.2 x --retry-period > 0",
                      file=sys.stderr)
                return 2
            kube = app.KubernetesOptions(
                kubeconfig=args.kubeconfig,
                context=args.context,
                namespaces=namespaces,
                beamlit=beamlit,
                aibrix=args.aibrix,
                leader_election=leader_election,
                lease_namespace=args.leader_election_namespace,
                lease_name=args.leader_election_name,
                defaults=defaults,
                lease_duration=args.lease_duration,
                renew_deadline=args.renew_deadline,
                retry_period=args.retry_period,
                fleet=app.FleetPeering(
                    enabled=args.fleet, address=args.fleet_address, advertise=args.fleet_advertise or "",
                    token_file=args.fleet_token_file, heartbeat=args.fleet_heartbeat,
                ),
            )
            try:
                plane = app.kubernetes_control_plane(
                    kube, listen, prometheus_url=prometheus_url, prometheus_token=token,
                    evaluation_interval=args.evaluation_interval, push=push, safety=safety, security=security,
                    split_weights=split_weights, failover_remote=failover_remote,
                )
            except Exception as error:  # no kubeconfig, not in a cluster, a broken kubeconfig
                print(f"spillover serve: --kubernetes: {error}", file=sys.stderr)
                return 2
        else:
            plane = app.policy_control_plane(
                args.policies, listen, prometheus_url=prometheus_url, prometheus_token=token,
                evaluation_interval=args.evaluation_interval, push=push, defaults=defaults, safety=safety,
                security=security, split_weights=split_weights, failover_remote=failover_remote,
            )
    else:
        try:
            plane = app.resources_control_plane(args.resources, push, security=security)
        except (OSError, ValueError) as error:
            print(f"spillover serve: {error}", file=sys.stderr)
            return 2
    xds_host, xds_port = args.xds_address
    admin_host, admin_port = admin
    if args.gc == "tuned":  # opt-in: see the trade-off in spillover.server.gc_tuning
        from spillover.server import gc_tuning

        gc_tuning.install()
    try:
        event_loop.run(app.run_until_signalled(plane, f"{xds_host}:{xds_port}", admin_host, admin_port), args.event_loop)
    except (ValueError, OSError) as error:  # unusable TLS files, a port that cannot be bound
        print(f"spillover serve: {error}", file=sys.stderr)
        return 2
    return 0
