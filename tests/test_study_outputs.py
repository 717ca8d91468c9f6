"""write_study_outputs on a synthetic feet-first study: SEG, SR, report.json, summary.txt, overview.png.

The femurs and lesions are the generator's truth (a femur segmenter and a "model" that return it), so
the files can be checked against known masks; the DICOM is checked with highdicom and dciodvfy.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from operators.dicom_seg import read_segment_masks
from operators.dicom_sr import read_findings_sr
from operators.femur_splitter import FemurSplit, split_femurs
from operators.lesion_model import LesionModelInfo, LesionPrediction
from operators.lesion_segmentation import StudySegmentation, segment_lesions
from operators.series_volume import LoadedSeries, load_study
from operators.study_outputs import (
    OUTPUT_FILE_NAMES,
    OVERVIEW_FILE,
    REPORT_FILE,
    SEG_FILE,
    SR_FILE,
    SUMMARY_FILE,
    write_study_outputs,
)
from synthetic_ct import generate_phantom, write_study


@dataclasses.dataclass
class Study:
    loaded: LoadedSeries
    truth: np.ndarray  # uint8 labels (docs/CONVENTIONS.md) on the loaded CT's grid
    split: FemurSplit


class _TruthFemurs:
    """Femur segmenter that returns the generator's femurs (1 left, 2 right, lesions and cysts included)."""

    def __init__(self, femurs: np.ndarray) -> None:
        self._femurs = femurs

    def segment(self, ct: hd.Volume) -> np.ndarray:
        return self._femurs


class _TruthModel:
    """Lesion "model" returning the truth's lesions (1) and cysts (2) inside the crop it is given.

    It finds the crop in the CT from the crop's own affine, as a check that crops carry their position.
    """

    def __init__(self, truth: np.ndarray, ct_affine: np.ndarray, *, cysts: bool = True, lesions: bool = True) -> None:
        labels = {0: "background", 1: "lesion"} | ({2: "cyst"} if cysts else {})
        self.model_info = LesionModelInfo(name="truth", version="1.0", configuration="3d_fullres", trainer="none",
                                          plans="none", folds=(0,), label_names=labels)
        self._truth, self._inverse = truth, np.linalg.inv(ct_affine)
        self._cysts, self._lesions = cysts, lesions

    def predict(self, volume: hd.Volume) -> LesionPrediction:
        start = np.rint((self._inverse @ volume.affine[:, 3])[:3]).astype(int)
        window = self._truth[tuple(slice(s, s + n) for s, n in zip(start, volume.spatial_shape))]
        labels = np.zeros(volume.spatial_shape, dtype=np.uint8)
        if self._lesions:
            labels[window == 3] = 1
        if self._cysts:
            labels[window == 4] = 2
        return LesionPrediction(labels=labels)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    phantom = generate_phantom(5, "small", patient_position="FFS", storage="unsigned", lesions=3, cysts=True)
    written = write_study(phantom, tmp_path_factory.mktemp("study") / "study", series=("thin",))
    loaded = load_study(written.study_dir)
    truth = phantom.labels.match_geometry(loaded.volume).array
    femurs = np.zeros(truth.shape, dtype=np.uint8)
    for side, value in (("left", 1), ("right", 2)):
        mask = hd.Volume(phantom.femur_mask(side), phantom.labels.affine, "PATIENT").match_geometry(loaded.volume)
        femurs[mask.array.astype(bool)] = value
    split = split_femurs(loaded.volume, segmenter=_TruthFemurs(femurs))
    assert set(split.femurs) == {"left", "right"}
    return Study(loaded=loaded, truth=truth, split=split)


def _segmentation(study: Study, **model_options: bool) -> StudySegmentation:
    return segment_lesions(study.split, _TruthModel(study.truth, study.loaded.volume.affine, **model_options))


def _dciodvfy_errors(path: Path) -> list[str]:
    completed = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, check=False)
    return [line for line in (completed.stdout + completed.stderr).splitlines() if line.startswith("Error")]


