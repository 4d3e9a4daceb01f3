"""Hypothesis strategies for fuzzing policy documents: structured ModelDeployments built from the
schema's vocabulary (valid and invalid values side by side), mutations of real documents, and malformed
YAML text (broken syntax, deep nesting, aliases, binary)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

from spillover.names import STRATEGIES
from tests.harness.policy_docs import FULL_YAML, base

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "policies"
SEEDS: list[dict[str, Any]] = [base(), yaml.safe_load(FULL_YAML)] + [
    yaml.safe_load(p.read_text()) for p in sorted(EXAMPLES.glob("*.yaml"))
]

scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
    | st.sampled_from(["", "0", "-1", "1s", "100", "https", "least-request", "Utilization", "gpu", "a:1", "$model"])
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3),
    max_leaves=6,
)


def _either(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any] = values) -> st.SearchStrategy[Any]:
    """Mostly a plausible value, sometimes anything."""
    return st.one_of(good, good, good, bad)


def _documents(_either: Any) -> st.SearchStrategy[dict[str, Any]]:
    """ModelDeployments from the schema's vocabulary; `_either(good)` picks what a field may hold."""
    names = _either(st.from_regex(r"[a-z][a-z0-9-]{2,20}[a-z0-9]", fullmatch=True))
    durations = _either(st.sampled_from(["1s", "500ms", "2m", "1h", "0s", "10", 5, 0.25, "-1s", "1x", "1e9s"]))
    numbers = _either(st.integers(0, 1000) | st.floats(0, 1000, allow_nan=False))
    endpoints = _either(st.builds(
        lambda a, b, port: f"10.0.{a}.{b}:{port}", st.integers(0, 255), st.integers(0, 255), st.integers(1, 65535)
    ) | st.sampled_from(["[::1]:8000", "pod-0.svc:8000", "10.0.0.1", "10.0.0.1:0", "host:99999", ":80"]))
    health = st.fixed_dictionaries({}, optional={
        "path": _either(st.sampled_from(["/health", "/v1/models", "health"])),
        "interval": durations, "timeout": durations,
        "healthyThreshold": _either(st.integers(0, 5)), "unhealthyThreshold": _either(st.integers(0, 5)),
    })
    outlier = st.fixed_dictionaries({}, optional={
        "enabled": st.booleans(), "consecutive5xx": _either(st.integers(0, 10)), "interval": durations,
        "baseEjectionTime": durations, "maxEjectionPercent": numbers,
    })
    profile = st.fixed_dictionaries({}, optional={
        "routingStrategy": _either(st.sampled_from([*STRATEGIES, "fastest"])),
        "requestsPerSecond": _either(st.integers(0, 500) | st.floats(-5, 500) | st.just(float("nan"))),
        "burst": numbers, "sessionHeader": _either(st.sampled_from(["x-session-id", "X-User", ""])),
        "prefixLength": _either(st.integers(0, 4096)), "hashBalanceFactor": _either(st.integers(50, 300)),
    })
    routing = st.fixed_dictionaries({}, optional={
        "defaultProfile": _either(st.sampled_from(["default", "chat", "missing"])),
        "lockedRoutingStrategy": _either(st.sampled_from([*STRATEGIES, "fastest"])),
        "profiles": _either(st.dictionaries(st.sampled_from(["default", "chat", "batch", ""]), profile, max_size=3)),
    })
    metric = st.one_of(
        st.fixed_dictionaries(
            {"metric": _either(st.sampled_from(["cpu", "gpu", "ram", "gram", "latency", "throughput", "concurrency",
                                                 "queue_length", "kv_cache", "vibes"]))},
            optional={"target": numbers, "percentile": numbers, "window": durations,
                      "source": _either(st.sampled_from(["prometheus", "envoy", "kubernetes", "carrier-pigeon"])),
                      "reducer": _either(st.sampled_from(["max", "sum", "average", "median"]))},
        ),
        st.fixed_dictionaries({"query": _either(st.sampled_from(["up", "cluster.$cluster.upstream_rq_active",
                                                                  "sum(rate(", "p99(cluster.x.upstream_rq_time)"]))},
                              optional={"threshold": numbers, "source": _either(st.sampled_from(["prometheus", "envoy"])),
                                        "name": names}),
        st.fixed_dictionaries({"type": _either(st.sampled_from(["Resource", "Pods", "External", "Object", "Magic"]))},
                              optional={"resource": values, "pods": values, "external": values}),
    )
    remote = st.fixed_dictionaries(
        {"host": _either(st.sampled_from(["remote.example.com", "10.9.0.1:8080", "https://x.example", "a/b", ""]))},
        optional={
            "scheme": _either(st.sampled_from(["http", "https", "ftp"])), "port": _either(st.integers(0, 70000)),
            "pathPrefix": _either(st.sampled_from(["/$workspace/models/$model", "/v1", "no-slash", "/$unknown"])),
            "headersToAdd": _either(st.dictionaries(st.sampled_from(["X-Tenant", "host", ":path", "x a"]),
                                                    st.text(max_size=8), max_size=2)),
            "sni": _either(st.sampled_from(["remote.example.com", "bad host"])),
            "hostRewrite": _either(st.sampled_from(["api.example.com", ""])),
            "healthCheck": health, "outlierDetection": outlier,
        },
    )
    behavior = st.fixed_dictionaries({}, optional={
        "percentage": numbers, "bufferDuration": durations, "activationDuration": durations,
        "strategy": _either(st.sampled_from(["fixed", "proportional", "random"])), "minStep": numbers,
        "onMetricError": _either(st.sampled_from(["hold", "standby", "overflow", "panic"])),
    })
    spec = st.fixed_dictionaries(
        {"model": names},
        optional={
            "enabled": _either(st.booleans()),
            "localBackend": st.fixed_dictionaries({}, optional={
                "endpoints": _either(st.lists(endpoints, max_size=4)), "healthCheck": health, "outlierDetection": outlier,
            }),
            "routing": routing,
            "timeouts": st.fixed_dictionaries({}, optional={"request": durations, "connect": durations, "idle": durations}),
            "retries": st.fixed_dictionaries({}, optional={
                "attempts": _either(st.integers(0, 12)), "perTryTimeout": durations,
                "retryOn": _either(st.lists(st.sampled_from(["connect-failure", "reset", "5xx", "sometimes"]), max_size=3)),
            }),
            "offloadingConfig": st.fixed_dictionaries({}, optional={
                "remoteBackend": remote, "behavior": behavior, "metrics": _either(st.lists(metric, max_size=3)),
            }),
        },
    )
    structured = st.builds(
        lambda api, name, body, extra: {
            "apiVersion": api, "kind": "ModelDeployment", "metadata": {"name": name}, "spec": body, **extra,
        },
        _either(st.sampled_from(["spillover.dev/v1alpha1", "deployment.beamlit.com/v1alpha1"])),
        names,
        spec,
        st.dictionaries(st.sampled_from(["status", "extra", "specs"]), values, max_size=1),
    )
    return structured


