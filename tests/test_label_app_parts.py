"""Parts of the MONAI Label app that need no server: model versions, label volumes, the local datastore."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from label_app.lib.activelearning import femur_entropy
from label_app.lib.labels import annotation_labels, masks_of
from label_app.lib.local_datastore import LocalDicomDatastore
from label_app.lib.model_store import ModelStore


def _model(folder: Path, marker: str) -> Path:
    (folder / "fold_all").mkdir(parents=True)
    (folder / "plans.json").write_text("{}")
    (folder / "dataset.json").write_text('{"labels": {"background": 0, "lesion": 1}}')
    (folder / "fold_all" / "checkpoint_final.pth").write_text(marker)
    return folder


def test_publish_points_current_at_the_new_version_and_keeps_the_previous(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    assert store.current() is None
    first = store.seed(_model(tmp_path / "base", "base"))
    assert first.name == "0001" and store.current() == first and store.previous() is None
    assert store.seed(_model(tmp_path / "other", "other")) == first  # seeding happens once

    second = store.publish(_model(tmp_path / "tuned", "tuned"))
    assert store.current() == second and store.previous() == first
    assert (second.folder / "fold_all" / "checkpoint_final.pth").read_text() == "tuned"
    assert (first.folder / "fold_all" / "checkpoint_final.pth").read_text() == "base"
    assert os.readlink(store.root / "current") == "versions/0002"  # relative: the store can move

    assert store.rollback() == first
    assert store.current() == first and store.previous() == second
    assert [v.name for v in ModelStore(store.root).versions()] == ["0001", "0002"]


def test_a_reader_never_sees_a_missing_current_while_versions_are_published(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    store.seed(_model(tmp_path / "base", "base"))
    seen: list[str | None] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            current = store.current()
            seen.append(current.name if current else None)

    reader = threading.Thread(target=read)
    reader.start()
    for k in range(5):
        store.publish(_model(tmp_path / f"m{k}", str(k)))
    done.set()
    reader.join()
    assert None not in seen and store.current().name == "0006"


def test_publish_refuses_a_folder_that_is_no_model(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not an nnU-Net model folder"):
        ModelStore(tmp_path / "store").publish(tmp_path / "empty")


def test_label_values_follow_the_label_list() -> None:
    assert annotation_labels(False) == ["femur", "lytic lesion"]
    assert annotation_labels(True) == ["femur", "lytic lesion", "cyst"]
    labels = np.array([[[0, 1, 2, 3]]], dtype=np.uint8)
    masks = masks_of(labels)
    assert masks.femur.tolist() == [[[False, True, True, True]]]
    assert masks.lesion.tolist() == [[[False, False, True, False]]]
    assert masks.cyst.tolist() == [[[False, False, False, True]]]
    with pytest.raises(ValueError, match=r"values \[7\]"):
        masks_of(np.array([[[7]]], dtype=np.uint8))


def test_entropy_is_zero_when_certain_and_one_when_uniform() -> None:
    mask = np.ones((1, 1, 2), dtype=bool)
    certain = np.zeros((3, 1, 1, 2), dtype=np.float32)
    certain[0] = 1.0
    assert femur_entropy(certain, mask) == (pytest.approx(0.0, abs=1e-9), 2)
    uniform = np.full((3, 1, 1, 2), 1 / 3, dtype=np.float32)
    assert femur_entropy(uniform, mask)[0] == pytest.approx(2.0, rel=1e-5)


def test_local_datastore_lists_study_folders_as_images_and_label_files_as_labels(tmp_path: Path) -> None:
    for name in ("case-a", "case-b"):
        (tmp_path / name / "series").mkdir(parents=True)
        (tmp_path / name / "series" / "1.dcm").write_bytes(b"")
    (tmp_path / "empty-folder").mkdir()
    (tmp_path / "notes.txt").write_text("not a study")
    datastore = LocalDicomDatastore(str(tmp_path))
    assert sorted(datastore.list_images()) == ["case-a", "case-b"]
    assert datastore.get_image_uri("case-a") == str((tmp_path / "case-a").resolve())

    label = tmp_path / "upload.nrrd"
    label.write_bytes(b"label")
    assert datastore.save_label("case-b", str(label), "final", {}) == "case-b"
    assert (tmp_path / "labels" / "final" / "case-b.nrrd").read_bytes() == b"label"
    assert datastore.get_unlabeled_images() == ["case-a"]
    assert datastore.datalist() == [{"image": str((tmp_path / "case-b").resolve()),
                                     "label": str((tmp_path / "labels" / "final" / "case-b.nrrd").resolve())}]
    # A fresh instance reads the same state from the folder.
    assert LocalDicomDatastore(str(tmp_path)).get_labeled_images() == ["case-b"]


def test_a_final_label_saved_as_seg_reads_back_equal_with_the_image_shape(tmp_path: Path) -> None:
    import pydicom

    from label_app.lib.dicomweb_datastore import FINAL_SERIES_DESCRIPTION, label_seg, seg_label_volume
    from operators.series_volume import load_study
    from synthetic_ct import generate_phantom, write_study

    written = write_study(generate_phantom(5, "small"), tmp_path / "study", series=("thin",))
    loaded = load_study(written.study_dir)
    shape = loaded.volume.spatial_shape
    labels = np.zeros(shape, dtype=np.uint8)
    labels[2:-2, 10:30, 10:30] = 1
    labels[4:8, 15:20, 15:20] = 2
    labels[10:12, 22:26, 12:14] = 3
    labels[-1] = 0  # empty frames too must come back
    seg = label_seg(labels, loaded)
    assert seg.SeriesDescription == FINAL_SERIES_DESCRIPTION
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Femur", "Lytic lesion", "Cyst"]
    assert int(seg.NumberOfFrames) == 3 * shape[0]  # every frame written
    path = tmp_path / "seg.dcm"
    seg.save_as(path)
    back = seg_label_volume(pydicom.dcmread(path), loaded)
    assert back.shape == shape and back.dtype == np.uint8
    assert np.array_equal(back, labels)
    with pytest.raises(ValueError, match="empty"):
        label_seg(np.zeros(shape, dtype=np.uint8), loaded)
