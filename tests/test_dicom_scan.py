"""Header-only scan: folder layouts, non-DICOM and unreadable files, links, grouping by study/series."""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
import pytest
from pydicom.fileset import FileSet
from pydicom.uid import generate_uid

from operators import dicom_scan
from operators.dicom_scan import scan_dicom_folder
from operators.errors import InputError
from tests.dicom_factory import write_ct_series


def _reasons(index: dicom_scan.StudyIndex) -> dict[str, str]:
    return {str(s.path): s.reason for s in index.skipped}


def test_nested_folders_any_names_and_non_dicom_files(tmp_path: Path) -> None:
    written = write_ct_series(
        tmp_path, n_slices=12, file_name=lambda k: f"a/b{k % 3}/IM{k:04d}"  # no extension, 3 levels
    )
    (tmp_path / "README.txt").write_text("not an image\n")
    (tmp_path / "a" / "thumbs.db").write_bytes(os.urandom(300))
    # A DICM marker, then a sequence of undefined length that never ends: the header cannot be parsed.
    (tmp_path / "a" / "broken").write_bytes(
        b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x14\x001.2.840.10008.1.2.1\x00"
        + b"\x08\x00\x05\x11SQ\x00\x00\xff\xff\xff\xff" + bytes(range(7, 57))
    )
    # A header cut short before any identifying attribute.
    (tmp_path / "cut").write_bytes(written.paths[0].read_bytes()[:200])

    index = scan_dicom_folder(tmp_path)

    assert index.n_files == 16
    (series,) = index.all_series()
    assert series.series_instance_uid == written.series_uid
    assert {i.path for i in series.instances} == {p.resolve() for p in written.paths}
    assert all(not i.relative_path.is_absolute() for i in series.instances)
    reasons = _reasons(index)
    assert set(reasons) == {"README.txt", "a/thumbs.db", "a/broken", "cut"}
    assert reasons["README.txt"].startswith("not DICOM")
    assert reasons["a/broken"].startswith("unreadable DICOM header")
    assert reasons["cut"].startswith("unreadable DICOM header: no SOPClassUID or SeriesInstanceUID")


def test_instance_info_holds_what_later_steps_need(tmp_path: Path) -> None:
    written = write_ct_series(tmp_path, n_slices=3, rows=8, columns=10, pixel_spacing=(0.8, 0.7))
    index = scan_dicom_folder(tmp_path)
    (series,) = index.all_series()
    first = next(i for i in series.instances if i.path == written.paths[0].resolve())
    assert first.sop_instance_uid == written.sop_uids[0]
    assert first.sop_class_uid == pydicom.uid.CTImageStorage
    assert first.instance_number == 1
    assert first.image_position == pytest.approx(tuple(written.positions[0]))
    assert first.image_orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    assert first.pixel_spacing == (0.8, 0.7)
    assert (first.rows, first.columns) == (8, 10)
    assert first.transfer_syntax_uid == pydicom.uid.ExplicitVRLittleEndian
    assert "PixelData" not in first.header  # headers only
    assert first.header.PatientID == "SYNTH-0001"  # source attributes kept for the SEG writer
    assert series.slice_spacing_mm == pytest.approx(1.5)


def test_empty_folder_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="holds no files"):
        scan_dicom_folder(tmp_path)


def test_missing_folder_and_file_instead_of_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        scan_dicom_folder(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is not a folder"):
        scan_dicom_folder(tmp_path / "file")


def test_folder_with_only_non_dicom_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(100))
    with pytest.raises(InputError, match=r"no DICOM file found among 2 files .*2 not DICOM") as info:
        scan_dicom_folder(tmp_path)
    assert "\n" not in str(info.value)


def test_symlink_loop_ends_and_each_file_is_indexed_once(tmp_path: Path) -> None:
    written = write_ct_series(tmp_path / "study", n_slices=4)
    (tmp_path / "study" / "loop").symlink_to(tmp_path)  # study/loop -> root: a cycle
    (tmp_path / "alias.dcm").symlink_to(written.paths[0])  # second name of one file
    (tmp_path / "dangling").symlink_to(tmp_path / "missing-target")

    index = scan_dicom_folder(tmp_path)
    (series,) = index.all_series()
    assert series.n_instances == 4
    assert _reasons(index)["dangling"].startswith("unreadable")

    no_links = scan_dicom_folder(tmp_path, follow_symlinks=False)
    assert no_links.all_series()[0].n_instances == 4
    reasons = _reasons(no_links)
    assert reasons["study/loop"] == reasons["alias.dcm"] == "symbolic link: not followed"


