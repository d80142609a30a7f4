"""A real OpenSSH server in front of one test daemon's socket, all made by the test.

``make_keys(dir)`` makes, with ``ssh-keygen``: the server's host key, a *second* host key (the
"changed" key a man in the middle would show), cpdops's client key and a rogue client key that
is not authorized. ``ssh_server(keys, socket)`` starts ``/usr/sbin/sshd -D`` on 127.0.0.1 on a
free port with its own ``sshd_config`` (host key, pid file and ``AuthorizedKeysFile`` in the
test's directory; public keys only, no PAM) and one authorized key, restricted to the Docker
socket::

    restrict,command="docker -H unix://<socket> system dial-stdio" ssh-ed25519 AAAA… cpdops

(``restrict``: no pty, no forwarding; whatever the client asks to run, sshd runs this — the
Docker SDK asks for ``docker system dial-stdio``.) ``StrictModes no``: the test directory is
under the world-writable /tmp, which sshd would refuse for an authorized_keys file. The server is
stopped (SIGTERM, then SIGKILL) at the end, also when the test fails; its log goes to
``test-artifacts/sshd/``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.integration.dockerd import DockerdError, _terminate, artifacts_dir, log_tail
from tests.integration.fleet import free_port

SSHD = "/usr/sbin/sshd"


def sshd_unavailable_reason() -> str | None:
    for tool in (SSHD, "ssh-keygen", "docker"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: openssh-server, openssh-client, docker.io)"
    return None


@dataclass(frozen=True)
class Keys:
    host_key: Path  # the server's, private
    other_host_key: Path  # another host key for the same address: a "changed" key
    client_key: Path  # cpdops's, authorized
    rogue_key: Path  # not authorized

    def public(self, key: Path) -> str:
        return Path(f"{key}.pub").read_text().strip()


def _keygen(path: Path, comment: str) -> None:
    result = subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise DockerdError(f"ssh-keygen {path.name} failed: {result.stderr.strip()}")


def make_keys(d: Path) -> Keys:
    d.mkdir(parents=True, exist_ok=True)
    keys = Keys(d / "host_ed25519", d / "other_host_ed25519", d / "id_cpdops", d / "id_rogue")
    for path in (keys.host_key, keys.other_host_key, keys.client_key, keys.rogue_key):
        _keygen(path, path.name)
    return keys


@dataclass(frozen=True)
class SshServer:
    port: int
    user: str
    log: Path

    @property
    def url(self) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}"

    def known_hosts_line(self, host_pub: str) -> str:
        """A known_hosts line for this server (``[127.0.0.1]:port``) with ``host_pub``."""
        kind, blob = host_pub.split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {blob}\n"


def _banner(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            return s.recv(64).startswith(b"SSH-2.0-")
    except OSError:
        return False


@contextlib.contextmanager
def ssh_server(keys: Keys, docker_socket: Path, work: Path) -> Iterator[SshServer]:
    work.mkdir(parents=True, exist_ok=True)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    docker_cli = shutil.which("docker") or "docker"
    command = f"{docker_cli} -H unix://{docker_socket} system dial-stdio"
    authorized = work / "authorized_keys"
    authorized.write_text(f'restrict,command="{command}" {keys.public(keys.client_key)}\n')
    authorized.chmod(0o600)
    port = free_port()
    config = work / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {keys.host_key}",
                f"PidFile {work / 'sshd.pid'}",
                f"AuthorizedKeysFile {authorized}",
                "AuthenticationMethods publickey",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "AllowUsers root",
                "UsePAM no",
                "StrictModes no",
                "LogLevel VERBOSE",
                "",
            ]
        )
    )
    log_path = artifacts_dir() / "sshd" / f"sshd-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    check = subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True, text=True)
    if check.returncode != 0:
        raise DockerdError(f"sshd -t refused the test config: {check.stderr.strip()}")
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")},
        )
        try:
            deadline = time.monotonic() + 30
            while not _banner(port):
                if process.poll() is not None:
                    raise DockerdError(f"sshd exited:\n{log_tail(log_path)}")
                if time.monotonic() > deadline:
                    raise DockerdError(f"sshd not ready on port {port}:\n{log_tail(log_path)}")
                time.sleep(0.1)
            yield SshServer(port, "root", log_path)
        finally:
            sessions = _descendants(process.pid)  # a session's sshd is in a session of its own
            _terminate(process.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
            for pid in sessions:
                _terminate(pid)


def _descendants(root: int) -> list[int]:
    """The processes under ``root`` (children first found, then theirs), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        found += children
        todo += children
    return found