structured = _documents(_either)

# Documents meant to be valid (most are): the properties of valid policies need many of them.
_good_durations = st.sampled_from(["1s", "2s", "500ms", "1m", 3, 0.5])
_good_health = st.builds(
    lambda interval: {"path": "/health", "interval": f"{interval}s", "timeout": f"{interval / 2:g}s"},
    st.integers(1, 20),
)
_good_profile = st.fixed_dictionaries({"routingStrategy": st.sampled_from(STRATEGIES)}, optional={
    "requestsPerSecond": st.integers(0, 500) | st.floats(0.1, 500), "burst": st.integers(0, 100),
    "sessionHeader": st.sampled_from(["x-session-id", "x-user"]), "prefixLength": st.integers(1, 4096),
})
_good_routing = st.dictionaries(st.sampled_from(["default", "chat", "batch"]), _good_profile, min_size=1, max_size=3).map(
    lambda profiles: {"profiles": profiles, "defaultProfile": sorted(profiles)[0]}
)
_good_metric = st.one_of(
    st.builds(lambda m, t: {"metric": m, "target": t},
              st.sampled_from(["latency", "throughput", "concurrency", "queue_length", "kv_cache"]), st.integers(1, 500)),
    st.builds(lambda t: {"query": "cluster.$cluster.upstream_rq_active", "source": "envoy", "threshold": t},
              st.integers(1, 50)),
)
_good_remote = st.fixed_dictionaries(
    {"host": st.sampled_from(["remote.example.com", "10.9.0.1:8080", "api.example.com"])},
    optional={
        "scheme": st.sampled_from(["http", "https"]), "pathPrefix": st.sampled_from(["/$workspace/models/$model", "/v1"]),
        "headersToAdd": st.dictionaries(st.sampled_from(["X-Tenant", "X-Origin"]), st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True), max_size=2),
        "hostRewrite": st.just("api.example.com"), "healthCheck": _good_health,
        "outlierDetection": st.builds(lambda n: {"consecutive5xx": n}, st.integers(1, 10)),
    },
)
_good_offloading = st.fixed_dictionaries({"remoteBackend": _good_remote}, optional={
    "behavior": st.fixed_dictionaries({}, optional={
        "percentage": st.integers(0, 100), "bufferDuration": _good_durations, "activationDuration": _good_durations,
        "strategy": st.sampled_from(["fixed", "proportional"]), "minStep": st.integers(1, 50),
        "onMetricError": st.sampled_from(["hold", "standby", "overflow"]),
    }),
    "metrics": st.lists(_good_metric, max_size=3),
})
plausible = st.builds(
    lambda name, endpoints, extra: {
        "apiVersion": "spillover.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
        "spec": {"model": name, "localBackend": {"endpoints": endpoints}, **extra},
    },
    st.from_regex(r"[a-z][a-z0-9-]{2,20}[a-z0-9]", fullmatch=True),
    st.lists(st.builds(lambda a, port: f"10.0.0.{a}:{port}", st.integers(1, 254), st.integers(1, 65535)),
             max_size=4, unique=True),
    st.fixed_dictionaries({}, optional={
        "enabled": st.booleans(), "routing": _good_routing, "offloadingConfig": _good_offloading,
        "timeouts": st.builds(lambda r: {"request": f"{r}s"}, st.integers(0, 600)),
        "retries": st.fixed_dictionaries({}, optional={
            "attempts": st.integers(0, 10),
            "retryOn": st.lists(st.sampled_from(["connect-failure", "reset", "refused-stream", "5xx"]), max_size=3),
        }),
    }),
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    """A real document (an example, the full one) with one to three values replaced, added or removed."""
    doc = copy.deepcopy(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(doc)))
        node = doc
        for key in path[:-1]:
            node = node[key]
        action = draw(st.sampled_from(["replace", "insert", "delete"]))
        target = node[path[-1]]
        if action == "replace" or (action == "insert" and not isinstance(target, dict | list)):
            node[path[-1]] = draw(values)
        elif action == "insert" and isinstance(target, dict):
            target[draw(st.text(max_size=12) | st.sampled_from(["type", "metric", "query", "port", "burst"]))] = draw(values)
        elif action == "insert":
            target.append(draw(values))
        elif isinstance(node, dict):
            del node[path[-1]]
        else:
            node.pop(path[-1])
    return doc


documents = st.one_of(structured, mutated())


def _dump(docs: list[Any]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


@st.composite
def broken_text(draw: st.DrawFn) -> str:
    """A valid file's text with characters cut, inserted or swapped: syntax errors where real ones are."""
    text = _dump([draw(st.sampled_from(SEEDS))])
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        cut = draw(st.integers(0, 8))
        insert = draw(st.sampled_from(["", ":", "- ", "[", "]", "{", "}", "\t", "\n", "&a ", "*a", "!!python/object:os.system ", "'", '"', "? ", "%YAML 9\n"]))
        text = text[:at] + insert + text[at + cut:]
    return text


yaml_texts = st.one_of(
    st.lists(documents, min_size=1, max_size=3).map(_dump),
    broken_text(),
    st.text(max_size=300),
    st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
    st.integers(1, 3000).map(lambda depth: "a: " + "[" * depth + "]" * depth),
    st.integers(1, 3000).map(lambda depth: "a:\n" + "".join("  " * i + "- \n" for i in range(depth))),
)
