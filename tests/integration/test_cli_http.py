"""The `cpdops` command against a real `cpdops serve` (subprocesses, real tokens): URL and token
from the environment and from a config file, --json, exit codes 0/1/2, the server's refusals.

The CLI's own database (``CPDOPS_DATABASE_URL`` of the subprocess) is another, empty file, so
what the commands see and change can only have come through the API.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.context import build_context
from orchestrator.db.session import session_scope
from orchestrator.fleet.apply import apply_fleet
from orchestrator.fleet.fleetfile import parse_fleet_text
from orchestrator.incidents.numbers import is_valid_number
from orchestrator.settings import Settings
from tests.integration.dockerd import remove_test_containers
from tests.integration.fleet import free_port, make_context, place_tenants, wait_for, wait_health
from tests.integration.server import make_token, running_server

CPDOPS = str(Path(sys.executable).parent / "cpdops")
FLEET = """\
version: 1
hosts:
  - name: gone
    url: unix:///nonexistent/docker.sock
tenants:
  - slug: acme
    name: ACME
    ring: canary
    host: gone
"""


def run(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CPDOPS, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def ok(env: dict[str, str], *args: str) -> Any:
    res = run(env, *args, "--json")
    assert res.returncode == 0, (args, res.stdout, res.stderr)
    return json.loads(res.stdout)


def refused(env: dict[str, str], *args: str, code: int = 2) -> str:
    res = run(env, *args)
    assert res.returncode == code, (args, res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    return res.stderr


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        database_url=f"sqlite:///{tmp_path / 'server.db'}", run_monitors=False, run_scheduler=False
    )


@pytest.fixture
def server(settings: Settings) -> Iterator[str]:
    ctx = build_context(settings)
    try:
        with session_scope(ctx.factory) as s:
            apply_fleet(s, parse_fleet_text(FLEET))
    finally:
        ctx.close()
    with running_server(settings) as base:
        yield base


@pytest.fixture
def base_env(tmp_path: Path) -> dict[str, str]:
    """No URL, no token; a config path that does not exist; the CLI's own, empty database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CPDOPS_")}
    return {
        **env,
        "CPDOPS_DATABASE_URL": f"sqlite:///{tmp_path / 'cli-own.db'}",
        "CPDOPS_CONFIG": str(tmp_path / "no-config.toml"),
        "CPDOPS_PULL_POLICY": "never",
        "CPDOPS_AUTHOR": "ivanov",
    }


def with_token(base_env: dict[str, str], url: str, token: str) -> dict[str, str]:
    return {**base_env, "CPDOPS_URL": url, "CPDOPS_TOKEN": token}


