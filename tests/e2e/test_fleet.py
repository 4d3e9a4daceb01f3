"""Several `spillover serve --kubernetes` replicas as one control plane: limits for the whole fleet, one
decision per model, a leader killed, a replica cut off from the API server.

Everything runs in a private network namespace (tests/harness/netns.py) with its own API server (etcd +
kube-apiserver), so that the model's pods have the addresses an EndpointSlice may hold (198.51.100.10 and
.11, port 80, real upstreams bound there) and nothing leaves the machine; the remote backend is a third
upstream at 198.51.100.20:80. Each Envoy's bootstrap lists every replica (through a forwarder per
replica, tests/harness/forwarder.py, which also lets a test choose where an Envoy connects first).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.harness.envoy import Envoy
from tests.harness.fleet import (
    LEASE_S,
    RENEW_S,
    bucket_rate,
    close,
    fleet_replica,
    kubeconfig_via,
    place_envoy,
    remote_weight,
    route_split,
    serving,
    token_file,
)
from tests.harness.forwarder import TcpForwarder
from tests.harness.kube import KubeCluster
from tests.harness.kube_fixtures import Crds, crd_documents
from tests.harness.kube_objects import endpoint_slice, model_deployment, service
from tests.harness.load import drive, post_model
from tests.harness.netns import private_network
from tests.harness.overflow_traffic import InFlight, backend_of
from tests.harness.polling import wait_until
from tests.harness.ports import free_port
from tests.harness.serve import Spillover
from tests.harness.slow_prometheus import SlowPrometheus
from tests.harness.upstream import HttpUpstream

pytestmark = pytest.mark.timeout(420)

POD_A, POD_B, REMOTE = "198.51.100.10", "198.51.100.11", "198.51.100.20"
MODEL = "llama"
MEASURED: dict[str, Any] = {}


@dataclass
class Net:
    cluster: KubeCluster
    workdir: Path
    token: Path
    upstreams: dict[str, HttpUpstream]


@pytest.fixture(scope="module")
def net(kube_binaries: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    apiserver, etcd = kube_binaries
    workdir = tmp_path_factory.mktemp("fleet")
    with private_network([POD_A, POD_B, REMOTE]):
        cluster = KubeCluster(workdir / "kube", apiserver_binary=apiserver, etcd_binary=etcd)
        upstreams: dict[str, HttpUpstream] = {}
        try:
            cluster.start()
            cluster.apply(crd_documents(Crds.MODELDEPLOYMENT))
            for name, host in (("pod-a", POD_A), ("pod-b", POD_B), ("remote", REMOTE)):
                upstreams[name] = HttpUpstream(name, host=host, port=80).start()
            yield Net(cluster, workdir, token_file(workdir), upstreams)
        finally:
            for upstream in upstreams.values():
                upstream.stop()
            cluster.stop()
        print(f"\nfleet measurements: {MEASURED}")


@pytest.fixture
def namespace(net: Net) -> str:
    name = f"fleet-{time.monotonic_ns() % 10**9}"
    net.cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    net.cluster.apply([
        service("pods", name, port=80, target=80),
        endpoint_slice("pods-1", name, "pods", 80, [(POD_A, True), (POD_B, True)]),
    ])
    return name


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[list[Any]]:
    """What a test starts (replicas, forwarders, stand-ins): stopped at teardown, replicas by pid."""
    started: list[Any] = []
    yield started
    for thing in reversed(started):
        if isinstance(thing, Spillover):
            thing.stop(signal.SIGKILL)
            print(f"--- {thing.name} ---\n{thing.log()[-5000:]}")
        else:
            thing.stop()


def apply_model(net: Net, namespace: str, *, rps: float | None = None, metrics: list[dict[str, Any]] | None = None,
                behavior: dict[str, Any] | None = None) -> None:
    offloading: dict[str, Any] = {"remoteBackend": {"host": f"{REMOTE}:80"},
                                  "behavior": {"percentage": 50, "bufferDuration": "2s", **(behavior or {})}}
    if metrics is not None:
        offloading["metrics"] = metrics
    spec: dict[str, Any] = {"serviceRef": {"name": "pods", "targetPort": 80}, "offloadingConfig": offloading}
    if rps is not None:
        spec["routing"] = {"profiles": {"default": {"routingStrategy": "round-robin", "requestsPerSecond": rps}}}
    net.cluster.apply(model_deployment(MODEL, MODEL, namespace, **spec))


def start_fleet(net: Net, namespace: str, started: list[Any], names: tuple[str, ...] = ("replica-a", "replica-b"),
                *, same_listener: bool = True, kubeconfigs: dict[str, Path] | None = None,
                **options: Any) -> tuple[list[Spillover], list[TcpForwarder]]:
    listen = free_port()
    replicas = []
    for name in names:
        kubeconfig = (kubeconfigs or {}).get(name, net.cluster.admin_kubeconfig)
        replica = fleet_replica(net.workdir, f"{name}-{namespace}", kubeconfig, namespace, net.token,
                                listen_port=listen if same_listener else None, evaluation_interval=0.2, **options)
        replica.env["POD_NAME"] = name
        replicas.append(replica)
        started.append(replica.launch())
        # One at a time: the first one started is the first leader (tests that need to know which).
        wait_until(replica.ready, timeout=40, message=f"{name} never became ready")
    proxies = [TcpForwarder(("127.0.0.1", r.xds_port)).start() for r in replicas]
    started.extend(proxies)
    wait_until(lambda: all(fleet_view(r)["member"] and len(fleet_view(r)["members"]) == len(replicas) - 1
                           for r in replicas), timeout=20, message="the replicas never saw each other")
    return replicas, proxies


def fleet_view(server: Spillover) -> dict[str, Any]:
    document: dict[str, Any] = server.get_json("/debug/fleet")
    return document


def leader_of(replicas: list[Spillover]) -> Spillover:
    def deciding() -> Spillover | None:
        found = [r for r in replicas if r.proc is not None and r.proc.poll() is None and fleet_view(r)["deciding"]]
        return found[0] if len(found) == 1 else None

    return wait_until(deciding, timeout=30, message="no single replica decides")


def applied(server: Spillover) -> dict[str, Any]:
    model: dict[str, Any] = server.model(MODEL)
    return model


# -- limits for the whole fleet ------------------------------------------------------------------------


def test_the_rate_limit_is_divided_among_every_envoy_of_the_fleet(
    net: Net, namespace: str, fleet: list[Any], envoy_factory: Callable[..., Envoy]
) -> None:
    apply_model(net, namespace, rps=20)
    (a, b), proxies = start_fleet(net, namespace, fleet)
    e1 = place_envoy(envoy_factory, "edge-1", 0, proxies, [a, b])
    e2 = place_envoy(envoy_factory, "edge-2", 1, proxies, [a, b])
    assert serving(a) == {"edge-1"} and serving(b) == {"edge-2"}
    wait_until(lambda: close(bucket_rate(e1, MODEL), 10) and close(bucket_rate(e2, MODEL), 10), timeout=10,
               message="each Envoy never got half of the 20 rps")
    # Every replica knows every Envoy, and who serves it.
    for replica in (a, b):
        fleet_proxies = {p["node_id"]: p["replicas"] for p in replica.get_json("/debug/proxies")["fleet"]}
        assert fleet_proxies == {"edge-1": ["replica-a"], "edge-2": ["replica-b"]}, fleet_proxies
        assert fleet_view(replica)["groups"] == {"edge": 2}

    # Both Envoys under load at once (they share the listener's port: SO_REUSEPORT spreads connections).
    before = {e.name: e.stats().get("http.spillover.downstream_rq_2xx", 0) for e in (e1, e2)}
    load = drive(a.listen_port, MODEL, 10.0, workers=6)
    per_envoy = {e.name: e.stats().get("http.spillover.downstream_rq_2xx", 0) - before[e.name] for e in (e1, e2)}
    first = min(t for t, _ in load.answers)
    total = (load.statuses[200] - 2 * 10) / (load.ended - first)  # less the two buckets full at the start
    MEASURED["two_replicas_admitted_rps"] = round(total, 2)
    MEASURED["two_replicas_per_envoy"] = per_envoy
    assert load.statuses[429] > 3 * load.statuses[200], load.statuses
    assert all(count > 50 for count in per_envoy.values()), per_envoy
    assert abs(total - 20) <= 2.0, f"the fleet admitted {total:.2f}/s, want 20/s ± 10% ({load.statuses})"

    # A third Envoy (on replica-a): every Envoy's share re-divided within 2 s.
    e3 = place_envoy(envoy_factory, "edge-3", 0, proxies, [a, b])
    connected = time.monotonic()
    wait_until(lambda: all(close(bucket_rate(e, MODEL), 20 / 3) for e in (e1, e2, e3)), timeout=5, interval=0.02,
               message="the shares were never re-divided among three")
    MEASURED["third_envoy_redivided_s"] = round(time.monotonic() - connected, 3)
    assert MEASURED["third_envoy_redivided_s"] <= 2.0

    # It leaves: back to halves within 2 s.
    assert e3.stop() == 0
    gone = time.monotonic()
    wait_until(lambda: all(close(bucket_rate(e, MODEL), 10) for e in (e1, e2)), timeout=5, interval=0.02,
               message="the shares were never re-divided among two")
    MEASURED["envoy_left_redivided_s"] = round(time.monotonic() - gone, 3)
    assert MEASURED["envoy_left_redivided_s"] <= 2.0

    # replica-b stops (a rollout): edge-2 moves to replica-a first, so no Envoy ever gets the whole 20/s.
    watcher = ConfigWatch([e1, e2]).start()
    fleet_remove = time.monotonic()
    assert b.stop() == 0, b.log()[-3000:]
    wait_until(lambda: serving(a) == {"edge-1", "edge-2"}, timeout=10, message="edge-2 never moved to replica-a")
    wait_until(lambda: fleet_view(a)["members"] == [], timeout=10, message="replica-b never left")
    time.sleep(1.0)
    rates = watcher.stop().rates()
    MEASURED["replica_left_rates_seen"] = sorted(set(rates))
    assert set(rates) == {10.0}, f"an Envoy's share changed while replica-b left: {Counter(rates)}"
    assert time.monotonic() - fleet_remove < 15


@dataclass
class ConfigWatch:
    """Reads the Envoys' rate limit and remote weight every 50 ms until stopped."""

    envoys: list[Envoy]
    model: str = MODEL
    seen: list[tuple[float, str, float | None, int]] = field(default_factory=list)  # (monotonic, envoy, rps, remote %)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> ConfigWatch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            for envoy in self.envoys:
                try:
                    self.seen.append((time.monotonic(), envoy.name, bucket_rate(envoy, self.model),
                                      remote_weight(route_split(envoy, self.model))))
                except Exception:
                    continue
            self._stop.wait(0.05)

    def stop(self) -> ConfigWatch:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        return self

    def rates(self) -> list[float]:
        return [round(rate, 3) for _, _, rate, _ in self.seen if rate is not None]

    def first(self, remote: int) -> float | None:
        return min((t for t, _, _, weight in self.seen if weight == remote), default=None)


