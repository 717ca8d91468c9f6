"""A real MONAI Label server with the femur lesion app, started on loopback for tests.

:class:`LabelServer` runs ``monailabel start_server --app label_app`` in its own process group (so that
the server's worker and background task processes stop with it), with ``label_app/pythonpath`` on
PYTHONPATH, the model on the CPU without test-time mirroring, and the log in a file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from gateway.orthanc_server import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
APP_DIR = REPO_ROOT / "label_app"
START_TIMEOUT_S = 180.0


class LabelServer:
    """``with LabelServer(studies, store, model, log) as server: requests.get(server.url + "/info/")``."""

    def __init__(self, studies: str, *, store: Path, model: Path, log: Path, env: dict[str, str] | None = None,
                 conf: dict[str, str] | None = None) -> None:
        self.studies = studies
        self.store = store
        self.model = model
        self.log = log
        self.env = env or {}
        self.conf = conf or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LabelServer:
        conf = {"models": str(self.store), "model": str(self.model), "device": "cpu", "mirroring": "false",
                **self.conf}
        # The installed ``monailabel`` script runs whichever ``python`` is first on PATH: use this one.
        command = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(APP_DIR), "--studies", self.studies,
                   "-i", "127.0.0.1", "-p", str(self.port)]
        for key, value in conf.items():
            command += ["--conf", key, value]
        env = {**os.environ, "PYTHONPATH": str(APP_DIR / "pythonpath"), "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",
               "PYTHONDONTWRITEBYTECODE": "1", **self.env}
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self._process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"MONAI Label server exited with {self._process.returncode}:\n{self.tail()}")
            try:
                if requests.get(self.url + "/info/", timeout=5).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(1.0)
        self.__exit__(None, None, None)
        raise RuntimeError(f"MONAI Label server did not answer in {START_TIMEOUT_S:.0f} s:\n{self.tail()}")

    def __exit__(self, *exc: Any) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait(timeout=10)
        self._process = None

    def tail(self, lines: int = 60) -> str:
        """The end of the server's log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        response = requests.get(self.url + path, timeout=kwargs.pop("timeout", 600), **kwargs)
        assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text}\n{self.tail()}"
        return response

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        response = requests.post(self.url + path, timeout=kwargs.pop("timeout", 900), **kwargs)
        assert response.status_code == 200, f"POST {path}: {response.status_code} {response.text}\n{self.tail()}"
        return response

    def put(self, path: str, **kwargs: Any) -> requests.Response:
        response = requests.put(self.url + path, timeout=kwargs.pop("timeout", 600), **kwargs)
        assert response.status_code == 200, f"PUT {path}: {response.status_code} {response.text}\n{self.tail()}"
        return response

    def wait_for_task(self, method: str, timeout_s: float = 900.0) -> dict[str, Any]:
        """Wait until the newest background task of ``method`` (``scoring``, ``train``) ends; its status."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            task = requests.get(f"{self.url}/{method}/", timeout=30).json()
            if isinstance(task, dict) and task.get("status") in ("DONE", "ERROR"):
                return task
            time.sleep(2.0)
        raise TimeoutError(f"{method} task did not end in {timeout_s:.0f} s:\n{self.tail()}")
