"""Acts on Docker: creates rollouts, replaces containers, gates, restores on failure."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.db.models import AuditEntry, Rollout, RolloutInstance, Tenant
from orchestrator.db.session import session_scope
from orchestrator.errors import (
    ConflictError,
    DockerError,
    HostUnreachable,
    ImageNotFound,
    InputError,
)
from orchestrator.fleet.discovery import KEPT_MARKER, discover
from orchestrator.fleet.hosts import HostRegistry
from orchestrator.fleet.runtime import (
    HEALTH_URL_LABEL,
    PREVIOUS_IMAGE_LABEL,
    ROLLOUT_LABEL,
    VERSION_LABEL,
    DockerHost,
)
from rollouts.gates import GateResult, http_gate
from rollouts.journal import Journal
from rollouts.planner import select_instances
from rollouts.spec import RolloutRequest

log = logging.getLogger(__name__)

ACTIVE_ROLLOUT = ("pending", "running")
FINAL_ROLLOUT = ("succeeded", "failed", "aborted")


@dataclass(frozen=True)
class RolloutFailure:
    """What the incident engine is told when a rollout fails."""

    rollout_id: int
    image: str
    tenant: str
    host: str
    reason: str
    evidence: dict[str, Any]


class RolloutMetrics:
    """SPEC §3.5 rollout metrics (``cpdops_rollout_instances`` is read from the store)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.results = Counter(
            "cpdops_rollouts", "Finished rollouts by result", ["result"], registry=registry
        )
        self.duration = Histogram(
            "cpdops_rollout_duration_seconds",
            "Wall time of a rollout from start to end",
            buckets=(5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200),
            registry=registry,
        )
        self.rollback_seconds = Histogram(
            "cpdops_rollback_duration_seconds",
            "Gate failure to the previous version answering again, per instance",
            buckets=(0.5, 1, 2, 3, 5, 10, 30, 60),
            registry=registry,
        )


