"""OTRS/Znuny GenericInterface: our tickets mirrored as tickets of the support desk (SPEC
Appendix A), through a REST web service (``GenericTicketConnectorREST``-style routes).

Settings are the fleet file's ``OtrsNotifier``: ``url`` (the base, ``…/otrs``),
``webservice``, ``user_login``, ``password`` (``${ENV}`` resolved when sent), ``queue``,
``customer_user``, the two dynamic fields (``key_field``, ``number_field``), overrides of the
``states``/``types``/``priorities`` maps below and ``pending_for``.

**One remote ticket per ticket of ours and notifier**, kept in ``remote_tickets`` (its
``TicketID`` and ``TicketNumber``). The first notification of a ticket that is delivered
creates it (``TicketCreate``: ``POST <url>/nph-genericinterface.pl/Webservice/<WS>/Ticket``,
with ``Ticket``, ``Article``, ``DynamicField`` and the ticket's attachments); every later one
is ``TicketUpdate`` (``PATCH …/Ticket/<TicketID>``) with an ``Article``, and the ``State``
when the status changed. A mass incident is **one** remote ticket (its rows are one per
ticket, not per tenant: see ``outbox.PER_TICKET_CHANNELS``): its children are tickets of
their own, each mirrored for its own tenant, so the desk sees one major ticket plus each
customer's own, never five copies of the major one.

**Exactly one remote ticket.** Znuny has no idempotency key, so ours goes into the dynamic
field ``key_field`` (``cpdops:<notifier>:<number>``; ``number_field`` holds our number).
Before every create the connector searches for it (``TicketSearch``:
``GET …/Ticket?DynamicField_<key_field>=<key>``) and, when a ticket has it (a create that
reached Znuny whose answer was lost, or whose id we could not store), takes that ticket
(``TicketGet`` for its number) instead of creating another. The outbox sends a ticket's rows
in order, so an update waits while its create is pending; if the create is ``dead`` the next
update creates the ticket.

**Answers.** ``{"TicketID", "TicketNumber", "ArticleID"}`` is success; an
``{"Error": {"ErrorCode", "ErrorMessage"}}`` answer (Znuny gives it with HTTP 200) and any
non-200 are failures, retried.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker, undefer

from orchestrator.db.models import Incident, IncidentAttachment, RemoteTicket, Tenant
from orchestrator.db.session import session_scope
from orchestrator.fleet.fleetfile import resolve_secret
from orchestrator.incidents.notifiers.http import Answer, Unreachable, request
from orchestrator.incidents.outbox import Notification, NotifierSetup, render

log = logging.getLogger(__name__)

# Our status → Znuny state (stock Znuny state names). A "pending …" state gets a PendingTime
# ``pending_for`` ahead: «Решение предоставлено» closes itself unless the customer answers.
STATES: Mapping[str, str] = {
    "new": "new",
    "open": "open",
    "awaiting_info": "pending reminder",
    "solution_provided": "pending auto close+",
    "closed": "closed successful",
}
PRIORITIES: Mapping[str, str] = {
    "low": "2 low",
    "normal": "3 normal",
    "high": "4 high",
    "critical": "5 very high",
}
# Stock Znuny has one ticket type; map ours to the desk's own (e.g. ITSM's) in ``types``.
DEFAULT_TYPE = "Unclassified"
ARTICLE_CONTENT_TYPE = "text/plain; charset=utf8"
STATE_KINDS = ("status", "solution")


class ZnunyError(Exception):
    """Znuny did not do what was asked (an ``Error`` answer, a bad status, no answer)."""


@dataclass(frozen=True)
class ZnunyConfig:
    url: str
    webservice: str
    user_login: str
    password: str = field(repr=False)
    queue: str
    customer_user: str | None = None
    key_field: str = "CpdopsKey"
    number_field: str = "CpdopsTicketNumber"
    states: Mapping[str, str] = field(default_factory=dict)
    types: Mapping[str, str] = field(default_factory=dict)
    priorities: Mapping[str, str] = field(default_factory=dict)
    pending_for_s: float = 7 * 86400.0

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> ZnunyConfig:
        return cls(
            url=str(settings["url"]),
            webservice=str(settings["webservice"]),
            user_login=str(settings["user_login"]),
            password=str(settings["password"]),
            queue=str(settings["queue"]),
            customer_user=settings.get("customer_user"),
            key_field=str(settings.get("key_field") or "CpdopsKey"),
            number_field=str(settings.get("number_field") or "CpdopsTicketNumber"),
            states=dict(settings.get("states") or {}),
            types=dict(settings.get("types") or {}),
            priorities=dict(settings.get("priorities") or {}),
            pending_for_s=float(settings.get("pending_for") or 7 * 86400.0),
        )

    def ticket_url(self, ticket_id: str | None = None) -> str:
        base = (
            f"{self.url.rstrip('/')}/nph-genericinterface.pl/Webservice/"
            f"{quote(self.webservice, safe='')}/Ticket"
        )
        return base if ticket_id is None else f"{base}/{quote(ticket_id, safe='')}"

    def state(self, status: str) -> str:
        return self.states.get(status) or STATES.get(status, "open")


@dataclass(frozen=True)
class Remote:
    ticket_id: str
    ticket_number: str


@dataclass(frozen=True)
class AttachmentData:
    filename: str
    content_type: str
    content: bytes


# --------------------------------------------------------------------------- pure parts


def idempotency_key(notifier: str, number: str) -> str:
    return f"cpdops:{notifier}:{number}"


def _article(payload: Mapping[str, Any]) -> dict[str, Any]:
    rendered = render(payload, footer=False)
    return {
        "CommunicationChannel": "Internal",
        "SenderType": "system",
        "IsVisibleForCustomer": 1,
        "Subject": rendered.subject[:255],
        "Body": rendered.body,
        "ContentType": ARTICLE_CONTENT_TYPE,
    }


def _state_fields(cfg: ZnunyConfig, status: str) -> dict[str, Any]:
    state = cfg.state(status)
    fields: dict[str, Any] = {"State": state}
    if state.lower().startswith("pending"):
        fields["PendingTime"] = {"Diff": max(1, round(cfg.pending_for_s / 60))}
    return fields


def create_body(
    cfg: ZnunyConfig,
    password: str,
    payload: Mapping[str, Any],
    *,
    key: str,
    customer_user: str,
    attachments: Sequence[AttachmentData] = (),
) -> dict[str, Any]:
    """The ``TicketCreate`` request for the ticket in ``payload``."""
    ticket_type = str(payload.get("type"))
    body: dict[str, Any] = {
        "UserLogin": cfg.user_login,
        "Password": password,
        "Ticket": {
            "Title": str(payload["subject"])[:255],
            "Queue": cfg.queue,
            **_state_fields(cfg, str(payload["status"])),
            "Priority": cfg.priorities.get(str(payload.get("priority")))
            or PRIORITIES.get(str(payload.get("priority")), PRIORITIES["normal"]),
            "CustomerUser": customer_user,
            "Type": cfg.types.get(ticket_type) or DEFAULT_TYPE,
        },
        "Article": _article(payload),
        "DynamicField": [
            {"Name": cfg.key_field, "Value": key},
            {"Name": cfg.number_field, "Value": str(payload["number"])},
        ],
    }
    if attachments:
        body["Attachment"] = [
            {
                "Content": base64.b64encode(a.content).decode("ascii"),
                "ContentType": a.content_type,
                "Filename": a.filename,
            }
            for a in attachments
        ]
    return body


def update_body(cfg: ZnunyConfig, password: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """The ``TicketUpdate`` request: an article, and the state when the status changed."""
    body: dict[str, Any] = {
        "UserLogin": cfg.user_login,
        "Password": password,
        "Article": _article(payload),
    }
    if payload.get("kind") in STATE_KINDS:
        body["Ticket"] = _state_fields(cfg, str(payload["status"]))
    return body


def search_query(cfg: ZnunyConfig, password: str, key: str) -> str:
    return urlencode(
        {"UserLogin": cfg.user_login, "Password": password, f"DynamicField_{cfg.key_field}": key}
    )


def _json(answer: Answer, operation: str) -> dict[str, Any]:
    if answer.status != 200:
        raise ZnunyError(f"{operation}: HTTP {answer.status}")
    try:
        data = json.loads(answer.body)
    except ValueError:
        raise ZnunyError(f"{operation}: the answer is not JSON") from None
    if not isinstance(data, dict):
        raise ZnunyError(f"{operation}: unexpected answer")
    error = data.get("Error")
    if error is not None:
        if isinstance(error, dict):
            code, message = error.get("ErrorCode", "?"), error.get("ErrorMessage", "")
        else:
            code, message = "?", str(error)
        raise ZnunyError(f"{operation}: {code}: {str(message)[:300]}")
    return data


def parse_ticket_answer(answer: Answer, operation: str) -> Remote:
    """``TicketCreate``/``TicketUpdate``: ``{TicketID, TicketNumber, ArticleID}``."""
    data = _json(answer, operation)
    ticket_id, number = data.get("TicketID"), data.get("TicketNumber")
    if ticket_id in (None, "") or number in (None, ""):
        raise ZnunyError(f"{operation}: the answer has no TicketID/TicketNumber")
    return Remote(str(ticket_id), str(number))


def parse_search_answer(answer: Answer) -> list[str]:
    """``TicketSearch``: ``{"TicketID": [ids]}``, or ``{}`` when nothing matches."""
    found = _json(answer, "TicketSearch").get("TicketID", [])
    ids = found if isinstance(found, list) else [found]
    return [str(i) for i in ids if i not in (None, "")]


def parse_get_answer(answer: Answer, ticket_id: str) -> Remote:
    tickets = _json(answer, "TicketGet").get("Ticket")
    if not isinstance(tickets, list) or not tickets or not isinstance(tickets[0], dict):
        raise ZnunyError("TicketGet: the answer has no Ticket")
    number = tickets[0].get("TicketNumber")
    if number in (None, ""):
        raise ZnunyError("TicketGet: the ticket has no TicketNumber")
    return Remote(ticket_id, str(number))


# --------------------------------------------------------------------------- I/O


@dataclass(frozen=True)
class ZnunyConnector:
    name: str
    config: ZnunyConfig
    store: sessionmaker[Session]
    timeout_s: float = 20.0

    @classmethod
    def from_setup(cls, setup: NotifierSetup) -> ZnunyConnector:
        return cls(setup.name, ZnunyConfig.from_settings(setup.settings), setup.store)

    # --- the store

    def remote(self, number: str) -> Remote | None:
        with self.store() as s:
            row = s.scalars(
                select(RemoteTicket).where(
                    RemoteTicket.notifier == self.name, RemoteTicket.incident_number == number
                )
            ).first()
            return None if row is None else Remote(row.remote_id, row.remote_number)

    def _keep(self, number: str, remote: Remote) -> Remote:
        try:
            with session_scope(self.store) as s:
                s.add(
                    RemoteTicket(
                        notifier=self.name,
                        incident_number=number,
                        remote_id=remote.ticket_id,
                        remote_number=remote.ticket_number,
                    )
                )
        except IntegrityError:  # another worker kept it first: theirs stands
            kept = self.remote(number)
            if kept is not None:
                return kept
            raise
        return remote

    def _customer_user(self, payload: Mapping[str, Any]) -> str:
        """The ticket's tenant's first contact e-mail, else ``customer_user``, else (a mass
        incident) the e-mail of the tenant this row came from."""
        with self.store() as s:

            def email_of(slug: Any) -> str | None:
                if not slug:
                    return None
                tenant = s.scalars(select(Tenant).where(Tenant.slug == str(slug))).first()
                for contact in (tenant.contacts or []) if tenant else []:
                    if contact.get("email"):
                        return str(contact["email"])
                return None

            found = email_of(payload.get("ticket_tenant")) or self.config.customer_user
            found = found or email_of(payload.get("tenant"))
        if not found:
            raise ZnunyError(
                f"no CustomerUser for ticket {payload.get('number')}: "
                "give the tenant a contact with an email, or set customer_user"
            )
        return found

    def _attachments(self, number: str) -> list[AttachmentData]:
        with self.store() as s:
            rows = s.scalars(
                select(IncidentAttachment)
                .join(Incident, Incident.id == IncidentAttachment.incident_id)
                .where(Incident.number == number)
                .options(undefer(IncidentAttachment.content))
                .order_by(IncidentAttachment.id)
            )
            return [AttachmentData(a.filename, a.content_type, a.content) for a in rows]

    # --- Znuny

    def _call(self, method: str, url: str, operation: str, body: Any = None) -> Answer:
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json; charset=utf-8"} if data else {}
        try:
            return request(method, url, body=data, headers=headers, timeout_s=self.timeout_s)
        except Unreachable as exc:
            raise ZnunyError(f"{operation}: {exc}") from None

    def _find(self, password: str, key: str) -> Remote | None:
        query = search_query(self.config, password, key)
        ids = parse_search_answer(
            self._call("GET", f"{self.config.ticket_url()}?{query}", "TicketSearch")
        )
        if not ids:
            return None
        ticket_id = min(ids, key=lambda i: (len(i), i))  # the first, should there be two
        auth = urlencode({"UserLogin": self.config.user_login, "Password": password})
        answer = self._call("GET", f"{self.config.ticket_url(ticket_id)}?{auth}", "TicketGet")
        return parse_get_answer(answer, ticket_id)

    def send(self, notification: Notification) -> None:
        payload = notification.payload
        number = str(payload["number"])
        password = resolve_secret(self.config.password, key="notifiers.otrs.password")
        remote = self.remote(number)
        if remote is None:
            key = idempotency_key(self.name, number)
            found = self._find(password, key)
            if found is None:
                body = create_body(
                    self.config,
                    password,
                    payload,
                    key=key,
                    customer_user=self._customer_user(payload),
                    attachments=self._attachments(number),
                )
                answer = self._call("POST", self.config.ticket_url(), "TicketCreate", body)
                created = self._keep(number, parse_ticket_answer(answer, "TicketCreate"))
                log.info(
                    "znuny ticket created number=%s remote=%s id=%s",
                    number,
                    created.ticket_number,
                    created.ticket_id,
                )
                return  # the create carries this notification's article and state
            remote = self._keep(number, found)
            log.info("znuny ticket found number=%s remote=%s", number, remote.ticket_number)
            if payload.get("kind") == "created":
                return  # it was this very create, whose answer was lost
        elif payload.get("kind") == "created":
            return  # the remote ticket exists already (made by a later notification)
        answer = self._call(
            "PATCH",
            self.config.ticket_url(remote.ticket_id),
            "TicketUpdate",
            update_body(self.config, password, payload),
        )
        parse_ticket_answer(answer, "TicketUpdate")
        log.info("znuny ticket updated number=%s remote=%s", number, remote.ticket_number)
