"""Synthetic CT generator: determinism, geometry, densities and ground truth (in memory)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi

from synthetic_ct import PRESETS, PhantomConfig, generate_phantom
from synthetic_ct.tissues import Tissue

SEED = 11


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom(SEED, "small", lesions=3, cysts=True, kvp=120.0)


@pytest.fixture(scope="module")
def fine_left():
    """One femur at 1 mm pixels: fine enough to measure densities away from partial volume."""
    return generate_phantom(
        23, "small", femurs_in_view=("left",), pixel_spacing=1.0, lesions=3, cysts=True, kvp=120.0, noise_sd=12.0,
        circular_fov=False,
    )


def _core(mask: np.ndarray) -> np.ndarray:
    """Voxels whose in-plane 3x3 neighbourhood is all in ``mask`` (away from partial volume)."""
    return ndi.binary_erosion(mask, structure=np.ones((1, 3, 3), bool))


# ---------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_study(phantom):
    again = generate_phantom(SEED, "small", lesions=3, cysts=True, kvp=120.0)
    assert np.array_equal(again.ct.array, phantom.ct.array)
    assert np.array_equal(again.labels.array, phantom.labels.array)
    assert np.array_equal(again.ct.affine, phantom.ct.affine)
    assert again.truth == phantom.truth
    assert again.uids == phantom.uids


def test_different_seeds_differ(phantom):
    other = generate_phantom(SEED + 1, "small", lesions=3, cysts=True, kvp=120.0)
    assert other.truth["femurs"]["left"]["length_mm"] != phantom.truth["femurs"]["left"]["length_mm"]
    assert other.uids["study"] != phantom.uids["study"]


def test_overriding_storage_keeps_the_patient():
    a = generate_phantom(4, "small", storage="signed", circular_fov=False)
    b = generate_phantom(4, "small", storage="unsigned", circular_fov=False)
    # Same anatomy, lesions, noise: the same HU; only the stored representation differs.
    assert np.array_equal(a.labels.array, b.labels.array)
    assert np.array_equal(a.ct.array, b.ct.array)
    assert a.config.storage == "signed" and b.config.storage == "unsigned"
    assert a.uids["study"] != b.uids["study"]


# ---------------------------------------------------------------------- geometry


def test_volumes_share_geometry_and_types(phantom):
    ct, lab = phantom.ct, phantom.labels
    assert ct.array.dtype == np.float32 and lab.array.dtype == np.uint8
    assert ct.array.shape == lab.array.shape == phantom.grid.shape
    assert np.array_equal(ct.affine, lab.affine)
    assert ct.frame_of_reference_uid == lab.frame_of_reference_uid
    # Right-handed (slice, row, column) frame, as highdicom builds from a series.
    assert np.linalg.det(ct.affine[:3, :3]) > 0
    # Integer HU within the 12-bit range: exactly what the DICOM files decode to.
    assert np.array_equal(ct.array, np.rint(ct.array))
    assert ct.array.min() >= -1024 and ct.array.max() <= 3071


def test_small_preset_size_and_spacing(phantom):
    nz, ny, nx = phantom.grid.shape
    spec = PRESETS["small"]
    assert (ny, nx) == (spec.matrix, spec.matrix)
    assert 120 <= nz <= 230
    assert spec.pixel_spacing[0] <= phantom.grid.pixel_spacing[0] <= spec.pixel_spacing[1]
    assert 2.4 <= phantom.grid.slice_spacing <= 3.0


@pytest.mark.parametrize("position, row_x", [("HFS", 1.0), ("FFS", -1.0)])
def test_left_femur_lies_at_patient_left(position, row_x):
    ph = generate_phantom(7, "small", patient_position=position, lesions=False)
    assert ph.grid.image_orientation[0] == row_x
    centroids = {}
    for side, code in (("left", 1), ("right", 2)):
        idx = np.argwhere(ph.labels.array == code)
        assert idx.size > 0
        centroids[side] = ph.ct.affine @ np.append(idx.mean(axis=0), 1.0)
    # LPS: +x is the patient's left.
    assert centroids["left"][0] > centroids["right"][0] + 100.0


def test_both_femurs_span_hip_to_knee(phantom):
    for side in ("left", "right"):
        m = phantom.femur_mask(side)
        zs = phantom.grid.axis_coordinates()[0]
        extent = np.ptp(zs[np.nonzero(m.any(axis=(1, 2)))[0]])
        assert extent > 0.85 * phantom.truth["femurs"][side]["length_mm"]
    assert phantom.truth["knees_in_view"]
    assert (phantom.tissue == Tissue.BONE_CORTEX).any()  # pelvis and knee bones


def test_acetabulum_cups_the_femoral_head(phantom):
    """Pelvic bone surrounds each head closely: above the head centre, within a few mm."""
    zs, ys, xs = phantom.grid.axis_coordinates()
    pelvis = (phantom.tissue == Tissue.BONE_CORTEX) | (phantom.tissue == Tissue.BONE_CANCELLOUS)
    for side in ("left", "right"):
        f = phantom.truth["femurs"][side]
        assert 0.0 < f["hip_joint_min_gap_mm"] <= f["hip_joint_gap_mm"] <= 4.5
        hc, r = np.asarray(f["head_centre_lps"]), f["head_radius_mm"]
        # Distance of every pelvic voxel centre from the head centre.
        k = np.nonzero(np.abs(zs - hc[2]) < r + 15)[0]
        sub = pelvis[k]
        kk, rr, cc = np.nonzero(sub)
        d = np.sqrt((zs[k][kk] - hc[2]) ** 2 + (ys[rr] - hc[1]) ** 2 + (xs[cc] - hc[0]) ** 2)
        # Bone of the cup lies just outside the head, never inside it.
        assert (d < r + f["hip_joint_gap_mm"] + 6).sum() > 10
        assert d.min() > r + f["hip_joint_min_gap_mm"] - 2.0


# ---------------------------------------------------------------------- densities


def test_tissue_densities(fine_left):
    ph = fine_left
    ct, tissue = ph.ct.array, ph.tissue
    med = lambda m: float(np.median(ct[_core(m)]))  # noqa: E731
    cortex = med(tissue == Tissue.FEMUR_CORTEX)
    cancellous = med(tissue == Tissue.FEMUR_CANCELLOUS)
    marrow = med(tissue == Tissue.FEMUR_MARROW)
    muscle = med(tissue == Tissue.MUSCLE)
    fat = med(tissue == Tissue.FAT)
    assert 1000 <= cortex <= 1900
    assert 150 <= cancellous <= 450
    assert -130 <= marrow <= 40
    assert 10 <= muscle <= 70
    assert -130 <= fat <= -60
    assert cortex > cancellous > marrow


def test_lesion_and_cyst_densities(fine_left):
    ph = fine_left
    lab, ct = ph.labels.array, ph.ct.array
    lesion_core = _core(lab == 3)
    cyst_core = _core(lab == 4)
    assert lesion_core.sum() > 20 and cyst_core.sum() > 5
    assert 0 <= np.median(ct[lesion_core]) <= 95
    assert -15 <= np.median(ct[cyst_core]) <= 35
    for les in ph.truth["lesions"]:
        assert 10 <= les["lesion_hu"] <= 85
        if les["subtle"]:
            assert abs(les["contrast_hu"]) < 60
    for cyst in ph.truth["cysts"]:
        assert 0 <= cyst["lesion_hu"] <= 20


def test_noise_level_matches_request(fine_left):
    # Same patient without noise: the difference is the noise the scanner added.
    quiet = generate_phantom(
        23, "small", femurs_in_view=("left",), pixel_spacing=1.0, lesions=3, cysts=True, kvp=120.0, noise_sd=0.0,
        circular_fov=False,
    )
    body = (fine_left.tissue != Tissue.AIR) & (fine_left.tissue != Tissue.TABLE)
    diff = (fine_left.ct.array - quiet.ct.array)[body]
    assert 0.7 * 12.0 < diff.std() < 1.4 * 12.0
    assert abs(diff.mean()) < 1.0


def test_low_kvp_raises_bone_density():
    lo = generate_phantom(5, "small", kvp=80.0, lesions=False)
    hi = generate_phantom(5, "small", kvp=140.0, lesions=False)
    assert np.array_equal(lo.labels.array, hi.labels.array)
    cortex = _core(lo.tissue == Tissue.FEMUR_CORTEX)
    assert np.median(lo.ct.array[cortex]) > np.median(hi.ct.array[cortex]) + 100


# ---------------------------------------------------------------------- ground truth


def test_lesions_and_cysts_lie_inside_their_femur(phantom):
    lab = phantom.labels.array
    left, right = phantom.femur_mask("left"), phantom.femur_mask("right")
    assert not (left & right).any()
    assert np.array_equal(left | right, lab > 0)
    for les in phantom.truth["lesions"] + phantom.truth["cysts"]:
        idx = np.rint(np.linalg.solve(phantom.ct.affine, np.append(les["centre_lps"], 1.0))[:3]).astype(int)
        own = phantom.femur_mask(les["side"])
        # The centroid of a lobulated lesion may fall just outside it, never outside the femur.
        z, y, x = np.clip(idx, 0, np.array(lab.shape) - 1)
        assert own[max(z - 1, 0) : z + 2, max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2].any()
    # Every lesion voxel is inside a femur mask; the femur label plus lesions is the mask.
    assert left[lab == 1].all() and right[lab == 2].all()


def test_truth_matches_label_counts(phantom):
    t = phantom.truth
    lab = phantom.labels.array
    for k in range(5):
        assert t["label_voxel_counts"][str(k)] == int((lab == k).sum())
    assert sum(x["voxel_count"] for x in t["lesions"]) == int((lab == 3).sum())
    assert sum(x["voxel_count"] for x in t["cysts"]) == int((lab == 4).sum())
    for side in ("left", "right"):
        assert t["femurs"][side]["voxel_count"] == int(phantom.femur_mask(side).sum())
    assert len(t["lesions"]) == 3
    assert len(t["cysts"]) >= 1
    vox = float(np.prod(t["grid"]["spacing_mm"]))
    for les in t["lesions"]:
        assert les["region"] in ("head", "neck", "trochanteric", "shaft")
        assert les["volume_mm3"] == pytest.approx(les["voxel_count"] * vox, rel=1e-3)
        assert les["equivalent_diameter_mm"] == pytest.approx((6 * les["volume_mm3"] / np.pi) ** (1 / 3), rel=1e-3)
        assert isinstance(les["subtle"], bool) and isinstance(les["cortical_breach"], bool)


def test_truth_has_no_identity(phantom):
    text = repr(phantom.truth)
    ident = phantom.identity
    for value in (ident.name, ident.name.split("^")[0], ident.patient_id, ident.birth_date, ident.accession_number):
        assert value not in text


def test_no_lesions_no_cysts():
    ph = generate_phantom(12, "small", lesions=False, cysts=False)
    assert not np.isin(ph.labels.array, [3, 4]).any()
    assert ph.truth["lesions"] == [] and ph.truth["cysts"] == []


def test_one_femur_in_view():
    ph = generate_phantom(13, "small", femurs_in_view=("right",), lesions=2)
    lab = ph.labels.array
    assert (lab == 2).sum() > 1000 and not (lab == 1).any()
    assert ph.truth["femurs_in_view"] == ["right"]
    assert all(les["side"] == "right" for les in ph.truth["lesions"])
    assert not ph.femur_mask("left").any()


def test_abdominal_field_of_view_has_no_femur():
    ph = generate_phantom(14, "small", femurs_in_view=())
    assert not (ph.labels.array > 0).any()
    assert ph.truth["femurs_in_view"] == [] and ph.truth["lesions"] == []
    # Still a body: vertebrae, muscle, bowel.
    assert (ph.tissue == Tissue.BONE_CORTEX).any() and (ph.tissue == Tissue.VISCERA).any()


def test_implant_is_metal_inside_its_femur():
    ph = generate_phantom(15, "small", implant="right", extended_hu=False)
    metal = ph.tissue == Tissue.METAL
    assert metal.sum() > 50
    assert ph.femur_mask("right")[metal].all()
    assert (ph.labels.array[metal] == 2).all()
    assert ph.ct.array.max() >= 3000
    assert ph.truth["implant"]["side"] == "right"


def test_knees_out_of_view_truncates_femurs():
    ph = generate_phantom(16, "small", knees_in_view=False, lesions=False)
    assert ph.truth["femurs"]["left"]["truncated"] == "distal"
    assert not ph.truth["knees_in_view"]
    zs = ph.grid.axis_coordinates()[0]
    assert zs.min() > ph.truth["femurs"]["left"]["knee_centre_lps"][2] + 80


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"preset": "huge"}, "unknown preset"),
        ({"colour": "red"}, "unknown override"),
        ({"seed": -1}, "seed"),
        ({"implant": "left", "femurs_in_view": ("right",)}, "implant"),
        ({"lesions": 2, "femurs_in_view": ()}, "lesions need a femur"),
        ({"patient_position": "HFP"}, "patient_position"),
        ({"noise_sd": -5.0}, "noise_sd"),
        ({"transfer_syntax": "jpeg-xl"}, "transfer syntax"),
    ],
)
def test_invalid_requests_raise_clear_errors(kwargs, message):
    args = {"seed": 1, "preset": "small"}
    args.update(kwargs)
    seed, preset = args.pop("seed"), args.pop("preset")
    with pytest.raises(ValueError, match=message):
        generate_phantom(seed, preset, **args)


def test_config_object_and_overrides_combine():
    base = PhantomConfig(patient_position="FFS", lesions=False)
    ph = generate_phantom(3, "small", config=base, noise_sd=5.0)
    assert ph.config.patient_position == "FFS" and ph.config.noise_sd == 5.0
    assert ph.truth["lesions"] == []
