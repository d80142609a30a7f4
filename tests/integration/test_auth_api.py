"""Authorization through a real ``cpdops serve``: every route × every kind of credential, the
token API, the audit log (who, what, when, from where; refused requests too), body limits
(413) and CORS."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi.routing import iter_route_contexts
from sqlalchemy import update

from orchestrator.app import create_app
from orchestrator.context import build_context
from orchestrator.db.models import ApiToken
from orchestrator.db.session import session_scope
from orchestrator.settings import Settings
from tests.integration.server import bearer, make_token, running_server

SECRET = "am-shared-secret"

# The expected access of every route: the test's own copy, so that a route added without a
# decision here fails (test_every_route_is_classified), whatever the app itself declares.
EXPECTED: dict[tuple[str, str], str] = {
    ("GET", "/openapi.json"): "public",
    ("HEAD", "/openapi.json"): "public",
    ("GET", "/docs"): "public",
    ("HEAD", "/docs"): "public",
    ("GET", "/docs/oauth2-redirect"): "public",
    ("HEAD", "/docs/oauth2-redirect"): "public",
    ("GET", "/redoc"): "public",
    ("HEAD", "/redoc"): "public",
    ("GET", "/redoc/logo-mini.svg"): "public",
    ("HEAD", "/redoc/logo-mini.svg"): "public",
    ("GET", "/healthz"): "public",
    ("GET", "/metrics"): "public",
    ("GET", "/api/v1/hosts"): "viewer",
    ("GET", "/api/v1/tenants"): "viewer",
    ("GET", "/api/v1/instances"): "viewer",
    ("GET", "/api/v1/images"): "viewer",
    ("GET", "/api/v1/rollouts"): "viewer",
    ("GET", "/api/v1/rollouts/{rollout_id}"): "viewer",
    ("POST", "/api/v1/rollouts/plan"): "operator",
    ("POST", "/api/v1/rollouts"): "operator",
    ("POST", "/api/v1/rollouts/{rollout_id}/pause"): "operator",
    ("POST", "/api/v1/rollouts/{rollout_id}/resume"): "operator",
    ("POST", "/api/v1/rollouts/{rollout_id}/approve"): "operator",
    ("POST", "/api/v1/rollouts/{rollout_id}/abort"): "operator",
    ("POST", "/api/v1/rollouts/{rollout_id}/rollback"): "operator",
    ("GET", "/api/v1/incidents"): "viewer",
    ("POST", "/api/v1/incidents"): "operator",
    ("GET", "/api/v1/incidents/{number}"): "viewer",
    ("POST", "/api/v1/incidents/{number}/comments"): "operator",
    ("POST", "/api/v1/incidents/{number}/status"): "operator",
    ("POST", "/api/v1/incidents/{number}/priority"): "operator",
    ("POST", "/api/v1/incidents/{number}/owner"): "operator",
    ("GET", "/api/v1/incidents/{number}/attachments/{attachment_id}"): "viewer",
    ("POST", "/api/v1/intake/alertmanager"): "shared secret",
    ("POST", "/api/v1/intake/telegram"): "shared secret",
    ("GET", "/api/v1/postgres"): "viewer",
    ("GET", "/"): "public",
    ("GET", "/api/v1/monitors"): "viewer",
    ("POST", "/api/v1/monitors"): "admin",
    ("DELETE", "/api/v1/monitors/{monitor_id}"): "admin",
    ("GET", "/api/v1/monitors/{monitor_id}/history"): "viewer",
    ("GET", "/api/v1/monitors/{monitor_id}/changes"): "viewer",
    ("GET", "/api/v1/tenants/{slug}/uptime"): "viewer",
    ("GET", "/api/v1/tokens"): "admin",
    ("POST", "/api/v1/tokens"): "admin",
    ("DELETE", "/api/v1/tokens/{token_id}"): "admin",
    ("GET", "/api/v1/audit"): "admin",
    ("GET", "/api/v1/outbox"): "admin",
    ("POST", "/api/v1/outbox/{outbox_id}/requeue"): "admin",
}
RANK = {"viewer": 1, "operator": 2, "admin": 3}
TELEGRAM_SECRET = "tg-intake-secret"
# How a webhook intake refuses a request without its secret (an API token is not it):
# Alertmanager sends the secret as a bearer credential (401), Telegram in its own header (403).
SECRET_REFUSAL = {"/api/v1/intake/alertmanager": "401", "/api/v1/intake/telegram": "403"}
PATH_VALUES = {
    "rollout_id": "999",
    "number": "2026120101000017",
    "attachment_id": "1",
    "monitor_id": "acme/nothing",
    "slug": "acme",
    "token_id": "999999",
    "outbox_id": "999999",
}
CREDENTIALS = ("none", "malformed", "viewer", "operator", "admin", "revoked", "expired")


@dataclass
class Api:
    base: str
    settings: Settings
    tokens: dict[str, str]

    def client(self, who: str = "admin") -> httpx.Client:
        headers = {} if who == "none" else bearer(self.tokens[who])
        return httpx.Client(base_url=self.base, timeout=30, headers=headers)


def _settings(db_url: str, **extra: Any) -> Settings:
    return Settings(
        database_url=db_url,
        run_monitors=False,
        run_scheduler=False,
        local_docker_url="unix:///nonexistent.sock",
        alertmanager_secret=SECRET,
        telegram_secret=TELEGRAM_SECRET,
        **extra,
    )


def _tokens(settings: Settings) -> dict[str, str]:
    tokens = {role: make_token(settings, role, name=role) for role in ("viewer", "operator")}
    tokens["admin"] = make_token(settings, "admin", name="admin")
    tokens["revoked"] = make_token(settings, "admin", name="revoked")
    tokens["expired"] = make_token(
        settings, "admin", name="expired", expires_at=datetime.now(UTC) + timedelta(hours=1)
    )
    tokens["malformed"] = "not-a-cpdops-token"
    ctx = build_context(settings)
    try:
        with session_scope(ctx.factory) as s:
            past = datetime.now(UTC) - timedelta(seconds=1)
            s.execute(update(ApiToken).where(ApiToken.name == "revoked").values(revoked_at=past))
            s.execute(update(ApiToken).where(ApiToken.name == "expired").values(expires_at=past))
    finally:
        ctx.close()
    return tokens


@pytest.fixture
def api(db_url: str) -> Iterator[Api]:
    settings = _settings(db_url)
    with running_server(settings) as base:
        yield Api(base, settings, _tokens(settings))


def _routes() -> list[tuple[str, str]]:
    app = create_app(_settings("sqlite://"))
    return [
        (method, route.path_format or "")
        for route in iter_route_contexts(app.routes)
        for method in sorted(route.methods or ())
    ]


def test_every_route_is_classified() -> None:
    routes = _routes()
    unclassified = [r for r in routes if r not in EXPECTED]
    assert not unclassified, f"routes without an expected access in EXPECTED: {unclassified}"
    assert not set(EXPECTED) - set(routes), "EXPECTED names routes the app does not have"


def _url(path: str) -> str:
    return re.sub(r"\{([^}]+)\}", lambda m: PATH_VALUES[m.group(1)], path)


def test_authorization_matrix(api: Api) -> None:
    """Every route × (no token, malformed, viewer, operator, admin, revoked, expired):
    401 with WWW-Authenticate: Bearer, 403, or allowed (neither 401 nor 403)."""
    clients = {who: api.client(who) for who in CREDENTIALS}
    failures: list[str] = []
    try:
        for method, path in _routes():
            rule = EXPECTED[(method, path)]
            for who in CREDENTIALS:
                res = clients[who].request(method, _url(path))
                if rule == "public":
                    want = "allowed"
                elif rule == "shared secret":
                    want = SECRET_REFUSAL[path]  # an API token is not the intake's secret
                elif who in ("none", "malformed", "revoked", "expired"):
                    want = "401"
                else:
                    want = "allowed" if RANK[who] >= RANK[rule] else "403"
                got = str(res.status_code) if res.status_code in (401, 403) else "allowed"
                if got != want or res.status_code >= 500:
                    failures.append(f"{method} {path} as {who}: {res.status_code}, want {want}")
                if got == "401":
                    assert res.headers["www-authenticate"].startswith("Bearer"), (method, path)
                if got in ("401", "403"):
                    assert isinstance(res.json()["detail"], str)
        # the intake with its own secret (and no token) is let in
        res = httpx.post(
            f"{api.base}/api/v1/intake/alertmanager",
            headers=bearer(SECRET),
            json={"version": "4", "status": "firing", "alerts": []},
        )
        assert res.status_code not in (401, 403), res.text
        res = httpx.post(
            f"{api.base}/api/v1/intake/telegram",
            headers={"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET},
            json={"update_id": 1},
        )
        assert res.status_code == 200 and res.json()["action"] == "ignored", res.text
    finally:
        for c in clients.values():
            c.close()
    assert not failures, "\n".join(failures)


def test_refusals_say_why(api: Api) -> None:
    with api.client("none") as c:
        r = c.get("/api/v1/hosts")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer" in r.json()["detail"]
    for who, reason in (
        ("revoked", "token revoked"),
        ("expired", "token expired"),
        ("malformed", "malformed token"),
    ):
        with api.client(who) as c:
            r = c.get("/api/v1/hosts")
            assert r.status_code == 401 and reason in r.json()["detail"], (who, r.text)
            assert r.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    # a well-formed token nobody issued
    fake = api.tokens["admin"][:-4] + (
        "AAAA" if not api.tokens["admin"].endswith("AAAA") else "BBBB"
    )
    r = httpx.get(f"{api.base}/api/v1/hosts", headers=bearer(fake))
    assert r.status_code == 401 and r.json()["detail"] == "invalid token"
    with api.client("viewer") as c:
        r = c.post("/api/v1/rollouts/1/pause")
        assert r.status_code == 403
        assert r.json() == {"detail": "this needs role operator; token 'viewer' has role viewer"}


def test_token_api_shows_the_token_once_and_revokes_at_once(api: Api) -> None:
    with api.client("admin") as admin:
        made = admin.post(
            "/api/v1/tokens", json={"name": "ci", "role": "operator", "expires": "30m"}
        )
        assert made.status_code == 201, made.text
        body = made.json()
        token = body["token"]
        assert token.startswith(f"cpd_{body['key_id']}_") and body["role"] == "operator"
        expires = datetime.fromisoformat(body["expires_at"])
        assert timedelta(minutes=29) < expires - datetime.now(UTC) <= timedelta(minutes=30)
        assert body["created_by"] == "token:admin"
        listed = admin.get("/api/v1/tokens")
        assert listed.status_code == 200
        assert token not in listed.text and "secret" not in listed.text
        assert {t["name"] for t in listed.json()} >= {"ci", "admin", "viewer", "revoked"}
        assert {t["name"]: t["active"] for t in listed.json()}["revoked"] is False
        # the new token works, and its use is recorded
        with httpx.Client(base_url=api.base, headers=bearer(token)) as ci:
            assert ci.get("/api/v1/rollouts").status_code == 200
            assert ci.post("/api/v1/tokens", json={"name": "x", "role": "admin"}).status_code == 403
            (row,) = [t for t in admin.get("/api/v1/tokens").json() if t["name"] == "ci"]
            assert row["last_used_at"] is not None and row["last_used_from"] == "127.0.0.1"
            assert (
                admin.post("/api/v1/tokens", json={"name": "ci", "role": "viewer"}).status_code
                == 409
            )
            revoked = admin.delete(f"/api/v1/tokens/{body['id']}")
            assert revoked.status_code == 200 and revoked.json()["active"] is False
            assert revoked.json()["revoked_by"] == "token:admin"
            r = ci.get("/api/v1/rollouts")
            assert r.status_code == 401 and r.json()["detail"] == "token revoked"
        # the name is free again once its token is revoked
        assert (
            admin.post("/api/v1/tokens", json={"name": "ci", "role": "viewer"}).status_code == 201
        )
        for bad in (
            {"name": "ci2", "role": "root"},
            {"name": "with space", "role": "viewer"},
            {"name": "ci3", "role": "viewer", "extra": 1},
        ):
            assert admin.post("/api/v1/tokens", json=bad).status_code == 422, bad
        r = admin.post("/api/v1/tokens", json={"name": "ci4", "role": "viewer", "expires": "soon"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "expires"]
        assert admin.delete("/api/v1/tokens/424242").status_code == 404


def _audit(c: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    r = c.get("/api/v1/audit", params=params)
    assert r.status_code == 200, r.text
    entries: list[dict[str, Any]] = r.json()
    return entries


def test_audit_records_who_what_when_where_and_refusals(api: Api) -> None:
    before = datetime.now(UTC)
    with api.client("operator") as op:
        r = op.post("/api/v1/rollouts/7/pause")
        assert r.status_code == 404
    with api.client("viewer") as viewer:
        assert viewer.post("/api/v1/rollouts/7/abort").status_code == 403
        assert viewer.get("/api/v1/audit").status_code == 403
        assert viewer.get("/api/v1/hosts").status_code == 200  # a read: not audited
    with api.client("none") as nobody:
        assert nobody.post("/api/v1/tokens", json={"name": "x", "role": "admin"}).status_code == 401
    with api.client("revoked") as old:
        assert old.get("/api/v1/tenants").status_code == 401
    with api.client("admin") as admin:
        made = admin.post("/api/v1/tokens", json={"name": "audited", "role": "viewer"}).json()
        entries = _audit(admin, action="http")
        everything = admin.get("/api/v1/audit", params={"limit": 1000}).text
    by_path = {(e["method"], e["target"], e["actor"]): e for e in entries}
    acted = by_path[("POST", "/api/v1/rollouts/7/pause", "token:operator")]
    assert acted["role"] == "operator" and acted["status"] == 404
    assert acted["route"] == "/api/v1/rollouts/{rollout_id}/pause"
    assert acted["client"] == "127.0.0.1" and isinstance(acted["token_id"], int)
    assert before <= datetime.fromisoformat(acted["at"]) <= datetime.now(UTC)
    assert by_path[("POST", "/api/v1/rollouts/7/abort", "token:viewer")]["status"] == 403
    assert by_path[("GET", "/api/v1/audit", "token:viewer")]["status"] == 403
    assert ("GET", "/api/v1/hosts", "token:viewer") not in by_path
    assert by_path[("POST", "/api/v1/tokens", "anonymous")]["status"] == 401
    assert by_path[("GET", "/api/v1/tenants", "token:revoked")]["status"] == 401
    # the action itself is an entry besides the request
    with api.client("admin") as admin:
        (created,) = _audit(admin, action="token.create", target=f"token/{made['id']}")
    assert created["actor"] == "token:admin" and created["detail"]["role"] == "viewer"
    # no secret anywhere in the log
    for token in (*api.tokens.values(), made["token"]):
        assert token not in everything
    assert SECRET not in everything


def test_audit_filters_and_pagination(api: Api) -> None:
    with api.client("viewer") as viewer:
        for n in range(5):
            assert viewer.post(f"/api/v1/rollouts/{n}/pause").status_code == 403
    with api.client("admin") as admin:
        refused = _audit(admin, status=403, actor="token:viewer")
        assert [e["target"] for e in refused] == [
            f"/api/v1/rollouts/{n}/pause" for n in (4, 3, 2, 1, 0)
        ]
        page = _audit(admin, status=403, actor="token:viewer", limit=2, offset=1)
        assert [e["id"] for e in page] == [e["id"] for e in refused[1:3]]
        assert _audit(admin, method="post", target="/api/v1/rollouts/3/") == [refused[1]]
        future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        assert _audit(admin, since=future) == []
        assert len(_audit(admin, until=future, status=403)) == 5
        naive = (datetime.now(UTC) - timedelta(hours=1)).replace(tzinfo=None).isoformat()
        assert len(_audit(admin, since=naive, status=403)) == 5
        for bad in ({"limit": 0}, {"status": 99}, {"since": "yesterday"}, {"method": "P O"}):
            assert admin.get("/api/v1/audit", params=bad).status_code == 422, bad


def test_a_nul_in_the_path_is_audited_not_lost(api: Api) -> None:
    """PostgreSQL's text refuses NUL: the entry keeps it as ``\\x00`` instead of vanishing."""
    with api.client("viewer") as viewer:
        assert viewer.post("/api/v1/rollouts/a%00b/pause").status_code == 403
    with api.client("operator") as op:
        assert op.post("/api/v1/incidents/x%00y/comments", json={"body": "hi"}).status_code in (
            404,
            422,
        )
    with api.client("admin") as admin:
        targets = {e["target"]: e for e in _audit(admin, action="http")}
        assert targets["/api/v1/rollouts/a\\x00b/pause"]["status"] == 403
        assert "/api/v1/incidents/x\\x00y/comments" in targets
        assert admin.get("/api/v1/audit", params={"target": "a\x00"}).status_code == 422
        assert admin.get("/api/v1/audit", params={"actor": "a\x00"}).status_code == 422


