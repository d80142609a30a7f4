"""The host registry: Docker hosts from the database, with connections reused."""

from __future__ import annotations

import json
import threading
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.db.models import Host
from orchestrator.errors import NotFoundError
from orchestrator.fleet.runtime import DockerHost

LOCAL_HOST = "local"


class HostRegistry:
    """Hands out ``DockerHost`` objects for the hosts stored in the database.

    When no host is stored, the local engine (``Settings.local_docker_url``) is host
    ``local``, so ``cpdops serve`` on a fresh machine manages the local containers.
    """

    def __init__(
        self, session_factory: sessionmaker[Session], local_url: str, *, pull: bool = True
    ) -> None:
        self._factory = session_factory
        self._local_url = local_url
        self._pull = pull
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[str, DockerHost]] = {}

    def _rows(self) -> list[tuple[str, str, dict[str, Any] | None, dict[str, Any] | None]]:
        with self._factory() as session:
            rows = session.scalars(select(Host).order_by(Host.name)).all()
            result = [(h.name, h.url, h.tls, h.ssh) for h in rows]
        return result or [(LOCAL_HOST, self._local_url, None, None)]

    def hosts(self) -> list[DockerHost]:
        result = []
        with self._lock:
            for name, url, tls, ssh in self._rows():
                key = json.dumps([url, tls, ssh], sort_keys=True)
                cached = self._cache.get(name)
                if cached is None or cached[0] != key:
                    if cached is not None:
                        cached[1].close()
                    cached = (key, DockerHost(name, url, tls=tls, ssh=ssh, pull=self._pull))
                    self._cache[name] = cached
                result.append(cached[1])
        return result

    def get(self, name: str) -> DockerHost:
        for host in self.hosts():
            if host.name == name:
                return host
        raise NotFoundError(f"no host named {name!r}")

    def close(self) -> None:
        with self._lock:
            for _key, host in self._cache.values():
                host.close()
            self._cache.clear()
