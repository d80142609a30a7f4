"""The secret values cpdops itself holds, for :class:`orchestrator.incidents.redact.Redactor`.

A pattern finds ``password=…``; it cannot find a tenant's database password printed bare by
an application (``connecting as app/Zq81…``). What cpdops knows it can mask by value:

* each secret field of the fleet file as stored by ``cpdops apply`` — ``tenants[].db_dsn``
  and the notifiers' ``password``, ``bot_token``, ``secret`` — as written and resolved, and a
  DSN's password on its own;
* the credentials in a monitor's own target (:func:`target_secrets`, added per ticket);
* the value of every environment variable the stored fleet file references (``${NAME}`` in a
  secret field or in a declared monitor's target);
* cpdops's own secrets from its settings (the intakes' shared secrets, the state database's
  password), given by the caller (:func:`settings_secrets`).

Read from the database and the environment given: nothing is cached, so a new fleet file or a
rotated secret counts at the next ticket. Never logged.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, unquote, urlsplit

from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session

from orchestrator.db.models import DeclaredMonitor, Notifier, Tenant
from orchestrator.errors import CpdopsError
from orchestrator.fleet.fleetfile import (
    NOTIFIER_KINDS,
    env_references,
    is_secret_field,
    resolve_secret,
)
from orchestrator.incidents.redact import is_secret_key
from orchestrator.settings import Settings


def _password_of(value: str) -> str | None:
    """The password of a URL / DSN (``scheme://user:pw@…`` or libpq ``password=…``)."""
    try:
        parts = urlsplit(value)
        if parts.password:
            return unquote(parts.password)
    except ValueError:
        pass
    for word in value.split():
        key, sep, rest = word.partition("=")
        if sep and key.strip().lower() == "password" and rest:
            return rest.strip("'\"")
    return None


def _expand(value: str, env: Mapping[str, str]) -> list[str]:
    """``value`` as written and with its references resolved, the referenced variables'
    values, and the password of either form."""
    try:
        names = env_references(value)
    except ValueError:
        names = []
    found = [value, *(env[name] for name in names if env.get(name))]
    with contextlib.suppress(CpdopsError):  # a variable is unset: the value is unused too
        found.append(resolve_secret(value, env))
    found += [p for p in map(_password_of, found) if p]
    return found


def _referenced(value: str, env: Mapping[str, str]) -> list[str]:
    try:
        names = env_references(value)
    except ValueError:
        return []
    return [env[name] for name in names if env.get(name)]


def target_secrets(target: str) -> list[str]:
    """The credentials a monitor's target carries (resolved): its URL or DSN password and the
    values of its query parameters that name a secret (``?token=…``), so a ticket never shows
    them even where the probed server echoes them back."""
    found = [p for p in (_password_of(target),) if p]
    try:
        query = urlsplit(target).query
    except ValueError:
        query = ""
    found += [v for k, v in parse_qsl(query, keep_blank_values=False) if is_secret_key(k) and v]
    return found


def known_secrets(
    session: Session, environ: Mapping[str, str] | None = None, *, extra: Iterable[str] = ()
) -> list[str]:
    """Every secret value of the module docstring (unordered, without duplicates)."""
    env = os.environ if environ is None else environ
    found: set[str] = {value for value in extra if value}
    for dsn in session.scalars(select(Tenant.db_dsn).where(Tenant.db_dsn.is_not(None))):
        if dsn:
            found.update(_expand(dsn, env))
    for kind, settings in session.execute(select(Notifier.kind, Notifier.settings)):
        model = NOTIFIER_KINDS.get(kind)
        for key, value in (settings or {}).items():
            if model is None or key not in model.model_fields or not isinstance(value, str):
                continue
            if is_secret_field(model, key) and value:
                found.update(_expand(value, env))
    targets = select(DeclaredMonitor.target).where(DeclaredMonitor.source == "fleet")
    for target in session.scalars(targets):
        found.update(_referenced(target, env))
        password = _password_of(target)
        if password:
            found.add(password)
    return sorted(found)


def settings_secrets(settings: Settings) -> list[str]:
    """cpdops's own secrets: the intakes' shared secrets and the state database's password."""
    out = [
        secret.get_secret_value()
        for secret in (settings.alertmanager_secret, settings.telegram_secret)
        if secret is not None and secret.get_secret_value()
    ]
    try:
        password = make_url(settings.database_url).password
    except (ArgumentError, ValueError):  # not a URL SQLAlchemy reads: nothing to add
        password = None
    if password:
        out.append(str(password))
    return out
