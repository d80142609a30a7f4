"""The body of ``POST /api/v1/monitors``: one model per probe kind, a union discriminated by
``kind``, so that the OpenAPI schema says exactly what each kind accepts.

The fleet file's :class:`~orchestrator.fleet.fleetfile.MonitorDeclaration` checks a target by
running the kind's validator (``monitors.probes.VALIDATORS``); a schema cannot say that, so
schemathesis found schema-valid bodies refused (an empty target, a tcp target without a port)
and the schema gave a client no way to know the form. Here each kind's ``target`` has a
``pattern`` inside what its validator accepts, and ``options`` the kind's own keys and types:
a body that satisfies the schema is a declaration the validators accept. The API takes a
subset of what the fleet file takes (no IPv6 literal in a target, no ``${VAR}`` reference, no
container ``docker_url``/``container`` options): the fleet file, written by the operator with
the server's shell, keeps those.

What no schema can say stays a 400 naming the field: a timeout longer than the interval.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from orchestrator.api.schemas import SLUG_PATTERN, StrictIn
from orchestrator.fleet.fleetfile import ENV_REFUSED_HERE
from orchestrator.strict_types import WHOLE, NoNul

# --------------------------------------------------------------------------- target forms

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
HOST = rf"{_LABEL}(?:\.{_LABEL})*"  # a DNS name or an IPv4 address
PORT = r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
_PCHAR = r"(?:[A-Za-z0-9._~!&'()*+,;=:@-]|%[0-9A-Fa-f]{2})"
_UCHAR = r"(?:[A-Za-z0-9._~!&'()*+,;=-]|%[0-9A-Fa-f]{2})"
_USERINFO = rf"(?:{_UCHAR}+(?::{_UCHAR}*)?@)?"  # basic auth: user[:password]@ (never shown)
HTTP_TARGET = rf"^https?://{_USERINFO}{HOST}(?::{PORT})?(?:/{_PCHAR}*)*(?:\?(?:{_PCHAR}|[/?])*)?$"
TCP_TARGET = rf"^(?:tcp://)?{HOST}:{PORT}/?$"
SIP_TARGET = rf"^sip:(?:[A-Za-z0-9._~!&'()*+,=-]+@)?{HOST}(?::{PORT})?(?:;transport=(?:udp|tcp))?$"
# libpq refuses %00 in a URI, psycopg2 a byte that is not UTF-8: escapes of printable ASCII;
# no query but sslmode (libpq refuses unknown parameters)
_PG_PCT = r"%[2-7][0-9A-Fa-f]"
_PG_USERINFO = rf"[A-Za-z0-9._~-]+(?::(?:[A-Za-z0-9._~!*'()+,;=-]|{_PG_PCT})*)?@"
POSTGRES_TARGET = (
    rf"^postgres(?:ql)?://(?:{_PG_USERINFO})?{HOST}(?::{PORT})?(?:/[A-Za-z0-9_.-]+)?"
    r"(?:\?sslmode=(?:disable|allow|prefer|require|verify-ca|verify-full))?$"
)
_DOCKER_URL = rf"(?:unix:///[A-Za-z0-9._/-]+|tcp://{HOST}:{PORT}|ssh://(?:[a-z_][a-z0-9_-]*@)?{HOST}(?::{PORT})?)"
CONTAINER_TARGET = rf"^{_DOCKER_URL}#[A-Za-z0-9][A-Za-z0-9_.-]{{0,127}}$"

_NZ = r"(?:0*[1-9][0-9]*(?:\.[0-9]+)?|[0-9]+\.[0-9]*[1-9][0-9]*)"  # a number > 0
DURATION_PATTERN = rf"^(?:{_NZ}d)?(?:{_NZ}h)?(?:{_NZ}m)?(?:{_NZ}s)?(?:{_NZ}ms)?$"

Seconds = (
    Annotated[float, Field(gt=0, le=30 * 86400)]
    | Annotated[str, Field(min_length=2, max_length=32, pattern=DURATION_PATTERN)]
)
Slug = Annotated[str, Field(pattern=SLUG_PATTERN)]
HttpStatus = Annotated[int, Field(ge=100, le=599), WHOLE]
Count = Annotated[int, Field(ge=1, le=1000), WHOLE]


def _target(pattern: str, example: str, form: str) -> Any:
    return Field(max_length=1000, pattern=pattern, description=form, examples=[example])


# --------------------------------------------------------------------------- options per kind


class HttpOptionsIn(StrictIn):
    body_contains: Annotated[NoNul, Field(min_length=1, max_length=10_000)] | None = Field(
        default=None, description="the body must contain this text"
    )
    max_latency_s: Annotated[float, Field(gt=0, le=3600)] | None = Field(
        default=None, description="slower answers fail"
    )
    tls_verify: bool = Field(default=True, description="verify the server's certificate")


class TcpOptionsIn(StrictIn):
    send: Annotated[NoNul, Field(max_length=10_000)] = Field(
        default="", description="sent after connecting"
    )
    expect: Annotated[NoNul, Field(max_length=10_000)] = Field(
        default="", description="the answer must contain this"
    )


AcceptCode = (
    Annotated[int, Field(ge=200, le=699), WHOLE]
    | Annotated[str, Field(pattern=r"^(?:[2-6]xx|[2-6][0-9]{2})$")]
)


class SipOptionsIn(StrictIn):
    transport: Literal["udp", "tcp"] | None = Field(
        default=None, description="overrides the URI's ;transport= (default udp)"
    )
    accept_codes: Annotated[list[AcceptCode], Field(min_length=1, max_length=100)] | None = Field(
        default=None, description='answers that pass, e.g. [200, "4xx"] (default any answer)'
    )


class PostgresOptionsIn(StrictIn):
    server: Annotated[NoNul, Field(min_length=1, max_length=255)] | None = Field(
        default=None, description="the server's name in metrics and tickets"
    )
    max_connections_ratio: Annotated[float, Field(gt=0, le=1)] = 0.9
    max_tx_seconds: Annotated[float, Field(ge=0)] = 300.0
    max_waiting: Annotated[int, Field(ge=0), WHOLE] = 5
    max_lag_seconds: Annotated[float, Field(ge=0)] = 60.0
    max_wraparound_age: Annotated[int, Field(ge=0), WHOLE] = 1_500_000_000


class DockerTlsIn(StrictIn):
    """Client TLS of a ``tcp://`` Docker endpoint: paths on cpdops's machine."""

    ca: Annotated[NoNul, Field(min_length=1, max_length=1000)] | None = None
    cert: Annotated[NoNul, Field(min_length=1, max_length=1000)] | None = None
    key: Annotated[NoNul, Field(min_length=1, max_length=1000)] | None = None
    verify: bool = True


