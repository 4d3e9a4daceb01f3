"""The golden cases' IR loader: strict, typed, and clear about what is wrong and where."""

from __future__ import annotations

from pathlib import Path

import pytest

from spillover.ir import Endpoint, Gateway, Model, Profile, RemoteBackend, StrategyParams, TrafficSplit
from tests.harness.ir_yaml import IrYamlError, from_data, load_gateway


def _load(tmp_path: Path, text: str) -> Gateway:
    path = tmp_path / "ir.yaml"
    path.write_text(text)
    return load_gateway(path)


def test_a_full_document_becomes_the_ir(tmp_path: Path) -> None:
    gateway = _load(
        tmp_path,
        """
name: edge
listener: {address: 127.0.0.1, port: 18080}
models:
  - name: m
    endpoints: [{host: 10.0.0.1, port: 8000, weight: 3}]
    profiles:
      - {name: default, strategy: prefix-cache, requests_per_second: 5, params: {prefix_chars: 64}}
    remote: {host: r.example, port: 443, headers: [[x-a, b]]}
    split: {local: 60, remote: 40}
""",
    )
    [model] = gateway.models
    assert gateway.listener.port == 18080
    assert model.endpoints == (Endpoint("10.0.0.1", 8000, weight=3),)
    assert model.profiles == (
        Profile("default", "prefix-cache", requests_per_second=5.0, params=StrategyParams(prefix_chars=64)),
    )
    assert isinstance(model.profiles[0].requests_per_second, float)
    assert model.remote == RemoteBackend("r.example", 443, headers=(("x-a", "b"),))
    assert model.split == TrafficSplit(60, 40)
    # Left out: the dataclass defaults, exactly as when the IR is built in Python.
    assert model.timeouts == Model("m").timeouts


def test_an_unknown_field_is_named_with_its_path_and_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(IrYamlError) as error:
        _load(tmp_path, "name: g\nmodels:\n  - name: m\n    profiles: [{name: default, strategie: random}]\n")
    message = str(error.value)
    assert str(tmp_path / "ir.yaml") in message
    assert "models[0].profiles[0]: unknown field(s) strategie of Profile" in message
    assert "known: name, strategy," in message


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"models": []}, r"Gateway needs field\(s\) name"),
        ({"name": "g", "listener": {"port": "80"}}, "listener.port: must be int, got '80'"),
        ({"name": "g", "listener": {"port": True}}, "listener.port: must be int, got True"),
        ({"name": "g", "models": {"name": "m"}}, "models: must be a list"),
        (
            {"name": "g", "models": [{"name": "m", "split": {"local": 1.5}}]},
            r"models\[0\].split.local: must be int",
        ),
        (
            {"name": "g", "models": [{"name": "m", "remote": {"host": "h", "port": 1, "headers": [["a"]]}}]},
            r"models\[0\].remote.headers\[0\]: must be a list of 2 items",
        ),
        ({"name": "g", "models": ["m"]}, r"models\[0\]: must be a mapping of Model fields"),
        ({"name": "g", "models": [{"name": "m", "timeouts": {"request_s": "1s"}}]}, "must be a number"),
    ],
)
def test_wrong_values_are_refused_with_their_path(data: object, message: str) -> None:
    with pytest.raises(IrYamlError, match=message):
        from_data(Gateway, data)


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(IrYamlError, match="duplicate key 'name'"):
        _load(tmp_path, "name: a\nname: b\n")
