"""The probe kinds cpdops knows, listed by hand (no scanning, no plugins).

Adding a kind: write ``monitors/probes/<kind>.py`` with a class satisfying
:class:`monitors.probe.Probe` whose constructor needs no arguments, and add one line here.
``tests/unit/test_monitor_registry.py`` walks this dict.
"""

from __future__ import annotations

from collections.abc import Callable

from monitors.probe import Probe
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
