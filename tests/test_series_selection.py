"""Series selection: requirements, ranking, reasons, JSON rules."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from operators.dicom_scan import scan_dicom_folder
from operators.errors import NoSuitableSeriesError
from operators.series_selection import DEFAULT_RULES, SelectionRules, select_series
from tests.dicom_factory import CORONAL_ORIENTATION, write_ct_series


def _write(folder: Path, name: str, **kwargs) -> str:  # type: ignore[no-untyped-def]
    """Write a series into its own sub-folder; return its SeriesInstanceUID."""
    return write_ct_series(folder / name, series_description=name, **kwargs).series_uid


@pytest.fixture()
def mixed_study(tmp_path: Path) -> dict[str, str]:
    """One study: thin and thick axial CT, a localizer, an MR series and a coronal reformat."""
    study = generate_uid()
    return {
        "thin": _write(tmp_path, "thin", study_uid=study, series_number=3, slice_spacing=1.0, n_slices=12),
        "thick": _write(tmp_path, "thick", study_uid=study, series_number=2, slice_spacing=3.0, n_slices=30),
        "localizer": _write(
            tmp_path, "localizer", study_uid=study, series_number=1, n_slices=1,
            image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), orientation=CORONAL_ORIENTATION,
        ),
        "mr": _write(tmp_path, "mr", study_uid=study, series_number=4, modality="MR", slice_spacing=0.5, n_slices=20),
        "coronal": _write(
            tmp_path, "coronal", study_uid=study, series_number=5, orientation=CORONAL_ORIENTATION,
            image_type=("DERIVED", "SECONDARY", "REFORMATTED"), slice_spacing=0.5, n_slices=20,
        ),
    }


def test_thin_axial_ct_is_chosen_and_every_other_series_has_a_reason(
    tmp_path: Path, mixed_study: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="operators")
    selection = select_series(scan_dicom_folder(tmp_path))

    assert selection.series.series_instance_uid == mixed_study["thin"]
    assert [s.series_instance_uid for s in selection.candidates] == [mixed_study["thin"], mixed_study["thick"]]
    reasons = {d.series.series_instance_uid: (d.status, d.reason) for d in selection.decisions}
    assert reasons[mixed_study["thin"]][0] == "selected"
    assert reasons[mixed_study["thick"]] == (
        "ranked lower", "slice spacing 3 mm is thicker than 1 mm of the selected series"
    )
    assert reasons[mixed_study["localizer"]] == (
        "rejected", "ImageType is ['ORIGINAL', 'PRIMARY', 'LOCALIZER'], rule excludes 'LOCALIZER'"
    )
    assert reasons[mixed_study["mr"]] == ("rejected", "Modality is 'MR', rule wants '(?i)^CT$'")
    assert reasons[mixed_study["coronal"]][0] == "rejected"
    assert "ORIGINAL" in reasons[mixed_study["coronal"]][1]
    # Every decision is logged, and no patient identifier is.
    for uid in mixed_study.values():
        assert uid in caplog.text
    assert "SYNTH-0001" not in caplog.text and "Synthetic^Loader" not in caplog.text


def test_orientation_rule(tmp_path: Path) -> None:
    coronal = _write(tmp_path, "cor", orientation=CORONAL_ORIENTATION)
    index = scan_dicom_folder(tmp_path)
    with pytest.raises(NoSuitableSeriesError, match=r"not axial: image normal is 90.0 deg from the axial axis"):
        select_series(index)
    assert select_series(index, DEFAULT_RULES.with_options(orientation=None)).series.series_instance_uid == coronal
    assert select_series(index, DEFAULT_RULES.with_options(orientation="coronal")).series.series_instance_uid == coronal


def test_slight_obliquity_within_tolerance_is_axial(tmp_path: Path) -> None:
    # Normal 5 deg from z (e.g. an oblique reconstruction): within the default 10 deg.
    import math

    c, s = math.cos(math.radians(5)), math.sin(math.radians(5))
    _write(tmp_path, "oblique", orientation=(1.0, 0.0, 0.0, 0.0, c, -s))
    index = scan_dicom_folder(tmp_path)
    assert select_series(index).series.series_description == "oblique"
    with pytest.raises(NoSuitableSeriesError, match="5.0 deg"):
        select_series(index, DEFAULT_RULES.with_options(max_orientation_deviation_deg=2.0))


def test_more_slices_then_bone_kernel_break_ties(tmp_path: Path) -> None:
    short = _write(tmp_path, "short", series_number=1, n_slices=12, kernel="B70f")
    long_soft = _write(tmp_path, "long_soft", series_number=2, n_slices=14, kernel="B30f")
    long_bone = _write(tmp_path, "long_bone", series_number=3, n_slices=14, kernel="B70f")
    index = scan_dicom_folder(tmp_path)

    # Same spacing: most slices first; without a kernel preference, the lower SeriesNumber.
    plain = select_series(index)
    assert [s.series_instance_uid for s in plain.candidates] == [long_soft, long_bone, short]

    bone_rules = DEFAULT_RULES.with_options(bone_kernel_patterns=("^B[r]?[6-9]", "BONE"))
    bone = select_series(index, bone_rules)
    assert [s.series_instance_uid for s in bone.candidates] == [long_bone, long_soft, short]
    assert bone.decisions[1].reason == "same spacing and slice count, but not a bone kernel"


def test_too_few_slices_is_rejected(tmp_path: Path) -> None:
    _write(tmp_path, "scout", n_slices=3)
    with pytest.raises(NoSuitableSeriesError, match="3 distinct slice positions, fewer than the 10 required"):
        select_series(scan_dicom_folder(tmp_path))


def test_mr_only_study_names_what_was_found(tmp_path: Path) -> None:
    _write(tmp_path, "t1", modality="MR", n_slices=12)
    _write(tmp_path, "t2", modality="MR", n_slices=12)
    with pytest.raises(NoSuitableSeriesError) as info:
        select_series(scan_dicom_folder(tmp_path))
    message = str(info.value)
    assert "found 2 series: 2 MR (24 images)" in message
    assert "Modality is 'MR'" in message
    assert "\n" not in message


def test_enhanced_multiframe_ct_is_reported_as_unsupported(tmp_path: Path) -> None:
    _write(tmp_path, "enhanced", n_slices=1, extra={"NumberOfFrames": 12})
    with pytest.raises(NoSuitableSeriesError, match="multi-frame image .* not supported"):
        select_series(scan_dicom_folder(tmp_path), DEFAULT_RULES.with_options(min_slices=1))


def test_conditions_on_numbers_and_hidden_identifiers(tmp_path: Path) -> None:
    _write(tmp_path, "ct", slice_spacing=1.0)  # SliceThickness 1.0
    index = scan_dicom_folder(tmp_path)

    assert select_series(index, SelectionRules(conditions={"SliceThickness": [0.5, 1.5]}))
    assert select_series(index, SelectionRules(conditions={"SliceThickness": [2, "<"]}))
    with pytest.raises(NoSuitableSeriesError, match=r"SliceThickness is '1', rule wants > 2"):
        select_series(index, SelectionRules(conditions={"SliceThickness": [2, ">"]}))
    with pytest.raises(NoSuitableSeriesError) as info:
        select_series(index, SelectionRules(conditions={"PatientID": "^OTHER"}))
    assert "PatientID is <hidden>" in str(info.value)
    assert "SYNTH" not in str(info.value)
    with pytest.raises(NoSuitableSeriesError, match="BodyPartExamined is missing"):
        select_series(index, SelectionRules(conditions={"BodyPartExamined": "LEG"}))


def test_rules_from_sdk_style_json(tmp_path: Path) -> None:
    sdk_rules = {
        "selections": [
            {
                "name": "CT for femur segmentation",
                "conditions": {
                    "Modality": "(?i)CT",
                    "ImageType": ["PRIMARY", "ORIGINAL", "!LOCALIZER"],
                    "ImageOrientationPatient": "Axial",
                },
                "min_slices": 20,
                "bone_kernel_patterns": ["BONE"],
            }
        ]
    }
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(sdk_rules))
    rules = SelectionRules.from_json(path)
    assert rules.name == "CT for femur segmentation"
    assert rules.orientation == "axial"
    assert "ImageOrientationPatient" not in rules.conditions
    assert rules.min_slices == 20 and rules.bone_kernel_patterns == ("BONE",)
    # Round trip through this class's own layout.
    assert SelectionRules.from_json(json.dumps(rules.to_dict())) == rules


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"selections": [{"conditions": {}}, {"conditions": {}}]}, "exactly one selection"),
        ({"min_slice": 3}, "unknown selection-rule keys"),
        ({"conditions": {"Modality": "(CT"}}, "invalid regular expression"),
        ({"conditions": {"SliceThickness": [1, "~"]}}, "unknown relation"),
        ({"orientation": "oblique"}, "orientation must be one of"),
        ({"min_slices": 0}, "min_slices must be at least 1"),
    ],
)
def test_invalid_rules_are_refused(data: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SelectionRules.from_dict(data)


def test_unknown_keyword_is_refused() -> None:
    with pytest.raises(ValueError, match="'Modalty' is not a DICOM keyword"):
        SelectionRules(conditions={"Modalty": "CT"})


def test_rules_from_code_and_from_json_compare_equal() -> None:
    assert SelectionRules.from_json(json.dumps(DEFAULT_RULES.to_dict())) == DEFAULT_RULES
