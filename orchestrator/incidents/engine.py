"""The incident engine: turns monitor state changes, Alertmanager alerts and rollout failures into
tickets, correlates the tenants' failures into mass incidents and verifies recovery."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Histogram
from sqlalchemy import Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from monitors.engine import StateChange
from monitors.probe import public_target
from monitors.state import MonitorStatus
from orchestrator.db.models import (
    AlertRecord,
    ConfigItem,
    Incident,
    IncidentEvent,
    MonitorChange,
    MonitorRecord,
    Rollout,
    RolloutInstance,
    Tenant,
)
from orchestrator.db.session import session_scope
from orchestrator.fleet.fleetfile import IncidentThresholds
from orchestrator.incidents import mail, outbox, telegram
from orchestrator.incidents.alert_intake import SOURCE as ALERTMANAGER
from orchestrator.incidents.alert_intake import IntakeResult, ingest
from orchestrator.incidents.alertmanager import AlertmanagerWebhook, UnknownTenants
from orchestrator.incidents.correlation import (
    HOST_PREFIX,
    MASS_PREFIX,
    Failure,
    MassDecision,
    OpenMass,
    Thresholds,
    current_mass,
    decide_mass,
    host_key,
    host_of_key,
    pick_open,
    recent,
)
from orchestrator.incidents.evidence import ContainerEvidence
from orchestrator.incidents.known_secrets import known_secrets, target_secrets
from orchestrator.incidents.locks import one_writer
from orchestrator.incidents.recovery import verify_host_recovery, verify_recovery
from orchestrator.incidents.redact import Redactor
from orchestrator.incidents.tickets import add_event, open_or_join
from orchestrator.incidents.workflow import ACTIVE
from orchestrator.metrics import at_zero
from rollouts.executor import RolloutFailure

log = logging.getLogger(__name__)

AUTHOR = "cpdops"
_REDACTOR = "cpdops.redactor"  # Session.info key: the redactor of that session's tickets
Clock = Callable[[], datetime]


# Every (type, source) a ticket is counted with in cpdops_incidents_created_total, and every type
# of cpdops_detection_seconds: created at 0 with the engine (orchestrator.metrics.at_zero).
CREATED_LABELS = (
    ("incident", "monitor"),
    ("mass_incident", "host"),
    ("mass_incident", "correlation"),
    ("mass_incident", "rollout"),
    ("incident", ALERTMANAGER),
    ("mass_incident", ALERTMANAGER),
    (mail.TICKET_TYPE, mail.SOURCE),
    (telegram.TICKET_TYPE, telegram.SOURCE),
)
DETECTION_TYPES = ("incident", "mass_incident")


def utc_now() -> datetime:
    return datetime.now(UTC)


def incident_thresholds(session: Session) -> Thresholds:
    """The fleet file's ``incidents`` (stored by ``cpdops apply``), its defaults when absent."""
    item = session.scalars(select(ConfigItem).where(ConfigItem.key == "incidents")).first()
    value = item.value if item is not None and isinstance(item.value, dict) else {}
    parsed = IncidentThresholds.model_validate(value)
    mass = parsed.mass_incident
    return Thresholds(
        min_tenants=mass.min_tenants,
        host_percent=mass.host_percent,
        window_s=float(mass.window),
        recovery_hold_s=float(parsed.recovery_hold),
    )


