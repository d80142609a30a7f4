"""``container`` probe: state, health, restarts, OOM kills and CPU/memory of one container.

Target: ``<docker url>#<container name or id>`` (``unix:///var/run/docker.sock#acme-app``), or
the options ``docker_url`` and ``container`` (which win over the target). Docker is reached
through :class:`orchestrator.fleet.runtime.DockerHost` (one per engine URL, owned by the probe);
the SDK is synchronous, so each check runs ``inspect`` in the probe's own bounded thread pool.

A check waits for ``inspect`` only (state, health, restarts, OOM: milliseconds). CPU and memory
come from the engine's stats *stream* of the container, opened by the first check of a running
container and read by a daemon thread of its own (:class:`StatsReader`), which keeps the latest
sample; a check takes that sample when it is fresh, and reports no CPU/memory when there is
none yet. A one-shot ``stats`` call would sit on the check's critical path, and it takes about
a second on docker 20.10 (the engine waits for its collector's next tick): at a 1 s timeout,
healthy containers failed. A stream nobody checked for a while, or of a container that no
longer runs, is closed; the streams have a DockerHost of their own, with a read timeout of
several seconds (a read waits for the next sample).

The judgement is the pure :func:`judge`: a container passes when it is running, not unhealthy
(when it has a HEALTHCHECK), not OOM-killed and restarted at most ``max_restarts`` times since
the previous check. Reasons name the problem: ``exited (code 137, OOM killed)``, ``paused``,
``unhealthy: <last health output>``, ``not found``, ``restarted 2 times``.

Samples (the collector adds the monitor's labels): ``container_restarts``,
``container_memory_usage_bytes`` (usage without the inactive page cache, as ``docker stats``),
``container_memory_limit_bytes`` (the host's memory when unlimited, as ``docker stats``) and
``container_cpu_usage_ratio`` (CPUs busy: 1.0 is one full core, ``docker stats`` CPU % / 100),
between the stream's last two samples.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from monitors.probe import MetricSample, MonitorSpec, ProbeResult
from orchestrator.errors import DockerError
from orchestrator.fleet.runtime import DockerHost, StatsStream

log = logging.getLogger(__name__)

HEALTH_OUTPUT_CHARS = 200
STREAM_READ_TIMEOUT_S = 10  # a stream's read waits this long for the next sample (one a second)
SAMPLE_FRESH_S = 5.0  # an older sample (a stalled stream) is not reported
STREAM_IDLE_S = 60.0  # a stream no check asked for in max(this, 3 intervals) is closed
MAX_STREAMS = 1024  # streams (threads) at once; beyond, checks report no CPU/memory
OPTION_KEYS = ("docker_url", "container", "tls", "ssh", "max_restarts")


@dataclass(frozen=True)
class ContainerOptions:
    """Where the container is and what counts as too many restarts; unknown keys are errors."""

    docker_url: str
    container: str
    tls: Mapping[str, Any] | None = None
    max_restarts: int = 0
    ssh: Mapping[str, Any] | None = None  # an ssh:// host's identity_file, known_hosts, …

    @classmethod
    def from_spec(cls, spec: MonitorSpec) -> ContainerOptions:
        options = spec.options
        unknown = sorted(set(options) - set(OPTION_KEYS))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} (known: {', '.join(OPTION_KEYS)})")
        url, _, ref = spec.target.rpartition("#")
        url = str(options.get("docker_url") or url).strip()
        ref = str(options.get("container") or ref).strip()
        if not url or not ref:
            raise ValueError(
                "target must be '<docker url>#<container>' (or set options docker_url and "
                f"container), got {spec.target!r}"
            )
        max_restarts = options.get("max_restarts", 0)
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
            raise ValueError(f"option 'max_restarts' must be an integer >= 0, got {max_restarts!r}")
        tls = options.get("tls")
        if tls is not None and not isinstance(tls, Mapping):
            raise ValueError("option 'tls' must be a mapping (ca, cert, key, verify)")
        ssh = options.get("ssh")
        if ssh is not None and not isinstance(ssh, Mapping):
            raise ValueError("option 'ssh' must be a mapping (identity_file, known_hosts, …)")
        return cls(url, ref, tls, max_restarts, ssh)


def validate(spec: MonitorSpec) -> None:
    """Raise ``ValueError`` saying what is wrong with ``spec``'s target or options."""
    ContainerOptions.from_spec(spec)


