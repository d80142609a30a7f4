"""Builds the parts of a running cpdops from Settings: no global state anywhere."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, delete, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from monitors.engine import MonitorEngine
from monitors.history import MinuteAggregator
from monitors.metrics import MonitorCollector
from monitors.probe import MonitorSpec
from monitors.probes import PROBES
from monitors.probes.postgres import connection_params, server_label
from orchestrator import declared_monitors
from orchestrator.auth.audit import record_requests
from orchestrator.auth.audit_queue import AuditQueue
from orchestrator.change_writer import ChangeWriter
from orchestrator.db.migrate import upgrade
from orchestrator.db.models import ConfigItem, MonitorRecord, Tenant
from orchestrator.db.session import make_engine, make_session_factory, session_scope
from orchestrator.errors import CpdopsError, DockerError
from orchestrator.fleet.discovery import Instance, discover
from orchestrator.fleet.fleetfile import parse_duration, resolve_secret
from orchestrator.fleet.host_checks import HostChecker
from orchestrator.fleet.host_health import UNREACHABLE, HostHealth
from orchestrator.fleet.hosts import HostRegistry
from orchestrator.fleet.runtime import DockerHost
from orchestrator.incidents.engine import IncidentEngine
from orchestrator.incidents.evidence import HostEvidence
from orchestrator.incidents.known_secrets import settings_secrets
from orchestrator.leader import Leadership
from orchestrator.metrics import MetricsRegistry, StoreCollector, make_registry
from orchestrator.monitor_history import flush
from orchestrator.settings import Settings
from rollouts.executor import RolloutExecutor
from rollouts.windows import window_open

log = logging.getLogger(__name__)


@dataclass
class AppContext:
    settings: Settings
    engine: Engine
    factory: sessionmaker[Session]
    hosts: HostRegistry
    registry: MetricsRegistry
    incidents: IncidentEngine
    executor: RolloutExecutor
    monitors: MonitorEngine | None = None
    history: MinuteAggregator | None = None
    # The monitors' state changes on their way to the database (kept while it is down).
    changes: ChangeWriter | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # The monitors generated at the last sync (declared ones are read from the database).
    generated: list[MonitorSpec] = field(default_factory=list)
    monitor_lock: threading.Lock = field(default_factory=threading.Lock)
    # `cpdops serve`: who leads among the replicas (None: a process that runs no scheduler).
    leadership: Leadership | None = None
    # The leader's host health checks (``start_monitors``; None: no monitors, no checks).
    host_checker: HostChecker | None = None
    # API audit entries waiting for the state database (its thread starts at the first one).
    audit: AuditQueue | None = None

    @property
    def leading(self) -> bool:
        """Whether this process runs the once-only work (scheduler, monitors, rollouts)."""
        return self.leadership is None or self.leadership.leading

    def close(self) -> None:
        if self.host_checker is not None:
            self.host_checker.close()
        if self.monitors is not None:
            self.monitors.stop()
        if self.changes is not None:
            self.changes.stop()
        if self.history is not None:
            try:
                flush(self.factory, self.history)
            except SQLAlchemyError as exc:
                log.error("monitor history of the last seconds not written: %s", exc)
        if self.audit is not None:
            self.audit.stop()
        self.incidents.close()
        self.hosts.close()
        self.engine.dispose()


def build_context(settings: Settings, *, migrate: bool = True) -> AppContext:
    engine = make_engine(settings.database_url)
    if migrate:
        upgrade(engine)
    factory = make_session_factory(engine)
    registry = make_registry()
    hosts = HostRegistry(factory, settings.local_docker_url, pull=settings.pull_policy == "missing")
    incidents = IncidentEngine(
        factory,
        system_id=settings.system_id,
        registry=registry,
        container_evidence=HostEvidence(hosts),
        secrets=settings_secrets(settings),
    )
    executor = RolloutExecutor(
        factory,
        hosts,
        stop_timeout_s=settings.stop_timeout_s,
        on_failure=incidents.on_rollout_failure,
        registry=registry,
        backup_dir=Path(settings.backup_dir),
        crash_at=settings.test_crash_at,
        lease_s=settings.rollout_lease_s,
        host_wait_s=settings.host_wait_s,
    )
    registry.register(StoreCollector(factory))
    audit = AuditQueue(
        lambda entries: record_requests(factory, entries),
        capacity=settings.audit_queue,
        registry=registry,
    )
    return AppContext(settings, engine, factory, hosts, registry, incidents, executor, audit=audit)


def start_monitors(ctx: AppContext) -> MonitorEngine:
    """Start the monitor engine; its state changes feed the incident engine, through the
    change writer's queue (kept and retried while the database is unavailable)."""
    writer = ChangeWriter(
        ctx.incidents.on_monitor_change,
        write_batch=ctx.incidents.on_monitor_changes,
        capacity=ctx.settings.monitor_change_queue,
        registry=ctx.registry,
    )
    writer.start()
    ctx.changes = writer
    ctx.history = MinuteAggregator()
    engine = MonitorEngine(writer.submit, on_result=ctx.history.add)
    ctx.registry.register(MonitorCollector(engine))
    engine.start()
    ctx.monitors = engine

    def hold(tenant: str, host: str, active: bool) -> None:
        # The instance's monitors are suppressed while a rollout replaces it, then re-verified.
        ids = [
            v.spec.id for v in engine.snapshot() if v.spec.tenant == tenant and v.spec.host == host
        ]
        if active:
            engine.suppress(ids, f"instance under rollout ({tenant}@{host})")
        else:
            engine.unsuppress(ids)

    ctx.executor.on_instance = hold
    start_host_checks(ctx)
    return engine


