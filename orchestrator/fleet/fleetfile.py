"""The fleet file read by ``cpdops apply -f fleet.yaml`` (SPEC §3.2): parsing and validation.

Pure code: no database, no Docker. Reading a file takes three passes and reports what all of
them find in one :class:`~orchestrator.errors.FleetFileError` (``.errors`` lists
``(key_path, line, message)``):

1. ``yaml.compose`` (SafeLoader) gives nodes with line numbers. :class:`_YamlReader` turns them
   into plain data and a map from key path to line, reporting duplicate keys (PyYAML would keep
   the last one silently), unsupported tags and recursive aliases.
2. The pydantic models validate that data; ``extra="forbid"`` makes unknown keys errors, and
   each pydantic ``loc`` is mapped back to a line.
3. :func:`_cross_check` checks what spans items: duplicate names and ``tenants[].host``.

Secrets (``db_dsn``, ``password``, ``bot_token``, ``secret``) are typed :data:`SecretText`;
:meth:`FleetFile.redacted` finds them through that one marker, so no view can echo one back.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import types
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from email.utils import parseaddr
from pathlib import Path
from typing import Annotated, Any, Literal, TypeAlias, Union, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from monitors.probe import public_target
from orchestrator.errors import FleetFileError
from orchestrator.fleet.readfile import read_limited

__all__ = [
    "CHANNELS",
    "LANGUAGES",
    "NOTIFIER_KINDS",
    "REDACTED",
    "RINGS",
    "SECRET",
    "Contact",
    "FleetFile",
    "HostSpec",
    "IncidentThresholds",
    "MaintenanceWindow",
    "MassIncidentThresholds",
    "MonitorDeclaration",
    "MonitorDefaults",
    "MonitorsSection",
    "NotifierSpec",
    "OtrsNotifier",
    "SecretMarker",
    "SmtpNotifier",
    "TelegramNotifier",
    "TenantSpec",
    "TlsConfig",
    "WebhookNotifier",
    "env_references",
    "format_duration",
    "is_name",
    "is_secret_field",
    "load_fleet_file",
    "parse_duration",
    "parse_fleet_text",
    "resolve_secret",
]

RINGS = ("internal", "canary", "early", "general", "late")
"""Rollout rings, in the order a mass rollout reaches them."""
LANGUAGES = ("ru", "en")
CHANNELS = ("email", "telegram", "webhook", "otrs")
REDACTED = "***"

Ring = Literal["internal", "canary", "early", "general", "late"]
Language = Literal["ru", "en"]
Channel = Literal["email", "telegram", "webhook", "otrs"]
TicketStatus = Literal["new", "open", "awaiting_info", "solution_provided", "closed"]
TicketType = Literal["incident", "mass_incident", "consultation", "development_request"]
TicketPriority = Literal["low", "normal", "high", "critical"]
Loc: TypeAlias = tuple[str | int, ...]
Problem: TypeAlias = tuple[str, int | None, str]  # (key path, line, message)

_FILE_CONTEXT = "fleet_file"  # validation context key: input comes from YAML text
# validation context key: ``${NAME}`` in a monitor's target is a reference (the fleet file);
# without it (the API) a target holding ``${`` is refused
_ENV_CONTEXT = "env_references"

# --------------------------------------------------------------------------- durations

_UNIT_SECONDS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_NUMBER = r"\d+(?:\.\d+)?"
_DURATION_RE = re.compile(
    rf"(?:(?P<d>{_NUMBER})d)?(?:(?P<h>{_NUMBER})h)?(?:(?P<m>{_NUMBER})m(?!s))?"
    rf"(?:(?P<s>{_NUMBER})s)?(?:(?P<ms>{_NUMBER})ms)?"
)


def parse_duration(text: str) -> float:
    """Parse ``"90s"``, ``"30m"``, ``"2h"``, ``"1h30m"``, ``"1.5d"``, ``"500ms"`` into seconds.

    Units (largest first, each at most once): ``d``, ``h``, ``m``, ``s``, ``ms``.
    Raises ``ValueError`` naming the bad string.
    """
    value = text.strip()
    match = _DURATION_RE.fullmatch(value)
    if match is None or not any(match.groups()):
        hint = f"; for seconds write '{value}s'" if re.fullmatch(_NUMBER, value) else ""
        raise ValueError(
            f"invalid duration {_echo(text)}: expected a number and a unit such as 90s, 30m, 2h "
            f"or 1h30m (units d, h, m, s, ms, largest first){hint}"
        )
    return sum(float(v) * _UNIT_SECONDS[unit] for unit, v in match.groupdict().items() if v)


def format_duration(seconds: float) -> str:
    """The inverse of :func:`parse_duration`: ``5400.0`` → ``"1h30m"``, ``0`` → ``"0s"``."""
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative: {seconds}")
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m")) if n]
    fraction = seconds - whole
    if fraction:
        parts.append(f"{secs + fraction:.6f}".rstrip("0") + "s")
    elif secs:
        parts.append(f"{secs}s")
    return "".join(parts) or "0s"


def _duration_input(value: Any, info: ValidationInfo) -> Any:
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        if info.context and info.context.get(_FILE_CONTEXT):
            raise ValueError(f"a duration needs a unit: write '{value}s' (or m, h, d)")
        return value  # seconds, from Python code or the API
    raise ValueError(f"expected a duration such as '30s' or '5m', got {_yaml_type(value)}")


def _not_negative(seconds: float) -> float:
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def _positive(seconds: float) -> float:
    if seconds <= 0:
        raise ValueError("the duration must be longer than 0s")
    return seconds


Duration = Annotated[
    float,
    BeforeValidator(_duration_input),
    AfterValidator(_not_negative),
    PlainSerializer(format_duration, return_type=str),
]
PositiveDuration = Annotated[Duration, AfterValidator(_positive)]

# --------------------------------------------------------------------------- secrets

# A ``${`` where an API token writes (a monitor declared through the API): refused
ENV_REFUSED_HERE = (
    "'${' is refused here: environment references are resolved only in the fleet "
    "file (cpdops apply), never for a monitor declared through the API, which must "
    "not read the server's environment; write the value itself, or declare the "
    "monitor in the fleet file"
)
_ENV_REF_RE = re.compile(r"\$(\$?)\{([^}]*)(\}?)")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class SecretMarker:
    """``Annotated`` metadata: the field holds a secret or a ``${ENV_VAR}`` reference to one."""


SECRET = SecretMarker()


def env_references(value: str) -> list[str]:
    """Names referenced as ``${NAME}``; ``$${`` is a literal ``${``. Never quotes the value."""
    names = []
    for match in _ENV_REF_RE.finditer(value):
        escaped, name, closed = match.groups()
        if escaped:
            continue
        if not closed:
            raise ValueError("'${' is not closed; write ${NAME}, or $${ for a literal '${'")
        if not _ENV_NAME_RE.fullmatch(name):
            raise ValueError(
                "an environment reference must look like ${NAME} (letters, digits, '_'); "
                "write $${ for a literal '${'"
            )
        names.append(name)
    return names


def _cpdops_settings() -> frozenset[str]:
    """The environment variables cpdops reads itself: ``CPDOPS_<SETTING>``, their
    ``…_FILE`` forms (the image's entrypoint) and ``CPDOPS_DATABASE_PASSWORD``."""
    from orchestrator.settings import Settings  # late: the fleet file needs no settings

    names = [f"CPDOPS_{name.upper()}" for name in Settings.model_fields]
    names.append("CPDOPS_DATABASE_PASSWORD")
    return frozenset(names + [f"{name}_FILE" for name in names])


def _check_env_name(name: str) -> str:
    if not _ENV_NAME_RE.fullmatch(name):
        raise ValueError(
            f"{name!r} is not an environment variable name (letters, digits, '_', "
            "not starting with a digit)"
        )
    if name.upper() in _cpdops_settings():
        raise ValueError(
            f"{name} is a setting of cpdops itself (the server's own secret or configuration); "
            "a fleet file cannot read it: give the value its own variable"
        )
    return name


EnvName = Annotated[str, AfterValidator(_check_env_name)]


def _check_secret(value: str | None) -> str | None:
    if value is None:
        return None
    if not value:
        raise ValueError("must not be empty (leave the key out instead)")
    env_references(value)
    return value


SecretText = Annotated[str, SECRET, Field(repr=False), AfterValidator(_check_secret)]
OptionalSecretText = Annotated[str | None, SECRET, Field(repr=False), AfterValidator(_check_secret)]


_DSN_SCHEMES = ("postgresql", "postgres")
_DSN_HOST_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._%-]*)(?::([^:]*))?")


def _check_dsn(value: str | None) -> str | None:
    """A libpq URI, ``postgresql://[user[:password]@][host][:port][,…][/dbname][?…]``; a
    ``${VAR}`` stands for any part (the whole DSN when it is the whole value). The message
    never quotes the DSN (it may hold a password)."""
    whole = _ENV_REF_RE.fullmatch(value) if value is not None else None
    if value is None or (whole is not None and not whole.group(1)):
        return value

    def placeholder(match: re.Match[str]) -> str:
        return match.group(0)[1:] if match.group(1) else "1"  # $${ → a literal ${

    dsn = _ENV_REF_RE.sub(placeholder, value)
    example = "postgresql://user:password@host:5432/dbname"
    scheme, sep, rest = dsn.partition("://")
    if not sep or scheme not in _DSN_SCHEMES:
        raise ValueError(f"not a PostgreSQL URI: expected {example}")
    if not _URL_CHARS_RE.fullmatch(dsn):
        raise ValueError("a DSN holds no spaces or control characters (percent-encode them)")
    authority = re.split(r"[/?]", rest, maxsplit=1)[0]
    for part in authority.rpartition("@")[2].split(","):
        match = _DSN_HOST_RE.fullmatch(part)
        if match is None:
            raise ValueError(f"invalid host in the DSN: expected {example}")
        port = match.group(2)
        if port is not None and not (port.isdigit() and len(port) <= 5 and 0 < int(port) < 65536):
            shown = f" {port}" if port.isdigit() and len(port) <= 12 else ""
            raise ValueError(f"the DSN's port{shown} is not in 1-65535")
    return value


DsnText = Annotated[OptionalSecretText, AfterValidator(_check_dsn)]


def is_secret_field(model: type[BaseModel], name: str) -> bool:
    """True if ``model.name`` is a secret (typed :data:`SecretText`)."""
    return SECRET in model.model_fields[name].metadata


def resolve_secret(value: str, environ: Mapping[str, str] | None = None, *, key: str = "") -> str:
    """Replace each ``${NAME}`` in ``value`` from ``environ`` (default ``os.environ``).

    A value without references is returned as is; ``$${`` gives a literal ``${``. Raises
    :class:`FleetFileError` naming every unset variable (and ``key``, the field, if given);
    the message never contains the value.
    """
    env = os.environ if environ is None else environ
    where = f" (needed by {key})" if key else ""
    try:
        names = env_references(value)
    except ValueError as exc:
        raise FleetFileError(f"{exc}{where}", errors=[(key, None, str(exc))]) from None
    missing = [name for name in dict.fromkeys(names) if name not in env]
    if missing:
        noun = "variable" if len(missing) == 1 else "variables"
        verb = "is" if len(missing) == 1 else "are"
        message = f"environment {noun} {', '.join(missing)} {verb} not set{where}"
        raise FleetFileError(message, errors=[(key, None, message)])

    def substitute(match: re.Match[str]) -> str:
        escaped, name, closed = match.groups()
        return "${" + name + closed if escaped else env[name]

    return _ENV_REF_RE.sub(substitute, value)


# --------------------------------------------------------------------------- field checks

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+")


def is_name(value: str) -> bool:
    """Whether ``value`` is a valid host, tenant or notifier name (a slug)."""
    return _NAME_RE.fullmatch(value) is not None


def _check_name(value: str) -> str:
    if not is_name(value):
        raise ValueError(
            f"invalid name {_echo(value)}: use 1-63 lowercase letters, digits and '-', "
            "starting with a letter or digit"
        )
    return value


def _check_not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _check_version(value: int) -> int:
    if value != 1:
        raise ValueError(f"unsupported version {value}; this cpdops reads version 1")
    return value


_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"(?=.{{1,253}}$){_HOST_LABEL}(?:\.{_HOST_LABEL})*")
_SOCKET_PATH_RE = re.compile(r"/[A-Za-z0-9._/-]*")
_SSH_USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")
_URL_CHARS_RE = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no space


