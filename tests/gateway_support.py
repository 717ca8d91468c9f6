"""Helpers of the gateway tests: a real Orthanc per test, a small synthetic study, the gateway's config
and process, and reading back what the PACS holds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.jobs import Job, JobQueue
from gateway.orthanc import OrthancClient
from gateway.orthanc_server import DICOMWEB_PLUGIN, LocalOrthanc, orthanc_binary
from gateway.store import LOCAL_PEER_TIMEOUT_S, CStoreStore

REPO_ROOT = Path(__file__).resolve().parents[1]
GATEWAY_AET = "FEMURGW"


def require_orthanc() -> None:
    """Skip the calling test when Orthanc or its DICOMweb plugin is not installed."""
    if orthanc_binary() is None:
        pytest.skip("the Orthanc binary is not installed (Debian package orthanc; `make system-deps`)")
    if not DICOMWEB_PLUGIN.is_file():
        pytest.skip(f"{DICOMWEB_PLUGIN} is missing (Debian package orthanc-dicomweb; `make system-deps`)")


def start_orthanc(folder: Path, **options: Any) -> Iterator[LocalOrthanc]:
    """A real Orthanc on loopback with authentication on (generator for a fixture)."""
    require_orthanc()
    with LocalOrthanc(folder=folder, stable_age_s=1, **options) as pacs:
        yield pacs


def client_of(pacs: LocalOrthanc) -> OrthancClient:
    return OrthancClient(url=pacs.url, auth=pacs.auth, timeout_s=60)


def send_study(pacs: LocalOrthanc, study: Path | Sequence[Path]) -> int:
    """C-STORE every file of a study folder (or these files) to Orthanc, as a modality would; returns the
    number sent."""
    files = sorted(p for p in study.rglob("*") if p.is_file()) if isinstance(study, Path) else list(study)
    store = CStoreStore(host="127.0.0.1", port=pacs.dicom_port, aet=pacs.aet, calling_aet="CT_SCANNER",
                        timeout_s=LOCAL_PEER_TIMEOUT_S)
    return len(store.store("", files))


def write_config(path: Path, *, pacs: LocalOrthanc, model: Path, **sections: Mapping[str, Any]) -> Path:
    """A gateway configuration (TOML) for tests: fast polling and leases, the app on CPU without mirroring."""
    values: dict[str, dict[str, Any]] = {
        "orthanc": {"url": pacs.url, "username": pacs.username, "password": pacs.password},
        "watch": {"poll_interval_s": 0.5, "start_at": "beginning"},
        "receive": {"aet": GATEWAY_AET, "host": "127.0.0.1", "port": 0, "quiet_s": 1.0},
        "results": {"method": "stow", "host": "127.0.0.1", "port": pacs.dicom_port, "aet": pacs.aet},
        "app": {"model": str(model), "timeout_s": 600, "device": "cpu", "mirroring": False,
                "env": {"PYTHONDONTWRITEBYTECODE": "1"}},
        "queue": {"workers": 1, "lease_s": 3.0, "backoff_base_s": 2.0, "max_attempts": 3},
    }
    for name, extra in sections.items():
        values.setdefault(name, {}).update(extra)
    lines: list[str] = []
    for name, table in values.items():
        lines.append(f"[{name}]")
        nested = {k: v for k, v in table.items() if isinstance(v, dict)}
        for key, value in table.items():
            if key not in nested:
                lines.append(f"{key} = {_toml(value)}")
        for key, sub in nested.items():
            lines.append(f"[{name}.{key}]")
            lines.extend(f"{k} = {_toml(v)}" for k, v in sub.items())
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def start_gateway(command: str, config: Path, log: Path) -> subprocess.Popen[bytes]:
    """``python -m gateway <command> -c config`` in its own process, its log (stderr) appended to ``log``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOLOSCAN_")}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "gateway", command, "-c", str(config)], cwd=REPO_ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT)


def stop_gateway(process: subprocess.Popen[bytes], *, timeout_s: float = 60) -> int:
    """SIGTERM and wait; returns the exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return int(process.returncode)


def wait_for(condition: Callable[[], Any], *, timeout_s: float, what: str, log: Path | None = None,
             interval_s: float = 0.5) -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` (and the log) on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    details = "" if log is None or not log.is_file() else "\n--- gateway log (end)\n" + log.read_text()[-6000:]
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}{details}")


# ------------------------------------------------------------------------------------------------
# Fault, load and privacy tests: a quick stand-in application, small studies, what the PACS holds


STANDIN_APP = REPO_ROOT / "tests" / "standin_app.py"


def standin_command(*prefix: str) -> list[str]:
    """The stand-in application (tests/standin_app.py) as ``app.command``, after ``prefix`` (e.g. prlimit)."""
    return [*prefix, sys.executable, str(STANDIN_APP)]


def filter_script(folder: Path) -> Path:
    """An Orthanc Lua ``ReceivedInstanceFilter`` steered by flag files in ``folder``: while
    ``hold-<Modality>`` exists, instances of that modality wait; while ``refuse-<Modality>`` exists, they
    are refused. Orthanc's DICOMweb plugin still answers such a STOW-RS with success."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "filter.lua"
    script.write_text(f"""
local folder = {json.dumps(str(folder) + "/")}
local function exists(name)
  local f = io.open(folder .. name, "r")
  if f then f:close() return true end
  return false
end
function ReceivedInstanceFilter(dicom, origin, info)
  local modality = dicom["Modality"] or ""
  while exists("hold-" .. modality) do os.execute("sleep 0.1") end
  return not exists("refuse-" .. modality)
end
""")
    return script


def job_of(database: Path, study_uid: str) -> Job | None:
    """The queue's job for a study (a fresh connection each call), or None."""
    with JobQueue(path=database) as queue:
        return queue.find(study_uid)


def finished_job(database: Path, study_uid: str, *, timeout_s: float, log: Path | None = None) -> Job:
    """Wait until the study's job is done or failed; returns it."""
    return wait_for(lambda: (j := job_of(database, study_uid)) is not None and j.state in ("done", "failed") and j,
                    timeout_s=timeout_s, what="the job to finish", log=log)


def results_in_pacs(pacs: LocalOrthanc, study_uid: str) -> dict[str, list[str]]:
    """SOPInstanceUIDs of the study's SEG and SR instances in Orthanc."""
    by_modality = client_of(pacs).instances_by_modality(study_uid)
    return {m: by_modality.get(m, []) for m in ("SEG", "SR")}


def processes_matching(marker: str) -> list[int]:
    """Ids of live processes whose command line contains ``marker``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def gateway_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m gateway ARGS`` to the end; its output as text."""
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60)
