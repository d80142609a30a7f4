"""Shared pieces of the monitor benchmarks: child processes, CPU and memory readings, responders.

Not a benchmark itself. Every child process is started in its own session (process group) and
stopped with :meth:`Child.stop` (SIGTERM to the group, then SIGKILL); use :class:`Children` as a
context manager so they are stopped even when the benchmark fails. Everything listens on
127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
LOCALHOST = "127.0.0.1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
KAMAILIO_CFG = "/etc/kamailio/kamailio.cfg"


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` (all its threads), from ``/proc/<pid>/stat``."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14, 15)


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size (``VmRSS``) of ``pid``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, deadline_s: float = 15.0) -> None:
    """Wait until a TCP listener accepts on 127.0.0.1:``port``."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            with socket.create_connection((LOCALHOST, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {LOCALHOST}:{port}") from None
            time.sleep(0.05)


class Child:
    """A child process in its own process group."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self._log: IO[bytes] | None = log.open("ab") if log else None
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log if self._log else None,
            start_new_session=True,
            cwd=ROOT,
            env=dict(env) if env is not None else None,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read_json(self, timeout_s: float) -> dict[str, Any]:
        """The next stdout line, parsed as JSON (the child's report)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        os.set_blocking(self.proc.stdout.fileno(), False)
        buffer = b""
        while b"\n" not in buffer:
            chunk = self.proc.stdout.read()
            if chunk:
                buffer += chunk
                continue
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {buffer!r}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not report within {timeout_s}s")
            time.sleep(0.05)
        line, _, _ = buffer.partition(b"\n")
        return dict(json.loads(line))

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGCONT)  # a frozen (SIGSTOPped) child must be able to exit
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(timeout=timeout_s)
        self.signal(signal.SIGKILL)  # forked workers (kamailio) that outlived the leader
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if self._log is not None:
            self._log.close()


class Children:
    """Starts children and stops all of them on exit, whatever happened."""

    def __init__(self) -> None:
        self._children: list[Child] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="cpdops-bench-"))

    def __enter__(self) -> Children:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def start(
        self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> Child:
        """Start ``argv``; its stderr goes to ``<tmp>/<name>.log``, its stdout is a pipe for
        :meth:`Child.read_json` (a child that prints much more than a report must log to stderr,
        or it blocks once the pipe is full). ``env`` replaces the environment when given."""
        child = Child(name, argv, log=self.tmp / f"{name}.log", env=env)
        self._children.append(child)
        return child

    def stop(self, child: Child) -> None:
        child.stop()
        if child in self._children:
            self._children.remove(child)

    def stop_all(self) -> None:
        while self._children:
            self._children.pop().stop()

    def log_tail(self, name: str, chars: int = 2000) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def python_argv(script: str, *args: object) -> list[str]:
    return [sys.executable, str(BENCH_DIR / script), *map(str, args)]


def start_responder(children: Children, kind: str, port: int = 0, name: str = "") -> int:
    """Start ``bench/responders.py <kind>`` and return the port it listens on."""
    child = children.start(name or f"responder-{kind}", python_argv("responders.py", kind, port))
    return int(child.read_json(15)["port"])


def kamailio_binary() -> str | None:
    return shutil.which("kamailio") or shutil.which("kamailio", path="/usr/sbin:/sbin")


def start_kamailio(children: Children, port: int, workers: int = 2) -> Child:
    """Kamailio with the stock config on 127.0.0.1:``port`` (UDP and TCP)."""
    binary = kamailio_binary()
    if binary is None:
        raise RuntimeError("kamailio is not installed (apt-get install kamailio)")
    run = children.tmp / "kamailio"
    run.mkdir(exist_ok=True)
    argv = [
        binary, "-f", KAMAILIO_CFG,
        "-l", f"udp:{LOCALHOST}:{port}", "-l", f"tcp:{LOCALHOST}:{port}",
        "-DD", "-E", "-n", str(workers), "-a", "no",
        "-Y", str(run), "-P", str(run / "kamailio.pid"), "-w", str(run),
    ]  # fmt: skip
    child = children.start("kamailio", argv)
    wait_port(port)
    return child


def machine() -> dict[str, str]:
    """What the results were measured on."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    blackbox = shutil.which("prometheus-blackbox-exporter")
    version = "not installed"
    if blackbox:
        out = subprocess.run([blackbox, "--version"], capture_output=True, text=True, check=False)
        version = ((out.stdout or out.stderr).splitlines() or ["?"])[0]
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "mem_total_gib": f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.1f}",
        "python": platform.python_version(),
        "blackbox_exporter": version,
    }


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]