def test_incidents_through_the_api(
    server: str, settings: Settings, base_env: dict[str, str], tmp_path: Path
) -> None:
    operator = with_token(base_env, server, make_token(settings, "operator", name="ops"))
    viewer = with_token(base_env, server, make_token(settings, "viewer", name="eyes"))
    shot = tmp_path / "shot.png"
    shot.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))

    t = ok(
        operator,
        "incidents",
        "create",
        "--type",
        "incident",
        "--subject",
        "Calls drop",
        "--tenant",
        "acme",
        "--priority",
        "high",
        "--attach",
        str(shot),
    )
    number = t["number"]
    # the portal intake made it (multipart with the file), not the CLI on its own database
    assert is_valid_number(number) and t["source"] == "portal"
    assert t["events"][0]["author"] == "ivanov"
    assert [(a["filename"], a["content_type"]) for a in t["attachments"]] == [
        ("shot.png", "image/png")
    ]
    assert ok(operator, "incidents", "ask", number, "-m", "which extension?")["status"] == (
        "awaiting_info"
    )
    assert ok(operator, "incidents", "comment", number, "-m", "204", "--customer")["status"] == (
        "open"
    )
    solved = ok(operator, "incidents", "resolve", number, "-m", "re-registered 204")
    assert solved["status_label"] == "Решение предоставлено"
    assert ok(operator, "incidents", "priority", number, "critical")["priority"] == "critical"
    assert ok(operator, "incidents", "close", number)["status"] == "closed"
    shown = ok(viewer, "incidents", "show", number)
    assert [e["kind"] for e in shown["events"]] == [
        "created",
        "attachment",
        "status",
        "comment",
        "status",
        "solution",
        "priority",
        "status",
    ]
    human = run(viewer, "incidents", "show", number)
    assert human.returncode == 0 and "Закрыта" in human.stdout and "shot.png" in human.stdout
    assert [i["number"] for i in ok(viewer, "incidents", "ls", "--status", "closed")] == [number]
    assert ok(viewer, "incidents", "ls", "--status", "open") == []
    table = run(viewer, "incidents", "ls")
    assert table.stdout.split()[:3] == ["NUMBER", "TYPE", "STATUS"] and number in table.stdout
    out = tmp_path / "got.png"
    got = run(
        viewer, "incidents", "attachment", number, str(t["attachments"][0]["id"]), "-o", str(out)
    )
    assert got.returncode == 0, got.stderr
    assert out.read_bytes() == shot.read_bytes()

    # nothing of it is in the CLI's own database: --direct works there
    assert ok(viewer, "--direct", "incidents", "ls") == []

    # a viewer may read, not act; the server's answer is the message
    err = refused(viewer, "incidents", "comment", number, "-m", "hello")
    assert "this needs role operator; token 'eyes' has role viewer" in err
    # bad input is the server's 4xx naming the field: 404 (unknown tenant), 422 (empty body)
    err = refused(
        operator, "incidents", "create", "--type", "incident", "--subject", "x", "--tenant", "nope"
    )
    assert "tenant" in err and "nope" in err and "HTTP 404" in err
    err = refused(operator, "incidents", "comment", number, "-m", "")
    assert err.startswith("error: body: ") and "at least 1" in err and "HTTP 422" in err
    err = refused(operator, "incidents", "status", number, "awaiting_info")
    assert "from closed to awaiting_info" in err and "HTTP 409" in err
    assert "no incident with number 2026120101000010 (HTTP 404)" in refused(
        viewer, "incidents", "show", "2026120101000010"
    )


