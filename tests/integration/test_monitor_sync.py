"""Monitor sync forgets the last state of monitors that are gone (a tenant's instance removed
while DOWN must not hold its ticket open forever), but keeps an unreachable host's."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from monitors.state import MonitorStatus
from orchestrator.context import start_monitors, sync_monitors
from orchestrator.db.models import MonitorRecord
from orchestrator.db.session import session_scope
from orchestrator.fleet.apply import apply_fleet
from orchestrator.fleet.fleetfile import parse_fleet_text
from tests.integration.dockerd import DockerdHandle
from tests.integration.fleet import free_port, make_context


def _record(monitor_id: str, host: str, status: MonitorStatus) -> MonitorRecord:
    now = datetime.now(UTC)
    return MonitorRecord(
        id=monitor_id,
        name=monitor_id.split("/")[-1],
        tenant="acme",
        host=host,
        kind="http",
        target="http://127.0.0.1:1/health",
        status=int(status),
        reason="connection refused",
        changed_at=now,
        down_since=now if status == MonitorStatus.DOWN else None,
    )


def test_sync_forgets_unconfigured_monitors_only(
    docker_hosts: list[DockerdHandle], tmp_path: Path
) -> None:
    host = docker_hosts[0]
    fleet = f"""
version: 1
hosts:
  - name: {host.name}
    url: {host.url}
  - name: gone
    url: unix:///nonexistent-cpdops-test.sock
tenants:
  - slug: acme
    name: Acme
    host: {host.name}
monitors:
  declared:
    - name: portal-port
      tenant: acme
      kind: tcp
      target: tcp://127.0.0.1:{free_port()}
      interval: 1h
"""
    ctx = make_context(tmp_path, discovery_interval_s=3600)
    try:
        with session_scope(ctx.factory) as s:
            apply_fleet(s, parse_fleet_text(fleet))
            # acme's web monitor on the reachable host: its container is gone (no instance
            # there now), its last state still says DOWN
            s.add(_record("acme/web", host.name, MonitorStatus.DOWN))
            # a monitor of the unreachable host: cannot be judged, must stay
            s.add(_record("acme/gone-web", "gone", MonitorStatus.DOWN))
            # a configured (declared) monitor's state stays
            s.add(_record("acme/portal-port", host.name, MonitorStatus.UP))
        start_monitors(ctx)
        sync_monitors(ctx)
        with ctx.factory() as s:
            left = set(s.scalars(select(MonitorRecord.id)))
        assert left == {"acme/portal-port", "acme/gone-web"}
    finally:
        ctx.close()