def _echo(value: Any, limit: int = 60) -> str:
    """``value`` quoted for an error message: escaped (no CR/LF reaches a message) and cut."""
    if not isinstance(value, str):
        text = repr(value)
        return text if len(text) <= limit else text[:limit] + "…"
    if len(value) > limit:
        return repr(value[:limit]) + f"… ({len(value)} characters)"
    return repr(value)


def _check_host_name(url: str, host: str) -> None:
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{_echo(url)} has an invalid IPv6 address {_echo(host)}") from None
    elif not _HOSTNAME_RE.fullmatch(host):
        raise ValueError(
            f"{_echo(url)}: invalid host name {_echo(host)} (letters, digits, '-' and '.')"
        )


def _check_docker_url(url: str) -> str:
    """Strictly ``unix:///abs/path`` (letters, digits, ``. _ - /``), ``tcp://host:port`` or
    ``ssh://[user@]host[:port]``: the URL reaches the Docker SDK and ``ssh``, so nothing else
    (spaces, ``;``, quotes, control characters) is let through."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"{_echo(url)} is not a URL: expected unix://, tcp:// or ssh://")
    if scheme not in ("unix", "tcp", "ssh"):
        hint = " (a remote engine is tcp://host:2376)" if scheme in ("http", "https") else ""
        raise ValueError(
            f"unsupported scheme {_echo(scheme + '://')}: expected unix://, tcp:// or ssh://{hint}"
        )
    if not _URL_CHARS_RE.fullmatch(url):
        raise ValueError(f"{_echo(url)} holds spaces or control characters")
    if scheme == "unix":
        if not rest.startswith("/"):
            raise ValueError(
                "a unix:// URL needs an absolute socket path: unix:///var/run/docker.sock"
            )
        if not _SOCKET_PATH_RE.fullmatch(rest) or "/../" in f"{rest}/":
            raise ValueError(
                f"{_echo(url)}: a socket path may hold only letters, digits, '.', '_', '-' "
                "and '/' (no '..')"
            )
        return url
    authority, _, path = rest.partition("/")
    if path or "?" in authority or "#" in authority:
        raise ValueError(f"{_echo(url)}: a {scheme}:// URL has no path, query or fragment")
    user, at, hostport = authority.rpartition("@")
    if at and ":" in user:  # checked first: no message below may echo it
        raise ValueError("do not put a password in a host URL; use an SSH key or TLS")
    if at and scheme == "tcp":
        raise ValueError("a tcp:// URL has no user; use tls for authentication")
    if at and not _SSH_USER_RE.fullmatch(user):
        raise ValueError(f"{_echo(url)}: invalid user name {_echo(user)}")
    match = re.fullmatch(r"(\[[^\]]*\]|[^:\[\]]*)(?::([^:]*))?", hostport)
    if match is None or not match.group(1):
        raise ValueError(f"{_echo(url)} has no host name")
    host, port = match.group(1), match.group(2)
    _check_host_name(url, host)
    if port is not None and not (port.isdigit() and len(port) <= 5 and 1 <= int(port) <= 65535):
        raise ValueError(f"{_echo(url)} has an invalid port (1-65535)")
    if scheme == "tcp" and port is None:
        raise ValueError(f"a tcp:// URL needs a port, e.g. tcp://{host}:2376")
    return url


def _check_http_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{_echo(url)} is not an http:// or https:// URL")
    return url


def _check_timezone(name: str) -> str:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        zones = zoneinfo.available_timezones()
        close = [z for z in zones if z.lower().endswith("/" + name.lower())]
        close = close or difflib.get_close_matches(name, zones, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ", e.g. 'Europe/Moscow'"
        raise ValueError(f"unknown time zone {_echo(name)}: use an IANA name{hint}") from None
    return name


_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_CRON_FIELDS: tuple[tuple[str, int, int, tuple[str, ...], int], ...] = (
    ("minute", 0, 59, (), 0),
    ("hour", 0, 23, (), 0),
    ("day-of-month", 1, 31, (), 0),
    ("month", 1, 12, _MONTHS, 1),  # last item: the number of the first name
    ("day-of-week", 0, 7, _DAYS, 0),
)


def _cron_value(expr: str, token: str, spec: tuple[str, int, int, tuple[str, ...], int]) -> int:
    field, low, high, names, base = spec
    if token.lower() in names:
        return names.index(token.lower()) + base
    if not token.isdigit() or not low <= int(token) <= high:
        raise ValueError(f"cron {_echo(expr)}: {field} {_echo(token)} is not in {low}-{high}")
    return int(token)


def _check_cron(expr: str) -> str:
    """Five crontab fields; each a list of ``*``, ``N``, ``N-M``, with optional ``/step``."""
    fields = expr.split()
    if expr.strip().startswith("@"):
        raise ValueError(f"cron {_echo(expr)}: macros are not supported; write the five fields")
    if len(fields) != 5:
        raise ValueError(
            f"cron {_echo(expr)} has {len(fields)} fields; expected 5 "
            "(minute hour day-of-month month day-of-week)"
        )
    for text, spec in zip(fields, _CRON_FIELDS, strict=True):
        for item in text.split(","):
            span, slash, step = item.partition("/")
            if slash and (not step.isdigit() or int(step) < 1):
                raise ValueError(
                    f"cron {_echo(expr)}: bad step {_echo(step)} in the {spec[0]} field"
                )
            if span == "*":
                continue
            first, dash, last = span.partition("-")
            if slash and not dash:
                raise ValueError(
                    f"cron {_echo(expr)}: a step needs '*' or a range ({spec[0]} field)"
                )
            start = _cron_value(expr, first, spec)
            if dash and start > _cron_value(expr, last, spec):
                raise ValueError(
                    f"cron {_echo(expr)}: empty range {_echo(span)} in the {spec[0]} field"
                )
    return expr


def _check_email(value: str) -> str:
    if not _EMAIL_RE.fullmatch(value):
        raise ValueError(f"{_echo(value)} is not an e-mail address")
    return value


def _check_sender(value: str) -> str:
    if not _EMAIL_RE.fullmatch(parseaddr(value)[1]):
        raise ValueError(
            f"{_echo(value)} is not an address like 'ops@example.com' or 'Ops <ops@…>'"
        )
    return value


def _phone_text(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError("quote the phone number: unquoted, YAML reads a number and drops '+'")
    return value


def _chat_id_text(value: Any) -> Any:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _none_as(empty: Callable[[], Any]) -> BeforeValidator:
    """``key:`` with nothing under it (YAML null) means an empty section."""
    return BeforeValidator(lambda value: empty() if value is None else value)


Name = Annotated[str, AfterValidator(_check_name)]
Text = Annotated[str, AfterValidator(_check_not_blank)]
HttpUrl = Annotated[str, AfterValidator(_check_http_url)]
Port = Annotated[int, Field(ge=1, le=65535, strict=True)]
Count = Annotated[int, Field(ge=1, strict=True)]
Labels = Annotated[dict[str, str], _none_as(dict)]

# --------------------------------------------------------------------------- models


class _Spec(BaseModel):
    # hide_input_in_errors: a ValidationError printed in a log must not show a secret
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class TlsConfig(_Spec):
    """Client TLS for a ``tcp://`` Docker endpoint (paths on the orchestrator's machine)."""

    ca: Text | None = None
    cert: Text | None = None
    key: Text | None = None
    verify: Annotated[bool, Field(strict=True)] = True

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TlsConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together: give both or neither")
        return self


