"""The Telegram intake end to end, on SQLite and PostgreSQL: a real ``cpdops serve`` receives
Bot API ``Update`` bodies over HTTP, and fetches photos and documents from a local HTTP server
playing the Bot API (it checks the shape of the ``getFile`` call and the file download).
Every server a test starts is stopped by a fixture, also when the test fails."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from orchestrator.db.migrate import upgrade
from orchestrator.db.session import make_engine, make_session_factory, session_scope
from orchestrator.fleet.apply import apply_fleet
from orchestrator.fleet.fleetfile import parse_fleet_text
from orchestrator.settings import Settings
from tests.integration.server import bearer, make_token, running_server
from tests.integration.stored import assert_not_stored

SECRET = "tg-webhook-secret_for-tests"
TOKEN = "123456:ABC-test-token"
PATH = "/api/v1/intake/telegram"
HEADER = "X-Telegram-Bot-Api-Secret-Token"
ACME_CHAT = 1001
STRANGER_CHAT = 5555
PHOTO = bytes(range(256)) * 40  # 10 KiB that are not text
DB_PASSWORD = "Tg-tenant-db-pw-81"
LEAKY_FILE = "leaky"
LEAKY_ANSWER = f"Bad Request: proxy saw {HEADER}: {SECRET}, db {DB_PASSWORD}, bot{TOKEN}"


# --------------------------------------------------------------------------- a local Bot API


@dataclass
class BotApi:
    """Files by file_id → (file_path, bytes); every request is recorded."""

    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    calls: list[tuple[str, str, Any]] = field(default_factory=list)
    port: int = 0


def _bot_handler(api: BotApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _json(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(length)
            body = (
                json.loads(raw) if self.headers.get("Content-Type") == "application/json" else None
            )
            api.calls.append(("POST", self.path, body))
            if self.path != f"/bot{TOKEN}/getFile":
                self._json(
                    401 if "/bot" in self.path else 404,
                    {"ok": False, "error_code": 401, "description": "Unauthorized"},
                )
                return
            if not isinstance(body, dict) or set(body) != {"file_id"}:
                self._json(
                    400,
                    {
                        "ok": False,
                        "error_code": 400,
                        "description": "Bad Request: file_id required",
                    },
                )
                return
            if body["file_id"] == LEAKY_FILE:  # an answer that echoes server secrets
                self._json(400, {"ok": False, "error_code": 400, "description": LEAKY_ANSWER})
                return
            found = api.files.get(body["file_id"])
            if found is None:
                self._json(
                    400,
                    {"ok": False, "error_code": 400, "description": "Bad Request: invalid file_id"},
                )
                return
            path, data = found
            self._json(
                200,
                {
                    "ok": True,
                    "result": {
                        "file_id": body["file_id"],
                        "file_unique_id": "u" + body["file_id"],
                        "file_size": len(data),
                        "file_path": path,
                    },
                },
            )

        def do_GET(self) -> None:
            api.calls.append(("GET", self.path, None))
            prefix = f"/file/bot{TOKEN}/"
            match = next((d for p, d in api.files.values() if self.path == prefix + p), None)
            if match is None:
                self._json(404, {"ok": False, "error_code": 404, "description": "Not Found"})
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(match)))
            self.end_headers()
            self.wfile.write(match)

    return Handler


@pytest.fixture
def bot_api() -> Iterator[BotApi]:
    api = BotApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _bot_handler(api))
    api.port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, name="fake-bot-api", daemon=True)
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


FLEET = """
version: 1
tenants:
  - slug: acme
    name: ACME
    contacts: [{{name: Ivan, telegram_chat_id: {acme}}}]
    channels: [telegram]
  - slug: globex
    name: Globex
    contacts: [{{name: Gleb, telegram_chat_id: -100777}}]
    db_dsn: "postgresql://app:Tg-tenant-db-pw-81@127.0.0.1/globex"
notifiers:
  - {{name: bot, kind: telegram, bot_token: "{token}", api_url: "http://127.0.0.1:{port}"}}
