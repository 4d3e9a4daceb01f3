"""The dashboards and `spillover report`, for real: a real Prometheus scrapes a real Envoy's
/stats/prometheus and `spillover serve`'s /metrics while a model overflows under load, hits its rate
limit, goes back to STANDBY, a broken policy file is reported and a bad remote CA makes Envoy NACK.

Then every query of every dashboard (panels and variables, parsed from the committed JSON, the
dashboard's variables substituted as Grafana would) runs against that Prometheus over the episode and
must return series carrying the labels the panel shows; and `spillover report` draws the episode into a
PNG that is not blank and has the remote-share line up where the model overflowed.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from spillover.dashboards import report
from spillover.dashboards.generate import DASHBOARDS
from spillover.names import MODEL_STATE_SERIES
from spillover.translate.bootstrap import build_bootstrap
from tests.harness.dashboard_queries import panel_queries, variable_queries
from tests.harness.envoy import Envoy
from tests.harness.load import post_model
from tests.harness.modelserver import ModelServer
from tests.harness.overflow_traffic import REMOTE, InFlight, send_batch
from tests.harness.policy_files import write
from tests.harness.polling import wait_until
from tests.harness.ports import free_port
from tests.harness.prometheus import Prometheus, ScrapeJob
from tests.harness.serve import Launcher, Spillover
from tests.harness.upstream import HttpUpstream

pytestmark = pytest.mark.timeout(420)

REPO = Path(__file__).resolve().parents[2]
MODEL = "llama-3.1-8b"
LABEL = "llama-3_1-8b"  # how Envoy's stats and spillover's series name it (names.model_label)
GROUP = "edge"
BUFFER_S = 3.0
RATE_WINDOW = "10s"  # $__rate_interval with Prometheus scraping every second


def llama(local: HttpUpstream, remote: ModelServer) -> dict[str, Any]:
    return {
        "apiVersion": "spillover.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "llama"},
        "spec": {
            "model": MODEL,
            "localBackend": {"endpoints": [local.address]},
            "routing": {
                "defaultProfile": "default",
                "profiles": {
                    "default": {"routingStrategy": "round-robin", "requestsPerSecond": 20},
                    "batch": {"routingStrategy": "least-request"},
                },
            },
            "offloadingConfig": {
                "remoteBackend": {"host": "127.0.0.1", "port": remote.port},
                "behavior": {"percentage": 50, "bufferDuration": f"{BUFFER_S:g}s"},
                "metrics": [{"metric": "concurrency", "target": 2}],  # in flight per local pod (Envoy's stats)
            },
        },
    }


def untrusted(remote: ModelServer, ca: Path) -> dict[str, Any]:
    """A model whose remote's CA file does not exist: Envoy refuses the clusters (a NACK) and keeps the last
    good ones."""
    return {
        "apiVersion": "spillover.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "untrusted"},
        "spec": {
            "model": "untrusted",
            "localBackend": {"endpoints": ["127.0.0.1:9"]},
            "offloadingConfig": {
                "remoteBackend": {"host": "127.0.0.1", "port": remote.port, "scheme": "https", "ca": str(ca)},
            },
        },
    }


BROKEN = {
    "apiVersion": "spillover.dev/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "broken"},
    "spec": {"model": "broken", "routing": {"profiles": {"default": {"requestsPerSecond": -1}}}},
}


@dataclass
class Episode:
    prometheus: Prometheus
    server: Spillover
    envoy: Envoy
    start: float
    overflow: tuple[float, float]  # when spillover said OVERFLOW, and STANDBY again
    end: float
    workdir: Path
    spilling: tuple[float, float]  # while requests were sent in OVERFLOW (none in the buffer after it)
    calm_until: float  # when the slow requests began (Envoy's own failover may send some remote from then)


def scrape_gap(prometheus: Prometheus, selector: str, start: float, end: float) -> float:
    """The longest time between two samples of `selector` from `start` to `end` (a scrape that timed out
    leaves a gap; one answered late is stamped when it began)."""
    stamps = sorted({float(v) for series in prometheus.query_range(f"timestamp({selector})", start, end, 1)
                     for _, v in series["values"]})
    return max((b - a for a, b in itertools.pairwise(stamps)), default=0.0)


def state_since(model: dict[str, Any]) -> float:
    """When spillover entered the model's state (its clock, not when a loaded test noticed)."""
    return datetime.fromisoformat(model["status"]["stateSince"].replace("Z", "+00:00")).timestamp()


