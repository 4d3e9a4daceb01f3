"""Golden files pin the plan stage: a ModelDeployment + what the other stages know → the gateway IR.

One directory per case (see tests/harness/golden.py): `policy.yaml` is one ModelDeployment document,
`inputs.yaml` what the plan gets besides the policy (all optional):

    decision: {state: OVERFLOW, remote_share: 40}  # the overflow engine's; none: STANDBY, 0
    token: true                                    # an OAuth token was fetched for the remote
    replicas: 3                                    # Envoy replicas of the node group (default 1)
    latency_weights: {"10.0.0.1:8000": 3}          # least-latency weights per endpoint
    copy_route: {host: 203.0.113.9, port: 8000}    # where a destination's copy is reached

and `ir.yaml` is the golden: `dataclasses.asdict` of the planned gateway, with the bearer token
redacted. UPDATE_GOLDEN=1 rewrites the goldens after a reviewed change.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from spillover import ir
from spillover.decide import Decision
from spillover.decide.copies import CopyRoute
from spillover.plan import plan_gateway
from spillover.policy import ModelDeployment, OverflowState, validate_document
from tests.harness import golden

GOLDEN = Path(__file__).parent / "golden"
POLICY, INPUTS, OUTPUT = "policy.yaml", "inputs.yaml", "ir.yaml"
CASES = golden.case_names(GOLDEN, POLICY)

# What the token fetcher would have fetched; it must never reach a golden file.
TOKEN = "plan-golden-token-3f9c2a7e"
REDACTED = "<redacted>"
_INPUT_KEYS = ("decision", "token", "replicas", "latency_weights", "copy_route")


@dataclasses.dataclass(frozen=True)
class Inputs:
    decision: Decision | None = None
    token: bool = False
    replicas: int = 1
    latency_weights: dict[str, int] = dataclasses.field(default_factory=dict)
    copy_route: CopyRoute | None = None


def _inputs(path: Path) -> Inputs:
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: must be a mapping")
    unknown = sorted(set(data) - set(_INPUT_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(_INPUT_KEYS)})")
    decision = None
    if "decision" in data:
        raw = data["decision"]
        if not isinstance(raw, dict) or "state" not in raw or set(raw) - {"state", "remote_share", "remote"}:
            raise ValueError(f"{path}: decision must be a mapping of state, remote_share and remote, got {raw!r}")
        decision = Decision(
            OverflowState(raw["state"]), int(raw.get("remote_share", 0)), remote=raw.get("remote", "available")
        )
    token = data.get("token", False)
    replicas = data.get("replicas", 1)
    weights = data.get("latency_weights", {})
    if not isinstance(token, bool) or type(replicas) is not int or not isinstance(weights, dict):
        raise ValueError(f"{path}: token must be true/false, replicas an int, latency_weights a mapping")
    route = data.get("copy_route")
    if route is not None and (not isinstance(route, dict) or set(route) != {"host", "port"}):
        raise ValueError(f"{path}: copy_route must be a mapping of host and port, got {route!r}")
    copy_route = CopyRoute(str(route["host"]), int(route["port"])) if route is not None else None
    return Inputs(decision, token, replicas, {str(k): int(v) for k, v in weights.items()}, copy_route)


def _policy(path: Path) -> ModelDeployment:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    if len(documents) != 1:
        pytest.fail(f"{path}: holds {len(documents)} documents; a case plans exactly one ModelDeployment")
    result = validate_document(documents[0], file=str(path), index=0)
    if not isinstance(result, ModelDeployment):
        pytest.fail(f"{path}: invalid policy:\n" + "\n".join(str(error) for error in result))
    return result


def plan_case(case: str) -> ir.Gateway:
    md = _policy(GOLDEN / case / POLICY)
    inputs = _inputs(GOLDEN / case / INPUTS)
    return plan_gateway(
        "edge",
        # Not Envoy's conventional 10000 (nothing binds it here, but no test names a default port).
        ir.Listener(port=24010),
        [md],
        {md.model: inputs.decision} if inputs.decision else {},
        inputs.replicas,
        {md.model: TOKEN if inputs.token else None},
        {md.model: inputs.latency_weights} if inputs.latency_weights else None,
        {md.model: inputs.copy_route} if inputs.copy_route else None,
    )


def _plain(value: Any) -> Any:
    """asdict's output as YAML-safe values: tuples become lists, the bearer token is redacted."""
    if isinstance(value, dict):
        return {
            key: (REDACTED if key == "bearer_token" and item is not None else _plain(item))
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def render(gateway: ir.Gateway) -> str:
    return yaml.safe_dump(_plain(dataclasses.asdict(gateway)), sort_keys=False, default_flow_style=False)


def test_there_are_cases() -> None:
    assert len(CASES) >= 12, CASES


def test_every_golden_directory_is_a_case() -> None:
    assert golden.orphans(GOLDEN, POLICY) == []


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    gateway = plan_case(case)
    rendered = render(gateway)
    assert TOKEN not in rendered
    tokens = [m.remote.bearer_token for m in gateway.models if m.remote is not None and m.remote.bearer_token]
    # Redaction is not vacuous: where a token was planned, the golden shows that one was there.
    assert rendered.count(f"bearer_token: {REDACTED}") == len(tokens)
    assert all(token == TOKEN for token in tokens)
    golden.check_case(GOLDEN / case, {POLICY, INPUTS}, {OUTPUT: rendered})


def test_no_golden_holds_the_token() -> None:
    leaks = [str(path) for path in GOLDEN.rglob("*") if path.is_file() and TOKEN in path.read_text()]
    assert leaks == []


@pytest.mark.parametrize("case", CASES)
def test_planning_is_deterministic(case: str) -> None:
    assert plan_case(case) == plan_case(case)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("replica: 2\n", r"unknown key\(s\) replica"),
        ("decision: {share: 40}\n", "decision must be a mapping of state, remote_share and remote"),
        ("replicas: '2'\n", "replicas an int"),
        ("copy_route: {host: h}\n", "copy_route must be a mapping of host and port"),
    ],
)
def test_inputs_are_checked(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / INPUTS).write_text(text)
    with pytest.raises(ValueError, match=message):
        _inputs(tmp_path / INPUTS)
