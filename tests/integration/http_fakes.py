"""Local stand-ins for the services the HTTP notifiers talk to (the Telegram cloud, a webhook
receiver, a Znuny server), each on 127.0.0.1: they check every field of the documented request
shape and answer like the real service, errors included. A request that breaks the shape is
kept in ``problems`` (and answered with the service's own error), so a test asserts there are
none. A server can be stopped and started again on the same port, keeping its state: a
connector that is down for a while."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # close the connection without answering (the answer is lost)


class Service:
    """A fake service: ``handle`` gets every request and returns the reply."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[Request] = []
        self.problems: list[str] = []

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def handle(self, req: Request) -> Reply:  # pragma: no cover - overridden
        raise NotImplementedError


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        req = Request(
            self.command,
            parts.path,
            parse_qs(parts.query, keep_blank_values=True),
            {k.lower(): v for k, v in self.headers.items()},
            body,
        )
        service = self.server.service
        with service.lock:
            service.requests.append(req)
            reply = service.handle(req)
        if reply.drop:
            self.close_connection = True
            return
        data = b"" if reply.body is None else json.dumps(reply.body).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _any

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, service: Service) -> None:
        self.service = service
        super().__init__(("127.0.0.1", port), _Handler)


class HttpServer:
    """``service`` on a port of its own; ``stop()``/``start()`` keep the port and the state."""

    def __init__(self, service: Service) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.service = service
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._server = _Server(self.port, self.service)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None


def _utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


# --------------------------------------------------------------------------- Telegram