@pytest.fixture(scope="module")
def episode(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Episode]:
    work = tmp_path_factory.mktemp("observability")
    local = HttpUpstream("local-0").start()
    remote = ModelServer(REMOTE, MODEL).start()
    launcher = Launcher(work, evaluation_interval=0.25)
    envoy: Envoy | None = None
    prometheus: Prometheus | None = None
    try:
        policies = work / "policies"
        policies.mkdir()
        write(policies / "llama.yaml", llama(local, remote))
        write(policies / "broken.yaml", BROKEN)
        server = launcher(policies=policies)
        # Prometheus scrapes the stats port (GET /stats/prometheus only), not Envoy's admin.
        admin_port, stats_port = free_port(), free_port()
        bootstrap = build_bootstrap("edge-1", GROUP, server.xds_address, admin_port=admin_port, stats_port=stats_port)
        envoy = Envoy(bootstrap, work / "envoy", name="edge-1").start()
        wait_until(lambda: post_model(server.listen_port, MODEL).status == 200, timeout=20, message="model served")
        prometheus = Prometheus(work / "prometheus", scrape_interval="1s", jobs=[
            ScrapeJob("envoy", (f"127.0.0.1:{stats_port}",), "/stats/prometheus"),
            ScrapeJob("spillover", (f"127.0.0.1:{server.admin_port}",), "/metrics"),
        ]).start()
        prometheus.wait_for_series(f'spillover_model_info{{model="{LABEL}"}}', timeout=20)
        prometheus.wait_for_series(f'envoy_cluster_upstream_rq_total{{model="{LABEL}",side="local"}}', timeout=20)
        server.wait_state(MODEL, "STANDBY")  # local ready: not FAILOVER while Envoy had not reported yet
        start = time.time()
        port = server.listen_port

        # Calm: both profiles answer locally, one request at a time: the overflow metric is 2 in flight per
        # local pod (value >= threshold breaches), so concurrent calm traffic on a slow machine, where each
        # request lasts longer, would itself put the model in OVERFLOW.
        for _ in range(3):
            send_batch(port, MODEL, 20, workers=1)
            send_batch(port, MODEL, 10, workers=1, headers={"config-profile": "batch"})
            time.sleep(1)
        calm = server.model(MODEL)
        assert calm["state"] == "STANDBY" and state_since(calm) < start, (
            f"the calm traffic moved the model out of STANDBY: {calm['status']}")

        # Slow requests keep the local pod busy past the threshold (2 in flight): OVERFLOW, half remote. They
        # use the profile without a rate limit, so that the 429s of the default profile do not end them.
        calm_until = time.time()
        load = InFlight(port, MODEL, workers=8, delay_s=2.0, headers={"config-profile": "batch"}).start()
        try:
            overflow_at = state_since(server.wait_state(MODEL, "OVERFLOW", timeout=20))
            wait_until(lambda: send_batch(port, MODEL, 10, workers=2)[REMOTE] > 0, timeout=15)
            spilling_from = time.time()
            until = time.monotonic() + 8
            while time.monotonic() < until:
                send_batch(port, MODEL, 30, workers=6)  # past 20 rps: 429s too
                send_batch(port, MODEL, 10, workers=2, headers={"config-profile": "batch"})
            spilling_to = time.time()
        finally:
            load.stop()
        standby_at = state_since(server.wait_state(MODEL, "STANDBY", timeout=BUFFER_S + 20))
        for _ in range(4):
            send_batch(port, MODEL, 20, workers=2)
            time.sleep(1)

        # A CA file that does not exist: Envoy NACKs the clusters.
        write(policies / "untrusted.yaml", untrusted(remote, work / "no-such-ca.pem"))
        wait_until(
            lambda: any(p["status"] == "NACKED" for p in server.proxies()), timeout=20, message="Envoy never NACKed"
        )
        prometheus.wait_for_value('sum(spillover_xds_proxy_sync{status="NACKED"})', lambda v: v[0] >= 1, timeout=20)
        prometheus.wait_for_value(f'sum(spillover_model_state{{model="{LABEL}",state="STANDBY"}})',
                                  lambda v: v[0] == 1, timeout=20)
        time.sleep(2)  # a last scrape of the calm traffic's counters
        yield Episode(prometheus, server, envoy, start, (overflow_at, standby_at), time.time(), work,
                      (spilling_from, spilling_to), calm_until)
    finally:
        if prometheus is not None:
            prometheus.stop()
            print(prometheus.log_tail(20))
        if envoy is not None:
            envoy.stop()
            print(envoy.log_tail(40))
        launcher.stop_all()
        remote.stop()
        local.stop()


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? \S+$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def _exposition(text: str) -> list[tuple[str, dict[str, str]]]:
    """(metric name, labels) of every sample line of Prometheus' text format, names as written."""
    out = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            match = _SAMPLE.match(line)
            assert match is not None, line
            out.append((match.group(1), dict(_LABEL.findall(match.group(2) or ""))))
    return out


