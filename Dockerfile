# cpdops image.  BASE must provide python3 (>= 3.11) with venv; with no registry reachable,
# make one locally, e.g. `cpdops demo build` creates cpdops-base:bookworm via debootstrap
# (python3 only: add python3-venv for this image), or use python:3.11-slim where a registry is.
ARG BASE=python:3.11-slim
FROM ${BASE}
WORKDIR /opt/cpdops
COPY pyproject.toml README.md ./
COPY orchestrator ./orchestrator
COPY monitors ./monitors
COPY rollouts ./rollouts
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir . \
    && useradd --system --home /var/lib/cpdops cpdops 2>/dev/null || true
ENV PATH=/opt/venv/bin:$PATH CPDOPS_BIND_HOST=0.0.0.0 CPDOPS_BIND_PORT=8077
EXPOSE 8077
HEALTHCHECK --interval=10s --timeout=3s CMD python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8077/healthz', timeout=2)" || exit 1
CMD ["cpdops", "serve"]
