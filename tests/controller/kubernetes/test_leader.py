"""LeaderElector against a real kube-apiserver: one leader among several, takeover after the leader stops
renewing (in this process, and a leader process killed with SIGKILL), immediate handover on release."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from spillover.controller.kubernetes.leader import LeaderElector
from tests.harness.kube import KubeCluster
from tests.harness.kube_objects import as_object
from tests.harness.kube_status import REPO, eventually

pytestmark = pytest.mark.timeout(120)

# Short timings keep the tests quick; the relations are those of the defaults (15/10/2).
LEASE, RENEW, RETRY = 4.0, 3.0, 0.5
TAKEOVER_BOUND = LEASE + 2 * RETRY * 1.2 + 1.0  # lease duration + at most two retries + scheduling slack


def lease(cluster: KubeCluster, namespace: str, name: str) -> dict[str, Any]:
    from kubernetes import client

    api = client.CustomObjectsApi(cluster.api_client())
    return as_object(api.get_namespaced_custom_object("coordination.k8s.io", "v1", namespace, "leases", name))


def elector(cluster: KubeCluster, namespace: str, identity: str, log: list[str] | None = None,
            token: str | None = None) -> LeaderElector:
    events = log if log is not None else []
    return LeaderElector(
        cluster.api_client(token), namespace, name="spillover-leader", identity=identity,
        lease_duration=LEASE, renew_deadline=RENEW, retry_period=RETRY,
        on_started=lambda: events.append(f"{identity} started"),
        on_stopped=lambda: events.append(f"{identity} stopped"),
    )


def leaders(electors: list[LeaderElector]) -> list[str]:
    return [e.identity for e in electors if e.is_leader]


async def test_exactly_one_leader_and_takeover_when_renewals_stop(cluster: KubeCluster, namespace: str) -> None:
    log: list[str] = []
    electors = [elector(cluster, namespace, f"replica-{i}", log) for i in range(3)]
    for e in electors:
        e.start()
    try:
        (first,) = await eventually(lambda: leaders(electors), message="a leader")
        # Several retry periods later there is still exactly one, and it is the Lease's holder.
        deadline = time.monotonic() + 4 * RETRY
        while time.monotonic() < deadline:
            assert len(leaders(electors)) <= 1, leaders(electors)
            await asyncio.sleep(0.05)
        assert leaders(electors) == [first]
        record = lease(cluster, namespace, "spillover-leader")["spec"]
        assert record["holderIdentity"] == first
        assert record["leaseDurationSeconds"] == LEASE
        transitions = record.get("leaseTransitions", 0)

        # The leader stops renewing without releasing (what a crash or a partition looks like).
        leader = next(e for e in electors if e.identity == first)
        stopped_at = time.monotonic()
        await leader.stop(release=False)
        assert not leader.is_leader
        assert lease(cluster, namespace, "spillover-leader")["spec"]["holderIdentity"] == first  # not released
        rest = [e for e in electors if e is not leader]
        (second,) = await eventually(lambda: leaders(rest), timeout=TAKEOVER_BOUND + 2, interval=0.02)
        took = time.monotonic() - stopped_at
        assert took <= TAKEOVER_BOUND, f"takeover took {took:.2f}s"
        assert took >= LEASE - RETRY * 1.2 - 0.5, f"took over a live lease after {took:.2f}s"
        record = lease(cluster, namespace, "spillover-leader")["spec"]
        assert record["holderIdentity"] == second
        assert record["leaseTransitions"] == transitions + 1
        assert log.count(f"{first} started") == 1 and f"{first} stopped" in log and f"{second} started" in log
        assert len(leaders(electors)) == 1
    finally:
        for e in electors:
            await e.stop()


async def test_graceful_stop_releases_at_once(cluster: KubeCluster, namespace: str) -> None:
    a, b = elector(cluster, namespace, "a"), elector(cluster, namespace, "b")
    a.start()
    await eventually(lambda: a.is_leader)
    b.start()
    try:
        await asyncio.sleep(2 * RETRY)
        assert a.is_leader and not b.is_leader
        stopped_at = time.monotonic()
        await a.stop()  # release
        record = lease(cluster, namespace, "spillover-leader")["spec"]
        assert record.get("holderIdentity", "") in ("", "b")
        await eventually(lambda: b.is_leader, timeout=LEASE, interval=0.02)
        took = time.monotonic() - stopped_at
        assert took < RETRY * 1.2 + 1.0, f"handover after release took {took:.2f}s (lease is {LEASE}s)"
    finally:
        await a.stop()
        await b.stop()


async def test_leader_steps_down_when_it_cannot_renew(cluster: KubeCluster, namespace: str) -> None:
    """Someone else holds the Lease (e.g. after a partition): the former leader notices and steps down."""
    from kubernetes import client

    log: list[str] = []
    a = elector(cluster, namespace, "a", log)
    a.start()
    try:
        await eventually(lambda: a.is_leader)
        api = client.CustomObjectsApi(cluster.api_client())
        obj = lease(cluster, namespace, "spillover-leader")
        obj["spec"]["holderIdentity"] = "intruder"
        obj["spec"]["renewTime"] = obj["spec"]["acquireTime"]
        api.replace_namespaced_custom_object("coordination.k8s.io", "v1", namespace, "leases", "spillover-leader", obj)
        await eventually(lambda: not a.is_leader, timeout=RENEW + 2 * RETRY)
        assert log == ["a started", "a stopped"]
    finally:
        await a.stop()


_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from kubernetes import client
    from spillover.controller.kubernetes.leader import LeaderElector

    server, ca, token, namespace, identity, lease, renew, retry = sys.argv[1:9]

    async def main():
        configuration = client.Configuration(
            host=server, api_key={"authorization": token}, api_key_prefix={"authorization": "Bearer"}
        )
        configuration.ssl_ca_cert = ca
        elector = LeaderElector(
            client.ApiClient(configuration), namespace, identity=identity,
            lease_duration=float(lease), renew_deadline=float(renew), retry_period=float(retry),
            on_started=lambda: print("LEADER", flush=True),
        )
        await elector.run()

    asyncio.run(main())
    """
)


async def test_killed_leader_process_is_replaced(cluster: KubeCluster, namespace: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, cluster.server_url, str(cluster.ca_path), cluster.admin_token, namespace,
         "process-leader", str(LEASE), str(RENEW), str(RETRY)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )
    here = elector(cluster, namespace, "in-process")
    try:
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), timeout=30)  # type: ignore[union-attr]
        assert line.strip() == "LEADER", child.stderr.read() if child.poll() is not None else line  # type: ignore[union-attr]
        here.start()
        await asyncio.sleep(3 * RETRY)
        assert not here.is_leader
        assert lease(cluster, namespace, "spillover-leader")["spec"]["holderIdentity"] == "process-leader"
        killed_at = time.monotonic()
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        await eventually(lambda: here.is_leader, timeout=TAKEOVER_BOUND + 2, interval=0.02)
        took = time.monotonic() - killed_at
        assert took <= TAKEOVER_BOUND, f"takeover took {took:.2f}s"
        assert lease(cluster, namespace, "spillover-leader")["spec"]["holderIdentity"] == "in-process"
    finally:
        await here.stop()
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(10)
