"""Fuzzing the policy pipeline (hypothesis): YAML text -> documents -> validated ModelDeployments -> plan ->
Envoy resources. 0 crashes, 0 hangs, every rejection names a field path.

The default hypothesis profile gives each test its usual small budget (`make test`); `make fuzz` runs
them with the `fuzz` profile (tests/conftest.py): 4,000 derandomized (seeded) cases each, 12,000 in all.
"""

from __future__ import annotations

import time
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from spillover import ir
from spillover.decide import Decision
from spillover.plan import plan_gateway
from spillover.policy import ModelDeployment, OverflowState
from spillover.policy.validate import load_file, validate_document
from spillover.translate import translate
from tests.harness.policy_fuzz import documents, plausible, yaml_texts

HANG_S = 2.0  # one case taking longer than this is a hang
JARGON = ("Input should", "[type=", "pydantic", "validation error", "Value error", "Traceback")
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(yaml_texts)
def test_any_yaml_text_loads_without_crash_or_hang_and_names_what_it_refuses(text: str) -> None:
    started = time.monotonic()
    result = load_file(text.encode("utf-8", "surrogatepass"), "fuzz.yaml")
    took = time.monotonic() - started
    event(f"{len(result.documents)} valid document(s)" if result.documents else "nothing valid")
    assert took < HANG_S, f"loading took {took:.2f}s"
    for error in result.errors:
        assert error.file == "fuzz.yaml"
        assert error.message and not any(j in error.message for j in JARGON), str(error)
        if error.index is None:  # the file as a whole: it says what is wrong with the YAML
            assert error.message.startswith(("invalid YAML", "document")), str(error)


@FUZZ
@given(documents)
def test_any_document_validates_without_crash_and_every_rejection_names_a_field(doc: dict[str, Any]) -> None:
    started = time.monotonic()
    result = validate_document(doc, file="f.yaml", index=0)
    assert time.monotonic() - started < HANG_S
    event("valid" if isinstance(result, ModelDeployment) else "rejected")
    if isinstance(result, ModelDeployment):
        return
    assert result, "rejected without an error"
    for error in result:
        assert error.path, f"a rejection without a field path: {error}"
        assert error.message and not any(j in error.message for j in JARGON), str(error)
        assert str(error).startswith(f"f.yaml[0] {error.path}: ")


@FUZZ
@given(
    st.one_of(plausible, documents),
    st.sampled_from(list(OverflowState)),
    st.integers(0, 100),
    st.booleans(),
    st.integers(1, 50),
)
def test_every_valid_document_plans_and_translates(
    doc: dict[str, Any], state: OverflowState, share: int, token: bool, replicas: int
) -> None:
    """A policy the validator accepts never makes plan or translate fail: a ValueError there is a rule
    the validator lacks."""
    md = validate_document(doc)
    if not isinstance(md, ModelDeployment):
        event("rejected")
        return
    event(f"planned in {state.value}")
    share = 100 if state == OverflowState.FAILOVER else 0 if state != OverflowState.OVERFLOW else share
    decisions = {md.model: Decision(state, share)}
    tokens = {md.model: "fuzz-token" if token else None}
    gateway = plan_gateway("edge", ir.Listener("127.0.0.1", 24010), [md], decisions, replicas, tokens)
    first = translate(gateway).serialized()
    assert translate(gateway).serialized() == first  # byte-stable