class FakeTelegram(Service):
    """The Bot API's ``sendMessage``: ``POST /bot<token>/sendMessage`` with JSON."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token
        self.sent: list[tuple[int | str, str]] = []  # (chat_id, text), accepted ones
        self.flood: dict[int | str, int] = {}  # chat → retry_after for its next message
        self.ids = itertools.count(1)

    def _error(self, code: int, description: str, **extra: Any) -> Reply:
        return Reply(code, {"ok": False, "error_code": code, "description": description, **extra})

    def handle(self, req: Request) -> Reply:
        if req.path != f"/bot{self.token}/sendMessage":
            if req.path.endswith("/sendMessage"):
                return self._error(401, "Unauthorized")
            return self._error(404, "Not Found")
        if req.method != "POST" or not req.headers.get("content-type", "").startswith(
            "application/json"
        ):
            self.problem(f"{req.method} {req.headers.get('content-type')}")
            return self._error(400, "Bad Request: not a JSON POST")
        try:
            body = req.json()
        except ValueError:
            self.problem("body is not JSON")
            return self._error(400, "Bad Request: invalid JSON")
        if set(body) != {"chat_id", "text"}:
            self.problem(f"fields {sorted(body)}")
        chat, text = body.get("chat_id"), body.get("text")
        if not isinstance(chat, int | str) or isinstance(chat, bool):
            self.problem(f"chat_id {chat!r}")
            return self._error(400, "Bad Request: chat_id is empty")
        if not isinstance(text, str) or not text.strip():
            self.problem("empty text")
            return self._error(400, "Bad Request: message text is empty")
        if _utf16(text) > 4096:
            self.problem(f"text of {_utf16(text)} UTF-16 units")
            return self._error(400, "Bad Request: message is too long")
        if chat in self.flood:
            retry = self.flood.pop(chat)
            return self._error(
                429, f"Too Many Requests: retry after {retry}", parameters={"retry_after": retry}
            )
        self.sent.append((chat, text))
        message = {"message_id": next(self.ids), "chat": {"id": chat}, "date": 0, "text": text}
        return Reply(200, {"ok": True, "result": message})


# --------------------------------------------------------------------------- webhook


class FakeReceiver(Service):
    """A webhook receiver that does what the docs tell one to: verify the signature, act
    once per idempotency key. ``answers`` are the statuses of the next requests (then 204)."""

    FIELDS = frozenset(
        {
            "event_id",
            "dedup_key",
            "number",
            "type",
            "status",
            "priority",
            "kind",
            "subject",
            "comment",
            "tenant",
            "ticket_tenant",
            "language",
        }
    )

    def __init__(self, secret: str, path: str = "/hooks/cpdops") -> None:
        super().__init__()
        self.secret = secret
        self.path = path
        self.answers: list[Reply] = []
        self.events: dict[str, dict[str, Any]] = {}  # idempotency key → body, acted on once
        self.deliveries: list[Request] = []  # every authentic POST

    def handle(self, req: Request) -> Reply:
        if req.path != self.path or req.method != "POST":
            self.problem(f"{req.method} {req.path}")
            return Reply(404)
        if req.headers.get("content-type") != "application/json; charset=utf-8":
            self.problem(f"content-type {req.headers.get('content-type')}")
        expected = "sha256=" + hmac.new(self.secret.encode(), req.body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(req.headers.get("x-cpdops-signature", ""), expected):
            self.problem("bad signature")
            return Reply(401)
        if not req.headers.get("x-cpdops-timestamp", "").isdigit():
            self.problem("no timestamp")
        body = req.json()
        if set(body) != self.FIELDS:
            self.problem(f"fields {sorted(body)}")
        key = req.headers.get("idempotency-key", "")
        if not key or key != body.get("dedup_key"):
            self.problem(f"idempotency key {key!r} vs {body.get('dedup_key')!r}")
        if req.headers.get("x-cpdops-event") != body.get("kind"):
            self.problem("event header")
        self.deliveries.append(req)
        if self.answers:
            return self.answers.pop(0)
        self.events.setdefault(key, body)
        return Reply(204)


# --------------------------------------------------------------------------- Znuny


@dataclass
class ZnunyTicket:
    ticket_id: str
    number: str
    ticket: dict[str, Any]
    dynamic: dict[str, str]
    articles: list[dict[str, Any]]
    attachments: list[dict[str, Any]]
    states: list[str]


class FakeZnuny(Service):
    """``GenericTicketConnectorREST`` of a Znuny with stock states, priorities and types:
    TicketCreate (POST /Ticket), TicketSearch (GET /Ticket), TicketGet (GET /Ticket/:id),
    TicketUpdate (PATCH /Ticket/:id). Errors come as ``{"Error": {...}}`` with HTTP 200."""

    STATES = frozenset(
        {
            "new",
            "open",
            "closed successful",
            "closed unsuccessful",
            "pending reminder",
            "pending auto close+",
            "pending auto close-",
        }
    )
    PRIORITIES = frozenset({"1 very low", "2 low", "3 normal", "4 high", "5 very high"})
    TYPES = frozenset({"Unclassified"})
    ARTICLE = frozenset(
        {
            "CommunicationChannel",
            "SenderType",
            "IsVisibleForCustomer",
            "Subject",
            "Body",
            "ContentType",
        }
    )

    def __init__(
        self,
        *,
        webservice: str = "CPD",
        login: str = "cpdops",
        password: str = "zn-s3cret",
        queues: frozenset[str] = frozenset({"Support"}),
        dynamic_fields: frozenset[str] = frozenset({"CpdopsKey", "CpdopsTicketNumber"}),
    ) -> None:
        super().__init__()
        self.base = f"/otrs/nph-genericinterface.pl/Webservice/{webservice}/Ticket"
        self.login, self.password = login, password
        self.queues, self.dynamic_fields = queues, dynamic_fields
        self.tickets: dict[str, ZnunyTicket] = {}
        self.ids = itertools.count(101)
        self.articles = itertools.count(9001)
        self.error_next: list[str] = []  # operations whose next call answers an Error
        self.drop_next_create_answer = False

    @staticmethod
    def error(code: str, message: str) -> Reply:
        return Reply(200, {"Error": {"ErrorCode": code, "ErrorMessage": message}})

    def _auth(self, login: Any, password: Any, operation: str) -> Reply | None:
        if login != self.login or password != self.password:
            return self.error(f"{operation}.AuthFail", f"{operation}: Authorization failing!")
        return None

    def handle(self, req: Request) -> Reply:
        if req.path == self.base and req.method == "POST":
            return self._create(req)
        if req.path == self.base and req.method == "GET":
            return self._search(req)
        if req.path.startswith(self.base + "/"):
            ticket_id = req.path[len(self.base) + 1 :]
            if req.method == "GET":
                return self._get(req, ticket_id)
            if req.method == "PATCH":
                return self._update(req, ticket_id)
        self.problem(f"{req.method} {req.path}")
        return Reply(404, {"Error": {"ErrorCode": "Provider.InvalidMethod"}})

    def _json_body(self, req: Request) -> dict[str, Any] | None:
        if not req.headers.get("content-type", "").startswith("application/json"):
            self.problem(f"content-type {req.headers.get('content-type')}")
        try:
            body = req.json()
        except ValueError:
            self.problem("body is not JSON")
            return None
        return body if isinstance(body, dict) else None

    def _check_article(self, article: Any, operation: str) -> str | None:
        if not isinstance(article, dict) or set(article) != self.ARTICLE:
            self.problem(f"{operation} Article {article!r}")
            return "Article is invalid"
        if article["CommunicationChannel"] != "Internal" or article["SenderType"] != "system":
            self.problem(f"{operation} Article channel/sender")
        if article["ContentType"] != "text/plain; charset=utf8":
            self.problem(f"{operation} ContentType {article['ContentType']}")
        if not article["Subject"] or not article["Body"]:
            return "Article->Subject and Article->Body are required"
        return None

    def _check_state(self, ticket: dict[str, Any], operation: str) -> str | None:
        state = ticket.get("State")
        if state not in self.STATES:
            return f"Ticket->State {state!r} is invalid"
        pending = ticket.get("PendingTime")
        if state.startswith("pending"):
            if not isinstance(pending, dict) or not isinstance(pending.get("Diff"), int):
                self.problem(f"{operation} pending state without PendingTime")
                return "Ticket->PendingTime is required for a pending state"
        elif pending is not None:
            self.problem(f"{operation} PendingTime for {state}")
        return None

    def _create(self, req: Request) -> Reply:
        body = self._json_body(req)
        if body is None:
            return self.error("TicketCreate.MissingParameter", "no data")
        if denied := self._auth(body.get("UserLogin"), body.get("Password"), "TicketCreate"):
            return denied
        if "TicketCreate" in self.error_next:
            self.error_next.remove("TicketCreate")
            return self.error("TicketCreate.InvalidParameter", "Ticket->Queue is invalid!")
        allowed = {"UserLogin", "Password", "Ticket", "Article", "DynamicField", "Attachment"}
        if not set(body) <= allowed or not {"Ticket", "Article", "DynamicField"} <= set(body):
            self.problem(f"TicketCreate fields {sorted(body)}")
        ticket = body.get("Ticket")
        required = {"Title", "Queue", "State", "Priority", "CustomerUser", "Type"}
        if not isinstance(ticket, dict) or not required <= set(ticket) <= required | {
            "PendingTime"
        }:
            self.problem(f"TicketCreate Ticket {ticket!r}")
            return self.error("TicketCreate.MissingParameter", "Ticket is invalid")
        if ticket["Queue"] not in self.queues:
            return self.error("TicketCreate.InvalidParameter", "Ticket->Queue is invalid!")
        if ticket["Priority"] not in self.PRIORITIES or ticket["Type"] not in self.TYPES:
            self.problem(f"TicketCreate priority/type {ticket['Priority']}/{ticket['Type']}")
            return self.error("TicketCreate.InvalidParameter", "Priority or Type is invalid!")
        if (bad := self._check_state(ticket, "TicketCreate")) or (
            bad := self._check_article(body.get("Article"), "TicketCreate")
        ):
            return self.error("TicketCreate.InvalidParameter", bad)
        if not ticket["Title"] or "@" not in str(ticket["CustomerUser"]):
            self.problem(f"TicketCreate Title/CustomerUser {ticket!r}")
        dynamic: dict[str, str] = {}
        for item in body.get("DynamicField") or []:
            if not isinstance(item, dict) or set(item) != {"Name", "Value"}:
                self.problem(f"DynamicField item {item!r}")
                continue
            if item["Name"] not in self.dynamic_fields:
                return self.error(
                    "TicketCreate.InvalidParameter", f"DynamicField->Name {item['Name']} invalid"
                )
            dynamic[item["Name"]] = str(item["Value"])
        attachments = []
        for item in body.get("Attachment") or []:
            if not isinstance(item, dict) or set(item) != {"Content", "ContentType", "Filename"}:
                self.problem(f"Attachment item {item!r}")
                continue
            try:
                content = base64.b64decode(item["Content"], validate=True)
            except ValueError:
                self.problem("Attachment->Content is not base64")
                continue
            attachments.append({**item, "Content": content})
        ticket_id = str(next(self.ids))
        number = f"2026120210000{ticket_id}"
        self.tickets[ticket_id] = ZnunyTicket(
            ticket_id,
            number,
            dict(ticket),
            dynamic,
            [body["Article"]],
            attachments,
            [ticket["State"]],
        )
        if self.drop_next_create_answer:
            self.drop_next_create_answer = False
            return Reply(200, drop=True)
        answer = {"TicketID": ticket_id, "TicketNumber": number, "ArticleID": next(self.articles)}
        return Reply(200, answer)

    def _query_auth(self, req: Request, operation: str) -> Reply | None:
        login = req.query.get("UserLogin", [None])[0]
        password = req.query.get("Password", [None])[0]
        return self._auth(login, password, operation)

    def _search(self, req: Request) -> Reply:
        if (denied := self._query_auth(req, "TicketSearch")) is not None:
            return denied
        wanted = {
            k[len("DynamicField_") :]: v[0] for k, v in req.query.items() if k.startswith("Dyn")
        }
        if set(req.query) - {"UserLogin", "Password"} != {f"DynamicField_{k}" for k in wanted}:
            self.problem(f"TicketSearch params {sorted(req.query)}")
        if not wanted or not set(wanted) <= self.dynamic_fields:
            self.problem(f"TicketSearch fields {wanted}")
        ids = [
            t.ticket_id
            for t in self.tickets.values()
            if all(t.dynamic.get(k) == v for k, v in wanted.items())
        ]
        return Reply(200, {"TicketID": ids} if ids else {})

    def _get(self, req: Request, ticket_id: str) -> Reply:
        if (denied := self._query_auth(req, "TicketGet")) is not None:
            return denied
        t = self.tickets.get(ticket_id)
        if t is None:
            return self.error("TicketGet.AccessDenied", "User does not have access to the ticket!")
        return Reply(
            200,
            {
                "Ticket": [
                    {"TicketID": t.ticket_id, "TicketNumber": t.number, "State": t.states[-1]}
                ]
            },
        )

    def _update(self, req: Request, ticket_id: str) -> Reply:
        body = self._json_body(req)
        if body is None:
            return self.error("TicketUpdate.MissingParameter", "no data")
        if denied := self._auth(body.get("UserLogin"), body.get("Password"), "TicketUpdate"):
            return denied
        t = self.tickets.get(ticket_id)
        if t is None:
            return self.error("TicketUpdate.AccessDenied", "User does not have access!")
        if "TicketUpdate" in self.error_next:
            self.error_next.remove("TicketUpdate")
            return self.error("TicketUpdate.InvalidParameter", "Article is invalid!")
        if not set(body) <= {"UserLogin", "Password", "Ticket", "Article"}:
            self.problem(f"TicketUpdate fields {sorted(body)}")
        if "Ticket" in body:
            ticket = body["Ticket"]
            if not isinstance(ticket, dict) or not set(ticket) <= {"State", "PendingTime"}:
                self.problem(f"TicketUpdate Ticket {ticket!r}")
            elif bad := self._check_state(ticket, "TicketUpdate"):
                return self.error("TicketUpdate.InvalidParameter", bad)
            else:
                t.states.append(ticket["State"])
        if bad := self._check_article(body.get("Article"), "TicketUpdate"):
            return self.error("TicketUpdate.InvalidParameter", bad)
        t.articles.append(body["Article"])
        answer = {
            "TicketID": t.ticket_id,
            "TicketNumber": t.number,
            "ArticleID": next(self.articles),
        }
        return Reply(200, answer)
