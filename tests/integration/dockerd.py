"""Several Docker daemons on one machine, each standing for a separate host in integration tests.

Daemon ``d<N>`` (N = 1..DAEMON_COUNT) has its own socket, data root, exec root, pidfile, log and
bridge::

    socket     unix:///run/cpdops-test/d<N>/docker.sock
    data root  /var/lib/cpdops-test/d<N>     kept between runs as an image cache
    exec root  /run/cpdops-test/d<N>/exec    (its own managed containerd lives under it)
    bridge     cpdtbr<N>, 10.213.<N>.1/24    containers get 10.213.<N>.x
    log        test-artifacts/dockerd/d<N>.log  (or $CPDOPS_TEST_ARTIFACTS/dockerd/)

Several daemons on one machine must not share global state, so each runs with
``--iptables=false --ip6tables=false --ip-masq=false --ip-forward=false`` (two daemons would
flush each other's DOCKER/DOCKER-ISOLATION chains), its own containerd namespaces and its own
``--config-file`` (a host ``/etc/docker/daemon.json`` would otherwise be read by all of them;
ours sets ``deprecated-key-path`` in the data root, because dockerd 20.10 derives the engine ID that
``docker info`` reports from /etc/docker/key.json, so all daemons would share one ID).

No ``--default-address-pool``: with one set, dockerd deletes the host's ``docker0`` at start
(``removeDefaultBridgeInterface``), breaking the machine's own engine. Tests that create
user-defined networks on several daemons must therefore give them explicit, disjoint subnets.

Published ports still work without iptables: ``docker-proxy`` listens on the host address and
forwards to the container over the bridge. The daemons share the ephemeral port range, so two
may pick the same host port; Docker then retries with the next one (a warning in the log), which
is harmless.

Containers are always removed (at start, for leftovers of a crashed run, and at stop); the data
roots are kept so images survive from one run to the next. A lock file keeps two test sessions
from using (and killing) the same daemons.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import docker
import docker.errors
import requests.exceptions

RUN_ROOT = Path("/run/cpdops-test")
DATA_ROOT = Path("/var/lib/cpdops-test")
DAEMON_COUNT = 3
PING_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
CLIENT_TIMEOUT_S = 120
TEST_LABEL = "cpdops.test"
TEST_LABELS: Mapping[str, str] = {TEST_LABEL: "1"}
_DOCKER_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)


class DockerdError(RuntimeError):
    """A test daemon could not be started or prepared."""


@dataclass(frozen=True)
class DockerdHandle:
    """One test daemon, i.e. one "host": ``name`` is ``d<N>``, ``url`` its ``unix://`` socket."""

    name: str
    url: str
    client: docker.DockerClient


