"""The dataset builder: one nnU-Net case per femur, references cut like the crops, problems reported.

A tiny cohort of small synthetic phantoms (a second or two each) goes through the same code path as
real studies: in memory, from NIfTI files listed in a CSV, and from a written DICOM study with a
DICOM-SEG reference.
"""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest

from operators.errors import TrainingDataError
from lesion_training.dataset_builder import (
    SYNTHETIC_REFERENCE,
    BuildOptions,
    DatasetBuilder,
    ReferenceValues,
    StudyRecord,
    onto_grid,
    patient_strata,
    read_volume_file,
    split_train_test,
    stratified_patient_splits,
)
from lesion_training.raw_dataset import FILE_ENDING

sitk = pytest.importorskip("SimpleITK")
synthetic_ct = pytest.importorskip("synthetic_ct")

LESION, CYST = 3, 4


@pytest.fixture(scope="module")
def phantoms():
    """Three small phantoms: lesions and a cyst, lesions only, and a lesion-free one."""
    return {
        "p1": synthetic_ct.generate_phantom(11, "small", lesions=3, cysts=True, patient_position="HFS"),
        "p2": synthetic_ct.generate_phantom(12, "small", lesions=2, cysts=False, patient_position="FFS"),
        "p3": synthetic_ct.generate_phantom(13, "small", lesions=0, cysts=False),
    }


def _masks(phantom):
    labels = np.asarray(phantom.labels.array)
    return labels == LESION, labels == CYST


def _read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module")
def built(phantoms, tmp_path_factory):
    """A dataset of the three phantoms (cysts separate), one no-femur CT and a study with labels outside the femur."""
    root = tmp_path_factory.mktemp("raw")
    builder = DatasetBuilder(root / "Dataset901_Test", BuildOptions(cysts="separate", references=SYNTHETIC_REFERENCE))
    for patient in ("p1", "p2"):
        builder.add_study(patient, phantoms[patient].ct, *_masks(phantoms[patient]))

    # p3 (lesion-free) gets lesion voxels in the soft tissue beside its left femur: outside the femur,
    # so they are clipped and reported, and its cases stay lesion-free.
    phantom = phantoms["p3"]
    lesion, cyst = _masks(phantom)
    left = phantom.femur_mask("left")
    z, y, x = (int(np.median(a)) for a in np.nonzero(left))
    outside = np.zeros_like(lesion)
    outside[z - 2:z + 2, y - 12:y + 12, x - 12:x + 12] = True
    outside &= ~left & ~phantom.femur_mask("right")
    builder.add_study("p3", phantom.ct, lesion | outside, cyst)

    # A CT without femurs (abdominal field of view).
    abdomen = synthetic_ct.generate_phantom(14, "small", femurs_in_view=())
    builder.add_study("p5", abdomen.ct, *_masks(abdomen))
    dataset = builder.finish(test_fraction=0.0, n_folds=2)
    return dataset, int(outside.sum())


def test_one_case_per_femur_with_cropped_labels_inside_the_femur(built, phantoms):
    dataset, _ = built
    folder = dataset.folder
    assert sorted(dataset.training_cases) == sorted(f"{p}_{s}" for p in ("p1", "p2", "p3")
                                                    for s in ("left", "right"))
    for case in dataset.training_cases:
        image = _read(folder / "imagesTr" / f"{case}_0000{FILE_ENDING}")
        labels = _read(folder / "labelsTr" / f"{case}{FILE_ENDING}")
        assert image.shape == labels.shape
        assert set(np.unique(labels).tolist()) <= {0, 1, 2}
        assert not np.any((labels > 0) & (image == 0)), f"{case}: labels outside the femur"
    # The lesions of p1 and p2 survive the crop (most of their voxels lie inside the femur).
    for patient in ("p1", "p2"):
        kept = sum(int((_read(folder / "labelsTr" / f"{patient}_{s}{FILE_ENDING}") == 1).sum())
                   for s in ("left", "right"))
        assert kept > 0.5 * int(_masks(phantoms[patient])[0].sum())
    assert not any(np.any(_read(folder / "labelsTr" / f"p3_{s}{FILE_ENDING}")) for s in ("left", "right"))
    description = json.loads((folder / "dataset.json").read_text())
    assert description["labels"] == {"background": 0, "lesion": 1, "cyst": 2}
    assert description["channel_names"]["0"].casefold() != "ct"
    assert description["numTraining"] == 6


