#!/usr/bin/env python3
"""Copy cpdops's runtime dependencies, as installed in this Python environment, into a
directory that the Dockerfile copies into the image (``build/image-deps`` by default).

No registry is needed: the image gets exactly the versions of the environment the tests
passed with (the venv of scripts/setup.sh). Only the distributions that the ``smartcpd-ops``
project requires at run time (not its dev extras) are copied, each with its ``.dist-info``.
The environment's Python version (major.minor) is written to ``.python-version``; the image
build refuses a base image whose python3 differs (compiled extensions are per version).

    .venv/bin/python scripts/image_deps.py [TARGET]
"""

from __future__ import annotations

import shutil
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = "smartcpd-ops"


def runtime_distributions(project: str = PROJECT) -> list[metadata.Distribution]:
    """``project``'s run-time requirements, transitively, as installed here."""
    environment = {**default_environment(), "extra": ""}
    seen: dict[str, metadata.Distribution] = {}
    todo = [Requirement(r) for r in metadata.requires(project) or []]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate(environment):
            continue
        key = canonicalize_name(req.name)
        if key in seen:
            continue
        dist = metadata.distribution(req.name)  # PackageNotFoundError: not installed here
        seen[key] = dist
        todo += [Requirement(r) for r in dist.requires or []]
    return sorted(seen.values(), key=lambda d: canonicalize_name(d.metadata["Name"]))


def copy_distribution(dist: metadata.Distribution, target: Path) -> int:
    """Copy the files of ``dist`` that live in its site-packages; how many."""
    root = Path(str(dist.locate_file(""))).resolve()
    copied = 0
    for entry in dist.files or []:
        source = Path(str(dist.locate_file(entry))).resolve()
        if root not in source.parents or "__pycache__" in source.parts or not source.is_file():
            continue  # console scripts (../../bin), byte code: not needed
        destination = target / source.relative_to(root)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
        copied += 1
    return copied


def main(argv: list[str]) -> int:
    target = Path(argv[1] if len(argv) > 1 else "build/image-deps")
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for dist in runtime_distributions():
        n = copy_distribution(dist, target)
        print(f"{dist.metadata['Name']} {dist.version}: {n} files", file=sys.stderr)
    (target / ".python-version").write_text("%d.%d\n" % sys.version_info[:2])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