class SshConfig(_Spec):
    """How cpdops logs in to an ``ssh://`` Docker host (paths on the orchestrator's machine).

    The host key is checked strictly: it must be in ``known_hosts`` (else in the system files
    ``~/.ssh/known_hosts``, ``/etc/ssh/ssh_known_hosts``); an unknown or changed key is refused.
    ``insecure_accept_new_host_key`` trusts a key seen for the first time (never a changed one).
    """

    identity_file: Text | None = None
    known_hosts: Text | None = None
    insecure_accept_new_host_key: Annotated[bool, Field(strict=True)] = False


class HostSpec(_Spec):
    """A Docker Engine endpoint."""

    name: Name
    url: Annotated[str, AfterValidator(_check_docker_url)]
    labels: Labels = Field(default_factory=dict)
    tls: TlsConfig | None = None
    ssh: SshConfig | None = None

    @field_validator("ssh")
    @classmethod
    def _ssh_only_for_ssh(cls, ssh: SshConfig | None, info: ValidationInfo) -> SshConfig | None:
        url = info.data.get("url")
        if ssh is not None and isinstance(url, str) and not url.startswith("ssh://"):
            raise ValueError(
                f"ssh applies to ssh:// URLs only; this host is {url.split(':')[0]}://"
            )
        return ssh

    @field_validator("tls")
    @classmethod
    def _tls_only_for_tcp(cls, tls: TlsConfig | None, info: ValidationInfo) -> TlsConfig | None:
        url = info.data.get("url")
        if tls is not None and isinstance(url, str) and not url.startswith("tcp://"):
            raise ValueError(
                f"tls applies to tcp:// URLs only; this host is {url.split(':')[0]}://"
            )
        return tls


