"""A stand-in for SmartCPD: a tiny HTTP service that reports its version and can be told to fail.

It runs inside the ``smartcpd-fake`` image with Debian's ``python3`` and the standard library
only (see ``orchestrator/fleet/images.py``, which builds the image)::

    python3 /app/server.py serve      # default CMD: HTTP on $SMARTCPD_PORT (8080)
    python3 /app/server.py migrate    # a "database migration" that can be told to fail

Environment:

    SMARTCPD_VERSION              the version it reports (baked into the image)
    SMARTCPD_TENANT               the tenant it reports (may be empty)
    SMARTCPD_HOST / SMARTCPD_PORT where to listen (default 0.0.0.0:8080)
    SMARTCPD_FAIL                 a failure mode, one of FAIL_MODES:
        health      GET /health answers 500 {"version": V, "status": "failing"}
        crash       print an error and exit 1 at start
        slow-start  sleep $SMARTCPD_SLOW_START_SECONDS (default 20) before listening
        migration   ``migrate`` exits 1
    SMARTCPD_SLOW_START_SECONDS   see slow-start

SIGTERM (and SIGINT) stop the server at once with exit status 0, even during a slow start:
as PID 1 in a container the process would otherwise ignore SIGTERM until Docker kills it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

FAIL_MODES = ("health", "crash", "slow-start", "migration")
DEFAULT_PORT = 8080
DEFAULT_SLOW_START_SECONDS = 20.0
EXIT_FAILED = 1
EXIT_USAGE = 2
USAGE = "usage: server.py [serve|migrate]"


class ConfigError(Exception):
    """The environment does not describe a valid configuration."""


@dataclass(frozen=True)
class Config:
    version: str
    tenant: str
    host: str
    port: int
    fail: str | None
    slow_start_seconds: float


def parse_fail_mode(value: str | None) -> str | None:
    """``SMARTCPD_FAIL`` → a member of FAIL_MODES, or None when unset or blank."""
    if value is None or not value.strip():
        return None
    mode = value.strip().lower()
    if mode not in FAIL_MODES:
        raise ConfigError(
            f"SMARTCPD_FAIL={value!r} is not a known failure mode; "
            f"use one of: {', '.join(FAIL_MODES)} (or leave it empty)"
        )
    return mode


def load_config(environ: Mapping[str, str]) -> Config:
    """Read the configuration from an environment mapping; raises ConfigError."""
    port_text = environ.get("SMARTCPD_PORT", "").strip() or str(DEFAULT_PORT)
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"SMARTCPD_PORT={port_text!r} is not an integer") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"SMARTCPD_PORT={port} is out of range 0-65535")
    slow_text = environ.get("SMARTCPD_SLOW_START_SECONDS", "").strip()
    try:
        slow = float(slow_text) if slow_text else DEFAULT_SLOW_START_SECONDS
    except ValueError:
        raise ConfigError(f"SMARTCPD_SLOW_START_SECONDS={slow_text!r} is not a number") from None
    if slow < 0:
        raise ConfigError(f"SMARTCPD_SLOW_START_SECONDS={slow} is negative")
    return Config(
        version=environ.get("SMARTCPD_VERSION", "").strip() or "unknown",
        tenant=environ.get("SMARTCPD_TENANT", "").strip(),
        host=environ.get("SMARTCPD_HOST", "").strip() or "0.0.0.0",
        port=port,
        fail=parse_fail_mode(environ.get("SMARTCPD_FAIL")),
        slow_start_seconds=slow,
    )


def route(config: Config, path: str) -> tuple[int, dict[str, Any]]:
    """The answer (status, JSON body) to ``GET path``."""
    path = path.split("?", 1)[0]
    if path == "/health":
        if config.fail == "health":
            return 500, {"version": config.version, "status": "failing"}
        return 200, {"version": config.version, "tenant": config.tenant, "status": "ok"}
    if path == "/":
        return 200, {
            "service": "smartcpd-fake",
            "version": config.version,
            "tenant": config.tenant,
            "endpoints": ["/health"],
        }
    return 404, {"error": "not found", "path": path}


def _log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime())} {message}", flush=True)


class Handler(BaseHTTPRequestHandler):
    server_version = "smartcpd-fake"
    config: Config  # set on a subclass by make_server

    def do_GET(self) -> None:
        status, body = route(self.config, self.path)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        _log(f"{self.address_string()} {format % args}")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False


def make_server(config: Config) -> Server:
    """A bound (not yet serving) HTTP server for this configuration."""
    handler = type("ConfiguredHandler", (Handler,), {"config": config})
    return Server((config.host, config.port), handler)


class Terminated(BaseException):
    """Raised in the main thread by the SIGTERM/SIGINT handler."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)


def serve(config: Config) -> int:
    if config.fail == "crash":
        print(
            f"smartcpd-fake {config.version}: crashing at start (SMARTCPD_FAIL=crash)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    try:
        if config.fail == "slow-start":
            _log(f"slow start: sleeping {config.slow_start_seconds:g}s before listening")
            time.sleep(config.slow_start_seconds)
        server = make_server(config)
        try:
            _log(
                f"smartcpd-fake {config.version} listening on {config.host}:{server.server_port}"
                f" fail={config.fail}"
            )
            server.serve_forever(poll_interval=0.2)
        finally:
            server.server_close()
    except Terminated as exc:
        _log(f"signal {exc.args[0]}: shutting down")
    return 0


def migrate(config: Config) -> int:
    if config.fail == "migration":
        print(f"migration to {config.version} failed (SMARTCPD_FAIL=migration)", file=sys.stderr)
        return EXIT_FAILED
    print(f"migrated to {config.version}", flush=True)
    return 0


def main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    command = argv[0] if argv else "serve"
    if command not in ("serve", "migrate") or len(argv) > 1:
        print(USAGE, file=sys.stderr)
        return EXIT_USAGE
    try:
        config = load_config(environ)
    except ConfigError as exc:
        print(f"smartcpd-fake: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if command == "migrate":
        return migrate(config)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    return serve(config)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], os.environ))
