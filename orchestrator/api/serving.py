"""How cpdops serves HTTP: the client address behind proxies, and request logs without secrets.

**Client address.** uvicorn's own proxy handling (on by default) believes ``X-Forwarded-For``
from 127.0.0.1, so any local client — or a proxy that passes the header on as the client sent
it — could write any address into the audit log. cpdops turns it off (:func:`uvicorn_options`,
``proxy_headers=False``) and applies :class:`~uvicorn.middleware.proxy_headers.
ProxyHeadersMiddleware` itself, only for ``CPDOPS_TRUSTED_PROXIES`` (IPs and CIDRs, default
none): a request from a trusted proxy gets the rightmost address of ``X-Forwarded-For`` that
is not a trusted proxy (as ``uvicorn --forwarded-allow-ips`` does), any other keeps its
connection's address. ``X-Real-IP`` is never read.

**Request logs.** A token sent as ``?access_token=cpd_…`` (refused, 401) was written to the
access log in full. :class:`QueryRedaction`, a :class:`logging.Filter`, replaces the value of
every query parameter that names a secret (``orchestrator.incidents.redact.redact_query``) in
a record's message and arguments; :func:`install_log_redaction` puts it on uvicorn's loggers
(``create_app`` does) and :func:`uvicorn_options` on the handlers of uvicorn's log config.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from fastapi import FastAPI
from uvicorn.config import LOGGING_CONFIG
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from orchestrator.incidents.redact import redact_query
from orchestrator.settings import Settings

REQUEST_LOGGERS = ("uvicorn.access", "uvicorn.error")


class QueryRedaction(logging.Filter):
    """Masks secret query parameters (``token``, ``access_token``, ``api_key``, ``sig``, …) in
    a log record, its message and its arguments; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_query(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact_query(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {
                k: redact_query(v) if isinstance(v, str) else v for k, v in record.args.items()
            }
        return True


def install_log_redaction(names: tuple[str, ...] = REQUEST_LOGGERS) -> None:
    """Put one :class:`QueryRedaction` on each logger of ``names`` (again: nothing added)."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, QueryRedaction) for f in logger.filters):
            logger.addFilter(QueryRedaction())


def log_config() -> dict[str, Any]:
    """uvicorn's default log config with :class:`QueryRedaction` on each of its handlers."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_query"] = {"()": QueryRedaction}
    for handler in config["handlers"].values():
        handler.setdefault("filters", []).append("redact_query")
    return config


def trust_proxies(app: FastAPI, settings: Settings) -> None:
    """Client addresses from ``X-Forwarded-For`` of the configured proxies only (none: the
    header is ignored). Added last, so it runs first: the audit sees the address it gives."""
    if settings.trusted_proxies:
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=list(settings.trusted_proxies))


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The ``uvicorn.run`` / ``uvicorn.Config`` options of ``cpdops serve``: uvicorn's proxy
    handling off (cpdops's own is :func:`trust_proxies`), the request logs redacted."""
    return {
        "host": settings.bind_host,
        "port": settings.bind_port,
        "log_level": "info",
        "proxy_headers": False,
        "log_config": log_config(),
    }
