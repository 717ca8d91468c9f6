"""DICOM SR of the lesion findings (content, references, dciodvfy) and report.json / summary.txt."""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from operators.dicom_seg import AlgorithmInfo, SegmentMask, SegmentSpec, build_segmentation, write_dataset
from operators.dicom_sr import build_findings_sr, read_findings_sr, write_findings_sr
from operators.errors import InputError
from operators.findings_report import build_report, summary_lines, write_findings_report
from operators.lesion_findings import FemurFindings, LesionFinding, StudyFindings, study_findings
from operators.series_volume import load_study
from tests.dicom_factory import write_ct_series

ALGORITHM = AlgorithmInfo(name="femur-lytic-lesion-nnunet", version="test-1", parameters={"folds": "0,1"})
# What tests/dicom_factory.py writes as the (synthetic) patient.
PATIENT_NAME, PATIENT_ID = "Synthetic^Loader", "SYNTH-0001"
VOXEL_MM3 = 0.8 * 0.7 * 1.5  # pixel spacing (0.8, 0.7) mm, slices 1.5 mm apart


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ct")
    written = write_ct_series(folder, n_slices=12, rows=20, columns=24)
    return written, load_study(folder)


def _masks(shape):
    """Two block femurs; the left (high column index = patient left in this head-first series) has a deep
    4x4x4 lesion and a 3x4x4 lesion on its surface, the right none."""
    left = np.zeros(shape, dtype=bool)
    left[1:11, 3:17, 13:23] = True
    right = np.zeros(shape, dtype=bool)
    right[1:11, 3:17, 1:11] = True
    lesion = np.zeros(shape, dtype=bool)
    lesion[3:7, 6:10, 16:20] = True   # 64 voxels, two bone voxels all round
    lesion[7:10, 13:17, 19:23] = True  # 48 voxels, on the femur's surface
    return left, right, lesion


def _seg(loaded, left, right, lesion):
    return build_segmentation(
        source_datasets=loaded.source_datasets,
        ct=loaded.volume,
        segments=[
            SegmentMask(SegmentSpec.femur("left"), left),
            SegmentMask(SegmentSpec.femur("right"), right),
            SegmentMask(SegmentSpec.lytic_lesion("left"), lesion),
        ],
        algorithm=ALGORITHM,
    )


def _dciodvfy_errors(path) -> list[str]:
    result = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def _hand_findings() -> StudyFindings:
    lesions = (
        LesionFinding(1, 3.1, 24.2, (10.0, 0.0, -50.0), "neck", True, 3100),
        LesionFinding(2, 0.4, 27.0, (12.0, 0.0, -150.0), "shaft", False, 400),
        LesionFinding(3, 0.2, 7.0, (14.0, 0.0, -40.0), "head", False, 200),
    )
    left = FemurFindings(side="left", present=True, femur_volume_ml=350.0, lesions=lesions,
                         proximal_femur_in_view=True)
    right = FemurFindings(side="right", present=True, femur_volume_ml=340.0, proximal_femur_in_view=True)
    return StudyFindings(left=left, right=right)


# --------------------------------------------------------------------------------------------------
# SR
# --------------------------------------------------------------------------------------------------


