"""Decoding a series into a HU volume: geometry, values, QC errors, transfer syntaxes."""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import uid

from operators.dicom_scan import SeriesInfo, scan_dicom_folder
from operators.errors import PixelDataError, SeriesGeometryError
from operators.series_selection import DEFAULT_RULES
from operators.series_volume import (
    GeometryPolicy,
    LoadedSeries,
    check_series_geometry,
    load_series_volume,
    load_study,
)
from tests.dicom_factory import FFS_ORIENTATION, copy_instance, hu_at, write_ct_series


def _series(folder: Path) -> SeriesInfo:
    (series,) = scan_dicom_folder(folder).all_series()
    return series


def _assert_values_follow_positions(volume: hd.Volume) -> None:
    """Every voxel holds the HU the factory derived from its own LPS position (to rounding)."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in volume.spatial_shape], indexing="ij"), axis=-1)
    points = grid.reshape(-1, 3) @ volume.affine[:3, :3].T + volume.affine[:3, 3]
    expected = hu_at(points).reshape(volume.spatial_shape)
    np.testing.assert_allclose(volume.array, expected, atol=0.5 + 1e-4, rtol=0)


def test_hfs_volume_geometry_and_values(tmp_path: Path) -> None:
    written = write_ct_series(tmp_path, n_slices=12, pixel_spacing=(0.8, 0.7), slice_spacing=1.5)
    loaded = load_series_volume(_series(tmp_path))
    volume = loaded.volume

    assert isinstance(loaded, LoadedSeries)
    assert volume.array.dtype == np.float32
    assert volume.spatial_shape == (12, 16, 16)
    assert volume.coordinate_system == hd.CoordinateSystemNames.PATIENT
    assert volume.frame_of_reference_uid == written.frame_of_reference_uid
    # Index 0 is the most superior slice (highdicom's order); +x index runs towards patient left.
    expected = np.array(
        [
            [0.0, 0.0, 0.7, written.positions[-1][0]],
            [0.0, 0.8, 0.0, written.positions[-1][1]],
            [-1.5, 0.0, 0.0, written.positions[-1][2]],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    np.testing.assert_allclose(volume.affine, expected, atol=1e-6)
    _assert_values_follow_positions(volume)
    np.testing.assert_array_equal(volume.array, written.hu[::-1].astype(np.float32))
    assert loaded.geometry.slice_spacing_mm == pytest.approx(1.5)
    assert loaded.geometry.shape == (12, 16, 16)


def test_ffs_patient_left_is_plus_x(tmp_path: Path) -> None:
    write_ct_series(tmp_path, orientation=FFS_ORIENTATION, patient_position="FFS")
    volume = load_series_volume(_series(tmp_path)).volume
    # Columns run towards the patient's right in FFS: the column step is -x in LPS.
    np.testing.assert_allclose(volume.affine[:3, 2], [-0.7, 0.0, 0.0], atol=1e-9)
    first_column = volume.affine @ np.array([0, 0, 0, 1.0])
    last_column = volume.affine @ np.array([0, 0, 15, 1.0])
    assert first_column[0] > last_column[0]  # column 0 is on the patient's left
    assert volume.array[0, 0, 0] > volume.array[0, 0, 15]  # the pattern rises towards the left (+x)
    _assert_values_follow_positions(volume)
    # Right-handed (slice, row, column) axes, like highdicom's own volumes.
    assert np.linalg.det(volume.affine[:3, :3]) > 0


def test_order_comes_from_positions_not_instance_numbers_or_names(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    numbers = rng.permutation(12) + 1
    names = [f"{int(v):08x}" for v in rng.integers(0, 2**31, 12)]
    write_ct_series(
        tmp_path, instance_numbers=list(numbers), file_name=lambda k: names[k],
        extra={"SliceThickness": "5", "SpacingBetweenSlices": "3"},  # both wrong on purpose
    )
    loaded = load_series_volume(_series(tmp_path))
    _assert_values_follow_positions(loaded.volume)
    assert loaded.geometry.slice_spacing_mm == pytest.approx(1.5)
    assert loaded.geometry.spacing_between_slices_tag == 3.0
    assert any("SpacingBetweenSlices 3 mm" in w for w in loaded.geometry.warnings)
    # Source headers follow the volume's slice order.
    for k, ds in enumerate(loaded.source_datasets):
        position = loaded.volume.affine @ np.array([k, 0, 0, 1.0])
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], position[:3], atol=1e-6)


def test_signed_and_unsigned_with_per_slice_intercepts(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "s", pixel_representation=1, rescale_intercepts=np.arange(12) * -37.0)
    write_ct_series(tmp_path / "u", pixel_representation=0, rescale_intercepts=-1024.0 - np.arange(12) * 5)
    for name in ("s", "u"):
        loaded = load_series_volume(_series(tmp_path / name))
        assert loaded.volume.array.dtype == np.float32
        _assert_values_follow_positions(loaded.volume)


def test_rescale_slope_is_applied(tmp_path: Path) -> None:
    write_ct_series(tmp_path, pixel_representation=1, rescale_slope=0.5, rescale_intercepts=-100.0)
    _assert_values_follow_positions(load_series_volume(_series(tmp_path)).volume)


def test_float64_is_refused_and_float16_allowed(tmp_path: Path) -> None:
    write_ct_series(tmp_path)
    series = _series(tmp_path)
    with pytest.raises(ValueError, match="float32"):
        load_series_volume(series, dtype=np.float64)
    assert load_series_volume(series, dtype=np.float16).volume.array.dtype == np.float16


def test_identical_duplicate_same_uid_is_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    written = write_ct_series(tmp_path)
    copy_instance(written.paths[4], tmp_path / "copy" / "again.dcm")
    loaded = load_series_volume(_series(tmp_path))
    assert loaded.volume.spatial_shape[0] == 12
    # One of the two files is dropped (the same one every time: order is by position, then path).
    assert loaded.geometry.duplicates_dropped == ("slice_004.dcm",)
    assert "duplicate file slice_004.dcm dropped: same SOPInstanceUID as copy/again.dcm" in caplog.text
    _assert_values_follow_positions(loaded.volume)


def test_identical_duplicate_new_uid_is_dropped_after_comparing_pixels(tmp_path: Path) -> None:
    written = write_ct_series(tmp_path)
    copy_instance(written.paths[4], tmp_path / "resent.dcm", new_sop_uid=True)
    loaded = load_series_volume(_series(tmp_path))
    assert loaded.volume.spatial_shape[0] == 12
    assert loaded.geometry.duplicates_dropped == ("slice_004.dcm",)


def test_conflicting_duplicate_is_an_error(tmp_path: Path) -> None:
    written = write_ct_series(tmp_path)
    copy_instance(written.paths[4], tmp_path / "other.dcm", new_sop_uid=True, add_to_pixels=5)
    expected = r"conflicting duplicate slices .*: other.dcm and slice_004.dcm share position .* differ in pixel values"
    with pytest.raises(SeriesGeometryError, match=expected):
        load_series_volume(_series(tmp_path))


def test_missing_slice_is_an_error_unless_allowed(tmp_path: Path) -> None:
    offsets = [k * 1.5 for k in range(12) if k != 5]
    write_ct_series(tmp_path, slice_offsets=offsets)
    series = _series(tmp_path)
    with pytest.raises(SeriesGeometryError, match=r"missing about 1 slice: gap of 3.00 mm after slice_00[45].dcm"):
        check_series_geometry(series)
    with pytest.raises(SeriesGeometryError, match="missing about 1 slice"):
        load_series_volume(series)

    loaded = load_series_volume(series, policy=GeometryPolicy(allow_missing_slices=True))
    assert loaded.volume.spatial_shape == (12, 16, 16)
    assert loaded.geometry.missing_slices == 1
    assert loaded.geometry.interpolated_slices == (6,)  # counted from the superior end
    assert loaded.geometry.resampled and len(loaded.source_datasets) == 11
    _assert_values_follow_positions(loaded.volume)  # the pattern is linear: interpolation is exact


def test_uneven_spacing_is_an_error_unless_allowed(tmp_path: Path) -> None:
    offsets = [k * 1.5 for k in range(12)]
    offsets[6] += 0.4
    write_ct_series(tmp_path, slice_offsets=offsets)
    series = _series(tmp_path)
    with pytest.raises(SeriesGeometryError, match=r"uneven slice spacing: steps 1.1 to 1.9 mm"):
        check_series_geometry(series)
    loaded = load_series_volume(series, policy=GeometryPolicy(allow_uneven_spacing=True))
    assert loaded.geometry.resampled
    assert loaded.geometry.slice_spacing_mm == pytest.approx(1.5)
    _assert_values_follow_positions(loaded.volume)


def test_rounding_jitter_within_tolerance_is_accepted(tmp_path: Path) -> None:
    offsets = np.arange(12) * 1.5 + np.tile([0.0, 0.004, -0.003], 4)
    write_ct_series(tmp_path, slice_offsets=offsets)
    loaded = load_series_volume(_series(tmp_path))
    assert not loaded.geometry.resampled
    assert loaded.geometry.slice_spacing_mm == pytest.approx((offsets[-1] - offsets[0]) / 11)


def test_gantry_tilt_is_an_error_naming_the_angle(tmp_path: Path) -> None:
    write_ct_series(tmp_path, tilt_deg=15.0)
    with pytest.raises(SeriesGeometryError, match=r"stacked at 15.00 deg .*GantryDetectorTilt is 15 deg"):
        load_series_volume(_series(tmp_path))


def test_sheared_stack_is_an_error(tmp_path: Path) -> None:
    written = write_ct_series(tmp_path)
    ds = pydicom.dcmread(written.paths[7])
    ds.ImagePositionPatient = [float(ds.ImagePositionPatient[0]) + 2.0, *ds.ImagePositionPatient[1:]]
    ds.save_as(written.paths[7])
    with pytest.raises(SeriesGeometryError, match="sheared stack"):
        check_series_geometry(_series(tmp_path))


def test_mixed_sizes_spacing_and_orientation_are_errors(tmp_path: Path) -> None:
    study, series_uid = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    common = {"study_uid": study, "series_uid": series_uid}
    write_ct_series(tmp_path / "a", n_slices=6, **common)
    write_ct_series(tmp_path / "a", n_slices=6, rows=8, origin=(-6.0, -5.0, 29.0), file_name=lambda k: f"b{k}",
                    **common)
    sizes = r"(8x16 \(6 files\), 16x16|16x16 \(6 files\), 8x16) \(6 files\)"
    with pytest.raises(SeriesGeometryError, match=r"mixed image size \(Rows x Columns\) in .*: " + sizes):
        check_series_geometry(_series(tmp_path / "a"))

    write_ct_series(tmp_path / "b", n_slices=6, **common)
    write_ct_series(tmp_path / "b", n_slices=6, pixel_spacing=(0.9, 0.9), origin=(-6.0, -5.0, 29.0),
                    file_name=lambda k: f"b{k}", **common)
    with pytest.raises(SeriesGeometryError, match="mixed PixelSpacing"):
        check_series_geometry(_series(tmp_path / "b"))

    write_ct_series(tmp_path / "c", n_slices=6, **common)
    write_ct_series(tmp_path / "c", n_slices=6, orientation=FFS_ORIENTATION, origin=(-6.0, -5.0, 29.0),
                    file_name=lambda k: f"b{k}", **common)
    with pytest.raises(SeriesGeometryError, match="mixed orientations"):
        check_series_geometry(_series(tmp_path / "c"))


@pytest.mark.parametrize("n_slices", [1, 2])
def test_one_or_two_slices_are_not_a_volume(tmp_path: Path, n_slices: int) -> None:
    write_ct_series(tmp_path, n_slices=n_slices)
    with pytest.raises(SeriesGeometryError, match=f"has {n_slices} distinct slice positions?: not a volume"):
        load_series_volume(_series(tmp_path))


@pytest.mark.parametrize(
    ("syntax", "signed", "size"),
    [
        (uid.ExplicitVRLittleEndian, True, 16),
        (uid.ImplicitVRLittleEndian, True, 16),
        (uid.DeflatedExplicitVRLittleEndian, True, 16),
        (uid.RLELossless, True, 16),
        (uid.JPEGLSLossless, True, 16),
        (uid.JPEGLSLossless, False, 16),
        (uid.JPEG2000Lossless, True, 32),  # OpenJPEG's encoder needs 32 px for its 6 resolutions
        (uid.JPEG2000Lossless, False, 32),
        (uid.JPEGLossless, False, 16),
    ],
    ids=lambda v: v.name.split(" ")[0] + "_" + v.name.split(" ")[1] if isinstance(v, uid.UID) else str(v),
)
def test_transfer_syntaxes(tmp_path: Path, syntax: uid.UID, signed: bool, size: int) -> None:
    if syntax == uid.JPEGLossless:
        # pydicom has no JPEG Lossless encoder; the test writes it with imagecodecs (nnU-Net needs it).
        pytest.importorskip("imagecodecs", reason="imagecodecs writes the JPEG Lossless test files")
    write_ct_series(
        tmp_path, n_slices=4, rows=size, columns=size, transfer_syntax=syntax,
        pixel_representation=int(signed), rescale_intercepts=[0.0, -10.0, 3.0, -1024.0] if signed else None,
    )
    series = _series(tmp_path)
    assert {i.transfer_syntax_uid for i in series.instances} == {syntax}
    loaded = load_series_volume(series, policy=GeometryPolicy())
    _assert_values_follow_positions(loaded.volume)


def test_truncated_pixel_data_names_the_file(tmp_path: Path) -> None:
    written = write_ct_series(tmp_path, n_slices=4)
    data = written.paths[2].read_bytes()
    written.paths[2].write_bytes(data[:-100])
    with pytest.raises(PixelDataError, match=r"^slice_002.dcm: pixel data cannot be decoded"):
        load_series_volume(_series(tmp_path))


def test_missing_pixel_data_names_the_file(tmp_path: Path) -> None:
    written = write_ct_series(tmp_path, n_slices=4)
    ds = pydicom.dcmread(written.paths[1])
    del ds.PixelData
    ds.save_as(written.paths[1])
    with pytest.raises(PixelDataError, match=r"^slice_001.dcm: no pixel data$"):
        load_series_volume(_series(tmp_path))


def test_dataset_without_file_meta_is_decoded(tmp_path: Path) -> None:
    written = write_ct_series(tmp_path, n_slices=4)
    ds = pydicom.dcmread(written.paths[0])
    del ds.file_meta
    ds.preamble = None
    pydicom.dcmwrite(written.paths[0], ds, implicit_vr=True, little_endian=True)
    _assert_values_follow_positions(load_series_volume(_series(tmp_path)).volume)


def test_empty_sop_uids_are_taken_from_file_meta_for_source_headers(tmp_path: Path) -> None:
    written = write_ct_series(tmp_path, n_slices=4, extra={"SOPInstanceUID": "", "SOPClassUID": ""})
    series = _series(tmp_path)
    loaded = load_series_volume(series)
    assert {ds.SOPInstanceUID for ds in loaded.source_datasets} == set(written.sop_uids)
    assert {ds.SOPClassUID for ds in loaded.source_datasets} == {uid.CTImageStorage}
    assert all(i.header.SOPInstanceUID == "" for i in series.instances)  # the index keeps the file's value


def _digest(folder: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_load_study_never_modifies_inputs_and_logs_timings(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_ct_series(tmp_path / "a", extra={"SOPInstanceUID": ""})
    write_ct_series(tmp_path / "b", transfer_syntax=uid.RLELossless, slice_spacing=3.0)
    before = _digest(tmp_path)
    caplog.set_level(logging.INFO, logger="operators")
    loaded = load_study(tmp_path)
    assert _digest(tmp_path) == before
    assert loaded.geometry.slice_spacing_mm == pytest.approx(1.5)
    assert "load_study: scan" in caplog.text and "decode" in caplog.text


def test_load_study_falls_back_when_best_series_has_a_gap(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    thin = write_ct_series(tmp_path / "thin", slice_spacing=1.0, slice_offsets=[k for k in range(14) if k != 7])
    thick = write_ct_series(tmp_path / "thick", slice_spacing=3.0)
    loaded = load_study(tmp_path)
    assert loaded.series.series_instance_uid == thick.series_uid
    assert "falling back to" in caplog.text
    with pytest.raises(SeriesGeometryError, match=thin.series_uid):
        load_study(tmp_path, fallback=False)
    assert load_study(tmp_path, policy=GeometryPolicy(allow_missing_slices=True)).series.series_instance_uid == (
        thin.series_uid
    )


def test_load_study_uses_given_rules(tmp_path: Path) -> None:
    write_ct_series(tmp_path, n_slices=4)
    loaded = load_study(tmp_path, rules=DEFAULT_RULES.with_options(min_slices=3))
    assert loaded.volume.spatial_shape == (4, 16, 16)


def test_decoding_in_threads_gives_the_same_volume(tmp_path: Path) -> None:
    write_ct_series(tmp_path, transfer_syntax=uid.RLELossless)
    series = _series(tmp_path)
    one = load_series_volume(series, max_workers=1).volume
    four = load_series_volume(series, max_workers=4).volume
    np.testing.assert_array_equal(one.array, four.array)
    np.testing.assert_array_equal(one.affine, four.affine)
    with pytest.raises(ValueError, match="max_workers"):
        load_series_volume(series, max_workers=0)


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="gap_factor"):
        GeometryPolicy(gap_factor=1.0)
    with pytest.raises(ValueError, match="max_shear_deg"):
        GeometryPolicy(max_shear_deg=-1.0)
    assert math.isclose(GeometryPolicy().max_shear_deg, 0.1)


def test_same_plane_shifted_in_plane_is_a_conflict(tmp_path: Path) -> None:
    written = write_ct_series(tmp_path)
    ds = pydicom.dcmread(copy_instance(written.paths[3], tmp_path / "shifted.dcm", new_sop_uid=True))
    ds.ImagePositionPatient = [float(ds.ImagePositionPatient[0]) + 5.0, *ds.ImagePositionPatient[1:]]
    ds.save_as(tmp_path / "shifted.dcm")
    with pytest.raises(SeriesGeometryError, match=r"share the slice plane at .* but are 5.00 mm apart in-plane"):
        check_series_geometry(_series(tmp_path))


def test_transfer_syntax_without_decoder_fails_before_decoding(tmp_path: Path) -> None:
    written = write_ct_series(tmp_path, n_slices=4)
    ds = pydicom.dcmread(written.paths[2])
    ds.file_meta.TransferSyntaxUID = uid.MPEG2MPML
    ds.PixelData = pydicom.encaps.encapsulate([b"\0" * 64])
    ds.save_as(written.paths[2])
    with pytest.raises(PixelDataError, match=r"^slice_002.dcm: no installed decoder for transfer syntax MPEG2"):
        load_series_volume(_series(tmp_path))


@pytest.mark.parametrize("syntax", [uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian])
@pytest.mark.parametrize("representation,bits_stored", [(1, 16), (1, 12), (0, 16), (0, 12)])
@pytest.mark.parametrize("slope", [0.5, 1.0])
def test_direct_read_of_plain_files_gives_pydicoms_values(tmp_path, syntax, representation, bits_stored, slope):
    # Uncompressed 16-bit slices are read straight from the file at the offset the scan found; the
    # values must be pydicom's, unused high bits included (masked when unsigned, sign-extended when
    # signed), and the volume the one decoding each file with pydicom gives (with slope 1 the rescale
    # is one addition instead of a multiplication and an addition).
    from operators.series_volume import _read_native_slice

    folder = tmp_path / "ct"
    write_ct_series(folder, n_slices=4, rows=6, columns=7, transfer_syntax=syntax,
                    pixel_representation=representation, rescale_slope=slope)
    rng = np.random.default_rng(bits_stored + 10 * representation)
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        ds.BitsStored, ds.HighBit = bits_stored, bits_stored - 1
        # Random 16-bit words: garbage above BitsStored must be treated as pydicom treats it.
        ds.PixelData = rng.integers(0, 2**16, size=(6, 7), dtype=np.uint16).tobytes()
        ds.save_as(path, enforce_file_format=True)

    index = scan_dicom_folder(folder)
    series = next(iter(next(iter(index.studies.values())).series.values()))
    for instance in series.instances:
        direct = _read_native_slice(instance)
        reference = pydicom.pixels.pixel_array(pydicom.dcmread(instance.path))
        assert direct is not None, "the plain case must take the direct read"
        assert direct.dtype == reference.dtype
        np.testing.assert_array_equal(direct, reference)

    loaded = load_series_volume(series)
    slope_intercept = [(float(i.header.RescaleSlope), float(i.header.RescaleIntercept)) for i in series.instances]
    expected = {tuple(np.round(i.image_position, 3)): pydicom.pixels.pixel_array(pydicom.dcmread(i.path))
                .astype(np.float32) * np.float32(s) + np.float32(b)
                for i, (s, b) in zip(series.instances, slope_intercept)}
    for k, ds in enumerate(loaded.source_datasets):
        np.testing.assert_array_equal(loaded.volume.array[k], expected[tuple(np.round(
            [float(v) for v in ds.ImagePositionPatient], 3))])


def test_direct_read_leaves_other_files_to_pydicom(tmp_path):
    from operators.series_volume import _read_native_slice

    write_ct_series(tmp_path / "be", n_slices=3, rows=6, columns=7, transfer_syntax=uid.ExplicitVRBigEndian)
    write_ct_series(tmp_path / "rle", n_slices=3, rows=6, columns=7, transfer_syntax=uid.RLELossless)
    for name in ("be", "rle"):
        index = scan_dicom_folder(tmp_path / name)
        series = next(iter(next(iter(index.studies.values())).series.values()))
        assert all(_read_native_slice(i) is None for i in series.instances), name
        assert load_series_volume(series).volume.spatial_shape == (3, 6, 7)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.int32, np.uint32])
@pytest.mark.parametrize("slope,intercept", [(1.0, 0.0), (1.0, -1024.0), (1.0, -1024.5), (1.0, 0.1),
                                             (1.0, -3.3e7), (0.5, -1024.0), (2.5, 0.3)])
def test_rescale_gives_the_float32_multiply_then_add(dtype, slope, intercept):
    # The rescale of every stored value equals stored * slope + intercept computed in two float32
    # steps, whichever way it is done (one addition where the slope is 1 and the values fit in float32).
    from operators.series_volume import _rescale_into

    info = np.iinfo(dtype)
    if info.bits <= 16:
        stored = np.arange(info.min, info.max + 1).astype(dtype)
    else:
        stored = np.random.default_rng(3).integers(info.min, info.max, size=100000, dtype=dtype, endpoint=True)
    expected = np.empty(stored.shape, dtype=np.float32)
    np.multiply(stored, np.float32(slope), out=expected, casting="unsafe")
    expected += np.float32(intercept)
    out = np.empty(stored.shape, dtype=np.float32)
    _rescale_into(stored, slope, intercept, out, Path("x.dcm"))
    np.testing.assert_array_equal(out, expected)


def test_a_large_volume_is_plain_mapped_memory_and_behaves_as_any_array(tmp_path, monkeypatch):
    # Large volumes live in anonymous memory mapped without the huge page request (no stalls where
    # the host's memory is fragmented); the result must be the same volume, usable as any array.
    import pickle

    import operators.series_volume as series_volume

    write_ct_series(tmp_path / "ct", n_slices=5, rows=8, columns=9)
    series = _series(tmp_path / "ct")
    reference = load_series_volume(series)
    assert reference.volume.array.flags.owndata
    monkeypatch.setattr(series_volume, "_MIN_MAPPED_BYTES", 1)
    mapped = load_series_volume(series)
    array = mapped.volume.array
    assert not array.flags.owndata and array.flags.writeable and array.flags.c_contiguous
    assert array.dtype == np.float32 and array.shape == (5, 8, 9)
    np.testing.assert_array_equal(array, reference.volume.array)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(array)), array)
    np.testing.assert_array_equal(mapped.volume.affine, reference.volume.affine)

    big = series_volume._new_volume_array((64, 512, 512))
    assert not big.flags.owndata and big.flags.writeable
    big[-1, -1, -1] = 7.0
    assert float(big[-1, -1, -1]) == 7.0 and big.nbytes == 64 * 2**20
