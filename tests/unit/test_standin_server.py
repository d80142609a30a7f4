"""The stand-in server (orchestrator/demo/standin/server.py) without Docker."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

import orchestrator.demo
from orchestrator.fleet import images

SERVER_PATH = Path(orchestrator.demo.__file__).parent / "standin" / "server.py"


def _load_server() -> ModuleType:
    spec = importlib.util.spec_from_file_location("smartcpd_standin_server", SERVER_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


server = _load_server()


def _config(**overrides: str) -> Any:
    return server.load_config({"SMARTCPD_VERSION": "7", **overrides})


def test_server_is_what_the_image_ships() -> None:
    assert images.standin_server_source() == SERVER_PATH.read_bytes()
    compile(SERVER_PATH.read_bytes(), str(SERVER_PATH), "exec")


def test_fail_modes_agree_with_the_image_builder() -> None:
    assert tuple(server.FAIL_MODES) == images.FAIL_MODES


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("  ", None),
        ("health", "health"),
        ("crash", "crash"),
        ("slow-start", "slow-start"),
        ("migration", "migration"),
        (" Health ", "health"),
    ],
)
def test_parse_fail_mode(value: str | None, expected: str | None) -> None:
    assert server.parse_fail_mode(value) == expected


@pytest.mark.parametrize("value", ["bogus", "slow_start", "healthy"])
def test_parse_fail_mode_rejects_unknown_modes_and_lists_the_known(value: str) -> None:
    with pytest.raises(server.ConfigError, match="health, crash, slow-start, migration"):
        server.parse_fail_mode(value)


def test_load_config_defaults() -> None:
    config = server.load_config({})

    assert (config.version, config.tenant, config.host, config.port) == (
        "unknown",
        "",
        "0.0.0.0",
        8080,
    )
    assert config.fail is None
    assert config.slow_start_seconds == 20


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SMARTCPD_PORT": "http"}, "not an integer"),
        ({"SMARTCPD_PORT": "70000"}, "out of range"),
        ({"SMARTCPD_SLOW_START_SECONDS": "soon"}, "not a number"),
        ({"SMARTCPD_SLOW_START_SECONDS": "-1"}, "negative"),
        ({"SMARTCPD_FAIL": "everything"}, "not a known failure mode"),
    ],
)
def test_load_config_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(server.ConfigError, match=message):
        server.load_config(env)


@pytest.mark.parametrize(
    ("env", "path", "status", "body"),
    [
        (
            {"SMARTCPD_TENANT": "acme"},
            "/health",
            200,
            {"version": "7", "tenant": "acme", "status": "ok"},
        ),
        ({}, "/health?probe=1", 200, {"version": "7", "tenant": "", "status": "ok"}),
        ({"SMARTCPD_FAIL": "health"}, "/health", 500, {"version": "7", "status": "failing"}),
        ({}, "/nope", 404, {"error": "not found", "path": "/nope"}),
    ],
)
def test_route(env: dict[str, str], path: str, status: int, body: dict[str, str]) -> None:
    assert server.route(_config(**env), path) == (status, body)


def test_route_root_is_info() -> None:
    status, body = server.route(_config(SMARTCPD_TENANT="acme"), "/")

    assert status == 200
    assert body["version"] == "7"
    assert body["tenant"] == "acme"


@pytest.fixture
def in_process_server() -> Iterator[str]:
    httpd = server.make_server(_config(SMARTCPD_HOST="127.0.0.1", SMARTCPD_PORT="0"))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_http_server_answers_and_logs_each_request(
    in_process_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    health = httpx.get(in_process_server + "/health", trust_env=False)
    missing = httpx.get(in_process_server + "/missing", trust_env=False)

    assert health.status_code == 200
    assert health.headers["content-type"] == "application/json"
    assert health.json()["version"] == "7"
    assert missing.status_code == 404
    logged = capsys.readouterr().out
    assert '"GET /health HTTP/1.1" 200' in logged
    assert '"GET /missing HTTP/1.1" 404' in logged


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SERVER_PATH), *args],
        env={"PATH": os.environ.get("PATH", ""), "SMARTCPD_VERSION": "3", **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "env", "code", "out", "err"),
    [
        (("migrate",), {}, 0, "migrated to 3", ""),
        (("migrate",), {"SMARTCPD_FAIL": "migration"}, 1, "", "migration to 3 failed"),
        (("serve",), {"SMARTCPD_FAIL": "crash"}, 1, "", "crashing at start"),
        ((), {"SMARTCPD_FAIL": "nonsense"}, 2, "", "not a known failure mode"),
        (("migrate",), {"SMARTCPD_FAIL": "nonsense"}, 2, "", "not a known failure mode"),
        (("upgrade",), {}, 2, "", "usage:"),
    ],
)
def test_commands_and_exit_codes(
    args: tuple[str, ...], env: dict[str, str], code: int, out: str, err: str
) -> None:
    result = _run(*args, **env)

    assert result.returncode == code
    assert out in result.stdout
    assert err in result.stderr


def _start_serving(**env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(SERVER_PATH), "serve"],
        env={
            "PATH": os.environ.get("PATH", ""),
            "SMARTCPD_VERSION": "5",
            "SMARTCPD_HOST": "127.0.0.1",
            "SMARTCPD_PORT": "0",
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop(process: subprocess.Popen[str]) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    try:
        out, _err = process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return process.returncode, out


def test_sigterm_stops_a_serving_process_with_status_0() -> None:
    process = _start_serving()
    assert process.stdout is not None
    first_line = process.stdout.readline()  # "... listening on 127.0.0.1:PORT fail=None"
    port = int(first_line.split("listening on 127.0.0.1:")[1].split()[0])

    response = httpx.get(f"http://127.0.0.1:{port}/health", trust_env=False)
    code, out = _stop(process)

    assert response.json() == {"version": "5", "tenant": "", "status": "ok"}
    assert code == 0
    assert "signal 15: shutting down" in out


def test_sigterm_during_slow_start_exits_0() -> None:
    process = _start_serving(SMARTCPD_FAIL="slow-start", SMARTCPD_SLOW_START_SECONDS="60")
    assert process.stdout is not None
    assert "slow start: sleeping 60s" in process.stdout.readline()

    code, out = _stop(process)

    assert code == 0
    assert "listening" not in out


def test_info_body_is_json_serialisable() -> None:
    _status, body = server.route(_config(), "/")
    assert json.loads(json.dumps(body)) == body