def test_sr_from_masks_carries_the_numbers_and_references_the_seg(ct, tmp_path, caplog):
    written, loaded = ct
    left, right, lesion = _masks(loaded.volume.spatial_shape)
    seg = _seg(loaded, left, right, lesion)
    with caplog.at_level(logging.DEBUG):
        findings = study_findings(grid=loaded.volume, femur_masks={"left": left, "right": right},
                                  lesion_masks={"left": lesion})
        sr = build_findings_sr(findings=findings, source_datasets=loaded.source_datasets,
                               algorithm=ALGORITHM, segmentation=seg)
        path = write_findings_sr(sr, tmp_path / "out" / "sr.dcm")
    assert sorted(p.name for p in path.parent.iterdir()) == ["sr.dcm"], "temporary files left behind"
    assert PATIENT_NAME not in caplog.text and PATIENT_ID not in caplog.text

    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert ds.Modality == "SR"
    # Same patient and study, a new series.
    assert (str(ds.PatientName), ds.PatientID) == (PATIENT_NAME, PATIENT_ID)
    assert ds.StudyInstanceUID == written.study_uid
    assert ds.SeriesInstanceUID not in (written.series_uid, seg.SeriesInstanceUID)
    # Every CT instance and the SEG are evidence.
    evidence = _evidence_uids(ds)
    assert evidence == set(written.sop_uids) | {seg.SOPInstanceUID}
    # The observer is the algorithm, a device.
    observer = {str(i.ConceptNameCodeSequence[0].CodeMeaning): i for i in ds.ContentSequence}
    assert observer["Observer Type"].ConceptCodeSequence[0].CodeValue == "121007"  # Device
    assert observer["Device Observer Name"].TextValue == ALGORITHM.name
    assert observer["Procedure reported"].ConceptCodeSequence[0].CodeValue == "25045-6"

    content = read_findings_sr(ds)
    assert set(content) == {"Left femur", "Right femur"}
    left_group = content["Left femur"]
    assert left_group["laterality"] == "Left"
    assert left_group["measurements"]["Number of lesions"] == (2.0, "{lesions}")
    total, largest = 112 * VOXEL_MM3 / 1000, 64 * VOXEL_MM3 / 1000
    assert left_group["measurements"]["Volume (Total)"] == (pytest.approx(total, abs=5e-4), "cm3")
    assert left_group["measurements"]["Volume (Maximum)"] == (pytest.approx(largest, abs=5e-4), "cm3")
    diagonal = math.sqrt((3 * 1.5) ** 2 + (3 * 0.8) ** 2 + (3 * 0.7) ** 2)  # the 4x4x4 lesion's
    assert left_group["measurements"]["Diameter (Maximum)"] == (pytest.approx(diagonal, abs=0.05), "mm")
    assert left_group["evaluations"]["Lesion"] == ["Present"]
    assert left_group["evaluations"]["Cortical involvement"] == ["Present"]
    assert left_group["evaluations"]["Site involvement"] == ["Unknown"]  # block femurs have no head
    seg_numbers = {str(s.SegmentLabel): int(s.SegmentNumber) for s in seg.SegmentSequence}
    assert left_group["referenced_segment"] == seg_numbers["Lytic lesion, left femur"]

    right_group = content["Right femur"]
    assert right_group["laterality"] == "Right"
    assert right_group["measurements"] == {"Number of lesions": (0.0, "{lesions}")}
    assert right_group["evaluations"]["Lesion"] == ["Absent"]
    assert right_group["referenced_segment"] == seg_numbers["Right femur"]

    # The referenced segment's source images are CT instances.
    refs = [item for item in _walk(ds) if item.get("ValueType") == "IMAGE"
            and item.ConceptNameCodeSequence[0].CodeValue == "121233"]  # Source image for segmentation
    assert refs and {r.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for r in refs} <= set(written.sop_uids)


def _evidence_uids(ds) -> set[str]:
    return {
        item.ReferencedSOPInstanceUID
        for study in ds.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }


def _walk(ds):
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _walk(item)


def test_sr_sites_and_texts_from_hand_built_findings(ct, tmp_path):
    _, loaded = ct
    sr = build_findings_sr(findings=_hand_findings(), source_datasets=loaded.source_datasets, algorithm=ALGORITHM)
    content = read_findings_sr(write_dataset(sr, tmp_path / "sr.dcm"))
    left = content["Left femur"]
    assert left["referenced_segment"] is None  # no SEG: TID 1501 groups
    assert left["measurements"]["Number of lesions"] == (3.0, "{lesions}")
    assert left["measurements"]["Volume (Total)"] == (pytest.approx(3.7), "cm3")
    assert left["measurements"]["Volume (Maximum)"] == (pytest.approx(3.1), "cm3")
    assert left["measurements"]["Diameter (Maximum)"] == (pytest.approx(27.0), "mm")
    assert sorted(left["evaluations"]["Site involvement"]) == ["Femoral neck", "Head of Femur", "Shaft of Femur"]
    assert left["evaluations"]["Cortical involvement"] == ["Present"]
    assert content["Right femur"]["evaluations"]["Lesion"] == ["Absent"]


def test_sr_no_femur_in_view_references_the_ct_only(ct, tmp_path):
    written, loaded = ct
    findings = study_findings(grid=loaded.volume, femur_masks={})
    sr = build_findings_sr(findings=findings, source_datasets=loaded.source_datasets, algorithm=ALGORITHM)
    path = write_dataset(sr, tmp_path / "sr.dcm")
    ds = pydicom.dcmread(path)
    content = read_findings_sr(ds)
    for side in ("Left femur", "Right femur"):
        assert content[side]["evaluations"] == {"Femur": ["Not visualized"]}
        assert content[side]["measurements"] == {}
    evidence = _evidence_uids(ds)
    assert evidence == set(written.sop_uids)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian dicom3tools) not installed")
