"""Issue #8, checked by counting: a real `cpdops serve` on PostgreSQL sends its notifications
to a real SMTP server (aiosmtpd) and a real webhook receiver; both are **down for 60 s** (not
listening: connection refused; the webhook then answering 503 for the last part of it) while
tickets, comments and status changes keep coming through the API, and serve is restarted
(SIGTERM, started again on the same database) in the middle of it. When the receivers are back,
every notification that should exist — computed from what the test created — has arrived
**exactly once**, none is left pending or dead, and at the comeback every row was due within
the back-off's cap (30 s, +10 % jitter): no row waits minutes for a receiver that is back."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from orchestrator.context import build_context
from orchestrator.db.models import Incident, IncidentEvent, Notifier, OutboxMessage, Tenant
from orchestrator.db.session import session_scope
from orchestrator.incidents.outbox import BACKOFF_CAP_S, BACKOFF_JITTER
from orchestrator.settings import Settings
from tests.integration.fleet import wait_for
from tests.integration.ha import CPDOPS, Replica, Replicas, pg_database
from tests.integration.http_fakes import FakeReceiver, HttpServer, Reply, Request
from tests.integration.server import bearer, make_token
from tests.integration.test_outbox_smtp import SENDER, SmtpServer

OUTAGE_S = 60.0
WEBHOOK_503_AFTER_S = 40.0  # the receiver listens again then, but answers 503 until the end
TICKETS = 30
TENANTS = [f"out{n}" for n in range(5)]
SECRET = "outage-webhook-secret"
INTERVAL_S = 1.0
# At the comeback each pending row is due within the cap (+ jitter); one interval more for the
# worker to see it, one second of slack for a row deferred behind an earlier one.
BOUND_S = BACKOFF_CAP_S * (1 + BACKOFF_JITTER) + INTERVAL_S + 1.0
_MESSAGE_ID = re.compile(r"<ticket-(\d+)\.(\d+)@")


class CountingReceiver(FakeReceiver):
    """The documented receiver, answering ``status`` to everything while it is set, and
    counting the keys it answered 2xx (acted on)."""

    def __init__(self, secret: str) -> None:
        super().__init__(secret)
        self.status: int | None = None
        self.acked: Counter[str] = Counter()
        self.refused = 0

    def handle(self, req: Request) -> Reply:
        if self.status is not None:
            self.refused += 1
            return Reply(self.status, {"error": "maintenance"})
        reply = super().handle(req)
        if 200 <= reply.status < 300:
            self.acked[req.headers["idempotency-key"]] += 1
        return reply


def _setup(db_url: str, smtp_port: int, webhook_url: str) -> None:
    ctx = build_context(Settings(database_url=db_url))
    try:
        with session_scope(ctx.factory) as s:
            for n, slug in enumerate(TENANTS):
                s.add(
                    Tenant(
                        slug=slug,
                        name=slug.upper(),
                        language="ru" if n % 2 else "en",
                        contacts=[
                            {"name": f"Admin {slug}", "email": f"admin@{slug}.example"},
                            {"name": f"Ops {slug}", "email": f"ops@{slug}.example"},
                        ],
                        channels=["email", "webhook"],
                    )
                )
            s.add(
                Notifier(
                    name="mail",
                    kind="smtp",
                    settings={"host": "127.0.0.1", "port": smtp_port, "sender": SENDER},
                )
            )
            s.add(
                Notifier(
                    name="hook", kind="webhook", settings={"url": webhook_url, "secret": SECRET}
                )
            )
    finally:
        ctx.close()


def _rows(db_url: str) -> list[OutboxMessage]:
    ctx = build_context(Settings(database_url=db_url))
    try:
        with ctx.factory() as s:
            return list(s.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))
    finally:
        ctx.close()


def _wait_leading(replica: Replica) -> None:
    wait_for(lambda: replica.health().get("leading"), timeout=15, what=f"{replica.name} leads")


def _ok(res: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert res.status_code == status, res.text
    data: dict[str, Any] = res.json()
    return data


def test_receivers_down_60s_and_a_restart_lose_nothing_and_duplicate_nothing(
    tmp_path: Path,
) -> None:
    smtp = SmtpServer()  # its port is chosen, nothing listens on it yet: refused
    receiver = CountingReceiver(SECRET)
    webhook = HttpServer(receiver)  # likewise
    with pg_database("cpdops_outage") as db_url:
        _setup(db_url, smtp.port, f"{webhook.url}{receiver.path}")
        settings = Settings(database_url=db_url)
        operator, admin = make_token(settings, "operator"), make_token(settings, "admin")
        env = {
            **os.environ,
            "CPDOPS_DATABASE_URL": db_url,
            "CPDOPS_RUN_MONITORS": "false",
            "CPDOPS_LOCAL_DOCKER_URL": "unix:///nonexistent.sock",
            "CPDOPS_OUTBOX_INTERVAL_S": str(INTERVAL_S),
            "CPDOPS_LEADER_POLL_S": "0.5",
        }
        replicas = Replicas(tmp_path, env)
        try:
            outage_start = time.monotonic()
            serve = replicas.start("a")
            _wait_leading(serve)
            numbers: list[str] = []

            def call(path: str, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
                res = serve.client.post(path, json=body, headers=bearer(operator))
                return _ok(res, status)

            restarted = False
            for i in range(TICKETS):
                ticket = call(
                    "/api/v1/incidents",
                    {
                        "type": "incident",
                        "subject": f"Calls drop #{i}",
                        "tenant": TENANTS[i % len(TENANTS)],
                        "description": f"since 10:{i:02d}",
                    },
                    201,
                )
                number = ticket["number"]
                numbers.append(number)
                base = f"/api/v1/incidents/{number}"
                call(f"{base}/comments", {"author": "eng", "body": f"looking at #{i}"}, 201)
                call(f"{base}/status", {"author": "eng", "status": "open"})
                if i:
                    call(
                        f"/api/v1/incidents/{numbers[i - 1]}/status",
                        {"author": "eng", "status": "solution_provided", "comment": "fixed"},
                    )
                if i == TICKETS // 2 and not restarted:
                    # SIGTERM mid-outage, then a new process on the same database
                    serve.stop()
                    serve = replicas.start("b")
                    _wait_leading(serve)
                    restarted = True
                elapsed = time.monotonic() - outage_start
                if elapsed >= WEBHOOK_503_AFTER_S and receiver.status is None:
                    receiver.status = 503
                    webhook.start()
                time.sleep(max(0.0, (i + 1) * 1.3 - elapsed))
            call(
                f"/api/v1/incidents/{numbers[-1]}/status",
                {"author": "eng", "status": "solution_provided", "comment": "fixed"},
            )
            if receiver.status is None:
                receiver.status = 503
                webhook.start()
            assert restarted

            # The operator's view during the outage: everything pending, with the reason.
            cli = subprocess.run(
                [
                    CPDOPS,
                    *("--url", serve.base, "--token", admin),
                    *("outbox", "ls", "--status", "pending", "--limit", "1000", "--json"),
                ],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert cli.returncode == 0, cli.stderr
            listed = json.loads(cli.stdout)
            assert len(listed) == TICKETS * 3 * 3, "3 events × (2 contacts + 1 webhook) each"
            assert any("Connection refused" in (r["last_error"] or "") for r in listed)

            time.sleep(max(0.0, outage_start + OUTAGE_S - time.monotonic()))
            rows = _rows(db_url)
            comeback = datetime.now(UTC)
            assert receiver.acked == Counter() and smtp.collector.messages == []
            assert {r.state for r in rows} == {"pending"}, "nothing sent, nothing dead yet"
            assert any("503" in (r.last_error or "") for r in rows if r.channel == "webhook")
            late = [
                (r.id, r.next_attempt_at, r.last_error)
                for r in rows
                if r.claimed_by is None
                and r.next_attempt_at > comeback + timedelta(seconds=BOUND_S)
            ]
            assert not late, f"rows due later than the back-off's cap after the comeback: {late}"
            smtp.start()
            receiver.status = None

            def pending() -> int:
                return sum(1 for r in _rows(db_url) if r.state == "pending")

            wait_for(lambda: pending() == 0, timeout=120, what="every row delivered", interval=1)
            rows = _rows(db_url)
            last_sent = max(r.sent_at for r in rows if r.sent_at is not None)
            print(
                f"outbox outage: last delivery {(last_sent - comeback).total_seconds():.1f} s "
                f"after the comeback (bound {BOUND_S:.1f} s); {len(rows)} rows"
            )

            # What should exist, from what was created: per ticket its creation, "open" and
            # the solution (comments tell the customer nothing) — to both contacts of its
            # tenant and to the tenant's webhook.
            ctx = build_context(Settings(database_url=db_url))
            try:
                with ctx.factory() as s:
                    timeline = s.execute(
                        select(Incident.number, IncidentEvent.id, IncidentEvent.kind)
                        .join(IncidentEvent, IncidentEvent.incident_id == Incident.id)
                        .order_by(IncidentEvent.id)
                    ).all()
            finally:
                ctx.close()
            kind_of = {event_id: kind for _n, event_id, kind in timeline}
            expected_mail: set[tuple[str, str, int]] = set()
            expected_hook: set[tuple[str, str, int]] = set()
            for i, number in enumerate(numbers):
                mine = [(event_id, kind) for n, event_id, kind in timeline if n == number]
                assert [k for _e, k in mine] == ["created", "comment", "status", "solution"]
                slug = TENANTS[i % len(TENANTS)]
                for event_id, kind in mine:
                    if kind == "comment":
                        continue  # a comment tells the customer nothing
                    expected_hook.add((slug, number, event_id))
                    for who in ("admin", "ops"):
                        expected_mail.add((f"{who}@{slug}.example", number, event_id))
            assert len(expected_mail) == TICKETS * 3 * 2 and len(expected_hook) == TICKETS * 3

            # The outbox: exactly the expected rows, all sent once.
            by_id = {r.id: r for r in rows}
            assert all(r.state == "sent" and r.sent_at for r in rows)
            assert {
                (r.recipient, r.incident_number, r.payload["event_id"])
                for r in rows
                if r.channel == "email"
            } == expected_mail
            assert len(rows) == len(expected_mail) + len(expected_hook)
            assert all(kind_of[r.payload["event_id"]] != "comment" for r in rows)

            # The SMTP server: one mail per expected (recipient, ticket, event), none twice.
            got_mail: Counter[tuple[str, str, int]] = Counter()
            for rcpts, msg in smtp.collector.messages:
                match = _MESSAGE_ID.match(str(msg["Message-ID"]))
                assert match, msg["Message-ID"]
                row = by_id[int(match.group(2))]
                assert match.group(1) == row.incident_number == str(msg["X-Cpdops-Ticket"])
                for rcpt in rcpts:
                    got_mail[(rcpt, row.incident_number, row.payload["event_id"])] += 1
            assert set(got_mail) == expected_mail
            assert [k for k, n in got_mail.items() if n != 1] == [], "a mail arrived twice"

            # The webhook receiver: one 2xx per expected (tenant, ticket, event), none twice.
            assert receiver.problems == []
            assert receiver.refused > 0, "the 503 phase was exercised"
            assert [k for k, n in receiver.acked.items() if n != 1] == [], "acted on twice"
            got_hook = {(b["tenant"], b["number"], b["event_id"]) for b in receiver.events.values()}
            assert got_hook == expected_hook and len(receiver.acked) == len(expected_hook)

            # Nothing pending or dead through the operator's API either.
            for status in ("pending", "dead"):
                res = serve.client.get(
                    "/api/v1/outbox", params={"status": status}, headers=bearer(admin)
                )
                assert _ok_list(res) == [], status
        finally:
            replicas.stop()
            smtp.stop()
            webhook.stop()


def _ok_list(res: httpx.Response) -> list[Any]:
    assert res.status_code == 200, res.text
    data: list[Any] = res.json()
    return data