@dataclass(frozen=True)
class Seen:
    """What the previous check of a monitor saw (for restarts and CPU between checks)."""

    container_id: str
    restart_count: int
    cpu_total_ns: float | None = None
    system_ns: float | None = None


# ------------------------------------------------------------------ pure judgement


def judge(
    attrs: Mapping[str, Any] | None, previous: Seen | None, max_restarts: int
) -> tuple[list[str], str]:
    """``(problems, ok_reason)`` for an ``inspect`` result (None: no such container)."""
    if attrs is None:
        return ["not found"], ""
    state = attrs.get("State") or {}
    status = str(state.get("Status") or "unknown")
    code = state.get("ExitCode")
    oom = bool(state.get("OOMKilled"))
    oom_note = ", OOM killed" if oom else ""
    problems: list[str] = []
    if status == "running":
        if oom:
            problems.append("OOM killed (a process of the running container)")
    elif status == "paused":
        problems.append("paused")
    elif status in ("exited", "dead"):
        problems.append(f"{status} (code {code}{oom_note})")
    elif status == "restarting":
        problems.append(f"restarting (last exit code {code}{oom_note})")
    elif status == "created":
        problems.append("created, never started")
    else:
        problems.append(status)
    health = state.get("Health") or {}
    health_status = health.get("Status")
    if status == "running" and health_status == "unhealthy":
        problems.append(f"unhealthy: {last_health_output(health)}")
    restarts = restarts_since(attrs, previous)
    if restarts > max_restarts:
        problems.append(f"restarted {restarts} time{'s' if restarts != 1 else ''}")
    ok_reason = f"running ({health_status})" if health_status else "running"
    if health_status not in (None, "healthy", "unhealthy"):
        ok_reason = f"running (health: {health_status})"
    return problems, ok_reason


def restarts_since(attrs: Mapping[str, Any], previous: Seen | None) -> int:
    """How often the engine restarted the container since ``previous`` (0 for a new container)."""
    if previous is None or previous.container_id != attrs.get("Id"):
        return 0
    return max(0, int(attrs.get("RestartCount") or 0) - previous.restart_count)


def last_health_output(health: Mapping[str, Any]) -> str:
    log = health.get("Log") or []
    if not log:
        return "no health check result"
    last = log[-1] or {}
    output = " ".join(str(last.get("Output") or "").split())
    if not output:
        return f"exit code {last.get('ExitCode')}"
    return output[:HEALTH_OUTPUT_CHARS]


def memory_usage(stats: Mapping[str, Any]) -> float | None:
    """Memory in use without the inactive page cache (``docker stats``' MEM USAGE)."""
    mem = stats.get("memory_stats") or {}
    usage = mem.get("usage")
    if usage is None:
        return None
    extra = mem.get("stats") or {}
    for key in ("total_inactive_file", "inactive_file"):  # cgroup v1, then v2
        cache = extra.get(key)
        if cache is not None and cache < usage:
            return float(usage - cache)
    return float(usage)


def cpu_point(stats: Mapping[str, Any], key: str = "cpu_stats") -> tuple[float, float, int] | None:
    """``(container CPU ns, system CPU ns, online CPUs)`` of one stats sample, if present."""
    cpu = stats.get(key) or {}
    total = (cpu.get("cpu_usage") or {}).get("total_usage")
    system = cpu.get("system_cpu_usage")
    if total is None or not system:
        return None
    percpu = (cpu.get("cpu_usage") or {}).get("percpu_usage") or ()
    cpus = cpu.get("online_cpus") or len(percpu) or 1
    return float(total), float(system), int(cpus)


def cpu_ratio(stats: Mapping[str, Any], previous: Seen | None, container_id: str) -> float | None:
    """CPUs busy between two samples: the stats' own previous one, else the last check's."""
    now = cpu_point(stats)
    if now is None:
        return None
    before = cpu_point(stats, "precpu_stats")
    if (
        before is None
        and previous is not None
        and previous.container_id == container_id
        and previous.cpu_total_ns is not None
        and previous.system_ns is not None
    ):
        before = (previous.cpu_total_ns, previous.system_ns, now[2])
    if before is None:
        return None
    cpu_delta, system_delta = now[0] - before[0], now[1] - before[1]
    if system_delta <= 0 or cpu_delta < 0:
        return None
    return cpu_delta / system_delta * now[2]


