"""cert-manager's own CustomResourceDefinitions (Certificate, Issuer), from its Go module through the Go
module proxy into the Kubernetes build cache (.cache/k8s/gomod, like tests/apiserver/build.sh), so that
manifests/cert-manager is checked against the real schema by a real API server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

__all__ = ["CERT_MANAGER_MODULE", "cert_manager_crds"]

REPO = Path(__file__).resolve().parents[2]
CERT_MANAGER_MODULE = "github.com/cert-manager/cert-manager@v1.16.2"
_CRDS = ("crd-certificates.yaml", "crd-issuers.yaml")


def _go() -> str | None:
    return shutil.which("go") or (str(Path("/usr/local/go/bin/go")) if Path("/usr/local/go/bin/go").exists() else None)


def cert_manager_crds() -> list[dict[str, Any]]:
    """The CRDs, ready to apply; raises RuntimeError (with go's output) when the module can't be had."""
    go = _go()
    if go is None:
        raise RuntimeError("no go toolchain to fetch the cert-manager module")
    cache = Path(os.environ.get("SPILLOVER_K8S_CACHE", REPO / ".cache" / "k8s"))
    env = {
        **os.environ, "GOMODCACHE": str(cache / "gomod"), "GOPATH": str(cache / "gopath"),
        "GOFLAGS": "-mod=mod -modcacherw", "GOTOOLCHAIN": "local",
    }
    # The module proxy is the network: a lookup that times out once (seen here) is tried again, twice at most.
    for pause in (5.0, 15.0, None):
        done = subprocess.run(
            [go, "mod", "download", "-json", CERT_MANAGER_MODULE], capture_output=True, text=True, timeout=300,
            env=env, cwd=cache if cache.exists() else None,
        )
        if done.returncode == 0 or pause is None:
            break
        time.sleep(pause)
    if done.returncode != 0:
        raise RuntimeError(f"go mod download {CERT_MANAGER_MODULE}: {done.stdout}{done.stderr}")
    module = Path(json.loads(done.stdout)["Dir"])
    crds = []
    for name in _CRDS:
        document = yaml.safe_load((module / "deploy" / "crds" / name).read_text())
        # The files double as Helm templates: their labels and annotations hold template text.
        document["metadata"].pop("labels", None)
        document["metadata"].pop("annotations", None)
        crds.append(document)
    return crds
