"""Correlation into mass incidents and verified recovery: the pure decisions, table-driven."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.incidents.correlation import (
    Failure,
    MonitorState,
    OpenMass,
    Recovered,
    TenantHealth,
    Thresholds,
    decide_mass,
    pick_open,
    recovered_since,
    recovery_comment,
    recovery_verified,
    tenant_recovered,
)

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
TH = Thresholds(min_tenants=3, host_percent=50.0, window_s=300.0, recovery_hold_s=120.0)
BUCKET = int((NOW - timedelta(seconds=60)).timestamp() // 300)


def f(tenant: str, host: str = "h1", ago: float = 60.0, db: str | None = None) -> Failure:
    return Failure(tenant, db or host, NOW - timedelta(seconds=ago), db_server=db)


CASES = [
    ("nothing failing", [], {}, {}, None),
    ("one tenant", [f("t0")], {"h1": 10}, {}, None),
    ("two tenants, below N and below 50 % of the host", [f("t0"), f("t1")], {"h1": 10}, {}, None),
    (
        "N tenants on several hosts",
        [f("t0", "h1"), f("t1", "h2"), f("t2", "h3")],
        {"h1": 10, "h2": 10, "h3": 10},
        {},
        ("mass:tenants:" + str(BUCKET), ("t0", "t1", "t2")),
    ),
    (
        "two monitors of one tenant count once",
        [f("t0"), f("t0"), f("t1", "h2")],
        {"h1": 10, "h2": 10},
        {},
        None,
    ),
    (
        "half of a host",
        [f("t0"), f("t1")],
        {"h1": 4},
        {},
        ("mass:host:h1", ("t0", "t1")),
    ),
    ("a host of one tenant is that tenant's incident", [f("t0")], {"h1": 1}, {}, None),
    (
        "failures older than the window do not count",
        [f("t0", "h1", 400), f("t1", "h2"), f("t2", "h3")],
        {"h1": 10, "h2": 10, "h3": 10},
        {},
        None,
    ),
    (
        "the tenants of one PostgreSQL server win over the fleet",
        [f("t0", db="pg1:5432"), f("t1", db="pg1:5432"), f("t2", "h9")],
        {"h9": 10},
        {"pg1:5432": 3},
        ("mass:db:pg1:5432", ("t0", "t1")),
    ),
    (
        "a postgres failure does not count for a Docker host",
        [f("t0", db="h1"), f("t1", "h1")],
        {"h1": 2},
        {"h1": 10},
        None,
    ),
    (
        "the bucket is the earliest failure's",
        [f("t0", "h1", 290), f("t1", "h2", 10), f("t2", "h3", 5)],
        {"h1": 10, "h2": 10, "h3": 10},
        {},
        (
            "mass:tenants:" + str(int((NOW - timedelta(seconds=290)).timestamp() // 300)),
            ("t0", "t1", "t2"),
        ),
    ),
]


@pytest.mark.parametrize(
    ("failures", "per_host", "per_server", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_decide_mass(
    failures: list[Failure],
    per_host: dict[str, int],
    per_server: dict[str, int],
    expected: tuple[str, tuple[str, ...]] | None,
) -> None:
    decision = decide_mass(failures, per_host, per_server, TH, NOW)
    if expected is None:
        assert decision is None
    else:
        assert decision is not None
        assert (decision.key, decision.tenants) == expected


def test_decide_mass_key_is_stable_across_deliveries() -> None:
    failures = [f("t0", "h1", 100), f("t1", "h2", 50), f("t2", "h3", 20)]
    keys = {
        d.key
        for later in (0, 10, 60)
        if (d := decide_mass(failures, {}, {}, TH, NOW + timedelta(seconds=later))) is not None
    }
    assert len(keys) == 1


OPENED = NOW - timedelta(seconds=100)
JOIN_CASES = [
    ("fleet-wide joins any tenant", "mass:tenants:1", f("t9", "h7"), True),
    ("host joins the same host", "mass:host:h1", f("t9", "h1"), True),
    ("host does not join another host", "mass:host:h1", f("t9", "h2"), False),
    ("db joins the same server", "mass:db:pg1", f("t9", db="pg1"), True),
    ("db does not join a Docker failure", "mass:db:pg1", f("t9", "pg1"), False),
    ("a rollout's mass incident takes no children", "rollout:4", f("t9"), False),
    ("after the window", "mass:tenants:1", f("t9", ago=-250), False),
]


@pytest.mark.parametrize(
    ("key", "failure", "joins"), [c[1:] for c in JOIN_CASES], ids=[c[0] for c in JOIN_CASES]
)
def test_pick_open(key: str, failure: Failure, joins: bool) -> None:
    found = pick_open([OpenMass(key, OPENED)], failure, TH.window_s)
    assert (found is not None) == joins


def up(name: str, for_s: float, is_up: bool = True) -> MonitorState:
    return MonitorState(name, is_up, NOW - timedelta(seconds=for_s))


RECOVERY_CASES = [
    ("no monitors", [], False),
    ("all UP for the hold", [up("a", 120), up("b", 500)], True),
    ("one UP too briefly", [up("a", 119), up("b", 500)], False),
    ("one still DOWN", [up("a", 500), up("b", 500, is_up=False)], False),
]


@pytest.mark.parametrize(
    ("states", "verified"), [c[1:] for c in RECOVERY_CASES], ids=[c[0] for c in RECOVERY_CASES]
)
def test_recovery_verified(states: list[MonitorState], verified: bool) -> None:
    assert recovery_verified(states, TH.recovery_hold_s, NOW) is verified


def test_recovery_comment_names_monitors_and_times_in_both_languages() -> None:
    text = recovery_comment(
        [
            Recovered(
                "acme",
                "acme-cpd-http",
                datetime(2026, 12, 1, 11, 50, tzinfo=UTC),
                datetime(2026, 12, 1, 11, 55, tzinfo=UTC),
            )
        ],
        120,
        NOW,
    )
    assert "Восстановление подтверждено" in text and "Recovery verified" in text
    assert "acme-cpd-http (acme): DOWN с 2026-12-01 11:50:00 UTC, UP с 2026-12-01 11:55:00 UTC" in (
        text
    )
    assert "DOWN since 2026-12-01 11:50:00 UTC, UP since 2026-12-01 11:55:00 UTC" in text
    assert "2026-12-01 12:00:00 UTC" in text


def resolved(seconds_ago: float, count: int = 1) -> TenantHealth:
    return TenantHealth(resolved_alerts=count, resolved_at=NOW - timedelta(seconds=seconds_ago))


def with_monitors(health: TenantHealth, *monitors: MonitorState) -> TenantHealth:
    return TenantHealth(monitors, health.firing_alerts, health.resolved_alerts, health.resolved_at)


# The one recovery rule (check-recovery and an alert's resolution at the intake), hold 120 s:
# recovered since the later of the last resolution and the last monitor UP, for the hold.
HEALTH_CASES = [
    # name, health, recovered at NOW
    ("nothing known", TenantHealth(), False),
    ("monitors UP for the hold, no alerts", TenantHealth((up("a", 500),)), True),
    ("monitors UP, one too briefly", TenantHealth((up("a", 500), up("b", 119))), False),
    ("monitor UP exactly the hold", TenantHealth((up("a", 120),)), True),
    ("alerts resolved for the hold, no monitors", resolved(120, count=2), True),
    ("alerts resolved 57 s ago, no monitors", resolved(57), False),
    ("alerts resolved, time unknown", TenantHealth(resolved_alerts=1), False),
    ("one alert still firing", TenantHealth(firing_alerts=1, resolved_alerts=1), False),
    ("firing alert, monitors UP", TenantHealth((up("a", 500),), firing_alerts=1), False),
    # The case: monitors UP for long, the alert resolved 57 s ago — the hold counts
    # from the resolution, not from the monitors.
    ("monitors UP 10 min, alert resolved 57 s ago", with_monitors(resolved(57), up("a", 600)),
     False),
    ("monitors UP 10 min, alert resolved 2 min ago", with_monitors(resolved(120), up("a", 600)),
     True),
    ("alert resolved long ago, monitor UP too briefly", with_monitors(resolved(900), up("a", 10)),
     False),
    ("alerts resolved, a monitor DOWN", with_monitors(resolved(900), up("a", 900, is_up=False)),
     False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("health", "recovered"),
    [c[1:] for c in HEALTH_CASES],
    ids=[str(c[0]) for c in HEALTH_CASES],
)
def test_the_one_recovery_rule(health: TenantHealth, recovered: bool) -> None:
    assert tenant_recovered(health, TH.recovery_hold_s, NOW) is recovered


def test_the_rule_holds_as_the_clock_moves() -> None:
    """An injected clock: the same facts, not recovered until the hold has passed."""
    health = with_monitors(resolved(0), up("a", 600))
    since = recovered_since(health)
    assert since == NOW
    for seconds, expected in ((0, False), (57, False), (119.9, False), (120, True), (900, True)):
        at = NOW + timedelta(seconds=seconds)
        assert tenant_recovered(health, 120, at) is expected, seconds
    assert tenant_recovered(health, 0, NOW), "a hold of 0 s: at once"


def test_recovery_comment_names_resolved_alerts() -> None:
    alert = Recovered(
        "acme",
        "PortalDown",
        datetime(2026, 12, 1, 11, 50, tzinfo=UTC),
        datetime(2026, 12, 1, 11, 58, tzinfo=UTC),
        kind="alert",
    )
    text = recovery_comment([alert], 120, NOW)
    assert text.startswith(
        "Восстановление подтверждено автоматически 2026-12-01 12:00:00 UTC: "
        "все оповещения Alertmanager сняты ≥ 120 с."
    )
    assert (
        "Recovery verified automatically at 2026-12-01 12:00:00 UTC: "
        "all Alertmanager alerts resolved for ≥ 120 s." in text
    )
    assert (
        "- alert PortalDown (acme): firing since 2026-12-01 11:50:00 UTC, "
        "resolved at 2026-12-01 11:58:00 UTC" in text
    )
    assert "- оповещение PortalDown (acme): с 2026-12-01 11:50:00 UTC" in text
    monitor = Recovered("acme", "acme-http", None, datetime(2026, 12, 1, 11, 57, tzinfo=UTC))
    with_monitor = recovery_comment([alert, monitor], 120, NOW)
    assert (
        "all monitors UP for ≥ 120 s, all Alertmanager alerts resolved for ≥ 120 s." in with_monitor
    )