def start_host_checks(ctx: AppContext) -> HostChecker:
    """The host checker (run by the scheduler's ``check-hosts`` job on the leader): a host that
    fails a check has its monitors held (``Hold.HOST``: no tenant incidents); unreachable, it
    gets ONE host incident; answering again, its monitors are released and verified."""
    s = ctx.settings

    def on_held(host: str, held: bool, reason: str) -> None:
        if ctx.monitors is None:
            return
        if held:
            hold_host_monitors(ctx, {host: reason})
        else:
            ids = [v.spec.id for v in ctx.monitors.snapshot() if v.spec.host == host]
            ctx.monitors.release_host(ids)

    def on_transition(host: str, old: HostHealth, new: HostHealth) -> None:
        if new.status == UNREACHABLE:
            assert new.since is not None
            ctx.incidents.on_host_unreachable(host, new.reason or "no answer", new.since)
        else:
            ctx.incidents.on_host_back(host, old.since)

    checker = HostChecker(
        ctx.factory,
        ctx.hosts,
        failure_threshold=s.host_failures,
        timeout_s=s.host_ping_timeout_s,
        settle_s=s.host_settle_s,
        on_held=on_held,
        on_transition=on_transition,
    )
    ctx.incidents.host_held = checker.confirm
    ctx.host_checker = checker
    return checker


def hold_host_monitors(ctx: AppContext, reasons: Mapping[str, str] | None = None) -> None:
    """Hold the monitors of the hosts that fail their checks (``reasons``: of these hosts)."""
    if ctx.monitors is None or ctx.host_checker is None:
        return
    if reasons is None:
        states = ctx.host_checker.states()
        reasons = {n: st.reason or "no answer" for n, st in states.items() if st.held}
    for host, reason in reasons.items():
        ids = [
            v.spec.id
            for v in ctx.monitors.snapshot()
            if v.spec.host == host and v.spec.kind != "postgres"
        ]
        if ids:
            ctx.monitors.hold_host(ids, f"host {host} does not answer: {reason}")


