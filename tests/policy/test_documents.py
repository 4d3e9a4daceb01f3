"""Beamlit documents unchanged, the shipped examples, the CRD, the CLI, secrets."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from spillover.policy import crd
from spillover.policy.model import ModelDeployment
from spillover.policy.secrets import SecretError, resolve_client_secret
from spillover.policy.validate import load_file, validate_documents, validate_main
from tests.policy.docs import base, errors, ok, set_path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "policies"

# Beamlit's tutorial ("Offload your model to any destination"), verbatim.
BEAMLIT_TUTORIAL = """
apiVersion: deployment.beamlit.com/v1alpha1
kind: ModelDeployment
metadata:
  name: my-model
spec:
  model: my-model
  environment: production
  modelSourceRef:
    apiVersion: apps/v1
    kind: Deployment
    name: php-apache
    namespace: default
  serviceRef:
    name: php-apache
    namespace: default
    targetPort: 80
  offloadingConfig:
    remoteBackend:
      host: my-model-on-another-cluster:80
      scheme: http
    behavior:
      percentage: 50
    metrics:
      - type: Resource
        resource:
          name: cpu
          target:
            type: Utilization
            averageUtilization: 50
"""

# Beamlit's controller sample: External metric, string quantity, labels, no remoteBackend.
BEAMLIT_SAMPLE = """
apiVersion: deployment.beamlit.com/v1alpha1
kind: ModelDeployment
metadata:
  namespace: beamlit
  labels:
    app.kubernetes.io/name: operator
    app.kubernetes.io/managed-by: kustomize
  name: test-model-deployment
spec:
  model: "offloading-model"
  environment: "production"
  modelSourceRef:
    apiVersion: apps/v1 # mandatory
    kind: Deployment # mandatory
    name: whisper-app # mandatory
    namespace: beamlit # remove
  serviceRef:
    name: whisper-app
    namespace: beamlit
    targetPort: 5000
  offloadingConfig:
    behavior:
      percentage: 50
    metrics:
      - type: External
        external:
          metric:
            name: transcription_duration_seconds_sum
            selector:
              matchLabels:
                job: "whisper-app"
          target:
            type: Value
            value: "2"
"""

# Beamlit's controller config defaultRemoteBackend, as a remoteBackend with inline oauth.
BEAMLIT_OAUTH = """
apiVersion: deployment.beamlit.com/v1alpha1
kind: ModelDeployment
metadata: {name: beamlit-oauth}
spec:
  model: my-model
  modelSourceRef: {apiVersion: apps/v1, kind: Deployment, name: m}
  offloadingConfig:
    remoteBackend:
      host: "run.beamlit.dev"
      pathPrefix: "/$workspace/$model"
      authConfig:
        type: oauth
        oauthConfig:
          clientId: "REPLACE_ME"
          clientSecret: "REPLACE_ME"
          tokenUrl: "https://api.beamlit.dev/v0/oauth/token"
      scheme: https
