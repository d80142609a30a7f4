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
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import Histogram
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.db.models import Rollout, RolloutInstance, Tenant
from orchestrator.errors import CpdopsError, DockerError, HostUnreachable
from orchestrator.fleet.discovery import KEPT_MARKER
from orchestrator.fleet.fleetfile import resolve_secret
from orchestrator.fleet.hosts import HostRegistry
from orchestrator.fleet.runtime import PREVIOUS_IMAGE_LABEL, ROLLOUT_LABEL, DockerHost
from orchestrator.incidents.evidence import LOG_LINES, container_state, log_excerpt
from rollouts import dbsafety, decide, faults
from rollouts.gates import GateProgress, GateResult, http_gate
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


class HostLost(Exception):
    """A step stopped because its host's Docker daemon does not answer (``faults.classify``):
    not a failure of the update. ``touched``: the step may have changed containers already,
    so the instance is reconciled with what Docker reports once the host answers again."""

    def __init__(self, host: str, error: str, *, touched: bool, step: str) -> None:
        super().__init__(error)
        self.host, self.error, self.touched, self.step = host, error, touched, step
        self.since = datetime.now(UTC)
        # Set when the step interrupted was the rollback of a failed update: its reason and
        # the failed new container (the rollback is finished, the update is not redone).
        self.failed: str | None = None
        self.new_id: str | None = None