def test_a_nul_anywhere_in_a_url_is_never_a_5xx(api: Api) -> None:
    """Each route with NUL in every path parameter, and each GET with NUL in every string query
    parameter its OpenAPI lists: a 4xx (PostgreSQL would raise on it in a query)."""
    with api.client("admin") as admin:
        spec = admin.get("/openapi.json").json()
        answers: dict[tuple[str, str], int] = {}
        for path, ops in spec["paths"].items():
            for method, op in ops.items():
                url = re.sub(r"\{[^}]+\}", "a%00b", path)
                params = {
                    p["name"]: "a\x00b"
                    for p in op.get("parameters", [])
                    if p["in"] == "query" and "string" in json.dumps(p["schema"])
                }
                if "{" in path:
                    answers[(method, url)] = admin.request(method.upper(), url).status_code
                if params:
                    res = admin.request(
                        method.upper(), path if "{" not in path else url, params=params
                    )
                    answers[(method, f"{path}?{sorted(params)}")] = res.status_code
    assert answers and len([k for k in answers if "?" in k[1]]) >= 5
    assert {k: v for k, v in answers.items() if v >= 500} == {}


def test_oversized_bodies_are_413(api: Api) -> None:
    big = b"{" + b" " * (1024 * 1024) + b"}"
    with api.client("admin") as admin:
        for path in (
            "/api/v1/rollouts",
            "/api/v1/tokens",
            "/api/v1/incidents/2026120101000017/comments",
        ):
            r = admin.post(path, content=big, headers={"content-type": "application/json"})
            assert r.status_code == 413, (path, r.status_code)
            assert r.json() == {"detail": "request body larger than 1048576 bytes"}

        def chunks(data: bytes) -> Iterator[bytes]:
            for i in range(0, len(data), 65536):
                yield data[i : i + 65536]

        # without a Content-Length (chunked) the limit holds too, and a small body passes
        r = admin.post(
            "/api/v1/tokens", content=chunks(big), headers={"content-type": "application/json"}
        )
        assert r.status_code == 413
        small = json.dumps({"name": "chunked", "role": "viewer"}).encode()
        r = admin.post(
            "/api/v1/tokens", content=chunks(small), headers={"content-type": "application/json"}
        )
        assert r.status_code == 201, r.text
        # a portal ticket with a screenshot may be larger (its own limit applies)
        r = admin.post(
            "/api/v1/incidents",
            data={"type": "incident", "subject": "big screenshot"},
            files={"screenshot": ("s.png", b"\x89PNG" + b"0" * (2 * 1024 * 1024), "image/png")},
        )
        assert r.status_code != 413, r.text
        refused = _audit(admin, status=413)
        assert refused and refused[0]["method"] == "POST"


