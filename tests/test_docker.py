"""docker/: what can be checked without a Docker engine.

* ``docker compose config`` validates the compose files (skipped when the compose plugin is absent);
* the compose file has the shape the deployment needs (health-checked PostgreSQL, a one-shot
  migration the others wait for, the API, two workers, PostgreSQL URL from the environment);
* every ``mixq`` command the compose file runs exists in the CLI with those arguments
  (``mixq <command> --help`` fails on an unknown command or option), and the migration command runs
  (outside Docker, on SQLite).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKER = REPO_ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
COMPOSE_GPU = DOCKER / "compose.gpu.yaml"


def _compose_plugin() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], check=False, capture_output=True).returncode == 0


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _mixq_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in _compose()["services"].items() if str(s.get("image", "")).startswith("mixq")}


@pytest.mark.skipif(not _compose_plugin(), reason="the docker compose plugin is not installed")
@pytest.mark.parametrize(
    "files", [pytest.param([COMPOSE], id="cpu"), pytest.param([COMPOSE, COMPOSE_GPU], id="gpu-override")]
)
def test_compose_config_validates(files: list[Path]) -> None:
    args = [arg for f in files for arg in ("-f", str(f))]
    # a clean environment: the file's ${...} defaults must suffice
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    result = subprocess.run(
        ["docker", "compose", *args, "config", "--quiet"], check=False, capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr


def test_compose_has_postgres_migration_api_and_two_workers() -> None:
    services = _compose()["services"]
    postgres = services["postgres"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])

    mixq = _mixq_services()
    assert {"migrate", "api", "worker"} <= set(mixq)
    assert mixq["migrate"]["command"] == ["db", "upgrade"]
    assert mixq["migrate"]["restart"] == "no"
    assert mixq["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker"):
        assert mixq[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert mixq["worker"]["deploy"]["replicas"] == 2
    assert mixq["api"]["environment"]["MIXQ_LOCAL_WORKERS"] == "0"  # searches run in the workers
    for name, service in mixq.items():
        env = service["environment"]
        assert env["MIXQ_DATABASE_URL"].startswith("postgresql+psycopg://"), name
        assert env["MIXQ_AUTH_REQUIRED"] == "true", f"{name}: the API binds 0.0.0.0, so auth is on"


def test_gpu_override_reserves_gpus_for_the_workers() -> None:
    worker = yaml.safe_load(COMPOSE_GPU.read_text())["services"]["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "/whl/cu" in worker["build"]["args"]["TORCH_INDEX_URL"]


def test_dockerfile_installs_cpu_torch_then_the_project() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text
    assert "ARG TORCH_VERSION=2.13.0" in text
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    assert text.index("torch==") < text.index("pip install /app")
    assert 'ENTRYPOINT ["mixq"]' in text


@pytest.mark.parametrize("service", ["migrate", "api", "worker"])
def test_compose_commands_exist_in_the_cli(service: str) -> None:
    """``mixq <command> --help`` exits 0 only for a known command whose options all exist."""
    from typer.testing import CliRunner

    from service.cli import app

    command = _mixq_services()[service]["command"]
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, f"mixq {' '.join(command)}: {result.output}"


def test_migration_entry_command_runs_outside_docker(tmp_path: Path) -> None:
    """The migrate service's command, through the installed console script, on an empty SQLite file."""
    mixq = Path(sys.executable).with_name("mixq")
    cli = [str(mixq)] if mixq.exists() else [sys.executable, "-m", "service.cli"]
    command = _mixq_services()["migrate"]["command"]
    env = {**os.environ, "MIXQ_DATABASE_URL": f"sqlite:///{tmp_path / 'mixq.db'}"}
    result = subprocess.run(
        [*cli, *command], check=False, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "mixq.db").stat().st_size > 0
