"""``report.json`` and a short text summary of the femoral lesion findings.

``report.json`` holds the same facts as the DICOM SR (:mod:`operators.dicom_sr`), per lesion as well as
per femur, with the software and model versions and the rules the findings follow. It identifies the
study only by its DICOM UIDs: no patient name, ID, birth date or other patient attribute is ever copied
into it. ``summary.txt`` has one line per femur, as a radiologist would read it::

    Left femur: 2 lytic lesions, largest 3.1 ml, 24 mm, femoral neck, cortex breached.
    Right femur: no lesion.

or the single line ``No femur in view.``, followed by a ``Note:`` line for each remark of the femur
splitter on what it found and how (e.g. femurs found from their heads, in a view that ends at the
trochanters). Both files are written under a temporary name in the destination folder and renamed when
complete.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydicom import Dataset

from operators.atomic_files import write_text_atomic
from operators.dicom_seg import AlgorithmInfo
from operators.lesion_findings import UNKNOWN_LOCATION, FemurFindings, StudyFindings

logger = logging.getLogger(__name__)

__all__ = ["REPORT_FORMAT_VERSION", "build_report", "summary_lines", "write_findings_report"]

#: Version of the layout of report.json; raised when a field changes meaning or disappears.
REPORT_FORMAT_VERSION = 1

_SITE_WORDS = {
    "head": "femoral head",
    "neck": "femoral neck",
    "trochanteric": "trochanteric region",
    "shaft": "femoral shaft",
}


def summary_lines(findings: StudyFindings) -> list[str]:
    """One line per femur (left, then right), or ``["No femur in view."]``.

    A femur with lesions reads "<n> lytic lesion(s), largest <volume> ml, <diameter> mm" (the volume and
    largest diameter of the largest lesion; "longest <d> mm" is added when another lesion is longer), its
    sites, and "cortex breached" when a lesion reaches the outer surface of the bone, else "cortex intact".
    """
    if not findings.femur_in_view:
        return ["No femur in view."]
    return [f"{femur.label}: {_describe(femur)}." for femur in findings.femurs]


def _describe(femur: FemurFindings) -> str:
    if not femur.present:
        return "not in view"
    if not femur.lesions:
        return "no lesion"
    largest = femur.lesions[0]  # lesions come largest first
    n = femur.n_lesions
    size = f"{_ml(largest.volume_ml)}, {_mm(largest.largest_diameter_mm)}"
    parts = [f"{n} lytic lesion{'s' if n > 1 else ''}", f"largest {size}" if n > 1 else size]
    longest = femur.largest_diameter_mm or 0.0
    if _mm(longest) != _mm(largest.largest_diameter_mm):
        parts.append(f"longest {_mm(longest)}")
    known = [_SITE_WORDS[site] for site in femur.locations if site != UNKNOWN_LOCATION]
    if known:
        parts.append(_join(known))
    if UNKNOWN_LOCATION in femur.locations:
        parts.append("site not determined (proximal femur not in view)" if not known
                     else "other sites not determined")
    parts.append("cortex breached" if femur.cortical_involvement else "cortex intact")
    return ", ".join(parts)


def _ml(volume_ml: float) -> str:
    # Two significant decimals below 1 ml, so that small lesions do not read "0.0 ml".
    return f"{volume_ml:.2f} ml" if volume_ml < 1.0 else f"{volume_ml:.1f} ml"


def _mm(length_mm: float) -> str:
    return f"{length_mm:.1f} mm" if length_mm < 10.0 else f"{length_mm:.0f} mm"


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def build_report(
    *,
    findings: StudyFindings,
    algorithm: AlgorithmInfo,
    software_version: str,
    ct: Dataset | None = None,
    segmentation: Dataset | None = None,
    structured_report: Dataset | None = None,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """The content of ``report.json``.

    Parameters
    ----------
    findings:
        Findings of both femurs.
    algorithm:
        The lesion model (name, version, source, parameters).
    software_version:
        Version of this software.
    ct, segmentation, structured_report:
        A header dataset of the CT series, and the SEG and SR written for it, if any: only their UIDs
        (study, series, instance, frame of reference) are read.
    notes:
        Remarks on how the femurs were found (the femur splitter's notes), one line each; no patient
        identifiers.

    Returns
    -------
    dict
        JSON-serialisable.
    """
    if not isinstance(findings, StudyFindings):
        raise TypeError(f"findings must be StudyFindings, not {type(findings).__name__}")
    body = findings.to_dict()
    return {
        "format_version": REPORT_FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "software": {"name": "femur-lesion-seg", "version": software_version},
        "model": {
            "name": algorithm.name,
            "version": algorithm.version,
            "source": algorithm.source,
            "parameters": dict(algorithm.parameters) if algorithm.parameters else {},
        },
        "study": _uids(ct, ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")),
        "outputs": {
            "segmentation": _uids(segmentation, ("SeriesInstanceUID", "SOPInstanceUID")),
            "structured_report": _uids(structured_report, ("SeriesInstanceUID", "SOPInstanceUID")),
        },
        "femur_in_view": body["femur_in_view"],
        "summary": summary_lines(findings),
        "femurs": body["femurs"],
        "criteria": body["criteria"],
        "notes": [str(n) for n in notes],
    }


def _uids(dataset: Dataset | None, keywords: tuple[str, ...]) -> dict[str, str | None] | None:
    if dataset is None:
        return None
    # Only UIDs: nothing that identifies the patient leaves the DICOM files.
    values = {k: dataset.get(k) for k in keywords}
    return {_snake(k): str(v) if v else None for k, v in values.items()}


def _snake(keyword: str) -> str:
    return {
        "StudyInstanceUID": "study_instance_uid",
        "SeriesInstanceUID": "series_instance_uid",
        "SOPInstanceUID": "sop_instance_uid",
        "FrameOfReferenceUID": "frame_of_reference_uid",
    }[keyword]


def write_findings_report(
    folder: Path,
    *,
    findings: StudyFindings,
    algorithm: AlgorithmInfo,
    software_version: str,
    ct: Dataset | None = None,
    segmentation: Dataset | None = None,
    structured_report: Dataset | None = None,
    json_name: str = "report.json",
    text_name: str = "summary.txt",
    notes: Sequence[str] = (),
) -> tuple[Path, Path]:
    """Write ``report.json`` and ``summary.txt`` into ``folder`` (created if needed), each atomically.

    Parameters are those of :func:`build_report`; ``json_name`` and ``text_name`` name the files.

    Returns
    -------
    (pathlib.Path, pathlib.Path)
        The JSON report and the text summary.
    """
    report = build_report(findings=findings, algorithm=algorithm, software_version=software_version, ct=ct,
                          segmentation=segmentation, structured_report=structured_report, notes=notes)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    json_path = _write_text(folder / json_name, json.dumps(report, indent=2, allow_nan=False) + "\n")
    lines = [*report["summary"], *(f"Note: {note}." for note in report["notes"])]
    text_path = _write_text(folder / text_name, "\n".join(lines) + "\n")
    logger.info("wrote %s and %s", json_path.name, text_path.name)
    return json_path, text_path


def _write_text(path: Path, text: str) -> Path:
    return write_text_atomic(path, text)
