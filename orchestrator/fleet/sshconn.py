"""Docker Engine over SSH (``ssh://user@host[:port]``), through paramiko.

The Docker SDK's own paramiko transport reads ``~/.ssh/config`` and the user's known_hosts and
takes no key or known_hosts file of its own; this module gives it the fleet file's ``ssh``
settings instead (see ``docs/deploy.md``, "Remote hosts over SSH")::

    identity_file                  private key to log in with (else ~/.ssh/id_* and the agent)
    known_hosts                    the engine host's key must be in this file (else in the
                                   system files: ~/.ssh/known_hosts, /etc/ssh/ssh_known_hosts)
    insecure_accept_new_host_key   trust a host key seen for the first time (logged with its
                                   fingerprint, added to ``known_hosts``); a *changed* key is
                                   still refused

On the remote side the SDK runs ``docker system dial-stdio`` (an ``authorized_keys``
``command=`` can pin that to one socket). Failures become :class:`SshRefused`, a
``requests`` ``ConnectionError`` whose message says what failed (authentication, unknown or
changed host key) and never contains key material.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import socket
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import docker
import paramiko
import requests.exceptions
from docker.transport import SSHHTTPAdapter
from docker.transport.sshconn import SSHConnectionPool

log = logging.getLogger(__name__)

SYSTEM_KNOWN_HOSTS = ("~/.ssh/known_hosts", "/etc/ssh/ssh_known_hosts")
CONNECT_TIMEOUT_S = 15
# Channels (HTTP connections, each a remote `docker system dial-stdio`) open at once on the
# one SSH connection of a host: below sshd's default MaxSessions of 10.
CHANNELS = 8
_POOL_KEY = "ssh"


class SshRefused(requests.exceptions.ConnectionError):
    """The SSH connection to an engine host failed; the message says why (no secrets)."""


@dataclass(frozen=True)
class SshOptions:
    identity_file: str | None = None
    known_hosts: str | None = None
    insecure_accept_new_host_key: bool = False

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> SshOptions:
        data = data or {}
        return cls(
            identity_file=data.get("identity_file") or None,
            known_hosts=data.get("known_hosts") or None,
            insecure_accept_new_host_key=bool(data.get("insecure_accept_new_host_key", False)),
        )


def fingerprint(key: paramiko.PKey) -> str:
    """``SHA256:…`` as ``ssh-keygen -lf`` and ``ssh`` print it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class _UnknownHostKey(paramiko.SSHException):  # type: ignore[misc]
    def __init__(self, hostname: str, key: paramiko.PKey) -> None:
        super().__init__(hostname)
        self.hostname = hostname
        self.key = key