def test_cysts_are_label_2_when_separate(built):
    dataset, _ = built
    values = set()
    for side in ("left", "right"):
        values |= set(np.unique(_read(dataset.folder / "labelsTr" / f"p1_{side}{FILE_ENDING}")).tolist())
    assert 2 in values


def test_labels_outside_the_femur_and_missing_femur_are_reported(built):
    dataset, outside_voxels = built
    report = json.loads(dataset.report.read_text())
    issues = report["issues"]
    clipped = [i for i in issues if i["patient"] == "p3" and i["kind"] == "lesion_outside_femur"]
    assert clipped and sum(i["voxels"] for i in clipped) >= outside_voxels
    no_femur = [i for i in issues if i["patient"] == "p5"]
    assert [i["kind"] for i in no_femur] == ["no_femur"] and no_femur[0]["action"] == "excluded"
    assert report["summary"]["studies"] == 4 and report["summary"]["studies_excluded"] == 1
    markdown = (dataset.folder / "dataset_report.md").read_text()
    assert "p5" in markdown and "no_femur" in markdown
    assert not any(p.name.startswith(".") for p in dataset.folder.parent.iterdir()), "staging left behind"


def test_folds_group_patients(built):
    dataset, _ = built
    splits = json.loads((dataset.folder / "splits_final.json").read_text())
    assert splits == dataset.splits and len(splits) == 2
    val = [c for fold in splits for c in fold["val"]]
    assert sorted(val) == sorted(dataset.training_cases)
    for fold in splits:
        assert {c.rsplit("_", 1)[0] for c in fold["val"]}.isdisjoint({c.rsplit("_", 1)[0] for c in fold["train"]})


