"""orchestrator.api.serving: the log filter that masks query credentials, the trusted proxies."""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError

from orchestrator.api.serving import QueryRedaction, log_config, uvicorn_options
from orchestrator.settings import Settings


def _record(msg: str, args: tuple[object, ...]) -> logging.LogRecord:
    return logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, msg, args, None)


@pytest.mark.parametrize(
    ("path", "shown"),
    [
        ("/api/v1/x?access_token=cpd_0123456789ab_abc", "/api/v1/x?access_token=***"),
        ("/x?tenant=acme&token=t&page=2", "/x?tenant=acme&token=***&page=2"),
        (
            "/x?api_key=k&secret=s&password=p&pass=q",
            "/x?api_key=***&secret=***&password=***&pass=***",
        ),
        ("/x?auth=a&signature=b&sig=c&key=d", "/x?auth=***&signature=***&sig=***&key=***"),
        (
            "/x?X-Amz-Credential=a%2Fb&X-Amz-Signature=ff",
            "/x?X-Amz-Credential=***&X-Amz-Signature=***",
        ),
        ("/healthz", "/healthz"),
        ("/x?tenant=acme&status=down", "/x?tenant=acme&status=down"),
    ],
)
def test_the_access_line_masks_query_credentials(path: str, shown: str) -> None:
    record = _record('%s - "%s %s HTTP/%s" %d', ("127.0.0.1:5", "GET", path, "1.1", 401))
    assert QueryRedaction().filter(record) is True
    assert record.getMessage() == f'127.0.0.1:5 - "GET {shown} HTTP/1.1" 401'


def test_a_preformatted_message_is_masked_too() -> None:
    record = _record("request GET /x?token=abc failed", ())
    QueryRedaction().filter(record)
    assert record.getMessage() == "request GET /x?token=*** failed"


def test_every_uvicorn_handler_filters() -> None:
    config = log_config()
    assert config["filters"]["redact_query"]["()"] is QueryRedaction
    assert all("redact_query" in h["filters"] for h in config["handlers"].values())
    assert uvicorn_options(Settings())["proxy_headers"] is False


def test_trusted_proxies_are_ips_and_cidrs() -> None:
    assert Settings(trusted_proxies="10.0.0.5, 172.18.0.0/16,::1").trusted_proxies == [
        "10.0.0.5",
        "172.18.0.0/16",
        "::1",
    ]
    assert Settings().trusted_proxies == []
    with pytest.raises(ValidationError, match=r"'proxy\.example' is not an IP address or CIDR"):
        Settings(trusted_proxies="10.0.0.5,proxy.example")
