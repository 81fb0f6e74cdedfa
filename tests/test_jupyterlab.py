"""JupyterLab is the book's front end: start it headless, check it serves, stop it."""

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request

from conftest import ROOT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, token: str):
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status, response.read()


def test_jupyterlab_serves_the_book(tmp_path):
    port, token = _free_port(), secrets.token_hex(16)
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
         "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={ROOT}", "--ServerApp.open_browser=False",
         "--allow-root"],  # CI and containers run as root
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path)},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, body = _get(f"{base}/lab", token)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.5)
        assert status == 200 and b"JupyterLab" in body
        status, body = _get(f"{base}/api/contents/notebooks", token)
        listing = json.loads(body)
        assert status == 200 and listing["type"] == "directory"
        names = {item["name"] for item in listing["content"]}
        on_disk = {p.name for p in (ROOT / "notebooks").glob("*.ipynb")}
        assert on_disk <= names
    finally:
        server.terminate()
        server.wait(timeout=20)