def container_details(attrs: Mapping[str, Any], restarts: int) -> dict[str, Any]:
    state = attrs.get("State") or {}
    health = state.get("Health") or {}
    return {
        "id": attrs.get("Id"),
        "name": str(attrs.get("Name") or "").lstrip("/"),
        "image": (attrs.get("Config") or {}).get("Image"),
        "status": state.get("Status"),
        "exit_code": state.get("ExitCode"),
        "oom_killed": bool(state.get("OOMKilled")),
        "error": state.get("Error") or None,
        "started_at": state.get("StartedAt"),
        "finished_at": state.get("FinishedAt"),
        "health": health.get("Status"),
        "health_output": last_health_output(health) if health else None,
        "restart_count": int(attrs.get("RestartCount") or 0),
        "restarts_since_last_check": restarts,
    }


# ------------------------------------------------------------------ the stats streams


class StatsReader:
    """One container's stats stream, read by a daemon thread that keeps the latest sample.

    The thread opens the stream itself (the engine answers with its first sample, up to a
    second later) and ends when the stream does (container removed, engine gone, a read timed
    out) or, after :meth:`close`, at the next sample. Nothing here raises to the caller."""

    def __init__(
        self, host: DockerHost, container_id: str, client_lock: threading.Lock, now: float
    ) -> None:
        self.container_id = container_id
        self.idle_after = now + STREAM_IDLE_S  # closed when no check wanted it by then
        self._host = host
        self._client_lock = client_lock
        self._lock = threading.Lock()
        self._latest: tuple[float, dict[str, Any]] | None = None
        self._closed = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"cpdops-stats-{container_id[:12]}", daemon=True
        )
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closed.is_set()

    def latest(self, now: float, max_age_s: float = SAMPLE_FRESH_S) -> dict[str, Any] | None:
        """The last sample, if the stream sent it within ``max_age_s``."""
        with self._lock:
            latest = self._latest
        if latest is None or now - latest[0] > max_age_s:
            return None
        return latest[1]

    def close(self) -> None:
        self._closed.set()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    def _run(self) -> None:
        stream: StatsStream | None = None
        try:
            with self._client_lock:  # the client is created lazily; create it once
                self._host.client  # noqa: B018
            stream = self._host.stats_stream(self.container_id)
            for sample in stream:
                with self._lock:
                    self._latest = (time.monotonic(), sample)
                if self._closed.is_set():
                    break
        except DockerError as exc:
            log.debug("stats stream of %s ended: %s", self.container_id[:12], exc)
        finally:
            self._closed.set()
            if stream is not None:
                stream.close()


# ------------------------------------------------------------------ the probe