class IncidentEngine:
    def __init__(
        self,
        factory: sessionmaker[Session],
        *,
        system_id: str,
        registry: CollectorRegistry,
        clock: Clock = utc_now,
        container_evidence: ContainerEvidence | None = None,
        secrets: Sequence[str] = (),
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._factory = factory
        # What ticket text and evidence never show, besides the patterns of redact.py: these
        # (cpdops's own secrets, from its settings) and, read at each ticket, the fleet file's
        # secrets and the environment variables it references (``environ``: the process's).
        self._secrets = tuple(secrets)
        self._environ = environ
        self._system_id = system_id
        self._clock = clock
        # DOWNs held by a rollout on the instance or by its host (silent, or back less than
        # CPDOPS_HOST_SETTLE_S ago), by monitor id: judged again by ``recheck_held`` (issue #12)
        self._held_downs: dict[str, StateChange] = {}
        self._held_lock = threading.Lock()
        # Whether a Docker host's monitors are held now (host_checks.HostChecker.confirm): the
        # DOWN of a monitor on a host that does not answer opens no tenant incident.
        self.host_held: Callable[[str], bool] | None = None
        self.created = Counter(
            "cpdops_incidents_created_total",
            "Tickets opened, by type and source",
            ["type", "source"],
            registry=registry,
        )
        self.detection = Histogram(
            "cpdops_detection_seconds",
            "Failure (the first failing check of the streak) to the ticket committed, for "
            "tickets opened by a monitor DOWN and mass incidents opened by its correlation",
            ["type"],
            buckets=(0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300, 600),
            registry=registry,
        )
        at_zero(self.created, CREATED_LABELS)
        at_zero(self.detection, [(t,) for t in DETECTION_TYPES])
        # Container state and logs are fetched after the ticket is committed, on their own
        # thread: a slow Docker engine never delays a ticket nor the monitor notifications.
        self._container_evidence = container_evidence
        self._evidence_pool: ThreadPoolExecutor | None = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="cpdops-evidence")
            if container_evidence is not None
            else None
        )

    def _redactor(self, s: Session) -> Redactor:
        """The redactor of the known secrets, read once per session (a batch of changes)."""
        found = s.info.get(_REDACTOR)
        if not isinstance(found, Redactor):
            found = Redactor(known_secrets(s, self._environ, extra=self._secrets))
            s.info[_REDACTOR] = found
        return found

    def redactor(self, s: Session) -> Redactor:
        """:meth:`_redactor`, for an intake that writes in its own session (Telegram)."""
        return self._redactor(s)

    def close(self) -> None:
        """Stop the evidence thread (evidence not fetched yet is dropped)."""
        if self._evidence_pool is not None:
            self._evidence_pool.shutdown(wait=False, cancel_futures=True)
        if self._container_evidence is not None:
            self._container_evidence.close()

    # --- monitors -------------------------------------------------------------------------
    def on_monitor_change(self, change: StateChange) -> None:
        """Record the monitor's state change at its own time (``change.at``: it may be written
        late, after a database outage); a DOWN opens (or joins) the tenant's incident, an UP
        notes the recovery on it. All in one transaction with the change's row in
        ``monitor_changes``, so writing the same change again (a retry after an ambiguous
        commit) changes nothing; a change older than the monitor's stored state (written
        meanwhile by another replica) is logged and not applied."""
        self.on_monitor_changes([change])

    def on_monitor_changes(self, changes: Sequence[StateChange]) -> None:
        """:meth:`on_monitor_change` for several changes, in their order, in one transaction
        (the change writer's batches: 10,000 monitors' first checks are 10,000 changes). Their
        ``monitor_changes`` rows first (the ones there already are skipped), then the records
        of the new changes' monitors are read (and the missing ones inserted) with one
        statement each, then the changes are applied in order. After the commit each DOWN that
        opened a ticket is counted and gets its container evidence, and correlation runs once
        for the batch."""
        if not changes:
            return
        under = {
            (c.spec.tenant, c.spec.host): False for c in changes if c.new == MonitorStatus.DOWN
        }
        for tenant, host in under:
            under[(tenant, host)] = self._under_rollout(tenant, host)
        # A DOWN on a Docker host that does not answer its ping (or has just come back) belongs
        # to the host incident (on_host_unreachable), not to a tenant incident: asked once per
        # host and batch, outside the transaction (it may ping).
        held: dict[str, bool] = {}
        for c in changes:
            if (
                c.new == MonitorStatus.DOWN
                and c.spec.kind != "postgres"
                and not under[(c.spec.tenant, c.spec.host)]
                and c.spec.host not in held
            ):
                held[c.spec.host] = self._host_held(c.spec.host, c.spec.kind)
        downs: list[tuple[StateChange, tuple[int, str, bool]]] = []
        with session_scope(self._factory) as s:
            fresh = []
            for change in changes:
                reason = change.result.reason if change.result is not None else change.reason
                if _note_change(s, change, reason):
                    fresh.append((change, reason))
                else:
                    log.info(
                        "monitor change already written monitor=%s at=%s new=%s",
                        change.spec.id,
                        change.at.isoformat(),
                        change.new.name,
                    )
            records = _load_monitor_records(s, [change for change, _ in fresh])
            for change, reason in fresh:
                spec = change.spec
                down = change.new == MonitorStatus.DOWN
                under_rollout = down and under[(spec.tenant, spec.host)]
                host_held = down and spec.kind != "postgres" and held.get(spec.host, False)
                applied, opened = self._apply_change(s, change, reason, under_rollout or host_held)
                if not applied or not down:
                    continue
                if under_rollout or host_held:
                    with self._held_lock:
                        self._held_downs[spec.id] = change
                if under_rollout:
                    log.info(
                        "DOWN suppressed by rollout monitor=%s tenant=%s", spec.id, spec.tenant
                    )
                    continue
                if host_held:
                    log.info(
                        "DOWN held: host %s does not answer (or just came back) monitor=%s "
                        "tenant=%s",
                        spec.host,
                        spec.id,
                        spec.tenant,
                    )
                    continue
                assert opened is not None
                downs.append((change, opened))
            del records  # held until here: _monitor_record finds them in the session
        for change, (incident_id, number, created) in downs:
            spec = change.spec
            if created:
                self.created.labels(type="incident", source="monitor").inc()
                self._observe_detection("incident", change)
                if spec.kind != "postgres":  # its host is the database server, not Docker
                    self._fetch_container_evidence(incident_id, spec.host, spec.tenant)
            log.info("monitor DOWN monitor=%s tenant=%s incident=%s", spec.id, spec.tenant, number)
        if downs:
            _number, mass_opened = self._correlate()
            if mass_opened:
                self._observe_detection("mass_incident", downs[-1][0])

    def _apply_change(
        self, s: Session, change: StateChange, reason: str, suppressed: bool
    ) -> tuple[bool, tuple[int, str, bool] | None]:
        """The monitor record, and the tenant's incident for a DOWN (id, number, created)
        unless ``suppressed`` (a rollout is on the tenant, or its host does not answer)."""
        spec, at = change.spec, change.at
        rec, inserted = _monitor_record(
            s, spec.id, spec.tenant, spec.host, spec.kind, spec.name, at
        )
        if not inserted and rec.changed_at > at:
            log.warning(
                "monitor change older than the stored state, not applied monitor=%s at=%s "
                "stored=%s",
                spec.id,
                at.isoformat(),
                rec.changed_at.isoformat(),
            )
            return False, None
        # Recovery may come as DOWN → MAINTENANCE → PENDING → UP: remember the DOWN.
        down_since = rec.down_since
        was_down = down_since is not None
        rec.name, rec.tenant, rec.host = spec.name, spec.tenant, spec.host
        rec.kind, rec.target = spec.kind, public_target(spec.target)
        rec.status, rec.reason, rec.changed_at = int(change.new), reason, at
        if change.new == MonitorStatus.DOWN and rec.down_since is None:
            rec.down_since = at
        elif change.new == MonitorStatus.UP:
            rec.down_since = None
        if change.new == MonitorStatus.DOWN and not suppressed:
            return True, self._open_tenant_incident(s, change, reason)
        if change.new == MonitorStatus.UP and was_down:
            incident_row = s.scalars(
                select(Incident).where(Incident.open_key == f"tenant:{spec.tenant}")
            ).first()
            if incident_row is not None:
                add_event(
                    s,
                    incident_row,
                    author=AUTHOR,
                    kind="recovered",
                    body=f"Monitor {spec.name} is UP again",
                    data={
                        "monitor": spec.id,
                        "name": spec.name,
                        "down_since": down_since.isoformat() if down_since else None,
                        "up_since": at.isoformat(),
                    },
                )
        return True, None

    def _open_tenant_incident(
        self, s: Session, change: StateChange, reason: str
    ) -> tuple[int, str, bool]:
        """Open (or join) the tenant's incident for a monitor DOWN: (id, number, created)."""
        spec = change.spec
        target = public_target(spec.target)
        red = self._redactor(s).extended(target_secrets(spec.target))
        incident, created = open_or_join(
            s,
            system_id=self._system_id,
            open_key=f"tenant:{spec.tenant}",
            type="incident",
            subject=red.text(f"{spec.tenant}: {spec.name} is DOWN ({reason})"),
            description=red.text(
                f"Monitor {spec.name} ({spec.kind} {target}) on host {spec.host} "
                f"went DOWN: {reason}."
            ),
            author=AUTHOR,
            source="monitor",
            tenant=spec.tenant,
            evidence=red.value(monitor_evidence(change)),
        )
        return incident.id, incident.number, created

    def recheck_held(self) -> list[str]:
        """Judge the held DOWNs again (run with ``check_recovery``): a monitor whose DOWN was
        held — a rollout was on its instance, or its host did not answer or had come back
        less than CPDOPS_HOST_SETTLE_S ago — and that is still DOWN once
        nothing holds it opens the tenant's incident as the DOWN would have. A tenant that
        does not come back after a host fault or a rollout is never hidden by the hold
        (issue #12). Returns the numbers of the incidents opened or joined."""
        with self._held_lock:
            held = list(self._held_downs.items())
        numbers: list[str] = []
        for monitor_id, change in held:
            spec = change.spec
            with self._factory() as s:
                rec = s.get(MonitorRecord, monitor_id)
                still_down = rec is not None and rec.status == int(MonitorStatus.DOWN)
            if still_down and (
                self._under_rollout(spec.tenant, spec.host) or self._host_held(spec.host, spec.kind)
            ):
                continue  # still held: judged again next time
            with self._held_lock:
                if self._held_downs.get(monitor_id) is change:
                    del self._held_downs[monitor_id]
            if not still_down:
                continue
            reason = change.result.reason if change.result is not None else change.reason
            with session_scope(self._factory) as s:
                incident_id, number, created = self._open_tenant_incident(s, change, reason)
            log.warning(
                "monitor still DOWN after its hold monitor=%s tenant=%s incident=%s",
                spec.id,
                spec.tenant,
                number,
            )
            if created:
                self.created.labels(type="incident", source="monitor").inc()
                self._observe_detection("incident", change)
                if spec.kind != "postgres":
                    self._fetch_container_evidence(incident_id, spec.host, spec.tenant)
            numbers.append(number)
        if numbers:
            self._correlate()
        return numbers

    def _host_held(self, host: str, kind: str) -> bool:
        if self.host_held is None or kind == "postgres":  # its host is a database server
            return False
        try:
            return self.host_held(host)
        except Exception:
            log.exception("host check failed host=%s", host)
            return False

    # --- hosts ----------------------------------------------------------------------------
    def on_host_unreachable(self, host: str, reason: str, since: datetime) -> str:
        """A Docker host stopped answering: ONE mass incident for it (key
        ``host:<name>:<since>``, so a replay joins it), naming its tenants; their active tenant
        incidents (opened before the host was suspected) are linked as children. Returns its
        number."""
        with session_scope(self._factory) as s:
            one_writer(s)
            tenants = sorted(
                set(s.scalars(select(Tenant.slug).where(Tenant.host_name == host)))
                | {
                    t
                    for t, kind in s.execute(
                        select(MonitorRecord.tenant, MonitorRecord.kind).where(
                            MonitorRecord.host == host
                        )
                    )
                    if kind != "postgres"
                }
            )
            incident, created = open_or_join(
                s,
                system_id=self._system_id,
                open_key=host_key(host, since),
                type="mass_incident",
                subject=f"Host {host} unreachable: {len(tenants)} tenants",
                description=(
                    f"Docker host {host} does not answer since {since.isoformat()} ({reason}). "
                    f"Its {len(tenants)} tenants are unreachable: {', '.join(tenants) or '-'}. "
                    "Their monitors are held until the host answers again."
                ),
                author=AUTHOR,
                source="host",
                evidence={
                    "host": host,
                    "reason": reason,
                    "since": since.isoformat(),
                    "tenants": tenants,
                },
            )
            if created:
                incident.created_at = self._clock()
                # The "opened" notice goes to the host's tenants too (outbox dedup: idempotent).
                opened = s.scalars(
                    select(IncidentEvent).where(
                        IncidentEvent.incident_id == incident.id, IncidentEvent.kind == "created"
                    )
                ).first()
                if opened is not None:
                    outbox.enqueue_event(s, incident, opened)
            for child in s.scalars(
                select(Incident).where(
                    Incident.open_key.in_([f"tenant:{t}" for t in tenants]),
                    Incident.parent_id.is_(None),
                    Incident.status.in_(ACTIVE),
                )
            ):
                self._link(s, incident, child)
            number = incident.number
        if created:
            self.created.labels(type="mass_incident", source="host").inc()
            log.warning(
                "host incident opened number=%s host=%s tenants=%d", number, host, len(tenants)
            )
        return number

    def on_host_back(self, host: str, down_since: datetime | None) -> None:
        """The host answers again: noted on its active host incident (solved by
        :meth:`check_recovery` once its tenants' monitors are UP for the hold)."""
        now = self._clock()
        with session_scope(self._factory) as s:
            for incident in s.scalars(
                select(Incident).where(
                    Incident.open_key.like(f"{HOST_PREFIX}%"), Incident.status.in_(ACTIVE)
                )
            ):
                if incident.open_key is None or host_of_key(incident.open_key) != host:
                    continue
                add_event(
                    s,
                    incident,
                    author=AUTHOR,
                    kind="evidence",
                    body=f"Host {host} answers again",
                    data={
                        "host": host,
                        "down_since": down_since.isoformat() if down_since else None,
                        "up_since": now.isoformat(),
                    },
                )

    def _observe_detection(self, type: str, change: StateChange) -> None:
        if change.failing_since is not None:
            seconds = (self._clock() - change.failing_since).total_seconds()
            self.detection.labels(type=type).observe(max(seconds, 0.0))

    def _fetch_container_evidence(self, incident_id: int, host: str, tenant: str) -> None:
        if self._evidence_pool is None:
            return
        try:
            self._evidence_pool.submit(self._attach_container_evidence, incident_id, host, tenant)
        except RuntimeError:  # shut down
            log.info("container evidence skipped (stopping) tenant=%s", tenant)

    def _attach_container_evidence(self, incident_id: int, host: str, tenant: str) -> None:
        """The tenant's containers on ``host`` (state, log excerpt) as an ``evidence`` entry;
        a failure to fetch them is noted in the entry, never raised."""
        assert self._container_evidence is not None
        try:
            data = self._container_evidence(host, tenant)
        except Exception as exc:  # noted, not fatal: the ticket exists already
            log.warning("container evidence failed tenant=%s host=%s: %s", tenant, host, exc)
            data = {"host": host, "error": f"{type(exc).__name__}: {exc}"}
        with session_scope(self._factory) as s:
            incident = s.get(Incident, incident_id)
            if incident is None:
                return
            add_event(
                s,
                incident,
                author=AUTHOR,
                kind="evidence",
                body=f"Container state and logs of {tenant} on {host}",
                data=self._redactor(s).value(jsonable(data)),
            )

    def _under_rollout(self, tenant: str, host: str) -> bool:
        with self._factory() as s:
            row = s.execute(
                select(RolloutInstance.id)
                .join(Rollout)
                .where(
                    Rollout.status == "running",
                    RolloutInstance.tenant == tenant,
                    RolloutInstance.host == host,
                    RolloutInstance.state == "updating",
                )
            ).first()
            return row is not None

    # --- Alertmanager -----------------------------------------------------------------------
    def on_alerts(
        self, body: AlertmanagerWebhook, *, unknown_tenants: UnknownTenants = "fleet"
    ) -> IntakeResult:
        """Apply an Alertmanager webhook body (``alert_intake.ingest``; alerts of tenants not in
        the registry to the fleet-level ticket, or refused), then — after its transaction —
        correlate when a tenant's alert fired, and check the recovery of the mass incidents
        whose children the body solved. What it writes is redacted with the known secrets
        (:meth:`_redactor`), as a monitor's ticket is."""
        result = ingest(
            self._factory,
            body,
            system_id=self._system_id,
            now=self._clock(),
            thresholds=incident_thresholds,
            unknown_tenants=unknown_tenants,
            redactor=self._redactor,
        )
        for kind in result.created_types:
            self.created.labels(type=kind, source=ALERTMANAGER).inc()
        if result.correlate:
            self.correlate()
        if result.parents:
            now = self._clock()
            with session_scope(self._factory) as s:
                one_writer(s)
                verify_recovery(s, incident_thresholds(s), now, author=AUTHOR, only=result.parents)
        return result

    # --- correlation ----------------------------------------------------------------------
    def correlate(self) -> str | None:
        """Link the active tenant incidents that have no parent into a mass incident: the open
        one whose scope and window they fit, else the one ``decide_mass`` calls for (opened
        once: its key is stable and unique). Everything is read from the store, so repeated
        deliveries, a restart or a second replica find the same state. Returns the number of
        the mass incident that got children, if any."""
        return self._correlate()[0]

    def _correlate(self) -> tuple[str | None, bool]:
        """:meth:`correlate`, and whether it opened the mass incident (committed on return)."""
        now = self._clock()
        with session_scope(self._factory) as s:
            one_writer(s)
            th = incident_thresholds(s)
            orphans = {
                inc.tenant: inc
                for inc in s.scalars(
                    select(Incident)
                    .where(
                        Incident.open_key.like("tenant:%"),
                        Incident.parent_id.is_(None),
                        Incident.status.in_(ACTIVE),
                    )
                    .order_by(Incident.id)
                )
                if inc.tenant is not None
            }
            if not orphans:
                return None, False
            failures = recent(self._failures(s, orphans), th.window_s, now)
            if not failures:
                return None, False
            linked: Incident | None = None
            masses = {
                m.open_key: m
                for m in s.scalars(
                    select(Incident).where(
                        Incident.open_key.like(f"{MASS_PREFIX}%"), Incident.status.in_(ACTIVE)
                    )
                )
                if m.open_key is not None
            }
            opened = [OpenMass(key, m.created_at) for key, m in masses.items()]
            # A host that does not answer has its own incident: its tenants' failures join it,
            # never a second (correlated) mass incident for the same outage.
            down_hosts: dict[str, Incident] = {}
            for h in s.scalars(
                select(Incident).where(
                    Incident.open_key.like(f"{HOST_PREFIX}%"), Incident.status.in_(ACTIVE)
                )
            ):
                if h.open_key is not None:
                    down_hosts.setdefault(host_of_key(h.open_key), h)
            rest = []
            for f in sorted(failures, key=lambda f: f.since):
                if f.tenant not in orphans:
                    continue
                if f.db_server is None and f.host in down_hosts:
                    linked = down_hosts[f.host]
                    self._link(s, linked, orphans.pop(f.tenant))
                    continue
                fit = pick_open(opened, f, th.window_s)
                if fit is None:
                    rest.append(f)
                    continue
                linked = masses[fit.key]
                self._link(s, linked, orphans.pop(f.tenant))
            rest = [f for f in rest if f.tenant in orphans]
            if not rest:
                return (linked.number if linked is not None else None), False
            per_host, per_server = self._tenant_counts(s)
            # One body of alerts can call for several (a host's and a server's): each decision
            # takes its tenants out of the rest.
            created = False
            while rest:
                decision = decide_mass(rest, per_host, per_server, th, now)
                if decision is None:
                    break
                linked, opened_now = self._open_mass(s, decision, now)
                created = created or opened_now
                for tenant in decision.tenants:
                    child = orphans.pop(tenant, None)
                    if child is not None:
                        self._link(s, linked, child)
                rest = [f for f in rest if f.tenant in orphans]
            return (linked.number if linked is not None else None), created

    def _failures(self, s: Session, orphans: Mapping[str, Incident]) -> list[Failure]:
        """The DOWN monitors of the orphans' tenants and the firing alerts of their incidents."""
        rows = s.scalars(
            select(MonitorRecord).where(
                MonitorRecord.tenant.in_(list(orphans)),
                MonitorRecord.status == int(MonitorStatus.DOWN),
                MonitorRecord.down_since.is_not(None),
            )
        )
        failures = [
            Failure(
                tenant=r.tenant,
                host=r.host,
                since=r.down_since,
                db_server=r.host if r.kind == "postgres" else None,
            )
            for r in rows
            if r.down_since is not None
        ]
        alerts = s.execute(
            select(
                AlertRecord.tenant,
                AlertRecord.host,
                AlertRecord.db_server,
                AlertRecord.starts_at,
                AlertRecord.seen_at,
            ).where(
                AlertRecord.incident_id.in_([inc.id for inc in orphans.values()]),
                AlertRecord.status == "firing",
            )
        )
        failures.extend(
            Failure(tenant=tenant, host=host or "", since=min(starts, seen), db_server=server)
            for tenant, host, server, starts, seen in alerts
            if tenant is not None
        )
        return failures

    @staticmethod
    def _tenant_counts(s: Session) -> tuple[dict[str, int], dict[str, int]]:
        """Tenants per Docker host (registry, monitors and alerts) and per PostgreSQL server."""
        hosts: dict[str, set[str]] = {}
        servers: dict[str, set[str]] = {}
        for slug, host in s.execute(select(Tenant.slug, Tenant.host_name)):
            if host:
                hosts.setdefault(host, set()).add(slug)
        for tenant, host, kind in s.execute(
            select(MonitorRecord.tenant, MonitorRecord.host, MonitorRecord.kind)
        ):
            into = servers if kind == "postgres" else hosts
            into.setdefault(host, set()).add(tenant)
        for alerted, on_host, server in s.execute(
            select(AlertRecord.tenant, AlertRecord.host, AlertRecord.db_server)
            .where(AlertRecord.tenant.is_not(None))
            .distinct()
        ):
            if alerted is None:
                continue
            if server:
                servers.setdefault(server, set()).add(alerted)
            elif on_host:
                hosts.setdefault(on_host, set()).add(alerted)
        return (
            {k: len(v) for k, v in hosts.items()},
            {k: len(v) for k, v in servers.items()},
        )

    def _open_mass(
        self, s: Session, decision: MassDecision, now: datetime
    ) -> tuple[Incident, bool]:
        incident, created = open_or_join(
            s,
            system_id=self._system_id,
            open_key=decision.key,
            type="mass_incident",
            subject=decision.subject,
            description=decision.description,
            author=AUTHOR,
            source="correlation",
            evidence={
                "scope": decision.scope,
                "name": decision.name,
                "tenants": list(decision.tenants),
            },
        )
        if created:
            incident.created_at = now
            self.created.labels(type="mass_incident", source="correlation").inc()
            log.info(
                "mass incident opened number=%s key=%s tenants=%d",
                incident.number,
                decision.key,
                len(decision.tenants),
            )
        return incident, created

    @staticmethod
    def _link(s: Session, mass: Incident, child: Incident) -> None:
        child.parent_id = mass.id
        add_event(
            s,
            child,
            author=AUTHOR,
            kind="linked",
            body=f"Linked to mass incident {mass.number}",
            data={"parent": mass.number},
        )
        add_event(
            s,
            mass,
            author=AUTHOR,
            kind="child",
            body=f"Incident {child.number} ({child.tenant}) linked",
            data={"child": child.number, "tenant": child.tenant},
        )
        # The mass incident's "opened" notice goes to every tenant linked to it, also to one
        # linked later (the outbox's dedup key makes this idempotent).
        created = s.scalars(
            select(IncidentEvent).where(
                IncidentEvent.incident_id == mass.id, IncidentEvent.kind == "created"
            )
        ).first()
        if created is not None:
            outbox.enqueue_event(s, mass, created)
        # A correlated mass incident says how many tenants it has now (this transaction).
        tenants = s.scalars(select(Incident.tenant).where(Incident.parent_id == mass.id))
        now = current_mass(mass.open_key or "", [t for t in tenants if t is not None])
        if now is not None and (mass.subject, mass.description) != (now.subject, now.description):
            mass.subject, mass.description = now.subject, now.description
        log.info("incident linked child=%s parent=%s", child.number, mass.number)

    # --- verified recovery ------------------------------------------------------------------
    def check_recovery(self) -> list[str]:
        """Move each active automatic ticket whose monitors (a mass incident: its children's)
        are all UP for ``recovery_hold`` to solution_provided, with a comment that says what
        recovered and when. Returns the numbers of the tickets moved."""
        now = self._clock()
        with session_scope(self._factory) as s:
            one_writer(s)
            th = incident_thresholds(s)
            solved = verify_recovery(s, th, now, author=AUTHOR)
            return solved + verify_host_recovery(s, th, now, author=AUTHOR)

    # --- rollouts -------------------------------------------------------------------------
    def on_rollout_failure(self, failure: RolloutFailure) -> None:
        """A failed rollout opens one mass incident linked to the rollout."""
        with session_scope(self._factory) as s:
            red = self._redactor(s)
            _incident, created = open_or_join(
                s,
                system_id=self._system_id,
                open_key=f"rollout:{failure.rollout_id}",
                type="mass_incident",
                subject=red.text(
                    f"Rollout {failure.rollout_id} to {failure.image} failed on "
                    f"{failure.tenant}@{failure.host}"
                    if failure.tenant
                    else f"Rollout {failure.rollout_id} to {failure.image}: {failure.reason}"
                ),
                description=red.text(
                    f"Rollout {failure.rollout_id} (image {failure.image}) failed on tenant "
                    f"{failure.tenant}, host {failure.host}: {failure.reason}. The instance was "
                    "restored to its previous container and the rollout was stopped."
                ),
                author=AUTHOR,
                source="rollout",
                tenant=None,
                rollout_id=failure.rollout_id,
                evidence=red.value(
                    jsonable({"tenant": failure.tenant, "host": failure.host, **failure.evidence})
                ),
            )
        if created:
            self.created.labels(type="mass_incident", source="rollout").inc()