# -- one decision per model ----------------------------------------------------------------------------


def first_seen(envoys: list[Envoy], want: Callable[[dict[str, int]], bool], timeout: float) -> dict[str, float]:
    """When (time.time()) each Envoy first held a route split that `want`s, polled every 20 ms."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < len(envoys) and time.monotonic() < deadline:
        for envoy in envoys:
            if envoy.name not in seen and want(route_split(envoy, MODEL)):
                seen[envoy.name] = time.time()
        time.sleep(0.02)
    assert len(seen) == len(envoys), f"only {sorted(seen)} ever got it"
    return seen


def transition_at(server: Spillover, state: str) -> float:
    from datetime import datetime

    model = wait_until(lambda: (m := server.model(MODEL))["status"].get("lastTransition", {}).get("to") == state and m,
                       timeout=30, message=f"the leader never decided {state}")
    return datetime.fromisoformat(model["status"]["lastTransition"]["at"].replace("Z", "+00:00")).timestamp()


def test_every_envoy_gets_the_leaders_decision_from_the_stats_of_every_envoy(
    net: Net, namespace: str, fleet: list[Any], envoy_factory: Callable[..., Envoy]
) -> None:
    # In-flight requests per ready local endpoint, read from Envoy's own stats (no Prometheus).
    apply_model(net, namespace, metrics=[{"metric": "concurrency", "target": 3}], behavior={"bufferDuration": "2s"})
    (a, b), proxies = start_fleet(net, namespace, fleet, same_listener=False)
    leader = leader_of([a, b])
    follower = b if leader is a else a
    e_leader = place_envoy(envoy_factory, "edge-leader", [a, b].index(leader), proxies, [a, b])
    e_follower = place_envoy(envoy_factory, "edge-follower", [a, b].index(follower), proxies, [a, b])
    wait_until(lambda: applied(leader)["status"]["metrics"][0].get("value") == 0, timeout=20,
               message="the leader never read the metric")
    assert applied(leader)["state"] == applied(follower)["state"] == "STANDBY"

    # Load through the follower's Envoy only: the leader sees it in the follower's readings.
    load = InFlight(follower.listen_port, MODEL, workers=8, delay_s=3.0).start()
    try:
        overflow_at = transition_at(leader, "OVERFLOW")
        seen = first_seen([e_leader, e_follower], lambda split: remote_weight(split) == 50, timeout=10)
        lags = {name: round(at - overflow_at, 3) for name, at in seen.items()}
        MEASURED["overflow_transition_to_envoys_s"] = lags
        assert all(lag <= 1.0 for lag in lags.values()), lags
        assert route_split(e_leader, MODEL) == route_split(e_follower, MODEL)
        decided = applied(follower)
        assert decided["state"] == "OVERFLOW" and decided["decided_by"] == leader.env["POD_NAME"], decided
        metric = applied(leader)["status"]["metrics"][0]
        assert metric["source"] == "envoy" and metric["value"] >= 3, metric
        # The follower's own view (its Envoy alone) never decided anything: its status is the leader's.
        assert fleet_view(follower)["deciding"] is False
        assert_status_shows_the_fleet(follower, leader, {"edge-leader": leader, "edge-follower": follower})
    finally:
        load.stop()
    standby_at = transition_at(leader, "STANDBY")
    seen = first_seen([e_leader, e_follower], lambda split: remote_weight(split) == 0, timeout=10)
    lags = {name: round(at - standby_at, 3) for name, at in seen.items()}
    MEASURED["standby_transition_to_envoys_s"] = lags
    assert all(lag <= 1.0 for lag in lags.values()), lags


def assert_status_shows_the_fleet(server: Spillover, leader: Spillover, serves: dict[str, Spillover]) -> None:
    """`spillover status` on any replica: who decides, which replica serves each Envoy, who decided the model."""
    shown = subprocess.run(
        [sys.executable, "-m", "spillover", "status", "--admin-address", f"127.0.0.1:{server.admin_port}"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    sections = {section.split()[0]: section for section in shown.split("\n\n") if section.strip()}
    fleet_section = sections["fleet:"]
    leader_name = leader.env["POD_NAME"]
    assert f"is following; leader {leader_name}; decisions of {leader_name}" in fleet_section, shown
    rows = [line.split() for line in fleet_section.splitlines()]
    header = rows.index(["NODE", "GROUP", "REPLICA", "CONNECTED"])
    served = {row[0]: row[2] for row in rows[header + 1:]}
    assert served == {node: replica.env["POD_NAME"] for node, replica in serves.items()}, shown
    model_rows = [line.split() for line in sections["MODEL"].splitlines()]
    assert "DECIDED" in model_rows[0], shown
    (row,) = [r for r in model_rows if r[0] == MODEL]
    assert row[1] == "OVERFLOW" and leader_name in row, shown


# -- the leader dies ---------------------------------------------------------------------------------------


@dataclass
class Requests:
    """Requests to the model through the shared listener from `workers` threads until stopped."""

    port: int
    workers: int = 6
    results: list[tuple[float, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Requests:
        for _ in range(self.workers):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                who = backend_of(post_model(self.port, MODEL))
            except OSError as error:
                who = f"error:{type(error).__name__}"
            with self._lock:
                self.results.append((time.monotonic(), who))
            self._stop.wait(0.01)

    def stop(self) -> Counter[str]:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        return Counter(who for _, who in self.results)


def first_true(conditions: dict[str, Callable[[], object]], timeout: float) -> dict[str, float]:
    """When (monotonic) each condition first held, all polled together every 50 ms."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < len(conditions) and time.monotonic() < deadline:
        for name, condition in conditions.items():
            if name not in seen:
                try:
                    if condition():
                        seen[name] = time.monotonic()
                except (OSError, AssertionError, KeyError):
                    pass
        time.sleep(0.05)
    assert len(seen) == len(conditions), f"never: {sorted(set(conditions) - set(seen))}"
    return seen


