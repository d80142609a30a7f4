"""``POST /api/v1/monitors`` per kind: every body its JSON schema allows is a declaration the
kind's validator accepts (schemathesis found schema-valid targets refused), and what the
validators refuse the schema refuses too."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from orchestrator.api.monitor_in import MonitorIn, declaration_fields
from orchestrator.app import create_app
from orchestrator.fleet.fleetfile import MonitorDeclaration
from orchestrator.settings import Settings

KINDS = ("http", "tcp", "sip", "postgres", "container")


def _openapi() -> dict[str, Any]:
    return create_app(Settings(database_url="sqlite://")).openapi()


OPENAPI = _openapi()


def _body_schema(kind: str) -> dict[str, Any]:
    """The schema of ``kind``'s body as served, with its references resolved."""
    components = OPENAPI["components"]["schemas"]

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(components[node["$ref"].rsplit("/", 1)[-1]])
            return {k: resolve(v) for k, v in node.items() if k != "discriminator"}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    name = f"{['Http', 'Tcp', 'Sip', 'Postgres', 'Container'][KINDS.index(kind)]}MonitorIn"
    return resolve(components[name])  # type: ignore[no-any-return]


def test_the_body_is_a_union_discriminated_by_kind() -> None:
    body = OPENAPI["paths"]["/api/v1/monitors"]["post"]["requestBody"]["content"]
    schema = body["application/json"]["schema"]
    assert schema["discriminator"]["propertyName"] == "kind"
    assert set(schema["discriminator"]["mapping"]) == set(KINDS)
    for kind in KINDS:
        props = _body_schema(kind)["properties"]
        assert props["kind"]["const"] == kind
        assert "pattern" in props["target"], kind  # the target's form is said


@pytest.mark.parametrize("kind", KINDS)
def test_every_target_the_schema_allows_is_accepted(kind: str) -> None:
    schema = _body_schema(kind)["properties"]["target"]
    adapter: TypeAdapter[Any] = TypeAdapter(MonitorIn)

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.from_regex(schema["pattern"], fullmatch=True).filter(lambda t: len(t) <= 1000))
    def check(target: str) -> None:
        body = adapter.validate_python(
            {"name": "x", "tenant": "acme", "kind": kind, "target": target}
        )  # the API's model agrees with its schema
        MonitorDeclaration.model_validate(declaration_fields(body))  # and the kind's validator

    check()


@pytest.mark.parametrize(
    ("kind", "target"),
    [
        ("http", "ftp://127.0.0.1/"),
        ("http", ""),
        ("tcp", "127.0.0.1"),  # no port
        ("tcp", "127.0.0.1:0"),
        ("sip", "sips:127.0.0.1"),
        ("postgres", "postgresql://h/db?nosuch=1"),
        ("container", "smartcpd-acme"),  # no docker url
        ("http", "http://127.0.0.1:38999/leak?db=${CPDOPS_DATABASE_URL}"),
        ("http", "http://127.0.0.1/\x00"),
    ],
)
def test_a_target_against_its_kind_is_refused_by_the_schema(kind: str, target: str) -> None:
    with pytest.raises(ValidationError) as err:
        TypeAdapter(MonitorIn).validate_python(
            {"name": "x", "tenant": "acme", "kind": kind, "target": target}
        )
    assert err.value.errors()[0]["loc"][-1] == "target"


@given(st.sampled_from([0, 1, "true", 1.0]))
def test_booleans_are_strict(value: object) -> None:
    with pytest.raises(ValidationError):
        TypeAdapter(MonitorIn).validate_python(
            {
                "name": "x",
                "tenant": "acme",
                "kind": "http",
                "target": "http://a/",
                "options": {"tls_verify": value},
            }
        )
