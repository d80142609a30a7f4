#!/usr/bin/env bash
# Shared set-up for a fresh Debian machine: system packages (when root), services, venv.
# Sourced by scripts/serve.sh and scripts/test.sh.  Idempotent.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CPDOPS_VENV:-$ROOT/.venv}"
STATE_DIR="${CPDOPS_STATE_DIR:-/tmp/cpdops-services}"
mkdir -p "$STATE_DIR"

say() { printf '[setup] %s\n' "$*" >&2; }

apt_install() {
  # apt_install PKG... — installs the missing ones (root only).
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    say "missing Debian packages (run as root to install): ${missing[*]}"; return 1
  fi
  say "installing ${missing[*]}"
  # one install at a time on this machine (several test runs may set up side by side)
  exec {apt_lock}>"$STATE_DIR/apt.lock"
  flock "$apt_lock"
  if [ ! -f "$STATE_DIR/apt-updated" ]; then
    apt-get update -qq && touch "$STATE_DIR/apt-updated"
  fi
  # Packages such as prometheus-alertmanager would start their system service on install: the
  # scripts start what they need themselves, so forbid that (Debian's policy-rc.d, exit 101).
  local guard=/usr/sbin/policy-rc.d ours=0
  if [ ! -e "$guard" ]; then printf '#!/bin/sh\nexit 101\n' >"$guard"; chmod +x "$guard"; ours=1; fi
  local rc=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >/dev/null || rc=$?
  [ "$ours" = 1 ] && rm -f "$guard"
  exec {apt_lock}>&-
  return $rc
}

setup_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating venv $VENV"
    if ! python3 -m venv "$VENV"; then
      rm -rf "$VENV"
      apt_install python3-venv   # Debian's python3 ships venv separately
      python3 -m venv "$VENV"
    fi
  fi
  local stamp="$VENV/.cpdops-installed"
  if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
    say "installing Python packages"
    "$VENV/bin/pip" install -q --disable-pip-version-check -e "$ROOT[dev]"
    touch "$stamp"
  fi
}

start_dockerd() {
  # The local engine at /var/run/docker.sock; started here if it does not answer.
  apt_install docker.io iproute2 debootstrap
  if docker info >/dev/null 2>&1; then return 0; fi
  say "starting dockerd"
  (dockerd >"$STATE_DIR/dockerd.log" 2>&1 & echo $! >"$STATE_DIR/dockerd.pid")
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && { STARTED_DOCKERD=1; return 0; }
    sleep 1
  done
  say "dockerd did not start; its log:"; tail -20 "$STATE_DIR/dockerd.log" >&2; return 1
}

stop_dockerd_if_ours() {
  # Only what this invocation started (a dockerd someone else runs is left alone).
  if [ "${STARTED_DOCKERD:-0}" = 1 ]; then
    local pid; pid="$(cat "$STATE_DIR/dockerd.pid" 2>/dev/null || true)"
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    STARTED_DOCKERD=0
  fi
}

start_postgres() {
  # A PostgreSQL cluster on 127.0.0.1:5432 with role/database cpdops (password cpdops).
  # Containers on the test daemons' bridges (cpdtbrN, 10.213.N.0/24) reach it at their
  # gateway 10.213.N.1: it listens on every address (the bridges come and go with the test
  # daemons, so they cannot be named) and pg_hba lets 10.213.0.0/16 in with a password.
  apt_install postgresql
  local ver; ver="$(ls /etc/postgresql | sort -n | tail -1)"
  if ! pg_lsclusters -h | awk '{print $4}' | grep -q online; then
    say "starting PostgreSQL $ver"
    pg_ctlcluster --skip-systemctl-redirect "$ver" main start
    STARTED_POSTGRES="$ver"
  fi
  local hba rule="host all all 10.213.0.0/16 scram-sha-256"
  hba="$(su postgres -c "psql -qtAc 'SHOW hba_file'")"
  if ! grep -qF "$rule" "$hba"; then
    say "PostgreSQL: letting the test containers (10.213.0.0/16) in ($hba)"
    printf '# cpdops: containers on the test dockerd bridges (scripts/setup.sh)\n%s\n' \
      "$rule" >>"$hba"
    su postgres -c "psql -qtAc 'SELECT pg_reload_conf()'" >/dev/null
  fi
  if [ "$(su postgres -c "psql -qtAc 'SHOW listen_addresses'")" != "*" ]; then
    say "PostgreSQL: listening on all addresses (restart)"
    su postgres -c "psql -qc \"ALTER SYSTEM SET listen_addresses = '*'\""
    pg_ctlcluster --skip-systemctl-redirect "$ver" main restart
  fi
  su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='cpdops'\"" | grep -q 1 \
    || su postgres -c "psql -qc \"CREATE ROLE cpdops LOGIN CREATEDB PASSWORD 'cpdops'\""
  # the tests' DROP DATABASE … WITH (FORCE) must be able to end an autovacuum worker there
  su postgres -c "psql -qc \"GRANT pg_signal_backend TO cpdops\"" >/dev/null 2>&1
  su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname='cpdops'\"" | grep -q 1 \
    || su postgres -c "createdb -O cpdops cpdops"
  export CPDOPS_TEST_PG_URL="postgresql+psycopg2://cpdops:cpdops@127.0.0.1:5432/cpdops"
}

stop_postgres_if_ours() {
  if [ -n "${STARTED_POSTGRES:-}" ]; then
    pg_ctlcluster --skip-systemctl-redirect "$STARTED_POSTGRES" main stop || true
    STARTED_POSTGRES=""
  fi
}
