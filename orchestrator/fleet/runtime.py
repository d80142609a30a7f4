"""The Docker boundary: the one module that talks to Docker Engine about containers.

Docker SDK errors are converted here, once, into ``orchestrator.errors``; callers see
``DockerHost`` and plain dataclasses. (Image building for the stand-in lives in
``orchestrator.fleet.images``.)
"""

from __future__ import annotations

import logging
import os
import re
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.constants
import docker.errors
import paramiko
import requests.exceptions
import urllib3.exceptions
from docker.tls import TLSConfig
from docker.transport import unixconn

from orchestrator.errors import ContainerError, DockerError, HostUnreachable, ImageNotFound
from orchestrator.fleet.sshconn import SshRefused, ssh_client

log = logging.getLogger(__name__)


def _unix_connect(self: unixconn.UnixHTTPConnection) -> None:
    """docker-py's unix connect, closing the socket when the connect fails: the original
    leaks one file descriptor per refused connect — every check of a dead host."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(self.timeout)
    try:
        sock.connect(self.unix_socket)
    except BaseException:
        sock.close()
        raise
    self.sock = sock


unixconn.UnixHTTPConnection.connect = _unix_connect

TENANT_LABEL = "smartcpd.tenant"
COMPONENT_LABEL = "smartcpd.component"
HEALTH_URL_LABEL = "smartcpd.health-url"
SIP_URI_LABEL = "smartcpd.sip-uri"
ROLLOUT_LABEL = "smartcpd.rollout"
PREVIOUS_IMAGE_LABEL = "smartcpd.previous-image"
VERSION_LABEL = "org.opencontainers.image.version"

# Config fields that come from the image unless the user set them; see ``clone_config``.
_IMAGE_DEFAULTED = ("Cmd", "Entrypoint", "WorkingDir", "User", "StopSignal", "Healthcheck")


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    name: str
    image: str
    image_id: str
    status: str
    labels: dict[str, str]
    health: str | None
    restart_count: int
    exit_code: int | None
    ports: dict[str, Any] = field(default_factory=dict)
    health_url: str | None = None  # the label, with {ip} / {port:N} resolved

    @property
    def tenant(self) -> str | None:
        return self.labels.get(TENANT_LABEL)

    @property
    def component(self) -> str:
        return self.labels.get(COMPONENT_LABEL, "app")

    @property
    def running(self) -> bool:
        return self.status == "running"


def _info(attrs: dict[str, Any]) -> ContainerInfo:
    state = attrs.get("State") or {}
    config = attrs.get("Config") or {}
    health = (state.get("Health") or {}).get("Status")
    return ContainerInfo(
        id=attrs["Id"],
        name=str(attrs.get("Name", "")).lstrip("/"),
        image=str(config.get("Image", "")),
        image_id=str(attrs.get("Image", "")),
        status=str(state.get("Status", "unknown")),
        labels=dict(config.get("Labels") or {}),
        health=health,
        restart_count=int(attrs.get("RestartCount") or 0),
        exit_code=state.get("ExitCode"),
        ports=dict((attrs.get("NetworkSettings") or {}).get("Ports") or {}),
        health_url=resolve_health_url((config.get("Labels") or {}).get(HEALTH_URL_LABEL), attrs),
    )


_PLACEHOLDER = re.compile(r"\{(ip|port:(\d+)(?:/(tcp|udp))?)\}")


def resolve_health_url(template: str | None, attrs: dict[str, Any]) -> str | None:
    """Resolve ``{ip}`` (the container's address) and ``{port:8080}`` (the host port published
    for 8080/tcp) in a ``smartcpd.health-url`` label, so the URL follows a container that is
    re-created with another address or a random published port. None when unresolvable."""
    if not template or "{" not in template:
        return template
    net = attrs.get("NetworkSettings") or {}
    missing = False

    def sub(m: re.Match[str]) -> str:
        nonlocal missing
        if m.group(1) == "ip":
            ips = [n.get("IPAddress") for n in (net.get("Networks") or {}).values()]
            ip = next((i for i in ips if i), None)
            missing = missing or ip is None
            return ip or ""
        key = f"{m.group(2)}/{m.group(3) or 'tcp'}"
        bindings = (net.get("Ports") or {}).get(key) or []
        port = next((b.get("HostPort") for b in bindings if b.get("HostPort")), None)
        missing = missing or port is None
        return str(port or "")

    url = _PLACEHOLDER.sub(sub, template)
    return None if missing else url


@dataclass(frozen=True)
class OneOffResult:
    """How a one-off container (``DockerHost.run_oneoff_like``) ended."""

    exit_code: int  # 137 (SIGKILL) when it was killed at the timeout
    logs: str  # stdout and stderr interleaved, the last ONEOFF_LOG_LINES lines
    seconds: float
    timed_out: bool = False


# What a Docker SDK call can raise about the engine or the way to it (paramiko: a channel of
# an SSH connection that died between two requests).
ENGINE_ERRORS = (
    docker.errors.DockerException,
    requests.exceptions.RequestException,
    paramiko.SSHException,
    urllib3.exceptions.HTTPError,  # e.g. no free SSH channel within the timeout
)

ONEOFF_LOG_LINES = 1000
ONEOFF_KILL_WAIT_S = 30


def _tls_client(url: str, tls: TLSConfig, timeout: int) -> docker.DockerClient:
    """A client for a TLS endpoint that ignores ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``:
    requests lets those environment variables override a session's own CA (psf/requests#3829),
    so with one set (as on many machines) the engine's CA given in the fleet file would be
    ignored and every TLS host would fail verification. The API version is asked for once the
    session no longer trusts the environment (docker-py would ask in its constructor)."""
    client = docker.DockerClient(
        base_url=url, tls=tls, timeout=timeout, version=docker.constants.MINIMUM_DOCKER_API_VERSION
    )
    client.api.trust_env = False
    try:
        client.api._version = client.api._retrieve_server_version()
    except BaseException:
        client.close()
        raise
    return client


def _tls_reason(exc: BaseException) -> str | None:
    """The TLS failure behind ``exc`` (an ssl error anywhere in its chain or arguments), as
    OpenSSL words it, or None when ``exc`` is not a TLS failure."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        item = todo.pop()
        if id(item) in seen or not isinstance(item, BaseException):
            continue
        seen.add(id(item))
        if isinstance(item, ssl.SSLError):
            return str(item.reason or item.strerror or item).replace("_", " ").lower()
        todo += [item.__cause__, item.__context__, *item.args]
        reason = getattr(item, "reason", None)  # urllib3's MaxRetryError
        if isinstance(reason, BaseException):
            todo.append(reason)
    text = str(exc)
    for marker in ("SSLError", "CERTIFICATE_VERIFY_FAILED", "certificate required"):
        if marker in text:
            return text.rsplit(":", 1)[-1].strip(" ')\"") or marker
    return None


