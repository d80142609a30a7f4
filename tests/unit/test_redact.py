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


# The forms a container log showed in ticket evidence unredacted (issue 12, item 2).
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "DB_PASS=hunter2-XYZ --password hunter2-XYZ",
            "DB_PASS=*** --password ***",
        ),
        ("login pass=hunter2 user=app", "login pass=*** user=app"),
        ("SMTP_PASS: hunter2", "SMTP_PASS: ***"),
        ("credentials=admin:hunter2 next", "credentials=*** next"),
        ("AWS_CREDENTIALS=abc", "AWS_CREDENTIALS=***"),
        ("<password>hunter2</password>", "<password>***</password>"),
        ('<Password type="clear">hunter 2</Password>', '<Password type="clear">***</Password>'),
        ("<db><dbPasswd>x1</dbPasswd></db>", "<db><dbPasswd>***</dbPasswd></db>"),
        ("MYSQL_PASSWD=zz9", "MYSQL_PASSWD=***"),
        ("GITHUB_TOKEN=ghp_abc", "GITHUB_TOKEN=***"),
        ("SSH_KEY_FILE=/run/k", "SSH_KEY_FILE=***"),
        ("SIGNING_KEY=abc123", "SIGNING_KEY=***"),
        ("mysql -u root -p hunter2 -h db", "mysql -u root -p *** -h db"),
        ("pg_restore --password hunter2", "pg_restore --password ***"),
        ("tool --api-key k-123 --verbose", "tool --api-key *** --verbose"),
        ("tool --token abc --password --x", "tool --token *** --password --x"),
        ("Authorization: Token abc", "Authorization: Token ***"),
        ("Proxy-Authorization: Basic dXNlcjpw", "Proxy-Authorization: Basic ***"),
        (
            "client used cpd_0123456789ab_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_abcd",
            "client used cpd_***",
        ),
        ("GET /x?access_token=cpd_0123456789ab_xyzxyzxyz", "GET /x?access_token=***"),
        ("x-auth=abc&sig=def", "x-auth=***&sig=***"),
    ],
)
def test_common_secret_forms_are_redacted(text: str, expected: str) -> None:
    assert redact_text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "bypass=on compass=north passenger=3",
        "ssh -i key.pem host -l app",
        "authored by the ops team",
        "the passes so far: 2/3",
    ],
)
def test_words_near_secret_keys_are_kept(text: str) -> None:
    assert redact_text(text) == text


@pytest.mark.parametrize(
    ("text", "known", "expected"),
    [
        # a tenant DSN's password, in a log line that has no secret-looking key
        ("connecting as app/Zq81-pw-acme to db", ["Zq81-pw-acme"], "connecting as app/*** to db"),
        # the whole DSN, as the application echoed it without a scheme
        ("dsn app:Zq81@db/acme", ["app:Zq81@db/acme"], "dsn ***"),
        # percent-encoded in a URL
        ("GET /hook?h=s%2Fcr%40t", ["s/cr@t"], "GET /hook?h=***"),
        # a notifier's webhook secret, several times
        ("sig whsec-778899 and whsec-778899", ["whsec-778899"], "sig *** and ***"),
        # too short to search for: kept
        ("port 123", ["123"], "port 123"),
    ],
)
def test_known_secret_values_are_redacted(text: str, known: list[str], expected: str) -> None:
    assert redact_text(text, known) == expected


def test_known_values_in_mappings_and_lists() -> None:
    data = {"logs": "boot hunter2-XYZ", "list": ["a", "x hunter2-XYZ"], "n": 1}
    assert redact(data, ["hunter2-XYZ"]) == {
        "logs": "boot ***",
        "list": ["a", "x ***"],
        "n": 1,
    }


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("DB_PASS", True),
        ("pass", True),
        ("x-auth", True),
        ("credentials", True),
        ("SIGNING_KEY", True),
        ("bypass", False),
        ("passes", False),
        ("author", False),
    ],
)
def test_more_secret_keys(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret
