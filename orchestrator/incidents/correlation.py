"""Correlation and verified recovery as pure decisions (SPEC §6). No database here: the
incident engine reads the failures and monitors from the store and acts on the result.

A failure is a DOWN monitor or a firing Alertmanager alert of a tenant (its ``startsAt``, or
when cpdops received it if that is earlier). A mass incident is due when, within ``window``
seconds, failures span

* the tenants of one PostgreSQL server: ≥ ``host_percent`` % of them and at least two
  (key ``mass:db:<server>``),
* one Docker host: ≥ ``host_percent`` % of its tenants and at least two (``mass:host:<host>``),
* ≥ ``min_tenants`` tenants anywhere (``mass:tenants:<bucket>``, the window bucket of the
  earliest failure in the group, so every delivery and every replica computes the same key).

The most specific scope wins (database server, then host, then the fleet). A mass incident's
subject and description count the tenants linked to it so far (``current_mass``): tenants that
fail later and join it are counted as they join.

A Docker host that does not answer (``orchestrator/fleet/host_health.py``) has an incident of
its own, key ``host:<name>:<unreachable since, ISO 8601>``: its tenants' failures join it, and
no correlated mass incident is opened for them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

MASS_PREFIX = "mass:"
HOST_PREFIX = "host:"
# A host or server with one failing tenant is that tenant's incident, never a mass incident.
MIN_GROUP = 2


@dataclass(frozen=True)
class Thresholds:
    """``incidents`` of the fleet file, in seconds."""

    min_tenants: int = 3
    host_percent: float = 50.0
    window_s: float = 300.0
    recovery_hold_s: float = 120.0


@dataclass(frozen=True)
class Failure:
    """A monitor that is DOWN or a firing alert: its tenant, the Docker host (or, for a
    ``postgres`` monitor or an alert labelled with a server, the database server in
    ``db_server``) and since when."""

    tenant: str
    host: str
    since: datetime
    db_server: str | None = None


@dataclass(frozen=True)
class MassDecision:
    key: str
    scope: str  # "db" | "host" | "tenants"
    name: str  # the server, the host, or "" for the fleet
    tenants: tuple[str, ...]

    @property
    def subject(self) -> str:
        count = len(self.tenants)
        if self.scope == "db":
            return f"Mass incident: PostgreSQL server {self.name} — {count} tenants DOWN"
        if self.scope == "host":
            return f"Mass incident: host {self.name} — {count} tenants DOWN"
        return f"Mass incident: {count} tenants DOWN"

    @property
    def description(self) -> str:
        return (
            f"{len(self.tenants)} tenants failed (monitors DOWN, Alertmanager alerts firing) "
            f"within the correlation window ({self.scope} {self.name or 'fleet'}): "
            f"{', '.join(self.tenants)}. The tenant incidents are linked as children."
        )


SCOPES = ("db", "host", "tenants")


def current_mass(key: str, tenants: Iterable[str]) -> MassDecision | None:
    """The open correlated mass incident ``key`` as it stands with ``tenants`` (its children's):
    its subject and description say how many tenants it has now, not how many it was opened
    with. None for a key that is not a correlated mass incident's."""
    if not key.startswith(MASS_PREFIX):
        return None
    scope, _, name = key[len(MASS_PREFIX) :].partition(":")
    if scope not in SCOPES:
        return None
    return MassDecision(key, scope, "" if scope == "tenants" else name, tuple(sorted(set(tenants))))


def host_key(host: str, since: datetime) -> str:
    """The open key of host ``host``'s incident for the outage that began at ``since``."""
    return f"{HOST_PREFIX}{host}:{since.isoformat()}"


def host_of_key(key: str) -> str:
    """The host of a ``host_key`` (host names have no colon)."""
    return key[len(HOST_PREFIX) :].partition(":")[0]


def host_comment(host: str, down_since: datetime | None, up_since: datetime | None) -> str:
    """The host line of a host incident's solution comment, Russian then English."""
    return (
        f"Хост {host} снова отвечает с {_at(up_since)} (не отвечал с {_at(down_since)}).\n"
        f"Host {host} answers again since {_at(up_since)} (unreachable since {_at(down_since)})."
    )


def recent(failures: Iterable[Failure], window_s: float, now: datetime) -> list[Failure]:
    start = now - timedelta(seconds=window_s)
    return [f for f in failures if start <= f.since <= now]


def _bucket(at: datetime, window_s: float) -> int:
    return math.floor(at.timestamp() / window_s)


def decide_mass(
    failures: Iterable[Failure],
    tenants_per_host: Mapping[str, int],
    tenants_per_server: Mapping[str, int],
    thresholds: Thresholds,
    now: datetime,
) -> MassDecision | None:
    """The mass incident the failures of the last window call for, or None."""
    window = recent(failures, thresholds.window_s, now)
    if not window:
        return None
    for scope, totals in (("db", tenants_per_server), ("host", tenants_per_host)):
        groups: dict[str, set[str]] = {}
        for f in window:
            name = f.db_server if scope == "db" else (f.host if f.db_server is None else None)
            if name:
                groups.setdefault(name, set()).add(f.tenant)
        candidates: list[MassDecision] = []
        for name, tenants in sorted(groups.items()):
            total = max(totals.get(name, 0), len(tenants))
            if len(tenants) >= MIN_GROUP and 100 * len(tenants) >= thresholds.host_percent * total:
                candidates.append(
                    MassDecision(
                        f"{MASS_PREFIX}{scope}:{name}", scope, name, tuple(sorted(tenants))
                    )
                )
        if candidates:
            # The biggest group of the most specific scope.
            return max(candidates, key=lambda d: len(d.tenants))
    tenants = {f.tenant for f in window}
    if len(tenants) >= thresholds.min_tenants:
        first = min(f.since for f in window)
        return MassDecision(
            f"{MASS_PREFIX}tenants:{_bucket(first, thresholds.window_s)}",
            "tenants",
            "",
            tuple(sorted(tenants)),
        )
    return None


@dataclass(frozen=True)
class OpenMass:
    """An active correlated mass incident: its open key and when it was opened."""

    key: str
    created_at: datetime


def joins(mass: OpenMass, failure: Failure, window_s: float) -> bool:
    """Whether a tenant failing now belongs to the already open mass incident ``mass``: its
    failure is within the window of the mass incident's opening and in its scope."""
    if not mass.key.startswith(MASS_PREFIX):
        return False
    if failure.since - mass.created_at > timedelta(seconds=window_s):
        return False
    scope, _, name = mass.key[len(MASS_PREFIX) :].partition(":")
    if scope == "db":
        return failure.db_server == name
    if scope == "host":
        return failure.db_server is None and failure.host == name
    return scope == "tenants"


def pick_open(masses: Iterable[OpenMass], failure: Failure, window_s: float) -> OpenMass | None:
    """The open mass incident a new failure joins: the newest one whose scope fits."""
    fitting = [m for m in masses if joins(m, failure, window_s)]
    return max(fitting, key=lambda m: m.created_at) if fitting else None


# --- verified recovery ------------------------------------------------------------------------
@dataclass(frozen=True)
class MonitorState:
    """One monitor of a ticket's tenant as the store has it."""

    name: str
    up: bool
    changed_at: datetime  # UP since, when ``up``


def recovery_verified(monitors: Iterable[MonitorState], hold_s: float, now: datetime) -> bool:
    """All monitors UP, each for at least ``hold_s`` seconds (no monitors: nothing verified)."""
    states = list(monitors)
    hold = timedelta(seconds=hold_s)
    return bool(states) and all(m.up and now - m.changed_at >= hold for m in states)


@dataclass(frozen=True)
class TenantHealth:
    """What a tenant's recovery depends on: its monitors, and the Alertmanager alerts of the
    tickets being checked (still firing, resolved, and the last resolution's time)."""

    monitors: tuple[MonitorState, ...] = ()
    firing_alerts: int = 0
    resolved_alerts: int = 0
    resolved_at: datetime | None = None


def recovered_since(health: TenantHealth) -> datetime | None:
    """Since when the tenant is recovered, or None while it is not: no alert firing, every
    monitor UP (since its last change) and the alerts resolved (since the last resolution).
    A tenant with neither monitors nor resolved alerts has nothing to show it recovered."""
    if health.firing_alerts or any(not m.up for m in health.monitors):
        return None
    times = [m.changed_at for m in health.monitors]
    if health.resolved_alerts and health.resolved_at is not None:
        times.append(health.resolved_at)
    return max(times) if times else None


def tenant_recovered(health: TenantHealth, hold_s: float, now: datetime) -> bool:
    """THE recovery rule, for both paths (``check-recovery`` and an alert's resolution at the
    intake): recovered for at least ``hold_s`` — from the later of the last alert's resolution
    and the last monitor coming UP."""
    since = recovered_since(health)
    return since is not None and now - since >= timedelta(seconds=hold_s)


@dataclass(frozen=True)
class Recovered:
    """A monitor that was DOWN and is UP again, or an alert that fired and was resolved
    (``kind`` ``alert``: ``down_since`` is its startsAt, ``up_since`` its endsAt)."""

    tenant: str
    name: str
    down_since: datetime | None
    up_since: datetime
    kind: str = "monitor"


def _at(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else "?"


def recovery_comment(recovered: Iterable[Recovered], hold_s: float, now: datetime) -> str:
    """The automatic solution comment, Russian then English: which monitors recovered and which
    alerts were resolved, since and until when, and when recovery was verified (held for
    ``hold_s``)."""
    rows = sorted(recovered, key=lambda r: (r.tenant, r.kind, r.name, r.up_since))
    hold = f"{hold_s:g}"
    ru_why, en_why = [], []
    alerts = any(r.kind == "alert" for r in rows)
    if not alerts or any(r.kind != "alert" for r in rows):
        ru_why, en_why = [f"все мониторы UP ≥ {hold} с"], [f"all monitors UP for ≥ {hold} s"]
    if alerts:
        ru_why.append(f"все оповещения Alertmanager сняты ≥ {hold} с")
        en_why.append(f"all Alertmanager alerts resolved for ≥ {hold} s")
    ru = [f"Восстановление подтверждено автоматически {_at(now)}: {', '.join(ru_why)}."]
    en = [f"Recovery verified automatically at {_at(now)}: {', '.join(en_why)}."]
    for r in rows:
        if r.kind == "alert":
            ru.append(
                f"- оповещение {r.name} ({r.tenant}): с {_at(r.down_since)}, "
                f"снято {_at(r.up_since)}"
            )
            en.append(
                f"- alert {r.name} ({r.tenant}): firing since {_at(r.down_since)}, "
                f"resolved at {_at(r.up_since)}"
            )
            continue
        ru.append(f"- {r.name} ({r.tenant}): DOWN с {_at(r.down_since)}, UP с {_at(r.up_since)}")
        en.append(
            f"- {r.name} ({r.tenant}): DOWN since {_at(r.down_since)}, UP since {_at(r.up_since)}"
        )
    return "\n".join([*ru, "", *en])
