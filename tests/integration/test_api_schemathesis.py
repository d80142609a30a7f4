"""Property-based run of the whole API (schemathesis over ``/openapi.json``) against a real
``cpdops serve`` with an admin token and a real Docker engine, on PostgreSQL: OpenAPI is the
truth. Every check schemathesis has for one request runs: no input gives a 5xx; every response
conforms to its documented schema (status code, content type, headers, body); what the schema
refuses is refused (``negative_data_rejection``) and what it allows is accepted
(``positive_data_acceptance``); an undeclared method on a path is 405 with ``Allow``
(``unsupported_method``, in the coverage phase); a request without the token is 401.

The phases are the examples, the coverage phase (boundaries, every enum value, each undeclared
method, each kind of malformed value) and fuzzing. The webhook intakes get their shared
secrets. One allowance, per operation: ``POST /api/v1/monitors``, ``/rollouts`` and
``/rollouts/plan`` may refuse a schema-valid body with 400 — a rule across fields no schema
can state (a timeout longer than the interval, approve_after beyond the waves) or the fleet's
state (an image missing on a host); everywhere else a schema-valid request is accepted (or
404/409 for what does not exist or conflicts)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import BaseSchema
from schemathesis.config import SchemathesisConfig
from schemathesis.config._checks import (
    NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES,
    POSITIVE_DATA_ACCEPTANCE_EXPECTED_STATUSES,
)

from orchestrator.app import create_app
from orchestrator.context import build_context
from orchestrator.db.models import Tenant
from orchestrator.db.session import session_scope
from orchestrator.incidents.tickets import create_ticket
from orchestrator.settings import Settings
from tests.conftest import PG_ENV
from tests.integration.dockerd import DockerdHandle
from tests.integration.ha import pg_database
from tests.integration.server import make_token, running_server

pytestmark = pytest.mark.docker

# Fuzzing examples per operation (about 35 of them), besides the coverage phase's cases:
# bounded so that the run stays within a few minutes on a loaded CI machine.
EXAMPLES = 25
SERVED: dict[str, Any] = {}
AM_SECRET, TG_SECRET = "am-secret", "tg-secret"
TG_HEADER = "X-Telegram-Bot-Api-Secret-Token"


def _settings(db_url: str, docker_url: str = "unix:///nonexistent.sock") -> Settings:
    return Settings(
        database_url=db_url,
        run_monitors=False,
        run_scheduler=False,
        local_docker_url=docker_url,
        pull_policy="never",
        alertmanager_secret=AM_SECRET,
        telegram_secret=TG_SECRET,  # a disabled intake's 503: test_api_openapi_truth.py
    )


# The document the server serves (building the app starts nothing; a test below checks that
# the running server serves the same one).
# A body over the API's size limit is refused with 413 before it is validated: a rejection too.
CONFIG = SchemathesisConfig.from_dict(
    {
        "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True}},
        "checks": {
            "negative_data_rejection": {
                "expected-statuses": [*NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES, "413"]
            }
        },
        "operations": [
            {
                "include-path-regex": "^/api/v1/(monitors|rollouts|rollouts/plan)$",
                "include-method": "POST",
                "checks": {
                    "positive_data_acceptance": {
                        "expected-statuses": [*POSITIVE_DATA_ACCEPTANCE_EXPECTED_STATUSES, "400"]
                    }
                },
            }
        ],
    }
)
schema: BaseSchema = schemathesis.openapi.from_dict(
    create_app(_settings("sqlite://")).openapi(), config=CONFIG
)


@schemathesis.auth(refresh_interval=None)
class FreshAdminToken:
    """A new admin token for every case: a case may well revoke the one it was given."""

    def get(self, case: schemathesis.Case, context: schemathesis.AuthContext) -> str:
        if "settings" not in SERVED:  # asked while the tests are collected: no server yet
            return "cpd_000000000000_" + "A" * 43
        return make_token(SERVED["settings"], "admin")

    def set(self, case: schemathesis.Case, data: str, context: schemathesis.AuthContext) -> None:
        # the webhook intakes take their shared secrets, not an API token
        path = case.operation.path
        if path == "/api/v1/intake/alertmanager":
            data = AM_SECRET
        headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}
        if path == "/api/v1/intake/telegram":
            headers[TG_HEADER] = TG_SECRET
        case.headers = headers


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, docker_hosts: list[DockerdHandle]
) -> Iterator[str]:
    """On the production database, PostgreSQL, when there is one (CI: always): it refuses
    what SQLite stores (NUL in text), so SQLite alone hid 500s."""
    with contextlib.ExitStack() as stack:
        if os.environ.get(PG_ENV) or os.environ.get("CPDOPS_REQUIRE_POSTGRES") == "1":
            db_url = stack.enter_context(pg_database("cpdops_schemathesis"))
        else:
            db_url = f"sqlite:///{tmp_path_factory.mktemp('schemathesis') / 'cpdops.db'}"
        yield from _serve(_settings(db_url, docker_hosts[0].url))


def _serve(cfg: Settings) -> Iterator[str]:
    ctx = build_context(cfg)
    try:
        with session_scope(ctx.factory) as s:
            s.add(Tenant(slug="acme", name="ACME"))
            s.flush()
            create_ticket(
                s,
                system_id="01",
                type="incident",
                subject="Calls drop",
                tenant="acme",
                author="test",
            )
    finally:
        ctx.close()
    with running_server(cfg) as base:
        SERVED.update(base=base, settings=cfg)
        yield base
    SERVED.clear()


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_api_conforms_and_never_fails(case: schemathesis.Case, served: str) -> None:
    case.call_and_validate(base_url=served, timeout=60)


def test_the_served_document_is_the_one_tested(served: str) -> None:
    assert httpx.get(f"{served}/openapi.json").json() == schema.raw_schema
    operations = {op.ok().label for op in schema.get_all_operations()}
    assert {"POST /api/v1/rollouts", "GET /api/v1/audit", "POST /api/v1/tokens"} <= operations
    assert len(operations) >= 30
