"""PACS gateway: watches a PACS (or receives studies by C-STORE), runs the application on qualifying CT
studies and stores the SEG and SR back into the same study.

Modules: :mod:`gateway.config` (the typed configuration file), :mod:`gateway.rules` (which series
qualify), :mod:`gateway.jobs` (the persistent SQLite job queue), :mod:`gateway.orthanc` (a small
Orthanc REST/DICOMweb client), :mod:`gateway.orthanc_server` (start a local Orthanc), :mod:`gateway.worker`
(runs jobs), :mod:`gateway.watcher` (Orthanc's stable-study events), :mod:`gateway.scp` (C-STORE
receiver), :mod:`gateway.cli` (``python -m gateway``), :mod:`gateway.loadtest` (``python -m gateway.loadtest``:
many studies at once, studies per hour and peak memory).
"""

import hashlib

__all__ = ["study_key"]


def study_key(study_instance_uid: str) -> str:
    """Short, stable, non-identifying name of a study for logs and folder names (10 hex digits).

    Logs never carry patient identifiers; a StudyInstanceUID is not one, but the hash keeps lines short
    and the same key names the study's spool and work folders.
    """
    return hashlib.sha256(study_instance_uid.encode("ascii", "replace")).hexdigest()[:10]