def test_unreadable_file_is_skipped_with_its_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = write_ct_series(tmp_path, n_slices=4)
    locked = written.paths[1].resolve()
    real_open = open

    def fake_open(file, *args, **kwargs):  # type: ignore[no-untyped-def]
        if Path(file) == locked:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    # The scan opens files itself before pydicom does; deny that one file (tests may run as root,
    # where chmod cannot make a file unreadable).
    monkeypatch.setattr(dicom_scan, "open", fake_open, raising=False)
    index = scan_dicom_folder(tmp_path)
    assert index.all_series()[0].n_instances == 3
    assert _reasons(index) == {written.paths[1].name: "unreadable: Permission denied"}


def test_studies_and_series_are_grouped(tmp_path: Path) -> None:
    study_a, study_b = generate_uid(), generate_uid()
    thin = write_ct_series(tmp_path / "x", study_uid=study_a, series_number=2, slice_spacing=1.0)
    thick = write_ct_series(tmp_path / "x", study_uid=study_a, series_number=3, slice_spacing=3.0,
                            file_name=lambda k: f"thick_{k}")
    other = write_ct_series(tmp_path / "y", study_uid=study_b, n_slices=5)

    index = scan_dicom_folder(tmp_path)
    assert set(index.studies) == {study_a, study_b}
    assert set(index.studies[study_a].series) == {thin.series_uid, thick.series_uid}
    assert index.studies[study_b].series[other.series_uid].n_instances == 5
    assert index.studies[study_a].series[thick.series_uid].slice_spacing_mm == pytest.approx(3.0)
    assert index.n_instances == 29


def test_empty_study_series_and_sop_instance_uids(tmp_path: Path) -> None:
    # As in anonymised exports: empty UIDs in the dataset, the file meta still names each instance.
    thin = write_ct_series(tmp_path, study_uid="", series_uid="", series_description="thin",
                           extra={"SOPInstanceUID": ""}, file_name=lambda k: f"t{k}")
    write_ct_series(tmp_path, study_uid="", series_uid="", series_description="thick", slice_spacing=3.0,
                    file_name=lambda k: f"s{k}")

    index = scan_dicom_folder(tmp_path)
    assert list(index.studies) == [""]
    series = index.all_series()
    assert len(series) == 2  # told apart by their attributes
    assert all(s.key.startswith("unidentified-series-") and s.series_instance_uid == "" for s in series)
    thin_series = next(s for s in series if s.series_description == "thin")
    assert {i.sop_instance_uid for i in thin_series.instances} == set(thin.sop_uids)


def test_dicomdir_is_skipped_and_its_images_found_by_the_walk(tmp_path: Path) -> None:
    source = write_ct_series(tmp_path / "src", n_slices=3)
    media = tmp_path / "media"
    fileset = FileSet()
    for path in source.paths:
        fileset.add(pydicom.dcmread(path))
    fileset.write(media)

    index = scan_dicom_folder(media)
    assert _reasons(index)["DICOMDIR"].startswith("DICOMDIR")
    (series,) = index.all_series()
    assert {i.sop_instance_uid for i in series.instances} == set(source.sop_uids)


def test_dataset_without_preamble_is_read(tmp_path: Path) -> None:
    written = write_ct_series(tmp_path, n_slices=3)
    ds = pydicom.dcmread(written.paths[0])
    del ds.file_meta
    ds.preamble = None
    raw = tmp_path / "raw_dataset"
    pydicom.dcmwrite(raw, ds, implicit_vr=True, little_endian=True)
    assert raw.read_bytes()[128:132] != b"DICM"
    written.paths[0].unlink()

    index = scan_dicom_folder(tmp_path)
    (series,) = index.all_series()
    assert series.n_instances == 3
    assert any(i.relative_path == Path("raw_dataset") and i.transfer_syntax_uid == "" for i in series.instances)


def test_multiframe_instance_is_indexed_as_such(tmp_path: Path) -> None:
    write_ct_series(tmp_path, n_slices=1, extra={"NumberOfFrames": 2, "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2.1"})
    (series,) = scan_dicom_folder(tmp_path).all_series()
    assert series.is_multiframe