class _RefuseUnknown(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        raise _UnknownHostKey(hostname, key)


class _AcceptNew(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
    """``StrictHostKeyChecking=accept-new``: trust a first-seen key, say so, remember it."""

    def __init__(self, known_hosts: str | None) -> None:
        self._known_hosts = known_hosts

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        where = "for this process only"
        if self._known_hosts:
            try:
                client.save_host_keys(self._known_hosts)
                where = f"added to {self._known_hosts}"
            except OSError as exc:
                where = f"not saved to {self._known_hosts}: {exc.strerror or exc}"
        log.warning(
            "ssh: accepted the NEW host key of %s (%s %s), %s "
            "(ssh.insecure_accept_new_host_key is on)",
            hostname,
            key.get_name(),
            fingerprint(key),
            where,
        )


def _where_known(options: SshOptions) -> str:
    if options.known_hosts:
        return options.known_hosts
    return " or ".join(SYSTEM_KNOWN_HOSTS)


def explain(exc: BaseException, target: str, options: SshOptions) -> str:
    """A one-line reason for an SSH failure to ``target`` (``user@host:port``)."""
    if isinstance(exc, _UnknownHostKey):
        return (
            f"SSH host key of {exc.hostname} is unknown ({exc.key.get_name()} "
            f"{fingerprint(exc.key)}), not in {_where_known(options)}: refused; add it to "
            "known_hosts once you have checked it (ssh-keyscan, then compare the fingerprint)"
        )
    if isinstance(exc, paramiko.BadHostKeyException):
        return (
            f"SSH host key of {target} has CHANGED (got {exc.key.get_name()} "
            f"{fingerprint(exc.key)}, known_hosts has {fingerprint(exc.expected_key)}): "
            "refused (a re-installed host, or someone in the middle)"
        )
    if isinstance(exc, paramiko.PasswordRequiredException):
        return (
            f"SSH identity file {options.identity_file} is encrypted: cpdops needs a key "
            "without a passphrase, or leave identity_file out and use an ssh-agent"
        )
    if isinstance(exc, paramiko.AuthenticationException):
        key = (
            f"the key {options.identity_file}"
            if options.identity_file
            else "every key of ~/.ssh and the ssh-agent"
        )
        return f"SSH authentication failed for {target}: the server refused {key}"
    if isinstance(exc, socket.timeout | TimeoutError):
        return f"SSH connection to {target} timed out"
    if isinstance(exc, OSError):
        return f"SSH connection to {target} failed: {exc.strerror or exc}"
    return f"SSH connection to {target} failed: {type(exc).__name__}: {exc}"


class _Pool(SSHConnectionPool):  # type: ignore[misc]
    """At most ``maxsize`` channels at a time: a request waits (up to the client's timeout)
    for a free one instead of opening one more session than sshd allows (``MaxSessions``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.block = True

    def _get_conn(self, timeout: float | None = None) -> Any:
        return super()._get_conn(timeout if timeout is not None else self.timeout)


class _Adapter(SSHHTTPAdapter):  # type: ignore[misc]
    """The SDK's paramiko adapter with cpdops's key, known_hosts and policy, and

    * one pool of at most ``CHANNELS`` channels (the SDK's keeps a pool, and so an open
      channel and a remote ``dial-stdio``, per request URL: nine of them soon exceed sshd's
      default of 10 sessions per connection, and the next request fails);
    * a new SSH connection when the old one has died (the SDK's would keep failing).
    """

    def __init__(self, base_url: str, options: SshOptions, *, timeout: int) -> None:
        self._options = options
        super().__init__(base_url, timeout=timeout, max_pool_size=CHANNELS)

    def _create_paramiko_client(self, base_url: str) -> None:
        logging.getLogger("paramiko").setLevel(logging.WARNING)  # as the SDK's adapter does
        url = urllib.parse.urlparse(base_url)
        self._target = (
            f"{url.username + '@' if url.username else ''}{url.hostname}:{url.port or 22}"
        )
        client = paramiko.SSHClient()
        opts = self._options
        if opts.known_hosts:
            if os.path.exists(opts.known_hosts):
                client.load_host_keys(opts.known_hosts)
        else:
            for path in SYSTEM_KNOWN_HOSTS:
                path = os.path.expanduser(path)
                if os.path.exists(path):
                    client.load_system_host_keys(path)
        client.set_missing_host_key_policy(
            _AcceptNew(opts.known_hosts) if opts.insecure_accept_new_host_key else _RefuseUnknown()
        )
        self.ssh_client = client
        self.ssh_params = {
            "hostname": url.hostname,
            "port": url.port or 22,
            "username": url.username,
            "key_filename": opts.identity_file,
            "look_for_keys": opts.identity_file is None,
            "allow_agent": opts.identity_file is None,
            "timeout": CONNECT_TIMEOUT_S,
            "banner_timeout": CONNECT_TIMEOUT_S,
            "auth_timeout": CONNECT_TIMEOUT_S,
        }

    def _connect(self) -> None:
        opts = self._options
        if opts.identity_file and not os.access(opts.identity_file, os.R_OK):
            raise SshRefused(f"SSH identity file {opts.identity_file} cannot be read")
        try:
            self.ssh_client.connect(**self.ssh_params)
        except (paramiko.SSHException, OSError) as exc:
            self.ssh_client.close()
            # from None: paramiko's exception (and its traceback's locals) stay out of logs
            raise SshRefused(explain(exc, self._target, opts)) from None

    def get_connection(self, url: Any, proxies: Any = None) -> Any:
        with self.pools.lock:
            transport = self.ssh_client.get_transport()
            if transport is None or not transport.is_active():
                self.pools.clear()  # their channels belong to the dead connection
                self.ssh_client.close()
                self._connect()
            pool = self.pools.get(_POOL_KEY)
            if pool is None:
                pool = self.pools[_POOL_KEY] = _Pool(
                    ssh_client=self.ssh_client, timeout=self.timeout, maxsize=CHANNELS
                )
            return pool


def ssh_client(
    url: str, ssh: Mapping[str, Any] | None, *, timeout: int, version: str
) -> docker.DockerClient:
    """A DockerClient for ``ssh://`` ``url`` that connects with ``ssh`` (fleet file options).

    Raises :class:`SshRefused` when the SSH connection cannot be made."""
    # use_ssh_client: the SDK's adapter that connects lazily, replaced below before any request
    client = docker.DockerClient(
        base_url=url, use_ssh_client=True, timeout=timeout, version=version
    )
    try:
        old = client.api._custom_adapter
        adapter = _Adapter(url, SshOptions.from_mapping(ssh), timeout=timeout)
        old.close()
        client.api._custom_adapter = adapter
        client.api.mount("http+docker://ssh", adapter)
        client.api._version = client.api._retrieve_server_version()
    except BaseException:
        client.close()
        raise
    return client
