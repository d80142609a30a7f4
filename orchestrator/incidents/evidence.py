"""Container evidence for a ticket: the state and the last log lines of a tenant's containers.

The pure part cuts and shapes (:func:`container_state`, :func:`log_excerpt`); the I/O part
(:func:`fetch_container_evidence`) asks the host's Docker engine, with the short timeout of the
``DockerHost`` it is given, and turns a failure into a note instead of an exception. Nothing
here redacts: the incident engine applies ``redact()`` to whatever becomes evidence.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

from orchestrator.errors import CpdopsError
from orchestrator.fleet.hosts import HostRegistry
from orchestrator.fleet.runtime import DockerHost

LOG_LINES = 50
LOG_BYTES = 8 * 1024
EVIDENCE_TIMEOUT_S = 3


class ContainerEvidence(Protocol):
    """(host name, tenant) → ``{"host": …, "containers": […]}`` (or with ``error``)."""

    def __call__(self, host: str, tenant: str) -> dict[str, Any]: ...

    def close(self) -> None: ...


def log_excerpt(text: str, *, lines: int = LOG_LINES, max_bytes: int = LOG_BYTES) -> str:
    """The last ``lines`` lines of ``text``, at most ``max_bytes`` UTF-8 bytes of them (whole
    lines when possible; a single longer line keeps its end)."""
    kept = text.splitlines()[-lines:]
    out: list[str] = []
    size = 0
    for line in reversed(kept):
        cost = len(line.encode()) + 1
        if size + cost > max_bytes:
            if not out:  # one line longer than the budget: keep its end
                tail = line.encode()[-(max_bytes - 1) :].decode("utf-8", "ignore")
                out.append(tail)
            break
        out.append(line)
        size += cost
    return "\n".join(reversed(out))


def container_state(attrs: dict[str, Any]) -> dict[str, Any]:
    """What a ticket keeps of ``docker inspect``: identity, image and the ``State``."""
    state = attrs.get("State") or {}
    health = state.get("Health") or {}
    last_check = (health.get("Log") or [{}])[-1]
    return {
        "name": str(attrs.get("Name", "")).lstrip("/"),
        "id": str(attrs.get("Id", ""))[:12],
        "image": (attrs.get("Config") or {}).get("Image"),
        "status": state.get("Status"),
        "exit_code": state.get("ExitCode"),
        "error": state.get("Error") or None,
        "oom_killed": bool(state.get("OOMKilled")),
        "restart_count": attrs.get("RestartCount", 0),
        "started_at": state.get("StartedAt"),
        "finished_at": state.get("FinishedAt"),
        "health": health.get("Status"),
        "health_output": (last_check.get("Output") or "").strip()[-500:] or None,
    }


def fetch_container_evidence(host: DockerHost, tenant: str) -> dict[str, Any]:
    """State and log excerpt of each container of ``tenant`` on ``host`` (none found: an empty
    list). A failure to reach the engine is noted in ``error``; a container whose logs cannot
    be read keeps its state and notes ``logs_error``."""
    evidence: dict[str, Any] = {"host": host.name, "containers": []}
    try:
        mine = [c for c in host.list_managed() if c.tenant == tenant]
    except CpdopsError as exc:
        evidence["error"] = f"containers not listed: {exc}"
        return evidence
    for info in mine:
        try:
            entry = container_state(host.inspect(info.id))
        except CpdopsError as exc:
            evidence["containers"].append({"name": info.name, "error": str(exc)})
            continue
        try:
            entry["logs"] = log_excerpt(host.logs(info.id, tail=LOG_LINES))
        except CpdopsError as exc:
            entry["logs_error"] = str(exc)
        evidence["containers"].append(entry)
    return evidence


class HostEvidence:
    """:class:`ContainerEvidence` over the app's hosts: each host of the registry (same URL and
    TLS) with a client of its own whose requests time out after ``timeout_s``, so a Docker
    engine that hangs costs the evidence thread seconds, not the 60 s of the rollout client."""

    def __init__(self, hosts: HostRegistry, timeout_s: int = EVIDENCE_TIMEOUT_S) -> None:
        self._hosts = hosts
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._clients: dict[str, DockerHost] = {}

    def _host(self, name: str) -> DockerHost:
        base = self._hosts.get(name)
        with self._lock:
            short = self._clients.get(name)
            if short is None or (short.url, short.tls, short.ssh) != (base.url, base.tls, base.ssh):
                if short is not None:
                    short.close()
                short = DockerHost(
                    base.name,
                    base.url,
                    tls=base.tls,
                    ssh=base.ssh,
                    timeout=self._timeout_s,
                    pull=False,
                )
                self._clients[name] = short
            return short

    def __call__(self, host: str, tenant: str) -> dict[str, Any]:
        try:
            docker_host = self._host(host)
        except CpdopsError as exc:
            return {"host": host, "error": str(exc)}
        return fetch_container_evidence(docker_host, tenant)

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()