class MaintenanceWindow(_Spec):
    """When a tenant may be updated: from each ``cron`` time (tenant's zone) for ``duration``."""

    cron: Annotated[str, AfterValidator(_check_cron)]
    duration: PositiveDuration


class Contact(_Spec):
    name: Text
    email: Annotated[str, AfterValidator(_check_email)] | None = None
    phone: Annotated[Text | None, BeforeValidator(_phone_text)] = None
    telegram_chat_id: Annotated[Text | None, BeforeValidator(_chat_id_text)] = None


class TenantSpec(_Spec):
    """A customer (Заказчик)."""

    slug: Name
    name: Text
    ring: Ring = "general"
    language: Language = "ru"
    timezone: Annotated[str, AfterValidator(_check_timezone)] = "UTC"
    maintenance_window: MaintenanceWindow | None = None
    contacts: Annotated[list[Contact], _none_as(list)] = Field(default_factory=list)
    channels: Annotated[list[Channel], _none_as(list)] = Field(default_factory=list)
    db_dsn: DsnText = None
    labels: Labels = Field(default_factory=dict)
    host: Name | None = None

    @field_validator("channels")
    @classmethod
    def _channels_reach_someone(cls, channels: list[str], info: ValidationInfo) -> list[str]:
        for channel in channels:
            if channels.count(channel) > 1:
                raise ValueError(f"channel {_echo(channel)} is listed twice")
        if "contacts" not in info.data:
            return channels  # the contacts are invalid and reported already
        contacts: list[Contact] = info.data["contacts"]
        if "email" in channels and not any(c.email for c in contacts):
            raise ValueError("channel 'email' needs a contact with an email")
        if "telegram" in channels and not any(c.telegram_chat_id for c in contacts):
            raise ValueError("channel 'telegram' needs a contact with a telegram_chat_id")
        return channels


class MonitorDefaults(_Spec):
    interval: PositiveDuration = 10.0
    timeout: PositiveDuration = 5.0
    failure_threshold: Count = 2
    recovery_threshold: Count = 1

    @field_validator("timeout")
    @classmethod
    def _timeout_within_interval(cls, timeout: float, info: ValidationInfo) -> float:
        interval = info.data.get("interval")
        if interval is not None and timeout > interval:
            raise ValueError(
                f"timeout ({format_duration(timeout)}) is longer than the interval "
                f"({format_duration(interval)})"
            )
        return timeout


def _status_codes(codes: list[int] | None) -> list[int] | None:
    if codes is None:
        return None
    if not codes:
        raise ValueError("must list at least one status code (leave the key out for 200)")
    bad = [code for code in codes if not 100 <= code <= 599]
    if bad:
        raise ValueError(f"status codes must be in 100..599, got {bad}")
    return codes


def _check_target(target: str) -> str:
    _check_not_blank(target)
    env_references(target)  # a ${VAR} reference must be well formed
    return target.strip()


