"""``cpdops token create|ls|revoke`` as a user runs it (subprocess, on the database directly):
the bootstrap of the first admin token, --json, exit codes, and the tokens at a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.settings import Settings
from tests.integration.server import bearer, running_server

CPDOPS = str(Path(sys.executable).parent / "cpdops")


@pytest.fixture
def env(db_url: str) -> dict[str, str]:
    return {**os.environ, "CPDOPS_DATABASE_URL": db_url, "USER": "ivanov"}


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CPDOPS, "token", *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def ok(env: dict[str, str], *args: str) -> Any:
    res = run(env, *args, "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_bootstrap_an_admin_then_manage_tokens(env: dict[str, str], db_url: str) -> None:
    # plain output: the token alone on stdout (for scripts), the note on stderr
    made = run(env, "create", "--role", "admin", "--name", "root")
    assert made.returncode == 0, made.stderr
    root = made.stdout.strip()
    assert root.startswith("cpd_") and "\n" not in root
    assert "shown only now" in made.stderr and root not in made.stderr
    op = ok(env, "create", "--role", "operator", "--name", "ci", "--expires", "2w")
    assert op["role"] == "operator" and op["active"] is True
    expires = datetime.fromisoformat(op["expires_at"])
    assert timedelta(days=13, hours=23) < expires - datetime.now(UTC) <= timedelta(days=14)
    viewer = ok(env, "create", "--role", "viewer")
    assert viewer["name"].startswith("viewer-")

    listed = ok(env, "ls")
    assert [t["name"] for t in listed] == ["root", "ci", viewer["name"]]
    assert all("token" not in t and "secret_hash" not in t for t in listed)
    table = run(env, "ls")
    assert table.returncode == 0 and "active" in table.stdout and root not in table.stdout
    assert table.stdout.splitlines()[0].split()[:4] == ["ID", "NAME", "ROLE", "STATE"]

    settings = Settings(database_url=db_url, run_monitors=False, run_scheduler=False)
    with running_server(settings) as base:
        r = httpx.get(f"{base}/api/v1/tokens", headers=bearer(root))
        assert r.status_code == 200 and len(r.json()) == 3
        assert httpx.get(f"{base}/api/v1/rollouts", headers=bearer(op["token"])).status_code == 200
        r = httpx.get(f"{base}/api/v1/tokens", headers=bearer(op["token"]))
        assert r.status_code == 403
        revoked = ok(env, "revoke", "ci")
        assert revoked["active"] is False and revoked["revoked_by"] == "cli:ivanov"
        r = httpx.get(f"{base}/api/v1/rollouts", headers=bearer(op["token"]))
        assert r.status_code == 401 and r.json()["detail"] == "token revoked"
        # by id and by key id too; revoking twice is no change
        assert ok(env, "revoke", str(viewer["id"]))["active"] is False
        assert ok(env, "revoke", viewer["key_id"])["revoked_by"] == "cli:ivanov"
        audit = httpx.get(
            f"{base}/api/v1/audit", params={"action": "token."}, headers=bearer(root)
        ).json()
    assert [(e["action"], e["actor"]) for e in reversed(audit)] == [
        ("token.create", "cli:ivanov"),
        ("token.create", "cli:ivanov"),
        ("token.create", "cli:ivanov"),
        ("token.revoke", "cli:ivanov"),
        ("token.revoke", "cli:ivanov"),
    ]
    everything = json.dumps(audit)
    assert root not in everything and op["token"] not in everything


def test_bad_input_exits_2(env: dict[str, str]) -> None:
    assert ok(env, "create", "--role", "viewer", "--name", "dup")["name"] == "dup"
    for args, message in (
        (("create", "--role", "root"), "Invalid value for '--role'"),
        (("create", "--role", "viewer", "--name", "dup"), "an active token is named 'dup'"),
        (("create", "--role", "viewer", "--name", "a b"), "name: 'a b' must be"),
        (("create", "--role", "viewer", "--expires", "0m"), "expires: the duration must be"),
        (("create", "--role", "viewer", "--expires", "tomorrow"), "expires: 'tomorrow'"),
        (("revoke", "nobody"), "no token 'nobody'"),
    ):
        res = run(env, *args)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert message in res.stderr, (args, res.stderr)
