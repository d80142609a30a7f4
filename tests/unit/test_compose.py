"""docker-compose.yml is accepted by Debian's docker-compose (1.29) and wires the stack as
docs/deploy.md says. Skipped without docker-compose, unless CPDOPS_REQUIRE_PROMETHEUS=1 (CI)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from tests.dashboards import ROOT


def test_docker_compose_accepts_the_production_stack() -> None:
    compose = shutil.which("docker-compose")
    if compose is None:
        if os.environ.get("CPDOPS_REQUIRE_PROMETHEUS") == "1":
            pytest.fail("CPDOPS_REQUIRE_PROMETHEUS=1 but docker-compose is not installed")
        pytest.skip("docker-compose is not installed (Debian package docker-compose)")
    result = subprocess.run(
        [compose, "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True, text=True, check=False, cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("CPDOPS_")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    assert set(services) == {"cpdops", "postgres", "prometheus", "alertmanager", "grafana"}
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
        for port in service.get("ports", []):
            published = port if isinstance(port, str) else f"{port['host_ip']}:{port['published']}"
            assert published.startswith("127.0.0.1:"), f"{name} publishes {port} beyond localhost"
    cpdops = services["cpdops"]
    assert cpdops["build"]["args"]["BASE"] == "cpdops-base:bookworm"
    assert cpdops["depends_on"]["postgres"]["condition"] == "service_healthy"
    env = cpdops["environment"]
    assert env["CPDOPS_DATABASE_URL"].startswith("postgresql+psycopg2://")
    assert env["CPDOPS_ALERTMANAGER_SECRET_FILE"].startswith("/run/secrets/")
    mounts = {m["target"] if isinstance(m, dict) else m.split(":")[1] for m in cpdops["volumes"]}
    assert "/var/run/docker.sock" in mounts and "/etc/cpdops/certs" in mounts
    # Alertmanager reads the same secret file cpdops checks the intake with
    (am_secret,) = services["alertmanager"]["secrets"]
    assert am_secret["source"] == "alertmanager_secret"
    am = yaml.safe_load((ROOT / "dashboards/alertmanager/alertmanager.yml").read_text())
    hook = am["receivers"][0]["webhook_configs"][0]
    assert hook["http_config"]["authorization"]["credentials_file"] == (
        f"/run/secrets/{am_secret['target']}"
    )
    assert hook["url"] == "http://cpdops:8077/api/v1/intake/alertmanager"
    prometheus = yaml.safe_load((ROOT / "dashboards/prometheus/prometheus.yml").read_text())
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "cpdops"]
    assert job["static_configs"][0]["targets"] == ["cpdops:8077"]
