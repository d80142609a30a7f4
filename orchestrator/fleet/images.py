"""Images without a registry: the Debian base image, the SmartCPD stand-in, engine-to-engine copies.

No registry is reachable where cpdops is tested and demonstrated, so every image is made locally:

* ``cpdops-base:bookworm`` is a Debian root made by ``debootstrap --variant=minbase
  --include=python3,postgresql-client`` (``psql`` for the stand-in's tenant database) and
  imported into the engine. The root filesystem tarball is cached per machine in
  ``$CPDOPS_CACHE_DIR`` (default ``/var/cache/cpdops``) under a name that carries a hash of the
  recipe, so debootstrap (~1 min) runs once per machine; a lock file keeps two concurrent
  callers from both running it.
* ``smartcpd-fake:<version>[-fail-<mode>]`` is built FROM the base image with the stand-in
  server (``orchestrator/demo/standin/server.py``); a label holds a hash of server.py, the
  Dockerfile template and the base image id, so an unchanged image is not rebuilt.
* ``copy_image`` moves an image from one engine to another with save/load.

Docker SDK errors are converted here into ``orchestrator.errors`` (``raise ... from exc``).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.resources
import io
import json
import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions

from orchestrator.errors import DockerError, HostUnreachable, ImageNotFound, InputError

log = logging.getLogger(__name__)

BASE_REPOSITORY = "cpdops-base"
BASE_TAG = "bookworm"
BASE_IMAGE = f"{BASE_REPOSITORY}:{BASE_TAG}"
BASE_SUITE = "bookworm"
BASE_VARIANT = "minbase"
# postgresql-client: the stand-in's schema and migrations run `psql` inside the container.
BASE_PACKAGES = ("python3", "postgresql-client")
APT_SOURCES = (Path("/etc/apt/sources.list.d"), Path("/etc/apt/sources.list"))
# Directories whose files (not subdirectories) are deleted to keep the image small.
BASE_STRIPPED = (
    "var/lib/apt/lists",
    "var/cache/apt",
    "var/log",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
)
BASE_ENV = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG=C.UTF-8",
)
BASE_RECIPE_LABEL = "cpdops.base.recipe"
DEFAULT_CACHE_DIR = Path("/var/cache/cpdops")
LOCK_TIMEOUT_S = 900.0
DEBOOTSTRAP_TIMEOUT_S = 1800.0

STANDIN_REPOSITORY = "smartcpd-fake"
STANDIN_PORT = 8080
VERSION_LABEL = "org.opencontainers.image.version"
STANDIN_HASH_LABEL = "cpdops.standin.source-sha256"
# Keep in step with FAIL_MODES in demo/standin/server.py (a unit test compares them).
FAIL_MODES = ("health", "crash", "slow-start", "migration")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


@contextmanager
def _docker_errors(action: str) -> Iterator[None]:
    """Convert Docker SDK (and transport) errors raised inside the block into our tree."""
    try:
        yield
    except docker.errors.ImageNotFound as exc:
        raise ImageNotFound(f"{action}: {exc.explanation or exc}") from exc
    except requests.exceptions.ConnectionError as exc:
        raise HostUnreachable(f"{action}: the Docker engine does not answer: {exc}") from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise DockerError(f"{action}: {exc}") from exc


def _labels(image: Any) -> dict[str, str]:
    labels = (image.attrs.get("Config") or {}).get("Labels") or {}
    return dict(labels)


def _find_image(client: docker.DockerClient, ref: str) -> Any | None:
    """The image ``ref`` on this engine, or None."""
    try:
        with _docker_errors(f"inspect image {ref}"):
            return client.images.get(ref)
    except ImageNotFound:
        return None


# --- base image -------------------------------------------------------------------------------


def base_recipe_hash() -> str:
    """A short hash of everything that decides the content of the base root filesystem."""
    recipe = {
        "suite": BASE_SUITE,
        "variant": BASE_VARIANT,
        "packages": sorted(BASE_PACKAGES),
        "stripped": list(BASE_STRIPPED),
        "format": 1,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def parse_apt_mirror(texts: list[str], suite: str = BASE_SUITE) -> str | None:
    """Pure: the first main-archive URI for ``suite`` in apt sources (deb822 or one-line)."""
    for text in texts:
        for stanza in text.split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if ":" in line and not line.startswith(("#", " ")):
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
            suites = fields.get("suites", "").split()
            if "uris" in fields and suite in suites and "deb" in fields.get("types", "deb").split():
                return fields["uris"].split()[0]
        for line in text.splitlines():
            parts = line.split("#", 1)[0].split()
            if len(parts) >= 3 and parts[0] == "deb":
                rest = [p for p in parts[1:] if not p.startswith("[")]
                if len(rest) >= 2 and rest[1] == suite:
                    return rest[0]
    return None


def apt_mirror() -> str:
    """The Debian mirror this machine's apt is configured with (debootstrap uses the same)."""
    texts: list[str] = []
    for source in APT_SOURCES:
        files = sorted(source.glob("*")) if source.is_dir() else [source]
        for f in files:
            if f.is_file():
                texts.append(f.read_text(errors="replace"))
    mirror = parse_apt_mirror(texts)
    if mirror is None:
        raise ImageNotFound(
            f"no apt source for Debian {BASE_SUITE} in /etc/apt: cannot debootstrap the base image"
        )
    return mirror


