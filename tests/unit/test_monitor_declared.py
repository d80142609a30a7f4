"""Declared monitors: the fleet file's ``monitors.declared``, per-kind checks, redaction."""

from __future__ import annotations

import textwrap

import pytest

from monitors.probe import MonitorSpec, public_target
from monitors.probes import PROBES, VALIDATORS, spec_problem
from orchestrator.errors import FleetFileError
from orchestrator.fleet.fleetfile import MonitorDeclaration, parse_fleet_text

HEAD = """\
version: 1
hosts:
  - {name: h1, url: "unix:///var/run/docker.sock"}
tenants:
  - {slug: acme, name: Acme}
monitors:
  declared:
"""


def errors(body: str) -> list[tuple[str, int | None, str]]:
    with pytest.raises(FleetFileError) as caught:
        parse_fleet_text(HEAD + textwrap.indent(textwrap.dedent(body), "    "), path="f.yaml")
    return caught.value.errors


def test_a_declared_monitor_is_read_with_its_timing_and_options() -> None:
    text = HEAD + textwrap.indent(
        textwrap.dedent(
            """\
            - name: portal
              tenant: acme
              kind: http
              target: https://acme.example/health
              host: h1
              interval: 30s
              timeout: 2s
              failure_threshold: 2
              expect_status: [200, 204]
              options: {body_contains: '"status":"ok"', max_latency_s: 1.5}
            """
        ),
        "    ",
    )
    fleet = parse_fleet_text(text)
    (decl,) = fleet.monitors.declared
    assert decl.id == "acme/portal"
    assert (decl.interval, decl.timeout, decl.failure_threshold) == (30.0, 2.0, 2)
    assert decl.recovery_threshold is None  # takes the defaults later
    assert decl.expect_status == [200, 204]
    assert decl.options == {"body_contains": '"status":"ok"', "max_latency_s": 1.5}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "- {name: p, tenant: acme, kind: http, target: 'ftp://x'}\n",
            ("monitors.declared[0].target", 8, "target must be an http:// or https:// URL"),
        ),
        (
            "- {name: p, tenant: acme, kind: http, target: 'http://x', options: {nope: 1}}\n",
            ("monitors.declared[0].options", 8, "unknown option(s) ['nope']"),
        ),
        (
            "- {name: p, tenant: acme, kind: smtp, target: 'x'}\n",
            ("monitors.declared[0].kind", 8, "unknown probe kind 'smtp'"),
        ),
        (
            "- {name: p, tenant: ghost, kind: tcp, target: 'h:1'}\n",
            (
                "monitors.declared[0].tenant",
                8,
                "unknown tenant 'ghost' (tenants in this file: acme)",
            ),
        ),
        (
            "- {name: p, tenant: acme, kind: tcp, target: 'h:1', host: h9}\n",
            ("monitors.declared[0].host", 8, "unknown host 'h9'"),
        ),
        (
            "- {name: p, tenant: acme, kind: tcp, target: 'h:1', interval: 30}\n",
            ("monitors.declared[0].interval", 8, "a duration needs a unit: write '30s'"),
        ),
        (
            "- {name: p, tenant: acme, kind: tcp, target: 'h:1', interval: 5s, timeout: 9s}\n",
            ("monitors.declared[0]", 8, "timeout (9s) is longer than the interval (5s)"),
        ),
        (
            "- {name: p, tenant: acme, kind: sip, target: 'sip:h', "
            "options: {accept_codes: [99]}}\n",
            ("monitors.declared[0].options", 8, "accept_codes: 99 is not a final reply code"),
        ),
        (
            "- {name: p, tenant: acme, kind: tcp, target: 'h:1', expect_status: []}\n",
            ("monitors.declared[0].expect_status", 8, "must list at least one status code"),
        ),
        (
            "- {name: p, tenant: acme, kind: tcp, target: 'h:1', every: 5s}\n",
            ("monitors.declared[0].every", 8, "unknown key 'every'"),
        ),
        (
            "- {name: p, tenant: acme, kind: postgres, target: 'postgresql://u:${PW@db/a'}\n",
            ("monitors.declared[0].target", 8, "'${' is not closed"),
        ),
    ],
)
def test_a_bad_declaration_names_the_key_and_line(
    body: str, expected: tuple[str, int, str]
) -> None:
    (found,) = errors(body)
    key, line, start = expected
    assert found[:2] == (key, line)
    assert found[2].startswith(start), found[2]