def monitor_evidence(change: StateChange) -> dict[str, Any]:
    """What a ticket keeps of the check that turned a monitor DOWN: the monitor, the reason, the
    status code, the start of the response, the kind's own details (SIP reply line, container
    state, PostgreSQL numbers, …). The target's password is replaced by ``***``."""
    spec, result = change.spec, change.result
    evidence: dict[str, Any] = {
        "monitor": spec.id,
        "target": public_target(spec.target),
        "kind": spec.kind,
        "host": spec.host,
        "reason": change.reason,
    }
    if result is not None:
        evidence.update(
            reason=result.reason,
            status_code=result.status_code,
            body=result.body_excerpt,
            duration_s=result.duration_s,
            at=result.at.isoformat(),
            details=jsonable(dict(result.details)),
        )
    return evidence


def jsonable(value: Any) -> Any:
    """``value`` with anything JSON cannot hold (bytes, datetimes, tuples, …) made plain."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _note_change(s: Session, change: StateChange, reason: str) -> bool:
    """The change's row in ``monitor_changes``; False when it is there already (written)."""
    dialect = s.get_bind().dialect.name
    ins = (
        postgresql.insert(MonitorChange)
        if dialect == "postgresql"
        else sqlite.insert(MonitorChange)
    )
    row = s.execute(
        ins.values(
            monitor_id=change.spec.id,
            tenant=change.spec.tenant,
            old=int(change.old),
            new=int(change.new),
            reason=reason,
            at=change.at,
            written_at=utc_now(),
        )
        .on_conflict_do_nothing(index_elements=[MonitorChange.monitor_id, MonitorChange.at])
        .returning(MonitorChange.id)
    ).first()
    return row is not None


