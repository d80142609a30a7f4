"""OpenAPI is the truth (issue 12, item 7): one test per class of mismatch schemathesis found,
against a real ``cpdops serve`` on PostgreSQL (SQLite without one) — what the schema allows is
accepted, what it refuses is refused, and answers are what it documents.

The whole run is ``test_api_schemathesis.py``; these name each class and fail on its own."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from orchestrator.context import build_context
from orchestrator.db.models import Tenant
from orchestrator.db.session import session_scope
from orchestrator.settings import Settings
from tests.conftest import PG_ENV
from tests.integration.ha import pg_database
from tests.integration.server import bearer, make_token, running_server

METHODS = ("get", "put", "post", "delete", "patch")


def _settings(db_url: str, **kw: Any) -> Settings:
    return Settings(
        database_url=db_url,
        run_monitors=False,
        run_scheduler=False,
        local_docker_url="unix:///nonexistent.sock",
        **kw,
    )


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with contextlib.ExitStack() as stack:
        if os.environ.get(PG_ENV) or os.environ.get("CPDOPS_REQUIRE_POSTGRES") == "1":
            url = stack.enter_context(pg_database("cpdops_openapi"))
        else:
            url = f"sqlite:///{tmp_path_factory.mktemp('openapi') / 'cpdops.db'}"
        ctx = build_context(_settings(url))
        try:
            with session_scope(ctx.factory) as s:
                s.add(Tenant(slug="acme", name="ACME"))
        finally:
            ctx.close()
        yield url


@pytest.fixture(scope="module")
def api(db: str) -> Iterator[httpx.Client]:
    settings = _settings(db, alertmanager_secret="am-secret", telegram_secret="tg-secret")
    with running_server(settings) as base:
        token = make_token(settings, "admin")
        with httpx.Client(base_url=base, timeout=30, headers=bearer(token)) as client:
            yield client


@pytest.fixture(scope="module")
def openapi(api: httpx.Client) -> dict[str, Any]:
    doc: dict[str, Any] = api.get("/openapi.json").json()
    return doc


def _component(openapi: dict[str, Any], name: str) -> dict[str, Any]:
    schema: dict[str, Any] = openapi["components"]["schemas"][name]
    return schema


def _refuses(pattern: str | None, value: str) -> bool:
    return pattern is not None and re.search(pattern, value) is None


def _ticket(api: httpx.Client) -> str:
    res = api.post(
        "/api/v1/incidents", json={"type": "incident", "subject": "Calls drop", "tenant": "acme"}
    )
    assert res.status_code == 201, res.text
    number: str = res.json()["number"]
    return number


# ------------------------------------------------------------------ undeclared methods


def test_an_undeclared_method_on_any_path_is_405_with_allow(
    api: httpx.Client, openapi: dict[str, Any]
) -> None:
    # GET /rollouts/plan reached GET /rollouts/{rollout_id} and answered 422 (a bad id)
    res = api.get("/api/v1/rollouts/plan")
    assert res.status_code == 405, res.text
    assert res.headers["allow"] == "POST"
    # a path parameter may hold slashes (a monitor id is <tenant>/<name>): DELETE of
    # /monitors/1/history is DELETE /monitors/{monitor_id} of the monitor "1/history"
    templates = [
        (re.compile("^" + re.sub(r"\\\{[^}]*\\\}", ".+", re.escape(p)) + "$"), set(ops))
        for p, ops in openapi["paths"].items()
    ]
    for path, ops in openapi["paths"].items():
        concrete = re.sub(r"\{[^}]*\}", "1", path)
        declared = {m.upper() for m in ops}
        for method in METHODS:
            if method in ops or any(
                method in others and rx.match(concrete) for rx, others in templates
            ):
                continue
            res = api.request(method.upper(), concrete)
            assert res.status_code == 405, (method, path, res.status_code, res.text)
            allowed = {m.strip() for m in res.headers["allow"].split(",")}
            assert declared <= allowed <= declared | {"HEAD"}, (method, path, allowed)


# ------------------------------------------------------------------ strict types


@pytest.mark.parametrize("value", [0, 1, "true", "false", None])
def test_a_boolean_is_a_boolean(api: httpx.Client, value: object) -> None:
    number = _ticket(api)
    res = api.post(
        f"/api/v1/incidents/{number}/comments",
        json={"author": "ivanov", "body": "still drops", "customer": value},
    )
    assert res.status_code == 422, res.text
    assert res.json()["detail"][0]["loc"] == ["body", "customer"]
    # the rollout body too (refused before any Docker host is asked)
    res = api.post("/api/v1/rollouts/plan", json={"image": "smartcpd:2", "backup": value})
    assert res.status_code == 422 and res.json()["detail"][0]["loc"] == ["body", "backup"]


def test_a_number_is_a_number(api: httpx.Client) -> None:
    res = api.post(
        "/api/v1/rollouts/plan", json={"image": "smartcpd:2", "strategy": {"parallelism": "3"}}
    )
    assert res.status_code == 422, res.text
    assert res.json()["detail"][0]["loc"] == ["body", "strategy", "parallelism"]
    alert = {"status": "firing", "startsAt": "2026-01-01T00:00:00Z", "endsAt": 0}
    res = api.post(
        "/api/v1/intake/alertmanager",
        json={"version": "4", "status": "firing", "alerts": [alert]},
        headers={"Authorization": "Bearer am-secret"},
    )
    assert res.status_code == 422, res.text
    assert res.json()["detail"][0]["loc"][-1] == "endsAt"


# ------------------------------------------------------------------ NUL


def test_nul_is_refused_where_the_schema_says_so(
    api: httpx.Client, openapi: dict[str, Any]
) -> None:
    portal = openapi["paths"]["/api/v1/incidents"]["post"]["requestBody"]["content"]
    said = {
        "subject": portal["application/json"]["schema"]["properties"]["subject"],
        "body": _component(openapi, "CommentIn")["properties"]["body"],
        "author": _component(openapi, "PriorityIn")["properties"]["author"],
    }
    for field, schema in said.items():
        assert _refuses(schema.get("pattern"), "a\x00b"), (field, schema)
    alert = openapi["paths"]["/api/v1/intake/alertmanager"]["post"]["requestBody"]
    labels = alert["content"]["application/json"]["schema"]["properties"]["alerts"]["items"][
        "properties"
    ]["labels"]
    assert _refuses(labels["propertyNames"]["pattern"], "a\x00")
    assert _refuses(labels["additionalProperties"]["pattern"], "a\x00")
    # and refused it is, 422 naming the field
    res = api.post("/api/v1/incidents", json={"type": "incident", "subject": "a\x00b"})
    assert res.status_code == 422 and res.json()["detail"][0]["loc"] == ["body", "subject"]
    res = api.post(
        "/api/v1/intake/alertmanager",
        json={
            "version": "4",
            "status": "firing",
            "alerts": [
                {
                    "status": "firing",
                    "startsAt": "2026-01-01T00:00:00Z",
                    "annotations": {"x": "\x00"},
                }
            ],
        },
        headers={"Authorization": "Bearer am-secret"},
    )
    assert res.status_code == 422, res.text


# ------------------------------------------------------------------ schema-valid is accepted


def test_a_monitor_target_has_the_form_of_its_kind(
    api: httpx.Client, openapi: dict[str, Any]
) -> None:
    body = openapi["paths"]["/api/v1/monitors"]["post"]["requestBody"]
    mapping = body["content"]["application/json"]["schema"]["discriminator"]["mapping"]
    assert set(mapping) == {"http", "tcp", "sip", "postgres", "container"}
    tcp = _component(openapi, mapping["tcp"].rsplit("/", 1)[-1])
    pattern = tcp["properties"]["target"]["pattern"]
    # a tcp target without a port was schema-valid (any string) and refused: now the schema
    # refuses it, and each kind's example target is accepted
    assert _refuses(pattern, "127.0.0.1")
    for kind, ref in sorted(mapping.items()):
        schema = _component(openapi, ref.rsplit("/", 1)[-1])
        target = schema["properties"]["target"]["examples"][0]
        assert re.search(schema["properties"]["target"]["pattern"], target), kind
        res = api.post(
            "/api/v1/monitors",
            json={"name": f"m-{kind}", "tenant": "acme", "kind": kind, "target": target},
        )
        assert res.status_code == 201, (kind, res.text)
    res = api.post(
        "/api/v1/monitors",
        json={"name": "bad", "tenant": "acme", "kind": "tcp", "target": "127.0.0.1"},
    )
    assert res.status_code == 422 and res.json()["detail"][0]["loc"][-1] == "target"
    # a well-formed slug that names no tenant is not found (no schema can know the registry)
    res = api.post(
        "/api/v1/monitors",
        json={"name": "x", "tenant": "ghost", "kind": "tcp", "target": "127.0.0.1:1"},
    )
    assert res.status_code == 404 and res.json()["detail"].startswith("tenant: unknown")
    # the one rule across fields: 400 naming it
    res = api.post(
        "/api/v1/monitors",
        json={
            "name": "y",
            "tenant": "acme",
            "kind": "tcp",
            "target": "127.0.0.1:1",
            "interval": "1s",
            "timeout": 2,
        },
    )
    assert res.status_code == 400 and res.json()["detail"].startswith("timeout")


def test_a_solution_needs_its_comment_in_the_schema(
    api: httpx.Client, openapi: dict[str, Any]
) -> None:
    solution = _component(openapi, "SolutionIn")
    assert "comment" in solution["required"]
    for refused in (" \t", "fixed\x00"):
        assert _refuses(solution["properties"]["comment"]["pattern"], refused)
    number = _ticket(api)
    for status in ("open", "solution_provided"):
        res = api.post(
            f"/api/v1/incidents/{number}/status", json={"status": status, "author": "ivanov"}
        )
        if status == "open":
            assert res.status_code == 200, res.text
    assert res.status_code == 422, res.text
    assert res.json()["detail"][0]["loc"][-1] == "comment"


def test_a_token_lifetime_has_its_form_in_the_schema(
    api: httpx.Client, openapi: dict[str, Any]
) -> None:
    expires = _component(openapi, "TokenIn")["properties"]["expires"]["anyOf"][0]
    assert _refuses(expires["pattern"], "000000000000000")
    assert _refuses(expires["pattern"], "0m")
    res = api.post("/api/v1/tokens", json={"name": "ci", "role": "viewer", "expires": "0m"})
    assert res.status_code == 422 and res.json()["detail"][0]["loc"] == ["body", "expires"]
    res = api.post("/api/v1/tokens", json={"name": "ci", "role": "viewer", "expires": "90d"})
    assert res.status_code == 201, res.text


def test_a_forms_empty_tenant_is_documented_and_taken_as_none(
    api: httpx.Client, openapi: dict[str, Any]
) -> None:
    content = openapi["paths"]["/api/v1/incidents"]["post"]["requestBody"]["content"]
    tenant = content["multipart/form-data"]["schema"]["properties"]["tenant"]
    assert {"type": "string", "maxLength": 0} in tenant["anyOf"]
    res = api.post(
        "/api/v1/incidents",
        data={"type": "consultation", "subject": "Help", "tenant": ""},
        files={"screenshot": ("a.png", b"\x89PNG", "image/png")},
    )
    assert res.status_code == 201 and res.json()["tenant"] is None, res.text


def test_every_content_type_taken_is_documented(api: httpx.Client, openapi: dict[str, Any]) -> None:
    content = openapi["paths"]["/api/v1/incidents"]["post"]["requestBody"]["content"]
    assert set(content) == {
        "application/json",
        "multipart/form-data",
        "application/x-www-form-urlencoded",
    }
    res = api.post("/api/v1/incidents", data={"type": "incident", "subject": "form"})
    assert res.status_code == 201, res.text
    res = api.post(
        "/api/v1/incidents", content=b"type=incident", headers={"content-type": "text/plain"}
    )
    assert (
        res.status_code == 415
        and "415" in openapi["paths"]["/api/v1/incidents"]["post"]["responses"]
    )


# ------------------------------------------------------------------ answers as documented


def test_an_attachment_is_served_as_documented(api: httpx.Client, openapi: dict[str, Any]) -> None:
    op = openapi["paths"]["/api/v1/incidents/{number}/attachments/{attachment_id}"]["get"]
    assert set(op["responses"]["200"]["content"]) == {"application/octet-stream"}
    page = b"<html><script>alert(document.cookie)</script></html>"
    res = api.post(
        "/api/v1/incidents",
        data={"type": "incident", "subject": "see the page"},
        files={"screenshot": ("page.html", page, "text/html")},
    )
    assert res.status_code == 201, res.text
    ticket = res.json()
    (att,) = ticket["attachments"]
    assert att["content_type"] == "text/html"  # the uploader's word, as metadata
    got = api.get(f"/api/v1/incidents/{ticket['number']}/attachments/{att['id']}")
    assert got.status_code == 200 and got.content == page
    assert got.headers["content-type"] == "application/octet-stream"
    assert got.headers["content-disposition"].startswith("attachment;")
    assert got.headers["x-content-type-options"] == "nosniff"


def test_a_disabled_intake_answers_its_documented_503(db: str) -> None:
    settings = _settings(db)  # neither CPDOPS_ALERTMANAGER_SECRET nor CPDOPS_TELEGRAM_SECRET
    with running_server(settings) as base, httpx.Client(base_url=base, timeout=30) as client:
        doc = client.get("/openapi.json").json()
        for path in ("/api/v1/intake/alertmanager", "/api/v1/intake/telegram"):
            res = client.post(path, json={})
            assert res.status_code == 503, (path, res.text)
            assert "disabled" in res.json()["detail"]
            assert "503" in doc["paths"][path]["post"]["responses"], path


def test_every_bound_is_in_json_schema_words(openapi: dict[str, Any]) -> None:
    # a bound pydantic could not place (behind a validator) reached the document as "ge": 1,
    # which JSON Schema ignores: -274 was schema-valid and refused
    raw: list[str] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            raw.extend(f"{where}/{k}" for k in ("ge", "gt", "le", "lt", "max_length") if k in node)
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}/{i}")

    walk(openapi, "")
    assert raw == []