class DockerHost:
    """One Docker Engine endpoint (``unix://``, ``tcp://`` with TLS, ``ssh://``)."""

    def __init__(
        self,
        name: str,
        url: str,
        *,
        tls: dict[str, Any] | None = None,
        ssh: dict[str, Any] | None = None,
        timeout: int = 60,
        pull: bool = True,
    ) -> None:
        self.name = name
        self.url = url
        self.pull = pull
        self._tls = tls
        self._ssh = ssh
        self._timeout = timeout
        self._client: docker.DockerClient | None = None

    def __repr__(self) -> str:
        return f"DockerHost({self.name!r}, {self.url!r})"

    @property
    def tls(self) -> dict[str, Any] | None:
        return self._tls

    @property
    def ssh(self) -> dict[str, Any] | None:
        """The fleet file's ``ssh`` options of an ``ssh://`` host (paths, no key material)."""
        return self._ssh

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            tls: TLSConfig | bool = False
            if self._tls:
                cert = (self._tls["cert"], self._tls["key"]) if self._tls.get("cert") else None
                tls = TLSConfig(
                    client_cert=cert,
                    ca_cert=self._tls.get("ca"),
                    verify=bool(self._tls.get("verify", True)),
                )
            path = self.url.removeprefix("unix://")
            if self.url.startswith("unix://") and not os.path.exists(path):
                # docker-py would leak the socket of the failed connect (a ResourceWarning)
                raise HostUnreachable(f"host {self.name} ({self.url}): no socket at {path}")
            try:
                if tls:
                    self._client = _tls_client(self.url, tls, self._timeout)
                elif self.url.startswith("ssh://"):
                    self._client = ssh_client(
                        self.url,
                        self._ssh,
                        timeout=self._timeout,
                        version=docker.constants.MINIMUM_DOCKER_API_VERSION,
                    )
                else:
                    self._client = docker.DockerClient(
                        base_url=self.url, tls=tls, timeout=self._timeout, version="auto"
                    )
            except SshRefused as exc:
                raise self._unreachable(exc) from None  # the message says it all
            except ENGINE_ERRORS as exc:
                raise self._unreachable(exc) from exc
        return self._client

    def _unreachable(self, exc: Exception) -> HostUnreachable:
        if isinstance(exc, SshRefused | paramiko.SSHException):
            return HostUnreachable(f"host {self.name} ({self.url}): {exc}")
        reason = _tls_reason(exc)
        if reason is not None:
            if "verify failed" in reason:
                who = "the engine's certificate is not signed by the CA in tls.ca"
            elif any(
                m in reason for m in ("bad certificate", "certificate required", "unknown ca")
            ):
                who = "the engine refused cpdops's client certificate (tls.cert/tls.key)"
            else:
                who = "check the host's tls ca/cert/key"
            return HostUnreachable(
                f"host {self.name} ({self.url}): TLS handshake failed: {who}: {reason}"
            )
        return HostUnreachable(f"host {self.name} ({self.url}): {exc}")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _fail(self, what: str, exc: Exception) -> DockerError:
        if isinstance(exc, docker.errors.ImageNotFound):
            return ImageNotFound(f"host {self.name}: {what}: {_explain(exc)}")
        if isinstance(exc, SshRefused):
            return self._unreachable(exc)
        if isinstance(exc, paramiko.SSHException):
            return HostUnreachable(f"host {self.name} ({self.url}): SSH: {exc}: {what}")
        if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
            if _tls_reason(exc) is not None:
                return self._unreachable(exc)
            return HostUnreachable(f"host {self.name} ({self.url}) does not answer: {what}")
        if isinstance(exc, docker.errors.APIError):
            return ContainerError(f"host {self.name}: {what}: {_explain(exc)}")
        return DockerError(f"host {self.name}: {what}: {exc}")

    # --- engine -----------------------------------------------------------------------------
    def ping(self) -> None:
        try:
            self.client.ping()
        except ENGINE_ERRORS as exc:
            raise self._fail("ping", exc) from exc

    # --- images -------------------------------------------------------------------------------
    def image_labels(self, ref: str) -> dict[str, str]:
        """Labels of a local image; ImageNotFound when the host does not have it."""
        try:
            attrs = self.client.api.inspect_image(ref)
        except docker.errors.ImageNotFound as exc:
            raise ImageNotFound(f"image {ref} is not present on host {self.name}") from exc
        except ENGINE_ERRORS as exc:
            raise self._fail(f"inspect image {ref}", exc) from exc
        return dict((attrs.get("Config") or {}).get("Labels") or {})

    def list_images(self) -> list[tuple[str, str | None]]:
        """The tagged images on this host: (repo:tag, its version label)."""
        try:
            rows = self.client.api.images()
        except ENGINE_ERRORS as exc:
            raise self._fail("list images", exc) from exc
        return [
            (tag, (row.get("Labels") or {}).get(VERSION_LABEL))
            for row in rows
            for tag in row.get("RepoTags") or []
            if tag and not tag.startswith("<none>")
        ]

    def image_config(self, ref: str) -> dict[str, Any]:
        try:
            attrs = self.client.api.inspect_image(ref)
        except ENGINE_ERRORS as exc:
            raise self._fail(f"inspect image {ref}", exc) from exc
        return dict(attrs.get("Config") or {})

    def ensure_image(self, ref: str) -> dict[str, str]:
        """Make sure ``ref`` is on this host (pull if absent); return its labels."""
        try:
            return self.image_labels(ref)
        except ImageNotFound:
            if not self.pull:
                raise ImageNotFound(
                    f"image {ref} is not present on host {self.name} "
                    "(pulling is off: CPDOPS_PULL_POLICY=never)"
                ) from None
        try:
            self.client.images.pull(ref)
        except ENGINE_ERRORS as exc:
            raise ImageNotFound(
                f"image {ref} is not present on host {self.name} and cannot be pulled: "
                f"{_explain(exc)}"
            ) from exc
        return self.image_labels(ref)

    # --- containers -------------------------------------------------------------------------
    def list_managed(self) -> list[ContainerInfo]:
        """Every container (running or not) labelled ``smartcpd.tenant``."""
        try:
            containers = self.client.containers.list(
                all=True, filters={"label": TENANT_LABEL}, ignore_removed=True
            )
        except ENGINE_ERRORS as exc:
            raise self._fail("list containers", exc) from exc
        return [_info(c.attrs) for c in containers]

    def inspect(self, ref: str) -> dict[str, Any]:
        try:
            return dict(self.client.api.inspect_container(ref))
        except docker.errors.NotFound as exc:
            raise ContainerError(f"host {self.name}: no container {ref}") from exc
        except ENGINE_ERRORS as exc:
            raise self._fail(f"inspect {ref}", exc) from exc

    def inspect_or_none(self, ref: str) -> dict[str, Any] | None:
        """Like :meth:`inspect`, but None when there is no container ``ref``."""
        try:
            return dict(self.client.api.inspect_container(ref))
        except docker.errors.NotFound:
            return None
        except ENGINE_ERRORS as exc:
            raise self._fail(f"inspect {ref}", exc) from exc

    def stats_stream(self, ref: str) -> StatsStream:
        """The engine's stats stream of a container (``docker stats``): a sample about every
        second, each with its ``precpu_stats``, until the container stops or the stream is
        closed. Each read waits at most this host's ``timeout``; give the stream a host of its
        own with a timeout of several seconds (a read between samples waits for the next)."""
        api = self.client.api
        try:
            # the SDK's stats(stream=True) hides the response, so a reader blocked in it could
            # not be woken; the same request, keeping the response to close
            response = api._get(
                api._url("/containers/{0}/stats", ref), params={"stream": True}, stream=True
            )
            api._raise_for_status(response)
        except ENGINE_ERRORS as exc:
            raise self._fail(f"stats {ref}", exc) from exc
        return StatsStream(self, ref, response)

    def find(self, ref: str) -> ContainerInfo | None:
        try:
            return _info(self.client.api.inspect_container(ref))
        except docker.errors.NotFound:
            return None
        except ENGINE_ERRORS as exc:
            raise self._fail(f"inspect {ref}", exc) from exc

    def stop(self, ref: str, timeout: int = 10) -> None:
        self._call(f"stop {ref}", self.client.api.stop, ref, timeout=timeout)

    def kill(self, ref: str) -> None:
        """SIGKILL a running container; nothing when it is not running or not there."""
        try:
            self.client.api.kill(ref)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # not running
                return
            raise self._fail(f"kill {ref}", exc) from exc
        except ENGINE_ERRORS as exc:
            raise self._fail(f"kill {ref}", exc) from exc

    def start(self, ref: str) -> None:
        self._call(f"start {ref}", self.client.api.start, ref)

    def rename(self, ref: str, new_name: str) -> None:
        self._call(f"rename {ref} to {new_name}", self.client.api.rename, ref, new_name)

    def remove(self, ref: str, *, force: bool = True) -> None:
        try:
            self.client.api.remove_container(ref, force=force, v=False)
        except docker.errors.NotFound:
            return
        except ENGINE_ERRORS as exc:
            raise self._fail(f"remove {ref}", exc) from exc

    def logs(self, ref: str, tail: int = 50) -> str:
        try:
            raw = self.client.api.logs(ref, tail=tail, stdout=True, stderr=True)
        except ENGINE_ERRORS as exc:
            raise self._fail(f"logs {ref}", exc) from exc
        return bytes(raw).decode("utf-8", "replace")

    def create_like(
        self,
        ref: str,
        *,
        image: str,
        name: str,
        extra_labels: dict[str, str],
        attrs: dict[str, Any] | None = None,
    ) -> str:
        """Create (not start) a copy of container ``ref`` running ``image``; return its id.

        ``attrs`` is ``ref``'s inspect result when the caller has it (saves a request)."""
        attrs = attrs if attrs is not None else self.inspect(ref)
        old_image_config = self.image_config(attrs["Image"])
        body, extra_networks = clone_config(attrs, old_image_config, image, extra_labels)
        try:
            created = self.client.api.create_container_from_config(body, name=name)
        except docker.errors.ImageNotFound as exc:
            raise ImageNotFound(f"image {image} is not present on host {self.name}") from exc
        except ENGINE_ERRORS as exc:
            raise self._fail(f"create {name} from {image}", exc) from exc
        new_id = str(created["Id"])
        for net, endpoint in extra_networks.items():
            self._call(
                f"connect {name} to {net}",
                self.client.api.connect_container_to_network,
                new_id,
                net,
                aliases=endpoint.get("Aliases"),
                links=endpoint.get("Links"),
            )
        return new_id

    def run(self, **kwargs: Any) -> str:
        """Create and start a container from SDK-style keyword arguments (demo, tests)."""
        try:
            container = self.client.containers.run(detach=True, **kwargs)
        except docker.errors.ImageNotFound as exc:
            raise ImageNotFound(f"host {self.name}: {_explain(exc)}") from exc
        except ENGINE_ERRORS as exc:
            raise self._fail(f"run {kwargs.get('name', '')}", exc) from exc
        return str(container.id)

    def run_oneoff_like(
        self,
        ref: str,
        *,
        image: str,
        command: list[str],
        name: str,
        labels: dict[str, str],
        timeout_s: float,
    ) -> OneOffResult:
        """Run ``command`` to its end in a one-off container of ``image`` set up like container
        ``ref`` (its env, mounts and networks; see ``oneoff_config``), e.g. a migration.

        Waits at most ``timeout_s``, then kills it (``timed_out``). The container is removed
        afterwards, also on errors; a container left under ``name`` by an earlier attempt
        (carrying ``labels``) is removed first, any other one there is an error."""
        attrs = self.inspect(ref)
        body, extra_networks = clone_config(attrs, self.image_config(attrs["Image"]), image, {})
        body, extra_networks = oneoff_config(body, extra_networks, command=command, labels=labels)
        stale = self.find(name)
        if stale is not None:
            if any(stale.labels.get(k) != v for k, v in labels.items()):
                raise ContainerError(
                    f"host {self.name}: cannot run one-off {name}: another container has the name"
                )
            log.warning("removing a leftover one-off container host=%s name=%s", self.name, name)
            self.remove(stale.id, force=True)
        started = time.monotonic()
        try:
            created = self.client.api.create_container_from_config(body, name=name)
        except docker.errors.ImageNotFound as exc:
            raise ImageNotFound(f"image {image} is not present on host {self.name}") from exc
        except ENGINE_ERRORS as exc:
            raise self._fail(f"create one-off {name} from {image}", exc) from exc
        container_id = str(created["Id"])
        try:
            for net, endpoint in extra_networks.items():
                self._call(
                    f"connect {name} to {net}",
                    self.client.api.connect_container_to_network,
                    container_id,
                    net,
                    links=endpoint.get("Links"),
                )
            self._call(f"start one-off {name}", self.client.api.start, container_id)
            exit_code, timed_out = self._wait_oneoff(container_id, name, timeout_s)
            raw = self._call(
                f"logs of one-off {name}",
                self.client.api.logs,
                container_id,
                stdout=True,
                stderr=True,
                tail=ONEOFF_LOG_LINES,
            )
            seconds = time.monotonic() - started
        finally:
            try:
                self.remove(container_id, force=True)
            except DockerError as exc:
                log.error("one-off container left behind host=%s name=%s: %s", self.name, name, exc)
        return OneOffResult(
            exit_code=exit_code,
            logs=bytes(raw).decode("utf-8", "replace"),
            seconds=seconds,
            timed_out=timed_out,
        )

    def _wait_oneoff(self, container_id: str, name: str, timeout_s: float) -> tuple[int, bool]:
        """(exit code, timed out): wait for the container to stop, kill it at ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        try:
            result = self.client.api.wait(container_id, timeout=max(timeout_s, 0.01))
            return int(result.get("StatusCode", -1)), False
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError) as exc:
            # docker-py's wait gives up with ReadTimeout (over a unix socket: ConnectionError)
            if time.monotonic() < deadline - 0.5:
                raise self._fail(f"wait for one-off {name}", exc) from exc
        except ENGINE_ERRORS as exc:
            raise self._fail(f"wait for one-off {name}", exc) from exc
        log.warning(
            "one-off container did not finish in %.0fs; killing it host=%s name=%s",
            timeout_s,
            self.name,
            name,
        )
        try:
            self.client.api.kill(container_id)
        except docker.errors.APIError:
            pass  # it stopped meanwhile
        except ENGINE_ERRORS as exc:
            raise self._fail(f"kill one-off {name}", exc) from exc
        result = self._call(
            f"wait for one-off {name}",
            self.client.api.wait,
            container_id,
            timeout=ONEOFF_KILL_WAIT_S,
        )
        return int(result.get("StatusCode", -1)), True

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ENGINE_ERRORS as exc:
            raise self._fail(what, exc) from exc


class StatsStream:
    """An open stats stream (:meth:`DockerHost.stats_stream`): iterate for the samples (dicts);
    the iteration closes it when it ends. Close it from the iterating thread only (between two
    samples): closing the socket under another thread's blocked read is not safe."""

    def __init__(self, host: DockerHost, ref: str, response: requests.Response) -> None:
        self._host = host
        self._ref = ref
        self._response = response

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            for sample in self._host.client.api._stream_helper(self._response, decode=True):
                yield dict(sample)
        except (*ENGINE_ERRORS, OSError, ValueError, AttributeError) as exc:  # or closed
            if not self._response.raw.closed:
                raise self._host._fail(f"stats {self._ref}", exc) from exc
        finally:
            self.close()

    def close(self) -> None:
        self._response.close()


