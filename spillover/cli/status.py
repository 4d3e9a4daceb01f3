"""`spillover status`: the connected proxies, the fleet (who decides, every replica and the Envoys it
serves) and the models (state, share, metrics, copy, who decided), read from the admin endpoint's debug
views (with its credentials when they need one), once or redrawn in place (`--watch`). Only GETs of
/debug/proxies and /debug/models: it runs against any replica."""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from spillover.cli.options import host_port, seconds

__all__ = ["add_parser", "format_copy", "format_fleet", "format_models", "format_status", "run"]

# The admin endpoint is ours, but what it relays (node ids, NACK messages) came from clients.
_MAX_STATUS_BYTES = 64 * 1024 * 1024


def add_parser(commands: Any) -> None:
    status = commands.add_parser("status", help="show connected proxies and their sync state")
    status.add_argument("--admin-address", default="127.0.0.1:19000", type=host_port)
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    status.add_argument("--watch", action="store_true", help="refresh the tables in place until Ctrl-C")
    status.add_argument(
        "--interval", type=seconds, default=2.0, help="seconds between refreshes with --watch (default 2, at least 0.1)"
    )
    status.add_argument("--admin-token-file", type=Path, metavar="FILE", help="the admin endpoint's bearer token")
    status.add_argument(
        "--admin-ca", type=Path, metavar="FILE", help="talk HTTPS, verifying the admin endpoint with this CA"
    )
    status.add_argument("--admin-cert", type=Path, metavar="FILE", help="a client certificate for HTTPS")
    status.add_argument("--admin-key", type=Path, metavar="FILE", help="its key")


class _Client:
    """Where the admin endpoint is and how to show it who we are."""

    def __init__(self, args: argparse.Namespace) -> None:
        host, port = args.admin_address
        self.headers: dict[str, str] = {}
        if args.admin_token_file is not None:
            try:
                self.headers["Authorization"] = "Bearer " + args.admin_token_file.read_text().strip()
            except OSError as error:
                raise SystemExit(f"spillover status: --admin-token-file: {error.strerror}") from None
        self.context: ssl.SSLContext | None = None
        if args.admin_ca is None:
            self.base = f"http://{host}:{port}"
            return
        self.base = f"https://{host}:{port}"
        self.context = ssl.create_default_context(cafile=str(args.admin_ca))
        if args.admin_cert is not None or args.admin_key is not None:
            if args.admin_cert is None or args.admin_key is None:
                raise SystemExit("spillover status: --admin-cert and --admin-key go together")
            self.context.load_cert_chain(args.admin_cert, args.admin_key)

    def get_json(self, path: str) -> Any:
        request = urllib.request.Request(self.base + path, headers=self.headers)
        with urllib.request.urlopen(request, timeout=5, context=self.context) as response:
            return json.loads(response.read(_MAX_STATUS_BYTES))


class _Unreachable(Exception):
    pass


