"""A real Prometheus and Alertmanager (Debian packages) on 127.0.0.1, run from the shipped
``dashboards/`` files with only what a test must change: targets, ports, intervals, secrets.

Each runs in its own process group and is stopped (TERM, then KILL) by ``stop()``; the
fixtures of the tests call it also when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.dashboards import ALERTMANAGER_CONFIG, PROMETHEUS_DIR, RULES_DIR
from tests.integration.fleet import free_port

REQUIRE_ENV = "CPDOPS_REQUIRE_PROMETHEUS"
PROMETHEUS_BIN = "/usr/bin/prometheus"
ALERTMANAGER_BIN = "/usr/bin/prometheus-alertmanager"
START_DEADLINE_S = 60.0


def binary(path: str, package: str, require_env: str = REQUIRE_ENV) -> str:
    """``path``, installed from Debian ``package`` when missing (as root, its system service
    never started); skipped without it, a failure when ``require_env`` is ``1``."""
    if not Path(path).exists() and os.geteuid() == 0 and shutil.which("apt-get"):
        # policy-rc.d 101: the package must not start its own system service
        guard = Path("/usr/sbin/policy-rc.d")
        ours = not guard.exists()
        if ours:
            guard.write_text("#!/bin/sh\nexit 101\n")
            guard.chmod(0o755)
        try:
            subprocess.run(
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
                check=False, capture_output=True,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            )  # fmt: skip
        finally:
            if ours:
                guard.unlink(missing_ok=True)
    if not Path(path).exists():
        reason = f"{path} is not installed (Debian package {package})"
        if os.environ.get(require_env) == "1":
            pytest.fail(f"{require_env}=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    return path


class Service:
    """A process on 127.0.0.1:``port`` that answers ``GET /-/ready`` when it is up."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.name, self.workdir = name, workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"{name}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def _start(self, command: Sequence[str]) -> None:
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                list(command), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + START_DEADLINE_S
        while not self.ready():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not come up:\n{self.tail()}")
            time.sleep(0.1)

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


class AlertmanagerService(Service):
    """``prometheus-alertmanager`` on 127.0.0.1, clustering off, state in ``workdir``: what
    every test that runs a real Alertmanager shares."""

    def __init__(self, binary_path: str, workdir: Path) -> None:
        super().__init__("alertmanager", workdir)
        self.binary = binary_path

    def run(self, config: Path, *extra: str) -> None:
        self._start(
            [
                self.binary,
                f"--config.file={config}",
                f"--storage.path={self.workdir / 'alertmanager-data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
                *extra,
            ]
        )

    def post_alerts(self, *alerts: dict[str, Any]) -> None:
        r = httpx.post(f"{self.url}/api/v2/alerts", json=list(alerts), timeout=10)
        assert r.status_code == 200, r.text

    def notifications(self, kind: str = "total") -> float:
        """``alertmanager_notifications[_failed]_total{integration="webhook"}``."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        name = f"alertmanager_notifications{'_failed' if kind == 'failed' else ''}_total"
        found = re.search(rf'^{name}\{{integration="webhook"\}} (\S+)$', text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0


class Alertmanager(AlertmanagerService):
    """dashboards/alertmanager/alertmanager.yml with the intake URL and secret of this test,
    and 1 s grouping so that a test does not wait minutes."""

    def __init__(self, binary_path: str, workdir: Path, intake_url: str, secret: str) -> None:
        super().__init__(binary_path, workdir)
        config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
        config["route"].update(group_wait="1s", group_interval="1s", repeat_interval="1m")
        secret_file = workdir / "alertmanager-secret"
        secret_file.write_text(secret)
        for receiver in config["receivers"]:
            for hook in receiver.get("webhook_configs", []):
                hook["url"] = intake_url
                hook["http_config"]["authorization"]["credentials_file"] = str(secret_file)
        path = workdir / "alertmanager.yml"
        path.write_text(yaml.safe_dump(config))
        self.run(path)


class Prometheus(Service):
    """dashboards/prometheus/prometheus.yml scraping one cpdops every second, with the shipped
    rules (their ``for:`` cut to 1 s) and the test's Alertmanager."""

    def __init__(self, binary_path: str, workdir: Path, cpdops: str, alertmanager: str) -> None:
        super().__init__("prometheus", workdir)
        config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "cpdops"]
        job["static_configs"] = [{"targets": [cpdops]}]
        job["scrape_timeout"] = "1s"
        config["scrape_configs"] = [job]  # nothing but cpdops: every series comes from it
        config["alerting"]["alertmanagers"] = [{"static_configs": [{"targets": [alertmanager]}]}]
        rules_dir = workdir / "rules"
        rules_dir.mkdir()
        for source in sorted(RULES_DIR.glob("*.yml")):
            rules: dict[str, Any] = yaml.safe_load(source.read_text())
            for group in rules["groups"]:
                for rule in group["rules"]:
                    if "for" in rule:
                        rule["for"] = "1s"
            (rules_dir / source.name).write_text(yaml.safe_dump(rules, allow_unicode=True))
        config["rule_files"] = [str(rules_dir / "*.yml")]
        path = workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self._start(
            [
                binary_path,
                f"--config.file={path}",
                f"--storage.tsdb.path={workdir / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ]
        )

    def api(self, path: str, **params: Any) -> Any:
        r = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", (path, params, r.text)
        return body["data"]
