"""Body routing on a real Envoy: the model read from a JSON body's top-level key (the body-model Lua), the
header path that skips the body filters, OpenAI-style 404s (the rest of the translation: test_envoy_e2e.py)."""

from __future__ import annotations

import json

from spillover.ir import (
    Model,
    Profile,
)
from tests.harness.client import request
from tests.harness.polling import wait_until
from tests.harness.translated import Gw, ep, served_by

# -- model selection ------------------------------------------------------------------------------


def test_body_and_header_model_routing_and_openai_404(gateway, upstream_factory) -> None:
    a, b = upstream_factory("alpha-pod"), upstream_factory("beta-pod")
    gw = gateway(Model("alpha", (ep(a),)), Model("beta", (ep(b),)))

    assert served_by(gw.post({"model": "alpha", "messages": []})) == "alpha-pod"
    assert served_by(gw.post({"model": "beta", "messages": []})) == "beta-pod"
    utf8 = {"content-type": "application/json; charset=utf-8"}
    assert served_by(gw.post({"model": "beta"}, utf8)) == "beta-pod"
    # The header wins over the body, and works without any JSON body at all.
    assert served_by(gw.post({"model": "alpha"}, {"x-model": "beta"})) == "beta-pod"
    assert served_by(gw.post("not json", {"content-type": "text/plain", "model": "alpha"})) == "alpha-pod"
    assert (
        served_by(request("GET", f"http://127.0.0.1:{gw.port}/v1/models", headers={"x-model": "beta"}))
        == "beta-pod"
    )

    unknown = gw.post({"model": 'gpt-"5'})
    assert unknown.status == 404
    assert unknown.headers["content-type"] == "application/json"
    assert unknown.json() == {
        "error": {
            "message": 'The model `gpt-"5` does not exist',
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }
    # An unknown header model is not rescued by a known body model: the header decides.
    assert gw.post({"model": "alpha"}, {"x-model": "nope"}).json()["error"]["message"] == (
        "The model `nope` does not exist"
    )
    missing = gw.post({"messages": []})
    assert missing.status == 404
    assert missing.json()["error"]["code"] == "model_not_found"
    # The `model` header alone, and an empty x-model (ignored, as if absent: the body decides).
    assert served_by(gw.post({"messages": []}, {"model": "beta"})) == "beta-pod"
    assert served_by(gw.post({"model": "alpha"}, {"x-model": ""})) == "alpha-pod"
    # A body model no header could carry is still named in the 404.
    odd = "a\nb" + "x" * 300
    assert gw.post({"model": odd}).json()["error"]["message"] == f"The model `{odd}` does not exist"
    assert a.request_count == 3 and b.request_count == 5


def _json_to_metadata_runs(gw: Gw) -> int:
    """How many requests json_to_metadata looked at (its rq_* counters, whatever the outcome)."""
    return sum(v for k, v in gw.envoy.stats().items() if k.startswith("json_to_metadata.rq."))


def test_header_routed_requests_skip_the_body_filters(gateway, upstream_factory) -> None:
    up = upstream_factory("pod")
    gw = gateway(Model("m", (ep(up),), profiles=(Profile("default", "random"), Profile("b", "random"))))
    before = _json_to_metadata_runs(gw)
    for headers in ({"x-model": "m"}, {"x-model": "m", "config-profile": "b"}, {"x-model": "nope"}):
        gw.post({"model": "m", "messages": []}, headers)
    assert _json_to_metadata_runs(gw) == before
    # A body-routed request: the body-model Lua writes x-model, json_to_metadata (a parse of the whole
    # body) does not run; the slow path's still does (a JSON media type in capitals).
    assert served_by(gw.post({"model": "m", "messages": []}, {"config-profile": "b"})) == "pod"
    assert up.requests[-1]["headers"]["x-model"] == "m"
    assert up.requests[-1]["headers"]["config-profile"] == "b"
    assert served_by(gw.post({"model": "m"}, {"content-type": "Application/JSON"})) == "pod"
    wait_until(lambda: _json_to_metadata_runs(gw) == before + 1, timeout=5, message="slow path")


def test_body_routing_edge_cases(gateway, upstream_factory) -> None:
    """What the native body path hands to the slow path, and what it answers itself."""
    up = upstream_factory("pod")
    gw = gateway(Model("m", (ep(up),)))
    # A JSON media type in capitals is JSON too (the slow path reads it).
    assert served_by(gw.post({"model": "m"}, {"content-type": "Application/JSON"})) == "pod"
    # The body decides over an empty `model` header; a number is no model's name.
    assert served_by(gw.post({"model": "m"}, {"model": ""})) == "pod"
    assert gw.post({"model": 7}).json()["error"]["message"] == "The model `7` does not exist"
    # Not JSON, no body, no model: the 404 of no model, and nothing reaches the upstream.
    no_model: list[dict | str | None] = ["not json", None, {"model": None}, {"messages": []}]
    for body in no_model:
        missing = gw.post(body)
        assert (missing.status, missing.json()["error"]["code"]) == (404, "model_not_found"), body
    # The client's prefix-cache affinity never reaches the upstream (the model's route removes it).
    assert served_by(gw.post({"model": "m"}, {"x-spillover-prefix-hash": "forged"})) == "pod"
    assert "x-spillover-prefix-hash" not in up.requests[-1]["headers"]
    assert up.request_count == 3


def test_body_model_is_the_top_level_key(gateway, upstream_factory) -> None:
    """The body path reads the top level of the JSON object (lua.BODY_MODEL), not a parse of all of it:
    the model wherever it stands among the keys, never a nested "model", the last of duplicates,
    escapes decoded in keys and values; a body that is not a closed JSON object names no model."""
    a, b = upstream_factory("a-pod"), upstream_factory("b-pod")
    gw = gateway(Model("a", (ep(a),)), Model("b/é", (ep(b),)))
    routed = [
        # A quote after an escaped backslash ends the string; the escaped ones before it do not.
        json.dumps({"messages": [{"role": "user", "content": 'x\\" , "model": "b/é"'}], "model": "a"}),
        '{"tools": [{"model": "b/é", "deep": {"model": ["b/é"]}}], "n": -1.5e3, "ok": true, "model" : "a" }',
        '{"model": "b/\\u00e9", "model": "a"}',
        '{"mod\\u0065l": "a"}',
        '\n {"stream": false, "model": "a", "max_tokens": null}\n',
    ]
    for body in routed:
        assert served_by(gw.post(body)) == "a-pod", body
    assert served_by(gw.post('{"model": "b/\\u00e9"}')) == "b-pod"
    assert served_by(gw.post('{"model": "b/é"}')) == "b-pod"  # UTF-8 as it is
    no_model = ['{"model": "a"', '{"model": "a"} trailing', '["model", "a"]', '{"model": {"name": "a"}}',
                '{"model": "a\\x"}', '{"messages": [}, "model": "a"', '{}', '{"model": ""}']  # fmt: skip
    for body in no_model:
        missing = gw.post(body)
        assert missing.json()["error"]["message"].startswith("No model given"), body
    assert gw.post('{"model": false}').json()["error"]["message"] == "The model `false` does not exist"
    assert gw.post('{"model": 2.5}').json()["error"]["message"] == "The model `2.5` does not exist"
    # A raw control character is no JSON string (no model); escaped, a carriage return or NUL can't go
    # in a header, and the 404 names it from metadata (Envoy's formatter ends the name at a NUL).
    assert gw.post('{"model": "a\tb"}').json()["error"]["message"].startswith("No model given")
    for odd, named in (("a\rb", "a\rb"), ("a\x00b", "a")):
        answer = gw.post(json.dumps({"model": odd}))
        assert (answer.status, answer.json()["error"]["message"]) == (404, f"The model `{named}` does not exist")
    assert a.request_count == len(routed) and b.request_count == 2
    # The body is buffered whole (Envoy's 1 MiB buffer limit): a large one still routes, a larger one is
    # refused with 413, as when json_to_metadata buffered it.
    assert served_by(gw.post({"messages": [{"content": "x" * 900_000}], "model": "a"})) == "a-pod"
    assert gw.post({"model": "a", "messages": [{"content": "x" * 2_000_000}]}).status == 413
