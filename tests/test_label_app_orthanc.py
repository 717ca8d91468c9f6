"""The MONAI Label app on a real Orthanc (DICOMweb), both on loopback, with no network beyond them.

Two small synthetic studies stored into Orthanc; the server lists their CT series, infers on one (labels
equal to the deploy pipeline's, on the series' grid), and saves a final label: a DICOM-SEG appears in
Orthanc in the CT's study, reads back (highdicom, against the CT) equal to the saved labels with the
image's full shape, and the series no longer counts as unlabeled. No dcmqi is downloaded (the server
would fail to start offline otherwise; the app's ``bin/`` must hold no dcmqi converter afterwards).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests

from gateway.orthanc import OrthancClient
from gateway.orthanc_server import LocalOrthanc, OrthancUnavailableError
from label_app.lib.dicomweb_datastore import FINAL_SERIES_DESCRIPTION, seg_label_volume
from label_app.lib.labels import label_volume
from operators.femur_splitter import split_femurs
from operators.lesion_model import LesionModel
from operators.lesion_segmentation import segment_lesions
from operators.series_volume import load_study
from operators.volume_io import read_volume
from synthetic_ct import generate_phantom, write_study
from tests.label_server_support import APP_DIR, LabelServer
from tests.test_app_model import lesion_model  # noqa: F401 - session fixture

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("label-orthanc")
    try:
        orthanc = LocalOrthanc(folder=root / "orthanc").start()
    except OrthancUnavailableError as error:
        pytest.skip(str(error))
    try:
        client = OrthancClient(url=orthanc.url, auth=orthanc.auth)
        studies = {}
        for name, seed in (("a", 31), ("b", 32)):
            written = write_study(generate_phantom(seed, "small"), root / name, series=("thin",))
            files = sorted(p for p in written.study_dir.rglob("*") if p.is_file())
            header = pydicom.dcmread(files[0], stop_before_pixels=True)
            client.stow(str(header.StudyInstanceUID), files)
            studies[name] = (str(header.SeriesInstanceUID), written.study_dir)
        yield orthanc, studies
    finally:
        orthanc.stop()


@pytest.fixture(scope="module")
def server(pacs, lesion_model: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    orthanc, _ = pacs
    work = tmp_path_factory.mktemp("label-server-orthanc")
    env = {"MONAI_LABEL_DICOMWEB_USERNAME": orthanc.username, "MONAI_LABEL_DICOMWEB_PASSWORD": orthanc.password,
           "MONAI_LABEL_DICOMWEB_CACHE_PATH": str(work / "cache"),
           # Any attempt to reach the internet (dcmqi) fails at once instead of hanging.
           "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": "127.0.0.1,localhost"}
    with LabelServer(orthanc.dicomweb_url, store=work / "store", model=lesion_model, log=work / "server.log",
                     env=env) as running:
        yield running


def test_the_server_lists_the_ct_series_of_orthanc_without_downloading_dcmqi(server: LabelServer, pacs) -> None:
    _, studies = pacs
    info = server.get("/info/").json()
    assert info["datastore"]["total"] == 2 and info["datastore"]["completed"] == 0
    assert server.post("/activelearning/first").json()["id"] == min(uid for uid, _ in studies.values())
    # start_server creates bin/ itself; MONAI Label's datastore would have put dcmqi's converter there.
    assert not list((APP_DIR / "bin").glob("itkimage2segimage*"))


def test_infer_and_saving_a_final_label_round_trip_through_orthanc(server: LabelServer, pacs,
                                                                   lesion_model: Path, tmp_path: Path) -> None:  # noqa: F811
    orthanc, studies = pacs
    series_uid, study_dir = studies["a"]
    response = server.post(f"/infer/femur_lesion?image={series_uid}&output=image",
                           data={"params": json.dumps({"result_extension": ".nrrd"})})
    path = tmp_path / "labels.nrrd"
    path.write_bytes(response.content)
    labels = np.asarray(read_volume(path).array)

    loaded = load_study(study_dir)
    model = LesionModel.from_folder(lesion_model, device="cpu", use_mirroring=False)
    expected = label_volume(segment_lesions(split_femurs(loaded.volume), model))
    assert labels.shape == loaded.volume.spatial_shape
    assert np.array_equal(labels, expected)

    # The annotator's correction: a lesion drawn into the femur.
    corrected = labels.copy()
    femur = np.argwhere(corrected == 1)
    corrected[tuple(femur[len(femur) // 2])] = 2
    path_final = tmp_path / "final.nrrd"
    from operators.volume_io import write_volume
    import highdicom as hd

    write_volume(path_final, hd.Volume(corrected, loaded.volume.affine, "PATIENT"))
    with open(path_final, "rb") as handle:
        saved = server.put(f"/datastore/label?image={series_uid}&tag=final",
                            files={"label": ("final.nrrd", handle)}).json()
    seg_uid = saved["label"]

    qido = requests.get(f"{orthanc.dicomweb_url}/series", params={"Modality": "SEG"}, auth=orthanc.auth,
                        timeout=30).json()
    segs = [pydicom.Dataset.from_json(s) for s in qido]
    assert [str(s.SeriesInstanceUID) for s in segs] == [seg_uid]
    assert str(segs[0].SeriesDescription) == FINAL_SERIES_DESCRIPTION
    assert str(segs[0].StudyInstanceUID) == str(loaded.source_datasets[0].StudyInstanceUID)

    instances = requests.get(f"{orthanc.dicomweb_url}/studies/{segs[0].StudyInstanceUID}/series/{seg_uid}/instances",
                             auth=orthanc.auth, timeout=30).json()
    sop_uid = pydicom.Dataset.from_json(instances[0]).SOPInstanceUID
    raw = requests.get(f"{orthanc.url}/instances", auth=orthanc.auth, timeout=30).json()
    seg_file = None
    for orthanc_id in raw:
        tags = requests.get(f"{orthanc.url}/instances/{orthanc_id}/simplified-tags", auth=orthanc.auth,
                            timeout=30).json()
        if tags.get("SOPInstanceUID") == sop_uid:
            seg_file = tmp_path / "seg.dcm"
            seg_file.write_bytes(requests.get(f"{orthanc.url}/instances/{orthanc_id}/file", auth=orthanc.auth,
                                              timeout=30).content)
    assert seg_file is not None
    back = seg_label_volume(seg_file, loaded)
    assert back.shape == loaded.volume.spatial_shape
    assert np.array_equal(back, corrected)

    info = server.get("/info/").json()
    assert info["datastore"]["completed"] == 1
    assert server.post("/activelearning/first").json()["id"] == studies["b"][0]


def test_the_datastore_alone_saves_a_seg_and_reads_it_back_for_training(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The DICOMweb datastore in this process, on its own Orthanc: list, download, save as SEG, datalist."""
    import highdicom as hd
    from monailabel.config import settings

    from label_app.lib.dicomweb_datastore import HighdicomDICOMWebDatastore
    from operators.volume_io import write_volume

    try:
        orthanc = LocalOrthanc(folder=tmp_path / "orthanc").start()
    except OrthancUnavailableError as error:
        pytest.skip(str(error))
    try:
        written = write_study(generate_phantom(33, "small"), tmp_path / "study", series=("thin",))
        files = sorted(p for p in written.study_dir.rglob("*") if p.is_file())
        header = pydicom.dcmread(files[0], stop_before_pixels=True)
        OrthancClient(url=orthanc.url, auth=orthanc.auth).stow(str(header.StudyInstanceUID), files)
        monkeypatch.setattr(settings, "MONAI_LABEL_DICOMWEB_USERNAME", orthanc.username)
        monkeypatch.setattr(settings, "MONAI_LABEL_DICOMWEB_PASSWORD", orthanc.password)
        monkeypatch.setattr(settings, "MONAI_LABEL_DICOMWEB_CACHE_PATH", str(tmp_path / "cache"))
        datastore = HighdicomDICOMWebDatastore.from_settings(orthanc.dicomweb_url)
        series_uid = str(header.SeriesInstanceUID)
        assert datastore.list_images() == [series_uid] and datastore.get_unlabeled_images() == [series_uid]

        loaded = load_study(Path(datastore.get_image_uri(series_uid)))
        labels = np.zeros(loaded.volume.spatial_shape, np.uint8)
        labels[5:20, 40:80, 40:80] = 1
        labels[8:10, 50:55, 50:55] = 2
        write_volume(tmp_path / "final.nrrd", hd.Volume(labels, loaded.volume.affine, "PATIENT"))
        seg_uid = datastore.save_label(series_uid, str(tmp_path / "final.nrrd"), "final", {})
        assert datastore.final_labels() == {series_uid: seg_uid}
        assert datastore.get_unlabeled_images() == [] and datastore.status()["completed"] == 1

        [item] = datastore.datalist()
        assert Path(item["image"]).is_dir()
        back = read_volume(item["label"])
        assert np.asarray(back.array).shape == labels.shape
        assert np.array_equal(np.asarray(back.array), labels)
    finally:
        orthanc.stop()
