"""The README's service walk-through (``mixq jobs ...``), run as written against a real ``mixq serve`` (SQLite,
1 worker)."""

from __future__ import annotations

import os
import re
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
    return next(b for b in blocks if "mixq jobs submit" in b)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_readme_walkthrough_downloads_qconfig_weights_and_onnx(tmp_path: Path) -> None:
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
        # as written: `mixq` is the one beside this Python (the venv's); the server is named by MIXQ_SERVER
        script = "set -euo pipefail\n" + _walkthrough()
        work = tmp_path / "client"
        work.mkdir()
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        done = subprocess.run(["bash", "-c", script], cwd=work, capture_output=True, text=True, timeout=900,
                              env={**os.environ, "PATH": path, "MIXQ_SERVER": f"http://127.0.0.1:{port}"}, check=False)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        files = {kind: sorted((work / "job-1" / kind).iterdir()) for kind in ("qconfig", "weights", "onnx")}
        assert files["qconfig"], done.stdout[-2000:]
        stems = {kind: [p.stem for p in paths] for kind, paths in files.items()}
        assert stems["qconfig"] == stems["weights"] == stems["onnx"]  # one name scheme
        for path_ in files["qconfig"]:
            cfg = load_qconfig(path_)
            assert cfg.provenance.workload == "digits" and cfg.on_front is True
            assert re.fullmatch(r"trial\d{4}-[a-z0-9x-]+\.json", path_.name)  # the server's file name
        assert "succeeded" in done.stdout
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