def test_sr_passes_dciodvfy(ct, tmp_path):
    _, loaded = ct
    left, right, lesion = _masks(loaded.volume.spatial_shape)
    seg = _seg(loaded, left, right, lesion)
    cases = {
        "with_seg": (study_findings(grid=loaded.volume, femur_masks={"left": left, "right": right},
                                    lesion_masks=lesion), seg),
        "hand_built": (_hand_findings(), None),
        "no_femur": (study_findings(grid=loaded.volume, femur_masks={}), None),
    }
    for name, (findings, segmentation) in cases.items():
        sr = build_findings_sr(findings=findings, source_datasets=loaded.source_datasets, algorithm=ALGORITHM,
                               segmentation=segmentation)
        errors = _dciodvfy_errors(write_dataset(sr, tmp_path / f"{name}.dcm"))
        assert not errors, f"{name}:\n" + "\n".join(errors)


def test_sr_input_errors(ct, tmp_path):
    _, loaded = ct
    findings = _hand_findings()
    headers = [copy.deepcopy(ds) for ds in loaded.source_datasets]
    headers[0].StudyInstanceUID = ""
    with pytest.raises(InputError, match="StudyInstanceUID"):
        build_findings_sr(findings=findings, source_datasets=headers, algorithm=ALGORITHM)
    with pytest.raises(ValueError, match="source CT"):
        build_findings_sr(findings=findings, source_datasets=[], algorithm=ALGORITHM)
    # A SEG of another study.
    other = write_ct_series(tmp_path / "other", n_slices=12, rows=20, columns=24)
    other_loaded = load_study(tmp_path / "other")
    seg = _seg(other_loaded, *_masks(other_loaded.volume.spatial_shape))
    assert other.study_uid != loaded.source_datasets[0].StudyInstanceUID
    with pytest.raises(InputError, match="another study"):
        build_findings_sr(findings=findings, source_datasets=loaded.source_datasets, algorithm=ALGORITHM,
                          segmentation=seg)


# --------------------------------------------------------------------------------------------------
# report.json and summary.txt
# --------------------------------------------------------------------------------------------------


def test_summary_lines_read_like_a_report():
    assert summary_lines(_hand_findings()) == [
        "Left femur: 3 lytic lesions, largest 3.1 ml, 24 mm, longest 27 mm, "
        "femoral head, femoral neck and femoral shaft, cortex breached.",
        "Right femur: no lesion.",
    ]
    one = FemurFindings(side="right", present=True, femur_volume_ml=300.0,
                        lesions=(LesionFinding(1, 0.054, 5.52, (0.0, 0.0, 0.0), "unknown", False, 64),))
    absent = FemurFindings(side="left", present=False)
    assert summary_lines(StudyFindings(left=absent, right=one)) == [
        "Left femur: not in view.",
        "Right femur: 1 lytic lesion, 0.05 ml, 5.5 mm, site not determined (proximal femur not in view), "
        "cortex intact.",
    ]
    nobody = StudyFindings(left=absent, right=FemurFindings(side="right", present=False))
    assert summary_lines(nobody) == ["No femur in view."]


