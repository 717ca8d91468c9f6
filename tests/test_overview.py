"""Overview PNG: radiological orientation from the affine, labels drawn, atomic write."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest

from operators.overview import display_orientation, render_overview


def _volume(feet_first: bool) -> tuple[hd.Volume, np.ndarray]:
    """A 20 x 16 x 24 CT whose label 1 sits at the patient's left (+x LPS) and high (+z)."""
    shape = (20, 16, 24)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[0, 0, 1.0], [0, 1.0, 0], [2.0, 0, 0]])
    if feet_first:
        # Columns run towards the patient's right and slices towards the feet, as FFS scanners write.
        affine[:3, :3] = np.array([[0, 0, -1.0], [0, 1.0, 0], [-2.0, 0, 0]])
    ct = hd.Volume(np.full(shape, -1000.0, np.float32), affine, "PATIENT")
    labels = np.zeros(shape, np.uint8)
    index = np.indices(shape).reshape(3, -1).T
    lps = np.c_[index, np.ones(len(index))] @ affine.T
    centre = lps[:, :3].mean(axis=0)
    at_left_and_high = (lps[:, 0] > centre[0] + 3) & (lps[:, 2] > centre[2] + 5)
    labels.reshape(-1)[at_left_and_high] = 1
    ct.array[labels > 0] = 400.0
    return ct, labels


@pytest.mark.parametrize("feet_first", [False, True])
def test_display_puts_patient_left_on_picture_right_and_head_on_top(feet_first):
    ct, labels = _volume(feet_first)
    ct_d, lab_d = display_orientation(ct, labels)
    coronal = lab_d.max(axis=1)  # rows: head -> feet, columns: patient right -> left
    rows, cols = np.nonzero(coronal)
    assert cols.min() > coronal.shape[1] // 2, "patient left must be on the right of the picture"
    assert rows.max() < coronal.shape[0] // 2, "the head must be at the top"
    assert ct_d.array[lab_d > 0].min() == 400.0, "CT and labels must be reoriented together"


def test_render_overview_writes_png_and_leaves_no_temporary_files(tmp_path):
    ct, labels = _volume(False)
    out = render_overview(ct, labels, tmp_path / "overview.png", title="test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["overview.png"]


def test_render_overview_rejects_mismatched_labels(tmp_path):
    ct, labels = _volume(False)
    with pytest.raises(ValueError, match="does not match"):
        render_overview(ct, labels[:-1], tmp_path / "x.png")


def test_projection_keeps_the_lesion_over_the_femur_on_every_ray_across_slabs():
    from operators.overview import DEFAULT_LABEL_STYLES, _projection_labels

    # 70 slices: the map is scanned in slabs of slices, the rays (axis 1) must not care.
    labels = np.zeros((70, 12, 9), np.uint8)
    labels[:, 2:10, 1:8] = 1  # left femur on every slice
    labels[33, 5, 4] = 3  # one lesion voxel just past a slab boundary
    labels[69, 7, 2] = 4  # a cyst on the last slice
    labels[0, 0, 0] = 2
    coronal = _projection_labels(labels, DEFAULT_LABEL_STYLES, axis=1)
    expected = np.zeros((70, 9), np.uint8)
    expected[:, 1:8] = 1
    expected[33, 4] = 3
    expected[69, 2] = 4
    expected[0, 0] = 2
    np.testing.assert_array_equal(coronal, expected)


def test_one_pass_summary_counts_and_presence_equal_whole_map_comparisons():
    from operators.overview import DEFAULT_LABEL_STYLES, _summarise_labels

    rng = np.random.default_rng(2)
    labels = rng.choice(np.array([0, 1, 3, 4, 7], np.uint8), size=(75, 10, 8), p=[0.6, 0.3, 0.05, 0.03, 0.02])
    summary = _summarise_labels(labels, DEFAULT_LABEL_STYLES, axis=2)
    assert summary.present == [1, 3, 4]  # 2 does not occur; 7 is not a styled label
    for value in DEFAULT_LABEL_STYLES:
        np.testing.assert_array_equal(summary.per_slice[value], (labels == value).sum(axis=(1, 2)))
    # Unstyled non-zero labels still count as labelled (they decide the slices shown).
    np.testing.assert_array_equal(summary.labelled_per_slice, (labels != 0).sum(axis=(1, 2)))
