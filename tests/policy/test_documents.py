"""Beamlit documents unchanged, the shipped examples, the CRD, the CLI, secrets."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from spillover.policy import ModelDeployment, RemoteBackend, crd
from spillover.policy.defaults import PolicyDefaults
from spillover.policy.validate import load_file, validate_documents, validate_main
from spillover.sources.files.secrets import SecretError, resolve_client_secret
from tests.harness.model_parts import client_secret_ref, oauth_config, offloading, remote_backend, service_ref
from tests.harness.policy_docs import base, errors, ok, set_path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "policies"
# Beamlit's tutorial document (Deployment, Service and ModelDeployment), as tests/e2e applies it.
TUTORIAL_FILE = ROOT / "tests" / "e2e" / "beamlit" / "tutorial.yaml"

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


# What Beamlit's controller config gives a ModelDeployment without remoteBackend (reference 003).
BEAMLIT_DEFAULTS = PolicyDefaults(remote_backend=RemoteBackend.model_validate(
    {"host": "run.beamlit.dev", "scheme": "https", "pathPrefix": "/$workspace/$model"}
))


@pytest.mark.parametrize("text", [BEAMLIT_TUTORIAL, BEAMLIT_SAMPLE, BEAMLIT_OAUTH], ids=["tutorial", "sample", "oauth"])
def test_beamlit_documents_validate_unchanged(text: str) -> None:
    m = ok(yaml.safe_load(text), BEAMLIT_DEFAULTS)
    assert m.api_version == "deployment.beamlit.com/v1alpha1"


def test_metrics_without_a_remote_backend_need_the_default_one() -> None:
    # Beamlit's sample names no remoteBackend: it overflows to the controller's default backend...
    m = ok(yaml.safe_load(BEAMLIT_SAMPLE), BEAMLIT_DEFAULTS)
    remote = remote_backend(m)
    assert remote == BEAMLIT_DEFAULTS.remote_backend
    assert remote.render_path_prefix(m.model, m.workspace) == "/beamlit/offloading-model"
    # ...and without a default it is an error instead of a model that silently never overflows.
    assert errors(yaml.safe_load(BEAMLIT_SAMPLE)) == [
        "t.yaml[0] spec.offloadingConfig.remoteBackend: is required with metrics (or a destination, or a defaultRemoteBackend in the "
        "controller config, --config): without it the model can never overflow"
    ]
    # A backend of its own wins over the default.
    assert remote_backend(ok(yaml.safe_load(BEAMLIT_TUTORIAL), BEAMLIT_DEFAULTS)).host == (
        "my-model-on-another-cluster:80"
    )


def test_beamlit_tutorial_semantics() -> None:
    m = ok(yaml.safe_load(BEAMLIT_TUTORIAL))
    oc = offloading(m)
    assert oc.behavior is not None and oc.behavior.percentage == 50
    remote = remote_backend(m)
    assert (remote.host_name, remote.effective_port) == ("my-model-on-another-cluster", 80)
    (metric,) = oc.metrics or []
    assert (metric.effective_threshold, metric.effective_source, metric.effective_reducer) == (50.0, "kubernetes", "average")
    assert service_ref(m).target_port == 80


def test_beamlit_sample_quantity_and_value_semantics() -> None:
    (metric,) = offloading(ok(yaml.safe_load(BEAMLIT_SAMPLE), BEAMLIT_DEFAULTS)).metrics or []
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
    assert remote_backend(by_name["qwen-2-5-7b"]).scheme == "https"
    assert client_secret_ref(by_name["qwen-2-5-7b"]).file
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
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["MODEL", "STATE", "REMOTE%", "COPY", "COPY-READY", "AGE"]
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
    out, err = capsys.readouterr()
    assert out == "ok: 3 model(s) valid, 3 warning(s)\n"
    # The Beamlit example is valid, and file mode says what it cannot do with it.
    assert all(line.startswith(f"warning: {EXAMPLES}/beamlit-modeldeployment.yaml[0] ") for line in err.splitlines())


def test_file_mode_warns_about_references_it_cannot_resolve(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Beamlit's tutorial (Deployment, Service, ModelDeployment in one file) in file mode: valid, and warned
    about instead of a silent FAILOVER."""
    tutorial = tmp_path / "tutorial.yaml"
    tutorial.write_text(TUTORIAL_FILE.read_text())
    result = load_file(tutorial.read_bytes(), "tutorial.yaml")
    assert result.errors == () and [d.index for d in result.documents] == [2]
    assert [(w.index, w.path) for w in result.warnings] == [
        (2, "spec.serviceRef"), (2, "spec.modelSourceRef"), (2, "spec.offloadingConfig.metrics[0]")]
    assert str(result.warnings[0]) == (
        "tutorial.yaml[2] spec.serviceRef: resolved only in Kubernetes mode (serve --kubernetes); give "
        "localBackend.endpoints: without a local endpoint all traffic goes to the remote backend (FAILOVER)")
    assert validate_main([str(tutorial)]) == 0
    out, err = capsys.readouterr()
    assert out == "ok: 1 model(s) valid, 3 warning(s)\n" and err.count("warning: ") == 3
    # localBackend.endpoints given: nothing to warn about the references
    doc = yaml.safe_load(BEAMLIT_TUTORIAL)
    doc["apiVersion"] = "spillover.dev/v1alpha1"
    doc["spec"]["localBackend"] = {"endpoints": ["10.0.0.1:80"]}
    doc["spec"]["offloadingConfig"]["metrics"][0]["source"] = "prometheus"
    assert load_file(yaml.safe_dump(doc), "x.yaml").warnings == ()


