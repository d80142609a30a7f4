"""Issue #12 item 9: a published port that answers as another tenant is never healthy.

After a Docker daemon crash a leftover port proxy can forward a tenant's port to an address
a restarted daemon gave another tenant's container; that answers 200 with a version. The
rollout gate and the generated http monitors check the tenant the answer names, against the
real stand-in server (its ``/health`` carries ``"tenant"``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import orchestrator.demo
from monitors.probe import MonitorSpec
from monitors.probes.http import HttpOptions, HttpProbe, tenant_problem
from orchestrator.context import monitors_for
from orchestrator.fleet.discovery import Instance
from rollouts.gates import http_gate, judge_health

SERVER_PATH = Path(orchestrator.demo.__file__).parent / "standin" / "server.py"


def _server_module() -> Any:
    spec = importlib.util.spec_from_file_location("smartcpd_standin_server_t", SERVER_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def globex() -> Iterator[str]:
    """The real stand-in server of tenant globex, version 2: its /health URL."""
    server = _server_module()
    config = server.load_config(
        {
            "SMARTCPD_VERSION": "2",
            "SMARTCPD_TENANT": "globex",
            "SMARTCPD_HOST": "127.0.0.1",
            "SMARTCPD_PORT": "0",
        }
    )
    httpd = server.make_server(config)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}/health"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.mark.parametrize(
    ("body", "expected", "problem"),
    [
        (b'{"tenant": "globex"}', "acme", "answers as tenant 'globex', expected 'acme'"),
        (b'{"tenant": "acme"}', "acme", None),
        (b'{"tenant": ""}', "acme", None),  # names no tenant: not judged on it
        (b'{"version": "2"}', "acme", None),
        (b"not json", "acme", None),
        (b'["globex"]', "acme", None),
        (b'{"tenant": "globex"}', None, None),  # nothing expected
    ],
)
def test_tenant_problem(body: bytes, expected: str | None, problem: str | None) -> None:
    assert tenant_problem(body, expected) == problem


@pytest.mark.parametrize(
    ("body", "tenant", "ok", "reason"),
    [
        ('{"version": "2", "tenant": "globex"}', "acme", False, "answers as tenant 'globex'"),
        ('{"version": "2", "tenant": "acme"}', "acme", True, "healthy"),
        ('{"version": "2", "tenant": "globex"}', None, True, "healthy"),
    ],
)
def test_judge_health_checks_the_tenant(
    body: str, tenant: str | None, ok: bool, reason: str
) -> None:
    got_ok, got_reason, version = judge_health(200, body, "2", tenant)
    assert (got_ok, version) == (ok, "2")
    assert got_reason.startswith(reason)


def test_the_gate_fails_on_a_port_that_answers_as_another_tenant(globex: str) -> None:
    wrong = http_gate(
        globex, expect_version="2", expect_tenant="acme", passes=2, deadline_s=1, interval_s=0.1
    )
    assert not wrong.ok
    assert "answers as tenant 'globex', expected 'acme'" in wrong.reason
    right = http_gate(
        globex, expect_version="2", expect_tenant="globex", passes=2, deadline_s=10, interval_s=0.1
    )
    assert right.ok, right.reason


def _check(url: str, **options: Any) -> Any:
    spec = MonitorSpec(
        id="m", name="m", tenant="acme", host="h", kind="http", target=url, options=options
    )

    async def main() -> Any:
        probe = HttpProbe()
        try:
            return await probe.check(spec)
        finally:
            await probe.aclose()

    return asyncio.run(main())


def test_the_http_monitor_is_down_on_a_port_that_answers_as_another_tenant(globex: str) -> None:
    wrong = _check(globex, expect_tenant="acme")
    assert not wrong.ok and wrong.status_code == 200
    assert "answers as tenant 'globex', expected 'acme'" in wrong.reason
    assert _check(globex, expect_tenant="globex").ok
    assert _check(globex).ok  # a declared monitor without the option is not judged on it


def test_expect_tenant_is_validated() -> None:
    with pytest.raises(ValueError, match="expect_tenant"):
        HttpOptions.from_options({"expect_tenant": ""})
    with pytest.raises(ValueError, match="expect_tenant"):
        HttpOptions.from_options({"expect_tenant": 3})


def test_generated_http_monitors_expect_their_tenant() -> None:
    inst = Instance(
        tenant="acme",
        component="app",
        host="local",
        container_id="c1",
        name="smartcpd-acme",
        image="smartcpd:2",
        version="2",
        status="running",
        health=None,
        health_url="http://127.0.0.1:18001/health",
        sip_uri=None,
        rollout=None,
    )
    (http,) = [m for m in monitors_for([inst], {}) if m.kind == "http"]
    assert http.options == {"expect_tenant": "acme"}