def docker_unavailable_reason() -> str | None:
    """Why the test daemons cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "the Docker integration tests start their own dockerd and need root"
    for tool in ("dockerd", "ip"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (apt-get install docker.io iproute2)"
    return None


def dockerd_major_version() -> int:
    """The major version of the installed dockerd (20 for Debian 12's docker.io 20.10)."""
    result = subprocess.run(["dockerd", "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"version (\d+)\.", result.stdout)
    return int(match.group(1)) if match else 0


def artifacts_dir() -> Path:
    default = Path(__file__).resolve().parents[2] / "test-artifacts"
    return Path(os.environ.get("CPDOPS_TEST_ARTIFACTS") or default)


@dataclass(frozen=True)
class DaemonLayout:
    """Where daemon ``d<index>`` keeps everything, and how it is started."""

    index: int

    @property
    def name(self) -> str:
        return f"d{self.index}"

    @property
    def bridge(self) -> str:
        return f"cpdtbr{self.index}"

    @property
    def bridge_address(self) -> str:
        return f"10.213.{self.index}.1/24"

    @property
    def run_dir(self) -> Path:
        return RUN_ROOT / self.name

    @property
    def socket(self) -> Path:
        return self.run_dir / "docker.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def exec_root(self) -> Path:
        return self.run_dir / "exec"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "docker.pid"

    @property
    def config_file(self) -> Path:
        return self.run_dir / "daemon.json"

    @property
    def data_root(self) -> Path:
        return DATA_ROOT / self.name

    @property
    def key_path(self) -> Path:
        return self.data_root / "key.json"

    def config(self, engine_major: int) -> dict[str, Any]:
        """daemon.json: empty, except that dockerd < 23 takes its engine ID from a key file that
        defaults to /etc/docker/key.json, i.e. all daemons would report the same ID."""
        if engine_major < 23:
            return {"deprecated-key-path": str(self.key_path)}
        return {}

    @property
    def log_path(self) -> Path:
        return artifacts_dir() / "dockerd" / f"{self.name}.log"

    def argv(self) -> list[str]:
        return [
            "dockerd",
            f"--host={self.url}",
            f"--data-root={self.data_root}",
            f"--exec-root={self.exec_root}",
            f"--pidfile={self.pidfile}",
            f"--config-file={self.config_file}",
            f"--bridge={self.bridge}",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-masq=false",
            "--ip-forward=false",
            f"--containerd-namespace=cpdops-test-{self.name}",
            f"--containerd-plugins-namespace=cpdops-test-{self.name}-plugins",
        ]


# --- processes and bridges ----------------------------------------------------------------------


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still "exists"; treat it as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _thread_states(pid: int) -> list[str]:
    """The scheduler state letter of every thread of ``pid`` (``T``: stopped by a signal)."""
    states = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            states.append((task / "stat").read_text().rsplit(")", 1)[-1].split()[0])
        except (OSError, IndexError):
            continue  # a thread that just ended
    return states


def _wait_stopped(pid: int, *, stopped: bool, timeout_s: float = 30.0) -> None:
    """Wait until every thread of ``pid`` is stopped (SIGSTOP delivered), or none is."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = _thread_states(pid)
        if states and all((st == "T") == stopped for st in states):
            return
        if time.monotonic() > deadline:
            raise DockerdError(
                f"dockerd pid {pid}: threads not {'stopped' if stopped else 'running'}: {states}"
            )
        time.sleep(0.02)


def _answers_ping(path: Path, timeout_s: float = 10.0) -> bool:
    """Whether the daemon on unix socket ``path`` answers ``GET /_ping`` with 200."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(str(path))
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = sock.recv(64)
        except OSError:
            return False
    return reply.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200"))


def _terminate(pid: int, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, then SIGKILL if ``pid`` has not gone after ``timeout_s``."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


def _pids_matching(predicate: Any) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and predicate(_cmdline(int(entry.name))):
            pids.append(int(entry.name))
    return pids


def kill_leftovers(layout: DaemonLayout) -> None:
    """Stop what a crashed earlier run left behind for this daemon (identified by its paths)."""
    socket_arg = f"--host={layout.url}"
    pid = _read_pid(layout.pidfile)
    if pid is not None and socket_arg in _cmdline(pid):
        _terminate(pid)
    # A dockerd killed with SIGKILL can leave its containerd and docker-proxy processes behind.
    exec_root = str(layout.exec_root)
    for pid in _pids_matching(
        lambda argv: (
            bool(argv)
            and (
                socket_arg in argv
                or (Path(argv[0]).name == "containerd" and any(exec_root in a for a in argv))
                or (
                    Path(argv[0]).name == "docker-proxy"
                    and any(a.startswith(f"10.213.{layout.index}.") for a in argv)
                )
            )
        )
    ):
        _terminate(pid)


def _run_ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise DockerdError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")
    return result


def delete_bridge(name: str) -> None:
    if Path(f"/sys/class/net/{name}").exists():
        _run_ip("link", "del", name, check=False)


def create_bridge(layout: DaemonLayout) -> None:
    delete_bridge(layout.bridge)
    _run_ip("link", "add", layout.bridge, "type", "bridge")
    _run_ip("addr", "add", layout.bridge_address, "dev", layout.bridge)
    _run_ip("link", "set", layout.bridge, "up")


def unmount_self_bind(path: Path) -> None:
    """Undo the bind mount of the data root onto itself that dockerd makes (to set mount
    propagation) and removes only on a clean shutdown; other mounts there are left alone."""
    target = str(path)
    with open("/proc/self/mountinfo") as mountinfo:
        fields = [line.split() for line in mountinfo]
    if any(f[3] == target and f[4] == target for f in fields):
        subprocess.run(["umount", target], capture_output=True, check=False)


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


# --- containers -----------------------------------------------------------------------------------


def remove_containers(client: docker.DockerClient, labels: Mapping[str, str] | None = None) -> int:
    """Force-remove containers (all, or those carrying all ``labels``) with their volumes."""
    filters: dict[str, Any] = {}
    if labels:
        filters["label"] = [f"{key}={value}" for key, value in labels.items()]
    removed = 0
    for container in client.containers.list(all=True, filters=filters):
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True, v=True)
            removed += 1
    return removed


def remove_test_containers(client: docker.DockerClient) -> int:
    """Remove every container labelled ``cpdops.test=1``; how many there were."""
    return remove_containers(client, TEST_LABELS)


def run_test_container(
    client: docker.DockerClient,
    image: str,
    command: str | Sequence[str] | None = None,
    *,
    labels: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> Any:
    """``client.containers.run(..., detach=True)`` with the ``cpdops.test=1`` label added."""
    return client.containers.run(
        image, command, detach=True, labels={**TEST_LABELS, **(labels or {})}, **kwargs
    )


def published_port(container: Any, port: str = "8080/tcp") -> int:
    """The host port that ``port`` of a running container is published on."""
    container.reload()
    bindings = (container.attrs["NetworkSettings"]["Ports"] or {}).get(port)
    if not bindings:
        raise DockerdError(f"container {container.name} does not publish {port}")
    return int(bindings[0]["HostPort"])


# --- the set of daemons ---------------------------------------------------------------------------


@dataclass
class _Running:
    layout: DaemonLayout
    process: subprocess.Popen[bytes]
    log: IO[bytes]
    client: docker.DockerClient | None = None


class DockerdFleet:
    """Starts and stops ``count`` daemons; ``stop`` is idempotent and also registered atexit."""

    def __init__(self, count: int = DAEMON_COUNT) -> None:
        self.layouts = [DaemonLayout(index) for index in range(1, count + 1)]
        self._running: list[_Running] = []
        self._lock: IO[str] | None = None
        self._stopped = True

    def start(self) -> list[DockerdHandle]:
        self._take_session_lock()
        self._stopped = False
        atexit.register(self.stop)
        try:
            for layout in self.layouts:
                self._launch(layout)
            handles = [self._wait_ready(running) for running in self._running]
            for handle in handles:  # leftovers of a crashed run live on in the data root
                remove_containers(handle.client)
            return handles
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for running in self._running:
            if running.client is not None:
                with contextlib.suppress(*_DOCKER_ERRORS):
                    remove_containers(running.client)
                running.client.close()
        for running in self._running:
            with contextlib.suppress(ProcessLookupError):
                running.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for running in self._running:
            try:
                running.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                running.process.kill()
                running.process.wait(timeout=10)
            running.log.close()
        for layout in self.layouts:
            kill_leftovers(layout)  # e.g. a containerd that outlived a killed dockerd
            unmount_self_bind(layout.data_root)
            delete_bridge(layout.bridge)
        self._running = []
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None
        atexit.unregister(self.stop)

    def stop_daemon(self, name: str) -> None:
        """Stop one daemon as an administrator would (SIGTERM; its containers stop with it,
        nothing is removed); ``start_daemon`` brings it back. A fault for chaos tests."""
        running = self._find(name)
        with contextlib.suppress(ProcessLookupError):
            running.process.send_signal(signal.SIGTERM)
        try:
            running.process.wait(timeout=STOP_TIMEOUT_S * 3)
        except subprocess.TimeoutExpired:
            running.process.kill()
            running.process.wait(timeout=10)
        running.log.close()
        kill_leftovers(running.layout)
        if running.client is not None:
            running.client.close()  # its pooled sockets are dead; the next call opens new ones

    def kill_daemon(self, name: str) -> None:
        """Crash one daemon (SIGKILL): unlike ``stop_daemon`` nothing is cleaned up, so what
        a crashed dockerd leaves behind (its docker-proxy processes holding published ports,
        its containerd) stays, as on a real host; ``start_daemon`` brings it back."""
        running = self._find(name)
        with contextlib.suppress(ProcessLookupError):
            running.process.kill()
        running.process.wait(timeout=30)
        running.log.close()
        if running.client is not None:
            running.client.close()

    def start_daemon(self, name: str) -> DockerdHandle:
        """Start a daemon stopped by ``stop_daemon`` again on the same socket and data root
        (containers with a restart policy start again); its log is appended to."""
        old = self._find(name)
        layout = old.layout
        layout.socket.unlink(missing_ok=True)
        log = layout.log_path.open("ab")
        try:
            process = subprocess.Popen(
                layout.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            log.close()
            raise DockerdError(f"cannot start dockerd {layout.name}: {exc}") from exc
        running = _Running(layout, process, log)
        self._running[self._running.index(old)] = running
        fresh = self._wait_ready(running)
        if old.client is None:
            return fresh
        fresh.client.close()  # the tests' handles keep the client they were given
        running.client = old.client
        return DockerdHandle(name=fresh.name, url=fresh.url, client=old.client)

    @contextlib.contextmanager
    def daemon_down(self, name: str) -> Iterator[None]:
        """``name`` stopped for the block, and always started again after it."""
        self.stop_daemon(name)
        try:
            yield
        finally:
            if self._find(name).process.poll() is not None:
                self.start_daemon(name)

    @contextlib.contextmanager
    def daemon_paused(self, name: str) -> Iterator[None]:
        """``name`` frozen (SIGSTOP) for the block — it accepts connections but answers
        nothing, its containers keep running — and always thawed (SIGCONT) after it."""
        running = self._find(name)
        running.process.send_signal(signal.SIGSTOP)
        try:
            # kill() returns before the signal has stopped every thread: on a busy machine a
            # thread still running may answer one more request (issue #12)
            _wait_stopped(running.process.pid, stopped=True)
            yield
        finally:
            running.process.send_signal(signal.SIGCONT)
            _wait_stopped(running.process.pid, stopped=False)

    def _find(self, name: str) -> _Running:
        for running in self._running:
            if running.layout.name == name:
                return running
        raise DockerdError(f"no test daemon {name!r} is running in this session")

    def _take_session_lock(self) -> None:
        RUN_ROOT.mkdir(parents=True, exist_ok=True)
        lock = (RUN_ROOT / "session.lock").open("a+")
        # CPDOPS_TEST_LOCK_WAIT_S: how long to wait for another session to finish (default 0)
        deadline = time.monotonic() + float(os.environ.get("CPDOPS_TEST_LOCK_WAIT_S") or 0)
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    try:
                        time.sleep(1.0)
                    except BaseException:  # e.g. pytest-timeout: no unclosed file is left
                        lock.close()
                        raise
                    continue
            lock.close()
            raise DockerdError(
                f"another test session is using the test daemons ({RUN_ROOT / 'session.lock'} "
                "is locked); run one Docker integration session at a time"
            ) from None
        self._lock = lock

    def _launch(self, layout: DaemonLayout) -> None:
        kill_leftovers(layout)
        for directory in (layout.run_dir, layout.exec_root, layout.data_root):
            directory.mkdir(parents=True, exist_ok=True)
        layout.log_path.parent.mkdir(parents=True, exist_ok=True)
        layout.config_file.write_text(json.dumps(layout.config(dockerd_major_version())))
        layout.socket.unlink(missing_ok=True)
        create_bridge(layout)
        log = layout.log_path.open("wb")
        try:
            process = subprocess.Popen(
                layout.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in pytest must not kill it before teardown
            )
        except OSError as exc:
            log.close()
            raise DockerdError(f"cannot start dockerd {layout.name}: {exc}") from exc
        self._running.append(_Running(layout, process, log))

    def _wait_ready(self, running: _Running) -> DockerdHandle:
        layout = running.layout
        deadline = time.monotonic() + PING_TIMEOUT_S
        last_error = ""
        while time.monotonic() < deadline:
            code = running.process.poll()
            if code is not None:
                raise DockerdError(
                    f"dockerd {layout.name} exited with status {code} during start; "
                    f"log {layout.log_path}:\n{log_tail(layout.log_path)}"
                )
            # docker-py's client asks the version in its constructor and, when that fails,
            # leaks the connection's file (a ResourceWarning: warnings are errors): asked only
            # once the daemon answers a ping on a socket of our own
            if layout.socket.exists() and _answers_ping(layout.socket):
                try:
                    client = docker.DockerClient(base_url=layout.url, timeout=CLIENT_TIMEOUT_S)
                except _DOCKER_ERRORS as exc:
                    last_error = str(exc)
                else:
                    try:
                        client.ping()
                    except _DOCKER_ERRORS as exc:
                        last_error = str(exc)
                        client.close()
                    else:
                        running.client = client
                        return DockerdHandle(name=layout.name, url=layout.url, client=client)
            time.sleep(0.2)
        raise DockerdError(
            f"dockerd {layout.name} did not answer ping on {layout.url} within "
            f"{PING_TIMEOUT_S:.0f}s (last error: {last_error or 'no socket'}); "
            f"log {layout.log_path}:\n{log_tail(layout.log_path)}"
        )


@contextlib.contextmanager
def running_daemons(count: int = DAEMON_COUNT) -> Iterator[list[DockerdHandle]]:
    """The daemons for the duration of the block."""
    fleet = DockerdFleet(count)
    handles = fleet.start()
    try:
        yield handles
    finally:
        fleet.stop()