def test_tokens_audit_fleet_and_monitors_through_the_api(
    server: str, settings: Settings, base_env: dict[str, str]
) -> None:
    admin = with_token(base_env, server, make_token(settings, "admin", name="root"))
    operator = with_token(base_env, server, make_token(settings, "operator", name="ops"))

    made = ok(admin, "token", "create", "--role", "viewer", "--name", "ci", "--expires", "2w")
    assert made["token"].startswith("cpd_") and made["created_by"] == "token:root"
    plain = run(admin, "token", "create", "--role", "viewer", "--name", "ci2")
    assert plain.returncode == 0 and plain.stdout.strip().startswith("cpd_")
    assert "shown only now" in plain.stderr
    names = [t["name"] for t in ok(admin, "token", "ls")]
    assert names == ["root", "ops", "ci", "ci2"]
    revoked = ok(admin, "token", "revoke", "ci")  # by name, resolved through GET /tokens
    assert revoked["active"] is False and revoked["revoked_by"] == "token:root"
    ci = with_token(base_env, server, made["token"])
    err = refused(ci, "rollout", "ls")
    assert "token revoked" in err and "cpdops token create" in err
    assert "no token 'nobody'" in refused(admin, "token", "revoke", "nobody")
    wrong = made["token"][:-1] + ("A" if made["token"][-1] != "A" else "B")
    err = refused(with_token(base_env, server, wrong), "incidents", "ls")
    assert "invalid token (HTTP 401" in err and "cpdops token create" in err
    assert "needs role admin" in refused(operator, "token", "ls")

    by_root = ("audit", "ls", "--action", "token.", "--actor", "token:root")
    entries = ok(admin, *by_root)
    assert [(e["action"], e["target"]) for e in entries] == [
        ("token.revoke", f"token/{made['id']}"),
        ("token.create", f"token/{made['id'] + 1}"),
        ("token.create", f"token/{made['id']}"),
    ]
    assert {e["actor"] for e in ok(admin, "audit", "ls", "--action", "token.")} == {
        "test",
        "token:root",
    }
    page = ok(admin, *by_root, "--limit", "1", "--offset", "1")
    assert [e["id"] for e in page] == [entries[1]["id"]]
    refusals = ok(admin, "audit", "ls", "--status", "401")
    assert refusals and all(e["status"] == 401 for e in refusals)
    assert "needs role admin" in refused(operator, "audit", "ls")
    assert "--since 'yesterday'" in refused(admin, "audit", "ls", "--since", "yesterday")
    table = run(admin, "audit", "ls", "--limit", "3")
    assert table.returncode == 0 and table.stdout.split()[:3] == ["AT", "ACTOR", "ACTION"]

    assert [t["slug"] for t in ok(operator, "fleet", "tenants")] == ["acme"]
    assert ok(operator, "fleet", "tenants", "--ring", "late") == []
    hosts = ok(operator, "fleet", "hosts")
    assert [(h["name"], h["url"]) for h in hosts] == [("gone", "unix:///nonexistent/docker.sock")]
    # the only host does not answer: listed under errors, exit 1 (the operation failed)
    res = run(operator, "fleet", "ls", "--json")
    assert res.returncode == 1, res.stderr
    assert list(json.loads(res.stdout)["errors"]) == ["gone"] and "no host answered" in res.stderr

    declare = ("monitors", "declare", "--tenant", "acme", "--name", "portal", "--kind", "http")
    assert "needs role admin" in refused(operator, *declare, "--target", "http://127.0.0.1:9/")
    err = refused(admin, *declare, "--target", "ftp://127.0.0.1/")
    assert "HTTP 422" in err and "target" in err
    err = refused(admin, *declare, "--target", "http://127.0.0.1:9/", "--option", "nope=1")
    assert "HTTP 422" in err and "options" in err
    made_monitor = ok(admin, *declare, "--target", "http://127.0.0.1:9/", "--interval", "30s")
    assert made_monitor["id"] == "acme/portal" and made_monitor["interval_s"] == 30
    assert "HTTP 409" in refused(admin, *declare, "--target", "http://127.0.0.1:9/")
    listed = ok(operator, "monitors", "ls")
    assert [(m["id"], m["source"], m["status"]) for m in listed] == [
        ("acme/portal", "api", "pending")
    ]
    history = ok(operator, "monitors", "history", "acme/portal", "--window", "1h")
    assert history["monitor"] == "acme/portal" and history["points"] == []
    assert "no monitor" in refused(operator, "monitors", "history", "acme/nope")
    assert ok(admin, "monitors", "delete", "acme/portal") == {"deleted": "acme/portal"}
    assert ok(operator, "monitors", "ls") == []
    assert "HTTP 404" in refused(admin, "monitors", "delete", "acme/portal")
    assert "goes through the API" in refused(
        base_env, "monitors", "declare", *declare[2:], "--target", "x"
    )
    assert ok(operator, "rollout", "ls") == []


def test_config_file_and_its_permissions(
    server: str, settings: Settings, base_env: dict[str, str], tmp_path: Path
) -> None:
    token = make_token(settings, "viewer", name="cfg")
    config = tmp_path / "config.toml"
    env = {**base_env, "CPDOPS_CONFIG": str(config)}
    config.write_text(f'[default]\nurl = "{server}"\ntoken = "{token}"\n')
    config.chmod(0o644)
    err = refused(env, "incidents", "ls")
    assert f"chmod 600 {config}" in err and "mode 644" in err
    assert token not in err
    config.chmod(0o600)
    assert ok(env, "incidents", "ls") == []
    # the config file's token goes only to the config file's URL
    elsewhere = server.replace("127.0.0.1", "localhost")
    err = refused(env, "--url", elsewhere, "incidents", "ls")
    assert f"{elsewhere} needs a token" in err and "cpdops token create" in err
    # --url wins over the config file's URL (which points nowhere here)
    dead = f"http://127.0.0.1:{free_port()}"
    config.write_text(f'[default]\nurl = "{dead}"\ntoken = "{token}"\n')
    assert ok({**env, "CPDOPS_TOKEN": token}, "--url", server, "incidents", "ls") == []
    assert "cannot reach cpdops" in refused(env, "incidents", "ls", code=1)

    # a token file instead: the config itself holds no secret, the token file must be private
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o640)
    config.write_text(f'[default]\nurl = "{server}"\ntoken_file = "token"\n')
    config.chmod(0o644)
    assert f"chmod 600 {token_file}" in refused(env, "rollout", "ls")
    token_file.chmod(0o600)
    assert ok(env, "rollout", "ls") == []

    config.write_text(f'[default]\nurl = "{server}"\ntokn = "x"\n')
    assert "unknown key 'tokn'" in refused(env, "rollout", "ls")
    config.write_text("[default\n")
    assert "not a valid TOML file" in refused(env, "rollout", "ls")
    # --direct does not read the config file: the CLI's own (empty) database
    assert ok(env, "--direct", "token", "ls") == []