class ContainerOptionsIn(StrictIn):
    max_restarts: Annotated[int, Field(ge=0, le=1_000_000), WHOLE] = Field(
        default=0, description="restarts between two checks that still pass"
    )
    tls: DockerTlsIn | None = None


# --------------------------------------------------------------------------- the union


class _MonitorIn(StrictIn):
    name: Slug = Field(description="unique within the tenant; the id is <tenant>/<name>")
    tenant: Slug = Field(description="slug of a tenant in the registry (404 if it is not)")
    host: Slug | None = Field(
        default=None, description="Docker host the target belongs to (404 if unknown)"
    )
    interval: Seconds | None = Field(
        default=None, description='seconds, or a duration such as "30s" (default: monitors)'
    )
    timeout: Seconds | None = Field(
        default=None, description="seconds or a duration, at most the interval (else 400)"
    )
    failure_threshold: Count | None = None
    recovery_threshold: Count | None = None
    expect_status: Annotated[list[HttpStatus], Field(min_length=1, max_length=100)] | None = Field(
        default=None, description="http: status codes that pass (default [200])"
    )

    @field_validator("target", mode="before", check_fields=False)
    @classmethod
    def _no_reference(cls, value: Any) -> Any:
        """Say why a ``${`` is refused (the patterns exclude it; this names the reason)."""
        if isinstance(value, str) and "${" in value:
            raise ValueError(ENV_REFUSED_HERE)
        return value


class HttpMonitorIn(_MonitorIn):
    kind: Literal["http"]
    target: str = _target(HTTP_TARGET, "https://acme.example.com/health", "an http(s) URL")
    options: HttpOptionsIn = Field(default_factory=HttpOptionsIn)


class TcpMonitorIn(_MonitorIn):
    kind: Literal["tcp"]
    target: str = _target(TCP_TARGET, "10.0.0.5:5432", "host:port or tcp://host:port")
    options: TcpOptionsIn = Field(default_factory=TcpOptionsIn)


class SipMonitorIn(_MonitorIn):
    kind: Literal["sip"]
    target: str = _target(SIP_TARGET, "sip:10.0.0.5:5060", "a SIP URI, sip:[user@]host[:port]")
    options: SipOptionsIn = Field(default_factory=SipOptionsIn)


class PostgresMonitorIn(_MonitorIn):
    kind: Literal["postgres"]
    target: str = _target(
        POSTGRES_TARGET,
        "postgresql://monitor:secret@10.0.0.5:5432/postgres",
        "a postgresql:// URI (the password is never shown)",
    )
    options: PostgresOptionsIn = Field(default_factory=PostgresOptionsIn)


class ContainerMonitorIn(_MonitorIn):
    kind: Literal["container"]
    target: str = _target(
        CONTAINER_TARGET,
        "unix:///var/run/docker.sock#smartcpd-acme",
        "<docker url>#<container name>",
    )
    options: ContainerOptionsIn = Field(default_factory=ContainerOptionsIn)


AnyMonitorIn = HttpMonitorIn | TcpMonitorIn | SipMonitorIn | PostgresMonitorIn | ContainerMonitorIn
MonitorIn = Annotated[AnyMonitorIn, Field(discriminator="kind")]


def declaration_fields(body: AnyMonitorIn) -> dict[str, Any]:
    """The body as the fields of a ``MonitorDeclaration`` (options as given, unset left out)."""
    fields = body.model_dump(exclude={"options"}, exclude_none=True)
    fields["options"] = body.options.model_dump(exclude_unset=True)
    return fields