def cache_dir_from_env() -> Path:
    return Path(os.environ.get("CPDOPS_CACHE_DIR") or DEFAULT_CACHE_DIR)


def rootfs_tarball_path(cache_dir: Path) -> Path:
    return cache_dir / f"rootfs-{BASE_SUITE}-{BASE_VARIANT}-{base_recipe_hash()}.tar"


@contextmanager
def _file_lock(path: Path, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """An exclusive ``flock`` on ``path``; released when the block (or the process) ends."""
    with path.open("a") as handle:
        deadline = time.monotonic() + timeout_s
        waiting_logged = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ImageNotFound(
                        f"gave up after {timeout_s:.0f}s waiting for lock {path} "
                        "(another process is building the base root filesystem)"
                    ) from None
                if not waiting_logged:
                    log.info("waiting for lock lock=%s", path)
                    waiting_logged = True
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _ensure_debootstrap() -> str:
    found = shutil.which("debootstrap")
    if found:
        return found
    if os.geteuid() != 0:
        raise ImageNotFound(
            f"cannot build {BASE_IMAGE}: debootstrap is not installed and we are not root "
            "to install it; run `apt-get install debootstrap` as root"
        )
    log.info("installing debootstrap with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "debootstrap"]
    result = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:  # the package lists may be missing: update and try once more
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
        result = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
    found = shutil.which("debootstrap")
    if result.returncode != 0 or not found:
        raise ImageNotFound(
            f"cannot build {BASE_IMAGE}: `apt-get install debootstrap` failed:\n"
            f"{_tail(result.stdout + result.stderr)}"
        )
    return found


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _unescape_mountinfo(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mounts_under(path: Path) -> list[Path]:
    """Mount points at or below ``path`` (deepest first)."""
    base = path.resolve()
    found = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            point = Path(_unescape_mountinfo(line.split()[4]))
            if point == base or base in point.parents:
                found.append(point)
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _remove_tree_safely(path: Path) -> None:
    """rmtree, but first unmount anything debootstrap left mounted (never delete through /dev)."""
    for point in _mounts_under(path):
        subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)
    left = _mounts_under(path)
    if left:
        log.error("not removing %s: still mounted: %s", path, ", ".join(map(str, left)))
        return
    shutil.rmtree(path, ignore_errors=True)


def _debootstrap_rootfs(root: Path) -> None:
    debootstrap = _ensure_debootstrap()
    command = [
        debootstrap,
        f"--variant={BASE_VARIANT}",
        f"--include={','.join(BASE_PACKAGES)}",
        BASE_SUITE,
        str(root),
        apt_mirror(),
    ]
    log.info("debootstrap starting root=%s", root)
    started = time.monotonic()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}
    try:
        result = subprocess.run(
            command,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=DEBOOTSTRAP_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        raise ImageNotFound(f"debootstrap did not finish in {DEBOOTSTRAP_TIMEOUT_S:.0f}s") from exc
    if result.returncode != 0:
        detail = result.stdout + result.stderr
        debootstrap_log = root / "debootstrap" / "debootstrap.log"
        if debootstrap_log.exists():
            detail += "\n" + debootstrap_log.read_text(errors="replace")
        raise ImageNotFound(
            f"cannot build {BASE_IMAGE}: debootstrap exited {result.returncode}:\n{_tail(detail)}"
        )
    log.info("debootstrap done root=%s seconds=%.1f", root, time.monotonic() - started)
    for relative in BASE_STRIPPED:
        for dirpath, _dirnames, filenames in os.walk(root / relative):
            for filename in filenames:
                os.unlink(os.path.join(dirpath, filename))
    # Docker bind-mounts these at run time; do not bake in the build machine's.
    (root / "etc" / "resolv.conf").unlink(missing_ok=True)
    (root / "etc" / "resolv.conf").write_text("")
    (root / "etc" / "hostname").write_text("localhost\n")


def ensure_rootfs_tarball(cache_dir: Path | None = None) -> Path:
    """The cached base root filesystem tarball, made with debootstrap if it is not there yet."""
    cache_dir = cache_dir or cache_dir_from_env()
    tarball = rootfs_tarball_path(cache_dir)
    if tarball.is_file():
        return tarball
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _file_lock(tarball.with_name(tarball.name + ".lock")):
        if tarball.is_file():  # made by whoever held the lock before us
            return tarball
        work = Path(tempfile.mkdtemp(prefix=".rootfs-", dir=cache_dir))
        try:
            root = work / "root"
            _debootstrap_rootfs(root)
            partial = work / "rootfs.tar"
            result = subprocess.run(
                [
                    "tar",
                    "--numeric-owner",
                    "--one-file-system",
                    "--exclude=./dev/*",
                    "--exclude=./proc/*",
                    "--exclude=./sys/*",
                    "--exclude=./debootstrap",
                    "-C",
                    str(root),
                    "-cf",
                    str(partial),
                    ".",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                raise ImageNotFound(f"cannot archive the base root filesystem: {result.stderr}")
            os.replace(partial, tarball)
            log.info("base rootfs cached path=%s bytes=%d", tarball, tarball.stat().st_size)
        finally:
            _remove_tree_safely(work)
    return tarball


def ensure_base_image(client: docker.DockerClient, *, cache_dir: Path | None = None) -> str:
    """Make sure ``cpdops-base:bookworm`` (current recipe) exists on this engine; return its tag."""
    recipe = base_recipe_hash()
    existing = _find_image(client, BASE_IMAGE)
    if existing is not None and _labels(existing).get(BASE_RECIPE_LABEL) == recipe:
        return BASE_IMAGE
    tarball = ensure_rootfs_tarball(cache_dir)
    changes = [f"ENV {item}" for item in BASE_ENV]
    changes += [f"LABEL {BASE_RECIPE_LABEL}={recipe}", 'CMD ["/bin/bash"]']
    log.info("importing base image image=%s tarball=%s", BASE_IMAGE, tarball)
    with _docker_errors(f"import {BASE_IMAGE} from {tarball}"):
        output = client.api.import_image(
            src=str(tarball), repository=BASE_REPOSITORY, tag=BASE_TAG, changes=changes
        )
    for line in str(output).splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and "error" in event:
            raise DockerError(f"import {BASE_IMAGE}: {event['error']}")
    imported = _find_image(client, BASE_IMAGE)
    if imported is None or _labels(imported).get(BASE_RECIPE_LABEL) != recipe:
        raise DockerError(f"import {BASE_IMAGE}: the engine does not show the imported image")
    if existing is not None and existing.id != imported.id:
        _remove_quietly(client, existing.id)
    return BASE_IMAGE


def _remove_quietly(client: docker.DockerClient, image_id: str) -> None:
    """Remove a superseded image; keep it if something still uses it."""
    try:
        with _docker_errors(f"remove image {image_id}"):
            client.images.remove(image_id)
    except DockerError as exc:
        log.info("kept superseded image image=%s reason=%s", image_id, exc)


# --- stand-in image ---------------------------------------------------------------------------


def standin_server_source() -> bytes:
    """The stand-in's server.py, shipped as package data."""
    resource = importlib.resources.files("orchestrator.demo") / "standin" / "server.py"
    return resource.read_bytes()


def standin_tag(version: str, fail: str | None = None) -> str:
    """``smartcpd-fake:<version>`` or ``smartcpd-fake:<version>-fail-<mode>``; validates both."""
    if not _TAG_RE.fullmatch(version):
        raise InputError(f"version {version!r} is not usable as an image tag")
    if fail is not None and fail not in FAIL_MODES:
        raise InputError(f"unknown fail mode {fail!r}; use one of: {', '.join(FAIL_MODES)}")
    tag = version if fail is None else f"{version}-fail-{fail}"
    if not _TAG_RE.fullmatch(tag):
        raise InputError(f"image tag {tag!r} is too long")
    return f"{STANDIN_REPOSITORY}:{tag}"


_DOCKERFILE = """\
FROM {base}
LABEL {version_label}="{version}" org.opencontainers.image.title="{repository}"
ENV SMARTCPD_VERSION={version} SMARTCPD_PORT={port} PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
{fail_env}COPY server.py /app/server.py
WORKDIR /app
EXPOSE {port}
STOPSIGNAL SIGTERM
CMD ["python3", "/app/server.py", "serve"]
"""


def standin_dockerfile(version: str, fail: str | None = None) -> str:
    standin_tag(version, fail)  # validates both
    return _DOCKERFILE.format(
        base=BASE_IMAGE,
        version_label=VERSION_LABEL,
        version=version,
        repository=STANDIN_REPOSITORY,
        port=STANDIN_PORT,
        fail_env=f"ENV SMARTCPD_FAIL={fail}\n" if fail else "",
    )


def standin_source_hash(base_image_id: str) -> str:
    """Identifies how stand-ins are built: base image, Dockerfile template and server.py.

    It deliberately leaves out the version and fail mode (the tag says those), so all stand-in
    images built by the same code differ only in ``org.opencontainers.image.version`` (and
    ``SMARTCPD_*`` env), which containers inherit.
    """
    digest = hashlib.sha256()
    for part in (base_image_id.encode(), _DOCKERFILE.encode(), standin_server_source()):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def standin_context(version: str, fail: str | None = None) -> bytes:
    """The build context: an uncompressed tar with the Dockerfile and server.py."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data, mode in (
            ("Dockerfile", standin_dockerfile(version, fail).encode(), 0o644),
            ("server.py", standin_server_source(), 0o755),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def build_standin(client: docker.DockerClient, version: str, *, fail: str | None = None) -> str:
    """Build ``smartcpd-fake:<version>[-fail-<mode>]`` on this engine (if not current); its tag."""
    tag = standin_tag(version, fail)
    ensure_base_image(client)
    base = _find_image(client, BASE_IMAGE)
    if base is None:
        raise ImageNotFound(f"{BASE_IMAGE} vanished from the engine")
    digest = standin_source_hash(base.id)
    existing = _find_image(client, tag)
    if existing is not None and _labels(existing).get(STANDIN_HASH_LABEL) == digest:
        return tag
    log.info("building stand-in image=%s", tag)
    with _docker_errors(f"build {tag}"):
        built, _logs = client.images.build(
            fileobj=io.BytesIO(standin_context(version, fail)),
            custom_context=True,
            tag=tag,
            labels={STANDIN_HASH_LABEL: digest},
            rm=True,
            forcerm=True,
            pull=False,
            network_mode="none",
        )
    if existing is not None and existing.id != built.id:
        _remove_quietly(client, existing.id)
    return tag


# --- moving and inspecting images -------------------------------------------------------------


def copy_image(src: docker.DockerClient, dst: docker.DockerClient, ref: str) -> None:
    """Make ``ref`` on ``dst`` the same image as on ``src`` (save/load, no registry)."""
    with _docker_errors(f"inspect image {ref} on the source engine"):
        source = src.images.get(ref)
    target = _find_image(dst, ref)
    if target is not None and target.id == source.id:
        return
    log.info("copying image image=%s id=%s", ref, source.id)
    with _docker_errors(f"copy image {ref}"):
        dst.images.load(src.api.get_image(ref))
    copied = _find_image(dst, ref)
    if copied is None or copied.id != source.id:
        raise DockerError(f"copy image {ref}: the destination engine does not show {source.id}")


def image_version(client: docker.DockerClient, ref: str) -> str | None:
    """The image's ``org.opencontainers.image.version`` label; ImageNotFound if there is none."""
    with _docker_errors(f"inspect image {ref}"):
        image = client.images.get(ref)
    return _labels(image).get(VERSION_LABEL)
