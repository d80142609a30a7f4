"""The fleet file: parsing, validation with key paths and lines, secrets (SPEC §3.2)."""

from __future__ import annotations

import inspect
import json
import textwrap
from pathlib import Path
from typing import get_args

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from orchestrator.errors import FleetFileError, InputError
from orchestrator.fleet import fleetfile
from orchestrator.fleet.fleetfile import (
    NOTIFIER_KINDS,
    REDACTED,
    RINGS,
    Contact,
    FleetFile,
    HostSpec,
    IncidentThresholds,
    MaintenanceWindow,
    MassIncidentThresholds,
    MonitorDeclaration,
    MonitorDefaults,
    MonitorsSection,
    OtrsNotifier,
    SmtpNotifier,
    SshConfig,
    TelegramNotifier,
    TenantSpec,
    TlsConfig,
    WebhookNotifier,
    format_duration,
    is_secret_field,
    load_fleet_file,
    parse_duration,
    parse_fleet_text,
    resolve_secret,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fleet.yaml"


def parse(text: str) -> FleetFile:
    return parse_fleet_text(textwrap.dedent(text), path="fleet.yaml")


def problems(text: str) -> list[tuple[str, int | None, str]]:
    with pytest.raises(FleetFileError) as caught:
        parse(text)
    return caught.value.errors


# --------------------------------------------------------------------------- valid files


def test_example_file_parses() -> None:
    fleet = load_fleet_file(EXAMPLE)

    assert [h.name for h in fleet.hosts] == ["msk-docker-1", "spb-docker-1"]
    assert fleet.hosts[0].tls is not None and fleet.hosts[0].tls.verify is True
    assert len(fleet.tenants) == 4
    assert {t.ring for t in fleet.tenants} == {"internal", "canary", "general", "late"}
    romashka = next(t for t in fleet.tenants if t.slug == "romashka")
    assert romashka.language == "ru" and romashka.timezone == "Europe/Moscow"
    assert romashka.maintenance_window == MaintenanceWindow(cron="30 1 * * sat,sun", duration=5400)
    assert romashka.contacts[0].telegram_chat_id == "123456789"  # unquoted number → text
    internal = fleet.tenants[0]
    assert internal.contacts[0].name == "Дежурная смена SmartCPD"  # from the x- anchor
    assert [n.kind for n in fleet.notifiers] == ["smtp", "telegram", "webhook", "otrs"]
    assert isinstance(fleet.notifiers[1], TelegramNotifier)
    assert fleet.notifiers[1].bot_token == "${CPDOPS_TELEGRAM_BOT_TOKEN}"  # kept as written
    assert fleet.monitors.defaults.recovery_threshold == 2
    assert fleet.incidents.mass_incident.window == 300.0


def test_full_file_round_trips_through_its_own_dump() -> None:
    fleet = load_fleet_file(EXAMPLE)

    dumped = yaml.safe_dump(fleet.model_dump(), allow_unicode=True, sort_keys=False)

    assert "interval: 10s" in dumped and "duration: 1h30m" in dumped
    assert parse_fleet_text(dumped) == fleet


def test_minimal_file_gets_documented_defaults() -> None:
    fleet = parse("""\
        version: 1
        tenants:
          - slug: acme
            name: ACME LLC
        monitors:
        """)

    tenant = fleet.tenants[0]
    assert (tenant.ring, tenant.language, tenant.timezone) == ("general", "ru", "UTC")
    assert tenant.maintenance_window is None and tenant.channels == [] and tenant.host is None
    assert fleet.hosts == [] and fleet.notifiers == []
    assert fleet.monitors.defaults == MonitorDefaults(
        interval=10, timeout=5, failure_threshold=2, recovery_threshold=1
    )
    assert fleet.incidents == IncidentThresholds(
        mass_incident=MassIncidentThresholds(min_tenants=3, host_percent=50, window=300),
        recovery_hold=120,
    )


def test_anchors_merge_keys_and_x_keys() -> None:
    fleet = parse("""\
        version: 1
        x-contact: &ops {name: Ops, email: ops@example.com}
        tenants:
          - slug: a
            name: A
            contacts: [*ops, {<<: *ops, name: Night shift}]
        """)

    assert fleet.tenants[0].contacts == [
        Contact(name="Ops", email="ops@example.com"),
        Contact(name="Night shift", email="ops@example.com"),
    ]


@pytest.mark.parametrize(
    "url",
    [
        "unix:///var/run/docker.sock",
        "tcp://10.0.0.5:2376",
        "ssh://deploy@docker-1.example",
        "ssh://docker-1.example:2222",
    ],
)
def test_host_urls_accepted(url: str) -> None:
    assert HostSpec(name="h", url=url).url == url


@pytest.mark.parametrize("cron", ["0 2 * * *", "*/15 0-6 1,15 jan-mar mon-fri", "30 1 * * 0,7"])
def test_cron_accepted(cron: str) -> None:
    assert MaintenanceWindow(cron=cron, duration=60).cron == cron


def test_rings_constant_matches_model() -> None:
    assert RINGS == ("internal", "canary", "early", "general", "late")
    assert get_args(TenantSpec.model_fields["ring"].annotation) == RINGS


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90.0),
        ("30m", 1800.0),
        ("2h", 7200.0),
        ("1h30m", 5400.0),
        ("1d2h3m4s", 93784.0),
        ("1.5h", 5400.0),
        ("500ms", 0.5),
        ("1m30.5s", 90.5),
        ("0s", 0.0),
        (" 5m ", 300.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("10", "for seconds write '10s'"),
        ("", "invalid duration ''"),
        ("2x", "invalid duration '2x'"),
        ("30m1h", "largest first"),
        ("-5s", "invalid duration '-5s'"),
        ("1 h", "invalid duration '1 h'"),
        ("1H", "invalid duration '1H'"),
    ],
)
def test_parse_duration_rejects(text: str, hint: str) -> None:
    with pytest.raises(ValueError, match="units d, h, m, s, ms") as caught:
        parse_duration(text)
    assert hint in str(caught.value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (90, "1m30s"), (5400, "1h30m"), (86400, "1d"), (0.5, "0.5s"), (90.25, "1m30.25s")],
)
def test_format_duration_is_the_inverse(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


def test_durations_from_python_code_are_seconds() -> None:
    assert MonitorDefaults(interval=30, timeout=2.5).timeout == 2.5
    assert MonitorDefaults.model_validate({"interval": "1m"}).interval == 60.0


# --------------------------------------------------------------------------- errors


TENANTS_HEAD = """\
version: 1
hosts:
  - name: host-a
    url: unix:///var/run/docker.sock
tenants:
  - slug: acme
    name: ACME
"""  # lines 1-7; the cases below append from line 8

ERROR_CASES = [
    ("unknown top-level key", "version: 1\ncolour: red\n", "colour", 2, "unknown key 'colour'"),
    (
        "unknown nested key in tenants[1], with a suggestion",
        TENANTS_HEAD + "  - slug: beta\n    name: Beta\n    contcts: []\n",
        "tenants[1].contcts",
        10,
        "unknown key 'contcts'; did you mean 'contacts'?",
    ),
    (
        "unknown key in a notifier",
        "version: 1\nnotifiers:\n  - name: hook\n    kind: webhook\n    url: https://h/x\n"
        "    headers: {}\n",
        "notifiers[0].headers",
        6,
        "unknown key 'headers'",
    ),
    (
        "bad ring",
        TENANTS_HEAD + "    ring: beta\n",
        "tenants[0].ring",
        8,
        "invalid value 'beta'; expected 'internal', 'canary', 'early', 'general' or 'late'",
    ),
    (
        "bad duration",
        TENANTS_HEAD
        + "    maintenance_window:\n      cron: '0 2 * * *'\n      duration: 2 hours\n",
        "tenants[0].maintenance_window.duration",
        10,
        "invalid duration '2 hours'",
    ),
    (
        "duration without a unit",
        "version: 1\nincidents:\n  recovery_hold: 120\n",
        "incidents.recovery_hold",
        3,
        "a duration needs a unit: write '120s'",
    ),
    (
        "cron with four fields",
        TENANTS_HEAD + "    maintenance_window: {cron: '0 2 * *', duration: 1h}\n",
        "tenants[0].maintenance_window.cron",
        8,
        "has 4 fields; expected 5",
    ),
    (
        "cron value out of range",
        TENANTS_HEAD + "    maintenance_window: {cron: '0 25 * * *', duration: 1h}\n",
        "tenants[0].maintenance_window.cron",
        8,
        "hour '25' is not in 0-23",
    ),
    (
        "bad timezone",
        TENANTS_HEAD + "    timezone: Moscow\n",
        "tenants[0].timezone",
        8,
        "unknown time zone 'Moscow': use an IANA name; did you mean 'Europe/Moscow'?",
    ),
    (
        "duplicate slug, at the second one",
        TENANTS_HEAD + "  - slug: acme\n    name: ACME again\n",
        "tenants[1].slug",
        8,
        "duplicate tenant slug 'acme' (first used by tenants[0].slug, line 6)",
    ),
    (
        "duplicate host name",
        "version: 1\nhosts:\n  - {name: h, url: 'unix:///a'}\n  - {name: h, url: 'unix:///b'}\n",
        "hosts[1].name",
        4,
        "duplicate host name 'h'",
    ),
    (
        "duplicate notifier name",
        "version: 1\nnotifiers:\n  - {name: t, kind: telegram, bot_token: x}\n"
        "  - {name: t, kind: webhook, url: 'https://h/'}\n",
        "notifiers[1].name",
        4,
        "duplicate notifier name 't'",
    ),
    (
        "duplicate YAML key",
        TENANTS_HEAD + "    ring: canary\n    language: en\n    ring: late\n",
        "tenants[0].ring",
        10,
        "duplicate key 'ring' (first at line 8)",
    ),
    (
        "tenant.host naming an unknown host",
        TENANTS_HEAD + "    host: host-b\n",
        "tenants[0].host",
        8,
        "unknown host 'host-b' (hosts in this file: host-a)",
    ),
    (
        "bad host url scheme",
        "version: 1\nhosts:\n  - name: h\n    url: https://docker.example:2376\n",
        "hosts[0].url",
        4,
        "unsupported scheme 'https://': expected unix://, tcp:// or ssh://",
    ),
    (
        "tcp url without port",
        "version: 1\nhosts:\n  - name: h\n    url: tcp://docker.example\n",
        "hosts[0].url",
        4,
        "a tcp:// URL needs a port",
    ),
    (
        "tls on a unix socket",
        "version: 1\nhosts:\n  - name: h\n    url: unix:///s\n    tls: {ca: /ca.pem}\n",
        "hosts[0].tls",
        5,
        "tls applies to tcp:// URLs only",
    ),
    (
        "ssh on a tcp host",
        "version: 1\nhosts:\n  - name: h\n    url: tcp://h:2376\n    ssh: {known_hosts: /k}\n",
        "hosts[0].ssh",
        5,
        "ssh applies to ssh:// URLs only; this host is tcp://",
    ),
    (
        "unknown ssh option",
        "version: 1\nhosts:\n  - name: h\n    url: ssh://h\n    ssh: {StrictHostKeyChecking: no}\n",
        "hosts[0].ssh.StrictHostKeyChecking",
        5,
        "unknown key",
    ),
    (
        "accept-new is a boolean, not a string",
        "version: 1\nhosts:\n  - name: h\n    url: ssh://h\n"
        "    ssh: {insecure_accept_new_host_key: 'yes'}\n",
        "hosts[0].ssh.insecure_accept_new_host_key",
        5,
        "valid boolean",
    ),
    (
        "bad host name",
        "version: 1\nhosts:\n  - name: Host_A\n    url: unix:///s\n",
        "hosts[0].name",
        3,
        "invalid name 'Host_A'",
    ),
    (
        "missing required key, at its mapping",
        "version: 1\ntenants:\n  - slug: acme\n",
        "tenants[0].name",
        3,
        "missing required key 'name'",
    ),
    (
        "missing version",
        "hosts: []\n",
        "version",
        1,
        "missing required key 'version'",
    ),
    ("unsupported version", "version: 2\n", "version", 1, "unsupported version 2"),
    (
        "unknown notifier kind",
        "version: 1\nnotifiers:\n  - name: x\n    kind: sms\n",
        "notifiers[0].kind",
        4,
        "unknown notifier kind 'sms'; expected one of: smtp, telegram, webhook, otrs",
    ),
    (
        "notifier setting of the wrong kind",
        "version: 1\nnotifiers:\n  - name: x\n    kind: telegram\n    url: https://h/\n"
        "    bot_token: t\n",
        "notifiers[0].url",
        5,
        "unknown key 'url'",
    ),
    (
        "malformed secret reference",
        TENANTS_HEAD + "    db_dsn: ${ACME_DSN\n",
        "tenants[0].db_dsn",
        8,
        "'${' is not closed",
    ),
    (
        "unquoted phone number",
        TENANTS_HEAD + "    contacts:\n      - name: Ivan\n        phone: +74951234567\n",
        "tenants[0].contacts[0].phone",
        10,
        "quote the phone number",
    ),
    (
        "YAML boolean where text is expected",
        TENANTS_HEAD + "    labels: {managed: yes}\n",
        "tenants[0].labels.managed",
        8,
        "expected a string, got a boolean (quote it)",
    ),
    (
        "channel nobody can receive",
        TENANTS_HEAD + "    channels: [telegram]\n",
        "tenants[0].channels",
        8,
        "channel 'telegram' needs a contact with a telegram_chat_id",
    ),
    (
        "section of the wrong shape",
        "version: 1\ntenants: {acme: {}}\n",
        "tenants",
        2,
        "expected a list, got a mapping",
    ),
    (
        "timeout longer than interval",
        "version: 1\nmonitors:\n  defaults:\n    interval: 5s\n    timeout: 10s\n",
        "monitors.defaults.timeout",
        5,
        "timeout (10s) is longer than the interval (5s)",
    ),
    (
        "unsupported YAML tag",
        "version: 1\nhosts: !include hosts.yaml\n",
        "hosts",
        2,
        "unsupported YAML tag '!include'",
    ),
]


@pytest.mark.parametrize(
    ("text", "key", "line", "message"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_error_names_key_and_line(text: str, key: str, line: int, message: str) -> None:
    with pytest.raises(FleetFileError) as caught:
        parse(text)

    error = caught.value
    assert len(error.errors) == 1, error.errors
    assert error.errors[0][:2] == (key, line)
    assert message in error.errors[0][2]
    assert str(error).startswith(f"fleet.yaml:{line}: {key}: ")
    assert (error.path, error.line) == ("fleet.yaml", line)
    assert isinstance(error, InputError)


ENV_HEAD = "version: 1\nenvironment: [DECLARED]\n"
ENV_CASES = [
    # (case, text, key, line, message): every place a ${NAME} is read, and the list itself
    (
        "tenant db_dsn",
        ENV_HEAD
        + "tenants:\n  - slug: a\n    name: A\n    db_dsn: 'postgresql://x:${NOPE}@h/db'\n",
        "tenants[0].db_dsn",
        6,
        "${NOPE} is not declared: list NOPE under the top-level 'environment'",
    ),
    (
        "smtp password",
        ENV_HEAD + "notifiers:\n  - {name: m, kind: smtp, host: h, username: u,\n"
        "     password: '${DECLARED}${NOPE}', sender: a@b.c}\n",
        "notifiers[0].password",
        5,
        "${NOPE} is not declared",
    ),
    (
        "telegram bot_token",
        ENV_HEAD + "notifiers:\n  - {name: t, kind: telegram, bot_token: '${NOPE}'}\n",
        "notifiers[0].bot_token",
        4,
        "${NOPE} is not declared",
    ),
    (
        "declared monitor target",
        ENV_HEAD + "tenants: [{slug: a, name: A}]\nmonitors:\n  declared:\n"
        "    - {name: p, tenant: a, kind: http, target: 'http://h/x?t=${CPDOPS_DATABASE_URL}'}\n",
        "monitors.declared[0].target",
        6,
        "${CPDOPS_DATABASE_URL} is not declared",
    ),
    (
        "a setting of cpdops",
        "version: 1\nenvironment:\n  - A_OK\n  - CPDOPS_ALERTMANAGER_SECRET_FILE\n",
        "environment[1]",
        4,
        "CPDOPS_ALERTMANAGER_SECRET_FILE is a setting of cpdops itself",
    ),
    (
        "not a name",
        "version: 1\nenvironment: [A_OK, 'X-Y']\n",
        "environment[1]",
        2,
        "'X-Y' is not an environment variable name",
    ),
]


@pytest.mark.parametrize(
    ("text", "key", "line", "message"),
    [case[1:] for case in ENV_CASES],
    ids=[case[0] for case in ENV_CASES],
)
def test_references_read_only_declared_names(text: str, key: str, line: int, message: str) -> None:
    test_error_names_key_and_line(text, key, line, message)


def test_declared_references_and_escapes_are_accepted() -> None:
    fleet = parse(
        ENV_HEAD + "tenants:\n  - {slug: a, name: A, db_dsn: 'postgresql://u:${DECLARED}@h/a'}\n"
        "notifiers:\n  - {name: w, kind: webhook, url: 'http://h', secret: '$${NOPE}'}\n"
    )
    assert fleet.environment == ["DECLARED"]
    assert fleet.tenants[0].db_dsn == "postgresql://u:${DECLARED}@h/a"


def test_a_declaration_outside_the_fleet_file_refuses_references() -> None:
    """The API validates MonitorDeclaration without the fleet file's context."""
    body = {"name": "p", "tenant": "a", "kind": "http", "target": "http://h/?t=${HOME}"}
    with pytest.raises(ValidationError, match="resolved only in the fleet file"):
        MonitorDeclaration.model_validate(body)
    assert MonitorDeclaration.model_validate({**body, "target": "http://h/?t=1"}).target


WHOLE_FILE_CASES = [
    ("syntax", "version: 1\nhosts:\n  - name: a\n   url: x\n", 4, "YAML syntax error: "),
    ("unclosed", "version: 1\ntenants: [\n", 3, "YAML syntax error: "),
    ("tab", "version: 1\n\thosts: []\n", 2, "found character '\\t' that cannot start any token"),
    ("two documents", "version: 1\n---\nversion: 1\n", 2, "expected a single document"),
    ("control character", "version: 1\nname: \x07\n", 2, "not valid YAML text"),
    ("empty", "", None, "the file is empty"),
    ("comment only", "# only a comment\n", None, "the file is empty"),
    ("null", "~\n", None, "the file is empty"),
    ("top-level list", "- version: 1\n", 1, "the top level must be a mapping (version:"),
    ("top-level list says so", "- version: 1\n", 1, "tenants:, …), not a list"),
    ("top-level scalar", "fleet\n", 1, "tenants:, …), not a single value"),
]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [case[1:] for case in WHOLE_FILE_CASES],
    ids=[case[0] for case in WHOLE_FILE_CASES],
)
def test_whole_file_errors(text: str, line: int | None, message: str) -> None:
    with pytest.raises(FleetFileError) as caught:
        parse_fleet_text(text, path="fleet.yaml")

    assert caught.value.line == line
    assert message in str(caught.value)
    assert str(caught.value).startswith("fleet.yaml:" if line is None else f"fleet.yaml:{line}: ")


def test_all_errors_are_reported_together_in_line_order() -> None:
    text = """\
        version: 1
        hosts:
          - name: host-a
            url: http://host-a
        tenants:
          - slug: acme
            name: ACME
            ring: beta
            host: host-z
          - slug: acme
            name: ACME 2
            timezone: Mars/Olympus
        monitors:
          defaults: {interval: soon}
        flavour: vanilla
        """

    found = problems(text)

    assert [(key, line) for key, line, _ in found] == [
        ("hosts[0].url", 4),
        ("tenants[0].ring", 8),
        ("tenants[0].host", 9),
        ("tenants[1].slug", 10),
        ("tenants[1].timezone", 12),
        ("monitors.defaults.interval", 14),
        ("flavour", 15),
    ]
    with pytest.raises(FleetFileError) as caught:
        parse(text)
    rows = str(caught.value).splitlines()
    assert rows[0] == "fleet.yaml: 7 problems in the fleet file:"
    assert rows[1].startswith("  fleet.yaml:4: hosts[0].url: unsupported scheme 'http://'")
    assert rows[7] == (
        "  fleet.yaml:15: flavour: unknown key 'flavour'; expected one of: "
        "version, environment, hosts, tenants, monitors, incidents, notifiers"
    )
    assert caught.value.line is None


def test_unknown_key_inside_anchor_points_at_the_anchor() -> None:
    found = problems("""\
        version: 1
        x-contact: &ops {name: Ops, emial: ops@example.com}
        tenants:
          - {slug: a, name: A, contacts: [*ops]}
        """)

    assert found == [
        ("tenants[0].contacts[0].emial", 2, "unknown key 'emial'; did you mean 'email'?")
    ]


def test_recursive_alias_and_alias_bombs_are_refused() -> None:
    assert problems("version: 1\nx-a: &a [*a]\n")[0][2].startswith("an alias refers to its own")
    bomb = ["version: 1", "x-0: &l0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    bomb += [f"x-{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 7)]
    with pytest.raises(FleetFileError, match="expands to more than"):
        parse_fleet_text("\n".join(bomb))


# --------------------------------------------------------------------------- secrets

ALL_MODELS: list[type[BaseModel]] = [
    FleetFile,
    HostSpec,
    SshConfig,
    TlsConfig,
    TenantSpec,
    Contact,
    MaintenanceWindow,
    MonitorsSection,
    MonitorDefaults,
    MonitorDeclaration,
    IncidentThresholds,
    MassIncidentThresholds,
    *NOTIFIER_KINDS.values(),
]
SECRET_FIELDS = {
    (TenantSpec, "db_dsn"),
    (SmtpNotifier, "password"),
    (TelegramNotifier, "bot_token"),
    (WebhookNotifier, "secret"),
    (OtrsNotifier, "password"),
}


def test_secret_fields_are_exactly_the_marked_ones() -> None:
    defined = {
        obj
        for obj in vars(fleetfile).values()
        if inspect.isclass(obj)
        and issubclass(obj, BaseModel)
        and obj.__module__ == fleetfile.__name__
        and not obj.__name__.startswith("_")
    }
    assert defined == set(ALL_MODELS), "a new model must be listed here and checked for secrets"
    marked = {(m, f) for m in ALL_MODELS for f in m.model_fields if is_secret_field(m, f)}
    assert marked == SECRET_FIELDS
    for model in ALL_MODELS:
        for name in model.model_fields:
            if any(word in name for word in ("password", "token", "secret", "dsn")):
                assert is_secret_field(model, name), f"{model.__name__}.{name} is not a secret"


LITERAL_SECRETS = """\
    version: 1
    tenants:
      - {slug: a, name: A, db_dsn: "postgresql://u:dsn-s3cret@db/a"}
    notifiers:
      - {name: m, kind: smtp, host: mx, sender: a@b.c, username: u, password: smtp-s3cret}
      - {name: t, kind: telegram, bot_token: "123:tg-s3cret"}
      - {name: w, kind: webhook, url: "https://h/x", secret: hook-s3cret}
      - name: o
        kind: otrs
        url: https://desk.example/otrs
        webservice: WS
        user_login: cpdops
        password: otrs-s3cret
        queue: Raw
    monitors:
      declared:
        - {name: db, tenant: a, kind: postgres, target: "postgresql://u:mon-s3cret@db/a"}
"""


def test_redaction_hides_every_secret() -> None:
    fleet = parse(LITERAL_SECRETS)

    public = fleet.public_dict()
    text = json.dumps(public) + repr(fleet) + str(fleet) + repr(fleet.redacted())

    assert "s3cret" not in text
    assert public["tenants"][0]["db_dsn"] == REDACTED
    assert [
        n.get("password") or n.get("bot_token") or n.get("secret") for n in public["notifiers"]
    ] == [REDACTED] * 4
    assert fleet.notifiers[0].model_dump()["password"] == "smtp-s3cret"  # the model itself keeps it
    assert parse_fleet_text("version: 1").public_dict()["tenants"] == []


def test_redaction_also_hides_env_references_and_keeps_absent_ones_absent() -> None:
    fleet = load_fleet_file(EXAMPLE)

    public = fleet.public_dict()

    assert "${" not in json.dumps(public)
    assert public["tenants"][0]["db_dsn"] is None
    assert public["tenants"][1]["db_dsn"] == REDACTED


def test_secret_never_appears_in_an_error_message() -> None:
    found = problems(
        LITERAL_SECRETS.replace('bot_token: "123:tg-s3cret"', "bot_token: [tg-s3cret]")
    )

    assert found == [("notifiers[1].bot_token", 6, "expected a string, got a list")]


@pytest.mark.parametrize(
    ("value", "environ", "expected"),
    [
        ("plain-literal", {}, "plain-literal"),
        ("${ACME_DB_DSN}", {"ACME_DB_DSN": "postgresql://x"}, "postgresql://x"),
        ("postgresql://app:${PW}@db/app", {"PW": "p@ss"}, "postgresql://app:p@ss@db/app"),
        ("${A}${B}", {"A": "1", "B": "2"}, "12"),
        ("pa$$word", {}, "pa$$word"),
        ("$${NOT_A_REF}", {}, "${NOT_A_REF}"),
        ("${EMPTY}", {"EMPTY": ""}, ""),
    ],
)
def test_resolve_secret(value: str, environ: dict[str, str], expected: str) -> None:
    assert resolve_secret(value, environ) == expected


def test_resolve_secret_names_every_unset_variable() -> None:
    with pytest.raises(FleetFileError) as caught:
        resolve_secret("${USER_X}:${PW_X}@${USER_X}", {"OTHER": "1"}, key="tenants[0].db_dsn")

    assert str(caught.value) == (
        "environment variables USER_X, PW_X are not set (needed by tenants[0].db_dsn)"
    )
    with pytest.raises(FleetFileError, match=r"^environment variable ACME_DB_DSN is not set$"):
        resolve_secret("${ACME_DB_DSN}", {})


def test_resolve_secret_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CPDOPS_TEST_TOKEN", "from-env")
    monkeypatch.delenv("CPDOPS_TEST_UNSET", raising=False)

    assert resolve_secret("${CPDOPS_TEST_TOKEN}") == "from-env"
    with pytest.raises(FleetFileError, match="CPDOPS_TEST_UNSET is not set"):
        resolve_secret("${CPDOPS_TEST_UNSET}")


# --------------------------------------------------------------------------- files and the API


def test_load_fleet_file_reports_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(FleetFileError, match="cannot read the fleet file") as caught:
        load_fleet_file(tmp_path / "missing.yaml")
    assert caught.value.path == str(tmp_path / "missing.yaml")

    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("version: 1\nname: caf\xe9\n".encode("latin-1"))
    with pytest.raises(FleetFileError, match="not UTF-8 text"):
        load_fleet_file(latin1)

    with_bom = tmp_path / "bom.yaml"
    with_bom.write_bytes("\ufeffversion: 1\n".encode())
    assert load_fleet_file(with_bom).version == 1


def test_error_paths_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text("version: 1\nhosts:\n  - {name: h, url: 'ftp://h'}\n", encoding="utf-8")

    with pytest.raises(FleetFileError) as caught:
        load_fleet_file(path)

    assert str(caught.value).startswith(f"{path}:3: hosts[0].url: unsupported scheme 'ftp://'")


def test_model_validation_from_the_api_checks_the_same_rules() -> None:
    data = {
        "version": 1,
        "hosts": [{"name": "h", "url": "unix:///s"}],
        "tenants": [{"slug": "a", "name": "A", "host": "nope"}, {"slug": "a", "name": "B"}],
    }

    with pytest.raises(ValidationError) as caught:
        FleetFile.model_validate(data)

    message = str(caught.value)
    assert "tenants[1].slug: duplicate tenant slug 'a'" in message
    assert "tenants[0].host: unknown host 'nope'" in message
    assert FleetFile.model_validate({"version": 1, "incidents": {"recovery_hold": 30}})


def test_validation_errors_from_the_api_do_not_print_inputs() -> None:
    with pytest.raises(ValidationError) as caught:
        TenantSpec.model_validate({"slug": "a", "name": "A", "db_dsn": "pw-s3cret-${"})

    assert "s3cret" not in str(caught.value)


def test_the_example_in_the_docs_parses() -> None:
    doc = (EXAMPLE.parents[1] / "docs" / "fleet-file.md").read_text(encoding="utf-8")
    example = doc.split("## Example", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]

    fleet = parse_fleet_text(example, path="docs/fleet-file.md")

    assert [t.slug for t in fleet.tenants] == ["acme", "romashka"]
    assert fleet.tenants[1].ring == "general"


def test_ssh_host_options_parse_and_default_to_strict() -> None:
    text = (
        "version: 1\nhosts:\n"
        "  - name: a\n    url: ssh://cpdops@a.internal:2222\n"
        "    ssh: {identity_file: /k/id, known_hosts: /k/known_hosts}\n"
        "  - name: b\n    url: ssh://b.internal\n"
    )
    a, b = parse_fleet_text(text).hosts
    assert a.ssh is not None and a.ssh.model_dump() == {
        "identity_file": "/k/id",
        "known_hosts": "/k/known_hosts",
        "insecure_accept_new_host_key": False,
    }
    assert b.ssh is None