def test_a_monitor_declared_twice_points_at_the_first() -> None:
    found = errors(
        """\
        - {name: p, tenant: acme, kind: tcp, target: 'h:1'}
        - {name: p, tenant: acme, kind: tcp, target: 'h:2'}
        """
    )
    assert found == [
        (
            "monitors.declared[1].name",
            9,
            "duplicate monitor 'acme/p' (first declared by monitors.declared[0].name, line 8)",
        )
    ]


def test_a_dsn_password_is_hidden_in_the_public_view_and_repr() -> None:
    fleet = parse_fleet_text(
        HEAD + "    - {name: db, tenant: acme, kind: postgres, "
        "target: 'postgresql://mon:pw-s3cret@db:5432/acme'}\n"
    )
    public = fleet.public_dict()
    assert public["monitors"]["declared"][0]["target"] == "postgresql://mon:***@db:5432/acme"
    assert "s3cret" not in repr(fleet)
    assert fleet.monitors.declared[0].target.endswith("pw-s3cret@db:5432/acme")


def test_the_api_form_takes_seconds_as_numbers() -> None:
    decl = MonitorDeclaration.model_validate(
        {"name": "p", "tenant": "acme", "kind": "tcp", "target": "h:1", "interval": 15}
    )
    assert decl.interval == 15.0


def test_every_kind_has_a_validator() -> None:
    assert set(VALIDATORS) == set(PROBES)
    for kind, validate in VALIDATORS.items():
        assert validate.__module__ == f"monitors.probes.{kind}"


GOOD_TARGETS = {
    "http": "http://127.0.0.1:8080/health",
    "tcp": "127.0.0.1:6379",
    "sip": "sip:127.0.0.1:5060;transport=tcp",
    "postgres": "postgresql://mon:${PW}@127.0.0.1:5432/acme",
    "container": "unix:///var/run/docker.sock#acme-app",
}


@pytest.mark.parametrize("kind", sorted(PROBES))
def test_each_kind_accepts_its_target_and_refuses_an_unknown_option(kind: str) -> None:
    spec = MonitorSpec(id="m", name="m", tenant="t", host="h", kind=kind, target=GOOD_TARGETS[kind])
    assert spec_problem(spec) is None
    bad = MonitorSpec(
        id="m", name="m", tenant="t", host="h", kind=kind, target=GOOD_TARGETS[kind],
        options={"zzz": 1},
    )  # fmt: skip
    problem = spec_problem(bad)
    assert problem is not None and problem[0] == "options" and "zzz" in problem[1]


@pytest.mark.parametrize(
    ("kind", "target"),
    [
        ("http", "127.0.0.1:8080"),
        ("tcp", "tcp://127.0.0.1"),
        ("sip", "http://127.0.0.1"),
        ("postgres", "host=127.0.0.1 port"),
        ("container", "acme-app"),
    ],
)
def test_a_bad_target_is_named_as_the_target(kind: str, target: str) -> None:
    spec = MonitorSpec(
        id="m", name="m", tenant="t", host="h", kind=kind, target=target, options={"zzz": 1}
    )
    problem = spec_problem(spec)
    assert problem is not None and problem[0] == "target", problem


@pytest.mark.parametrize(
    ("target", "shown"),
    [
        ("postgresql://mon:s3cret@db:5432/acme", "postgresql://mon:***@db:5432/acme"),
        ("postgresql+psycopg2://mon:p%40ss@db/acme", "postgresql+psycopg2://mon:***@db/acme"),
        ("host=db password=s3cret dbname=acme", "host=db password=*** dbname=acme"),
        ("host=db password='a b' dbname=acme", "host=db password=*** dbname=acme"),
        ("http://127.0.0.1:8080/health", "http://127.0.0.1:8080/health"),
        ("sip:ping@10.0.0.7:5060", "sip:ping@10.0.0.7:5060"),
        ("unix:///var/run/docker.sock#acme", "unix:///var/run/docker.sock#acme"),
        # credentials in a URL's query (issue 12: a ticket showed them)
        (
            "http://u:pw@127.0.0.1:1/leak?tenant=acme&token=t0k&api_key=k&am=1",
            "http://u:***@127.0.0.1:1/leak?tenant=acme&token=***&api_key=***&am=1",
        ),
        (
            "https://h/x?access_token=cpd_abc&sig=s&page=2",
            "https://h/x?access_token=***&sig=***&page=2",
        ),
    ],
)
def test_public_target_hides_passwords_only(target: str, shown: str) -> None:
    assert public_target(target) == shown