def test_cors_is_off_unless_origins_are_listed(db_url: str) -> None:
    preflight = {
        "Origin": "https://ops.example",
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization",
    }
    with running_server(_settings(db_url)) as base:
        r = httpx.options(f"{base}/api/v1/hosts", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
        r = httpx.get(f"{base}/healthz", headers={"Origin": "https://ops.example"})
        assert "access-control-allow-origin" not in r.headers
    settings = _settings(db_url, cors_origins="https://ops.example, https://b.example")
    assert settings.cors_origins == ["https://ops.example", "https://b.example"]
    with running_server(settings) as base:
        r = httpx.options(f"{base}/api/v1/hosts", headers=preflight)
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://ops.example"
        r = httpx.options(
            f"{base}/api/v1/hosts", headers={**preflight, "Origin": "https://evil.example"}
        )
        assert r.headers.get("access-control-allow-origin") is None


def test_openapi_shows_the_bearer_scheme_and_each_route_s_access(api: Api) -> None:
    doc = httpx.get(f"{api.base}/openapi.json").json()
    assert doc["components"]["securitySchemes"]["token"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API token from `cpdops token create --role viewer|operator|admin`.",
    }
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            rule = EXPECTED[(method.upper(), path)]
            assert op["x-cpdops-access"] == rule, (method, path)
            assert ("security" in op) == (rule in RANK), (method, path)
            assert "Access:" in op["description"]