"""


@pytest.mark.parametrize("text", [BEAMLIT_TUTORIAL, BEAMLIT_SAMPLE, BEAMLIT_OAUTH], ids=["tutorial", "sample", "oauth"])
def test_beamlit_documents_validate_unchanged(text: str) -> None:
    m = ok(yaml.safe_load(text))
    assert m.api_version == "deployment.beamlit.com/v1alpha1"


def test_beamlit_tutorial_semantics() -> None:
    m = ok(yaml.safe_load(BEAMLIT_TUTORIAL))
    oc = m.spec.offloading_config
    assert oc.behavior.percentage == 50
    assert (oc.remote_backend.host_name, oc.remote_backend.effective_port) == ("my-model-on-another-cluster", 80)
    (metric,) = oc.metrics
    assert (metric.effective_threshold, metric.effective_source, metric.effective_reducer) == (50.0, "kubernetes", "average")
    assert m.spec.service_ref.target_port == 80


def test_beamlit_sample_quantity_and_value_semantics() -> None:
    (metric,) = ok(yaml.safe_load(BEAMLIT_SAMPLE)).spec.offloading_config.metrics
    assert (metric.effective_threshold, metric.effective_reducer) == (2.0, "sum")


def test_other_kinds_in_the_same_file_are_skipped() -> None:
    text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n---\n" + BEAMLIT_TUTORIAL
    result = load_file(text.encode(), "mixed.yaml")
    assert result.errors == ()
    assert [(d.index, d.model.name) for d in result.documents] == [(1, "my-model")]


def test_examples_validate() -> None:
    files = sorted(EXAMPLES.glob("*.yaml"))
    assert len(files) >= 3
    models, errs = validate_documents([str(f) for f in files])
    assert [str(e) for e in errs] == []
    assert len(models) == len(files)
    by_name = {m.name: m for m in models}
    assert by_name["my-model"].api_version == "deployment.beamlit.com/v1alpha1"
    remote = by_name["qwen-2-5-7b"].spec.offloading_config.remote_backend
    assert remote.scheme == "https" and remote.auth_config.oauth_config.client_secret_ref.file
    assert by_name["llama-3-8b"].spec.routing.profiles["batch"].requests_per_second == 20


def test_beamlit_example_is_the_tutorial_document() -> None:
    example = yaml.safe_load((EXAMPLES / "beamlit-modeldeployment.yaml").read_text())
    assert example == yaml.safe_load(BEAMLIT_TUTORIAL)


# --- CRD ---------------------------------------------------------------------------------


def test_committed_crd_is_up_to_date() -> None:
    committed = (ROOT / "manifests" / "crd-modeldeployment.yaml").read_text()
    assert committed == crd.render(), "run: python -m spillover.policy.crd > manifests/crd-modeldeployment.yaml"


def test_crd_schema_is_structural() -> None:
    schema = crd.openapi_schema()
    assert crd.structural_problems(schema) == []
    assert "$ref" not in crd.render()


def test_structural_check_catches_problems() -> None:
    bad = {"type": "object", "properties": {"a": {"$ref": "#/x"}, "b": {"anyOf": [{"type": "string"}]}}}
    assert crd.structural_problems(bad) == [
        ".a: keyword $ref is not allowed", ".a: type is missing",
        ".b: anyOf is only allowed for int-or-string", ".b: type is missing",
    ]


def test_crd_shape() -> None:
    doc = yaml.safe_load(crd.render())
    spec = doc["spec"]
    assert doc["metadata"]["name"] == "modeldeployments.spillover.dev"
    assert {"md", "mdep"} <= set(spec["names"]["shortNames"])
    (version,) = spec["versions"]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["MODEL", "STATE", "REMOTE%", "AGE"]
    props = version["schema"]["openAPIV3Schema"]["properties"]
    behavior = props["spec"]["properties"]["offloadingConfig"]["properties"]["behavior"]["properties"]
    assert behavior["bufferDuration"] == {
        "description": "Metrics must stay below threshold this long", "x-kubernetes-int-or-string": True}
    assert behavior["percentage"]["maximum"] == 100
    profile = props["spec"]["properties"]["routing"]["properties"]["profiles"]["additionalProperties"]
    assert "session-affinity" in profile["properties"]["routingStrategy"]["enum"]
    assert profile["properties"]["routingConfig"]["x-kubernetes-preserve-unknown-fields"] is True
    assert props["status"]["properties"]["state"]["enum"] == ["STANDBY", "OVERFLOW", "FAILOVER", "DISABLED"]


# --- CLI -----------------------------------------------------------------------------------


def test_validate_main_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert validate_main([str(EXAMPLES)]) == 0
    assert capsys.readouterr().out == "ok: 3 model(s) valid\n"


def test_validate_main_reports_every_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "llama.yaml").write_text(yaml.safe_dump_all([
        base(routing={"profiles": {"default": {}, "batch": {"requestsPerSecond": -1}}}),
        set_path(base(model="other"), "metadata.name", "other"),
    ]))
    dup = base(model="other")
    dup["metadata"]["name"] = "llama"
    (tmp_path / "dup.yaml").write_text(yaml.safe_dump(dup))
    (tmp_path / "broken.yml").write_text("kind: ModelDeployment\nspec: [\n")
    code = validate_main([str(tmp_path / "llama.yaml"), str(tmp_path / "dup.yaml"), str(tmp_path / "broken.yml"),
                          str(tmp_path / "missing.yaml")])
    err = capsys.readouterr().err.replace(str(tmp_path) + "/", "")
    assert code == 1
    assert err.splitlines() == [
        "broken.yml:3: invalid YAML: while parsing a flow node: expected the node content, but found '<stream end>' "
        "(line 3, column 1)",
        'dup.yaml[0] spec.model: duplicate model "other" (also defined in llama.yaml[1])',
        "llama.yaml[0] spec.routing.profiles.batch.requestsPerSecond: must be >= 0",
        "missing.yaml: no such file or directory",
        "4 error(s)",
    ]


def test_duplicate_keys_are_errors() -> None:
    result = load_file(b"kind: ModelDeployment\nkind: ModelDeployment\n", "d.yaml")
    assert [str(e) for e in result.errors] == [
        "d.yaml:2: invalid YAML: while constructing a mapping: found duplicate key 'kind' (line 2, column 1)"]


# --- secrets never leak -----------------------------------------------------------------------

SECRET = "s3cr3t-VALUE-never-shown"


def _oauth(**oauth: object) -> dict:
    cfg = {"clientId": "c", "tokenUrl": "https://auth.example.com/t", **oauth}
    return base(offloadingConfig={"remoteBackend": {"host": "r.example.com", "scheme": "https",
                                                    "authConfig": {"type": "oauth", "oauthConfig": cfg}}})


@pytest.mark.parametrize("doc", [
    _oauth(clientSecret=SECRET, clientSecretRef={"file": "/x"}),  # rule error next to a valid secret
    _oauth(clientSecret={SECRET: SECRET}),  # wrong type
    _oauth(clientSecret=[SECRET]),
    _oauth(clientSecret=SECRET, tokenUrl="ftp://nope"),
    _oauth(clientSecret=SECRET, bogus=SECRET),
])
def test_invalid_secret_is_never_echoed(doc: dict) -> None:
    errs = errors(doc)
    assert errs and all(SECRET not in e for e in errs)


def test_yaml_error_does_not_quote_the_line() -> None:
    text = f'kind: ModelDeployment\nspec:\n  clientSecret: "{SECRET}\n'.encode()
    (err,) = load_file(text, "s.yaml").errors
    assert SECRET not in str(err) and err.line is not None


def test_secret_hidden_in_repr_dump_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    m = ok(_oauth(clientSecret=SECRET))
    caplog.set_level(logging.DEBUG)
    logging.getLogger("t").debug("model %r %s", m, m)
    for text in (repr(m), str(m), str(m.to_document()), m.model_dump_json(), str(m.model_dump()), caplog.text):
        assert SECRET not in text
    assert resolve_client_secret(m.spec.offloading_config.remote_backend.auth_config.oauth_config).get_secret_value() == SECRET


def test_model_validate_hides_input(tmp_path: Path) -> None:
    with pytest.raises(Exception) as info:
        ModelDeployment.model_validate(_oauth(clientSecret=12345678987654321))
    assert "12345678987654321" not in str(info.value)


def test_secret_file(tmp_path: Path) -> None:
    (tmp_path / "s").write_text(SECRET + "\n")
    m = ok(_oauth(clientSecretRef={"file": str(tmp_path / "s")}))
    oauth = m.spec.offloading_config.remote_backend.auth_config.oauth_config
    assert resolve_client_secret(oauth).get_secret_value() == SECRET
    (tmp_path / "s").write_text("")
    with pytest.raises(SecretError) as info:
        resolve_client_secret(oauth)
    assert str(info.value) == f"secret file {tmp_path / 's'} is empty"


def test_kubernetes_secret_ref_is_left_to_the_kubernetes_source() -> None:
    m = ok(_oauth(clientSecretRef={"name": "oauth", "key": "clientSecret"}))
    assert resolve_client_secret(m.spec.offloading_config.remote_backend.auth_config.oauth_config) is None