def _read_status(client: _Client) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(/debug/proxies, /debug/models or None for a server without policies)."""
    base = client.base
    try:
        payload = client.get_json("/debug/proxies")
    except urllib.error.HTTPError as error:
        hint = " (give --admin-token-file or a client certificate)" if error.code in (401, 403) else ""
        raise _Unreachable(f"{base}/debug/proxies answered {error.code}{hint}") from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise _Unreachable(f"cannot read {base}/debug/proxies: {error}") from None
    try:
        models = client.get_json("/debug/models")
    except urllib.error.HTTPError as error:
        if error.code != 404:  # 404: a server without policies (serve --resources)
            raise _Unreachable(f"cannot read {base}/debug/models: {error}") from None
        models = None
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise _Unreachable(f"cannot read {base}/debug/models: {error}") from None
    return payload, models


def _render(payload: dict[str, Any], models: dict[str, Any] | None, json_output: bool) -> str:
    in_fleet = models is not None and "fleet" in models
    if json_output:
        fleet = {"fleet": {"replica": models["fleet"], "envoys": payload.get("fleet", [])}} if models and in_fleet else {}
        return json.dumps({**payload, **fleet, "models": (models or {}).get("models", {})}, indent=2, sort_keys=True)
    text = format_status(payload["proxies"])
    if models is not None and in_fleet:
        text += "\n\n" + format_fleet(models["fleet"], payload.get("fleet", []))
    if models is not None:
        text += "\n\n" + format_models(models)
    return text


def run(args: argparse.Namespace) -> int:
    client = _Client(args)
    if args.watch:
        return _watch(client, max(0.1, args.interval), json_output=args.json)
    try:
        payload, models = _read_status(client)
    except _Unreachable as error:
        print(f"spillover status: {error}", file=sys.stderr)
        return 1
    print(_render(payload, models, args.json))
    return 0


# ANSI: cursor home, clear to the end of the line / of the screen. A redraw overwrites the last frame in
# place (no blank flash between frames, unlike clearing the whole screen first).
_HOME, _CLEAR_LINE, _CLEAR_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"


def _watch(client: _Client, interval: float, json_output: bool = False) -> int:
    """Redraws the proxy and model tables every ``interval`` s until Ctrl-C; an unreachable server is
    shown in the frame and retried. Not on a terminal, frames are printed one after another."""
    in_place = sys.stdout.isatty()
    if in_place:
        sys.stdout.write("\x1b[2J")
    try:
        while True:
            stamp = time.strftime("%H:%M:%S")
            try:
                body = _render(*_read_status(client), json_output)
            except _Unreachable as error:
                body = f"{error} (retrying)"
            header = f"spillover status {client.base}  every {interval:g}s  {stamp}  (Ctrl-C to stop)"
            frame = f"{header}\n\n{body}\n"
            if in_place:
                lines = frame.split("\n")
                sys.stdout.write(_HOME + "\n".join(line + _CLEAR_LINE for line in lines) + _CLEAR_BELOW)
            else:
                sys.stdout.write(frame + "\n")
            sys.stdout.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        if in_place:
            sys.stdout.write("\n")
        return 0


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def _shown(value: object, limit: int = 64) -> str:
    from spillover.server.bounds import printable

    return printable(str(value), limit)


def format_fleet(fleet: dict[str, Any], envoys: list[dict[str, Any]]) -> str:
    """Who decides, this replica's part, and every Envoy of the fleet with the replica that serves it."""
    role = "deciding" if fleet.get("deciding") else "following"
    if fleet.get("handed_over"):
        role = "cut off from the API server (its Envoys handed over)"
    elif not fleet.get("member"):
        role += ", its Lease not renewed"
    decisions = fleet.get("decisions") or {}
    lines = [
        f"fleet: this replica {fleet.get('identity', '?')} is {role}; leader {fleet.get('leader') or '(none)'}; "
        f"decisions of {decisions.get('leader') or '(none yet)'} (term {decisions.get('term', 0)}, "
        f"#{decisions.get('seq', 0)})",
    ]
    members = fleet.get("members") or []
    lines.append("replicas: " + ", ".join(
        [f"{fleet.get('identity')} (this one)"]
        + [f"{m['identity']}{'' if m.get('alive') else ' (gone)'}" for m in members]))
    rows = [["NODE", "GROUP", "REPLICA", "CONNECTED"]]
    for envoy in envoys:
        since = envoy.get("since")
        when = time.strftime("%H:%M:%S", time.localtime(since)) if isinstance(since, int | float) else "-"
        # Node ids and groups came from the Envoys (through other replicas' Leases too): escaped and cut.
        rows.append([_shown(envoy["node_id"]), _shown(envoy["group"]), ",".join(envoy.get("replicas") or []), when])
    lines.append(_table(rows) if len(rows) > 1 else "(no Envoy in the fleet)")
    return "\n".join(lines)


