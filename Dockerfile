# The operator image: `projectorset-operator`, the command the Helm chart runs
# (charts/projectorset-operator/values.yaml `command`).
#
#   docker build -t ghcr.io/projectorset/projectorset-operator:0.1.0 .
#
# The base image is pinned by its full version tag. Pin it by digest too
# (python:3.11.14-slim-bookworm@sha256:...) where a registry can be asked: the machines this
# project is built on reach no container registry, so the digest could not be looked up.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# --- build: the locked dependencies, then the package, into a virtualenv ---
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CACHE=1 UV_PYTHON_DOWNLOADS=never UV_COMPILE_BYTECODE=1 \
    UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /src
# uv, pinned by hash, from PyPI.
COPY requirements-uv.txt ./
RUN pip install --require-hashes --no-deps -r requirements-uv.txt
# The dependencies from uv.lock (no extras: the plugin's and the development tools stay out)
# before any source is copied, so a source change reuses this layer.
COPY pyproject.toml uv.lock ./
RUN uv sync --locked --no-install-project --python /usr/local/bin/python3
# Then the package alone: its dependencies are all in place already.
COPY README.md ./
COPY operator ./operator
RUN uv pip install --python /opt/venv/bin/python --no-deps . \
 && /opt/venv/bin/projectorset-operator --help > /dev/null

# --- final: the virtualenv only, no uv, compilers, caches or sources ---
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="projectorset-operator" \
      org.opencontainers.image.description="Zero-downtime upgrades of Sequent event-sourced applications on Kubernetes"
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# The same numeric user as the chart's securityContext (runAsNonRoot needs a numeric USER).
USER 65532:65532
# Kopf's health endpoint and the Prometheus metrics.
EXPOSE 8080 9090
ENTRYPOINT ["projectorset-operator"]