def monitor_defaults(ctx: AppContext) -> dict[str, Any]:
    s = ctx.settings
    values: dict[str, Any] = {
        "interval_s": s.monitor_interval_s,
        "timeout_s": s.monitor_timeout_s,
        "failure_threshold": s.monitor_failure_threshold,
        "recovery_threshold": s.monitor_recovery_threshold,
    }
    with ctx.factory() as session:
        item = session.scalars(select(ConfigItem).where(ConfigItem.key == "monitors")).first()
    written = item.value.get("defaults") if item is not None else None
    # Only the keys written in the fleet file (`monitors.defaults`) win over the settings;
    # fleet file keys (interval, timeout, …) → MonitorSpec fields (interval_s, …).
    for key, value in (written if isinstance(written, dict) else {}).items():
        name = f"{key}_s" if f"{key}_s" in values else key
        if name in values:
            values[name] = parse_duration(value) if isinstance(value, str) else value
    values["timeout_s"] = min(values["timeout_s"], values["interval_s"])
    return values


def monitors_for(
    instances: list[Instance],
    defaults: dict[str, Any],
    hosts: Mapping[str, DockerHost] | None = None,
    tenant_dsns: Mapping[str, str] | None = None,
) -> list[MonitorSpec]:
    """Monitors generated from the registry and the labels — nobody types them:
    per instance an ``http`` probe of its health URL (which must not answer as another
    tenant), a ``sip`` OPTIONS probe of its ``smartcpd.sip-uri``, a ``container`` probe
    (state, health, restarts, OOM, CPU/memory);
    per tenant with a database DSN a ``postgres`` deep-health probe."""
    specs = []
    for inst in instances:
        base = f"{inst.tenant}/{inst.component}@{inst.host}"
        name = f"{inst.tenant}-{inst.component}"
        common = {"tenant": inst.tenant, "host": inst.host, **defaults}
        if inst.health_url:
            specs.append(
                MonitorSpec(
                    id=f"{base}/http",
                    name=f"{name}-http",
                    kind="http",
                    target=inst.health_url,
                    # a port answering as another tenant is DOWN (monitors/probes/http.py)
                    options={"expect_tenant": inst.tenant},
                    **common,
                )
            )
        if inst.sip_uri and "sip" in PROBES:
            specs.append(
                MonitorSpec(
                    id=f"{base}/sip", name=f"{name}-sip", kind="sip", target=inst.sip_uri, **common
                )
            )
        host = (hosts or {}).get(inst.host)
        if host is not None:
            options: dict[str, Any] = {"tls": host.tls} if host.tls else {}
            if host.ssh:
                options["ssh"] = host.ssh
            specs.append(
                MonitorSpec(
                    id=f"{base}/container",
                    name=f"{name}-container",
                    kind="container",
                    target=f"{host.url}#{inst.name}",
                    options=options,
                    **common,
                )
            )
    for tenant, dsn in sorted((tenant_dsns or {}).items()):
        server = server_label(connection_params(dsn))
        specs.append(
            MonitorSpec(
                id=f"{tenant}/db",
                name=f"{tenant}-db",
                tenant=tenant,
                host=server,
                kind="postgres",
                target=dsn,
                options={"server": server},
                **defaults,
            )
        )
    return specs


def tenant_dsns(ctx: AppContext) -> dict[str, str]:
    """Tenants' database DSNs, secrets resolved; a tenant whose ${VAR} is unset is skipped."""
    out = {}
    with ctx.factory() as s:
        rows = list(s.execute(select(Tenant.slug, Tenant.db_dsn).where(Tenant.db_dsn.is_not(None))))
    for slug, dsn in rows:
        if not dsn:
            continue
        try:
            out[slug] = resolve_secret(dsn)
        except CpdopsError as exc:
            log.warning("no database monitor for tenant=%s: %s", slug, exc)
    return out


