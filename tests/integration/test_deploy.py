"""docs/deploy.md's commands, run as written, start the compose stack on the machine's own
Docker engine (/var/run/docker.sock) from a copy of the repository.

What a machine without a registry needs, and the only liberties taken:

* The stack's images from a registry are built here instead, FROM the locally made
  ``cpdops-base:bookworm`` (the block's own ``cpdops demo build`` makes it) with this machine's
  Debian binaries: PostgreSQL 15 (``postgres``/``initdb``/``pg_ctl`` and their libraries, an
  entrypoint doing what the official image's does with POSTGRES_USER/_DB/_PASSWORD_FILE),
  Prometheus and Alertmanager (``prometheus``, ``prometheus-alertmanager``; their images'
  entrypoints, users and data directories), each with a ``wget`` for the health checks. They
  are named through the compose file's ``CPDOPS_*_IMAGE`` variables.
* Grafana is not a Debian package and its image cannot be had here: the ``up`` command names
  every service but ``grafana`` (the test says so), which is the only change to a command.
* A unique project name (``COMPOSE_PROJECT_NAME``), free published ports (``CPDOPS_*PORT``)
  and a pseudo-terminal (``script``) for ``docker-compose exec``, as a person's shell has.

Then: cpdops answers /healthz on its published port, ran ``apply`` (exit 0), Prometheus scrapes
it (target ``cpdops`` up) and Alertmanager is ready. Every container, volume, network and image
the test made is removed (``docker-compose down -v``; the locally built images), also on
failure; ``cpdops-base:bookworm`` (a cache) is kept. Skipped without docker-compose or the
engine, unless CPDOPS_REQUIRE_DOCKER=1.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.dashboards import ROOT
from tests.integration.fleet import free_port

SOCKET = Path("/var/run/docker.sock")
DEADLINE_S = 300.0
SKIPPED_SERVICES = {"grafana": "grafana/grafana is not a Debian package and no registry is here"}
SERVICES = ["postgres", "cpdops", "prometheus", "alertmanager"]
GLIBC = re.compile(r"/(libc|libm|libresolv|libpthread|libdl|librt|ld-linux[^/]*)\.so")
PG = "/usr/lib/postgresql/15"
WGET = """#!/usr/bin/python3
# the health checks' `wget -q -O /dev/null URL`: exit 0 on a 2xx answer
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[-1], timeout=4)
except Exception as exc:
    sys.exit(f"wget: {exc}")
"""
PG_ENTRYPOINT = """#!/bin/sh
# what the official postgres image's entrypoint does with POSTGRES_USER, _DB, _PASSWORD_FILE
set -eu
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
mkdir -p "$PGDATA" /var/run/postgresql
chown postgres:postgres "$PGDATA" /var/run/postgresql
chmod 0700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  cp "$POSTGRES_PASSWORD_FILE" /tmp/pwfile && chown postgres /tmp/pwfile
  as_pg initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile=/tmp/pwfile \\
    --auth-local=trust --auth-host=scram-sha-256
  rm -f /tmp/pwfile
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  as_pg pg_ctl -D "$PGDATA" -w -o "-c listen_addresses=''" start
  as_pg psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d postgres \\
    -c "CREATE DATABASE \\"$POSTGRES_DB\\""
  as_pg pg_ctl -D "$PGDATA" -w -m fast stop
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups \\
  postgres -D "$PGDATA" -c listen_addresses='*'