def test_report_json_fields_and_no_patient_identifiers(ct, tmp_path, caplog):
    written, loaded = ct
    left, right, lesion = _masks(loaded.volume.spatial_shape)
    seg = _seg(loaded, left, right, lesion)
    findings = study_findings(grid=loaded.volume, femur_masks={"left": left, "right": right},
                              lesion_masks={"left": lesion})
    sr = build_findings_sr(findings=findings, source_datasets=loaded.source_datasets, algorithm=ALGORITHM,
                           segmentation=seg)
    with caplog.at_level(logging.DEBUG):
        json_path, text_path = write_findings_report(
            tmp_path / "out", findings=findings, algorithm=ALGORITHM, software_version="0.1.0",
            ct=loaded.source_datasets[0], segmentation=seg, structured_report=sr)
    assert sorted(p.name for p in json_path.parent.iterdir()) == ["report.json", "summary.txt"]
    raw = json_path.read_text()
    for identifier in (PATIENT_NAME, PATIENT_ID, "Synthetic", "SYNTH"):
        assert identifier not in raw
        assert identifier not in caplog.text
    report = json.loads(raw)
    assert report["software"] == {"name": "femur-lesion-seg", "version": "0.1.0"}
    assert report["model"] == {"name": ALGORITHM.name, "version": "test-1", "source": None,
                               "parameters": {"folds": "0,1"}}
    assert report["study"] == {"study_instance_uid": written.study_uid, "series_instance_uid": written.series_uid,
                               "frame_of_reference_uid": written.frame_of_reference_uid}
    assert report["outputs"]["segmentation"]["sop_instance_uid"] == seg.SOPInstanceUID
    assert report["outputs"]["structured_report"]["series_instance_uid"] == sr.SeriesInstanceUID
    assert report["femur_in_view"] is True
    left_json = report["femurs"]["left"]
    assert left_json["n_lesions"] == 2
    assert left_json["total_lesion_volume_ml"] == pytest.approx(112 * VOXEL_MM3 / 1000, abs=1e-3)
    assert left_json["largest_lesion_volume_ml"] == pytest.approx(64 * VOXEL_MM3 / 1000, abs=1e-3)
    assert left_json["cortical_involvement"] is True
    assert [lesion["cortical_involvement"] for lesion in left_json["lesions"]] == [False, True]
    assert report["femurs"]["right"]["n_lesions"] == 0
    assert report["criteria"]["min_lesion_volume_mm3"] == 20.0
    # The same facts as the SR.
    sr_left = read_findings_sr(sr)["Left femur"]["measurements"]
    assert sr_left["Volume (Total)"][0] == pytest.approx(left_json["total_lesion_volume_ml"], abs=1e-3)
    assert sr_left["Diameter (Maximum)"][0] == pytest.approx(left_json["largest_diameter_mm"], abs=0.05)
    assert text_path.read_text().splitlines() == report["summary"] == [
        "Left femur: 2 lytic lesions, largest 0.05 ml, 5.5 mm, site not determined (proximal femur not in "
        "view), cortex breached.",
        "Right femur: no lesion.",
    ]


def test_report_no_femur_in_view(tmp_path):
    absent = StudyFindings(left=FemurFindings(side="left", present=False),
                           right=FemurFindings(side="right", present=False))
    report = build_report(findings=absent, algorithm=ALGORITHM, software_version="0.1.0")
    assert report["femur_in_view"] is False
    assert report["summary"] == ["No femur in view."]
    assert report["study"] is None
    assert report["femurs"]["left"] == {"side": "left", "present": False}
    assert report["notes"] == []


def test_the_splitters_notes_follow_the_summary_in_both_files(tmp_path):
    # How the femurs were found matters to the reader: a femur found from its head, in a view that ends at
    # the trochanters, is only the top of the bone.
    absent = StudyFindings(left=FemurFindings(side="left", present=False),
                           right=FemurFindings(side="right", present=False))
    note = "no femoral shaft found (no long, round, solitary bone cross-section)"
    json_path, text_path = write_findings_report(tmp_path, findings=absent, algorithm=ALGORITHM,
                                                 software_version="0.1.0", notes=(note,))
    assert json.loads(json_path.read_text())["notes"] == [note]
    assert text_path.read_text() == f"No femur in view.\nNote: {note}.\n"


REAL_SERIES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real_ct_chest_j2k"


@pytest.mark.skipif(not REAL_SERIES.is_dir(),
                    reason=f"real test series not present at {REAL_SERIES} (shared data folder)")
def test_real_chest_ct_without_femurs(tmp_path):
    # An anonymised thorax CT: no femur in view, and no StudyInstanceUID (nor SeriesInstanceUID) to file an
    # SR under. The SR is refused with a one-line error; the JSON report still states the outcome.
    loaded = load_study(REAL_SERIES)
    findings = study_findings(grid=loaded.volume, femur_masks={})
    with pytest.raises(InputError, match="has no StudyInstanceUID") as excinfo:
        build_findings_sr(findings=findings, source_datasets=loaded.source_datasets, algorithm=ALGORITHM)
    assert "\n" not in str(excinfo.value)
    json_path, text_path = write_findings_report(tmp_path, findings=findings, algorithm=ALGORITHM,
                                                 software_version="0.1.0", ct=loaded.source_datasets[0])
    report = json.loads(json_path.read_text())
    assert report["femur_in_view"] is False
    assert report["study"]["study_instance_uid"] is None
    assert text_path.read_text() == "No femur in view.\n"