"""


@contextlib.contextmanager
def cpdops(db_url: str, bot_port: int, secret: str | None = SECRET) -> Iterator[httpx.Client]:
    engine = make_engine(db_url)
    upgrade(engine)
    with session_scope(make_session_factory(engine)) as s:
        apply_fleet(s, parse_fleet_text(FLEET.format(acme=ACME_CHAT, token=TOKEN, port=bot_port)))
    engine.dispose()
    settings = Settings(
        database_url=db_url, run_monitors=False, run_scheduler=False, telegram_secret=secret
    )
    with (
        running_server(settings) as base,
        httpx.Client(
            base_url=base, timeout=30, headers=bearer(make_token(settings, "operator"))
        ) as client,
    ):
        yield client


def auth(secret: str = SECRET) -> dict[str, str]:
    return {HEADER: secret}


def message(
    update_id: int, chat: int = ACME_CHAT, message_id: int | None = None, **fields: Any
) -> dict[str, Any]:
    return {
        "update_id": update_id,
        "message": {
            "message_id": message_id if message_id is not None else update_id,
            "from": {"id": chat, "is_bot": False, "first_name": "Иван", "username": "ivanov"},
            "chat": {"id": chat, "type": "private"},
            "date": 1796112000,
            **fields,
        },
    }


def tickets(api: httpx.Client) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = api.get("/api/v1/incidents").json()
    return found


# --------------------------------------------------------------------------- tests


def test_disabled_without_secret_and_described(db_url: str, bot_api: BotApi) -> None:
    with cpdops(db_url, bot_api.port, secret=None) as api:
        r = api.post(PATH, json=message(1, text="hello"), headers=auth())
        assert r.status_code == 503
        assert "CPDOPS_TELEGRAM_SECRET" in r.json()["detail"]
        operation = api.get("/openapi.json").json()["paths"][PATH]["post"]
        assert HEADER in operation["description"]
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        assert "update_id" in schema["required"]
        message_schema = schema["properties"]["message"]["anyOf"][0]
        assert {"from", "chat", "photo", "document", "reply_to_message"} <= set(
            message_schema["properties"]
        )
        assert {"200", "403", "413", "422", "503"} <= set(operation["responses"])
        assert tickets(api) == []


def test_wrong_secret_bad_bodies_and_limits_store_nothing(db_url: str, bot_api: BotApi) -> None:
    with cpdops(db_url, bot_api.port) as api:
        good = message(1, text="hello")
        for headers in (
            {},
            auth("wrong"),
            auth(SECRET + "x"),
            {"Authorization": f"Bearer {SECRET}"},
        ):
            r = api.post(PATH, json=good, headers=headers)
            assert r.status_code == 403, headers
            assert HEADER in r.json()["detail"]
        r = api.post(PATH, json={"message": good["message"]}, headers=auth())
        assert (r.status_code, r.json()["detail"][0]["loc"]) == (422, ["body", "update_id"])
        bad_chat = message(2, text="x")
        bad_chat["message"]["chat"] = {"id": "not a number"}
        r = api.post(PATH, json=bad_chat, headers=auth())
        assert (r.status_code, r.json()["detail"][0]["loc"]) == (
            422,
            ["body", "message", "chat", "id"],
        )
        for raw in (b"{not json", b"\xff\xfe", b"[]"):
            assert api.post(PATH, content=raw, headers=auth()).status_code == 422
        big = b'{"update_id": 3, "pad": "' + b"x" * (1024 * 1024) + b'"}'
        assert api.post(PATH, content=big, headers=auth()).status_code == 413
        chunked = api.post(PATH, content=iter([big[:1000], big[1000:]]), headers=auth())
        assert chunked.status_code == 413
        assert tickets(api) == []
        # The same update, authenticated, is taken in (it was never stored before).
        r = api.post(PATH, json=good, headers=auth())
        assert r.status_code == 200 and r.json()["action"] == "created"


def test_messages_open_comment_and_reopen_exactly_once(db_url: str, bot_api: BotApi) -> None:
    with cpdops(db_url, bot_api.port) as api:
        first = message(100, text="Не проходят звонки на 204\nС 10:00 обрыв через 30 с")
        r = api.post(PATH, json=first, headers=auth())
        assert r.status_code == 200
        out = r.json()
        assert out["action"] == "created"
        number = out["ticket"]
        ticket = api.get(f"/api/v1/incidents/{number}").json()
        assert (ticket["type"], ticket["tenant"], ticket["source"], ticket["status"]) == (
            "consultation",
            "acme",
            "telegram",
            "new",
        )
        assert ticket["subject"] == "Не проходят звонки на 204"
        assert ticket["description"].endswith("обрыв через 30 с")
        assert ticket["events"][0]["author"] == "telegram:@ivanov"

        # Telegram retries an update until it gets 200: the same update_id, also in parallel.
        with ThreadPoolExecutor(4) as pool:
            again = list(pool.map(lambda _: api.post(PATH, json=first, headers=auth()), range(4)))
        assert {(a.status_code, a.json()["action"]) for a in again} == {(200, "duplicate")}
        assert [t["number"] for t in tickets(api)] == [number]

        # A reply to the first message comments the ticket (that message named no number).
        reply = message(
            101,
            text="Теперь и на 205",
            reply_to_message={"message_id": 100, "text": first["message"]["text"]},
        )
        r = api.post(PATH, json=reply, headers=auth())
        assert r.json() == {
            "action": "commented",
            "ticket": number,
            "attachment": None,
            "note": None,
        }

        # Solved; the customer's message naming the number reopens it.
        r = api.post(
            f"/api/v1/incidents/{number}/status",
            json={
                "status": "solution_provided",
                "comment": "Транк перерегистрирован",
                "author": "eng",
            },
        )
        assert r.status_code == 200
        r = api.post(PATH, json=message(102, text=f"#{number} снова не работает"), headers=auth())
        assert (r.json()["action"], r.json()["ticket"]) == ("commented", number)
        ticket = api.get(f"/api/v1/incidents/{number}").json()
        assert ticket["status"] == "open"
        comments = [e for e in ticket["events"] if e["kind"] == "comment"]
        assert [(c["body"], c["data"]["customer"]) for c in comments] == [
            ("Теперь и на 205", True),
            (f"#{number} снова не работает", True),
        ]
        assert ticket["events"][-1]["data"]["reason"] == "customer_reply"

        # A reply to the bot's notification that names the ticket comments it, too.
        notice = {"message_id": 9000, "text": f"[Ticket#{number}] Статус: «В работе»"}
        r = api.post(
            PATH, json=message(103, text="спасибо", reply_to_message=notice), headers=auth()
        )
        assert (r.json()["action"], r.json()["ticket"]) == ("commented", number)

        # A stranger naming acme's ticket opens a ticket of their own, without tenant.
        r = api.post(
            PATH,
            json=message(104, chat=STRANGER_CHAT, text=f"[Ticket#{number}] hi"),
            headers=auth(),
        )
        stranger = r.json()
        assert stranger["action"] == "created" and stranger["ticket"] != number
        assert api.get(f"/api/v1/incidents/{stranger['ticket']}").json()["tenant"] is None
        # … and may follow up on that one by its number.
        r = api.post(
            PATH,
            json=message(105, chat=STRANGER_CHAT, text=f"#{stranger['ticket']} more"),
            headers=auth(),
        )
        assert (r.json()["action"], r.json()["ticket"]) == ("commented", stranger["ticket"])

        # Other update kinds and /start are answered 200 and kept nowhere.
        edited = {"update_id": 106, "edited_message": first["message"]}
        assert api.post(PATH, json=edited, headers=auth()).json()["action"] == "ignored"
        assert (
            api.post(PATH, json=message(107, text="/start"), headers=auth()).json()["action"]
            == "ignored"
        )
        assert len(tickets(api)) == 2
        events = api.get(f"/api/v1/incidents/{number}").json()["events"]
        assert sum(e["kind"] == "comment" for e in events) == 3


def test_photo_and_document_are_fetched_through_the_bot_api(db_url: str, bot_api: BotApi) -> None:
    bot_api.files["big-photo"] = ("photos/file_7.jpg", PHOTO)
    bot_api.files["log-doc"] = ("documents/file_8.txt", "журнал\n".encode())
    with cpdops(db_url, bot_api.port) as api:
        photo = message(
            200,
            caption="Ошибка на портале",
            photo=[
                {
                    "file_id": "small-photo",
                    "file_unique_id": "s1",
                    "width": 90,
                    "height": 60,
                    "file_size": 900,
                },
                {
                    "file_id": "big-photo",
                    "file_unique_id": "b1",
                    "width": 1280,
                    "height": 853,
                    "file_size": len(PHOTO),
                },
            ],
        )
        r = api.post(PATH, json=photo, headers=auth())
        out = r.json()
        assert r.status_code == 200 and out["action"] == "created" and out["note"] is None
        number = out["ticket"]
        # getFile asked once, for the largest size, as JSON {"file_id"}; then the file URL.
        assert bot_api.calls == [
            ("POST", f"/bot{TOKEN}/getFile", {"file_id": "big-photo"}),
            ("GET", f"/file/bot{TOKEN}/photos/file_7.jpg", None),
        ]
        ticket = api.get(f"/api/v1/incidents/{number}").json()
        assert ticket["subject"] == "Ошибка на портале"
        [att] = ticket["attachments"]
        assert att["id"] == out["attachment"]
        assert (att["filename"], att["content_type"], att["size"]) == (
            "photo-b1.jpg",
            "image/jpeg",
            len(PHOTO),
        )
        got = api.get(f"/api/v1/incidents/{number}/attachments/{att['id']}")
        assert got.content == PHOTO

        # The same update again: no second download, no second attachment.
        assert api.post(PATH, json=photo, headers=auth()).json()["action"] == "duplicate"
        assert len(bot_api.calls) == 2

        # A document replying to the photo joins the ticket as a comment with its file.
        doc = message(
            201,
            document={
                "file_id": "log-doc",
                "file_unique_id": "d1",
                "file_name": "портал.log",
                "mime_type": "text/plain",
            },
            reply_to_message={"message_id": 200, "caption": "Ошибка на портале"},
        )
        out = api.post(PATH, json=doc, headers=auth()).json()
        assert (out["action"], out["ticket"]) == ("commented", number)
        ticket = api.get(f"/api/v1/incidents/{number}").json()
        assert [a["filename"] for a in ticket["attachments"]] == ["photo-b1.jpg", "портал.log"]
        assert [e["body"] for e in ticket["events"] if e["kind"] == "comment"] == ["(портал.log)"]

        # A file the Bot API does not know, or one over the limit: the message is kept, the
        # failure is on the timeline, the token is not.
        missing = message(202, caption="ещё", document={"file_id": "gone", "file_name": "x.bin"})
        out = api.post(PATH, json=missing, headers=auth()).json()
        assert out["action"] == "created" and out["attachment"] is None
        assert "invalid file_id" in out["note"] and TOKEN not in out["note"]
        huge = message(
            203,
            caption="огромный",
            document={"file_id": "h", "file_name": "h.bin", "file_size": 50 * 1024 * 1024},
        )
        calls = len(bot_api.calls)
        out = api.post(PATH, json=huge, headers=auth()).json()
        assert out["action"] == "created" and "more than 10485760" in out["note"]
        assert len(bot_api.calls) == calls  # not even asked
        ticket = api.get(f"/api/v1/incidents/{out['ticket']}").json()
        assert ticket["attachments"] == []
        [failed] = [e for e in ticket["events"] if e["kind"] == "attachment_failed"]
        assert failed["body"].startswith("h.bin: ")


def test_known_secrets_in_a_bot_api_answer_never_reach_the_ticket(
    db_url: str, bot_api: BotApi
) -> None:
    """The Bot API (or a proxy before it) answers a getFile with the intake secret, a tenant's
    DB password and the bot token in its error text: the note cpdops writes on the timeline
    (and answers) holds none of them, through the API and in the database."""
    assert DB_PASSWORD in FLEET
    leaked = (SECRET, DB_PASSWORD, TOKEN)
    with cpdops(db_url, bot_api.port) as api:
        update = message(301, caption="лог", document={"file_id": LEAKY_FILE, "file_name": "a"})
        r = api.post(PATH, json=update, headers=auth())
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["action"] == "created" and out["note"].startswith("a: getFile answered 400")
        ticket = api.get(f"/api/v1/incidents/{out['ticket']}")
        [failed] = [e for e in ticket.json()["events"] if e["kind"] == "attachment_failed"]
        for text in (r.text, ticket.text):
            for secret in leaked:
                assert secret not in text, (secret, text)
        assert "proxy saw" in failed["body"] and "***" in failed["body"], failed
    assert_not_stored(db_url, ("incidents", "incident_events"), leaked)