def test_envoy_shows_each_model_as_a_label_never_in_a_metric_name(episode: Episode) -> None:
    samples = _exposition(episode.envoy.admin_get("/stats/prometheus"))
    labels: dict[str, set[tuple[str, ...]]] = {}
    for name, sample_labels in samples:
        assert "llama" not in name and "untrusted" not in name, name
        if sample_labels.get("model") == LABEL:
            keys = tuple(sorted(k for k in ("model", "profile", "side") if k in sample_labels))
            labels.setdefault(name, set()).add(keys)
    assert labels["envoy_vhost_route_upstream_rq_xx"] == {("model", "profile")}
    assert labels["envoy_spillover_model_rps_http_local_rate_limit_rate_limited"] == {("model", "profile")}
    # The local and remote clusters have a side; the failover aggregates only the model (their router stats,
    # upstream_rq_xx and upstream_rq_time, are all theirs).
    assert labels["envoy_cluster_upstream_rq_total"] == {("model", "side"), ("model",)}
    assert labels["envoy_cluster_upstream_rq_xx"] == {("model",)}
    sides = {s.get("side") for name, s in samples if name == "envoy_cluster_upstream_rq_total" and s.get("model") == LABEL}
    assert sides == {"local", "remote", None}


def _variables(name: str) -> dict[str, str]:
    # "All" is `.*` (allValue); the drill-down shows the overflowing model.
    common = {"__rate_interval": RATE_WINDOW, "profile": ".*", "group": ".*", "datasource": "prometheus"}
    return {**common, "model": LABEL if name == "spillover-model.json" else ".*"}


