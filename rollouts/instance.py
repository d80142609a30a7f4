"""One instance's steps: pull → backup → migrate → replace → gate, and the way back.

Every step is journalled before it acts (``rollouts.journal``) and written so that running
it again, or ``reconcile`` after a crash, ends in a known state: the instance on the new
version and healthy (``updated``), or on its previous container, restarted, with its
database restored when a migration ran (``failed`` / ``reverted`` / back to ``pending``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import Histogram
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.db.models import Rollout, RolloutInstance, Tenant
from orchestrator.errors import CpdopsError, DockerError
from orchestrator.fleet.discovery import KEPT_MARKER
from orchestrator.fleet.fleetfile import resolve_secret
from orchestrator.fleet.hosts import HostRegistry
from orchestrator.fleet.runtime import PREVIOUS_IMAGE_LABEL, ROLLOUT_LABEL, DockerHost
from orchestrator.incidents.evidence import LOG_LINES, container_state, log_excerpt
from rollouts import dbsafety, decide
from rollouts.gates import GateResult, http_gate
from rollouts.journal import Journal

if TYPE_CHECKING:
    from rollouts.executor import RolloutFailure

log = logging.getLogger(__name__)

ONEOFF_LABEL = "cpdops.oneoff"
NEW_MARKER = "--cpdops-new-"
MIGRATE_MARKER = "--cpdops-migrate-"
REVERT_MARKER = "--cpdops-revert-"
FAILED_MARKER = "--cpdops-failed-"
# The gate asks Docker whether the container died at most this often (HTTP polls are faster).
CRASH_CHECK_S = 1.0


@dataclass(frozen=True)
class InstanceJob:
    rollout_id: int
    instance_id: int
    tenant: str
    host: str
    name: str
    image: str
    target_version: str | None
    gate: dict[str, Any]
    backup: bool
    migrate: list[str] | None
    order: str
    state: str
    old_container_id: str | None
    old_version: str | None
    backup_path: str | None
    migrated: bool

    @property
    def kept_name(self) -> str:
        return f"{self.name}{KEPT_MARKER}r{self.rollout_id}"

    @classmethod
    def from_rows(cls, r: Rollout, i: RolloutInstance) -> InstanceJob:
        opts = r.options or {}
        return cls(
            rollout_id=r.id,
            instance_id=i.id,
            tenant=i.tenant,
            host=i.host,
            name=i.container_name,
            image=r.image,
            target_version=r.target_version,
            gate=dict(opts.get("gate") or {}),
            backup=bool(opts.get("backup", True)),
            migrate=opts.get("migrate"),
            order=str((opts.get("strategy") or {}).get("order", "auto")),
            state=i.state,
            old_container_id=i.old_container_id,
            old_version=i.old_version,
            backup_path=i.backup_path,
            migrated=i.migrated,
        )


def choose_order(requested: str, attrs: dict[str, Any]) -> str:
    """Pure: start-first only when the container publishes no fixed host port."""
    if requested != "auto":
        return requested
    bindings = (attrs.get("HostConfig") or {}).get("PortBindings") or {}
    fixed = any(b.get("HostPort") for bs in bindings.values() for b in (bs or []))
    return "stop-first" if fixed else "start-first"


class InstanceWorker:
    def __init__(
        self,
        factory: sessionmaker[Session],
        hosts: HostRegistry,
        *,
        stop_timeout_s: int,
        backup_dir: Path,
        crashpoint: Callable[[str], None],
        report: Callable[[RolloutFailure], None],
        rollback_seconds: Histogram,
    ) -> None:
        self._factory = factory
        self._hosts = hosts
        self._journal = Journal(factory)
        self._stop_timeout = stop_timeout_s
        self._backup_dir = backup_dir
        self._crashpoint = crashpoint
        self._report_fn = report
        self._rollback_seconds = rollback_seconds
        # (host, image) pairs the executor has just made sure of (pre-pull before wave 1).
        self.prepulled: set[tuple[str, str]] = set()

    # --- forward ------------------------------------------------------------------------------
    def update(self, job: InstanceJob) -> None:
        j, host = self._journal, self._hosts.get(job.host)
        step = j.begin(job.instance_id, "pull", image=job.image)
        try:
            if (job.host, job.image) not in self.prepulled:
                host.ensure_image(job.image)
            old = host.inspect(job.name)
        except DockerError as exc:
            j.end(step, "failed", error=str(exc))
            return self._fail(job, str(exc), {"step": "pull"})
        old_id = str(old["Id"])
        j.end(
            step,
            "ok",
            instance=(
                job.instance_id,
                {"old_container_id": old_id, "old_image": old["Config"]["Image"]},
            ),
        )
        job = _replace(job, old_container_id=old_id)
        order = choose_order(job.order, old)

        dsn = self._tenant_dsn(job.tenant) if (job.backup or job.migrate) else None
        if dsn is not None and job.backup:
            step = j.begin(job.instance_id, "backup")
            try:
                backup = dbsafety.backup(
                    dsn, self._backup_dir / f"rollout-{job.rollout_id}", label=job.tenant
                )
            except CpdopsError as exc:
                j.end(step, "failed", error=str(exc))
                return self._fail(job, f"backup refused: {exc}", {"step": "backup"})
            j.end(step, "ok", path=str(backup.path), size_bytes=backup.size_bytes)
            j.set_instance(job.instance_id, backup_path=str(backup.path))
            job = _replace(job, backup_path=str(backup.path))
            self._crashpoint("after_backup")

        if job.migrate:
            j.set_instance(job.instance_id, migrated=True)  # journalled before it acts
            job = _replace(job, migrated=True)
            step = j.begin(job.instance_id, "migrate", command=job.migrate)
            try:
                result = host.run_oneoff_like(
                    old_id,
                    image=job.image,
                    command=list(job.migrate or []),
                    name=f"{job.name}{MIGRATE_MARKER}r{job.rollout_id}",
                    labels={ROLLOUT_LABEL: str(job.rollout_id), ONEOFF_LABEL: "1"},
                    timeout_s=float(job.gate.get("migrate_timeout_s", 600)),
                )
                detail: dict[str, Any]
                ok, detail = (
                    result.exit_code == 0,
                    {
                        "exit_code": result.exit_code,
                        "logs": result.logs[-2000:],
                        "seconds": round(result.seconds, 3),
                        "timed_out": result.timed_out,
                    },
                )
            except DockerError as exc:
                ok, detail = False, {"error": str(exc)}
            if not ok:
                j.end(step, "failed", **detail)
                self._restore(job, None, "migration failed", final=decide.FAILED)
                return self._report(job, "migration failed", {"step": "migrate", **detail})
            j.end(step, "ok", **detail)

        if order == "start-first":
            return self._start_first(job, host, old)
        step = j.begin(job.instance_id, "replace", order=order, kept_name=job.kept_name)
        new_id: str | None = None
        try:
            host.stop(old_id, timeout=self._stop_timeout)
            self._crashpoint("after_stop_old")
            host.rename(old_id, job.kept_name)
            new_id = self._create(job, host, old, job.name)
            host.start(new_id)
            self._crashpoint("after_start_new")
        except DockerError as exc:
            j.end(step, "failed", error=str(exc), new_container=new_id)
            self._restore(job, new_id, str(exc), final=decide.FAILED)
            return self._report(job, str(exc), {"step": "replace"})
        j.end(step, "ok", new_container=new_id)
        self._gate_and_settle(job, host, new_id)

    def _start_first(self, job: InstanceJob, host: DockerHost, old: dict[str, Any]) -> None:
        j = self._journal
        temp = f"{job.name}{NEW_MARKER}r{job.rollout_id}"
        assert job.old_container_id is not None
        step = j.begin(job.instance_id, "replace", order="start-first", kept_name=job.kept_name)
        new_id: str | None = None
        try:
            new_id = self._create(job, host, old, temp)
            host.start(new_id)
            self._crashpoint("after_start_new")
        except DockerError as exc:
            j.end(step, "failed", error=str(exc), new_container=new_id)
            if new_id is not None:
                host.remove(new_id, force=True)
            return self._fail(job, str(exc), {"step": "replace"})
        j.end(step, "ok", new_container=new_id)
        step = j.begin(job.instance_id, "gate", expect_version=job.target_version)
        result = self._gate(job, host, new_id)
        if not result.ok:
            j.end(step, "failed", **_evidence(result))
            self._gate_failed(job, host, new_id, result)
            return
        j.end(step, "ok", passes=result.passes, attempts=result.attempts)
        step = j.begin(job.instance_id, "promote", new_container=new_id)
        try:
            host.stop(job.old_container_id, timeout=self._stop_timeout)
            self._crashpoint("after_stop_old")
            host.rename(job.old_container_id, job.kept_name)
            host.rename(new_id, job.name)
        except DockerError as exc:
            j.end(step, "failed", error=str(exc))
            self._restore(job, new_id, str(exc), final=decide.FAILED)
            return self._report(job, str(exc), {"step": "promote"})
        j.end(step, "ok", instance=(job.instance_id, {"state": decide.UPDATED}))

    def _create(self, job: InstanceJob, host: DockerHost, old: dict[str, Any], name: str) -> str:
        """Create the new container from the old one's inspect result (taken before it was
        stopped or renamed: neither changes the configuration that is copied)."""
        old_image = str(old["Config"]["Image"])
        new_id = host.create_like(
            str(old["Id"]),
            image=job.image,
            name=name,
            extra_labels={ROLLOUT_LABEL: str(job.rollout_id), PREVIOUS_IMAGE_LABEL: old_image},
            attrs=old,
        )
        self._journal.set_instance(job.instance_id, new_container_id=new_id)
        return new_id

    def _gate(
        self,
        job: InstanceJob,
        host: DockerHost,
        container_id: str,
        *,
        version: str | bool | None = True,
        gate: dict[str, Any] | None = None,
    ) -> GateResult:
        gate = gate if gate is not None else job.gate
        expect = job.target_version if version is True else (version or None)

        checked = [time.monotonic()]

        def crashed(*, now: bool = False) -> bool:
            # Between Docker checks the HTTP poll alone decides; a crash is seen within
            # CRASH_CHECK_S (the container was just found running, or just started).
            if not now and time.monotonic() - checked[0] < CRASH_CHECK_S:
                return False
            checked[0] = time.monotonic()
            info = host.find(container_id)
            return info is None or info.status in ("exited", "dead")

        info = host.find(container_id)
        url = info.health_url if info is not None else None
        if not url:
            return GateResult(not crashed(now=True), 1, 1, "running (no health URL)")
        return http_gate(
            url,
            expect_version=expect,
            passes=int(gate.get("passes", 3)),
            deadline_s=float(gate.get("deadline_s", 60)),
            interval_s=float(gate.get("interval_s", 0.5)),
            should_stop=crashed,
        )

    def _gate_and_settle(self, job: InstanceJob, host: DockerHost, new_id: str) -> None:
        j = self._journal
        step = j.begin(job.instance_id, "gate", expect_version=job.target_version)
        result = self._gate(job, host, new_id)
        if result.ok:
            j.end(
                step,
                "ok",
                passes=result.passes,
                attempts=result.attempts,
                instance=(job.instance_id, {"state": decide.UPDATED}),
            )
            log.info(
                "instance updated rollout=%s tenant=%s host=%s",
                job.rollout_id,
                job.tenant,
                job.host,
            )
            return
        j.end(step, "failed", **_evidence(result))
        self._gate_failed(job, host, new_id, result)

    def _gate_failed(
        self, job: InstanceJob, host: DockerHost, new_id: str, result: GateResult
    ) -> None:
        # The failed container's state and logs, read before _restore removes it.
        evidence = {
            "step": "gate",
            **_evidence(result),
            "passes": result.passes,
            "attempts": result.attempts,
            "container": _safe_state(host, new_id),
            "logs": _safe_logs(host, new_id),
        }
        self._restore(job, new_id, result.reason, final=decide.FAILED)
        self._report(job, result.reason, evidence)

    # --- backward -----------------------------------------------------------------------------
    def revert(self, job: InstanceJob) -> None:
        """Rollback of an updated instance: back to its kept container (a restart) while the
        rollout runs; after it ended (kept containers removed), a re-create on the previous
        image with the whole configuration, gated like an update."""
        host = self._hosts.get(job.host)
        current = host.find(job.name)
        new_id = current.id if current is not None and current.id != job.old_container_id else None
        kept = host.find(job.old_container_id) if job.old_container_id else None
        if kept is not None or current is None:
            self._restore(job, new_id, "rollout rolled back", final=decide.REVERTED)
            return
        self._recreate_previous(job, host, current.id)

    def _recreate_previous(self, job: InstanceJob, host: DockerHost, current_id: str) -> None:
        j = self._journal
        old_image = str(
            host.inspect(current_id)["Config"]["Labels"].get(PREVIOUS_IMAGE_LABEL) or ""
        )
        aside = f"{job.name}{REVERT_MARKER}r{job.rollout_id}"
        step = j.begin(job.instance_id, "recreate-previous", image=old_image, aside=aside)
        started = time.monotonic()
        if not old_image:
            j.end(step, "failed", error="the container does not name its previous image")
            j.set_instance(job.instance_id, state=decide.ERROR, error="previous image unknown")
            return
        prev_id: str | None = None
        try:
            host.stop(current_id, timeout=self._stop_timeout)
            host.rename(current_id, aside)
            if job.migrated and job.backup_path:
                dsn = self._tenant_dsn(job.tenant)
                if dsn is not None:
                    dbsafety.restore(dsn, Path(job.backup_path))
                    j.set_instance(job.instance_id, migrated=False)
            prev_id = host.create_like(
                current_id,
                image=old_image,
                name=job.name,
                extra_labels={ROLLOUT_LABEL: str(job.rollout_id)},
            )
            host.start(prev_id)
        except (DockerError, CpdopsError) as exc:
            j.end(step, "failed", error=str(exc))
            self._undo_recreate(job, host, current_id, prev_id)
            j.set_instance(job.instance_id, state=decide.ERROR, error=f"rollback failed: {exc}")
            return
        result = self._gate(job, host, prev_id, version=job.old_version or False)
        if not result.ok:
            j.end(step, "failed", **_evidence(result))
            self._undo_recreate(job, host, current_id, prev_id)
            j.set_instance(
                job.instance_id,
                state=decide.ERROR,
                error=f"previous version not healthy: {result.reason}",
            )
            return
        host.remove(current_id, force=True)
        elapsed = time.monotonic() - started
        self._rollback_seconds.observe(elapsed)
        j.end(step, "ok", seconds=round(elapsed, 3))
        j.set_instance(job.instance_id, state=decide.REVERTED, new_container_id=prev_id)

    def _undo_recreate(
        self, job: InstanceJob, host: DockerHost, current_id: str, prev_id: str | None
    ) -> None:
        """Put the updated container back if the re-create of the previous one failed."""
        try:
            if prev_id is not None:
                host.remove(prev_id, force=True)
            if host.find(job.name) is None:
                host.rename(current_id, job.name)
            host.start(current_id)
        except DockerError as exc:
            log.error("could not put the updated container back tenant=%s: %s", job.tenant, exc)

    def _restore(self, job: InstanceJob, new_id: str | None, reason: str, *, final: str) -> None:
        """Put the kept container back: kill the new one (it is removed once the kept one
        answers, off the critical path), restore the DB if migrated, restart the kept one."""
        started = time.monotonic()
        j, host = self._journal, self._hosts.get(job.host)
        old_id = job.old_container_id
        step = j.begin(job.instance_id, "rollback", new_container=new_id, reason=reason)
        doomed: list[str] = []  # killed new containers, removed at the end
        try:
            temp = host.find(f"{job.name}{NEW_MARKER}r{job.rollout_id}")
            for ref in {new_id, temp.id if temp is not None else None} - {None, old_id}:
                assert ref is not None
                host.kill(ref)
                doomed.append(ref)
            if job.migrated and job.backup_path:
                dsn = self._tenant_dsn(job.tenant)
                if dsn is not None:
                    if old_id is not None:  # nothing may use the database while it is restored
                        host.stop(old_id, timeout=self._stop_timeout)
                    seconds = dbsafety.restore(dsn, Path(job.backup_path))
                    j.set_instance(job.instance_id, migrated=False)
                    log.info(
                        "database restored rollout=%s tenant=%s seconds=%.2f",
                        job.rollout_id,
                        job.tenant,
                        seconds,
                    )
            if old_id is not None:
                current = host.find(job.name)
                if current is not None and current.id != old_id:
                    if current.id not in doomed:
                        host.kill(current.id)
                        doomed.append(current.id)
                    # Free the name: the failed container waits aside until it is removed.
                    host.rename(
                        current.id, f"{job.name}{FAILED_MARKER}r{job.rollout_id}-{current.id[:12]}"
                    )
                if current is None or current.id != old_id:
                    host.rename(old_id, job.name)
                host.start(old_id)
            else:
                self._remove_all(host, doomed)
                doomed = []
        except (DockerError, CpdopsError) as exc:
            j.end(
                step,
                "failed",
                error=str(exc),
                instance=(
                    job.instance_id,
                    {"state": decide.ERROR, "error": f"rollback failed: {exc}"},
                ),
            )
            return
        check = (
            self._gate(
                job,
                host,
                old_id,
                version=False,
                gate={"passes": 1, "deadline_s": 30, "interval_s": 0.1},
            )
            if old_id is not None
            else GateResult(True, 0, 0, "nothing to restart")
        )
        elapsed = time.monotonic() - started
        self._rollback_seconds.observe(elapsed)
        self._remove_all(host, doomed)
        if not check.ok:
            j.end(
                step,
                "failed",
                error=f"previous version not healthy: {check.reason}",
                instance=(
                    job.instance_id,
                    {
                        "state": decide.ERROR,
                        "error": f"{reason}; the restored one is unhealthy: {check.reason}",
                    },
                ),
            )
            return
        j.end(
            step,
            "ok",
            seconds=round(elapsed, 3),
            instance=(
                job.instance_id,
                {"state": final, "error": reason if final == decide.FAILED else None},
            ),
        )

    @staticmethod
    def _remove_all(host: DockerHost, refs: list[str]) -> None:
        for ref in refs:
            try:
                host.remove(ref, force=True)
            except DockerError as exc:  # reconcile or the next rollback sweeps it
                log.warning(
                    "could not remove failed container host=%s id=%s: %s", host.name, ref, exc
                )

    def _sweep_failed(self, job: InstanceJob, host: DockerHost) -> None:
        """Remove failed new containers a crash left aside (``FAILED_MARKER``)."""
        prefix = f"{job.name}{FAILED_MARKER}r{job.rollout_id}-"
        self._remove_all(host, [c.id for c in host.list_managed() if c.name.startswith(prefix)])

    # --- crash recovery -----------------------------------------------------------------------
    def reconcile(self, job: InstanceJob) -> None:
        """Finish or undo what a dead process left: the instance ends updated, or pending
        again on its previous container (the rollout then retries it), never in between."""
        host = self._hosts.get(job.host)
        j = self._journal
        step = j.begin(job.instance_id, "reconcile", state=job.state)
        self._sweep_failed(job, host)
        if job.state == decide.REVERTING:
            j.end(step, "ok", action="revert again")
            return self.revert(job)
        kept = host.find(job.kept_name)
        current = host.find(job.name)
        new_here = current is not None and current.labels.get(ROLLOUT_LABEL) == str(job.rollout_id)
        if kept is not None and new_here and current is not None and current.running:
            job = _replace(job, old_container_id=kept.id)
            result = self._gate(job, host, current.id)
            if result.ok:
                j.end(step, "ok", action="new container verified")
                j.set_instance(job.instance_id, state=decide.UPDATED)
                return
        old_id = (
            kept.id
            if kept is not None
            else (current.id if current is not None and not new_here else job.old_container_id)
        )
        if old_id is None:
            j.end(step, "failed", error="previous container not found")
            j.set_instance(
                job.instance_id, state=decide.ERROR, error="previous container not found"
            )
            return
        job = _replace(job, old_container_id=old_id)
        new_id = current.id if current is not None and current.id != old_id else None
        self._restore(job, new_id, "recovered after a crash", final=decide.PENDING)
        host.remove(f"{job.name}{MIGRATE_MARKER}r{job.rollout_id}", force=True)
        j.end(step, "ok", action="restored previous container; will retry")

    # --- helpers ------------------------------------------------------------------------------
    def _tenant_dsn(self, tenant: str) -> str | None:
        with self._factory() as s:
            dsn = s.scalars(select(Tenant.db_dsn).where(Tenant.slug == tenant)).first()
        return resolve_secret(dsn) if dsn else None

    def _fail(self, job: InstanceJob, reason: str, evidence: dict[str, Any]) -> None:
        self._journal.set_instance(job.instance_id, state=decide.FAILED, error=reason)
        self._report(job, reason, evidence)

    def _report(self, job: InstanceJob, reason: str, evidence: dict[str, Any]) -> None:
        from rollouts.executor import RolloutFailure

        with self._factory() as s:
            row = s.get(RolloutInstance, job.instance_id)
            old_image = row.old_image if row is not None else None
        instance = {
            "id": job.instance_id,
            "container": job.name,
            "old_image": old_image,
            "old_version": job.old_version,
            "image": job.image,
            "target_version": job.target_version,
        }
        self._report_fn(
            RolloutFailure(
                job.rollout_id,
                job.image,
                job.tenant,
                job.host,
                reason,
                {"instance": instance, **evidence},
            )
        )


def _replace(job: InstanceJob, **changes: Any) -> InstanceJob:
    from dataclasses import replace

    return replace(job, **changes)


def _evidence(result: GateResult) -> dict[str, Any]:
    return {
        "reason": result.reason,
        "status_code": result.status_code,
        "body": result.body_excerpt,
        "reported_version": result.version,
    }


def _safe_logs(host: DockerHost, container_id: str) -> str:
    try:
        return log_excerpt(host.logs(container_id, tail=LOG_LINES))
    except DockerError as exc:
        return f"(logs unavailable: {exc})"


def _safe_state(host: DockerHost, container_id: str) -> dict[str, Any]:
    try:
        return container_state(host.inspect(container_id))
    except DockerError as exc:
        return {"error": str(exc)}
