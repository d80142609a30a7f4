# The cpdops image.
#
#   .venv/bin/python scripts/image_deps.py            # build/image-deps: the venv's run-time deps
#   docker build --build-arg BASE=cpdops-base:bookworm -t cpdops .
#
# BASE: a Debian 12 image with python3 3.11 — cpdops-base:bookworm, made locally by
# debootstrap (`cpdops demo build`, no registry needed; it also has psql), or
# python:3.11-slim-bookworm where a registry is reachable. The build runs nothing from the
# network: the dependencies are the ones copied from the venv the tests passed with
# (build/image-deps, DEPS to use another directory of the build context).
ARG BASE=cpdops-base:bookworm
FROM ${BASE}
ARG DEPS=build/image-deps

COPY ${DEPS}/ /opt/cpdops/deps/
COPY orchestrator /opt/cpdops/src/orchestrator
COPY monitors /opt/cpdops/src/monitors
COPY rollouts /opt/cpdops/src/rollouts
COPY scripts/docker-entrypoint.sh /usr/local/bin/cpdops
COPY dashboards /opt/cpdops/dashboards

ENV PYTHONPATH=/opt/cpdops/src:/opt/cpdops/deps \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 LANG=C.UTF-8 \
    CPDOPS_BIND_HOST=0.0.0.0 CPDOPS_BIND_PORT=8077 \
    CPDOPS_DATABASE_URL=sqlite:////var/lib/cpdops/cpdops.db \
    CPDOPS_BACKUP_DIR=/var/lib/cpdops/backups

# The deps are compiled for one Python version: refuse a base with another one.
RUN python3 -c "import sys; want = open('/opt/cpdops/deps/.python-version').read().strip(); \
have = '%d.%d' % sys.version_info[:2]; \
sys.exit(0 if have == want else f'base python3 is {have}, build/image-deps was made by {want}')" \
 && python3 -c "import orchestrator.app, psycopg2, uvicorn, paramiko" \
 && chmod 0755 /usr/local/bin/cpdops \
 && (getent passwd cpdops >/dev/null || useradd --system --uid 10001 --home-dir /var/lib/cpdops cpdops) \
 && mkdir -p /var/lib/cpdops/backups && chown -R cpdops /var/lib/cpdops

LABEL org.opencontainers.image.title="cpdops" \
      org.opencontainers.image.description="operations orchestrator for the SmartCPD cloud"
USER cpdops
WORKDIR /var/lib/cpdops
VOLUME /var/lib/cpdops
EXPOSE 8077
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8077/healthz', timeout=4)"]
ENTRYPOINT ["/usr/local/bin/cpdops"]
CMD ["serve"]
