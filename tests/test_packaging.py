"""``pip install .`` works: the wheel, installed into a fresh virtual environment outside the checkout,
migrates a database, serves, and runs a tiny job through the API (what the Docker image does).

No network: the wheel is built with this environment's setuptools (``--no-build-isolation``) and
installed with ``--no-deps --no-index``; the fresh environment sees this one's third-party packages
through a ``.pth`` line.  A ``.pth`` line only appends a folder to ``sys.path`` (the ``.pth`` files *in*
that folder, such as an editable install's finder, are not run), so ``service`` and ``search`` can only
come from the wheel, and the test asserts they do.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", "*.egg-info", "build", "dist", "test-artifacts", "mixq-data", "mixq-out",
    ".mypy_cache", ".ruff_cache", ".pytest_cache", "*.db",
)
TINY_JOB = {
    "workload": "digits", "workload_options": {"pretrain_steps": 30}, "n_trials": 2, "qat_steps": 5,
    "seed_with_sensitivity": False, "reevaluate_front": 0,
}
JOB_TIMEOUT_S = 300.0


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout_s: float = 300) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
    assert done.returncode == 0, f"{cmd} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``bin/`` folder of a fresh venv holding only the mixq wheel."""
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    shutil.copytree(REPO_ROOT, src, ignore=NOT_SOURCES)  # the build writes build/ and *.egg-info beside it
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", str(tmp / "dist"), str(src)], cwd=tmp)
    (wheel,) = (tmp / "dist").glob("mixq-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp)
    site_packages = Path(_run([str(venv / "bin" / "python"), "-c",
                               "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp).strip())
    (site_packages / "project-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], cwd=tmp)
    return venv / "bin"


def _env(tmp: Path, db_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MIXQ_ALLOWED_HOSTS")}
    return {**env, "MIXQ_DATABASE_URL": db_url, "MIXQ_DATA_DIR": str(tmp), "OMP_NUM_THREADS": "1",
            "MIXQ_POLL_INTERVAL_S": "0.2"}


def test_wheel_ships_the_migrations_and_imports_outside_the_checkout(installed: Path, tmp_path: Path) -> None:
    where = _run([str(installed / "python"), "-c",
                  ("import search, service, service.db as db; print(service.__file__); print(search.__file__); "
                  "print(db._migrations_dir())")], cwd=tmp_path).split()
    for path in where:
        assert not Path(path).resolve().is_relative_to(REPO_ROOT), path
    assert Path(where[2], "versions", "0001_initial_schema.py").is_file()


@pytest.mark.slow  # about 70 s on 2 shared cores, most of it the tiny job
def test_installed_wheel_migrates_serves_and_runs_a_job(installed: Path, tmp_path: Path) -> None:
    env = _env(tmp_path, f"sqlite:///{tmp_path / 'mixq.db'}")
    assert "database at head" in _run([str(installed / "mixq"), "db", "upgrade"], cwd=tmp_path, env=env)
    port = _free_port()
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([str(installed / "mixq"), "serve", "--port", str(port), "--workers", "1"],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.3)
        assert httpx.get(base + "/", timeout=10).status_code == 200  # the dashboard's files are in the wheel
        created = httpx.post(base + "/v1/jobs", json=TINY_JOB, timeout=30)
        assert created.status_code == 201, created.text
        job_url = f"{base}/v1/jobs/{created.json()['id']}"
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while (job := httpx.get(job_url, timeout=10).json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.5)
        assert job["status"] == "succeeded", (job, (tmp_path / "serve.log").read_text())
        assert httpx.get(job_url + "/pareto", timeout=10).json()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