@pytest.mark.parametrize(("content", "what"), [
    ("", "empty"),
    ("# nothing but a comment\n", "a comment"),
    ("apiVersion: v1\nkind: Service\nmetadata: {name: s}\n---\napiVersion: apps/v1\nkind: Deployment\n"
     "metadata: {name: d}\n", "other kinds"),
])
def test_validate_fails_on_a_file_without_a_model_deployment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, what: str
) -> None:
    path = tmp_path / "nothing.yaml"
    path.write_text(content)
    assert validate_main([str(path)]) == 1, what
    assert capsys.readouterr().err.splitlines() == [
        f"{path}: no ModelDeployment in this file (it is empty or holds only other kinds)", "1 error(s)"]
    # a directory of such files too; one ModelDeployment anywhere in it is enough
    assert validate_main([str(tmp_path)]) == 1
    assert f"{tmp_path}: no ModelDeployment in this directory's *.yaml / *.yml files" in capsys.readouterr().err
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(base()))
    assert validate_main([str(tmp_path)]) == 0


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
        # libyaml's wording (the C loader); file, line and column as before.
        "broken.yml:3: invalid YAML: while parsing a flow node: did not find expected node content (line 3, column 1)",
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
    secret = resolve_client_secret(oauth_config(m))
    assert secret is not None and secret.get_secret_value() == SECRET


def test_model_validate_hides_input(tmp_path: Path) -> None:
    with pytest.raises(Exception) as info:
        ModelDeployment.model_validate(_oauth(clientSecret=12345678987654321))
    assert "12345678987654321" not in str(info.value)


def test_secret_file(tmp_path: Path) -> None:
    (tmp_path / "s").write_text(SECRET + "\n")
    m = ok(_oauth(clientSecretRef={"file": str(tmp_path / "s")}))
    oauth = oauth_config(m)
    secret = resolve_client_secret(oauth)
    assert secret is not None and secret.get_secret_value() == SECRET
    (tmp_path / "s").write_text("")
    with pytest.raises(SecretError) as info:
        resolve_client_secret(oauth)
    assert str(info.value) == f"secret file {tmp_path / 's'} is empty"


def test_kubernetes_secret_ref_is_left_to_the_kubernetes_source() -> None:
    m = ok(_oauth(clientSecretRef={"name": "oauth", "key": "clientSecret"}))
    assert resolve_client_secret(oauth_config(m)) is None