def apply_maintenance(ctx: AppContext, now: float | None = None) -> list[str]:
    """Put the monitors of tenants inside their maintenance window into MAINTENANCE (they
    open no incident) and release the others; returns the tenants in maintenance."""
    if ctx.monitors is None:
        return []
    at = now if now is not None else time.time()
    with ctx.factory() as s:
        inside = {
            t.slug
            for t in s.scalars(select(Tenant).where(Tenant.maintenance_window.is_not(None)))
            if t.maintenance_window
            and window_open(
                str(t.maintenance_window["cron"]), t.maintenance_window["duration"], t.timezone, at
            )
        }
    views = ctx.monitors.snapshot()
    held = [v.spec.id for v in views if v.spec.tenant in inside]
    free = [v.spec.id for v in views if v.spec.tenant not in inside]
    if held:
        ctx.monitors.set_maintenance(held, "maintenance window")
    if free:
        ctx.monitors.clear_maintenance(free)
    return sorted(inside)


def sync_monitors(ctx: AppContext) -> int:
    """Discover instances and (re)configure the monitors, generated and declared; returns how
    many there are."""
    if ctx.monitors is None or not ctx.leading:
        return 0
    try:
        found = discover(ctx.hosts.hosts())
    except DockerError as exc:
        log.warning("monitor sync: discovery failed: %s", exc)
        apply_monitors(ctx)  # the declared monitors do not wait for Docker
        return -1
    hosts = {h.name: h for h in ctx.hosts.hosts()}
    specs = monitors_for(found.instances, monitor_defaults(ctx), hosts, tenant_dsns(ctx))
    if found.errors:
        # Keep the generated monitors of an unreachable host rather than dropping them.
        made = {spec.id for spec in specs}
        specs.extend(
            spec for spec in ctx.generated if spec.host in found.errors and spec.id not in made
        )
    with ctx.monitor_lock:
        ctx.generated = specs
    count = apply_monitors(ctx)
    forget_unconfigured(ctx, keep_hosts=set(found.errors))
    return count


def forget_unconfigured(ctx: AppContext, *, keep_hosts: set[str]) -> list[str]:
    """Drop the last state of monitors that are no longer configured (their instance or
    tenant is gone), so a monitor removed while DOWN does not hold its tenant's ticket open
    (verified recovery needs every stored monitor UP) nor count as a failure in correlation.
    The monitors of ``keep_hosts`` (hosts discovery could not reach) are kept: they cannot be
    judged. The minute history stays, for uptime. Returns the ids dropped."""
    if ctx.monitors is None:
        return []
    wanted = {view.spec.id for view in ctx.monitors.snapshot()}
    with session_scope(ctx.factory) as session:
        stale = [
            monitor_id
            for monitor_id, host in session.execute(select(MonitorRecord.id, MonitorRecord.host))
            if monitor_id not in wanted and host not in keep_hosts
        ]
        for start in range(0, len(stale), 500):
            chunk = stale[start : start + 500]
            session.execute(delete(MonitorRecord).where(MonitorRecord.id.in_(chunk)))
    if stale:
        log.info("monitor sync: forgot %d unconfigured monitor(s): %s", len(stale), stale[:10])
    return stale


def apply_monitors(ctx: AppContext) -> int:
    """Give the engine the generated monitors of the last sync plus the declared ones (read
    now), without discovering again: what the API calls after declaring or deleting one.
    A declared monitor whose id a generated one has is left out (the generated one wins)."""
    if ctx.monitors is None or not ctx.leading:
        return 0  # a follower replica probes nothing (only the leader does)
    defaults = monitor_defaults(ctx)
    with ctx.monitor_lock:
        specs = list(ctx.generated)
        taken = {spec.id for spec in specs}
        with ctx.factory() as session:
            for spec in declared_monitors.specs(session, defaults):
                if spec.id in taken:
                    log.warning("declared monitor %s shadowed by a generated one", spec.id)
                    continue
                specs.append(spec)
        ctx.monitors.set_monitors(specs)
    apply_maintenance(ctx)
    hold_host_monitors(ctx)  # monitors (re)created while their host is down start held
    return len(specs)


def generated_ids(ctx: AppContext) -> set[str]:
    with ctx.monitor_lock:
        return {spec.id for spec in ctx.generated}
