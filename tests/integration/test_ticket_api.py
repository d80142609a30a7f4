"""The ticket workflow through a real ``cpdops serve`` on SQLite and PostgreSQL: portal intake
(JSON and multipart with a screenshot), comments, status, priorities, attachments, filters, and
4xx (never 5xx) for bad input."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import httpx
import pytest

from orchestrator.context import build_context
from orchestrator.db.models import Tenant
from orchestrator.db.session import session_scope
from orchestrator.incidents.attachments import MAX_ATTACHMENT_BYTES
from orchestrator.incidents.numbers import is_valid_number
from orchestrator.incidents.tickets import open_or_join
from orchestrator.settings import Settings
from tests.integration.server import api_client

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40


@pytest.fixture
def db(db_url: str) -> str:
    ctx = build_context(Settings(database_url=db_url))
    try:
        with session_scope(ctx.factory) as s:
            s.add_all([Tenant(slug="acme", name="ACME"), Tenant(slug="globex", name="Globex")])
    finally:
        ctx.close()
    return db_url


@pytest.fixture
def api(db: str) -> Iterator[httpx.Client]:
    settings = Settings(
        database_url=db,
        run_monitors=False,
        run_scheduler=False,
        local_docker_url="unix:///nonexistent.sock",
    )
    with api_client(settings) as client:
        yield client


def _create(api: httpx.Client, **fields: object) -> dict:  # type: ignore[type-arg]
    body = {"type": "incident", "subject": "Calls drop", "tenant": "acme", **fields}
    res = api.post("/api/v1/incidents", json=body)
    assert res.status_code == 201, res.text
    return res.json()  # type: ignore[no-any-return]


def test_portal_intake_json_and_multipart(api: httpx.Client) -> None:
    t = _create(api, description="since 10:00", priority="high")
    assert is_valid_number(t["number"]) and t["status"] == "new" and t["priority"] == "high"
    assert t["source"] == "portal" and t["labels"]["priority"] == {"ru": "Высокий", "en": "High"}
    assert [e["kind"] for e in t["events"]] == ["created"]
    res = api.post(
        "/api/v1/incidents",
        data={
            "type": "consultation",
            "subject": "Как настроить переадресацию?",
            "tenant": "globex",
        },
        files={"screenshot": ("снимок.png", PNG, "image/png")},
    )
    assert res.status_code == 201, res.text
    m = res.json()
    assert m["type"] == "consultation" and m["tenant"] == "globex" and m["number"] != t["number"]
    (att,) = m["attachments"]
    assert att["filename"] == "снимок.png" and att["size"] == len(PNG)
    assert att["content_type"] == "image/png"
    got = api.get(f"/api/v1/incidents/{m['number']}/attachments/{att['id']}")
    assert got.status_code == 200 and got.content == PNG
    assert got.headers["content-type"] == "application/octet-stream"  # as documented
    assert got.headers["content-disposition"].startswith("attachment;")
    assert api.get(f"/api/v1/incidents/{t['number']}/attachments/{att['id']}").status_code == 404
    # without a screenshot, multipart works as well
    res = api.post("/api/v1/incidents", data={"type": "development_request", "subject": "API"})
    assert res.status_code == 201 and res.json()["tenant"] is None


def test_intake_refuses_bad_input_naming_the_field(api: httpx.Client) -> None:
    cases = [
        ({"type": "bug", "subject": "s"}, 422, "type"),
        ({"type": "incident", "subject": "s", "priority": "urgent"}, 422, "priority"),
        ({"type": "incident", "subject": "s", "tenant": "nope"}, 404, "tenant"),
        ({"type": "incident", "subject": "s", "tenant": "No Pe"}, 422, "tenant"),
        ({"type": "incident"}, 422, "subject"),
        ({"type": "incident", "subject": ""}, 422, "subject"),
        ({"type": "incident", "subject": "a\x00b"}, 422, "subject"),
        ({"type": "incident", "subject": "s" * 501}, 422, "subject"),
        ({"type": "incident", "subject": "s", "colour": "blue"}, 422, "colour"),
    ]
    for body, code, field in cases:
        res = api.post("/api/v1/incidents", json=body)
        assert res.status_code == code, (body, res.text)
        assert field in res.text, (body, res.text)
    for raw, ctype in [
        (b"{not json", "application/json"),
        (b"[1, 2]", "application/json"),
        (b"\xff\xfe", "application/json"),
        (b"type=incident", "text/plain"),
        (b"--x\r\nbroken", "multipart/form-data; boundary=x"),
        (b"", "multipart/form-data"),
    ]:
        res = api.post("/api/v1/incidents", content=raw, headers={"content-type": ctype})
        assert 400 <= res.status_code < 500, (raw, res.status_code, res.text)
        assert "detail" in res.json()
    res = api.post(
        "/api/v1/incidents",
        data={"type": "incident", "subject": "s"},
        files={"screenshot": ("big.png", b"x" * (MAX_ATTACHMENT_BYTES + 1), "image/png")},
    )
    assert res.status_code == 413 and "screenshot" in res.json()["detail"]
    res = api.post(
        "/api/v1/incidents",
        data={"type": "incident", "subject": "s"},
        files={"other": ("a.txt", b"x", "text/plain")},
    )
    assert res.status_code == 400 and "other" in res.json()["detail"]
    assert len(api.get("/api/v1/incidents").json()) == 0, "nothing was created"


def test_workflow_through_the_api(api: httpx.Client) -> None:
    n = _create(api)["number"]
    url = f"/api/v1/incidents/{n}"
    res = api.post(
        f"{url}/status",
        json={"status": "awaiting_info", "author": "eng", "comment": "which extension?"},
    )
    assert res.status_code == 200 and res.json()["status"] == "awaiting_info"
    res = api.post(f"{url}/comments", json={"author": "anna", "body": "204", "customer": True})
    assert res.status_code == 201 and res.json()["status"] == "open"
    res = api.post(f"{url}/status", json={"status": "solution_provided", "author": "eng"})
    assert res.status_code == 422 and res.json()["detail"][0]["loc"][-1] == "comment"
    res = api.post(
        f"{url}/status",
        json={"status": "solution_provided", "author": "eng", "comment": "re-registered 204"},
    )
    assert res.status_code == 200
    body = res.json()
    assert body["status"] == "solution_provided"
    assert body["status_label"] == "Решение предоставлено"
    assert body["events"][-1]["kind"] == "solution"
    assert body["events"][-1]["body"] == "re-registered 204"
    res = api.post(f"{url}/status", json={"status": "awaiting_info", "author": "eng"})
    assert res.status_code == 409
    assert "from solution_provided" in res.json()["detail"]
    assert res.json()["current"] == "solution_provided"
    assert res.json()["allowed"] == ["open", "closed"]
    assert "open, closed" in res.json()["detail"]
    res = api.post(f"{url}/priority", json={"priority": "critical", "author": "eng"})
    assert res.status_code == 200 and res.json()["priority"] == "critical"
    res = api.post(f"{url}/status", json={"status": "closed", "author": "eng"})
    assert res.status_code == 200 and res.json()["status"] == "closed"
    timeline = api.get(url).json()["events"]
    assert [(e["kind"], e["author"]) for e in timeline] == [
        ("created", "portal"),
        ("status", "eng"),
        ("comment", "anna"),
        ("status", "anna"),
        ("solution", "eng"),
        ("priority", "eng"),
        ("status", "eng"),
    ]
    for path, body in [
        ("comments", {"author": "a", "body": ""}),
        ("comments", {"author": "", "body": "x"}),
        ("comments", {"author": "a" * 101, "body": "x"}),
        ("status", {"status": "reopened", "author": "a"}),
        ("status", {"author": "a"}),
        ("priority", {"priority": "urgent", "author": "a"}),
    ]:
        res = api.post(f"{url}/{path}", json=body)
        assert res.status_code == 422, (path, body, res.text)
    for bad in ["2026120101000010", "x", "%00", "1" * 400]:
        for res in (
            api.get(f"/api/v1/incidents/{bad}"),
            api.post(f"/api/v1/incidents/{bad}/comments", json={"author": "a", "body": "x"}),
            api.get(f"/api/v1/incidents/{bad}/attachments/1"),
        ):
            assert res.status_code == 404, (bad, res.text)
    assert api.get(f"{url}/attachments/99999999999").status_code == 422


def test_children_parent_and_closing_the_mass_incident(api: httpx.Client, db: str) -> None:
    ctx = build_context(Settings(database_url=db), migrate=False)
    try:
        with session_scope(ctx.factory) as s:
            mass, _ = open_or_join(
                s,
                system_id="01",
                open_key="mass:x",
                type="mass_incident",
                subject="5 tenants DOWN",
                description="",
                author="cpdops",
                source="monitor",
            )
            kids = []
            for tenant in ("acme", "globex"):
                kid, _ = open_or_join(
                    s,
                    system_id="01",
                    open_key=f"tenant:{tenant}",
                    type="incident",
                    subject=f"{tenant} DOWN",
                    description="",
                    author="cpdops",
                    source="monitor",
                    tenant=tenant,
                )
                s.flush()
                kid.parent_id = mass.id
                kids.append(kid.number)
            number = mass.number
    finally:
        ctx.close()
    detail = api.get(f"/api/v1/incidents/{number}").json()
    assert [c["number"] for c in detail["children"]] == kids and detail["parent"] is None
    assert api.get(f"/api/v1/incidents/{kids[0]}").json()["parent"]["number"] == number
    res = api.post(f"/api/v1/incidents/{number}/status", json={"status": "closed", "author": "eng"})
    assert res.status_code == 200
    assert {c["status"] for c in res.json()["children"]} == {"closed"}
    kid = api.get(f"/api/v1/incidents/{kids[1]}").json()
    assert kid["events"][-1]["body"] == f"Closed with mass incident {number}"


def test_list_filters_and_pagination(api: httpx.Client) -> None:
    a = _create(api, priority="low")["number"]
    b = _create(api, type="consultation", tenant="globex")["number"]
    c = _create(api, priority="critical")["number"]
    api.post(f"/api/v1/incidents/{c}/status", json={"status": "open", "author": "eng"})

    def numbers(**params: object) -> list[str]:
        res = api.get("/api/v1/incidents", params=params)
        assert res.status_code == 200, res.text
        return [i["number"] for i in res.json()]

    assert numbers() == [c, b, a]
    assert numbers(type="consultation") == [b]
    assert numbers(tenant="acme") == [c, a]
    assert numbers(priority="critical") == [c]
    assert numbers(status="open") == [c]
    assert numbers(limit=1, offset=1) == [b]
    assert numbers(offset=5) == []
    for params in (
        {"type": "bug"},
        {"limit": 0},
        {"offset": -1},
        {"tenant": "a\x00"},
        {"status": "x"},
        {"priority": "x"},
        {"limit": "a"},
    ):
        res = api.get("/api/v1/incidents", params=params)
        assert res.status_code == 422, (params, res.text)


def test_numbers_unique_when_the_portal_is_busy(api: httpx.Client) -> None:
    numbers: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        for _ in range(5):
            res = api.post("/api/v1/incidents", json={"type": "incident", "subject": "busy"})
            with lock:
                if res.status_code == 201:
                    numbers.append(res.json()["number"])
                else:
                    errors.append(res.text)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(numbers) == 40 and len(set(numbers)) == 40
    assert all(is_valid_number(n) for n in numbers)
    assert sorted(int(n[10:15]) for n in numbers) == list(range(1, 41))


def test_openapi_documents_the_ticket_endpoints(api: httpx.Client) -> None:
    spec = api.get("/openapi.json").json()
    paths = spec["paths"]
    post = paths["/api/v1/incidents"]["post"]
    assert post["summary"] == "Portal intake: open a ticket"
    content = post["requestBody"]["content"]
    assert set(content) == {
        "application/json",
        "multipart/form-data",
        "application/x-www-form-urlencoded",
    }
    assert "screenshot" in content["multipart/form-data"]["schema"]["properties"]
    assert content["application/json"]["schema"]["properties"]["type"]["enum"] == [
        "incident",
        "mass_incident",
        "consultation",
        "development_request",
    ]
    assert {"201", "413", "422"} <= set(post["responses"])
    for path, method in [
        ("/api/v1/incidents/{number}/comments", "post"),
        ("/api/v1/incidents/{number}/status", "post"),
        ("/api/v1/incidents/{number}/priority", "post"),
        ("/api/v1/incidents/{number}", "get"),
        ("/api/v1/incidents/{number}/attachments/{attachment_id}", "get"),
    ]:
        op = paths[path][method]
        assert op["summary"] and op["description"], path
    assert "409" in paths["/api/v1/incidents/{number}/status"]["post"]["responses"]


def test_oversized_body_is_413(api: httpx.Client) -> None:
    res = api.post(
        "/api/v1/incidents",
        content=b'{"type": "incident", "subject": "' + b"x" * (12 * 1024 * 1024) + b'"}',
        headers={"content-type": "application/json"},
    )
    assert res.status_code == 413 and "detail" in res.json()


def test_no_input_gives_a_5xx(api: httpx.Client) -> None:
    number = _create(api)["number"]
    rng = random.Random(5)
    values: list[object] = [None, 0, -1, 2**70, 1.5, True, "", "x" * 600, "\x00", "ü", [], {}, [1]]
    keys = [
        "type",
        "subject",
        "description",
        "tenant",
        "priority",
        "author",
        "body",
        "customer",
        "status",
        "comment",
        "x",
    ]
    paths = [
        "/api/v1/incidents",
        f"/api/v1/incidents/{number}/comments",
        f"/api/v1/incidents/{number}/status",
        f"/api/v1/incidents/{number}/priority",
    ]
    for _ in range(150):
        body = {k: rng.choice(values) for k in rng.sample(keys, rng.randint(0, len(keys)))}
        path = rng.choice(paths)
        res = api.post(path, json=body)
        assert res.status_code < 500, (path, body, res.text)
        raw = bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
        for ctype in (
            "application/json",
            "multipart/form-data; boundary=b",
            "application/x-www-form-urlencoded",
        ):
            res = api.post(path, content=raw, headers={"content-type": ctype})
            assert res.status_code < 500, (path, raw, ctype, res.text)
    for query in ("limit=99999999999999999999", "offset=1e3", "tenant=%FF", "type=", "status=%00"):
        res = api.get(f"/api/v1/incidents?{query}")
        assert res.status_code < 500, (query, res.text)
