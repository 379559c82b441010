# The operator image: `projectorset-operator`, the command the Helm chart runs
# (charts/projectorset-operator/values.yaml `command`).
#
#   docker build -t ghcr.io/projectorset/projectorset-operator:0.1.0 .

# --- build: install the package and its dependencies into a virtualenv ---
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
# Dependencies first, so a source change reuses this layer.
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN /opt/venv/bin/pip install --upgrade pip \
 && /opt/venv/bin/pip install . \
 && /opt/venv/bin/projectorset-operator --help > /dev/null

# --- final: the virtualenv only, no compilers, pip caches or sources ---
FROM python:3.11-slim
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