def test_study_with_lesions_and_a_cyst(study: Study, tmp_path: Path) -> None:
    segmentation = _segmentation(study)
    out = tmp_path / "out"
    result = write_study_outputs(out, loaded=study.loaded, split=study.split, segmentation=segmentation)

    assert sorted(os.listdir(out)) == sorted(OUTPUT_FILE_NAMES), "a temporary file or folder was left behind"
    assert [p.name for p in result.paths()] == list(OUTPUT_FILE_NAMES)
    umask = os.umask(0)
    os.umask(umask)
    for name in OUTPUT_FILE_NAMES:
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~umask
    assert (out / OVERVIEW_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # SEG: the segments present, and each mask voxel for voxel on the CT's grid.
    seg = pydicom.dcmread(out / SEG_FILE)
    labels = [str(s.SegmentLabel) for s in seg.SegmentSequence]
    assert labels == ["Left femur", "Right femur", "Lytic lesion, left femur", "Lytic lesion, right femur",
                      "Cyst, right femur"]
    masks = read_segment_masks(out / SEG_FILE, study.loaded.volume)
    left, right = segmentation.femurs["left"], segmentation.femurs["right"]
    assert np.array_equal(masks["Left femur"], left.femur_mask)
    assert np.array_equal(masks["Right femur"], right.femur_mask)
    assert np.array_equal(masks["Lytic lesion, left femur"], left.lesion_mask)
    assert np.array_equal(masks["Lytic lesion, right femur"], right.lesion_mask)
    assert np.array_equal(masks["Cyst, right femur"], right.cyst_mask)
    # ... which are the generator's truth.
    assert np.array_equal(left.lesion_mask | right.lesion_mask, study.truth == 3)
    assert np.array_equal(right.cyst_mask, study.truth == 4)
    ct_header = study.loaded.source_datasets[0]
    assert seg.StudyInstanceUID == ct_header.StudyInstanceUID
    assert seg.FrameOfReferenceUID == ct_header.FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct_header.SeriesInstanceUID

    # SR and report say the same as the SEG.
    report = json.loads((out / REPORT_FILE).read_text())
    sr_groups = read_findings_sr(out / SR_FILE)
    numbers = {str(s.SegmentLabel): int(s.SegmentNumber) for s in seg.SegmentSequence}
    for side in ("left", "right"):
        femur = report["femurs"][side]
        group = sr_groups[f"{side.capitalize()} femur"]
        assert femur["present"] and femur["n_lesions"] >= 1
        assert group["evaluations"]["Lesion"] == ["Present"]
        assert group["measurements"]["Number of lesions"][0] == femur["n_lesions"]
        assert group["referenced_segment"] == numbers[f"Lytic lesion, {side} femur"]
    assert report["femur_in_view"] is True
    assert report["outputs"]["segmentation"]["sop_instance_uid"] == seg.SOPInstanceUID
    assert report["outputs"]["structured_report"]["sop_instance_uid"] == pydicom.dcmread(out / SR_FILE).SOPInstanceUID
    assert report["study"]["study_instance_uid"] == ct_header.StudyInstanceUID
    assert report["model"]["name"] == "truth"
    assert (out / SUMMARY_FILE).read_text().splitlines() == report["summary"]
    assert result.findings.left.n_lesions == report["femurs"]["left"]["n_lesions"]
    assert not result.notes

    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    assert _dciodvfy_errors(out / SEG_FILE) == []
    assert _dciodvfy_errors(out / SR_FILE) == []


def test_femurs_without_lesion_give_a_femur_only_seg(study: Study, tmp_path: Path) -> None:
    segmentation = _segmentation(study, lesions=False, cysts=False)
    assert not segmentation.has_lesion and not segmentation.has_cyst_class
    result = write_study_outputs(tmp_path, loaded=study.loaded, split=study.split, segmentation=segmentation)

    seg = pydicom.dcmread(result.segmentation)
    assert [str(s.SegmentLabel) for s in seg.SegmentSequence] == ["Left femur", "Right femur"]
    for group in read_findings_sr(result.structured_report).values():
        assert group["evaluations"]["Lesion"] == ["Absent"]
        assert group["measurements"]["Number of lesions"][0] == 0
    assert result.summary.read_text().splitlines() == ["Left femur: no lesion.", "Right femur: no lesion."]


def test_no_femur_in_view_writes_no_seg_and_says_so(study: Study, tmp_path: Path) -> None:
    class _NoFemur:
        def segment(self, ct: hd.Volume) -> np.ndarray:
            return np.zeros(ct.spatial_shape, dtype=np.uint8)

    split = split_femurs(study.loaded.volume, segmenter=_NoFemur())
    segmentation = segment_lesions(split, _TruthModel(study.truth, study.loaded.volume.affine))
    (tmp_path / SEG_FILE).write_bytes(b"left by an earlier run")
    (tmp_path / "notes.txt").write_text("not ours")

    result = write_study_outputs(tmp_path, loaded=study.loaded, split=split, segmentation=segmentation)

    assert result.segmentation is None and not (tmp_path / SEG_FILE).exists()
    assert (tmp_path / "notes.txt").read_text() == "not ours"
    assert sorted(os.listdir(tmp_path)) == sorted({"notes.txt", SR_FILE, REPORT_FILE, SUMMARY_FILE, OVERVIEW_FILE})
    assert result.summary.read_text() == "No femur in view.\n"
    report = json.loads(result.report.read_text())
    assert report["femur_in_view"] is False and report["outputs"]["segmentation"] is None
    groups = read_findings_sr(result.structured_report)
    assert {name: g["evaluations"]["Femur"] for name, g in groups.items()} == {
        "Left femur": ["Not visualized"], "Right femur": ["Not visualized"]}
    assert any("no femur in view" in note for note in result.notes)


def test_ct_without_uids_gets_reports_but_no_dicom(study: Study, tmp_path: Path) -> None:
    headers = []
    for ds in study.loaded.source_datasets:
        copy = pydicom.Dataset(ds)
        copy.StudyInstanceUID = ""
        headers.append(copy)
    anonymous = dataclasses.replace(study.loaded, source_datasets=tuple(headers))
    result = write_study_outputs(tmp_path, loaded=anonymous, split=study.split, segmentation=_segmentation(study))

    assert result.segmentation is None and result.structured_report is None
    assert sorted(os.listdir(tmp_path)) == sorted({REPORT_FILE, SUMMARY_FILE, OVERVIEW_FILE})
    assert any("StudyInstanceUID" in note for note in result.notes)
    report = json.loads(result.report.read_text())
    assert report["femur_in_view"] is True and report["study"]["study_instance_uid"] is None


def test_a_failure_leaves_nothing_half_written(study: Study, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / REPORT_FILE).write_text("from an earlier run")

    def _broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr("operators.study_outputs.render_overview", _broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_study_outputs(tmp_path, loaded=study.loaded, split=study.split, segmentation=_segmentation(study))
    assert os.listdir(tmp_path) == [REPORT_FILE]
    assert (tmp_path / REPORT_FILE).read_text() == "from an earlier run"


def test_masks_of_another_grid_are_refused(study: Study, tmp_path: Path) -> None:
    segmentation = dataclasses.replace(_segmentation(study), full_shape=(1, 2, 3))
    with pytest.raises(ValueError, match="not on the grid"):
        write_study_outputs(tmp_path, loaded=study.loaded, split=study.split, segmentation=segmentation)
    assert os.listdir(tmp_path) == []