def format_models(payload: dict[str, Any]) -> str:
    """One row per model: state, remote share, time in state, each metric against its threshold, its copy on
    a destination cluster, who decided (in a fleet), why; then a line per copy."""
    fleet = "fleet" in payload
    rows = [["MODEL", "STATE", "REMOTE%", "IN STATE", "METRICS", "COPY", *(["DECIDED BY"] if fleet else []), "REASON"]]
    copies: list[str] = []
    for name, model in sorted(payload.get("models", {}).items()):
        status = model.get("status") or {}
        copy = status.get("destination")
        copy_cell = "-"
        if isinstance(copy, dict):
            ready, desired = copy.get("readyReplicas"), copy.get("desiredReplicas")
            counts = f" {'-' if ready is None else ready}/{'-' if desired is None else desired}"
            copy_cell = f"{copy.get('state', '?')}{counts}" + (f" {copy['phase']}" if copy.get("phase") else "")
            copies.append(format_copy(name, copy))
        metrics = []
        for metric in status.get("metrics") or []:
            value = metric.get("value")
            shown = "?" if value is None or metric.get("condition") == "unknown" else f"{value:g}"
            metrics.append(f"{metric['name']}={shown}/{metric['threshold']:g}")
        in_state = status.get("timeInState")
        applied = model.get("applied") or {}
        rows.append(
            [
                name,
                applied.get("state") or model.get("state", ""),
                str(applied.get("remote_share", model.get("remote_share", 0))),
                "-" if in_state is None else f"{in_state:.0f}s",
                ",".join(metrics) or "-",
                copy_cell,
                *([model.get("decided_by") or "-"] if fleet else []),
                (model.get("reason") or "")[:80] + (" (stale)" if model.get("stale") else ""),
            ]
        )
    errors = payload.get("errors") or []
    warnings = payload.get("warnings") or []
    text = _table(rows) if len(rows) > 1 else "(no models)"
    text += "".join(f"\n{line}" for line in copies)
    return text + "".join(f"\ninvalid: {error}" for error in errors) + "".join(f"\nwarning: {w}" for w in warnings)


def format_copy(model: str, copy: dict[str, Any]) -> str:
    """One line about a model's copy on its destination cluster."""
    where = f"{copy.get('namespace', '')}/{copy.get('name', '')}"
    parts = [f"copy of {model}: {copy.get('state', '?')} at {where} (kubeconfig Secret {copy.get('kubeconfigSecret')})"]
    if copy.get("address"):
        parts.append(f"address {copy['address']}")
    if copy.get("reachable") is False:
        parts.append("destination UNREACHABLE")
    if copy.get("reason"):
        parts.append(str(copy["reason"]))
    if copy.get("lastError"):
        parts.append(f"error: {copy['lastError']}")
    parts += [f"warning: {w}" for w in copy.get("warnings") or []]
    return "; ".join(parts)


def format_status(proxies: list[dict[str, Any]]) -> str:
    """A table like `istioctl proxy-status`: one row per stream, one column per xDS type; then the NACK
    message of each NACKed type (escaped and cut: it is the client's text), and a warning for each proxy that
    lacks the split weights' RTDS layer its group is served or the internal listener extension (its NACK said so)."""
    columns = ["CDS", "EDS", "SDS", "LDS", "RDS"]
    takes_layer = any(state.get("type") == "RTDS" for proxy in proxies for state in proxy["types"].values())
    if takes_layer or any(proxy.get("without_split_layer") for proxy in proxies):
        columns.insert(3, "RTDS")  # the split weights' layer (--split-weights runtime), before the routes
    header = ["NODE", "GROUP", "MODE", "STATUS", *columns]
    rows = [header]
    nacks: list[str] = []
    missing: list[str] = []
    for proxy in proxies:
        by_type = {state["type"]: state for state in proxy["types"].values()}
        cells = []
        for column in columns:
            state = by_type.get(column)
            if column == "RTDS" and proxy.get("without_split_layer"):
                cells.append("MISSING")  # its group is served the layer, its bootstrap lacks it
                continue
            # The acked version's prefix tells at a glance whether two proxies run the same config.
            cells.append("-" if state is None else f"{state['status']} {state['acked_version'][:8]}".rstrip())
        node = _shown(proxy["node_id"])
        if proxy.get("without_split_layer"):
            missing.append(
                f"warning: {node} has no RTDS layer for the split weights in its bootstrap: it routes every model "
                "all local (spillover bootstrap --split-weights runtime adds it)"
            )
        if proxy.get("without_internal_listener"):
            missing.append(
                f"warning: {node} has no envoy.bootstrap.internal_listener in its bootstrap: its failover models' "
                "local-first aggregates cannot reach the remote (serve its group --failover-remote in-place, or add "
                "the extension to its bootstrap)"
            )
        rows.append([node, _shown(proxy["group"]), proxy["mode"], proxy["status"], *cells])
        for short, state in sorted(by_type.items()):
            if state.get("status") == "NACKED" and state.get("nack_error"):
                nacks.append(f"NACK {node} {short}: {_shown(state['nack_error'], 300)}")
    if len(rows) == 1:
        return _table(rows) + "\n(no proxies connected)"
    return "\n".join([_table(rows), *nacks, *missing])