def _load_monitor_records(s: Session, changes: Sequence[StateChange]) -> list[MonitorRecord]:
    """Read the records of the changes' monitors into the session with one SELECT (per 500),
    inserting the missing ones first with one statement (a replica racing the insert does not
    fail), so that :func:`_monitor_record` finds each in the session. A record inserted here
    gets the time of its monitor's first change in the batch, so that change is applied. The
    caller keeps the list returned while it uses the session: the session holds its objects
    only weakly, and an unreferenced record would be read again, one SELECT each."""
    first: dict[str, StateChange] = {}
    for change in changes:
        first.setdefault(change.spec.id, change)
    ids = list(first)
    found: set[str] = set()
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        found.update(s.scalars(select(MonitorRecord.id).where(MonitorRecord.id.in_(chunk))))
    missing = [first[i] for i in ids if i not in found]
    if missing:
        dialect = s.get_bind().dialect.name
        table = cast(Table, MonitorRecord.__table__)
        ins = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
        s.connection().execute(
            ins.on_conflict_do_nothing(index_elements=[table.c.id]),
            [
                {
                    "id": c.spec.id,
                    "name": c.spec.name,
                    "tenant": c.spec.tenant,
                    "host": c.spec.host,
                    "kind": c.spec.kind,
                    "target": "",
                    "changed_at": c.at,
                }
                for c in missing
            ],
        )
    records: list[MonitorRecord] = []
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        records.extend(s.scalars(select(MonitorRecord).where(MonitorRecord.id.in_(chunk))))
    return records


def _monitor_record(
    s: Session, monitor_id: str, tenant: str, host: str, kind: str, name: str, at: datetime
) -> tuple[MonitorRecord, bool]:
    """The monitor's row, inserted if missing (then True); a replica racing the insert does
    not fail."""
    rec = s.get(MonitorRecord, monitor_id)
    if rec is not None:
        return rec, False
    dialect = s.get_bind().dialect.name
    ins = (
        postgresql.insert(MonitorRecord)
        if dialect == "postgresql"
        else sqlite.insert(MonitorRecord)
    )
    s.execute(
        ins.values(
            id=monitor_id, name=name, tenant=tenant, host=host, kind=kind, target="", changed_at=at
        ).on_conflict_do_nothing(index_elements=[MonitorRecord.id])
    )
    return s.get_one(MonitorRecord, monitor_id, populate_existing=True), True