def _dashboard(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((REPO / "dashboards" / name).read_text())
    return document


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_panel_query_returns_the_series_it_shows(episode: Episode, name: str) -> None:
    document = _dashboard(name)
    problems, checked = [], 0
    for query in panel_queries(document, _variables(name)):
        checked += 1
        series = episode.prometheus.query_range(query.expr, episode.start, episode.end, 1)
        points = [float(v) for s in series for _, v in s["values"]]
        if not series or not points:
            problems.append(f"no data: {query}")
            continue
        wanted = query.shown_labels | query.grouped_labels
        for s in series:
            missing = sorted(label for label in wanted if not s["metric"].get(label))
            if missing:
                problems.append(f"series {s['metric']} lacks {missing}: {query}")
    assert checked >= 8
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_variable_offers_what_the_episode_had(episode: Episode, name: str) -> None:
    expected = {"model": LABEL, "profile": "batch", "group": GROUP}
    for variable in variable_queries(_dashboard(name), _variables(name)):
        values = episode.prometheus.label_values(variable.label, variable.match)
        assert expected[variable.name] in values, (variable, values)
        if variable.name == "profile":
            assert "default" in values


def _range(episode: Episode, expr: str) -> list[float]:
    # NaN is a ratio before any traffic (0/0): it says nothing, and max() over a list led by one is NaN.
    series = episode.prometheus.query_range(expr, episode.start, episode.end, 1)
    return [float(v) for s in series for _, v in s["values"] if not math.isnan(float(v))]


def test_the_panels_show_the_episode(episode: Episode) -> None:
    """Not only some data: the overflow, the 429s, the remote traffic and the NACK are in it."""
    from spillover.dashboards import queries as q

    m = q.model_selector(LABEL)
    assert max(_range(episode, q.state_code(m))) == q.STATE_CODES[report.OverflowState.OVERFLOW]
    observed = _range(episode, q.remote_share_observed(m, RATE_WINDOW, by=()))
    assert 25 <= max(observed) <= 75, max(observed)  # a 50 % split, seen through a 10 s window
    assert max(_range(episode, q.remote_share_decided(m, by=()))) == 50
    assert max(_range(episode, q.rate_limited(f'{m},profile="default"', RATE_WINDOW, by=()))) > 0
    assert _range(episode, q.rate_limited(f'{m},profile="batch"', RATE_WINDOW, by=())) == []  # no limit there
    assert max(_range(episode, q.metric_pressure(m))) >= 1  # the metric crossed its threshold
    nacked = _range(episode, 'sum(spillover_xds_proxy_sync{status="NACKED"})')
    assert max(nacked) >= 1
    errors = episode.prometheus.query_range("sum by (file) (spillover_policy_errors)", episode.start, episode.end, 1)
    assert any(s["metric"]["file"].endswith("broken.yaml") for s in errors), errors


def _pixels(path: Path) -> Any:
    from PIL import Image

    return Image.open(path).convert("RGB")


def _hex(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def _near(a: tuple[int, ...], b: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=False))


def test_the_report_draws_the_overflow_from_prometheus(episode: Episode, tmp_path: Path) -> None:
    out = tmp_path / "episode.png"
    since = f"{int(time.time() - episode.start) + 2}s"
    command = [sys.executable, "-m", "spillover", "report", "--prometheus-url", episode.prometheus.url,
               "--model", MODEL, "--since", since, "--scrape-interval", "1s", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    image = _pixels(out)
    assert image.size == (1400, 1200)

    # The same picture, drawn in-process to learn where its panels are.
    drawn, layout = report.report(episode.prometheus.url, MODEL, since, tmp_path / "again.png",
                                  until=episode.end, scrape_interval="1s")
    image = _pixels(tmp_path / "again.png")
    spans = drawn.spans()
    assert f"model {LABEL}, {len(spans)} overflow stretch" in done.stdout, done.stdout
    assert {state for state, _, _ in spans} == {report.OverflowState.OVERFLOW}, spans
    began, ended = spans[0][1], spans[-1][2]
    # The picture is as exact as Prometheus's samples: 2 s, plus the longest gap between samples of the
    # state (scrapes of spillover that timed out on a loaded machine).
    stale = scrape_gap(episode.prometheus, f'{MODEL_STATE_SERIES}{{model="{LABEL}",state="OVERFLOW"}}',
                       episode.start, episode.end)
    assert abs(began - episode.overflow[0]) < 2 + stale and abs(ended - episode.overflow[1]) < 2 + stale, (
        began, ended, episode.overflow, stale)
    # One overflow: a stretch is split only where Prometheus has no sample of the state (a scrape of
    # spillover that timed out on a loaded machine), never by a sample of another state.
    from spillover.dashboards import queries as q

    codes = episode.prometheus.query_range(q.state_code(q.model_selector(LABEL)), episode.start, episode.end, 1)
    other = [float(t) for series in codes for t, v in series["values"]
             if round(float(v)) != q.STATE_CODES[report.OverflowState.OVERFLOW]]
    for (_, _, gap_from), (_, gap_to, _) in itertools.pairwise(spans):
        assert not [t for t in other if gap_from <= t < gap_to], (spans, other)

    for name, (left, top, right, bottom) in layout.panels.items():
        box = image.crop((left, top, right, bottom))
        colors = len(box.getcolors(maxcolors=1 << 24) or [])
        assert colors > 20, f"panel {name} is blank ({colors} colors)"

    # The observed remote share (red) is up, around 50 %, in the middle of the overflow, and down at 0
    # before it.
    share = layout.to_pixel["share"]
    red = _hex(report.REMOTE_COLOR)

    def red_rows(t: float) -> list[int]:
        x, _ = share(t, 0)
        _, top = share(t, 100)
        _, bottom = share(t, -5)
        return [y for y in range(top, bottom) for dx in (-1, 0, 1) if _near(image.getpixel((x + dx, y)), red)]

    # The middle of the traffic sent while spilling (the observed share is a rate of requests: the buffer
    # after the load, which a loaded machine stretches, has none).
    middle = (episode.spilling[0] + episode.spilling[1]) / 2
    rows = red_rows(middle)
    assert rows, "no remote-share line in the middle of the overflow"
    _, y80 = share(middle, 80)
    _, y20 = share(middle, 20)
    assert any(y80 <= y <= y20 for y in rows), (rows, y80, y20)
    # Before the overflow: at the sample nearest the middle of the calm traffic (a loaded machine can make
    # Prometheus miss scrapes, so the line has gaps; a gap is not a share). Once the slow requests begin,
    # Envoy's own failover may retry some on the remote before spillover decides anything.
    calm_middle = (episode.start + episode.calm_until) / 2
    calm_points = [(t, v) for series in drawn.share_observed for t, v in series.points
                   if episode.start <= t <= episode.calm_until]
    assert calm_points, f"Prometheus has no observed share before the overflow: {drawn.share_observed}"
    assert all(v <= 10 for _, v in calm_points), calm_points
    calm = min((t for t, _ in calm_points), key=lambda t: abs(t - calm_middle))
    _, y10 = share(calm, 10)
    rows_before = red_rows(calm)
    assert rows_before, "no remote-share line before the overflow"
    assert all(y >= y10 for y in rows_before), (rows_before, y10)

    # The threshold is drawn (dashed red) in the metric panel.
    left, top, right, bottom = layout.panels["metric"]
    threshold = layout.to_pixel["metric"](middle, 2)
    assert any(_near(image.getpixel((x, threshold[1] + dy)), _hex(report.THRESHOLD_COLOR))
               for x in range(left, right) for dy in (-1, 0, 1))


def test_the_report_says_what_is_wrong_in_one_line(episode: Episode, tmp_path: Path) -> None:
    out = tmp_path / "none.png"
    base = [sys.executable, "-m", "spillover", "report", "--out", str(out), "--since", "5m"]
    unknown = subprocess.run([*base, "--prometheus-url", episode.prometheus.url, "--model", "nobody"],
                             capture_output=True, text=True, timeout=60, cwd=REPO)
    assert unknown.returncode == 1 and "no data for model 'nobody'" in unknown.stderr, unknown.stderr
    down = subprocess.run([*base, "--prometheus-url", f"http://127.0.0.1:{free_port()}", "--model", MODEL],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert down.returncode == 1 and "cannot read http://127.0.0.1:" in down.stderr, down.stderr
    assert len(down.stderr.strip().splitlines()) == 1 and "Traceback" not in down.stderr
    assert not out.exists()
