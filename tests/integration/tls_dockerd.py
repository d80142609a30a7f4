"""A Docker daemon reached over TCP + TLS with client certificates, all made by the test.

``make_pki(dir)`` makes, with ``openssl``: a CA, a server certificate for 127.0.0.1 (SAN
``IP:127.0.0.1``), a client certificate signed by that CA, and a *rogue* client certificate
signed by another CA (the daemon must refuse it). ``tls_daemon(pki)`` starts one more dockerd
with ``--tlsverify --tlscacert --tlscert --tlskey -H tcp://127.0.0.1:<port>`` and its own
paths and bridge, distinct from dockerd.py's ``d1..d3``::

    run dir    /run/cpdops-test-tls/t1   (exec root, pidfile, daemon.json)
    data root  /var/lib/cpdops-test/t1   kept between runs as an image cache
    bridge     cpdttls1, 10.213.91.1/24

It is stopped (SIGTERM, then SIGKILL), its leftovers killed and its bridge deleted at the end,
also when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker

from orchestrator.errors import DockerError
from orchestrator.fleet.runtime import DockerHost
from tests.integration.dockerd import (
    DATA_ROOT,
    DockerdError,
    _pids_matching,
    _run_ip,
    _terminate,
    artifacts_dir,
    delete_bridge,
    dockerd_major_version,
    log_tail,
    remove_containers,
    unmount_self_bind,
)
from tests.integration.fleet import free_port

RUN_DIR = Path("/run/cpdops-test-tls/t1")
DATA_DIR = DATA_ROOT / "t1"
BRIDGE = "cpdttls1"
BRIDGE_ADDRESS = "10.213.91.1/24"
NAME = "t1"


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path  # signed by another CA
    rogue_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise DockerdError(f"openssl {' '.join(args[:2])} failed: {result.stderr.strip()}")


def _issue(d: Path, name: str, ca: str, subject: str, ext: str) -> None:
    _openssl("genrsa", "-out", f"{name}-key.pem", "2048", cwd=d)
    _openssl(
        "req", "-new", "-key", f"{name}-key.pem", "-subj", subject, "-out", f"{name}.csr", cwd=d
    )
    (d / f"{name}.ext").write_text(ext)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}-key.pem",
        "-CAcreateserial", "-days", "2", "-sha256", "-extfile", f"{name}.ext",
        "-out", f"{name}-cert.pem", cwd=d,
    )  # fmt: skip


def make_pki(d: Path) -> Pki:
    d.mkdir(parents=True, exist_ok=True)
    for ca in ("ca", "rogue-ca"):
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}-key.pem",
            "-out", f"{ca}.pem", "-days", "2", "-subj", f"/CN=cpdops test {ca}", cwd=d,
        )  # fmt: skip
    _issue(
        d,
        "server",
        "ca",
        "/CN=127.0.0.1",
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    _issue(d, "client", "ca", "/CN=cpdops", "extendedKeyUsage=clientAuth\n")
    _issue(d, "rogue", "rogue-ca", "/CN=intruder", "extendedKeyUsage=clientAuth\n")
    for key in d.glob("*-key.pem"):
        key.chmod(0o600)
    return Pki(
        ca=d / "ca.pem",
        server_cert=d / "server-cert.pem",
        server_key=d / "server-key.pem",
        client_cert=d / "client-cert.pem",
        client_key=d / "client-key.pem",
        rogue_cert=d / "rogue-cert.pem",
        rogue_key=d / "rogue-key.pem",
    )


@dataclass(frozen=True)
class TlsDaemon:
    name: str
    url: str  # tcp://127.0.0.1:<port>
    client: docker.DockerClient  # with the valid client certificate


def _kill_leftovers() -> None:
    exec_root = str(RUN_DIR / "exec")
    for pid in _pids_matching(
        lambda argv: bool(argv) and any(exec_root in a for a in argv)
    ):  # this daemon's dockerd and its containerd (both name the exec root)
        _terminate(pid)


@contextlib.contextmanager
def tls_daemon(pki: Pki) -> Iterator[TlsDaemon]:
    _kill_leftovers()
    for directory in (RUN_DIR, RUN_DIR / "exec", DATA_DIR):
        directory.mkdir(parents=True, exist_ok=True)
    config: dict[str, str] = {}
    if dockerd_major_version() < 23:  # see dockerd.py: its own engine ID
        config["deprecated-key-path"] = str(DATA_DIR / "key.json")
    (RUN_DIR / "daemon.json").write_text(json.dumps(config))
    delete_bridge(BRIDGE)
    _run_ip("link", "add", BRIDGE, "type", "bridge")
    _run_ip("addr", "add", BRIDGE_ADDRESS, "dev", BRIDGE)
    _run_ip("link", "set", BRIDGE, "up")
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    log_path = artifacts_dir() / "dockerd" / f"{NAME}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        "dockerd",
        "--tlsverify",
        f"--tlscacert={pki.ca}",
        f"--tlscert={pki.server_cert}",
        f"--tlskey={pki.server_key}",
        f"-H={url}",
        f"--data-root={DATA_DIR}",
        f"--exec-root={RUN_DIR / 'exec'}",
        f"--pidfile={RUN_DIR / 'docker.pid'}",
        f"--config-file={RUN_DIR / 'daemon.json'}",
        f"--bridge={BRIDGE}",
        "--iptables=false",
        "--ip6tables=false",
        "--ip-masq=false",
        "--ip-forward=false",
        f"--containerd-namespace=cpdops-test-{NAME}",
        f"--containerd-plugins-namespace=cpdops-test-{NAME}-plugins",
    ]
    client: docker.DockerClient | None = None
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            tls = {"ca": str(pki.ca), "cert": str(pki.client_cert), "key": str(pki.client_key)}
            deadline = time.monotonic() + 60
            last = ""
            while client is None:
                if process.poll() is not None:
                    raise DockerdError(f"TLS dockerd exited:\n{log_tail(log_path)}")
                if time.monotonic() > deadline:
                    raise DockerdError(f"TLS dockerd not ready ({last}):\n{log_tail(log_path)}")
                host = DockerHost(NAME, url, tls=tls, timeout=120)
                try:
                    host.ping()
                    client = host.client
                except DockerError as exc:
                    host.close()
                    last = str(exc)
                    time.sleep(0.2)
            remove_containers(client)  # leftovers of a crashed run
            yield TlsDaemon(NAME, url, client)
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    remove_containers(client)
                client.close()
            _terminate(process.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
            _kill_leftovers()
            unmount_self_bind(DATA_DIR)
            delete_bridge(BRIDGE)
