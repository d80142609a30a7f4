"""redact(): every secret pattern is replaced, ordinary text is left as it is."""

from __future__ import annotations

import pytest

from orchestrator.incidents.redact import REDACTED, is_secret_key, redact, redact_text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # passwords in URLs and DSNs
        (
            "connect postgresql://app:s3cr3t@10.0.0.5:5432/acme failed",
            "connect postgresql://app:***@10.0.0.5:5432/acme failed",
        ),
        ("proxy=http://u:p%40ss@proxy:3128", "proxy=http://u:***@proxy:3128"),
        ("amqp://guest:guest@mq/", "amqp://guest:***@mq/"),
        # libpq keyword form
        (
            "host=db user=app password=s3cr3t dbname=acme",
            "host=db user=app password=*** dbname=acme",
        ),
        ("password='with space' port=5432", "password=*** port=5432"),
        # KEY=value with a key that names a secret
        ("DB_PASSWORD=hunter2", "DB_PASSWORD=***"),
        ("export API_KEY=abc123 REGION=eu", "export API_KEY=*** REGION=eu"),
        ("GET /calls?tenant=acme&token=abcdef&x=1", "GET /calls?tenant=acme&token=***&x=1"),
        ("client_secret = 'xyz'", "client_secret = ***"),
        ("X-Auth-Token: deadbeef", "X-Auth-Token: ***"),
        # "key": "value"
        (
            '{"user": "app", "password": "s3\\"cr3t", "n": 1}',
            '{"user": "app", "password": "***", "n": 1}',
        ),
        ("{'api_key': 'k-123'}", "{'api_key': '***'}"),
        ('{"Authorization": "Bearer abc.def.ghi"}', '{"Authorization": "***"}'),
        # Authorization headers
        ("Authorization: Bearer eyJhbGciOi.J9.sig", "Authorization: Bearer ***"),
        ("authorization: Basic dXNlcjpwYXNz", "authorization: Basic ***"),
        ("curl -H 'Authorization: Bearer abcdefgh1234'", "curl -H 'Authorization: Bearer ***'"),
        ("sent with Bearer abcdefgh12345678", "sent with Bearer ***"),
        # Telegram bot tokens in URLs
        (
            "POST https://api.telegram.org/bot123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/sendMessage",
            "POST https://api.telegram.org/bot***/sendMessage",
        ),
    ],
)
def test_each_pattern_is_redacted(text: str, expected: str) -> None:
    assert redact_text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "the token expired, asking for a new one",
        "password reset mail sent to the customer",
        "GET /health HTTP/1.1 200 -",
        "listening on http://0.0.0.0:8080/health",
        "at 2026-12-01 12:03:25 UTC: call 12:30 to +74950000001",
        "secret santa list updated",
        "Bearer token missing",
        "https://api.telegram.org/bot/sendMessage",
        'the {"status": "failing", "version": "2"} body',
        "ssh://git@example.org/repo.git",
    ],
)
def test_ordinary_text_is_kept(text: str) -> None:
    assert redact_text(text) == text


def test_mappings_lists_and_keys() -> None:
    evidence = {
        "status_code": 500,
        "ok": False,
        "body": '{"status": "failing", "token": "abc"}',
        "labels": {"tenant": "acme", "DB_PASSWORD": "hunter2", "smartcpd.api-key": "k"},
        "env": ["SMARTCPD_TENANT=acme", "SMARTCPD_DB_DSN=postgresql://a:b@db/acme"],
        "details": {"secret": {"nested": "x"}, "empty_token": "", "reason": None},
    }
    assert redact(evidence) == {
        "status_code": 500,
        "ok": False,
        "body": '{"status": "failing", "token": "***"}',
        "labels": {"tenant": "acme", "DB_PASSWORD": REDACTED, "smartcpd.api-key": REDACTED},
        "env": ["SMARTCPD_TENANT=acme", "SMARTCPD_DB_DSN=postgresql://a:***@db/acme"],
        "details": {"secret": REDACTED, "empty_token": "", "reason": None},
    }


def test_redacting_twice_changes_nothing_more() -> None:
    text = "DB_PASSWORD=x Authorization: Bearer abcdefgh123 postgresql://a:b@h/d"
    once = redact_text(text)
    assert redact_text(once) == once
    assert "x " not in once and "abcdefgh123" not in once and ":b@" not in once


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("password", True),
        ("PGPASSWORD", True),
        ("db_passwd", True),
        ("client_secret", True),
        ("X-Auth-Token", True),
        ("api_key", True),
        ("apikey", True),
        ("Authorization", True),
        ("tenant", False),
        ("status_code", False),
        ("body", False),
    ],
)
def test_secret_keys(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret
