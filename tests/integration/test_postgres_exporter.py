"""cpdops's pg_* series side by side with a real postgres_exporter (Debian package
prometheus-postgres-exporter), both against the test PostgreSQL (CPDOPS_TEST_PG_URL).

The exporter is started here on 127.0.0.1 (a free port, its default metrics) and stopped after.
For its ``pg_stat_database_*``, ``pg_stat_bgwriter_*`` families and
``pg_stat_activity_max_tx_duration``, cpdops's /metrics text (the monitor collector's
exposition of a postgres probe's check) must have the same names, label names and TYPE, and
values of the same order: each counter read by cpdops lies between the exporter's reading
before and after it (the server is shared: only series present in all three are compared).
Skipped without the exporter, unless CPDOPS_REQUIRE_POSTGRES=1 (scripts/test.sh).
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy.engine import make_url

from monitors.engine import MonitorView
from monitors.metrics import MonitorCollector
from monitors.probe import MonitorSpec
from monitors.probes.postgres import PostgresProbe
from monitors.state import MonitorState, MonitorStatus
from tests.conftest import PG_ENV, _pg_admin_url
from tests.integration.fleet import free_port

pytestmark = pytest.mark.postgres
EXPORTER = "prometheus-postgres-exporter"
DEADLINE_S = 30.0
FAMILIES = re.compile(r"pg_stat_database_\w+|pg_stat_bgwriter_\w+|pg_stat_activity_max_tx_duration")
OURS_ONLY = {"pg_stat_database_blks_hit_ratio"}  # cpdops's own (SPEC §3.5), not the exporter's
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass
class Scrape:
    """One /metrics text: each family's TYPE, label names and series (labels → value)."""

    types: dict[str, str] = field(default_factory=dict)
    labels: dict[str, set[frozenset[str]]] = field(default_factory=dict)
    series: dict[tuple[str, frozenset[tuple[str, str]]], float] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Scrape:
        scrape = cls()
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ", 3)
                if FAMILIES.fullmatch(name):
                    scrape.types[name] = kind
                continue
            match = _SAMPLE.match(line)
            if match is None or not FAMILIES.fullmatch(match[1]):
                continue
            labels = frozenset(_LABEL.findall(match[2] or ""))
            scrape.labels.setdefault(match[1], set()).add(frozenset(k for k, _ in labels))
            scrape.series[(match[1], labels)] = float(match[3])
        return scrape


@pytest.fixture
def dsn() -> str:
    admin = _pg_admin_url()
    if admin is None:
        pytest.skip(f"PostgreSQL not configured ({PG_ENV})")
    return make_url(admin).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def exporter(dsn: str) -> Iterator[str]:
    binary = shutil.which(EXPORTER)
    if binary is None:
        if os.environ.get("CPDOPS_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"CPDOPS_REQUIRE_POSTGRES=1 but {EXPORTER} is not installed")
        pytest.skip(f"{EXPORTER} is not installed (Debian package {EXPORTER})")
    port = free_port()
    env = {"PATH": os.environ.get("PATH", ""), "DATA_SOURCE_NAME": f"{dsn}?sslmode=disable"}
    process = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            try:
                if "pg_up 1" in httpx.get(url, timeout=5).text:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{EXPORTER} did not come up: {process.stderr.read()!r}")  # type: ignore[union-attr]
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        assert process.stderr is not None
        process.stderr.close()


class _Engine:
    def __init__(self, view: MonitorView) -> None:
        self.view = view

    def snapshot(self) -> list[MonitorView]:
        return [self.view]


def cpdops_metrics(dsn: str) -> str:
    """The monitor collector's /metrics text after one postgres check of ``dsn``."""
    spec = MonitorSpec(
        id="pg", name="pg", tenant="", host="", kind="postgres", target=dsn, timeout_s=10.0
    )
    probe = PostgresProbe()

    async def check() -> object:
        try:
            return await probe.check(spec)
        finally:
            await probe.aclose()

    result = asyncio.run(check())
    assert getattr(result, "ok", False), result
    state = MonitorState(status=MonitorStatus.UP)
    view = MonitorView(spec, state, result, datetime.now(UTC), 1, None)  # type: ignore[arg-type]
    return MonitorCollector(_Engine(view)).exposition()


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def test_pg_stat_series_match_postgres_exporter(exporter: str, dsn: str) -> None:
    before = Scrape.parse(httpx.get(exporter, timeout=10).text)
    ours = Scrape.parse(cpdops_metrics(dsn))
    after = Scrape.parse(httpx.get(exporter, timeout=10).text)
    assert len(before.types) > 40, sorted(before.types)  # the exporter's default families
    # the same families, label names and types
    assert set(ours.types) - OURS_ONLY == set(before.types)
    for name, kind in before.types.items():
        assert ours.types[name] == kind, f"{name}: TYPE {ours.types[name]}, exporter {kind}"
        assert ours.labels[name] == before.labels[name], name
    # values: a counter read in between lies between the exporter's two readings
    compared = 0
    for key, value in ours.series.items():
        name = key[0]
        if name in OURS_ONLY or key not in before.series or key not in after.series:
            continue
        low, high = before.series[key], after.series[key]
        compared += 1
        if math.isnan(low) or math.isnan(high):
            assert math.isnan(value) or _same(low, high), (key, low, value, high)
        elif before.types[name] == "counter":
            assert low <= value <= high, (key, low, value, high)
        else:  # gauges, untyped (session time, …): of the same order
            assert abs(value - low) <= max(abs(low), abs(high), 1.0) * 10, (key, low, value)
    assert compared > 100, f"only {compared} series were compared"