def test_stratified_splits_balance_lesion_presence_and_never_split_a_patient():
    patients = {f"q{k}": [f"q{k}_left", f"q{k}_right"] for k in range(20)}
    strata = {p: ("none", "small", "large")[k % 3] for k, p in enumerate(patients)}
    splits = stratified_patient_splits(patients, strata, n_folds=5, seed=1)
    seen: dict[str, int] = {}
    for k, fold in enumerate(splits):
        fold_patients = {c.rsplit("_", 1)[0] for c in fold["val"]}
        assert fold_patients.isdisjoint({c.rsplit("_", 1)[0] for c in fold["train"]})
        for p in fold_patients:
            assert p not in seen, f"{p} in folds {seen.get(p)} and {k}"
            seen[p] = k
    assert set(seen) == set(patients)
    for stratum in ("none", "small", "large"):
        per_fold = [sum(strata[c.rsplit("_", 1)[0]] == stratum for c in f["val"]) // 2 for f in splits]
        assert max(per_fold) - min(per_fold) <= 1


def test_train_test_split_is_by_patient_and_stratified():
    strata = {f"q{k}": ("none", "small", "large")[k % 3] for k in range(30)}
    train, test = split_train_test(strata, 0.2, seed=3)
    assert len(test) == 6 and not set(train) & set(test) and len(train) + len(test) == 30
    assert sorted(strata[p] for p in test).count("none") == 2


def test_patient_strata_use_lesion_volume():
    from lesion_training.dataset_builder import CaseRecord

    def case(patient: str, ml: float) -> CaseRecord:
        return CaseRecord(f"{patient}_left", patient, "left", [1, 1, 1], [1.0, 1.0, 1.0], int(ml * 1000), ml,
                          1 if ml else 0, [], 0, 0)

    strata = patient_strata([case("a", 0.0), case("b", 1.0), case("c", 9.0), case("d", 5.0)])
    assert strata == {"a": "none", "b": "small", "c": "large", "d": "large"}


# ------------------------------------------------------------------------ file inputs


def _write_volume(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write (z, y, x) + affine (index -> LPS mm) as NIfTI the way ITK reads it back."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    spacing = np.linalg.norm(affine[:3, :3], axis=0)  # (sz, sy, sx)
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    direction = affine[:3, :3] / spacing
    image.SetDirection(tuple(float(v) for v in direction[:, ::-1].ravel()))
    image.SetOrigin(tuple(float(v) for v in affine[:3, 3]))
    sitk.WriteImage(image, str(path))
    return path


def test_nifti_round_trip_keeps_the_grid(phantoms, tmp_path):
    ct = phantoms["p2"].ct
    path = _write_volume(tmp_path / "ct.nii.gz", np.asarray(ct.array), ct.affine)
    back = read_volume_file(path)
    assert back.spatial_shape == ct.spatial_shape
    np.testing.assert_allclose(back.affine, ct.affine, atol=1e-4)


def test_flipped_and_permuted_reference_is_brought_onto_the_ct_grid(phantoms):
    labels = phantoms["p1"].labels
    array = np.asarray(labels.array)
    # Swap rows and columns and flip the slices: the same voxels described by another affine.
    moved = np.flip(np.transpose(array, (0, 2, 1)), axis=0)
    perm = np.eye(4)[[0, 2, 1, 3]]
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, array.shape[0] - 1
    affine = labels.affine @ flip @ perm  # moved index -> original index -> LPS
    back, change = onto_grid(hd.Volume(np.ascontiguousarray(moved), affine, coordinate_system="PATIENT"),
                             phantoms["p1"].ct)
    assert change is not None
    np.testing.assert_array_equal(back, array)


def test_csv_build_with_nifti_references_reports_a_mismatched_grid(phantoms, tmp_path):
    from lesion_training.cli import main

    rows = ["patient,ct,reference"]
    for patient in ("p1", "p3"):
        phantom = phantoms[patient]
        _write_volume(tmp_path / f"{patient}_ct.nii.gz", np.asarray(phantom.ct.array), phantom.ct.affine)
        _write_volume(tmp_path / f"{patient}_ref.nii.gz", np.asarray(phantom.labels.array), phantom.labels.affine)
        rows.append(f"{patient},{patient}_ct.nii.gz,{patient}_ref.nii.gz")
    # p2's reference on a coarser grid: would need resampling, so it is reported and the study excluded.
    phantom = phantoms["p2"]
    _write_volume(tmp_path / "p2_ct.nii.gz", np.asarray(phantom.ct.array), phantom.ct.affine)
    coarse = np.asarray(phantom.labels.array)[::2, ::2, ::2]
    affine = phantom.labels.affine.copy()
    affine[:3, :3] *= 2.0
    _write_volume(tmp_path / "p2_ref.nii.gz", coarse, affine)
    rows.append("p2,p2_ct.nii.gz,p2_ref.nii.gz")
    (tmp_path / "cases.csv").write_text("\n".join(rows) + "\n")

    status = main(["build-dataset", "--cases", str(tmp_path / "cases.csv"), "--out", str(tmp_path / "raw"),
                   "--name", "Dataset903_Csv", "--lesion-values", "3", "--cyst-values", "4",
                   "--test-fraction", "0.5"])
    assert status == 0
    folder = tmp_path / "raw" / "Dataset903_Csv"
    report = json.loads((folder / "dataset_report.json").read_text())
    mismatch = [i for i in report["issues"] if i["kind"] == "geometry_mismatch"]
    assert [i["patient"] for i in mismatch] == ["p2"] and mismatch[0]["action"] == "excluded"
    train = sorted(p.name for p in (folder / "labelsTr").iterdir())
    test = sorted(p.name for p in (folder / "labelsTs").iterdir())
    assert len(train) == 2 and len(test) == 2
    assert {n.rsplit("_", 1)[0] for n in train}.isdisjoint({n.rsplit("_", 1)[0] for n in test})


@pytest.mark.slow
def test_dicom_study_with_dicom_seg_reference(phantoms, tmp_path):
    from operators.dicom_seg import AlgorithmInfo, SegmentMask, SegmentSpec, build_segmentation, write_dataset
    from operators.series_volume import load_study

    phantom = phantoms["p1"]
    study = synthetic_ct.write_study(phantom, tmp_path / "study", series=("thin",))
    loaded = load_study(Path(study.study_dir))
    labels, _ = onto_grid(phantom.labels, loaded.volume)
    seg = build_segmentation(
        source_datasets=loaded.source_datasets, ct=loaded.volume,
        segments=[SegmentMask(SegmentSpec.lytic_lesion("left"), labels == LESION),
                  SegmentMask(SegmentSpec.cyst("left"), labels == CYST)],
        algorithm=AlgorithmInfo(name="reference", version="1"),
    )
    seg_path = write_dataset(seg, tmp_path / "seg" / "reference.dcm")

    # Cysts merged into background this time: read from the SEG and counted, but labelled 0.
    builder = DatasetBuilder(tmp_path / "raw" / "Dataset904_Seg",
                             BuildOptions(cysts="background", references=ReferenceValues()))
    record = builder.add_files("p1", Path(study.study_dir), seg_path)
    assert [c.case_id for c in record.cases] == ["p1_left", "p1_right"]
    assert sum(c.lesion_voxels for c in record.cases) > 0.5 * int((labels == LESION).sum())
    assert sum(c.cyst_voxels for c in record.cases) > 0
    dataset = builder.finish(test_fraction=0.0)
    assert len(dataset.training_cases) == 2 and dataset.splits == []  # one patient: no folds
    assert json.loads((dataset.folder / "dataset.json").read_text())["labels"] == {"background": 0, "lesion": 1}
    values = set()
    for case in dataset.training_cases:
        values |= set(np.unique(_read(dataset.folder / "labelsTr" / f"{case}{FILE_ENDING}")).tolist())
    assert values == {0, 1}


def test_builder_refuses_an_existing_folder_and_a_bad_patient_key(tmp_path):
    (tmp_path / "Dataset905_X").mkdir()
    with pytest.raises(TrainingDataError):
        DatasetBuilder(tmp_path / "Dataset905_X")
    builder = DatasetBuilder(tmp_path / "Dataset906_X")
    with pytest.raises(TrainingDataError, match="patient key"):
        builder.add_record(StudyRecord("Doe^John"))
    builder.abandon()


# ------------------------------------------------------------------------ synthetic cohort


def test_seed_ranges_parse():
    from lesion_training.synthetic_cohort import parse_seeds

    assert parse_seeds("1000-1003") == [1000, 1001, 1002, 1003]
    assert parse_seeds("5,7, 9-10") == [5, 7, 9, 10]
    for bad in ("", "9-5", "a-b", "1,1", "-3"):
        with pytest.raises(ValueError):
            parse_seeds(bad)


def test_cohort_draws_are_reproducible_and_in_range():
    from lesion_training import synthetic_cohort as cohort

    draws = [cohort.cohort_overrides(seed) for seed in range(1000, 1040)]
    assert draws == [cohort.cohort_overrides(seed) for seed in range(1000, 1040)]
    for d in draws:
        assert cohort.PIXEL_SPACING_MM[0] <= d["pixel_spacing"] <= cohort.PIXEL_SPACING_MM[1]
        assert cohort.SLICE_SPACING_MM[0] <= d["slice_spacing"] <= cohort.SLICE_SPACING_MM[1]
        assert cohort.FIELD_OF_VIEW_MM[0] <= d["matrix"] * d["pixel_spacing"] <= cohort.FIELD_OF_VIEW_MM[1] + 8 * 1.9
        synthetic_ct.PhantomConfig(**d)  # every draw is a valid generator configuration
    # Wide on purpose: lesion-free and multi-lesion patients, with and without cysts.
    assert {d["lesions"] for d in draws} >= {0, 1, 2, 3}
    assert {d["cysts"] for d in draws} == {True, False}


# ------------------------------------------------------------------------ shipped model recipe


def test_headline_metrics_follow_the_nan_rule(tmp_path):
    from lesion_training.shipped_model import headline_metrics

    (tmp_path / "per_case.csv").write_text(
        "case_id,dice,reference_volume_ml,test_volume_ml,cysts,cyst_called_tumour,cyst_voxel_fraction_called_lesion,"
        "cyst_voxel_fraction_called_cyst\n"
        "a_left,0.8,2.0,2.1,1,false,0.1,0.25\n"
        "a_right,,0.0,0.0,0,,,\n"          # true negative: NaN, left out of the mean
        "b_left,0.0,0.0,0.3,0,,,\n"         # false positive on a lesion-free femur
        "b_right,0.6,5.0,4.0,0,,,\n")
    (tmp_path / "lesions.csv").write_text(
        "case_id,diameter_mm,detected\na_left,12.0,true\nb_right,25.0,false\nb_right,6.0,false\n")
    m = headline_metrics(tmp_path)
    assert m["mean_lesion_dice"] == pytest.approx((0.8 + 0.0 + 0.6) / 3, abs=1e-4)
    assert m["dice_true_negatives"] == 1
    assert m["lesions_ge_10mm"] == 2 and m["sensitivity_ge_10mm"] == 0.5
    assert m["lesion_free_femurs"] == 2 and m["lesion_free_predicted_empty"] == 0.5
    assert m["femurs_with_cyst"] == 1 and m["femurs_with_cyst_called_tumour"] == 0
    assert m["cyst_voxels_called_tumour"] == pytest.approx(0.1)
    assert m["cyst_voxels_called_cyst"] == pytest.approx(0.25)


@pytest.mark.parametrize(("found_as_cyst", "says_so"), [(0.0, True), (0.3, True), (0.8, False), (None, False)])
def test_the_card_says_when_the_model_does_not_find_cysts(tmp_path, found_as_cyst, says_so):
    from lesion_training.shipped_model import Settings, render_model_card

    info = {"name": "femur-lesion-synthetic-demo", "version": "0.1.0", "configuration": "small",
            "label_names": {"0": "background", "1": "lesion", "2": "cyst"},
            "schedule": {"num_epochs": 40, "num_iterations_per_epoch": 25}, "training": {}}
    metrics = {"femurs": 20, "femurs_predicted_empty": 3, "mean_lesion_dice": 0.4, "cyst_voxels_called_tumour": 0.0,
               "femurs_with_cyst": 2, "femurs_with_cyst_called_tumour": 0, "cyst_voxels_called_cyst": found_as_cyst}
    evaluation = {"seeds": [2000, 2009], "inference_seconds_per_femur": {"mean": 7.0, "max": 9.0},
                  "mirroring": False, "metrics": metrics}
    settings = Settings(workspace=tmp_path, model_folder=tmp_path / "model", card=tmp_path / "README.md",
                        training_seeds="1000-1039", evaluation_seeds="2000-2009", validation_seeds="3000-3009",
                        configuration=None, workers=2, mirroring=False, resume=False, steps=(), continue_epochs=None)
    card = render_model_card(info, evaluation, {"train": 3600.0}, 14_700_000, settings,
                             "python -m lesion_training.shipped_model --workers 2 --no-mirroring")
    shown = "n/a" if found_as_cyst is None else f"{found_as_cyst:.2f}"
    assert f"| cysts found as cyst: fraction of cyst voxels predicted cyst | {shown} |" in card
    assert ("not by telling them apart" in card) is says_so


@pytest.mark.parametrize(
    ("command", "trained", "expected"),
    [
        # A card rewritten by an invocation without --epochs still names the epochs the model was trained for.
        ("python -m lesion_training.shipped_model --workers 2 --no-mirroring", 70,
         "python -m lesion_training.shipped_model --workers 2 --epochs 70 --no-mirroring"),
        # An invocation's own --epochs does not override the trained schedule.
        ("python -m lesion_training.shipped_model --workers 2 --epochs 5", 70,
         "python -m lesion_training.shipped_model --workers 2 --epochs 70"),
        # The configuration's default schedule needs no --epochs.
        ("python -m lesion_training.shipped_model --workers 2 --epochs 40", 40,
         "python -m lesion_training.shipped_model --workers 2"),
    ],
)
def test_the_card_reproduces_the_trained_schedule(command: str, trained: int, expected: str) -> None:
    from lesion_training.shipped_model import reproduce_command

    assert reproduce_command(command, trained, 40) == expected


def test_a_two_stage_card_names_both_stages_and_the_command_that_repeats_them(tmp_path):
    from lesion_training.shipped_model import Settings, render_model_card, reproduce_command

    # An invocation that only rewrote the card (no schedule options) still reproduces both stages.
    assert reproduce_command("python -m lesion_training.shipped_model --workers 2 --no-mirroring", 70, 40,
                             continue_epochs=50) == (
        "python -m lesion_training.shipped_model --workers 2 --epochs 70 --continue-epochs 50 --no-mirroring")
    first = {"configuration": "small", "schedule": {"num_epochs": 70, "num_iterations_per_epoch": 25}}
    info = {
        "name": "femur-lesion-synthetic-demo", "version": "0.2.0", "configuration": "finetune",
        "target_spacing_mm_zyx": [2.2, 1.6, 1.6], "patch_size_zyx": [96, 48, 48],
        "features_per_stage": [16, 32, 64, 128, 128], "label_names": {"0": "background", "1": "lesion", "2": "cyst"},
        "schedule": {"num_epochs": 50, "num_iterations_per_epoch": 25, "num_val_iterations_per_epoch": 5,
                     "dice_smoothing": False},
        "training": {"num_training_cases": 77, "fine_tuned_from": {"name": "femur-lesion-synthetic-demo", **first}},
    }
    settings = Settings(workspace=tmp_path, model_folder=tmp_path / "model", card=tmp_path / "README.md",
                        training_seeds="1000-1039", evaluation_seeds="2000-2009", validation_seeds="3000-3009",
                        configuration=None, workers=2, mirroring=False, resume=False, steps=(), continue_epochs=50)
    card = render_model_card(info, None, {"train": 3600.0, "continue": 2700.0}, 14_700_000, settings,
                             "python -m lesion_training.shipped_model --workers 2 --no-mirroring")
    assert "| configuration | `small`:" in card
    assert "| schedule | 70 epochs x 25 iterations (batch 2), then 50 epochs x 25 more from those weights" in card
    assert "python -m lesion_training.shipped_model --workers 2 --epochs 70 --continue-epochs 50 --no-mirroring" in card
    assert "Reproduce from scratch (105 min on 2 CPU cores" in card
    assert "first stage's schedule was lengthened to 70 epochs" in card
    assert "went on for 50 epochs from the first stage's weights with Dice (without smoothing) + CE" in card
    # The card links the record of the experiments behind the recipe, which must exist beside it.
    from lesion_training.shipped_model import EXPERIMENTS_DOC

    assert f"](../{EXPERIMENTS_DOC})" in card
    assert (Path(__file__).resolve().parents[1] / EXPERIMENTS_DOC).is_file()


def test_a_gpu_card_names_the_epochs_that_fitted_the_budget_and_the_command_that_repeats_the_training(tmp_path):
    from lesion_training.shipped_model import Settings, render_model_card, reproduce_command

    # A card rewritten by an invocation without --config/--device/--time-budget-min still names the model's.
    assert reproduce_command("python -m lesion_training.shipped_model --workers 2 --no-mirroring", 1000, 1000,
                             configuration="small_gpu", device="cuda", time_budget_s=300.0,
                             default_time_budget_s=450.0) == (
        "python -m lesion_training.shipped_model --workers 2 --config small_gpu --device cuda --time-budget-min 5 "
        "--no-mirroring")
    info = {
        "name": "femur-lesion-synthetic-demo", "version": "0.2.0", "configuration": "small_gpu", "batch_size": 8,
        "target_spacing_mm_zyx": [2.3, 1.6, 1.6], "patch_size_zyx": [96, 48, 48],
        "features_per_stage": [16, 32, 64, 128, 128], "label_names": {"0": "background", "1": "lesion", "2": "cyst"},
        "schedule": {"num_epochs": 1000, "num_iterations_per_epoch": 250, "num_val_iterations_per_epoch": 10,
                     "dice_smoothing": True, "time_budget_s": 300.0},
        "training": {"num_training_cases": 225, "device": "cuda", "epochs_trained": {"fold_all": 42}},
    }
    settings = Settings(workspace=tmp_path, model_folder=tmp_path / "model", card=tmp_path / "README.md",
                        training_seeds="1000-1119", evaluation_seeds="2000-2009", validation_seeds="3000-3009",
                        configuration=None, workers=2, mirroring=False, resume=False, steps=())
    card = render_model_card(info, None, {"cohort": 570.0, "train": 311.0}, 14_700_000, settings,
                             "python -m lesion_training.shipped_model --workers 2 --no-mirroring")
    assert ("| schedule | **42 epochs** x 250 iterations (batch 8): as many as fitted in a 5-minute budget "
            "(at most 1000)") in card
    assert "--config small_gpu --device cuda --time-budget-min 5 --no-mirroring" in card
    assert "training on the GPU, every other step on 2 shared CPU cores" in card
    assert "Seeds 1000-1119 are used nowhere else" in card
    assert "2 CPU cores, measured below" not in card