def clone_config(
    attrs: dict[str, Any],
    old_image_config: dict[str, Any],
    image: str,
    extra_labels: dict[str, str],
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Build an Engine ``/containers/create`` body that reproduces a container on ``image``.

    The container's own settings (env, mounts, ports, networks, restart policy, labels, …)
    are kept; values it merely inherited from its old image are dropped so that the new
    image's defaults apply (otherwise e.g. ``ENV VERSION=1`` of the old image would stick).
    Returns the body and the extra networks to connect after creation.
    """
    config = dict(attrs.get("Config") or {})
    host_config = dict(attrs.get("HostConfig") or {})
    img_env = set(old_image_config.get("Env") or [])
    img_labels = old_image_config.get("Labels") or {}
    body: dict[str, Any] = {}
    for key, value in config.items():
        if key in ("Image", "Env", "Labels", "Hostname", "ExposedPorts", "Volumes"):
            continue
        if key in _IMAGE_DEFAULTED and value == old_image_config.get(key):
            continue
        body[key] = value
    body["Image"] = image
    body["Env"] = [e for e in (config.get("Env") or []) if e not in img_env]
    labels = {k: v for k, v in (config.get("Labels") or {}).items() if img_labels.get(k) != v}
    labels.update(extra_labels)
    body["Labels"] = labels
    hostname = config.get("Hostname")
    if hostname and not str(attrs.get("Id", "")).startswith(hostname):
        body["Hostname"] = hostname
    img_ports = old_image_config.get("ExposedPorts") or {}
    ports: dict[str, dict[str, Any]] = {
        p: {} for p in (config.get("ExposedPorts") or {}) if p not in img_ports
    }
    ports.update({p: {} for p in (host_config.get("PortBindings") or {})})
    if ports:
        body["ExposedPorts"] = ports
    # Anonymous volumes are kept by mounting the same volume into the new container.
    bound = {m.get("Target") for m in host_config.get("Mounts") or []}
    bound |= {b.split(":")[1] for b in host_config.get("Binds") or [] if ":" in b}
    anon = [
        {"Type": "volume", "Source": m["Name"], "Target": m["Destination"]}
        for m in attrs.get("Mounts") or []
        if m.get("Type") == "volume" and m.get("Destination") not in bound and m.get("Name")
    ]
    if anon:
        host_config["Mounts"] = list(host_config.get("Mounts") or []) + anon
    body["HostConfig"] = host_config
    networks = dict((attrs.get("NetworkSettings") or {}).get("Networks") or {})
    mode = host_config.get("NetworkMode") or "default"
    short_id = str(attrs.get("Id", ""))[:12]
    endpoints: dict[str, dict[str, Any]] = {}
    for net, ep in networks.items():
        aliases = [a for a in (ep.get("Aliases") or []) if a != short_id] or None
        endpoints[net] = {
            k: v
            for k, v in {
                "Aliases": aliases,
                "Links": ep.get("Links"),
                "IPAMConfig": ep.get("IPAMConfig"),
                "DriverOpts": ep.get("DriverOpts"),
            }.items()
            if v
        }
    primary = mode if mode in endpoints else None
    if primary is None and mode == "default" and "bridge" in endpoints:
        primary = "bridge"
    if primary is not None and not mode.startswith(("container:", "host", "none")):
        body["NetworkingConfig"] = {"EndpointsConfig": {primary: endpoints.pop(primary)}}
    elif mode.startswith(("container:", "host", "none")):
        endpoints = {}
    return body, endpoints


def oneoff_config(
    body: dict[str, Any],
    extra_networks: dict[str, dict[str, Any]],
    *,
    command: list[str],
    labels: dict[str, str],
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Turn a ``clone_config`` result into a one-off container's (it runs beside the instance).

    Kept: env, mounts, networks, user, working dir, entrypoint. Changed: ``command`` as Cmd;
    only ``labels`` (the instance's could route traffic or monitors to it); no exposed or
    published ports, no restart policy, no healthcheck, no auto-remove (its logs are read
    after it ends), no stdin; on its networks without the instance's aliases, fixed
    addresses or MAC address."""
    out = {k: v for k, v in body.items() if k not in ("ExposedPorts", "MacAddress")}
    out["Cmd"] = list(command)
    out["Labels"] = dict(labels)
    out["Healthcheck"] = {"Test": ["NONE"]}
    out.update(OpenStdin=False, AttachStdin=False, StdinOnce=False)
    host_config = dict(out.get("HostConfig") or {})
    host_config.update(
        PortBindings={},
        PublishAllPorts=False,
        RestartPolicy={"Name": "no", "MaximumRetryCount": 0},
        AutoRemove=False,
    )
    out["HostConfig"] = host_config

    def endpoint(config: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in config.items() if k not in ("Aliases", "IPAMConfig", "MacAddress")}

    endpoints = (out.get("NetworkingConfig") or {}).get("EndpointsConfig")
    if endpoints:
        out["NetworkingConfig"] = {
            "EndpointsConfig": {n: endpoint(e) for n, e in endpoints.items()}
        }
    return out, {net: endpoint(e) for net, e in extra_networks.items()}


def _explain(exc: Exception) -> str:
    if isinstance(exc, docker.errors.APIError):
        return str(exc.explanation or exc)
    return str(exc)
