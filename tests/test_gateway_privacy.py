"""No patient identifiers in what the gateway writes or says.

Studies with planted, unique patient names, IDs and birth dates go through the gateway (its own process,
a real Orthanc, the quick stand-in application) along three paths: success; the application refusing
the input (CT images without pixel data: exit 2, failed at once); and the PACS refusing the results
(Lua filter), retried and then failed. Then every byte the gateway left is searched for the identifiers:
its log, the queue database (with its journal), the ``status`` output (text and JSON), the ``retry``
output, the jobs' error messages and the application logs left in the work folder.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from gateway.jobs import JobQueue
from gateway.loadtest import clone_study, template_study
from tests.gateway_support import (client_of, filter_script, finished_job, gateway_cli, standin_command,
                                   start_gateway, start_orthanc, stop_gateway, write_config)

pytestmark = pytest.mark.slow

# Unique values that occur nowhere else: each one is searched as it is and in its parts.
PLANTED = {
    "ok": ("Qzxvrandt^Wplomkeer", "PHI7741029385", "19230817"),
    "unreadable": ("Jjorbexil^Ykkaquon", "PHI5518320447", "19310229"),
    "refused": ("Vvemtoqz^Hhulaxip", "PHI9902736114", "19270405"),
}


def _needles() -> list[str]:
    needles = []
    for name, patient_id, birth in PLANTED.values():
        needles += [name, *name.split("^"), patient_id, birth, f"{birth[:4]}-{birth[4:6]}-{birth[6:]}"]
    return needles


def test_no_patient_identifier_reaches_logs_queue_status_or_errors(tmp_path: Path) -> None:
    template = template_study(tmp_path / "template")[::4]
    studies = {}
    for index, (label, (name, patient_id, birth)) in enumerate(PLANTED.items()):
        studies[label] = clone_study(template, tmp_path / label, index=index, patient_name=name,
                                     patient_id=patient_id, birth_date=birth)
    for path in studies["unreadable"][1]:  # CT images without pixel data: the application refuses them
        ds = pydicom.dcmread(path)
        del ds.PixelData
        ds.save_as(path, enforce_file_format=True)
    flags = tmp_path / "flags"
    for pacs in start_orthanc(tmp_path / "orthanc", lua_scripts=(filter_script(flags),)):
        config = write_config(tmp_path / "gateway.toml", pacs=pacs, model=tmp_path,
                              app={"command": standin_command(), "env": {"PYTHONDONTWRITEBYTECODE": "1"}},
                              queue={"workers": 1, "lease_s": 3.0, "backoff_base_s": 1.0, "max_attempts": 2})
        log, database = tmp_path / "gateway.log", tmp_path / "gateway.sqlite"
        gateway = start_gateway("watch", config, log)
        client = client_of(pacs)
        try:
            client.stow(*studies["ok"])
            client.stow(*studies["unreadable"])
            assert finished_job(database, studies["ok"][0], timeout_s=90, log=log).state == "done"
            assert finished_job(database, studies["unreadable"][0], timeout_s=90, log=log).state == "failed"
            (flags / "refuse-SEG").touch()
            client.stow(*studies["refused"])
            assert finished_job(database, studies["refused"][0], timeout_s=90, log=log).state == "failed"
        finally:
            assert stop_gateway(gateway) == 0

        with JobQueue(path=database) as queue:
            jobs = {job.study_uid: job for job in queue.jobs()}
        errors = [job.last_error or "" for job in jobs.values()]
        assert jobs[studies["unreadable"][0]].last_error == "no CT series in the input"
        assert "does not hold seg.dcm" in (jobs[studies["refused"][0]].last_error or "")
        outputs = []
        for arguments in (["status"], ["status", "--json"], ["retry", "--failed"], ["status"]):
            run = gateway_cli(*arguments, "-c", str(config))
            assert run.returncode == 0, run.stderr
            outputs.append(run.stdout + run.stderr)

    searched: dict[str, bytes] = {"gateway log": log.read_bytes()}
    searched.update({f"queue file {p.name}": p.read_bytes() for p in tmp_path.glob("gateway.sqlite*")})
    searched.update({f"command output {i}": text.encode() for i, text in enumerate(outputs)})
    searched.update({f"error of job {i}": text.encode() for i, text in enumerate(errors)})
    searched.update({f"work file {p.relative_to(tmp_path)}": p.read_bytes()
                     for p in (tmp_path / "work").rglob("*") if p.is_file() and p.suffix in (".log", ".err")})
    assert len(searched) >= 8 and len(searched["gateway log"]) > 1000
    for where, content in searched.items():
        for needle in _needles():
            assert needle.encode() not in content, f"{where} holds a patient identifier"
            assert needle.upper().encode() not in content.upper(), f"{where} holds a patient identifier"
