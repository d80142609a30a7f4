#!/usr/bin/env bash
# The main job on a fresh Debian machine: installs what it needs, starts dockerd, brings up a
# demo fleet of 3 stand-in SmartCPD tenants and runs `cpdops serve` on the embedded SQLite
# default (http://127.0.0.1:8077, API docs at /docs).  Ctrl-C stops it; `cpdops demo down`
# removes the demo containers.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
setup_venv
start_dockerd
# The demo uses locally built images; set CPDOPS_PULL_POLICY=missing where a registry is reachable.
export CPDOPS_PULL_POLICY="${CPDOPS_PULL_POLICY:-never}"
cd "$ROOT"
"$VENV/bin/cpdops" demo up --tenants "${CPDOPS_DEMO_TENANTS:-3}"
# The API needs a token (docs/api.md): one admin token for this demo, printed once.
echo "demo admin token (Authorization: Bearer …):" >&2
"$VENV/bin/cpdops" token create --role admin --name "demo-$(date +%s)"
exec "$VENV/bin/cpdops" serve "$@"
