"""Field types of request bodies whose JSON schema says exactly what they accept (OpenAPI is
the truth: schemathesis checks that what the schema allows is accepted and the rest refused).

* ``NoNul``: PostgreSQL's text (and jsonb) cannot hold NUL, so every string the API stores
  refuses it — with a validator that names the problem ("must not contain NUL characters") and
  the ``pattern`` ``^[^\\x00]*$`` in its schema (a pattern of its own, e.g. a slug's, is kept:
  it excludes NUL already). ``NoNulTexts``: a map of such texts (labels, annotations).
* ``IsoTime``: a date-time given as an ISO 8601 string, as its schema (``format: date-time``)
  says; pydantic would also read a number as a Unix time.
* ``Int``: in a strict model (no ``"3"`` for a number, no ``0`` for a boolean), an integer as
  JSON Schema's ``integer`` is: ``3.0`` too, which strict pydantic refuses."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, GetJsonSchemaHandler, WithJsonSchema
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

NO_NUL = r"^[^\x00]*$"


def refuse_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


@dataclass(frozen=True)
class NulFreeSchema:
    """``Annotated`` metadata: the string's JSON schema gets the NUL-free ``pattern``."""

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema: dict[str, Any] = handler(core_schema)
        if schema.get("type") == "string" and "enum" not in schema and "const" not in schema:
            schema.setdefault("pattern", NO_NUL)
        return schema


NoNul = Annotated[str, AfterValidator(refuse_nul), NulFreeSchema()]

# A map of NUL-free texts (labels, annotations): pydantic would say the keys' pattern with
# ``patternProperties``, which lets any other key through; ``propertyNames`` says it of all.
NoNulTexts = Annotated[
    dict[NoNul, NoNul],
    WithJsonSchema(
        {
            "type": "object",
            "propertyNames": {"pattern": NO_NUL},
            "additionalProperties": {"type": "string", "pattern": NO_NUL},
        }
    ),
]


def _a_string(value: Any) -> Any:
    if not isinstance(value, str | datetime):
        raise ValueError("expected an ISO 8601 date-time string, e.g. 2026-12-01T10:00:00Z")
    return value


IsoTime = Annotated[datetime, BeforeValidator(_a_string), Field(strict=False)]


def _whole_number(value: Any) -> Any:
    # JSON Schema's integer is any number without a fraction: 3.0 is one; "3" and true are not
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


WHOLE = BeforeValidator(_whole_number)
Int = Annotated[int, WHOLE]
"""An integer as JSON Schema says it (``3`` or ``3.0``), in a strict model (never ``"3"``).
With bounds: ``Annotated[int, Field(ge=1), WHOLE]`` (bounds after the validator would not reach
the schema as ``minimum``/``maximum``)."""
