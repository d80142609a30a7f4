"""The list routes page (``limit``/``offset``, default: all) and filter, on SQLite and
PostgreSQL, through a real ``cpdops serve``."""

from __future__ import annotations

from orchestrator.context import build_context
from orchestrator.db.session import session_scope
from orchestrator.fleet.apply import apply_fleet
from orchestrator.fleet.fleetfile import parse_fleet_text
from orchestrator.settings import Settings
from tests.integration.server import api_client

FLEET = """\
version: 1
hosts:
  - {name: h1, url: "unix:///nonexistent-h1.sock"}
  - {name: h2, url: "unix:///nonexistent-h2.sock"}
tenants:
  - {slug: acme, name: Acme, ring: canary, host: h1}
  - {slug: globex, name: Globex, host: h2}
  - {slug: initech, name: Initech, host: h1}
monitors:
  declared:
    - {name: portal, tenant: acme, kind: http, target: "http://127.0.0.1:9/health"}
    - {name: sip, tenant: acme, kind: tcp, target: "tcp://127.0.0.1:9"}
    - {name: portal, tenant: globex, kind: http, target: "http://127.0.0.1:9/health"}
"""


def test_lists_page_and_filter(db_url: str) -> None:
    settings = Settings(database_url=db_url, run_monitors=False, run_scheduler=False)
    ctx = build_context(settings)
    try:
        with session_scope(ctx.factory) as s:
            apply_fleet(s, parse_fleet_text(FLEET))
    finally:
        ctx.close()
    with api_client(settings, "viewer") as api:

        def slugs(**params: object) -> list[str]:
            resp = api.get("/api/v1/tenants", params=params)
            assert resp.status_code == 200, resp.text
            return [t["slug"] for t in resp.json()]

        assert slugs() == ["acme", "globex", "initech"]  # no limit: everything
        assert slugs(limit=2) == ["acme", "globex"]
        assert slugs(limit=2, offset=2) == ["initech"]
        assert slugs(offset=5) == []
        assert slugs(host="h1") == ["acme", "initech"]
        assert slugs(host="h1", ring="canary") == ["acme"]

        hosts = api.get("/api/v1/hosts", params={"limit": 1, "offset": 1}).json()
        assert [h["name"] for h in hosts] == ["h2"]

        def monitors(**params: object) -> list[str]:
            resp = api.get("/api/v1/monitors", params=params)
            assert resp.status_code == 200, resp.text
            return [m["id"] for m in resp.json()]

        assert monitors() == ["acme/portal", "acme/sip", "globex/portal"]
        assert monitors(kind="http") == ["acme/portal", "globex/portal"]
        assert monitors(tenant="acme", kind="tcp") == ["acme/sip"]
        assert monitors(status="pending", limit=1, offset=1) == ["acme/sip"]
        assert monitors(status="down") == []

        for path in ("/api/v1/tenants", "/api/v1/hosts", "/api/v1/monitors"):
            bad = api.get(path, params={"limit": 0})
            assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == [
                "query",
                "limit",
            ], bad.text
            assert api.get(path, params={"offset": -1}).status_code == 422
