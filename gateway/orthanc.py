"""A small client of Orthanc's REST API and of its DICOMweb plugin (HTTP basic authentication).

What the gateway needs and nothing more: the change feed (stable studies), a study's series with the
headers the selection rules look at, downloading a series' instances into a folder, storing instances
into a study with STOW-RS, and counting a study's instances by modality.

Every HTTP or server problem is raised as :class:`PacsError` with a one-line message that names the
request (never patient data); callers decide whether to retry.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from gateway.rules import SeriesInfo, scan_extent_mm
from operators.atomic_files import atomic_output_path
from operators.safe_names import safe_name

logger = logging.getLogger(__name__)

# DICOM JSON tags (PS3.18 F.2) read from DICOMweb metadata.
_TAG_MODALITY = "00080060"
_TAG_IMAGE_TYPE = "00080008"
_TAG_BODY_PART = "00180015"
_TAG_SERIES_DESCRIPTION = "0008103E"
_TAG_IMAGE_POSITION = "00200032"
_TAG_IMAGE_ORIENTATION = "00200037"
_TAG_FAILED_SOP_SEQUENCE = "00081198"
_TAG_FAILURE_REASON = "00081197"
_TAG_REFERENCED_SOP_SEQUENCE = "00081199"
_TAG_REFERENCED_SOP_INSTANCE_UID = "00081155"
_TAG_SOP_INSTANCE_UID = "00080018"


class PacsError(Exception):
    """A request to the PACS failed (connection, HTTP status, unexpected answer)."""


@dataclass(frozen=True)
class Change:
    """One entry of Orthanc's change feed: ``seq`` (position), ``change_type`` (e.g. ``StableStudy``),
    ``resource_id`` (Orthanc's id of the study/series/instance)."""

    seq: int
    change_type: str
    resource_type: str
    resource_id: str


@dataclass(frozen=True)
class StudySeries:
    """A series of a study in Orthanc: its description for the rules and its instances' Orthanc ids."""

    orthanc_id: str
    info: SeriesInfo
    instance_ids: tuple[str, ...]


class OrthancClient:
    """Client of one Orthanc server.

    Parameters
    ----------
    url
        REST root, e.g. ``http://pacs:8042``.
    auth
        (user, password) for HTTP basic authentication, or None.
    dicomweb_root
        Path of the DICOMweb plugin under ``url``.
    timeout_s
        Per-request timeout (seconds).
    """

    def __init__(self, *, url: str, auth: tuple[str, str] | None = None, dicomweb_root: str = "/dicom-web",
                 timeout_s: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self.dicomweb_url = self.url + "/" + dicomweb_root.strip("/")
        self.timeout_s = timeout_s
        self._session = requests.Session()
        self._session.auth = auth

    def close(self) -> None:
        self._session.close()

    # ---------------------------------------------------------------------------------------------
    # REST

    def _request(self, method: str, url: str, *, what: str, **kwargs: Any) -> requests.Response:
        try:
            response = self._session.request(method, url, timeout=self.timeout_s, **kwargs)
        except requests.RequestException as error:
            raise PacsError(f"{what}: cannot reach the PACS at {self.url} ({type(error).__name__})") from None
        if response.status_code == 401:
            raise PacsError(f"{what}: the PACS refused the credentials (HTTP 401)")
        if response.status_code >= 400:
            raise PacsError(f"{what}: HTTP {response.status_code} {response.reason}")
        return response

    def _json(self, path: str, *, what: str, **params: Any) -> Any:
        response = self._request("GET", self.url + path, what=what, params=params or None)
        try:
            return response.json()
        except ValueError:
            raise PacsError(f"{what}: the answer is not JSON") from None

    def system(self) -> dict[str, Any]:
        """``GET /system`` (name, version, AET): checks that the server answers and the credentials work."""
        return dict(self._json("/system", what="system information"))

    def last_change(self) -> int:
        """Sequence number of the newest entry of the change feed."""
        return int(self._json("/changes", what="change feed", last="")["Last"])

    def changes(self, *, since: int, limit: int = 100) -> tuple[list[Change], int, bool]:
        """Entries after ``since``: (changes, last sequence number read, done = nothing more for now)."""
        answer = self._json("/changes", what="change feed", since=since, limit=limit)
        changes = [Change(seq=int(c["Seq"]), change_type=str(c["ChangeType"]),
                          resource_type=str(c.get("ResourceType", "")), resource_id=str(c["ID"]))
                   for c in answer.get("Changes", [])]
        return changes, int(answer.get("Last", since)), bool(answer.get("Done", True))

    def study_uid(self, study_id: str) -> str:
        """StudyInstanceUID of an Orthanc study id."""
        study = self._json(f"/studies/{study_id}", what=f"study {study_id}")
        return str(study["MainDicomTags"]["StudyInstanceUID"])

    def find_study(self, study_uid: str) -> str | None:
        """Orthanc id of the study with this StudyInstanceUID, or None."""
        response = self._request("POST", self.url + "/tools/lookup", what="study lookup", data=study_uid)
        for entry in response.json():
            if entry.get("Type") == "Study":
                return str(entry["ID"])
        return None

    def study_series(self, study_id: str, *, modalities: Iterable[str] | None = None) -> list[StudySeries]:
        """The series of a study. For series of ``modalities`` (all when None) the image headers are read
        through DICOMweb to fill in image type and scan length; other series are described by their
        main tags only."""
        wanted = None if modalities is None else {m.upper() for m in modalities}
        study_uid = self.study_uid(study_id)
        out: list[StudySeries] = []
        for series in self._json(f"/studies/{study_id}/series", what=f"series of study {study_id}"):
            tags = series.get("MainDicomTags", {})
            series_uid = str(tags.get("SeriesInstanceUID", ""))
            modality = str(tags.get("Modality", ""))
            instance_ids = tuple(str(i) for i in series.get("Instances", []))
            info = SeriesInfo(series_uid=series_uid, modality=modality, body_part=str(tags.get("BodyPartExamined", "")),
                              description=str(tags.get("SeriesDescription", "")), instances=len(instance_ids))
            if wanted is None or modality.upper() in wanted:
                info = self._series_details(study_uid, info)
            out.append(StudySeries(orthanc_id=str(series["ID"]), info=info, instance_ids=instance_ids))
        return out

    def _series_details(self, study_uid: str, info: SeriesInfo) -> SeriesInfo:
        """Image type and scan length of a series from its DICOMweb metadata."""
        response = self._request("GET", f"{self.dicomweb_url}/studies/{study_uid}/series/{info.series_uid}/metadata",
                                 what=f"metadata of series {info.series_uid}", headers={"Accept": "application/dicom+json"})
        instances = response.json()
        positions = [_values(i, _TAG_IMAGE_POSITION) for i in instances if _values(i, _TAG_IMAGE_POSITION)]
        orientation = next((_values(i, _TAG_IMAGE_ORIENTATION) for i in instances if _values(i, _TAG_IMAGE_ORIENTATION)),
                           None)
        first = instances[0] if instances else {}
        return SeriesInfo(series_uid=info.series_uid, modality=info.modality,
                          body_part=info.body_part or str(next(iter(_values(first, _TAG_BODY_PART)), "")),
                          description=info.description or str(next(iter(_values(first, _TAG_SERIES_DESCRIPTION)), "")),
                          image_types=tuple(str(v) for v in _values(first, _TAG_IMAGE_TYPE)),
                          instances=len(instances) or info.instances,
                          extent_mm=scan_extent_mm(positions, orientation))

    def download_instances(self, instance_ids: Sequence[str], folder: Path) -> list[Path]:
        """Write the DICOM files of these instances into ``folder`` (atomically, one file each)."""
        folder.mkdir(parents=True, exist_ok=True)
        paths: list[Path] = []
        for instance_id in instance_ids:
            response = self._request("GET", f"{self.url}/instances/{instance_id}/file", what=f"instance {instance_id}",
                                     stream=True)
            path = folder / f"{safe_name(instance_id)}.dcm"
            with atomic_output_path(path) as tmp, open(tmp, "wb") as out:
                for chunk in response.iter_content(chunk_size=1 << 20):
                    out.write(chunk)
            paths.append(path)
        return paths

    def instances_by_modality(self, study_uid: str) -> dict[str, list[str]]:
        """SOPInstanceUIDs of a study's instances, grouped by series modality (empty when no such study)."""
        study_id = self.find_study(study_uid)
        if study_id is None:
            return {}
        out: dict[str, list[str]] = {}
        for series in self._json(f"/studies/{study_id}/series", what=f"series of study {study_id}"):
            modality = str(series.get("MainDicomTags", {}).get("Modality", ""))
            for instance in self._json(f"/series/{series['ID']}/instances", what=f"instances of series {series['ID']}"):
                out.setdefault(modality, []).append(str(instance["MainDicomTags"]["SOPInstanceUID"]))
        return out

    # ---------------------------------------------------------------------------------------------
    # DICOMweb

    def has_instance(self, study_uid: str, sop_instance_uid: str) -> bool:
        """Whether the study holds the instance with this SOPInstanceUID (QIDO-RS)."""
        response = self._request("GET", f"{self.dicomweb_url}/studies/{study_uid}/instances",
                                 what="QIDO-RS instance query", params={"SOPInstanceUID": sop_instance_uid},
                                 headers={"Accept": "application/dicom+json"})
        if response.status_code == 204 or not response.content:
            return False
        try:
            return any(sop_instance_uid in _values(entry, _TAG_SOP_INSTANCE_UID) for entry in response.json())
        except (ValueError, TypeError, AttributeError):
            raise PacsError("QIDO-RS instance query: the answer is not DICOM JSON") from None

    def stow(self, study_uid: str, files: Sequence[Path]) -> list[str]:
        """Store DICOM files into a study with STOW-RS; returns the stored SOPInstanceUIDs.

        Storing an instance that the server already has (same SOPInstanceUID) does not create a second
        copy, which is what makes a repeated upload after a crash harmless.
        """
        boundary = uuid.uuid4().hex
        body = bytearray()
        for path in files:
            body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            body += path.read_bytes()
            body += b"\r\n"
        body += f"--{boundary}--\r\n".encode()
        headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                   "Accept": "application/dicom+json"}
        response = self._request("POST", f"{self.dicomweb_url}/studies/{study_uid}", what="STOW-RS", data=bytes(body),
                                 headers=headers)
        answer = response.json() if response.content else {}
        failed = _values(answer, _TAG_FAILED_SOP_SEQUENCE)
        if failed:
            reasons = sorted({str(v) for f in failed for v in _values(f, _TAG_FAILURE_REASON)})
            raise PacsError(f"STOW-RS: the PACS refused {len(failed)} of {len(files)} instance(s) "
                            f"(failure reason {', '.join(reasons)})")
        return [str(_values(ref, _TAG_REFERENCED_SOP_INSTANCE_UID)[0])
                for ref in _values(answer, _TAG_REFERENCED_SOP_SEQUENCE) if _values(ref, _TAG_REFERENCED_SOP_INSTANCE_UID)]


def _values(dataset: dict[str, Any], tag: str) -> list[Any]:
    """Values of a tag in a DICOM JSON dataset (empty when absent)."""
    return list(dataset.get(tag, {}).get("Value", []))


def client_from_settings(settings: Any) -> OrthancClient:
    """An :class:`OrthancClient` from :class:`gateway.config.OrthancSettings`."""
    auth = None if settings.username is None else (settings.username, settings.password or "")
    return OrthancClient(url=settings.url, auth=auth, dicomweb_root=settings.dicomweb_root, timeout_s=settings.timeout_s)


