"""Start and stop a local Orthanc (Debian packages ``orthanc`` and ``orthanc-dicomweb``).

Used by the gateway's tests and by anyone who wants a PACS on a workstation (e.g. to look at the results
in a viewer). The server gets a generated ``config.json`` in its own folder: HTTP on loopback only
(``RemoteAccessAllowed`` false), basic authentication on, the DICOMweb plugin, free ports, a short
``StableAge`` so that tests do not wait long. Orthanc 1.10 has no bind-address key: its DICOM port
listens on every interface, and accepts associations from any AE title only when told to
(``DicomAlwaysAllowStore``, on here, as a test PACS).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import requests

from operators.atomic_files import write_text_atomic

logger = logging.getLogger(__name__)

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")  # Debian's path
DICOMWEB_ROOT = "/dicom-web"


class OrthancUnavailableError(RuntimeError):
    """The Orthanc binary or its DICOMweb plugin is not installed, or the server did not start."""


def orthanc_binary() -> str | None:
    """Path of the ``Orthanc`` executable, or None when it is not installed."""
    return shutil.which("Orthanc") or (str(p) if (p := Path("/usr/sbin/Orthanc")).is_file() else None)


def free_port() -> int:
    """A TCP port that was free on loopback a moment ago."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that were free on loopback a moment ago.

    All are held open until each is known: a port asked for after the previous one was released can be
    the same one again (the kernel hands recently freed ports out anew), and a server given it for two
    listeners fails to start.
    """
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


@dataclass
class LocalOrthanc:
    """A local Orthanc process; use as a context manager (``with LocalOrthanc(folder=...) as pacs``).

    ``folder`` holds config.json, the database, the storage and ``orthanc.log``. ``modalities`` becomes
    ``DicomModalities`` (name -> [AET, host, port]) so that Orthanc can send studies to a receiver;
    ``lua_scripts`` become ``LuaScripts`` (e.g. a ``ReceivedInstanceFilter`` that refuses instances).
    The password is random unless given. Stopped and started again, the server keeps its ports,
    storage and database (and so its change feed).
    """

    folder: Path
    username: str = "pacs-admin"
    password: str = field(default_factory=lambda: os.urandom(12).hex())
    aet: str = "ORTHANC"
    stable_age_s: int = 2
    modalities: Mapping[str, tuple[str, str, int]] = field(default_factory=dict)
    http_port: int = 0
    dicom_port: int = 0
    lua_scripts: tuple[Path, ...] = ()
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        """REST root, e.g. ``http://127.0.0.1:8042``."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """DICOMweb root."""
        return self.url + DICOMWEB_ROOT

    @property
    def auth(self) -> tuple[str, str]:
        return (self.username, self.password)

    def config(self) -> dict[str, Any]:
        """The Orthanc configuration written to config.json."""
        return {
            "Name": "femur-lesion-test-pacs",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,  # HTTP from loopback only
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.username: self.password},
            "DicomAlwaysAllowStore": True,
            "DicomCheckCalledAet": False,
            "StableAge": self.stable_age_s,
            "DicomModalities": {name: list(entry) for name, entry in self.modalities.items()},
            "LuaScripts": [str(path) for path in self.lua_scripts],
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": DICOMWEB_ROOT + "/", "EnableWado": True,
                         "WadoRoot": "/wado", "Ssl": False, "StowMaxInstances": 0, "StowMaxSize": 0},
            "HttpTimeout": 60,
            "StorageCompression": False,
            "SaveJobs": False,
        }

    def start(self, *, timeout_s: float = 30.0) -> LocalOrthanc:
        """Write config.json and start Orthanc; returns when its REST API answers (or raises)."""
        binary = orthanc_binary()
        if binary is None:
            raise OrthancUnavailableError("the Orthanc binary is not installed (Debian package orthanc)")
        if not DICOMWEB_PLUGIN.is_file():
            raise OrthancUnavailableError(f"the DICOMweb plugin {DICOMWEB_PLUGIN} is not installed "
                                          "(Debian package orthanc-dicomweb)")
        self.folder.mkdir(parents=True, exist_ok=True)
        http_port, dicom_port = free_ports(2)
        self.http_port = self.http_port or http_port
        self.dicom_port = self.dicom_port or (dicom_port if dicom_port != self.http_port else free_port())
        config_path = write_text_atomic(self.folder / "config.json", json.dumps(self.config(), indent=2))
        log = open(self.folder / "orthanc.log", "ab")  # noqa: SIM115 - handed to the child process
        try:
            # DCMTK (Orthanc's DICOM layer) leaves Nagle's algorithm on unless TCP_NODELAY is set: every
            # C-STORE then waits for a delayed TCP acknowledgement, about 0.1 s per instance.
            env = {**os.environ, "TCP_NODELAY": "1"}
            self._process = subprocess.Popen([binary, str(config_path)], cwd=self.folder, stdout=log, env=env,
                                             stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise OrthancUnavailableError(f"Orthanc exited with status {self._process.returncode} at start; "
                                              f"see {self.folder / 'orthanc.log'}")
            try:
                if requests.get(self.url + "/system", auth=self.auth, timeout=2).status_code == 200:
                    logger.info("Orthanc up: HTTP %s, DICOM port %d", self.url, self.dicom_port)
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise OrthancUnavailableError(f"Orthanc did not answer within {timeout_s:.0f} s; see "
                                      f"{self.folder / 'orthanc.log'}")

    def stop(self, *, timeout_s: float = 15.0) -> None:
        """Stop Orthanc (SIGTERM, then SIGKILL after ``timeout_s`` seconds)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> LocalOrthanc:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