"""


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {done.stdout}{done.stderr}")
    return done


def shell_blocks(markdown: str) -> list[str]:
    """The ```sh blocks of a Markdown text, in order."""
    return re.findall(r"^```sh\n(.*?)^```$", markdown, flags=re.MULTILINE | re.DOTALL)


def libraries(*binaries: str) -> set[str]:
    """The shared libraries the binaries load, glibc's own left out (the base has it)."""
    found: set[str] = set()
    for binary in binaries:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
        found |= {m for m in re.findall(r"=> (/\S+)", out) if not GLIBC.search(m)}
    return found


def build(tag: str, context: Path, dockerfile: str) -> None:
    (context / "Dockerfile").write_text(dockerfile)
    docker("build", "--network", "none", "--pull=false", "--force-rm", "-t", tag, str(context))


def build_images(work: Path, prefix: str) -> dict[str, str]:
    """The registry images of the stack, made here (see the module's docstring)."""
    base = "cpdops-base:bookworm"
    tags = {name: f"{prefix}-{name}:local" for name in ("postgres", "prometheus", "alertmanager")}
    pg = work / "img-postgres"
    for path in (f"{PG}/bin/postgres", f"{PG}/bin/initdb", f"{PG}/bin/pg_ctl", f"{PG}/lib"):
        target = pg / "root" / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        copy = shutil.copytree if Path(path).is_dir() else shutil.copy2
        copy(path, target)
    shutil.copytree("/usr/share/postgresql/15", pg / "root/usr/share/postgresql/15")
    libs = pg / "root/opt/hostlibs"
    libs.mkdir(parents=True)
    for lib in libraries(f"{PG}/bin/postgres", f"{PG}/bin/initdb", f"{PG}/bin/pg_ctl"):
        shutil.copy2(lib, libs)
    (pg / "root/usr/local/bin").mkdir(parents=True)
    (pg / "root/usr/local/bin/postgres-entrypoint").write_text(PG_ENTRYPOINT)
    (pg / "root/usr/local/bin/postgres-entrypoint").chmod(0o755)
    build(
        tags["postgres"],
        pg,
        f"FROM {base}\nCOPY root/ /\n"
        "RUN useradd --system --home-dir /var/lib/postgresql postgres\n"
        f"ENV PATH={PG}/bin:$PATH LD_LIBRARY_PATH=/opt/hostlibs PGDATA=/var/lib/postgresql/data\n"
        'ENTRYPOINT ["/usr/local/bin/postgres-entrypoint"]\n',
    )
    for name, binary in (
        ("prometheus", "/usr/bin/prometheus"),
        ("alertmanager", "/usr/bin/prometheus-alertmanager"),
    ):
        context = work / f"img-{name}"
        bin_dir = context / "root/usr/local/bin"  # (/bin is a symlink in the base: keep it)
        bin_dir.mkdir(parents=True)
        shutil.copy2(binary, bin_dir / name)
        (bin_dir / "wget").write_text(WGET)
        (bin_dir / "wget").chmod(0o755)
        # Debian's builds read their templates and web assets from here
        shutil.copytree("/usr/share/prometheus", context / "root/usr/share/prometheus")
        build(
            tags[name],
            context,
            f"FROM {base}\nCOPY root/ /\n"
            f"RUN mkdir -p /{name} && chown nobody:nogroup /{name}\n"
            f'USER nobody\nWORKDIR /{name}\nENTRYPOINT ["/usr/local/bin/{name}"]\n',
        )
    return tags


@pytest.fixture
def machine_engine() -> None:
    reason = None
    if shutil.which("docker-compose") is None:
        reason = "docker-compose is not installed (Debian package docker-compose)"
    elif not SOCKET.exists() or docker("version", check=False).returncode != 0:
        reason = f"no Docker engine at {SOCKET}"
    elif shutil.which("prometheus") is None or shutil.which("prometheus-alertmanager") is None:
        reason = "prometheus / prometheus-alertmanager are not installed (Debian packages)"
    elif not Path(f"{PG}/bin/postgres").exists():
        reason = "PostgreSQL 15 is not installed (Debian package postgresql-15)"
    if reason is not None:
        if os.environ.get("CPDOPS_REQUIRE_DOCKER") == "1":
            pytest.fail(f"CPDOPS_REQUIRE_DOCKER=1 but {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """The repository's tracked files (as a fresh clone has them), its venv beside them."""
    work = tmp_path / "cpdops"
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, files.split("\0")):
        source = ROOT / name
        if source.is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, work / name)
    (work / ".venv").symlink_to(ROOT / ".venv")
    return work


def wait_for(what: str, check: object) -> None:
    deadline = time.monotonic() + DEADLINE_S
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()  # type: ignore[operator]
            if last is True:
                return
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            last = exc
        time.sleep(1.0)
    raise AssertionError(f"{what}: gave up, last {last!r}")


@pytest.mark.timeout(1800)
def test_every_command_of_deploy_md_starts_the_stack(
    machine_engine: None, checkout: Path, tmp_path: Path
) -> None:
    blocks = shell_blocks((checkout / "docs/deploy.md").read_text())
    assert blocks, "docs/deploy.md has no ```sh block"
    project = f"cpdopsdeploy{uuid.uuid4().hex[:8]}"
    ports = {name: free_port() for name in ("", "_PROMETHEUS", "_ALERTMANAGER", "_GRAFANA")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("CPDOPS_")}
    env |= {f"CPDOPS{name}_PORT": str(port) for name, port in ports.items()}
    env |= {"COMPOSE_PROJECT_NAME": project, "CPDOPS_IMAGE": f"{project}-cpdops:local"}
    skipped = ", ".join(f"{name} ({why})" for name, why in SKIPPED_SERVICES.items())
    print(f"skipped service(s): {skipped}")
    up = "docker-compose up -d --build"
    try:
        for name, tag in build_images(tmp_path, project).items():
            env[f"CPDOPS_{name.upper()}_IMAGE"] = tag
        for block in blocks:
            assert block.count(up) <= 1
            script = block.replace(up, f"{up} {' '.join(SERVICES)}")
            path = tmp_path / "block.sh"
            path.write_text("set -euxo pipefail\n" + script)
            run = subprocess.run(
                ["script", "-qefc", f"bash {shlex.quote(str(path))}", "/dev/null"],
                cwd=checkout, env=env, capture_output=True, text=True, timeout=1500,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
            assert run.returncode == 0, f"{block}\n--- output:\n{run.stdout}\n{run.stderr}"
        base = f"http://127.0.0.1:{ports['']}"
        assert httpx.get(base + "/healthz", timeout=10).json()["database"] == "ok"
        prometheus = f"http://127.0.0.1:{ports['_PROMETHEUS']}"

        def cpdops_scraped() -> bool:
            targets = httpx.get(prometheus + "/api/v1/targets", timeout=10).json()
            active = targets["data"]["activeTargets"]
            return any(t["labels"]["job"] == "cpdops" and t["health"] == "up" for t in active)

        wait_for("Prometheus scrapes cpdops", cpdops_scraped)
        alertmanager = f"http://127.0.0.1:{ports['_ALERTMANAGER']}"
        wait_for(
            "Alertmanager ready",
            lambda: httpx.get(alertmanager + "/-/ready", timeout=10).status_code == 200,
        )
        # the secrets are readable by the services' users, and not by others on the host
        # (cpdops read its own: it is healthy)
        read = subprocess.run(
            ["docker-compose", "exec", "-T", "alertmanager", "cat",
             "/run/secrets/cpdops_alertmanager_secret"],
            cwd=checkout, env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        secret = (checkout / "secrets/alertmanager_secret").read_text().strip()
        assert read.returncode == 0 and read.stdout.strip() == secret, read.stderr
        assert (checkout / "secrets").stat().st_mode & 0o777 == 0o700
    finally:
        logs = subprocess.run(
            ["docker-compose", "logs", "--no-color", "--tail", "30"],
            cwd=checkout, env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        print(logs.stdout[-6000:])
        subprocess.run(
            ["docker-compose", "down", "-v", "--remove-orphans", "-t", "5"],
            cwd=checkout, env=env, capture_output=True, check=False,
        )  # fmt: skip
        for name in ("postgres", "prometheus", "alertmanager", "cpdops"):
            docker("rmi", "-f", f"{project}-{name}:local", check=False)
    leftovers = docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={project}")
    assert leftovers.stdout.strip() == ""
    volumes = docker(
        "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={project}"
    )
    assert volumes.stdout.strip() == ""