def watch_states(server: Spillover, until: Callable[[], bool], timeout: float,
                 until_state: str | None = None) -> list[tuple[float, str, str]]:
    """(monotonic time, applied state, who decided) of the model on `server`, every 50 ms, until `until()`
    or until a sample shows `until_state` (judged on the sample itself, so that the last one is in the list)."""
    seen: list[tuple[float, str, str]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            model = applied(server)
            seen.append((time.monotonic(), model["applied"]["state"], model.get("decided_by", "")))
        except (OSError, AssertionError, KeyError):
            pass
        if (until_state is not None and seen and seen[-1][1] == until_state) or (until_state is None and until()):
            return seen
        time.sleep(0.05)
    raise AssertionError(f"timed out; last states: {seen[-5:]}")


def test_the_leader_killed_in_overflow_the_decision_and_its_buffer_hold(
    net: Net, namespace: str, fleet: list[Any], envoy_factory: Callable[..., Envoy]
) -> None:
    buffer_s, calm_before_kill_s = 12.0, 5.0
    prometheus = SlowPrometheus(value=10.0, delay_s=0.0).start()
    fleet.append(prometheus)
    apply_model(net, namespace, metrics=[{"metric": "queue_length", "target": 5}],
                behavior={"bufferDuration": f"{buffer_s:g}s"})
    replicas, proxies = start_fleet(net, namespace, fleet, prometheus_url=prometheus.url)
    leader = leader_of(replicas)
    survivor = next(r for r in replicas if r is not leader)
    on_leader = place_envoy(envoy_factory, "edge-1", replicas.index(leader), proxies, replicas)
    on_survivor = place_envoy(envoy_factory, "edge-2", replicas.index(survivor), proxies, replicas)
    envoys = [on_leader, on_survivor]
    wait_until(lambda: all(remote_weight(route_split(e, MODEL)) == 50 for e in envoys), timeout=20,
               message="OVERFLOW never reached both Envoys")

    traffic = Requests(replicas[0].listen_port).start()
    before = {e.name: e.stats().get("http.spillover.downstream_rq_2xx", 0) for e in envoys}
    try:
        prometheus.value = 1.0  # calm: the buffer runs
        wait_until(lambda: applied(leader)["status"]["conditions"] and any(
            c["type"] == "BufferRunning" and c["status"] == "True" for c in applied(leader)["status"]["conditions"]),
            timeout=10, message="the buffer never started")
        calm_since = time.monotonic()
        time.sleep(calm_before_kill_s)

        leader.stop(signal.SIGKILL)
        killed = time.monotonic()
        states = watch_states(survivor, lambda: False, timeout=buffer_s + 3 * LEASE_S + 10, until_state="STANDBY")
        took_over = next(t for t, _, who in states if who == survivor.env["POD_NAME"])
        standby = next(t for t, state, _ in states if state == "STANDBY")
        time.sleep(1.0)
    finally:
        counts = traffic.stop()
    after = {e.name: e.stats().get("http.spillover.downstream_rq_2xx", 0) for e in envoys}
    MEASURED["kill_takeover_s"] = round(took_over - killed, 3)
    MEASURED["kill_standby_after_takeover_s"] = round(standby - took_over, 3)
    MEASURED["kill_requests"] = dict(counts)
    # Taken over within the lease duration (judged from the last renewal seen, plus a retry).
    assert took_over - killed <= LEASE_S + 2.0, MEASURED
    # Held: nothing but OVERFLOW until the buffer ran out; not shorter than the buffer ...
    assert {state for t, state, _ in states if t < standby} == {"OVERFLOW"}, states[:5]
    assert standby - calm_since >= buffer_s - 0.5, MEASURED
    # ... and not reset: what was left of it when the leader died, not a whole buffer after the takeover.
    assert standby - took_over <= buffer_s - calm_before_kill_s + 2.0, MEASURED
    # Its Envoy reconnected to the survivor; through either Envoy no request failed.
    assert serving(survivor) == {"edge-1", "edge-2"}
    assert all(after[e.name] - before[e.name] > 20 for e in envoys), (before, after)
    failed = {who: n for who, n in counts.items() if who not in ("pod-a", "pod-b", "remote")}
    assert not failed, counts


# -- a replica cut off from the API server -------------------------------------------------------------


def test_a_replica_cut_off_from_the_api_server_stops_leading_and_decides_nothing(
    net: Net, namespace: str, fleet: list[Any], envoy_factory: Callable[..., Envoy], tmp_path: Path
) -> None:
    prometheus = SlowPrometheus(value=1.0, delay_s=0.0).start()
    fleet.append(prometheus)
    apply_model(net, namespace, rps=20, metrics=[{"metric": "queue_length", "target": 5}])
    host, port = net.cluster.server_url.removeprefix("https://").rsplit(":", 1)
    api = TcpForwarder((host, int(port))).start()
    fleet.append(api)
    cut = kubeconfig_via(net.cluster.admin_kubeconfig, api, tmp_path / "cut.kubeconfig")
    replicas, proxies = start_fleet(net, namespace, fleet, kubeconfigs={"replica-a": cut},
                                    prometheus_url=prometheus.url)
    a, b = replicas
    assert leader_of(replicas) is a  # started first
    ea = place_envoy(envoy_factory, "edge-a", 0, proxies, replicas)
    eb = place_envoy(envoy_factory, "edge-b", 1, proxies, replicas)
    wait_until(lambda: all(close(bucket_rate(e, MODEL), 10) for e in (ea, eb)), timeout=10,
               message="each Envoy never got half of the 20 rps")
    watcher = ConfigWatch([ea, eb]).start()

    api.stop()  # replica-a can't reach the API server any more; replica-b still can
    cut_at = time.monotonic()
    prometheus.value = 10.0  # a breach: only a leader that can publish may act on it
    a_states = watch_states(a, lambda: not fleet_view(a)["leading"], timeout=RENEW_S + 5)
    stepped_down = time.monotonic()
    times = first_true({
        "took_over": lambda: fleet_view(b)["deciding"],
        "moved": lambda: serving(b) == {"edge-a", "edge-b"},
    }, timeout=LEASE_S + 10)
    took_over, moved = times["took_over"], times["moved"]
    wait_until(lambda: applied(b)["applied"]["state"] == "OVERFLOW", timeout=10, message="no OVERFLOW from replica-b")
    first_seen([ea, eb], lambda split: remote_weight(split) == 50, timeout=10)
    a_later = watch_states(a, lambda: True, timeout=2)
    ready = a.get("/readyz")
    # Under load the watcher's thread samples less often than first_seen polls: let it see the split too.
    wait_until(lambda: watcher.first(50) is not None, timeout=10, message="the watcher never saw the remote weight")
    watcher.stop()
    rates = watcher.rates()
    overflow_seen = watcher.first(50)
    MEASURED["partition"] = {"stepped_down_s": round(stepped_down - cut_at, 3), "takeover_s": round(took_over - cut_at, 3),
                             "envoy_moved_s": round(moved - cut_at, 3), "rates_seen": sorted(set(rates))}
    assert stepped_down - cut_at <= RENEW_S + 1.5, MEASURED
    # replica-a never applied a decision of its own: whatever it evaluated in its last seconds as the leader,
    # it could not publish it, so its Envoy kept STANDBY until replica-b's OVERFLOW reached it.
    assert {state for _, state, _ in a_states + a_later} == {"STANDBY"}, a_states + a_later
    assert all(who == "replica-a" for _, _, who in a_states + a_later), "replica-a adopted someone's decision?"
    # The breach came right after the cut, but no Envoy got OVERFLOW before replica-b decided it.
    assert overflow_seen is not None and overflow_seen >= took_over - 0.3, (overflow_seen, took_over)
    assert ready.status == 503 and "handed over" in ready.text, (ready.status, ready.text)
    # No Envoy ever had more than its half of the limit: edge-a was counted by replica-b before replica-a's
    # Lease ran out.
    assert set(rates) == {10.0}, Counter(rates)

    # Back: replica-a renews, serves xDS again, follows replica-b's decision.
    api.start()
    wait_until(lambda: a.ready(), timeout=LEASE_S + 10, message="replica-a never came back")
    wait_until(lambda: applied(a)["applied"]["state"] == "OVERFLOW" and applied(a)["decided_by"] == "replica-b",
               timeout=10, message="replica-a never followed replica-b")
    assert fleet_view(a)["deciding"] is False and fleet_view(b)["deciding"] is True
