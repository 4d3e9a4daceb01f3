# The spillover control plane. Multi-stage: the build stage makes a virtual environment from the pinned
# wheel set (image/requirements.txt, hash-checked) and spillover's own wheel; the runtime stage is the
# same Debian base with only that environment added. It runs as a numeric non-root user and writes
# nothing outside /tmp, so it works with a read-only root filesystem (mount an emptyDir on /tmp, as
# manifests/ and charts/ do).
#
#   docker build -t ghcr.io/spillover-dev/spillover:0.1.0 .
#
# BASE_IMAGE is any Debian bookworm with python3 (3.11) from Debian's packages; the default is the
# official slim image. tests/install/test_image.py builds this file with buildah on a base made by
# debootstrap when it can (no registry is reachable there).
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${BASE_IMAGE} AS base
# python3 without recommends: no compiler, no pip in the runtime image. ca-certificates: TLS to remote
# backends, OAuth token endpoints and the Kubernetes API.
RUN if ! command -v python3 >/dev/null || [ ! -d /etc/ssl/certs ]; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version'

FROM base AS build
RUN if ! python3 -c 'import ensurepip' 2>/dev/null; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi
RUN python3 -m venv /opt/spillover
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY image/requirements.txt image/build-requirements.txt /src/image/
RUN /opt/spillover/bin/pip install --require-hashes --no-deps --only-binary=:all: -r /src/image/requirements.txt
# The build backend goes to a venv of its own: it is not part of the runtime.
RUN python3 -m venv /opt/build \
    && /opt/build/bin/pip install --require-hashes --no-deps --only-binary=:all: -r /src/image/build-requirements.txt
COPY pyproject.toml README.md LICENSE /src/
COPY spillover /src/spillover
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /src/dist /src \
    && /opt/spillover/bin/pip install --no-deps --no-index /src/dist/spillover-*.whl \
    && /opt/spillover/bin/pip check \
    && /opt/spillover/bin/python -m pip uninstall --yes --quiet pip \
    && /opt/spillover/bin/spillover --version

FROM base
COPY --from=build /opt/spillover /opt/spillover
ENV PATH=/opt/spillover/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp
# 65532: the user of manifests/ and the chart (runAsUser); numeric, so runAsNonRoot can verify it.
USER 65532:65532
WORKDIR /tmp
EXPOSE 18000 19000
ENTRYPOINT ["spillover"]
CMD ["--help"]
LABEL org.opencontainers.image.title="spillover" \
      org.opencontainers.image.description="Envoy control plane for AI model serving" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
