"""A real ``cpdops serve`` process and what it writes about a request (issue 12, items 3-4).

* Its access log never holds a credential sent in a query string (``?access_token=cpd_…``,
  refused with 401, was written in full).
* The client address in the audit log and the access log comes from ``X-Forwarded-For`` only
  when the request comes from a proxy of ``CPDOPS_TRUSTED_PROXIES`` (rightmost untrusted hop);
  otherwise it is the connection's address, whatever the client's headers say.

Each case starts ``cpdops serve`` as a subprocess (its log to a file) on a SQLite database."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from orchestrator.db.models import AuditEntry
from tests.integration.fleet import wait_for
from tests.integration.ha import Replica, Replicas

TOKEN = "cpd_0123456789ab_" + "Q" * 43  # the form of a real token (unknown to the server)
FORGED = {"X-Forwarded-For": "198.51.100.7, 203.0.113.9", "X-Real-IP": "192.0.2.1"}


class Serve:
    """Starts ``cpdops serve`` processes on one SQLite database; :meth:`stop` ends them all."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.db_url = f"sqlite:///{tmp_path / 'cpdops.db'}"
        self.env = {
            **os.environ,
            "CPDOPS_DATABASE_URL": self.db_url,
            "CPDOPS_LOCAL_DOCKER_URL": "unix:///nonexistent.sock",
            "CPDOPS_DISCOVERY_INTERVAL_S": "3600",
        }
        self.env.pop("CPDOPS_TRUSTED_PROXIES", None)
        self.env.pop("FORWARDED_ALLOW_IPS", None)  # uvicorn's own variable: must not matter
        self.started: list[Replicas] = []

    def start(self, name: str, **env: str) -> Replica:
        replicas = Replicas(self.tmp_path, {**self.env, **env})
        self.started.append(replicas)
        return replicas.start(name)

    def stop(self) -> None:
        for replicas in self.started:
            replicas.stop()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    processes = Serve(tmp_path)
    try:
        yield processes
    finally:
        processes.stop()


def _audited_clients(db_url: str, path: str) -> list[str | None]:
    engine = create_engine(db_url)
    try:
        with Session(engine) as s:
            rows = s.scalars(
                select(AuditEntry).where(AuditEntry.action == "http").order_by(AuditEntry.id)
            )
            return [r.client for r in rows if r.target == path or r.route == path]
    finally:
        engine.dispose()


def test_the_access_log_never_holds_a_query_credential(serve: Serve) -> None:
    server = serve.start("log")
    refused = server.client.get(
        "/api/v1/monitors", params={"tenant": "acme", "access_token": TOKEN}
    )
    assert refused.status_code == 401
    assert server.client.get("/healthz", params={"token": "tok-PLAIN-77", "x": "1"}).is_success
    assert server.client.get("/healthz", params={"api_key": "k-PLAIN-88", "sig": "s-9"})

    def lines() -> list[str]:
        text = server.log_path.read_text(errors="replace")
        return [line for line in text.splitlines() if '"GET /' in line]

    found = wait_for(lambda: len(lines()) >= 3 and lines(), timeout=30, what="3 access lines")
    log = server.log_path.read_text(errors="replace")
    for secret in (TOKEN, TOKEN[len("cpd_") :], "tok-PLAIN-77", "k-PLAIN-88", "s-9"):
        assert secret not in log, log
    assert any(
        "GET /api/v1/monitors?tenant=acme&access_token=*** HTTP/1.1" in line and "401" in line
        for line in found
    ), found
    assert any("GET /healthz?token=***&x=1 HTTP/1.1" in line for line in found), found
    assert any("GET /healthz?api_key=***&sig=*** HTTP/1.1" in line for line in found), found


def _refused_post(server: Replica, headers: dict[str, str]) -> None:
    """An audited request (refused, 401) with ``headers``."""
    resp = server.client.post("/api/v1/monitors", json={}, headers=headers)
    assert resp.status_code == 401, resp.text


def test_forwarded_headers_are_ignored_without_trusted_proxies(serve: Serve) -> None:
    db_url = serve.db_url
    server = serve.start("direct")
    _refused_post(server, FORGED)
    clients = wait_for(
        lambda: _audited_clients(db_url, "/api/v1/monitors"), timeout=30, what="audit"
    )
    assert clients == ["127.0.0.1"]
    access = wait_for(
        lambda: [
            line
            for line in server.log_path.read_text(errors="replace").splitlines()
            if '"POST /api/v1/monitors' in line
        ],
        timeout=30,
        what="the access line",
    )
    assert all("127.0.0.1:" in line and "203.0.113.9" not in line for line in access), access


@pytest.mark.parametrize(
    ("trusted", "forwarded", "client"),
    [
        # the proxy appended the address it saw: the rightmost hop that is not a proxy
        ("127.0.0.1", "198.51.100.7, 203.0.113.9", "203.0.113.9"),
        # a chain of trusted proxies (a CIDR): their hops are skipped
        ("10.9.0.0/16, 127.0.0.0/8", "203.0.113.9, 10.9.1.1, 127.0.0.1", "203.0.113.9"),
    ],
)
def test_forwarded_for_is_believed_from_a_trusted_proxy_only(
    serve: Serve, trusted: str, forwarded: str, client: str
) -> None:
    db_url = serve.db_url
    server = serve.start("proxied", CPDOPS_TRUSTED_PROXIES=trusted)
    _refused_post(server, {"X-Forwarded-For": forwarded, "X-Real-IP": "192.0.2.1"})
    clients = wait_for(
        lambda: _audited_clients(db_url, "/api/v1/monitors"), timeout=30, what="audit"
    )
    assert clients == [client]


def test_a_bad_trusted_proxy_is_refused_at_start(serve: Serve) -> None:
    with pytest.raises(AssertionError, match="not an IP address or CIDR"):
        serve.start("bad", CPDOPS_TRUSTED_PROXIES="127.0.0.1, proxy.example")