class RolloutExecutor:
    def __init__(
        self,
        factory: sessionmaker[Session],
        hosts: HostRegistry,
        *,
        stop_timeout_s: int = 10,
        on_failure: Callable[[RolloutFailure], None] | None = None,
        on_progress: Callable[[int], None] | None = None,
        on_instance: Callable[[str, str, bool], None] | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._factory = factory
        self._hosts = hosts
        self._journal = Journal(factory)
        self._stop_timeout = stop_timeout_s
        self._on_failure = on_failure
        self.on_progress = on_progress
        # Called with (tenant, host, True) before an instance is touched and with False after:
        # ``cpdops serve`` suppresses the instance's monitors meanwhile (the gate judges it).
        self.on_instance = on_instance
        self._lock = threading.Lock()
        self._metrics = RolloutMetrics(registry or CollectorRegistry())

    # --- create ---------------------------------------------------------------------------
    def create(self, request: RolloutRequest, *, actor: str = "cli") -> int:
        """Validate, plan and store a rollout (status ``pending``); nothing is touched yet.

        Raises InputError for an unknown tenant/host/image and ConflictError when an
        instance already belongs to an active rollout.
        """
        hosts = self._hosts.hosts()
        if request.hosts:
            unknown = sorted(set(request.hosts) - {h.name for h in hosts})
            if unknown:
                raise InputError(f"unknown host(s): {', '.join(unknown)}")
        if request.hosts:
            hosts = [h for h in hosts if h.name in request.hosts]
        found = discover(hosts)
        if found.errors:
            # Planning on a partial view could miss instances: refuse, naming the hosts.
            raise HostUnreachable(
                "cannot plan: host(s) not answering: "
                + "; ".join(f"{name}: {err}" for name, err in sorted(found.errors.items()))
            )
        with self._factory() as s:
            rings = {t.slug: t.ring for t in s.scalars(select(Tenant))}
        plan = select_instances(request, found.instances, rings)
        target_version = self._check_image(request.image, {p.host for p in plan}, hosts)
        with self._lock, session_scope(self._factory) as s:
            busy = s.execute(
                select(RolloutInstance.rollout_id, RolloutInstance.tenant, RolloutInstance.host)
                .join(Rollout)
                .where(Rollout.status.in_(ACTIVE_ROLLOUT))
            ).all()
            taken = {(t, h): rid for rid, t, h in busy}
            for p in plan:
                if (p.tenant, p.host) in taken:
                    raise ConflictError(
                        f"instance {p.tenant}@{p.host} is held by active rollout "
                        f"{taken[(p.tenant, p.host)]}"
                    )
            rollout = Rollout(
                image=request.image,
                target_version=target_version,
                status="pending",
                selection=request.model_dump(exclude={"gate"}),
                options={"gate": request.gate.model_dump()},
                created_by=actor,
            )
            s.add(rollout)
            for p in plan:
                rollout.instances.append(
                    RolloutInstance(
                        position=p.position,
                        tenant=p.tenant,
                        host=p.host,
                        container_name=p.container_name,
                        old_image=p.image,
                        old_version=p.version,
                    )
                )
            s.flush()
            s.add(
                AuditEntry(
                    actor=actor,
                    action="rollout.create",
                    target=f"rollout/{rollout.id}",
                    detail={"image": request.image, "instances": len(plan)},
                )
            )
            return rollout.id

    def _check_image(self, image: str, used: set[str], hosts: list[DockerHost]) -> str | None:
        versions: set[str | None] = set()
        for host in hosts:
            if host.name not in used:
                continue
            try:
                labels = host.ensure_image(image)
            except ImageNotFound as exc:
                raise InputError(str(exc)) from exc
            versions.add(labels.get(VERSION_LABEL))
        if len(versions) > 1:
            raise InputError(
                f"image {image} differs between hosts (versions {sorted(map(str, versions))})"
            )
        return versions.pop() if versions else None

    # --- run ------------------------------------------------------------------------------
    def run(self, rollout_id: int) -> str:
        """Run a pending rollout to its end; returns the final status."""
        with session_scope(self._factory) as s:
            rollout = s.get_one(Rollout, rollout_id)
            if rollout.status != "pending":
                raise ConflictError(f"rollout {rollout_id} is {rollout.status}, not pending")
            rollout.status = "running"
            rollout.started_at = datetime.now(UTC)
            image, target_version = rollout.image, rollout.target_version
            gate = dict(rollout.options.get("gate") or {})
            items = [(i.id, i.tenant, i.host, i.container_name) for i in rollout.instances]
        log.info("rollout started rollout=%s image=%s instances=%d", rollout_id, image, len(items))
        self._progress(rollout_id)
        status = "succeeded"
        error: str | None = None
        for instance_id, tenant, host_name, name in items:
            host = self._hosts.get(host_name)
            self._hold(tenant, host_name, True)
            try:
                ok, reason = self._update_instance(
                    rollout_id, instance_id, host, name, image, target_version, gate, tenant
                )
            finally:
                self._hold(tenant, host_name, False)
            self._progress(rollout_id)
            if not ok:
                status, error = "failed", f"{tenant}@{host_name}: {reason}"
                break
        self._finish(rollout_id, status, error)
        return status

    def _hold(self, tenant: str, host: str, active: bool) -> None:
        if self.on_instance is None:
            return
        try:
            self.on_instance(tenant, host, active)
        except Exception:
            log.exception("instance hook failed tenant=%s host=%s", tenant, host)

    def _progress(self, rollout_id: int) -> None:
        if self.on_progress is not None:
            self.on_progress(rollout_id)

    def _update_instance(
        self,
        rollout_id: int,
        instance_id: int,
        host: DockerHost,
        name: str,
        image: str,
        target_version: str | None,
        gate: dict[str, Any],
        tenant: str,
    ) -> tuple[bool, str]:
        j = self._journal
        kept_name = f"{name}{KEPT_MARKER}r{rollout_id}"
        j.set_instance(instance_id, state="updating")
        self._progress(rollout_id)
        step = j.begin(instance_id, "pull", image=image)
        try:
            host.ensure_image(image)
        except DockerError as exc:
            j.end(step, "failed", error=str(exc))
            j.set_instance(instance_id, state="failed", error=str(exc))
            self._report(rollout_id, image, tenant, host.name, str(exc), {"step": "pull"})
            return False, str(exc)
        j.end(step, "ok")

        old = host.inspect(name)
        old_id, old_image = old["Id"], old["Config"]["Image"]
        j.set_instance(instance_id, old_container_id=old_id, old_image=old_image)
        step = j.begin(instance_id, "replace", old_container=old_id, kept_name=kept_name)
        new_id: str | None = None
        try:
            host.stop(old_id, timeout=self._stop_timeout)
            host.rename(old_id, kept_name)
            new_id = host.create_like(
                old_id,
                image=image,
                name=name,
                extra_labels={ROLLOUT_LABEL: str(rollout_id), PREVIOUS_IMAGE_LABEL: old_image},
            )
            j.set_instance(instance_id, new_container_id=new_id)
            host.start(new_id)
        except DockerError as exc:
            j.end(step, "failed", error=str(exc), new_container=new_id)
            self._restore(instance_id, host, name, old_id, new_id, str(exc))
            self._report(rollout_id, image, tenant, host.name, str(exc), {"step": "replace"})
            return False, str(exc)
        j.end(step, "ok", new_container=new_id)

        url = host.find(new_id)
        health_url = url.labels.get(HEALTH_URL_LABEL) if url else None
        step = j.begin(instance_id, "gate", url=health_url, expect_version=target_version)
        result = self._gate(host, new_id, health_url, target_version, gate)
        if result.ok:
            j.end(step, "ok", passes=result.passes, attempts=result.attempts)
            j.set_instance(instance_id, state="updated")
            log.info("instance updated rollout=%s tenant=%s host=%s", rollout_id, tenant, host.name)
            return True, "updated"
        evidence = {
            "step": "gate",
            "reason": result.reason,
            "status_code": result.status_code,
            "body": result.body_excerpt,
            "reported_version": result.version,
            "logs": _safe_logs(host, new_id),
        }
        j.end(step, "failed", **evidence)
        self._restore(instance_id, host, name, old_id, new_id, result.reason)
        self._report(rollout_id, image, tenant, host.name, result.reason, evidence)
        return False, result.reason

    def _gate(
        self,
        host: DockerHost,
        container_id: str,
        url: str | None,
        version: str | None,
        gate: dict[str, Any],
    ) -> GateResult:
        def crashed() -> bool:
            info = host.find(container_id)
            return info is None or info.status in ("exited", "dead")

        if not url:
            # No health URL: the container must simply stay running.
            return GateResult(not crashed(), 1, 1, "running (no health URL)")
        return http_gate(
            url,
            expect_version=version,
            passes=int(gate.get("passes", 3)),
            deadline_s=float(gate.get("deadline_s", 60)),
            interval_s=float(gate.get("interval_s", 0.5)),
            should_stop=crashed,
        )

    def _restore(
        self,
        instance_id: int,
        host: DockerHost,
        name: str,
        old_id: str,
        new_id: str | None,
        reason: str,
    ) -> None:
        """Put the kept previous container back: remove the new one, rename, restart."""
        started = time.monotonic()
        j = self._journal
        step = j.begin(instance_id, "rollback", old_container=old_id, new_container=new_id)
        try:
            if new_id is not None:
                host.remove(new_id, force=True)
            current = host.find(name)
            if current is not None and current.id != old_id:
                host.remove(current.id, force=True)
            if current is None or current.id != old_id:
                host.rename(old_id, name)
            host.start(old_id)
        except DockerError as exc:
            j.end(step, "failed", error=str(exc))
            j.set_instance(instance_id, state="failed", error=f"rollback failed: {exc}")
            return
        # The previous version must answer again: that is when the rollback is done.
        info = host.find(old_id)
        url = info.health_url if info is not None else None
        check = self._gate(host, old_id, url, None, {"passes": 1, "deadline_s": 30})
        elapsed = time.monotonic() - started
        self._metrics.rollback_seconds.observe(elapsed)
        if not check.ok:
            j.end(step, "failed", error=f"previous version not healthy: {check.reason}")
            j.set_instance(
                instance_id,
                state="failed",
                error=f"{reason}; restored one unhealthy: {check.reason}",
            )
            return
        j.end(step, "ok", seconds=round(elapsed, 3))
        j.set_instance(instance_id, state="rolled_back", error=reason)

    def _report(
        self,
        rollout_id: int,
        image: str,
        tenant: str,
        host: str,
        reason: str,
        evidence: dict[str, Any],
    ) -> None:
        if self._on_failure is None:
            return
        try:
            self._on_failure(RolloutFailure(rollout_id, image, tenant, host, reason, evidence))
        except Exception:
            log.exception("failure hook failed rollout=%s", rollout_id)

    def _finish(self, rollout_id: int, status: str, error: str | None) -> None:
        """Drop the kept previous containers of updated instances, then close the rollout."""
        with self._factory() as s:
            rows = s.scalars(
                select(RolloutInstance).where(RolloutInstance.rollout_id == rollout_id)
            ).all()
            kept = [(r.host, r.old_container_id) for r in rows if r.state == "updated"]
        for host_name, old_id in kept:
            if old_id is None:
                continue
            try:
                self._hosts.get(host_name).remove(old_id, force=True)
            except DockerError as exc:
                log.warning(
                    "could not remove kept container host=%s id=%s: %s", host_name, old_id, exc
                )
        with session_scope(self._factory) as s:
            rollout = s.get_one(Rollout, rollout_id)
            rollout.status = status
            rollout.error = error
            rollout.finished_at = datetime.now(UTC)
            if rollout.started_at is not None:
                self._metrics.duration.observe(
                    (rollout.finished_at - rollout.started_at).total_seconds()
                )
        self._metrics.results.labels(result=status).inc()
        log.info("rollout finished rollout=%s status=%s", rollout_id, status)
        self._progress(rollout_id)


def _safe_logs(host: DockerHost, container_id: str) -> str:
    try:
        return host.logs(container_id, tail=20)[-2000:]
    except DockerError as exc:
        return f"(logs unavailable: {exc})"