class MonitorDeclaration(_Spec):
    """A monitor declared by hand (fleet file ``monitors.declared``, ``POST /api/v1/monitors``).

    Its id is ``<tenant>/<name>``. ``target`` and ``options`` are checked by the probe kind
    (``monitors.probes.VALIDATORS``); ``target`` may hold ``${VAR}`` references (a DSN's
    password) in the fleet file only, resolved when the monitor is configured and never shown;
    declared through the API (no ``env_references`` validation context) a target holding
    ``${`` is refused. Unset timing fields take the monitor defaults."""

    name: Annotated[Name, Field(description="unique within the tenant; the id is <tenant>/<name>")]
    tenant: Annotated[Name, Field(description="slug of a tenant in the registry")]
    kind: Annotated[str, Field(description="probe kind: http, tcp, sip, postgres, container")]
    target: Annotated[
        str,
        AfterValidator(_check_target),
        Field(
            repr=False,  # a DSN may hold a password
            description="what to probe, in the kind's form (URL, host:port, SIP URI, DSN, …)",
        ),
    ]
    host: Annotated[
        Name | None,
        Field(description="Docker host the target belongs to (label, correlation); optional"),
    ] = None
    interval: Annotated[
        PositiveDuration | None, Field(description="'30s' in the fleet file; seconds or '30s'")
    ] = None
    timeout: PositiveDuration | None = None
    failure_threshold: Count | None = None
    recovery_threshold: Count | None = None
    expect_status: Annotated[
        list[Annotated[int, Field(strict=True)]] | None,
        AfterValidator(_status_codes),
        Field(description="http: status codes that pass (default [200])"),
    ] = None
    options: Annotated[
        dict[str, Any],
        _none_as(dict),
        Field(description="the kind's own settings, e.g. http body_contains, sip accept_codes"),
    ] = Field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.tenant}/{self.name}"

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        from monitors.probes import PROBES  # imported late: the fleet file reads no probes

        if kind not in PROBES:
            raise ValueError(f"unknown probe kind {kind!r}; expected one of: {', '.join(PROBES)}")
        return kind

    @field_validator("target")
    @classmethod
    def _target_for_kind(cls, target: str, info: ValidationInfo) -> str:
        if "${" in target and not (info.context and info.context.get(_ENV_CONTEXT)):
            raise ValueError(ENV_REFUSED_HERE)
        problem = _kind_problem(info.data.get("kind"), target, {})
        if problem is not None and problem[0] == "target":
            raise ValueError(problem[1])
        return target

    @field_validator("options")
    @classmethod
    def _options_for_kind(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if "target" not in info.data:
            return options  # the target is invalid and reported already
        problem = _kind_problem(info.data.get("kind"), info.data["target"], options)
        if problem is not None:
            raise ValueError(problem[1])
        return options

    @model_validator(mode="after")
    def _timeout_within_interval(self) -> MonitorDeclaration:
        if self.interval is not None and self.timeout is not None and self.timeout > self.interval:
            raise ValueError(
                f"timeout ({format_duration(self.timeout)}) is longer than the interval "
                f"({format_duration(self.interval)})"
            )
        return self


def _kind_problem(kind: Any, target: str, options: dict[str, Any]) -> tuple[str, str] | None:
    from monitors.probe import MonitorSpec
    from monitors.probes import spec_problem

    if not isinstance(kind, str):
        return None  # the kind is invalid and reported already
    try:
        spec = MonitorSpec(
            id="-", name="-", tenant="-", host="", kind=kind, target=target, options=options
        )
    except ValueError:
        return None
    return spec_problem(spec)


class MonitorsSection(_Spec):
    defaults: Annotated[MonitorDefaults, _none_as(dict)] = Field(default_factory=MonitorDefaults)
    declared: Annotated[list[MonitorDeclaration], _none_as(list)] = Field(default_factory=list)


class MassIncidentThresholds(_Spec):
    """A mass incident opens when ≥ ``min_tenants`` tenants, or ≥ ``host_percent`` % of a
    host's tenants, fail within ``window``."""

    min_tenants: Count = 3
    host_percent: Annotated[float, Field(gt=0, le=100, strict=True)] = 50.0
    window: PositiveDuration = 300.0


class IncidentThresholds(_Spec):
    mass_incident: Annotated[MassIncidentThresholds, _none_as(dict)] = Field(
        default_factory=MassIncidentThresholds
    )
    recovery_hold: Duration = 120.0


class SmtpNotifier(_Spec):
    name: Name
    kind: Literal["smtp"]
    host: Text
    port: Port = 25
    starttls: Annotated[bool, Field(strict=True)] = False
    username: Text | None = None
    password: OptionalSecretText = None
    sender: Annotated[str, AfterValidator(_check_sender)]

    @model_validator(mode="after")
    def _password_needs_user(self) -> SmtpNotifier:
        if self.password is not None and self.username is None:
            raise ValueError("password is set but username is not")
        return self


class TelegramNotifier(_Spec):
    name: Name
    kind: Literal["telegram"]
    bot_token: SecretText
    api_url: HttpUrl = "https://api.telegram.org"


class WebhookNotifier(_Spec):
    name: Name
    kind: Literal["webhook"]
    url: HttpUrl
    secret: OptionalSecretText = None


class OtrsNotifier(_Spec):
    """OTRS/Znuny GenericInterface: ``url`` is the base, e.g. ``https://desk.example.ru/otrs``."""

    name: Name
    kind: Literal["otrs"]
    url: HttpUrl
    webservice: Text
    user_login: Text
    password: SecretText
    queue: Text
    # CustomerUser of a ticket whose tenant has no contact e-mail (a mass incident).
    customer_user: Text | None = None
    # Dynamic fields (Text) that hold our idempotency key and our ticket number.
    key_field: Annotated[str, Field(pattern=r"^[A-Za-z0-9]+$")] = "CpdopsKey"
    number_field: Annotated[str, Field(pattern=r"^[A-Za-z0-9]+$")] = "CpdopsTicketNumber"
    # Overrides of the maps to the desk's names (docs/incidents.md lists the defaults).
    states: dict[TicketStatus, Text] = Field(default_factory=dict)
    types: dict[TicketType, Text] = Field(default_factory=dict)
    priorities: dict[TicketPriority, Text] = Field(default_factory=dict)
    # How long a pending state («Решение предоставлено», awaiting info) waits in Znuny.
    pending_for: PositiveDuration = 7 * 86400.0


NOTIFIER_KINDS: Mapping[str, type[_Spec]] = types.MappingProxyType(
    {
        "smtp": SmtpNotifier,
        "telegram": TelegramNotifier,
        "webhook": WebhookNotifier,
        "otrs": OtrsNotifier,
    }
)
NotifierSpec = Annotated[
    SmtpNotifier | TelegramNotifier | WebhookNotifier | OtrsNotifier, Field(discriminator="kind")
]
# The secret fields (:data:`SecretText`): "" a tenant's, else a notifier kind's.
_SECRET_MODELS: dict[str, type[BaseModel]] = {"": TenantSpec, **NOTIFIER_KINDS}
_SECRET_KEYS: Mapping[str, tuple[str, ...]] = {
    kind: tuple(name for name in model.model_fields if is_secret_field(model, name))
    for kind, model in _SECRET_MODELS.items()
}


class FleetFile(_Spec):
    """The whole fleet file. Durations are seconds (float); they dump back as ``"1h30m"``."""

    version: Annotated[int, Field(strict=True), AfterValidator(_check_version)]
    # The environment variables of the orchestrator that ${NAME} references may read; a
    # reference to any other name is an error (docs/fleet-file.md, "Secrets").
    environment: Annotated[list[EnvName], _none_as(list)] = Field(default_factory=list)
    hosts: Annotated[list[HostSpec], _none_as(list)] = Field(default_factory=list)
    tenants: Annotated[list[TenantSpec], _none_as(list)] = Field(default_factory=list)
    monitors: Annotated[MonitorsSection, _none_as(dict)] = Field(default_factory=MonitorsSection)
    incidents: Annotated[IncidentThresholds, _none_as(dict)] = Field(
        default_factory=IncidentThresholds
    )
    notifiers: Annotated[list[NotifierSpec], _none_as(list)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> FleetFile:
        problems = _cross_check(self.model_dump(), {})
        if problems:
            detail = "; ".join(f"{_format_path(loc)}: {message}" for loc, message in problems)
            raise PydanticCustomError("fleet_consistency", "{detail}", {"detail": detail})
        return self

    def redacted(self) -> FleetFile:
        """A copy with every secret replaced by ``"***"``."""
        result = _redact(self)
        assert isinstance(result, FleetFile)
        return result

    def public_dict(self) -> dict[str, Any]:
        """JSON-ready, in fleet-file form (durations as ``"5m"``), secrets replaced by ``"***"``."""
        return self.redacted().model_dump(mode="json")


def _redact(value: Any) -> Any:
    if isinstance(value, BaseModel):
        model = type(value)
        updates = {
            name: REDACTED if is_secret_field(model, name) else _redact(getattr(value, name))
            for name in model.model_fields
            if getattr(value, name) is not None
        }
        if isinstance(value, MonitorDeclaration):  # a DSN target may hold a password
            updates["target"] = public_target(value.target)
        return value.model_copy(update=updates)
    if isinstance(value, list):
        return [_redact(item) for item in value]
    if isinstance(value, dict):
        return {key: _redact(item) for key, item in value.items()}
    return value


def _cross_check(data: Any, lines: Mapping[Loc, int]) -> list[tuple[Loc, str]]:
    """Rules spanning items, on plain data (valid or not): unique names, known tenant hosts."""
    problems: list[tuple[Loc, str]] = []
    if not isinstance(data, dict):
        return problems

    def items(section: str) -> list[tuple[int, dict[str, Any]]]:
        found = data.get(section)
        entries = found if isinstance(found, list) else []
        return [(i, item) for i, item in enumerate(entries) if isinstance(item, dict)]

    for section, key, what in (
        ("hosts", "name", "host name"),
        ("tenants", "slug", "tenant slug"),
        ("notifiers", "name", "notifier name"),
    ):
        seen: dict[str, int] = {}
        for index, item in items(section):
            value = item.get(key)
            if not isinstance(value, str):
                continue
            if value in seen:
                first: Loc = (section, seen[value], key)
                at = f", line {lines[first]}" if first in lines else ""
                message = (
                    f"duplicate {what} {_echo(value)} (first used by {_format_path(first)}{at})"
                )
                problems.append(((section, index, key), message))
            else:
                seen[value] = index
    hosts = {item["name"] for _, item in items("hosts") if isinstance(item.get("name"), str)}
    if not isinstance(data.get("hosts", []), list | None):
        return problems  # the hosts section itself is wrong: reported by validation
    for index, tenant in items("tenants"):
        host = tenant.get("host")
        if isinstance(host, str) and host not in hosts:
            known = ", ".join(sorted(hosts)) or "none"
            problems.append(
                (
                    ("tenants", index, "host"),
                    f"unknown host {_echo(host)} (hosts in this file: {known})",
                )
            )
    problems += _check_declared(data, lines, hosts)
    problems += _check_references(data)
    return problems


def _secret_values(data: dict[str, Any]) -> list[tuple[Loc, str]]:
    """Every value where ``${NAME}`` is a reference: the secret fields and the declared
    monitors' targets, with their paths."""
    found: list[tuple[Loc, Any]] = []
    tenants = data.get("tenants")
    for index, tenant in enumerate(tenants if isinstance(tenants, list) else []):
        if isinstance(tenant, dict):
            found += [(("tenants", index, key), tenant.get(key)) for key in _SECRET_KEYS[""]]
    notifiers = data.get("notifiers")
    for index, notifier in enumerate(notifiers if isinstance(notifiers, list) else []):
        if isinstance(notifier, dict):
            keys = _SECRET_KEYS.get(str(notifier.get("kind")), ())
            found += [(("notifiers", index, key), notifier.get(key)) for key in keys]
    section = data.get("monitors")
    declared = section.get("declared") if isinstance(section, dict) else None
    for index, item in enumerate(declared if isinstance(declared, list) else []):
        if isinstance(item, dict):
            found.append((("monitors", "declared", index, "target"), item.get("target")))
    return [(loc, value) for loc, value in found if isinstance(value, str)]


def _check_references(data: dict[str, Any]) -> list[tuple[Loc, str]]:
    """Each ``${NAME}`` names a variable of the top-level ``environment`` list."""
    listed = data.get("environment")
    allowed = {n for n in listed if isinstance(n, str)} if isinstance(listed, list) else set()
    problems: list[tuple[Loc, str]] = []
    for loc, value in _secret_values(data):
        try:
            names = env_references(value)
        except ValueError:
            continue  # malformed: reported by the field's own check
        for name in dict.fromkeys(names):
            if name not in allowed:
                problems.append(
                    (
                        loc,
                        f"${{{name}}} is not declared: list {name} under the top-level "
                        "'environment' (the variables of cpdops's environment this file may "
                        "read)",
                    )
                )
    return problems


def _check_declared(
    data: dict[str, Any], lines: Mapping[Loc, int], hosts: set[str]
) -> list[tuple[Loc, str]]:
    """``monitors.declared``: known tenants and hosts, one monitor per ``tenant/name``."""
    problems: list[tuple[Loc, str]] = []
    section = data.get("monitors")
    declared = section.get("declared") if isinstance(section, dict) else None
    if not isinstance(declared, list):
        return problems
    tenants = data.get("tenants")
    slugs = {
        t["slug"]
        for t in (tenants if isinstance(tenants, list) else [])
        if isinstance(t, dict) and isinstance(t.get("slug"), str)
    }
    seen: dict[str, int] = {}
    for index, item in enumerate(declared):
        if not isinstance(item, dict):
            continue
        loc: Loc = ("monitors", "declared", index)
        tenant, name, host = item.get("tenant"), item.get("name"), item.get("host")
        if isinstance(tenant, str) and tenant not in slugs:
            known = ", ".join(sorted(slugs)) or "none"
            problems.append(
                (
                    (*loc, "tenant"),
                    f"unknown tenant {_echo(tenant)} (tenants in this file: {known})",
                )
            )
        if isinstance(host, str) and host not in hosts:
            known = ", ".join(sorted(hosts)) or "none"
            problems.append(
                ((*loc, "host"), f"unknown host {_echo(host)} (hosts in this file: {known})")
            )
        if not isinstance(tenant, str) or not isinstance(name, str):
            continue
        key = f"{tenant}/{name}"
        if key in seen:
            first: Loc = ("monitors", "declared", seen[key], "name")
            at = f", line {lines[first]}" if first in lines else ""
            message = (
                f"duplicate monitor {_echo(key)} (first declared by {_format_path(first)}{at})"
            )
            problems.append(((*loc, "name"), message))
        else:
            seen[key] = index
    return problems


# --------------------------------------------------------------------------- YAML → data

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_MAX_VALUES = 100_000
MAX_DEPTH = 64
"""Deepest nesting of mappings and lists read (PyYAML's composer recurses once per level)."""


class _TooLarge(Exception):
    pass


class _TooDeep(Exception):
    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


class _DepthLimitedLoader(yaml.SafeLoader):
    """SafeLoader whose composer stops at :data:`MAX_DEPTH` levels, before Python's recursion
    limit (a 100,000-deep ``[[[…`` ends in a RecursionError otherwise)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                event = self.peek_event()  # type: ignore[no-untyped-call]
                raise _TooDeep(event.start_mark.line + 1)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _YamlReader:
    """Builds plain data from composed nodes, recording the line of every key path.

    Keys are always strings (as written). Anchors, aliases and ``<<`` merge keys work as in
    YAML 1.1; a key is duplicated only if written twice in the same mapping.
    """

    def __init__(self) -> None:
        self.lines: dict[Loc, int] = {}
        self.problems: list[tuple[Loc, int, str]] = []
        self._constructor = SafeConstructor()
        self._open: set[int] = set()
        self._count = 0
        self._depth = 0

    def read(self, node: Node, loc: Loc) -> Any:
        self.lines.setdefault(loc, node.start_mark.line + 1)
        self._count += 1
        if self._count > _MAX_VALUES:
            raise _TooLarge
        if isinstance(node, ScalarNode):
            return self._scalar(node, loc)
        if self._depth >= MAX_DEPTH:  # deeper through aliases than the composer let through
            raise _TooDeep(node.start_mark.line + 1)
        if id(node) in self._open:
            self._problem(loc, node, "an alias refers to its own anchor (recursive structure)")
            return None
        self._open.add(id(node))
        self._depth += 1
        try:
            if isinstance(node, SequenceNode) and node.tag == _SEQ_TAG:
                return self._sequence(node, loc)
            if isinstance(node, MappingNode) and node.tag == _MAP_TAG:
                return self._mapping(node, loc)
            self._problem(loc, node, f"unsupported YAML tag {node.tag!r}")
            return None
        finally:
            self._depth -= 1
            self._open.discard(id(node))

    def _problem(self, loc: Loc, node: Node, message: str) -> None:
        self.problems.append((loc, node.start_mark.line + 1, message))

    def _scalar(self, node: ScalarNode, loc: Loc) -> Any:
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError:
            self._problem(loc, node, f"unsupported YAML tag {node.tag!r}")
        except ValueError as exc:  # e.g. a date such as 2024-13-45
            self._problem(loc, node, f"cannot read this value ({exc}); quote it")
        return None

    def _sequence(self, node: SequenceNode, loc: Loc) -> list[Any]:
        items = []
        for index, item in enumerate(node.value):
            self.lines[(*loc, index)] = item.start_mark.line + 1
            items.append(self.read(item, (*loc, index)))
        return items

    def _mapping(self, node: MappingNode, loc: Loc) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:  # merged keys first: written keys override
            if key_node.tag == _MERGE_TAG:
                sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
                for source in reversed(sources):  # earlier sources win
                    merged = self.read(source, loc)
                    if isinstance(merged, dict):
                        result.update(merged)
                    else:
                        self._problem(loc, source, "'<<' can only merge mappings")
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, ScalarNode):
                self._problem(loc, key_node, "a key must be a plain value, not a list or mapping")
                continue
            key = str(key_node.value)
            if key in first_line:
                message = f"duplicate key {_echo(key)} (first at line {first_line[key]})"
                self.problems.append(((*loc, key), line, message))
                continue
            first_line[key] = line
            self.lines[(*loc, key)] = line
            result[key] = self.read(value_node, (*loc, key))
        return result


# --------------------------------------------------------------------------- error reports

_PLAIN_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")


def _format_path(loc: Sequence[str | int]) -> str:
    """``("tenants", 2, "ring")`` → ``tenants[2].ring``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _PLAIN_KEY_RE.fullmatch(part):
            text += f".{part}" if text else part
        else:
            text += f"[{json.dumps(part, ensure_ascii=False)}]"
    return text


def _yaml_type(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    names: list[tuple[Any, str]] = [(bool, "a boolean"), (int | float, "a number")]
    names += [(str, "a string"), (dict, "a mapping"), (list, "a list"), (date, "a date")]
    return next((name for kind, name in names if isinstance(value, kind)), "another value")


def _unwrap(tp: Any) -> Any:
    """Strip ``Annotated`` and ``X | None`` down to ``X``."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [arg for arg in get_args(tp) if arg is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _walk(loc: Sequence[str | int]) -> tuple[Loc, type[BaseModel] | None]:
    """Turn a pydantic ``loc`` into a data path (dropping notifier tags) and the model there."""
    tp: Any = FleetFile
    path: list[str | int] = []
    for part in loc:
        tp = _unwrap(tp)
        if get_origin(tp) in (Union, types.UnionType) and part in NOTIFIER_KINDS:
            tp = NOTIFIER_KINDS[str(part)]
            continue
        if part == "[key]":
            continue
        path.append(part)
        if isinstance(tp, type) and issubclass(tp, BaseModel) and part in tp.model_fields:
            tp = tp.model_fields[str(part)].annotation
        elif get_origin(tp) is list and isinstance(part, int):
            tp = get_args(tp)[0]
        elif get_origin(tp) is dict and isinstance(part, str):
            tp = get_args(tp)[1]
        else:
            tp = None
    tp = _unwrap(tp)
    return tuple(path), tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _describe(error: ErrorDetails) -> tuple[Loc, str]:
    """A data path and an operator's message for one pydantic error."""
    path, _ = _walk(error["loc"])
    kind, value, ctx = error["type"], error["input"], error.get("ctx", {})
    kinds = ", ".join(NOTIFIER_KINDS)
    if kind == "extra_forbidden":
        _, model = _walk(error["loc"][:-1])
        allowed = list(model.model_fields) if model else []
        close = difflib.get_close_matches(str(path[-1]), allowed, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"expected one of: {', '.join(allowed)}"
        return path, f"unknown key {_echo(path[-1])}; {hint}"
    if kind == "missing":
        return path, f"missing required key {_echo(path[-1])}"
    if kind == "union_tag_invalid":
        return (*path, "kind"), f"unknown notifier kind {ctx['tag']!r}; expected one of: {kinds}"
    if kind == "union_tag_not_found":
        return (*path, "kind"), f"missing required key 'kind' (one of: {kinds})"
    if kind == "value_error":
        return path, error["msg"].removeprefix("Value error, ")
    if kind == "literal_error":
        return path, f"invalid value {_echo(value)}; expected {ctx['expected']}"
    if kind in ("string_type", "dict_type", "list_type", "model_type", "model_attributes_type"):
        wanted = {"string_type": "a string", "list_type": "a list"}.get(kind, "a mapping")
        scalar = isinstance(value, int | float | date)
        quote = " (quote it)" if wanted == "a string" and scalar else ""
        return path, f"expected {wanted}, got {_yaml_type(value)}{quote}"
    message = error["msg"].replace("Input should be", "must be")
    if isinstance(value, int | float) and kind.startswith(("greater", "less")):
        message += f" (got {value!r})"
    elif kind.endswith(("_type", "_parsing")):
        message += f" (got {_yaml_type(value)})"
    return path, message


def _line_of(loc: Loc, lines: Mapping[Loc, int]) -> int | None:
    """The line of ``loc`` or of its nearest ancestor that is written in the file."""
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


_MAX_MESSAGE = 300
_MAX_SHOWN = 20


def _one_line(text: str, limit: int = _MAX_MESSAGE) -> str:
    """A message as one short line: no CR/LF (an echoed value could hold them), at most
    ``limit`` characters."""
    flat = re.sub(r"[\r\n\x0b\x0c\x85\u2028\u2029]+", " ", text)
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _report(problems: list[Problem], path: str) -> FleetFileError:
    """One error for every problem: a single line when there is one, else a line each (the
    first :data:`_MAX_SHOWN`, then how many more)."""
    unique = [
        (_one_line(key, 80), line, _one_line(message))
        for key, line, message in sorted(dict.fromkeys(problems), key=lambda p: p[1] or 0)
    ]
    if len(unique) == 1:
        key, line, message = unique[0]
        return FleetFileError(
            f"{key}: {message}" if key else message, path=path, line=line, errors=unique
        )
    rows = [f"{len(unique)} problems in the fleet file:"]
    for key, line, message in unique[:_MAX_SHOWN]:
        where = f"{path}:{line}" if line is not None else path
        rows.append(f"  {where}: {key}: {message}" if key else f"  {where}: {message}")
    if len(unique) > _MAX_SHOWN:
        rows.append(f"  … and {len(unique) - _MAX_SHOWN} more")
    return FleetFileError("\n".join(rows), path=path, errors=unique)


# --------------------------------------------------------------------------- public entry points


def _too_deep(path: str, line: int) -> FleetFileError:
    message = f"mappings and lists nest deeper than {MAX_DEPTH} levels"
    return FleetFileError(message, path=path, line=line, errors=[("", line, message)])


def parse_fleet_text(text: str, *, path: str = "<string>") -> FleetFile:
    """Parse and validate fleet-file YAML; ``path`` names the source in error messages.

    Raises :class:`FleetFileError` listing every problem (``.errors``) with key path and line.
    """
    try:
        root = yaml.compose(text, Loader=_DepthLimitedLoader)
    except _TooDeep as exc:
        raise _too_deep(path, exc.line) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        detail = "; ".join(str(part) for part in (exc.context, exc.problem) if part)
        column = f" (column {mark.column + 1})" if mark else ""
        message = f"YAML syntax error: {detail}{column}"
        raise FleetFileError(message, path=path, line=line, errors=[("", line, message)]) from None
    except yaml.YAMLError as exc:  # ReaderError: a control character in the text
        position = getattr(exc, "position", 0)
        line = text.count("\n", 0, position) + 1
        message = f"not valid YAML text: {getattr(exc, 'reason', exc)}"
        raise FleetFileError(message, path=path, line=line, errors=[("", line, message)]) from None
    if root is None or (isinstance(root, ScalarNode) and root.tag.endswith(":null")):
        raise FleetFileError("the file is empty; a fleet file starts with 'version: 1'", path=path)
    if not isinstance(root, MappingNode):
        what = "a list" if isinstance(root, SequenceNode) else "a single value"
        line = root.start_mark.line + 1
        message = f"the top level must be a mapping (version:, hosts:, tenants:, …), not {what}"
        raise FleetFileError(message, path=path, line=line, errors=[("", line, message)])

    reader = _YamlReader()
    try:
        data = reader.read(root, ())
    except _TooLarge:
        message = f"the file expands to more than {_MAX_VALUES} values (aliases?)"
        raise FleetFileError(message, path=path) from None
    except _TooDeep as exc:
        raise _too_deep(path, exc.line) from None
    problems: list[Problem] = [(_format_path(loc), line, msg) for loc, line, msg in reader.problems]
    if isinstance(data, dict):  # ``x-…`` top-level keys hold anchors for reuse; ignored
        data = {key: value for key, value in data.items() if not key.startswith("x-")}
    cross = _cross_check(data, reader.lines)
    problems += [(_format_path(loc), _line_of(loc, reader.lines), msg) for loc, msg in cross]
    fleet: FleetFile | None = None
    try:
        fleet = FleetFile.model_validate(data, context={_FILE_CONTEXT: True, _ENV_CONTEXT: True})
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            if error["type"] == "fleet_consistency" and cross:
                continue  # already reported above, with lines
            loc, message = _describe(error)
            problems.append((_format_path(loc), _line_of(loc, reader.lines), message))
    if problems or fleet is None:
        raise _report(problems, path)
    return fleet


def load_fleet_file(path: str | Path) -> FleetFile:
    """Read, parse and validate a fleet file (UTF-8; a BOM is allowed; at most 4 MiB, and a
    FIFO or device only until ``readfile.READ_DEADLINE_S``)."""
    name = str(path)
    raw = read_limited(name)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        message = f"not UTF-8 text (bad byte at offset {exc.start})"
        raise FleetFileError(message, path=name) from None
    return parse_fleet_text(text, path=name)
