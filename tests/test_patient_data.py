"""Patient data in logs and outputs, in this process (the application end to end: tests/test_bad_input_app.py).

Headers with planted identifiers, some of them odd as real archives have them (a name without a caret,
a birth date as ``23.05.1907``, a sex of ``U``, a time with letters, no AccessionNumber): the SEG and SR
are still built, carry the identity as DICOM requires (odd values emptied, never invented), and no log
record or warning at any level carries an identifier.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from operators.dicom_seg import AlgorithmInfo, SegmentMask, SegmentSpec, build_segmentation
from operators.dicom_sr import build_findings_sr
from operators.lesion_findings import FemurFindings, StudyFindings
from operators.patient_identity import identity_for_copy
from operators.series_volume import load_study
from synthetic_ct.bad_input import write_series
from tests.bad_input_support import find_tokens

ALGORITHM = AlgorithmInfo(name="femur-lytic-lesion-nnunet", version="test-1", parameters={})
NAME = "PLANTNAME QXW7TOKEN"  # no caret: highdicom warns about it, quoting the name
PATIENT_ID = "PID-QXW7TOKEN"
OTHER_ID = "OPID-QXW7TOKEN"
TOKENS = ("PLANTNAME", "QXW7TOKEN", "1907", "noon")


def _study(folder: Path, **patient: str) -> Path:
    identity = {"PatientName": NAME, "PatientID": PATIENT_ID, "OtherPatientIDs": OTHER_ID,
                "PatientBirthDate": "19070523", "AccessionNumber": "ACC-QXW7TOKEN", **patient}

    def odd(ds: pydicom.Dataset, k: int) -> None:
        for keyword, value in identity.items():
            if value is None:
                delattr(ds, keyword)
            else:
                # The raw form, as a file holds it: pydicom would refuse to set some of these values.
                ds[keyword].value = value

    write_series(folder, per_slice=odd)
    return folder


def _build(loaded):  # noqa: ANN001, ANN202
    shape = loaded.volume.shape
    left, right, lesion = (np.zeros(shape, bool) for _ in range(3))
    left[1:11, 4:28, 17:30] = True
    right[1:11, 4:28, 2:15] = True
    lesion[3:7, 8:12, 20:24] = True
    seg = build_segmentation(
        source_datasets=loaded.source_datasets, ct=loaded.volume, algorithm=ALGORITHM,
        segments=[SegmentMask(SegmentSpec.femur("left"), left), SegmentMask(SegmentSpec.femur("right"), right),
                  SegmentMask(SegmentSpec.lytic_lesion("left"), lesion)])
    findings = StudyFindings(
        left=FemurFindings(side="left", present=True, femur_volume_ml=30.0, proximal_femur_in_view=True),
        right=FemurFindings(side="right", present=True, femur_volume_ml=30.0, proximal_femur_in_view=True))
    sr = build_findings_sr(findings=findings, source_datasets=loaded.source_datasets, algorithm=ALGORITHM,
                           segmentation=seg)
    return seg, sr


def test_odd_identity_values_neither_stop_the_outputs_nor_reach_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _study(tmp_path / "ct", PatientBirthDate="23.05.1907", PatientSex="U", StudyTime="noon",
                    AccessionNumber=None)
    caplog.clear()  # writing the odd values warned; what counts is reading and building
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_study(folder)
        seg, sr = _build(loaded)
    logged = caplog.text + "\n".join(str(w.message) for w in caught)
    assert find_tokens(logged, TOKENS) == [], "patient data in the log or a warning"
    assert "PatientBirthDate of the CT is not a valid DICOM value" in caplog.text

    for output in (seg, sr):
        assert str(output.PatientName) == NAME and output.PatientID == PATIENT_ID  # carried, as DICOM requires
        assert output.PatientBirthDate in ("", None) and output.PatientSex in ("", None)  # emptied, not invented
        assert "AccessionNumber" in output and not output.AccessionNumber
    # The loader's headers are left as the files have them.
    header = loaded.source_datasets[0]
    assert "AccessionNumber" not in header
    assert header.get_item("PatientBirthDate").value in (b"23.05.1907", "23.05.1907")


def test_valid_identity_is_carried_unchanged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    loaded = load_study(_study(tmp_path / "ct"))
    header = loaded.source_datasets[0]
    assert identity_for_copy(header) is header  # nothing to repair: no copy
    caplog.set_level(logging.DEBUG)
    seg, sr = _build(loaded)
    assert find_tokens(caplog.text, TOKENS) == []
    for output in (seg, sr):
        assert output.PatientBirthDate == "19070523" and output.AccessionNumber == "ACC-QXW7TOKEN"