class ContainerProbe:
    """Checks containers through DockerHost in a bounded thread pool; never raises."""

    def __init__(self, *, max_workers: int = 16, max_streams: int = MAX_STREAMS) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be >= 1")
        self._max_workers = max_workers
        self._max_streams = max_streams
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._hosts: dict[tuple[str, str, str, int], DockerHost] = {}
        self._client_lock = threading.Lock()
        self._seen: dict[str, Seen] = {}
        self._inflight: set[concurrent.futures.Future[Any]] = set()
        # (the streams' DockerHost, container id) -> its reader
        self._readers: dict[tuple[DockerHost, str], StatsReader] = {}
        self._swept_at = 0.0

    async def check(self, spec: MonitorSpec) -> ProbeResult:
        at = datetime.now(UTC)
        started = time.perf_counter()
        try:
            opts = ContainerOptions.from_spec(spec)
        except ValueError as exc:
            return ProbeResult.failure(f"invalid configuration: {exc}", duration_s=0.0, at=at)
        host = self._host(spec, opts)
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=self._max_workers, thread_name_prefix="cpdops-container-probe"
            )
        future = self._pool.submit(self._observe, host, opts.container)
        self._inflight.add(future)
        try:
            attrs = await asyncio.wrap_future(future)
        except DockerError as exc:
            return ProbeResult.failure(str(exc), duration_s=time.perf_counter() - started, at=at)
        finally:
            future.cancel()
            self._inflight.discard(future)
        previous = self._seen.get(spec.id)
        problems, ok_reason = judge(attrs, previous, opts.max_restarts)
        duration = time.perf_counter() - started
        if attrs is None:
            self._seen.pop(spec.id, None)
            details = {"docker_url": opts.docker_url, "container": opts.container}
            return ProbeResult(
                ok=False, duration_s=duration, reason=problems[0], at=at, details=details
            )
        container_id = str(attrs.get("Id"))
        running = (attrs.get("State") or {}).get("Status") == "running"
        stats = self._latest_stats(spec, opts, container_id, running)
        restart_count = int(attrs.get("RestartCount") or 0)
        found: list[MetricSample] = [
            MetricSample("container_restarts", restart_count, help="Restarts by the engine")
        ]
        point = cpu_point(stats) if stats else None
        if stats:
            ratio = cpu_ratio(stats, previous, container_id)
            if ratio is not None:
                found.append(MetricSample("container_cpu_usage_ratio", ratio, help="CPUs busy"))
            usage = memory_usage(stats)
            if usage is not None:
                found.append(MetricSample("container_memory_usage_bytes", usage, help="Memory"))
            limit = (stats.get("memory_stats") or {}).get("limit")
            if limit:
                found.append(MetricSample("container_memory_limit_bytes", limit, help="Limit"))
        self._seen[spec.id] = Seen(
            container_id,
            restart_count,
            point[0] if point else None,
            point[1] if point else None,
        )
        return ProbeResult(
            ok=not problems,
            duration_s=duration,
            reason="; ".join(problems) or ok_reason,
            at=at,
            details=container_details(attrs, restarts_since(attrs, previous)),
            samples=tuple(found),
        )

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
            running = [asyncio.wrap_future(f) for f in self._inflight]
            if running:
                await asyncio.wait(running, timeout=5.0)
        readers, self._readers = list(self._readers.values()), {}
        for reader in readers:
            reader.close()
        if readers:  # each ends at its stream's next sample (about a second)
            await asyncio.to_thread(_join_all, readers, STREAM_READ_TIMEOUT_S + 1.0)
        hosts, self._hosts = list(self._hosts.values()), {}
        for host in hosts:
            host.close()

    def _latest_stats(
        self, spec: MonitorSpec, opts: ContainerOptions, container_id: str, running: bool
    ) -> dict[str, Any] | None:
        """The latest fresh sample of the container's stream; opens the stream of a running
        container that has none, closes that of one that stopped, sweeps idle ones."""
        now = time.monotonic()
        self._sweep(now)
        key = (self._host(spec, opts, STREAM_READ_TIMEOUT_S), container_id)
        reader = self._readers.get(key)
        if not running:
            if reader is not None:
                reader.close()
                del self._readers[key]
            return None
        if reader is not None and not reader.alive:
            del self._readers[key]  # ended (engine restarted, a read timed out): open anew
            stats = reader.latest(now)
            reader = None
        else:
            stats = None
        if reader is None:
            if len(self._readers) >= self._max_streams:
                return stats
            reader = self._readers[key] = StatsReader(key[0], container_id, self._client_lock, now)
        reader.idle_after = now + max(STREAM_IDLE_S, 3 * spec.interval_s)
        return reader.latest(now) or stats

    def _sweep(self, now: float) -> None:
        """Close the streams no check wanted lately (at most once a second)."""
        if now - self._swept_at < 1.0:
            return
        self._swept_at = now
        for key, reader in list(self._readers.items()):
            if not reader.alive or now > reader.idle_after:
                reader.close()
                del self._readers[key]

    def _host(
        self, spec: MonitorSpec, opts: ContainerOptions, timeout: int | None = None
    ) -> DockerHost:
        """The probe's DockerHost of the engine, one per timeout: the check's (its timeout),
        the streams' (their read timeout)."""
        timeout = timeout or max(1, math.ceil(spec.timeout_s))
        access = json.dumps([dict(opts.tls or {}), dict(opts.ssh or {})], sort_keys=True)
        key = (spec.host, opts.docker_url, access, timeout)
        host = self._hosts.get(key)
        if host is None:
            host = self._hosts[key] = DockerHost(
                spec.host,
                opts.docker_url,
                tls=dict(opts.tls) if opts.tls else None,
                ssh=dict(opts.ssh) if opts.ssh else None,
                timeout=timeout,
            )
        return host

    def _observe(self, host: DockerHost, ref: str) -> dict[str, Any] | None:
        """Worker thread: inspect (None: no such container)."""
        with self._client_lock:  # the client is created lazily; create it once
            host.client  # noqa: B018
        return host.inspect_or_none(ref)


def _join_all(readers: list[StatsReader], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for reader in readers:
        reader.join(max(0.0, deadline - time.monotonic()))
