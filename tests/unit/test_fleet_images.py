"""The pure parts of orchestrator.fleet.images (no Docker, no debootstrap)."""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import pytest

from orchestrator.errors import ImageNotFound, InputError
from orchestrator.fleet import images


@pytest.mark.parametrize(
    ("version", "fail", "tag"),
    [
        ("1", None, "smartcpd-fake:1"),
        ("2.4.1", None, "smartcpd-fake:2.4.1"),
        ("2", "health", "smartcpd-fake:2-fail-health"),
        ("2", "slow-start", "smartcpd-fake:2-fail-slow-start"),
    ],
)
def test_standin_tag(version: str, fail: str | None, tag: str) -> None:
    assert images.standin_tag(version, fail) == tag


@pytest.mark.parametrize(
    ("version", "fail", "message"),
    [
        ("", None, "not usable as an image tag"),
        ("1 2", None, "not usable as an image tag"),
        ("-1", None, "not usable as an image tag"),
        ("1/2", None, "not usable as an image tag"),
        ("1", "explode", "unknown fail mode"),
        ("9" * 120, "slow-start", "too long"),
    ],
)
def test_standin_tag_rejects(version: str, fail: str | None, message: str) -> None:
    with pytest.raises(InputError, match=message):
        images.standin_tag(version, fail)


def test_dockerfile_bakes_version_and_only_a_given_fail_mode() -> None:
    plain = images.standin_dockerfile("3")
    failing = images.standin_dockerfile("3", "health")

    assert plain.startswith(f"FROM {images.BASE_IMAGE}\n")
    assert 'LABEL org.opencontainers.image.version="3"' in plain
    assert "ENV SMARTCPD_VERSION=3 " in plain
    assert "SMARTCPD_FAIL" not in plain
    assert "ENV SMARTCPD_FAIL=health\n" in failing
    assert 'LABEL org.opencontainers.image.version="3"' in failing
    assert 'CMD ["python3", "/app/server.py", "serve"]' in plain
    assert "EXPOSE 8080" in plain


def test_context_is_a_tar_with_dockerfile_and_server() -> None:
    context = images.standin_context("1")

    with tarfile.open(fileobj=io.BytesIO(context)) as archive:
        names = archive.getnames()
        dockerfile = archive.extractfile("Dockerfile")
        server = archive.extractfile("server.py")
        assert dockerfile is not None and server is not None
        assert dockerfile.read().decode() == images.standin_dockerfile("1")
        assert server.read() == images.standin_server_source()
    assert sorted(names) == ["Dockerfile", "server.py"]


def test_source_hash_depends_on_the_base_not_on_the_version() -> None:
    digest = images.standin_source_hash("sha256:base")

    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert images.standin_source_hash("sha256:base") == digest
    assert images.standin_source_hash("sha256:other") != digest


def test_rootfs_tarball_is_named_by_recipe_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = images.base_recipe_hash()
    monkeypatch.setenv("CPDOPS_CACHE_DIR", str(tmp_path))

    assert re.fullmatch(r"[0-9a-f]{16}", recipe)
    assert images.cache_dir_from_env() == tmp_path
    assert (
        images.rootfs_tarball_path(tmp_path) == tmp_path / f"rootfs-bookworm-minbase-{recipe}.tar"
    )


def test_cache_dir_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CPDOPS_CACHE_DIR", raising=False)
    assert images.cache_dir_from_env() == Path("/var/cache/cpdops")


def test_cached_tarball_is_used_without_debootstrap(tmp_path: Path) -> None:
    tarball = images.rootfs_tarball_path(tmp_path)
    tarball.write_bytes(b"cached")

    assert images.ensure_rootfs_tarball(tmp_path) == tarball


def test_file_lock_excludes_a_second_holder(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    # flock locks belong to the open file, so a second open in this process must wait
    with (
        images._file_lock(lock),
        pytest.raises(ImageNotFound, match="waiting for lock"),
        images._file_lock(lock, timeout_s=0.2),
    ):
        pass
    with images._file_lock(lock, timeout_s=0.2):  # free again
        pass


def test_no_mounts_under_a_fresh_directory(tmp_path: Path) -> None:
    assert images._mounts_under(tmp_path) == []
    assert images._unescape_mountinfo(r"/a\040b") == "/a b"


DEB822 = """Types: deb
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        ([DEB822], "http://mirror.example/debian"),
        (
            ["# comment\ndeb [arch=amd64] http://m.example/debian bookworm main\n"],
            "http://m.example/debian",
        ),
        (["deb http://m.example/debian bullseye main\n"], None),
        (["Types: deb-src\nURIs: http://src.example\nSuites: bookworm\n"], None),
        ([], None),
    ],
)
def test_parse_apt_mirror(texts: list[str], expected: str | None) -> None:
    assert images.parse_apt_mirror(texts) == expected
