"""The README's REST walk-through, run as written against a real ``mixq serve`` (SQLite, 1 worker)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from search import load_qconfig

ROOT = Path(__file__).resolve().parents[1]


def _walkthrough() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    block = next(b for b in blocks if "curl -s -X POST localhost:8000/v1/jobs" in b)
    return block


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_readme_rest_walkthrough_downloads_a_valid_qconfig(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "MIXQ_DATA_DIR": str(tmp_path / "data"), "MIXQ_PORT": str(port), "MIXQ_LOCAL_WORKERS": "1"}
    server = subprocess.Popen([sys.executable, "-m", "service.cli", "serve"], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail("mixq serve did not become ready")
        script = "set -euo pipefail\n" + _walkthrough().replace("localhost:8000", f"127.0.0.1:{port}")
        work = tmp_path / "client"
        work.mkdir()
        done = subprocess.run(["bash", "-c", script], cwd=work, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        files = list(work.glob("*.json"))
        assert len(files) == 1, done.stdout[-2000:]
        cfg = load_qconfig(files[0])
        assert cfg.provenance.workload == "digits"
        assert files[0].name.startswith("mixq-")  # the Content-Disposition file name was used
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
