#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine: installs what it needs (venv; as root
# also docker.io, debootstrap, postgresql), starts dockerd and PostgreSQL, runs pytest, then
# ruff and mypy.  Extra arguments go to pytest.  Stops the services it started.
set -euo pipefail
source "$(dirname "$0")/setup.sh"

cleanup() { stop_dockerd_if_ours; stop_postgres_if_ours; }
trap cleanup EXIT

setup_venv
start_dockerd
start_postgres
# a real SIP peer for the SIP probe tests; a real Alertmanager for the webhook intake tests;
# Prometheus (promtool), amtool and docker-compose for the dashboards and the production stack;
# headless Chromium for the web UI tests (driven by the venv's playwright, no browser download)
# openssh-server: an sshd started by the tests for ssh:// Docker hosts (sshd.py)
# prometheus-postgres-exporter: the reference for the pg_* series (test_postgres_exporter.py)
# stress-ng: load beside the suite, to show its tests wait on events (issue #12)
# jq: the README's quick tour uses it (test_readme_tour.py runs the tour)
apt_install kamailio prometheus-alertmanager prometheus docker-compose chromium openssl openssh-server \
  prometheus-postgres-exporter stress-ng jq
export CPDOPS_REQUIRE_DOCKER=1 CPDOPS_REQUIRE_POSTGRES=1 CPDOPS_REQUIRE_KAMAILIO=1
export CPDOPS_REQUIRE_ALERTMANAGER=1 CPDOPS_REQUIRE_PROMETHEUS=1 CPDOPS_REQUIRE_CHROMIUM=1
cd "$ROOT"

mkdir -p test-artifacts
set +e
if [ $# -gt 0 ]; then
  "$VENV/bin/pytest" -q -ra --junitxml=test-artifacts/junit.xml "$@"
  rc=$?
  if [ $rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi
else
  # The whole suite in two halves side by side: the tests on the test Docker daemons (one
  # session: they share the daemons) and all the others; most of either half waits on
  # daemons, servers and timers, so together they take about the longer one's time.
  "$VENV/bin/pytest" -q -ra -m "not docker" --junitxml=test-artifacts/junit-other.xml \
    >test-artifacts/pytest-other.log 2>&1 &
  other=$!
  echo "tests without Docker run meanwhile (test-artifacts/pytest-other.log)"
  "$VENV/bin/pytest" -q -ra -m docker --junitxml=test-artifacts/junit-docker.xml
  rc_docker=$?
  wait $other
  rc_other=$?
  echo "---- tests without Docker (test-artifacts/pytest-other.log):"
  cat test-artifacts/pytest-other.log
  rc=0
  for part in docker:$rc_docker other:$rc_other; do
    code=${part#*:}
    if [ "$code" -eq 5 ]; then
      echo "error: pytest collected no tests (${part%%:*})" >&2; rc=1
    elif [ "$code" -ne 0 ]; then
      echo "error: the ${part%%:*} tests failed (pytest exit $code)" >&2; rc=1
    fi
  done
fi
set -e
[ $rc -ne 0 ] && exit $rc

"$VENV/bin/ruff" check orchestrator monitors rollouts tests bench
"$VENV/bin/ruff" format --check orchestrator monitors rollouts tests bench
"$VENV/bin/mypy"
echo "all tests and checks passed"
