"""The probe kinds cpdops knows, listed by hand (no scanning, no plugins).

Adding a kind: write ``monitors/probes/<kind>.py`` with a class satisfying
:class:`monitors.probe.Probe` whose constructor needs no arguments and a function
``validate(spec)`` that raises ``ValueError`` for an unusable target or options, and add one
line to each dict here. ``tests/unit/test_monitor_registry.py`` walks them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Literal

from monitors.probe import MonitorSpec, Probe
from monitors.probes import container, http, postgres, sip, tcp
from monitors.probes.container import ContainerProbe
from monitors.probes.http import HttpProbe
from monitors.probes.postgres import PostgresProbe
from monitors.probes.sip import SipProbe
from monitors.probes.tcp import TcpProbe

PROBES: dict[str, Callable[[], Probe]] = {
    "http": HttpProbe,
    "postgres": PostgresProbe,
    "container": ContainerProbe,
    "tcp": TcpProbe,
    "sip": SipProbe,
}

VALIDATORS: dict[str, Callable[[MonitorSpec], None]] = {
    "http": http.validate,
    "postgres": postgres.validate,
    "container": container.validate,
    "tcp": tcp.validate,
    "sip": sip.validate,
}
"""Per kind: raise ``ValueError`` when a monitor's target or options cannot be used."""


def spec_problem(spec: MonitorSpec) -> tuple[Literal["kind", "target", "options"], str] | None:
    """What is wrong with ``spec`` for its kind, and which field it is; ``None`` if usable.

    The target is judged on its own first (without options), so a bad target is reported as
    ``target`` even when the options are bad too."""
    validate = VALIDATORS.get(spec.kind)
    if validate is None:
        return "kind", f"unknown probe kind {spec.kind!r} (known: {', '.join(sorted(PROBES))})"
    try:
        validate(spec)
    except ValueError as exc:
        try:
            validate(replace(spec, options={}))
        except ValueError as target_exc:
            return "target", str(target_exc)
        return "options", str(exc)
    return None
