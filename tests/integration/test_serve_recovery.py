"""End to end: `cpdops serve` verifies recovery — a stand-in tenant is stopped (incident),
started again, stays UP for `incidents.recovery_hold`, and the periodic check moves the ticket
to solution_provided with the automatic comment; the customer is told by mail (a real SMTP
server, aiosmtpd), in Russian, of the ticket and of its solution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.db.models import ConfigItem, Notifier
from orchestrator.db.session import session_scope
from orchestrator.settings import Settings
from tests.integration.dockerd import remove_test_containers
from tests.integration.fleet import make_context, place_tenants, wait_for, wait_health
from tests.integration.server import api_client
from tests.integration.test_outbox_smtp import SENDER, SmtpServer


def test_recovery_after_the_hold_provides_the_solution(
    tmp_path: Path, docker_hosts: list[Any], standin_images: dict[str, str]
) -> None:
    hosts = docker_hosts[:1]
    smtp = SmtpServer()
    smtp.start()
    db_url = f"sqlite:///{tmp_path / 'cpdops.db'}"
    ctx = make_context(tmp_path, db_url)
    try:
        (placed,) = place_tenants(
            ctx,
            hosts,
            [("umbrella", 0)],
            standin_images["1"],
            extra_yaml={
                "umbrella": "language: ru\n"
                "contacts:\n  - {name: Иван, email: ivan@umbrella.example}\n"
                "channels: [email]"
            },
        )
        with session_scope(ctx.factory) as s:
            item = s.get_one(ConfigItem, "incidents")
            item.value = {**item.value, "recovery_hold": "3s"}
            s.add(
                Notifier(
                    name="mail",
                    kind="smtp",
                    settings={"host": "127.0.0.1", "port": smtp.port, "sender": SENDER},
                )
            )
        ctx.close()
        wait_health(placed.tenant.health_url, version="1")
        settings = Settings(
            database_url=db_url,
            monitor_interval_s=1.0,
            monitor_timeout_s=1.0,
            monitor_failure_threshold=2,
            discovery_interval_s=1.0,
            recovery_check_interval_s=1.0,
            outbox_interval_s=0.5,
        )
        with api_client(settings) as api:

            def tickets() -> list[dict[str, Any]]:
                got: list[dict[str, Any]] = api.get(
                    "/api/v1/incidents", params={"tenant": "umbrella"}
                ).json()
                return got

            def all_up() -> bool:
                mons = api.get("/api/v1/monitors").json()
                return len(mons) == 2 and all(m["status"] == "up" for m in mons)

            wait_for(all_up, timeout=30, what="umbrella's monitors UP")
            container = hosts[0].client.containers.get("smartcpd-umbrella")
            container.stop(timeout=2)
            (ticket,) = wait_for(tickets, timeout=20, what="umbrella's incident")
            assert ticket["status"] == "new"
            container.start()
            wait_for(all_up, timeout=30, what="umbrella's monitors UP again")
            solved = wait_for(
                lambda: [t for t in tickets() if t["status"] == "solution_provided"],
                timeout=60,
                what="the ticket solved after the recovery hold",
            )
            assert [t["number"] for t in solved] == [ticket["number"]]
            detail = api.get(f"/api/v1/incidents/{ticket['number']}").json()
            (solution,) = [e for e in detail["events"] if e["kind"] == "solution"]
            assert solution["author"] == "cpdops"
            assert "Восстановление подтверждено" in solution["body"]
            # whichever monitor reached DOWN before the restart is named, with its times
            body = solution["body"]
            assert any(
                f"- umbrella-app-{kind} (umbrella): DOWN since 20" in body
                for kind in ("http", "container")
            ), body
            assert "UP since 20" in body and "Recovery verified automatically" in body

            # The customer was told: the ticket, then its solution, in Russian, one thread.
            def solution_mail() -> list[Any]:
                return [
                    m
                    for rcpts, m in smtp.collector.messages
                    if rcpts == ["ivan@umbrella.example"]
                    and "предоставлено решение" in m.get_body(("plain",)).get_content()
                ]

            (mail,) = wait_for(solution_mail, timeout=20, what="the solution mailed")
            text = mail.get_body(("plain",)).get_content()
            assert str(mail["Subject"]).startswith(f"[Ticket#{ticket['number']}]")
            assert "Здравствуйте, Иван!" in text and "Восстановление подтверждено" in text
            subjects = [str(m["Subject"]) for _r, m in smtp.collector.messages]
            assert all(f"[Ticket#{ticket['number']}]" in x for x in subjects), subjects
            assert {r for rcpts, _m in smtp.collector.messages for r in rcpts} == {
                "ivan@umbrella.example"
            }
    finally:
        smtp.stop()
        for h in hosts:
            remove_test_containers(h.client)