class PortHeld(Exception):
    """A container's start was refused its published port for CPDOPS_HOST_WAIT_S
    (``faults.port_taken``: e.g. a port proxy a crashed daemon left): the rollout pauses with
    ``reason`` — an environment fault, never a failed instance."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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
        pause: Callable[[int, str], None] | None = None,
        host_wait_s: float = 300.0,
    ) -> None:
        self._factory = factory
        self._hosts = hosts
        self._journal = Journal(factory)
        self._stop_timeout = stop_timeout_s
        self._backup_dir = backup_dir
        self._crashpoint = crashpoint
        self._report_fn = report
        self._rollback_seconds = rollback_seconds
        self._pause_fn = pause
        self.host_wait_s = host_wait_s
        # (host, image) pairs the executor has just made sure of (pre-pull before wave 1).
        self.prepulled: set[tuple[str, str]] = set()

    # --- forward ------------------------------------------------------------------------------
    def update(self, job: InstanceJob) -> None:
        """Update one instance. A host that does not answer (before the step, or in the middle
        of it) is waited for, pinged about every second, for up to ``host_wait_s``; then the
        instance is reconciled with what Docker reports (if the step had touched it) and the
        step is done again. A host still silent after that pauses the rollout; so does a
        backup directory without room for the backup (before anything is touched)."""
        lost = self._interrupted(job)
        while True:
            try:
                if lost is not None and lost.failed is not None:
                    self._ready(job)
                    self._redo_failed_rollback(job, lost)
                    return
                if lost is not None and lost.touched:
                    resynced = self._resync(job)
                    if resynced is None:
                        return  # updated after all, or failed/error: the journal says which
                    job, lost = resynced, None
                self._ready(job)
                self._update_once(job)
                return
            except HostLost as exc:
                lost = exc
            except HostUnreachable as exc:  # a call outside the classified points (e.g. a sweep)
                lost = HostLost(job.host, str(exc), touched=True, step="reconcile")
            except PortHeld as exc:  # reconciled (and started) again when resumed
                self._pause(job, exc.reason)
                self._journal.set_instance(job.instance_id, state=decide.PENDING, error=exc.reason)
                return
            reason = self._wait_host(job, lost)
            if reason is not None:
                # Paused first: a pending instance of a running rollout would be started again.
                self._pause(job, reason)
                self._journal.set_instance(job.instance_id, state=decide.PENDING, error=reason)
                return

    def _ready(self, job: InstanceJob) -> None:
        """Do not start a step on a host that does not answer a ping."""
        try:
            self._hosts.get(job.host).ping()
        except DockerError as exc:
            raise HostLost(job.host, str(exc), touched=False, step="start") from exc

    def _check_host(
        self,
        host: DockerHost,
        error: BaseException | None,
        *,
        step: str,
        step_id: int,
        answers: bool | None = None,
    ) -> None:
        """Raise HostLost (closing the step as ``interrupted``) when a failed step is the
        host's fault; return when it is the step's own failure."""
        if answers is None:
            answers = not isinstance(error, HostUnreachable) and self._answers(host)
        if faults.classify(error, host_answers=answers) == faults.STEP_FAILURE:
            return
        text = str(error) if error is not None else f"host {host.name} does not answer"
        self._journal.end(step_id, "interrupted", error=text)
        raise HostLost(host.name, text, touched=step != "pull", step=step)

    @staticmethod
    def _answers(host: DockerHost) -> bool:
        try:
            host.ping()
        except DockerError:
            return False
        return True

    def _answers_throughout(self, host: DockerHost, seconds: float) -> bool:
        """Whether the host keeps answering pings for ``seconds`` (False at the first miss)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if not self._answers(host):
                return False
            time.sleep(faults.FIRST_PING_S)
        return self._answers(host)

    def _wait_host(self, job: InstanceJob, lost: HostLost) -> str | None:
        """Wait for the host to answer: None once it does, the pause reason when it has not
        answered in ``host_wait_s``."""
        j, host = self._journal, self._hosts.get(job.host)
        started = time.monotonic()
        step = j.begin(
            job.instance_id,
            "wait",
            host=job.host,
            error=lost.error,
            since=lost.since.isoformat(),
            interrupted=lost.step,
            touched=lost.touched,
            **({"failed": lost.failed, "new_container": lost.new_id} if lost.failed else {}),
        )
        log.warning(
            "host unreachable, waiting rollout=%s tenant=%s host=%s step=%s: %s",
            job.rollout_id,
            job.tenant,
            job.host,
            lost.step,
            lost.error,
        )
        attempt = 0
        while True:
            decision = faults.wait_decision(
                waited_s=time.monotonic() - started,
                limit_s=self.host_wait_s,
                attempt=attempt,
                host=job.host,
                since=lost.since,
                error=lost.error,
            )
            if isinstance(decision, faults.Pause):
                j.end(
                    step,
                    "timeout",
                    waited_s=round(time.monotonic() - started, 3),
                    pings=attempt,
                    reason=decision.reason,
                )
                return decision.reason
            time.sleep(decision.after_s)
            attempt += 1
            if self._answers(host):
                j.end(step, "ok", waited_s=round(time.monotonic() - started, 3), pings=attempt)
                log.info("host answers again rollout=%s host=%s", job.rollout_id, job.host)
                return None

    def _interrupted(self, job: InstanceJob) -> HostLost | None:
        """The host fault an earlier run of this instance paused on (its last journal step is
        a ``wait`` that timed out), so the instance is reconciled before the step."""
        last = self._journal.last(job.instance_id)
        if last is None or not faults.interrupted(last[:2]):
            return None
        detail = last[2]
        lost = HostLost(
            job.host,
            str(detail.get("error") or ""),
            touched=bool(detail.get("touched", True)),
            step=str(detail.get("interrupted") or "reconcile"),
        )
        if detail.get("failed"):
            lost.failed = str(detail["failed"])
            lost.new_id = detail.get("new_container")
        return lost

    def _resync(self, job: InstanceJob) -> InstanceJob | None:
        """Reconcile after a host fault: the job to redo the step with (the instance back on
        its previous container, still ``updating`` so its slot stays taken), or None when the
        instance ended (verified updated, or error)."""
        self.reconcile(job, after_host_fault=True)
        with self._factory() as s:
            row = s.get_one(RolloutInstance, job.instance_id)
            fresh = InstanceJob.from_rows(s.get_one(Rollout, job.rollout_id), row)
        return fresh if fresh.state == decide.UPDATING else None

    def mark_unreached(self, job: InstanceJob, error: str) -> None:
        """A busy instance whose host did not answer when this process took the rollout over:
        pending, to be reconciled (``_interrupted``) when its update runs again."""
        step = self._journal.begin(
            job.instance_id,
            "wait",
            host=job.host,
            error=error,
            since=datetime.now(UTC).isoformat(),
            interrupted="reconcile",
            touched=True,
        )
        self._journal.end(step, "timeout", waited_s=0, pings=0)
        # a revert is done again (rolling back), an update reconciled and done again
        state = decide.UPDATED if job.state == decide.REVERTING else decide.PENDING
        self._journal.set_instance(job.instance_id, state=state, error=error)

    def _pause(self, job: InstanceJob, reason: str) -> None:
        log.warning("rollout paused rollout=%s tenant=%s: %s", job.rollout_id, job.tenant, reason)
        if self._pause_fn is not None:
            self._pause_fn(job.rollout_id, reason)

    def _refuse_space(self, job: InstanceJob, step: int, exc: dbsafety.NotEnoughSpace) -> None:
        """A full backup disk is the operator's to fix: the instance stays pending, untouched,
        and the rollout pauses (``resume`` once space is freed)."""
        reason = faults.space_pause_reason(job.tenant, str(exc))
        self._pause(job, reason)  # first: a pending instance of a running rollout is started
        self._journal.end(
            step,
            "refused",
            error=str(exc),
            instance=(job.instance_id, {"state": decide.PENDING, "error": reason}),
        )

    def _update_once(self, job: InstanceJob) -> None:
        j, host = self._journal, self._hosts.get(job.host)
        dsn = self._tenant_dsn(job.tenant) if (job.backup or job.migrate) else None
        backup_dir = self._backup_dir / f"rollout-{job.rollout_id}"
        if dsn is not None and job.backup:
            step = j.begin(job.instance_id, "space", dir=str(backup_dir))
            try:
                size = dbsafety.ensure_space(dsn, backup_dir)
            except dbsafety.NotEnoughSpace as exc:
                return self._refuse_space(job, step, exc)
            except CpdopsError as exc:
                j.end(step, "failed", error=str(exc))
                return self._fail(job, f"backup refused: {exc}", {"step": "backup"})
            j.end(step, "ok", db_bytes=size)
        step = j.begin(job.instance_id, "pull", image=job.image)
        try:
            if (job.host, job.image) not in self.prepulled:
                host.ensure_image(job.image)
            old = host.inspect(job.name)
        except DockerError as exc:
            self._check_host(host, exc, step="pull", step_id=step)
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

        if dsn is not None and job.backup:
            step = j.begin(job.instance_id, "backup")
            try:
                backup = dbsafety.backup(dsn, backup_dir, label=job.tenant)
            except dbsafety.NotEnoughSpace as exc:  # the space went since the check
                return self._refuse_space(job, step, exc)
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
                error: BaseException | None = exc
            else:
                error = None
            if not ok:
                self._check_host(host, error, step="migrate", step_id=step)
                j.end(step, "failed", **detail)
                return self._roll_back_failed(
                    job, None, "migration failed", {"step": "migrate", **detail}
                )
            j.end(step, "ok", **detail)

        if order == "start-first":
            return self._start_first(job, host, old)
        step = j.begin(job.instance_id, "replace", order=order, kept_name=job.kept_name)
        new_id: str | None = None
        try:
            host.stop(old_id, timeout=self._stop_timeout)
            self._crashpoint("after_stop_old")
            host.rename(old_id, job.kept_name)
            self._crashpoint("after_rename_old")
            new_id = self._create(job, host, old, job.name)
            self._start(job, host, new_id)
            self._crashpoint("after_start_new")
        except DockerError as exc:
            self._check_host(host, exc, step="replace", step_id=step)
            j.end(step, "failed", error=str(exc), new_container=new_id)
            return self._roll_back_failed(job, new_id, str(exc), {"step": "replace"})
        except PortHeld as exc:
            j.end(step, "interrupted", error=exc.reason, new_container=new_id)
            raise
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
            self._check_host(host, exc, step="replace", step_id=step)
            j.end(step, "failed", error=str(exc), new_container=new_id)
            if new_id is not None:
                host.remove(new_id, force=True)
            return self._fail(job, str(exc), {"step": "replace"})
        j.end(step, "ok", new_container=new_id)
        step = j.begin(job.instance_id, "gate", expect_version=job.target_version)
        result = self._checked_gate(job, host, new_id, step)
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
            self._check_host(host, exc, step="promote", step_id=step)
            j.end(step, "failed", error=str(exc))
            return self._roll_back_failed(job, new_id, str(exc), {"step": "promote"})
        j.end(step, "ok", instance=(job.instance_id, {"state": decide.UPDATED}))

    def _start(self, job: InstanceJob, host: DockerHost, container_id: str) -> None:
        """Start an instance's container. Refused its published port (``faults.port_taken``:
        a docker-proxy a crashed daemon left still holds it), the start is retried with a
        back-off for up to ``host_wait_s`` (a ``wait`` step says so), then PortHeld: the
        environment's fault, not the version's; the rollout pauses."""
        j = self._journal
        began, attempt, step = time.monotonic(), 0, None
        while True:
            try:
                host.start(container_id)
            except DockerError as exc:
                if isinstance(exc, HostUnreachable) or not faults.port_taken(str(exc)):
                    raise
                if step is None:
                    log.warning(
                        "port taken, waiting rollout=%s tenant=%s host=%s: %s",
                        job.rollout_id,
                        job.tenant,
                        job.host,
                        exc,
                    )
                    step = j.begin(
                        job.instance_id,
                        "wait",
                        host=job.host,
                        error=str(exc),
                        cause="port",
                        since=datetime.now(UTC).isoformat(),
                        interrupted="replace",
                        touched=True,
                    )
                waited = time.monotonic() - began
                decision = faults.port_wait_decision(
                    waited_s=waited,
                    limit_s=self.host_wait_s,
                    attempt=attempt,
                    host=job.host,
                    error=str(exc),
                )
                if isinstance(decision, faults.Pause):
                    j.end(step, "timeout", waited_s=round(waited, 3), tries=attempt + 1)
                    raise PortHeld(decision.reason) from exc
                time.sleep(decision.after_s)
                attempt += 1
                continue
            if step is not None:
                waited = round(time.monotonic() - began, 3)
                j.end(step, "ok", waited_s=waited, tries=attempt + 1)
            return

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
        progress: Callable[[GateProgress], None] | None = None,
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
            expect_tenant=job.tenant,
            passes=int(gate.get("passes", 3)),
            deadline_s=float(gate.get("deadline_s", 60)),
            interval_s=float(gate.get("interval_s", 0.5)),
            should_stop=crashed,
            on_attempt=progress,
        )

    def _checked_gate(
        self, job: InstanceJob, host: DockerHost, new_id: str, step: int
    ) -> GateResult:
        """The gate of a new container; HostLost instead of a failed gate when the daemon
        stopped answering meanwhile (its containers stopped with it: not the version's fault)."""
        try:
            result = self._gate(job, host, new_id, progress=self._journal.gate_progress(step))
        except DockerError as exc:
            self._check_host(host, exc, step="gate", step_id=step)
            raise
        if not result.ok:
            answers = self._answers(host)
            if answers and result.reason.startswith("stopped:"):  # the container exited
                try:
                    attrs = host.inspect_or_none(new_id)
                except DockerError:
                    answers = False
                else:
                    code = ((attrs or {}).get("State") or {}).get("ExitCode")
                    if faults.may_be_daemon_stop(code):
                        # a daemon shutting down stops its containers (up to their stop
                        # timeout) before its API goes away
                        answers = self._answers_throughout(host, self._stop_timeout + 2.0)
            self._check_host(host, None, step="gate", step_id=step, answers=answers)
        return result

    def _gate_and_settle(self, job: InstanceJob, host: DockerHost, new_id: str) -> None:
        j = self._journal
        step = j.begin(job.instance_id, "gate", expect_version=job.target_version)
        self._crashpoint("mid_gate")
        result = self._checked_gate(job, host, new_id, step)
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
        self._roll_back_failed(job, new_id, result.reason, evidence)

    def _roll_back_failed(
        self, job: InstanceJob, new_id: str | None, reason: str, evidence: dict[str, Any]
    ) -> None:
        """The rollback of an instance whose update really failed. A host that stops
        answering meanwhile raises HostLost with the failure (``failed``): once the host
        answers the rollback is done again and the instance ends ``failed``, not ``error``."""
        try:
            self._restore(job, new_id, reason, final=decide.FAILED, host_faults=True)
        except HostLost as exc:
            self._report(job, reason, evidence)
            exc.failed, exc.new_id = reason, new_id
            raise
        self._report(job, reason, evidence)

    def _redo_failed_rollback(self, job: InstanceJob, lost: HostLost) -> None:
        """Finish the rollback of a failed update a host fault interrupted."""
        assert lost.failed is not None
        with self._factory() as s:
            fresh = InstanceJob.from_rows(
                s.get_one(Rollout, job.rollout_id), s.get_one(RolloutInstance, job.instance_id)
            )
        self._sweep_failed(fresh, self._hosts.get(job.host))
        self._restore(fresh, lost.new_id, lost.failed, final=decide.FAILED, host_faults=True)

    # --- backward -----------------------------------------------------------------------------
    def revert(self, job: InstanceJob) -> None:
        """Rollback of an updated instance: back to its kept container (a restart) while the
        rollout runs; after it ended (kept containers removed), a re-create on the previous
        image with the whole configuration, gated like an update.

        A host that stops answering is waited for as in ``update`` and the revert is done
        again (it starts from what Docker reports); still silent after ``host_wait_s``, the
        rollout pauses and the instance stays ``updated`` with the reason, its last step the
        timed-out ``wait``: resume or abort reverts it again."""
        lost = self._interrupted(job)
        while True:
            try:
                self._ready(job)
                if lost is not None:
                    self._sweep_failed(job, self._hosts.get(job.host))
                self._revert_once(job)
                return
            except HostLost as exc:
                lost = exc
            except HostUnreachable as exc:
                lost = HostLost(job.host, str(exc), touched=True, step="revert")
            except PortHeld as exc:  # reverted again when resumed
                self._pause(job, exc.reason)
                self._journal.set_instance(job.instance_id, state=decide.UPDATED, error=exc.reason)
                return
            reason = self._wait_host(job, lost)
            if reason is not None:
                # Paused first: an updated instance of a rollout rolling back is reverted.
                self._pause(job, reason)
                self._journal.set_instance(job.instance_id, state=decide.UPDATED, error=reason)
                return

    def _revert_once(self, job: InstanceJob) -> None:
        host = self._hosts.get(job.host)
        current = host.find(job.name)
        new_id = current.id if current is not None and current.id != job.old_container_id else None
        kept = host.find(job.old_container_id) if job.old_container_id else None
        if kept is not None or current is None:
            self._restore(
                job, new_id, "rollout rolled back", final=decide.REVERTED, host_faults=True
            )
            return
        self._recreate_previous(job, host, current.id)

    def settle(self, job: InstanceJob) -> None:
        """Abort of a rollout paused on a host fault: reconcile the instance it interrupted,
        waiting for the host as a step does. It ends ``updated`` (the new container was in
        place and passes its gate) or ``pending`` on its previous container, never between."""
        lost = self._interrupted(job)
        while True:
            try:
                self._ready(job)
                if lost is not None and lost.failed is not None:
                    self._redo_failed_rollback(job, lost)
                elif lost is None or lost.touched:
                    self.reconcile(job, after_host_fault=True, undo_final=decide.PENDING)
                else:
                    step = self._journal.begin(
                        job.instance_id, "reconcile", state=job.state, after="host unreachable"
                    )
                    self._journal.end(step, "ok", action="nothing was touched")
                with self._factory() as s:
                    row = s.get_one(RolloutInstance, job.instance_id)
                    if row.state == decide.UPDATING:
                        row.state = decide.PENDING
                        s.commit()
                return
            except HostLost as exc:
                lost = exc
            except HostUnreachable as exc:
                lost = HostLost(job.host, str(exc), touched=True, step="reconcile")
            except PortHeld as exc:  # the abort waits on, as for a silent host
                self._journal.set_instance(job.instance_id, state=decide.PENDING, error=exc.reason)
                return
            reason = self._wait_host(job, lost)
            if reason is not None:  # the abort waits on: reconciled when the host answers
                self._journal.set_instance(job.instance_id, state=decide.PENDING, error=reason)
                return

    def close_dangling(self, instance_ids: list[int]) -> None:
        """Close the steps a dead runner left ``started`` (``faults.dangling``)."""
        closed = self._journal.close_dangling(instance_ids)
        if closed:
            log.warning("closed %d step(s) a stopped runner left open", closed)

    def interrupted(self, instance_id: int) -> bool:
        last = self._journal.last(instance_id)
        return faults.interrupted(last[:2] if last is not None else None)

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

    def _restore(
        self,
        job: InstanceJob,
        new_id: str | None,
        reason: str,
        *,
        final: str,
        step_name: str = "rollback",
        host_faults: bool = False,
    ) -> None:
        """Put the kept container back: kill the new one (it is removed once the kept one
        answers, off the critical path), restore the DB if migrated, restart the kept one.

        ``step_name="undo"`` (after a host fault, the step is done again) or ``host_faults``
        (a revert): a daemon that stops answering meanwhile raises HostLost (the step closed
        ``interrupted``) instead of leaving the instance in error; the caller waits for the
        host and does it again."""
        host_faults = host_faults or step_name == "undo"
        started = time.monotonic()
        j, host = self._journal, self._hosts.get(job.host)
        old_id = job.old_container_id
        step = j.begin(job.instance_id, step_name, new_container=new_id, reason=reason)
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
                self._start(job, host, old_id)
            else:
                self._remove_all(host, doomed)
                doomed = []
        except PortHeld as exc:
            j.end(step, "interrupted", error=exc.reason)
            raise
        except (DockerError, CpdopsError) as exc:
            if host_faults and (
                isinstance(exc, HostUnreachable)
                or (isinstance(exc, DockerError) and not self._answers(host))
            ):
                j.end(step, "interrupted", error=str(exc))
                raise HostLost(host.name, str(exc), touched=True, step=step_name) from exc
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
        try:
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
        except HostUnreachable as exc:
            if not host_faults:
                raise
            j.end(step, "interrupted", error=str(exc))
            raise HostLost(host.name, str(exc), touched=True, step=step_name) from exc
        if not check.ok and host_faults and not self._answers(host):
            text = f"host {host.name} does not answer"
            j.end(step, "interrupted", error=text)
            raise HostLost(host.name, text, touched=True, step=step_name)
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

    # --- the end of a rollout -----------------------------------------------------------------
    def verify(self, job: InstanceJob) -> bool:
        """An updated instance at the end of its rollout (``decide.Verify``): running and
        healthy now. One a host fault stopped since its gate (a daemon stopped or crashed,
        its restart policy did not bring it back) is started and gated again (a ``verify``
        step); one that does not come back is rolled back to its kept container and
        reported (``failed``). A host that does not answer is waited for as in ``update``;
        still silent after ``host_wait_s`` (or its port still taken), the rollout pauses and
        False is returned: the verification is done again on resume."""
        lost: HostLost | None = None
        while True:
            try:
                self._ready(job)
                self._verify_once(job, self._hosts.get(job.host))
                return True
            except HostLost as exc:
                lost = exc
            except HostUnreachable as exc:
                lost = HostLost(job.host, str(exc), touched=False, step="verify")
            except PortHeld as exc:
                self._pause(job, exc.reason)
                self._journal.set_instance(job.instance_id, error=exc.reason)
                return False
            reason = self._wait_host(job, lost)
            if reason is not None:
                self._pause(job, reason)
                self._journal.set_instance(job.instance_id, error=reason)
                return False

    def _verify_once(self, job: InstanceJob, host: DockerHost) -> None:
        j = self._journal
        current = host.find(job.name)
        ours = current is not None and current.labels.get(ROLLOUT_LABEL) == str(job.rollout_id)
        if current is not None and ours and current.running:
            quick = self._gate(job, host, current.id, gate={**job.gate, "passes": 1})
            if quick.ok:
                return
        step = j.begin(
            job.instance_id,
            "verify",
            container=current.id if current is not None else None,
            status=current.status if current is not None else "missing",
        )
        if current is None or not ours:
            reason = "its new container is gone from its host at the end of the rollout"
            j.end(step, "failed", error=reason)
            return self._roll_back_failed(job, None, reason, {"step": "verify"})
        restarted = not current.running
        if restarted:
            log.warning(
                "instance not running at the end, starting it rollout=%s tenant=%s host=%s "
                "status=%s",
                job.rollout_id,
                job.tenant,
                job.host,
                current.status,
            )
            try:
                self._start(job, host, current.id)
            except DockerError as exc:
                self._check_host(host, exc, step="verify", step_id=step)
                j.end(step, "failed", error=str(exc))
                return self._roll_back_failed(
                    job, current.id, f"could not be started again: {exc}", {"step": "verify"}
                )
            except PortHeld as exc:
                j.end(step, "interrupted", error=exc.reason)
                raise
        result = self._checked_gate(job, host, current.id, step)
        if result.ok:
            j.end(
                step,
                "ok",
                restarted=restarted,
                passes=result.passes,
                attempts=result.attempts,
                instance=(job.instance_id, {"error": None}),
            )
            return None
        j.end(step, "failed", restarted=restarted, **_evidence(result))
        self._gate_failed(job, host, current.id, result)
        return None

    # --- crash recovery -----------------------------------------------------------------------
    def reconcile(
        self, job: InstanceJob, *, after_host_fault: bool = False, undo_final: str = decide.UPDATING
    ) -> None:
        """Finish or undo what a dead process left: the instance ends updated, or pending
        again on its previous container (the rollout then retries it), never in between.

        ``after_host_fault``: the daemon stopped (and its containers with it) in the middle
        of the step and answers again; a new container already in place is started again
        (restart policies do it too) and gated, anything else is undone (step ``undo``, not
        a rollback: the update has not failed) so the step is done again."""
        host = self._hosts.get(job.host)
        j = self._journal
        step = j.begin(
            job.instance_id,
            "reconcile",
            state=job.state,
            **({"after": "host unreachable"} if after_host_fault else {}),
        )
        try:
            self._sweep_failed(job, host)
            if job.state == decide.REVERTING:
                host.ping()  # silent: HostUnreachable, the revert is done again later
                j.end(step, "ok", action="revert again")
                return self.revert(job)
            kept = host.find(job.kept_name)
            current = host.find(job.name)
        except HostUnreachable as exc:
            j.end(step, "interrupted", error=str(exc))
            raise
        new_here = current is not None and current.labels.get(ROLLOUT_LABEL) == str(job.rollout_id)
        if kept is not None and new_here and current is not None and after_host_fault:
            if not current.running:
                try:
                    self._start(job, host, current.id)
                except PortHeld as exc:
                    j.end(step, "interrupted", error=exc.reason)
                    raise
            current = host.find(current.id) or current
        if kept is not None and new_here and current is not None and current.running:
            job = _replace(job, old_container_id=kept.id)
            result = self._gate(job, host, current.id)
            if result.ok:
                j.end(step, "ok", action="new container verified")
                j.set_instance(job.instance_id, state=decide.UPDATED, error=None)
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
        try:
            if after_host_fault:  # the step is done again by the same worker: still updating
                self._restore(
                    job,
                    new_id,
                    "host was unreachable mid-step",
                    final=undo_final,
                    step_name="undo",
                )
            else:
                self._restore(job, new_id, "recovered after a crash", final=decide.PENDING)
        except PortHeld as exc:
            j.end(step, "interrupted", error=exc.reason)
            raise
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
