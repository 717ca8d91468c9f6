"""Synthetic CT generator: the DICOM study, labels.nii.gz, truth.json and the command line."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from operators.volume_io import read_volume
from synthetic_ct import generate_phantom, write_study
from synthetic_ct.cli import main as cli_main
from synthetic_ct.config import TRANSFER_SYNTAX_NAMES
from synthetic_ct.transfer_syntax import available_transfer_syntaxes


def _read_series(files: list[Path]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(f) for f in files]


def _read_labels(path: Path) -> hd.Volume:
    return read_volume(path)


@pytest.fixture(scope="module", params=["HFS", "FFS"])
def written(request, tmp_path_factory):
    ph = generate_phantom(21, "small", patient_position=request.param, lesions=2, cysts=True)
    out = tmp_path_factory.mktemp(f"study_{request.param}") / "study"
    return ph, write_study(ph, out)


def test_layout_and_files(written):
    ph, study = written
    assert study.study_dir == study.root / "DICOM"
    assert study.labels_path.name == "labels.nii.gz" and study.labels_path.is_file()
    assert study.truth_path.name == "truth.json" and study.truth_path.is_file()
    names = [f.name for s in study.series for f in s.files]
    assert all(n.startswith("IM") and "." not in n for n in names)
    # Nothing but DICOM under the study folder, nothing left over next to the output.
    for f in study.study_dir.rglob("*"):
        if f.is_file():
            assert pydicom.dcmread(f, stop_before_pixels=True).SOPClassUID == pydicom.uid.CTImageStorage
    assert [p.name for p in study.root.parent.iterdir()] == ["study"]


def test_thin_series_reads_back_exactly_with_labels_aligned(written):
    ph, study = written
    thin = study.series_by_role("thin")
    vol = hd.get_volume_from_series(_read_series(thin.files), dtype=np.float32)
    assert vol.array.shape == ph.ct.array.shape
    assert np.allclose(vol.affine, ph.ct.affine, atol=1e-4)
    assert np.array_equal(vol.array, ph.ct.array)
    labels = _read_labels(study.labels_path)
    assert labels.array.dtype == np.uint8
    assert np.allclose(labels.affine, vol.affine, atol=1e-4)
    assert np.array_equal(labels.array, ph.labels.array)
    # Patient left is +x in LPS whatever the patient position.
    cx = {}
    for code in (1, 2):
        idx = np.argwhere(labels.array == code)
        cx[code] = (vol.affine @ np.append(idx.mean(axis=0), 1.0))[0]
    assert cx[1] > cx[2] + 100.0
    # Voxel-for-voxel: the femur labels sit on bone, the ring just outside them does not.
    femur = labels.array == 1
    assert np.median(vol.array[femur]) > 150
    from scipy.ndimage import binary_dilation

    ring = binary_dilation(femur, iterations=2) & (labels.array == 0)
    assert np.median(vol.array[ring]) < np.median(vol.array[femur]) - 100


def test_nifti_header_is_ras(written):
    import nibabel as nib

    ph, study = written
    img = nib.load(str(study.labels_path))
    # NIfTI stores RAS: its x axis is LPS x negated.
    lps_first = ph.labels.affine[:3, 3]
    assert np.allclose(img.affine[:2, 3], -lps_first[:2], atol=1e-3)
    assert np.isclose(img.affine[2, 3], lps_first[2], atol=1e-3)


def test_geometry_headers(written):
    ph, study = written
    dss = _read_series(study.series_by_role("thin").files)
    iop = [float(v) for v in dss[0].ImageOrientationPatient]
    assert iop[:3] == ([1.0, 0.0, 0.0] if ph.config.patient_position == "HFS" else [-1.0, 0.0, 0.0])
    assert all(ds.PatientPosition == ph.config.patient_position for ds in dss)
    z = [float(ds.ImagePositionPatient[2]) for ds in sorted(dss, key=lambda d: d.InstanceNumber)]
    steps = np.diff(z)
    assert np.allclose(np.abs(steps), ph.grid.slice_spacing, atol=1e-3)
    assert (steps > 0).all() if ph.config.slice_order == "ascending" else (steps < 0).all()
    assert float(dss[0].SliceThickness) == ph.grid.slice_thickness
    assert float(dss[0].SpacingBetweenSlices) == ph.grid.slice_spacing


def test_three_series_are_distinct(written):
    ph, study = written
    firsts = {s.role: pydicom.dcmread(s.files[0], stop_before_pixels=True) for s in study.series}
    assert set(firsts) == {"thin", "thick", "localizer"}
    assert len({d.SeriesInstanceUID for d in firsts.values()}) == 3
    assert len({int(d.SeriesNumber) for d in firsts.values()}) == 3
    assert len({d.StudyInstanceUID for d in firsts.values()}) == 1
    assert len({d.FrameOfReferenceUID for d in firsts.values()}) == 1
    assert list(firsts["localizer"].ImageType) == ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    assert list(firsts["thin"].ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert list(firsts["thick"].ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert float(firsts["thick"].SliceThickness) >= 3.0 > 0 < float(firsts["thin"].SliceThickness)
    assert float(firsts["thick"].SliceThickness) > float(firsts["thin"].SliceThickness)
    assert firsts["thin"].ConvolutionKernel != firsts["thick"].ConvolutionKernel
    assert len(study.series_by_role("localizer").files) == 1
    sops = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for s in study.series for f in s.files]
    assert len(set(sops)) == len(sops)
    # The thick series is the same patient: it reads back as a volume in the same frame.
    thick = hd.get_volume_from_series(_read_series(study.series_by_role("thick").files), dtype=np.float32)
    assert np.allclose(thick.affine[:3, 1:3], ph.ct.affine[:3, 1:3])
    assert np.allclose(thick.affine[:2, 3], ph.ct.affine[:2, 3], atol=1e-3)
    assert np.allclose(thick.affine, ph.thick_ct.affine, atol=1e-3)


def test_patient_identity_in_headers_only(written):
    ph, study = written
    ds = pydicom.dcmread(study.series_by_role("thin").files[0], stop_before_pixels=True)
    assert ds.PatientName == ph.identity.name and ds.PatientID == ph.identity.patient_id
    assert ds.PatientBirthDate == ph.identity.birth_date and ds.PatientSex in ("F", "M")
    text = study.truth_path.read_text()
    for value in (ph.identity.name, ph.identity.name.split("^")[0], ph.identity.patient_id, ph.identity.birth_date):
        assert value not in text


def test_truth_json_describes_the_series_and_labels(written):
    ph, study = written
    truth = json.loads(study.truth_path.read_text())
    assert truth["seed"] == 21 and truth["preset"] == "small"
    by_role = {s["role"]: s for s in truth["series"]}
    for s in study.series:
        assert by_role[s.role]["series_instance_uid"] == s.uid
        assert by_role[s.role]["transfer_syntax"] == s.transfer_syntax
        assert by_role[s.role]["number_of_instances"] == len(s.files)
    assert by_role["thin"]["primary"] and truth["labels_geometry_series_uid"] == by_role["thin"]["series_instance_uid"]
    labels = _read_labels(study.labels_path).array
    for k in range(5):
        assert truth["label_voxel_counts"][str(k)] == int((labels == k).sum())
    assert sum(x["voxel_count"] for x in truth["lesions"]) == int((labels == 3).sum())
    assert truth["grid"]["shape"] == list(labels.shape)
    assert truth["grid"]["patient_position"] == ph.config.patient_position


def test_signed_and_unsigned_storage_decode_to_the_same_hu(by_storage, tmp_path):
    from synthetic_ct.scanner import circle_mask

    out = {}
    for storage in ("signed", "unsigned"):
        ph = by_storage[storage]
        st = write_study(ph, tmp_path / storage, series=("thin",))
        dss = _read_series(st.series_by_role("thin").files)
        assert dss[0].PixelRepresentation == (1 if storage == "signed" else 0)
        assert float(dss[0].RescaleIntercept) == (0.0 if storage == "signed" else -1024.0)
        assert float(dss[0].RescaleSlope) == 1.0
        assert dss[0].pixel_array.dtype == (np.int16 if storage == "signed" else np.uint16)
        out[storage] = hd.get_volume_from_series(dss, dtype=np.float32).array
        assert np.array_equal(out[storage], ph.ct.array)
    # Same patient, same HU inside the reconstruction circle; outside it each vendor's padding.
    inside = circle_mask(by_storage["signed"].grid)
    assert np.array_equal(out["signed"][:, inside], out["unsigned"][:, inside])
    assert out["unsigned"][:, inside].min() == -1024
    assert (out["unsigned"][:, ~inside] == -1024).all()


@pytest.fixture(scope="module")
def by_storage():
    """A signed and an unsigned study (with padding outside the reconstruction circle)."""
    return {s: generate_phantom(9, "small", storage=s, lesions=1, circular_fov=True) for s in ("signed", "unsigned")}


@pytest.mark.parametrize("name", sorted(TRANSFER_SYNTAX_NAMES))
@pytest.mark.parametrize("storage", ["signed", "unsigned"])
def test_every_offered_transfer_syntax_decodes_back(name, storage, by_storage, tmp_path):
    offered = available_transfer_syntaxes()
    if name not in offered:
        pytest.skip(f"no {name} encoder installed here")
    ph = by_storage[storage]
    st = write_study(ph, tmp_path / "s", series=("thick", "localizer"), transfer_syntax=name)
    for s in st.series:
        assert s.transfer_syntax == offered[name]
        for f in s.files:
            ds = pydicom.dcmread(f)
            assert ds.file_meta.TransferSyntaxUID == offered[name]
    thick = hd.get_volume_from_series(_read_series(st.series_by_role("thick").files), dtype=np.float32)
    assert np.array_equal(thick.array, ph.thick_ct.array)
    loc = pydicom.dcmread(st.series_by_role("localizer").files[0])
    assert np.array_equal(loc.pixel_array, ph.localizer.array)


def test_always_offered_syntaxes():
    assert {"explicit", "implicit", "deflated", "rle"} <= set(available_transfer_syntaxes())


@pytest.fixture(scope="module")
def plain():
    return generate_phantom(10, "small", lesions=False)


def test_per_series_transfer_syntax(plain, tmp_path):
    st = write_study(plain, tmp_path / "s", transfer_syntax={"thin": "rle", "localizer": "implicit"})
    assert st.series_by_role("thin").transfer_syntax == pydicom.uid.RLELossless
    assert st.series_by_role("localizer").transfer_syntax == pydicom.uid.ImplicitVRLittleEndian
    assert st.series_by_role("thick").transfer_syntax == pydicom.uid.ExplicitVRLittleEndian


def test_existing_output_is_kept_unless_overwrite(plain, tmp_path):
    ph = plain
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        write_study(ph, target, series=("localizer",))
    assert (target / "keep.txt").exists()
    with pytest.raises(ValueError, match="unknown series"):
        write_study(ph, tmp_path / "other", series=("coronal",))
    write_study(ph, target, series=("localizer",), overwrite=True)
    assert not (target / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folders left


def test_cli_summary_has_no_patient_identifiers(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = cli_main(["--seed", "17", "--preset", "small", "--out", str(out), "--series", "thin,localizer", "--lesions", "2"])
    assert rc == 0
    captured = capsys.readouterr()
    assert "seed 17" in captured.out and "lesion" in captured.out
    ds = pydicom.dcmread(next((out / "DICOM").rglob("IM*")), stop_before_pixels=True)
    text = captured.out + captured.err
    for value in (str(ds.PatientName), str(ds.PatientName).split("^")[0], ds.PatientID, ds.PatientBirthDate, ds.AccessionNumber):
        assert value not in text
    # A second run onto the same folder fails with a one-line message and a non-zero status.
    rc = cli_main(["--seed", "17", "--out", str(out), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
def test_files_pass_dciodvfy(written):
    ph, study = written
    for s in study.series:
        res = subprocess.run(["dciodvfy", "-new", str(s.files[0])], capture_output=True, text=True, timeout=60)
        errors = [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], f"{s.role}: {errors}"
