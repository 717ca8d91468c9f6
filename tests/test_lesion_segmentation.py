"""segment_lesions: the lesion model on each femur crop, mapped back exactly, lesions kept inside the femur.

The CT is built by hand on a feet-first grid (slices towards the head, columns towards the patient's
right) with two cylindrical "femurs"; the real splitter cuts them out (its femur segmenter is replaced by
the known masks). Stub models predict from the *crop's* geometry, so that the full-grid result can be
checked against the same shapes computed from the *CT's* geometry: any error in the crop mapping shows.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest

from operators.femur_splitter import FemurSplit, split_femurs
from operators.lesion_model import LesionModel, LesionModelInfo, LesionPrediction
from operators.lesion_segmentation import STUDY_LABELS, label_values, segment_lesions
from tests.test_app_model import lesion_model  # noqa: F401 - session fixture

SPACING = (2.5, 2.0, 2.0)  # (z, y, x) mm
SHAPE = (44, 30, 64)
FEMUR_RADIUS_MM = 13.0
FEMUR_X_MM = {"left": 42.0, "right": -40.0}  # LPS x: the patient's left is +x
LESION_CENTRE_MM = {"left": np.array([45.0, 2.0, 20.0]), "right": np.array([-38.0, -3.0, -15.0])}
LESION_RADIUS_MM = 7.0


def _ffs_affine() -> np.ndarray:
    sz, sy, sx = SPACING
    return np.array([
        [0.0, 0.0, -sx, 63.0],   # LPS x <- column index: towards the patient's right
        [0.0, sy, 0.0, -29.0],   # LPS y <- row index: towards posterior
        [sz, 0.0, 0.0, -54.0],   # LPS z <- slice index: towards the head
        [0.0, 0.0, 0.0, 1.0],
    ])


def _positions(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    index = np.indices(shape).reshape(3, -1).T.astype(np.float64)
    return (index @ affine[:3, :3].T + affine[:3, 3]).reshape(*shape, 3)


def _femur(points: np.ndarray, side: str) -> np.ndarray:
    radial = np.hypot(points[..., 0] - FEMUR_X_MM[side], points[..., 1])
    return (radial <= FEMUR_RADIUS_MM) & (np.abs(points[..., 2]) <= 50.0)


def _ball(points: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    return np.linalg.norm(points - centre, axis=-1) <= radius


class _KnownFemurs:
    """Femur segmenter returning the cylinders (1 left, 2 right), computed from the CT's geometry."""

    def segment(self, ct: hd.Volume) -> np.ndarray:
        points = _positions(ct.spatial_shape, ct.affine)
        labels = np.zeros(ct.spatial_shape, dtype=np.uint8)
        labels[_femur(points, "left")] = 1
        labels[_femur(points, "right")] = 2
        return labels


@pytest.fixture(scope="module")
def ct() -> hd.Volume:
    points = _positions(SHAPE, _ffs_affine())
    array = np.full(SHAPE, -80.0, dtype=np.float32)  # soft tissue
    for side in ("left", "right"):
        radial = np.hypot(points[..., 0] - FEMUR_X_MM[side], points[..., 1])
        femur = _femur(points, side)
        array[femur] = 1200.0
        array[femur & (radial <= 0.7 * FEMUR_RADIUS_MM)] = 300.0
        array[femur & _ball(points, LESION_CENTRE_MM[side], LESION_RADIUS_MM)] = 30.0
    return hd.Volume(array, _ffs_affine(), coordinate_system="PATIENT", frame_of_reference_uid=hd.UID())


@pytest.fixture(scope="module")
def split(ct: hd.Volume) -> FemurSplit:
    result = split_femurs(ct, segmenter=_KnownFemurs())
    assert set(result.femurs) == {"left", "right"}
    return result


def _info(labels: dict[int, str]) -> LesionModelInfo:
    return LesionModelInfo(name="stub", version="1", configuration="3d_fullres", trainer="stub", plans="stub",
                           folds=(0,), label_names=labels)


class _BallModel:
    """Labels a ball around each side's lesion centre (and a cyst ball above it), from the crop's own affine.

    The balls are larger than the femur's radius allows, so part of them falls outside the femur.
    """

    def __init__(self, *, cyst: bool = False, radius: float = 18.0) -> None:
        labels = {0: "background", 1: "lesion"} | ({2: "cyst"} if cyst else {})
        self.model_info = _info(labels)
        self.cyst = cyst
        self.radius = radius
        self.calls = 0

    def predict(self, volume: hd.Volume) -> LesionPrediction:
        self.calls += 1
        points = _positions(volume.spatial_shape, volume.affine)
        labels = np.zeros(volume.spatial_shape, dtype=np.uint8)
        for side in ("left", "right"):
            labels[_ball(points, LESION_CENTRE_MM[side], self.radius)] = 1
            if self.cyst:
                labels[_ball(points, LESION_CENTRE_MM[side] + [0.0, 0.0, 30.0], 5.0)] = 2
        return LesionPrediction(labels=labels)