def test_no_server_and_bad_urls(base_env: dict[str, str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    env = {**base_env, "CPDOPS_URL": url, "CPDOPS_TOKEN": "cpd_x"}
    err = refused(env, "rollout", "ls", code=1)
    assert f"cannot reach cpdops at {url} (CPDOPS_URL)" in err and "cpdops serve" in err
    err = refused(base_env, "--url", "127.0.0.1:8077", "rollout", "ls")
    assert "--url: '127.0.0.1:8077' is not an http(s) URL" in err
    assert "exclude each other" in refused(base_env, "--direct", "--url", url, "rollout", "ls")


@pytest.mark.docker
def test_rollouts_through_the_api_with_progress(
    tmp_path: Path,
    base_env: dict[str, str],
    docker_hosts: list[Any],
    standin_images: dict[str, str],
) -> None:
    hosts = docker_hosts[:2]
    db_url = f"sqlite:///{tmp_path / 'server.db'}"
    ctx = make_context(tmp_path, db_url)
    try:
        placed = place_tenants(ctx, hosts, [("acme", 0), ("globex", 1)], standin_images["1"])
        ctx.close()
        for p in placed:
            wait_health(p.tenant.health_url, version="1")
        settings = Settings(database_url=db_url, run_monitors=False, stop_timeout_s=5)
        with running_server(settings) as base:
            env = with_token(base_env, base, make_token(settings, "operator", name="ops"))
            viewer = with_token(base_env, base, make_token(settings, "viewer", name="eyes"))
            v2 = standin_images["2"]

            plan = ok(env, "rollout", "plan", "--image", v2, "--waves", "1,100%")
            assert plan["target_version"] == "2" and [len(w) for w in plan["waves"]] == [1, 1]
            assert sorted(p["tenant"] for w in plan["waves"] for p in w) == ["acme", "globex"]
            human = run(env, "rollout", "plan", "--image", v2, "--waves", "1,100%")
            assert "2 instance(s), 2 wave(s)" in human.stdout, human.stderr
            err = refused(viewer, "rollout", "start", "--image", v2, "--detach")
            assert "this needs role operator; token 'eyes' has role viewer" in err
            err = refused(env, "rollout", "start", "--image", v2, "--tenants", "zz")
            assert "unknown tenant(s): zz" in err and "HTTP 400" in err
            err = refused(env, "rollout", "start", "--image", v2, "--passes", "0", "--detach")
            assert "gate.passes: " in err and "HTTP 422" in err
            assert ok(env, "rollout", "ls") == [], "nothing was created by the refused requests"

            # created at the server, followed by another process; approved by a third
            created = ok(
                env, "rollout", "start", "--image", v2, "--waves", "1,100%",
                "--approve-after", "1", "--passes", "2", "--detach",
            )  # fmt: skip
            rid = str(created["id"])
            watcher = subprocess.Popen(
                [CPDOPS, "rollout", "status", rid, "--watch", "--interval", "0.2"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                wait_for(
                    lambda: ok(env, "rollout", "status", rid)["status"] == "awaiting_approval",
                    timeout=120,
                    what="the first wave done, waiting for approval",
                )
                assert ok(env, "rollout", "approve", rid)["id"] == created["id"]
                out, err = watcher.communicate(timeout=180)
            finally:
                watcher.kill()
            assert watcher.returncode == 0, (out, err)
            # no TTY: a line per change on stderr, the final table on stdout
            assert f"rollout {rid}: awaiting_approval" in err and f"rollout {rid}: succeeded" in err
            assert "wave 2 " in err and ": updated" in err
            assert f"rollout {rid}: succeeded" in out and "[2/2]" not in out
            assert out.count("updated") == 3, "two instances and the bar's '2/2 updated'"
            for p in placed:
                wait_health(p.tenant.health_url, version="2")
            assert "HTTP 409" in refused(env, "rollout", "pause", rid)

            # a failing image: start follows it at the server, exit 1; status --watch --json too
            failed = run(
                env, "rollout", "start", "--image", standin_images["2-fail-health"],
                "--tenants", "acme", "--deadline", "4",
            )  # fmt: skip
            assert failed.returncode == 1, (failed.stdout, failed.stderr)
            assert "acme@" in failed.stderr and "failed" in failed.stdout
            listed = ok(env, "rollout", "ls")
            assert [r["status"] for r in listed] == ["failed", "succeeded"]
            assert listed[0]["incident"] is not None
            watched = run(env, "rollout", "status", str(listed[0]["id"]), "--watch", "--json")
            assert watched.returncode == 1
            lines = [json.loads(line) for line in watched.stdout.splitlines()]
            assert [d["status"] for d in lines] == ["failed"]
            ticket = ok(viewer, "incidents", "show", listed[0]["incident"])
            assert ticket["type"] == "mass_incident" and ticket["rollout_id"] == listed[0]["id"]
            wait_health(placed[0].tenant.health_url, version="2")
    finally:
        for h in hosts:
            remove_test_containers(h.client)


def test_outbox_ls_and_requeue_through_the_api(
    server: str, settings: Settings, base_env: dict[str, str]
) -> None:
    from datetime import UTC, datetime

    from orchestrator.db.models import AuditEntry, OutboxMessage

    now = datetime.now(UTC)
    ctx = build_context(settings)
    try:
        with session_scope(ctx.factory) as s:
            for n, (state, error) in enumerate(
                [
                    ("dead", "permanent: WebhookRejected: HTTP 410"),
                    ("sent", None),
                    ("dead", "ConnectionRefusedError: [Errno 111] Connection refused"),
                    ("pending", "deferred: paced"),
                ],
                1,
            ):
                s.add(
                    OutboxMessage(
                        dedup_key=f"webhook:acme:2026120101000017:{n}",
                        created_at=now,
                        channel="webhook",
                        recipient="acme",
                        tenant="acme",
                        incident_number="2026120101000017",
                        payload={"kind": "status", "event_id": n},
                        state=state,
                        attempts=10 if state == "dead" else 1,
                        next_attempt_at=now,
                        last_error=error,
                        sent_at=now if state == "sent" else None,
                    )
                )
    finally:
        ctx.close()
    admin = with_token(base_env, server, make_token(settings, "admin", name="root"))
    viewer = with_token(base_env, server, make_token(settings, "viewer", name="eyes"))

    dead = ok(admin, "outbox", "ls", "--status", "dead")
    assert [(r["id"], r["state"], r["kind"], r["attempts"]) for r in dead] == [
        (1, "dead", "status", 10),
        (3, "dead", "status", 10),
    ]
    assert dead[0]["last_error"] == "permanent: WebhookRejected: HTTP 410"
    assert len(ok(admin, "outbox", "ls")) == 4
    table = run(admin, "outbox", "ls", "--status", "dead")
    assert table.returncode == 0 and "HTTP 410" in table.stdout and "ID" in table.stdout

    assert "403" in refused(viewer, "outbox", "requeue", "1")
    assert "--dead" in refused(admin, "outbox", "requeue")
    assert "not both" in refused(admin, "outbox", "requeue", "1", "--dead")
    err = refused(admin, "outbox", "requeue", "1", "2", "999")
    assert "not requeued 2" in err and "is sent" in err and "not requeued 999" in err
    assert "2 of 3 not requeued" in err
    states = {r["id"]: (r["state"], r["attempts"]) for r in ok(admin, "outbox", "ls")}
    assert states == {1: ("pending", 0), 2: ("sent", 1), 3: ("dead", 10), 4: ("pending", 1)}

    res = run(admin, "outbox", "requeue", "--dead")
    assert res.returncode == 0 and "requeued 1 notification" in res.stdout, res.stderr
    assert ok(admin, "outbox", "ls", "--status", "dead") == []
    ctx = build_context(settings)
    try:
        with ctx.factory() as s:
            audited = s.query(AuditEntry).filter(AuditEntry.action == "outbox.requeue").all()
            assert sorted(a.target for a in audited) == ["outbox/1", "outbox/3"]
            assert {a.actor for a in audited} == {"token:root"}
    finally:
        ctx.close()