def test_lesions_come_back_on_the_ct_grid_exactly(ct: hd.Volume, split: FemurSplit) -> None:
    model = _BallModel()
    result = segment_lesions(split, model)

    points = _positions(ct.spatial_shape, ct.affine)
    assert result.full_shape == ct.spatial_shape
    assert np.array_equal(result.affine, ct.affine)
    for side in ("left", "right"):
        femur = result.femurs[side]
        expected_femur = _femur(points, side)
        assert np.array_equal(femur.femur_mask, expected_femur)
        # The model drew its ball in the crop's coordinates; on the CT grid it must be the same ball
        # (computed here from the CT's own affine), cut to the femur.
        ball = np.zeros(ct.spatial_shape, dtype=bool)
        for centre in LESION_CENTRE_MM.values():
            ball |= _ball(points, centre, model.radius)
        expected = ball & expected_femur
        assert femur.lesion_mask.dtype == bool
        assert np.array_equal(femur.lesion_mask, expected)
        assert expected.any() and (ball & ~expected_femur).any(), "the test ball must cross the femur surface"
        assert femur.cyst is None and femur.cyst_mask is None
        assert femur.seconds >= 0.0 and side in result.timings
    assert result.model.name == "stub"
    assert not result.has_cyst_class


def test_labels_outside_the_femur_are_dropped_and_counted(split: FemurSplit) -> None:
    class _Everywhere:
        model_info = _info({0: "background", 1: "lesion"})

        def predict(self, volume: hd.Volume) -> LesionPrediction:
            return LesionPrediction(labels=np.ones(volume.spatial_shape, dtype=np.uint8))

    result = segment_lesions(split, _Everywhere())
    for side, femur in result.femurs.items():
        crop = split.femurs[side]
        assert np.array_equal(femur.lesion_mask, crop.full_mask())
        assert femur.voxels_outside_femur == crop.mask.size - int(crop.mask.sum())
    assert result.has_lesion


def test_cysts_are_their_own_masks_and_label_map_follows_the_conventions(split: FemurSplit) -> None:
    result = segment_lesions(split, _BallModel(cyst=True, radius=6.0))
    assert result.has_cyst_class
    labels = result.label_map()
    for side, femur in result.femurs.items():
        cyst = femur.cyst_mask
        assert cyst is not None and cyst.any() and not (cyst & femur.lesion_mask).any()
        assert not (cyst & ~femur.femur_mask).any()
        assert np.all(labels[cyst] == STUDY_LABELS["cyst"])
        assert np.all(labels[femur.lesion_mask] == STUDY_LABELS["lytic lesion"])
        rest = femur.femur_mask & ~cyst & ~femur.lesion_mask
        assert np.all(labels[rest] == STUDY_LABELS[f"{side} femur"])
    assert set(result.cyst_masks()) == {"left", "right"}
    assert not labels[~np.logical_or.reduce([f.femur_mask for f in result.femurs.values()])].any()


def test_label_values_follow_the_model_names() -> None:
    assert label_values(_info({0: "background", 1: "lesion"})) == (1, None)
    assert label_values(_info({0: "background", 1: "lesion", 2: "cyst"})) == (1, 2)
    assert label_values(_info({0: "background", 2: "Lesion", 1: "Cyst"})) == (2, 1)


def test_bad_model_output_is_refused(split: FemurSplit) -> None:
    class _Wrong:
        def __init__(self, labels: np.ndarray | None, value: int = 0) -> None:
            self.model_info = _info({0: "background", 1: "lesion"})
            self._labels, self._value = labels, value

        def predict(self, volume: hd.Volume) -> LesionPrediction:
            if self._labels is not None:
                return LesionPrediction(labels=self._labels)
            return LesionPrediction(labels=np.full(volume.spatial_shape, self._value, dtype=np.uint8))

    with pytest.raises(ValueError, match="shape"):
        segment_lesions(split, _Wrong(np.zeros((2, 2, 2), dtype=np.uint8)))
    with pytest.raises(ValueError, match=r"label values \[3\]"):
        segment_lesions(split, _Wrong(None, value=3))


def test_no_femur_in_view_runs_no_model(ct: hd.Volume) -> None:
    class _NoFemur:
        def segment(self, volume: hd.Volume) -> np.ndarray:
            return np.zeros(volume.spatial_shape, dtype=np.uint8)

    empty = split_femurs(ct, segmenter=_NoFemur())
    model = _BallModel()
    result = segment_lesions(empty, model)
    assert model.calls == 0
    assert not result.femur_in_view and not result.femurs
    assert result.no_femur_reason == empty.no_femur_reason
    assert not result.label_map().any()


def test_a_real_nnunet_model_goes_through_the_same_mapping(split: FemurSplit, lesion_model: Path) -> None:  # noqa: F811
    model = LesionModel.from_folder(lesion_model, device="cpu", use_mirroring=False)
    result = segment_lesions(split, model)
    lesion_value, _ = label_values(model.model_info)
    assert result.model.name == model.model_info.name
    for side, crop in split.femurs.items():
        femur = result.femurs[side]
        predicted = model.predict(crop.femur_only).labels == lesion_value
        expected = np.zeros(crop.full_shape, dtype=bool)
        expected[crop.box] = predicted & crop.mask
        assert np.array_equal(femur.lesion_mask, expected)
        assert not (femur.lesion_mask & ~femur.femur_mask).any()
