"""The annotator's round trip in MONAI Label's own OHIF, in a real (headless) Chromium.

A real Orthanc with two small synthetic studies; the MONAI Label server with the femur lesion app on a
free port (not 8000) on loopback; the OHIF viewer that monailabel bundles, served by that server with the
app's annotation script. As an annotator would, through the page's DOM:

1. open one study in ``/ohif/monai-label``, connect the MONAI Label panel (it must name this server's
   port), ask Active Learning for the next sample (strategy ``first``) and accept it: the viewer opens
   the study the server chose;
2. run Auto-Segmentation from the panel: OHIF's labelmap, placed by its own geometry onto the CT's grid,
   equals the deploy pipeline's labels for that series (computed here independently), segment names
   matched to the app's labels;
3. correct it with the brush the app's script adds to the panel: segment "lytic lesion", Brush, a stroke
   of the mouse over a femur in the axial view (real mouse events): only voxels of that slice, within the
   brush's radius, become lytic lesion;
4. press "Save label": a new DICOM-SEG is in the study in Orthanc, reads back (highdicom, against the CT)
   with the CT's grid and equal to the corrected labels as OHIF holds them, and the server counts it as a
   final label.

A screenshot of the segmented study is kept in ``test-artifacts/``.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
import requests
from scipy import ndimage

from gateway.orthanc import OrthancClient
from gateway.orthanc_server import LocalOrthanc, OrthancUnavailableError
from label_app.lib.dicomweb_datastore import FINAL_SERIES_DESCRIPTION, seg_label_volume
from label_app.lib.labels import label_volume
from lesion_training.dataset_builder import onto_grid
from operators.femur_splitter import split_femurs
from operators.lesion_model import LesionModel
from operators.lesion_segmentation import segment_lesions
from operators.series_volume import LoadedSeries, load_study
from synthetic_ct import generate_phantom, write_study
from tests.browser_support import Chromium, Page, require_chromium
from tests.label_server_support import REPO_ROOT, LabelServer
from tests.test_app_model import lesion_model  # noqa: F401 - session fixture

pytestmark = pytest.mark.slow

ARTIFACTS = REPO_ROOT / "test-artifacts"
# OHIF on software WebGL with two busy cores: the bundles and the CT take a while; the model runs on the CPU.
VIEWER_TIMEOUT_S = 180
INFER_TIMEOUT_S = 300

_VIEWER_READY_JS = """(() => !!(window.services && document.querySelector('.cornerstone-canvas')
  && document.querySelector('.monaiLabelPanel .settingsTable button')
  && window.services.displaySetService.getActiveDisplaySets().length))()"""
# The panel's control in one of its tabs ("Active Learning", "Auto-Segmentation"), by its text.
_PANEL_BUTTON_JS = """((tabLabel, text) => {
  const tab = Array.from(document.querySelectorAll('.monaiLabelPanel .tab'))
    .find(t => t.querySelector('label.tab-label') && t.querySelector('label.tab-label').innerText.trim() === tabLabel);
  const button = tab && Array.from(tab.querySelectorAll('button')).find(b => b.innerText.trim() === text);
  if (!button) { return false; }
  button.click();
  return true;
})"""
_LABELLED_VOXELS_JS = """(() => {
  const volume = window.services.segmentationService.getLabelmapVolume('1');
  if (!volume) { return -1; }
  const data = volume.voxelManager.getCompleteScalarDataArray();
  let n = 0;
  for (let i = 0; i < data.length; i++) { if (data[i]) { n++; } }
  return n;
})()"""
# The panel's labelmap: voxels (base64, x fastest), cornerstone's geometry, the segments' names by index.
_LABELMAP_JS = """(() => {
  const service = window.services.segmentationService;
  const volume = service.getLabelmapVolume('1');
  const data = volume.voxelManager.getCompleteScalarDataArray();
  let text = '';
  for (let i = 0; i < data.length; i += 0x8000) {
    text += String.fromCharCode.apply(null, data.subarray(i, i + 0x8000));
  }
  const segments = {};
  for (const [index, segment] of Object.entries(service.getSegmentation('1').segments)) {
    if (segment) { segments[index] = segment.label; }
  }
  return {data: btoa(text), dimensions: Array.from(volume.dimensions), spacing: Array.from(volume.spacing),
          direction: Array.from(volume.direction), origin: Array.from(volume.origin), segments};
})()"""
# Where a point (LPS mm) is on the page, in the axial viewport showing its slice (CSS pixels).
_POINT_ON_PAGE_JS = """(world => {
  const viewport = window.services.cornerstoneViewportService.getCornerstoneViewport('mpr-axial');
  viewport.jumpToWorld(world);
  viewport.render();
  const [x, y] = viewport.worldToCanvas(world);
  const box = viewport.canvas.getBoundingClientRect();
  return {x: box.left + x, y: box.top + y};
})"""


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory):
    """Orthanc with two small synthetic studies: ``{name: (study UID, series UID, study folder)}``."""
    root = tmp_path_factory.mktemp("label-browser-orthanc")
    try:
        orthanc = LocalOrthanc(folder=root / "orthanc").start()
    except OrthancUnavailableError as error:
        pytest.skip(str(error))
    try:
        client = OrthancClient(url=orthanc.url, auth=orthanc.auth)
        studies = {}
        for name, seed in (("a", 41), ("b", 42)):
            written = write_study(generate_phantom(seed, "small"), root / name, series=("thin",))
            files = sorted(p for p in written.study_dir.rglob("*") if p.is_file())
            header = pydicom.dcmread(files[0], stop_before_pixels=True)
            client.stow(str(header.StudyInstanceUID), files)
            studies[name] = (str(header.StudyInstanceUID), str(header.SeriesInstanceUID), written.study_dir)
        yield orthanc, studies
    finally:
        orthanc.stop()


def _labelmap_on_ct_grid(labelmap: dict[str, Any], loaded: LoadedSeries, app_labels: list[str]) -> np.ndarray:
    """OHIF's labelmap, placed by its own geometry on the CT's grid, with the app's label values."""
    nx, ny, nz = labelmap["dimensions"]
    voxels = np.frombuffer(base64.b64decode(labelmap["data"]), dtype=np.uint8).reshape(nz, ny, nx)
    direction = np.asarray(labelmap["direction"], dtype=float).reshape(3, 3)  # rows: unit steps of i, j, k
    spacing = np.asarray(labelmap["spacing"], dtype=float)
    affine = np.eye(4)
    for axis, ijk in ((0, 2), (1, 1), (2, 0)):  # array axes (z, y, x) are cornerstone's (k, j, i)
        affine[:3, axis] = direction[ijk] * spacing[ijk]
    affine[:3, 3] = labelmap["origin"]
    on_grid, _ = onto_grid(hd.Volume(voxels, affine, "PATIENT"), loaded.volume)
    to_app = np.zeros(256, dtype=np.uint8)
    for index, name in labelmap["segments"].items():
        assert name in app_labels, f"OHIF segment {name!r} is no label of the app {app_labels}"
        to_app[int(index)] = app_labels.index(name) + 1
    return to_app[np.asarray(on_grid)]


def _seg_series(orthanc: LocalOrthanc, study_uid: str) -> list[pydicom.Dataset]:
    found = requests.get(f"{orthanc.dicomweb_url}/studies/{study_uid}/series", params={"Modality": "SEG"},
                         auth=orthanc.auth, timeout=30)
    assert found.status_code in (200, 204), found.text
    return [pydicom.Dataset.from_json(s) for s in (found.json() if found.status_code == 200 else [])]


def _seg_file(orthanc: LocalOrthanc, series: pydicom.Dataset) -> pydicom.Dataset:
    instances = requests.get(f"{orthanc.dicomweb_url}/studies/{series.StudyInstanceUID}/series/"
                             f"{series.SeriesInstanceUID}/instances", auth=orthanc.auth, timeout=30).json()
    [instance] = instances
    sop_uid = pydicom.Dataset.from_json(instance).SOPInstanceUID
    [found] = requests.post(f"{orthanc.url}/tools/lookup", data=sop_uid, auth=orthanc.auth, timeout=30).json()
    answer = requests.get(f"{orthanc.url}/instances/{found['ID']}/file", auth=orthanc.auth, timeout=60)
    return pydicom.dcmread(io.BytesIO(answer.content))


def _drag(page: Page, x: float, y: float) -> None:
    """A short stroke with the left mouse button from (x, y), as a hand on the mouse makes it."""
    page.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
    page.call("Input.dispatchMouseEvent", type="mousePressed", x=x, y=y, button="left", buttons=1, clickCount=1)
    page.call("Input.dispatchMouseEvent", type="mouseMoved", x=x + 2, y=y + 1, button="left", buttons=1)
    page.call("Input.dispatchMouseEvent", type="mouseReleased", x=x + 2, y=y + 1, button="left", buttons=0,
              clickCount=1)


def _open_and_connect(page: Page, server: LabelServer) -> None:
    """Wait for the viewer to show the CT with the panel, check the panel names this server, connect."""
    page.wait_for(_VIEWER_READY_JS, timeout_s=VIEWER_TIMEOUT_S, what="OHIF to show the CT and the MONAI Label panel")
    shown = page.evaluate("document.getElementById('monailabelServerURL').value")
    assert shown == server.url + "/", f"the panel names {shown!r}, the server is {server.url}"
    page.evaluate("document.querySelector('.monaiLabelPanel .settingsTable button').click()")
    page.wait_for("!!(window.services.segmentationService.getLabelmapVolume('1') "
                  "&& document.querySelector('.monaiLabelPanel .tabs'))",
                  timeout_s=90, what="the panel to connect and create its labelmap")


def test_annotator_round_trip_in_monai_labels_ohif(pacs, lesion_model: Path, tmp_path: Path) -> None:  # noqa: F811
    require_chromium()
    orthanc, studies = pacs
    first = min(studies, key=lambda name: studies[name][1])  # strategy "first": the smallest series UID
    other = next(name for name in studies if name != first)
    study_uid, series_uid, study_dir = studies[first]
    env = {"MONAI_LABEL_DICOMWEB_USERNAME": orthanc.username, "MONAI_LABEL_DICOMWEB_PASSWORD": orthanc.password,
           "MONAI_LABEL_DICOMWEB_CACHE_PATH": str(tmp_path / "cache"),
           # Any attempt to reach the internet fails at once instead of hanging.
           "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": "127.0.0.1,localhost"}
    with LabelServer(orthanc.dicomweb_url, store=tmp_path / "store", model=lesion_model, log=tmp_path / "server.log",
                     env=env) as server, Chromium(tmp_path / "chromium") as page:
        assert server.port != 8000
        app_labels = server.get("/info/").json()["labels"]
        assert isinstance(app_labels, list) and app_labels[:2] == ["femur", "lytic lesion"], app_labels

        # 1. Open another study, take the next sample from active learning.
        page.navigate(f"{server.url}/ohif/monai-label?StudyInstanceUIDs={studies[other][0]}")
        _open_and_connect(page, server)
        strategy = page.evaluate("""(() => {
          const select = Array.from(document.querySelectorAll('.monaiLabelPanel select'))
            .find(s => Array.from(s.options).some(o => o.value === 'first'));
          select.value = 'first';
          select.dispatchEvent(new Event('change', {bubbles: true}));
          return select.value; })()""")
        assert strategy == "first"
        assert page.evaluate(f"({_PANEL_BUTTON_JS})('Active Learning', 'Next Sample')")
        page.wait_for(f"document.body.innerText.includes({json.dumps(study_uid)})", timeout_s=60,
                      what="the Next Sample form to show the study active learning chose")
        # The panel itself would have asked for "random" whatever the list shows.
        assert "Active Learning Request: {'strategy': 'first'" in server.log.read_text(errors="replace")
        # The form's OK reloads the page after a confirmation, which the annotator gives.
        page.evaluate("window.confirm = () => true; Array.from(document.querySelectorAll('.nextSampleForm button'))"
                      ".find(b => b.innerText.trim() === 'OK').click()")
        page.wait_for(f"window.location.search.includes({json.dumps(study_uid)})", timeout_s=30,
                      what="the viewer to open the next sample's study")
        _open_and_connect(page, server)
        assert page.evaluate("window.services.displaySetService.getActiveDisplaySets()"
                             ".map(d => d.SeriesInstanceUID)") == [series_uid]

        # 2. Run the model from the panel.
        assert page.evaluate(f"({_PANEL_BUTTON_JS})('Auto-Segmentation', 'Run')")
        page.wait_for(_LABELLED_VOXELS_JS, timeout_s=INFER_TIMEOUT_S, what="the model's labels in OHIF's labelmap",
                      check=lambda n: isinstance(n, int) and n > 0, interval_s=2.0)
        page.evaluate("new Promise(resolve => setTimeout(resolve, 1500))")  # let the overlay render
        shown_png = page.screenshot(tmp_path / "monai-label-ohif-segmentation.png")
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy2(shown_png, ARTIFACTS / shown_png.name)

        loaded = load_study(study_dir)
        model = LesionModel.from_folder(lesion_model, device="cpu", use_mirroring=False)
        expected = label_volume(segment_lesions(split_femurs(loaded.volume), model))
        labelmap = page.evaluate(_LABELMAP_JS)
        in_ohif = _labelmap_on_ct_grid(labelmap, loaded, app_labels)
        assert in_ohif.shape == loaded.volume.spatial_shape
        assert np.array_equal(in_ohif, expected), (
            f"OHIF shows {int((in_ohif != expected).sum())} voxel(s) other than the model's labels "
            f"({int((expected > 0).sum())} labelled)")

        # 3. The annotator's correction, with the panel's brush: lytic lesion painted into the middle of a femur.
        segment_of = {name: int(index) for index, name in labelmap["segments"].items()}
        nx, ny, nz = labelmap["dimensions"]
        before = np.frombuffer(base64.b64decode(labelmap["data"]), dtype=np.uint8).reshape(nz, ny, nx)
        femur = before == segment_of["femur"]
        k = int(np.argmax(femur.sum(axis=(1, 2))))
        inside = np.argwhere(ndimage.binary_erosion(femur[k], iterations=3))
        j, i = (int(v) for v in inside[len(inside) // 2])
        direction = np.asarray(labelmap["direction"], dtype=float).reshape(3, 3)
        spacing = np.asarray(labelmap["spacing"], dtype=float)
        world = np.asarray(labelmap["origin"]) + direction.T @ (spacing * [i, j, k])
        page.evaluate("(() => { const select = document.getElementById('femurLesionSegment');"
                      "select.dispatchEvent(new Event('focus'));"
                      f"select.value = '{segment_of['lytic lesion']}';"
                      "select.dispatchEvent(new Event('change')); })()")
        page.evaluate("document.getElementById('femurLesionToolBrush').click()")
        assert page.evaluate("window.services.toolGroupService.getToolGroup('mpr')"
                             ".getActivePrimaryMouseButtonTool()") == "CircularBrush", page.evaluate(
            "document.getElementById('femurLesionSaveStatus').textContent")
        point = page.evaluate(f"({_POINT_ON_PAGE_JS})({json.dumps(world.tolist())})")
        _drag(page, point["x"], point["y"])
        edited = page.wait_for(_LABELMAP_JS, timeout_s=30, what="the brush stroke in OHIF's labelmap",
                               check=lambda value: value["data"] != labelmap["data"])
        after = np.frombuffer(base64.b64decode(edited["data"]), dtype=np.uint8).reshape(nz, ny, nx)
        painted = np.argwhere(after != before)
        assert set(after[after != before].tolist()) == {segment_of["lytic lesion"]}
        assert set(painted[:, 0].tolist()) == {k}, "the brush paints the axial slice shown"
        radius_mm = float(page.evaluate("document.getElementById('femurLesionBrushSize').value"))
        distances = np.linalg.norm((painted[:, ::-1] - [i, j, k]) * spacing, axis=1)
        assert distances.max() <= radius_mm + spacing.max(), distances
        page.evaluate("document.getElementById('femurLesionToolDone').click()")
        corrected = _labelmap_on_ct_grid(edited, loaded, app_labels)
        assert int((corrected != expected).sum()) == len(painted)

        # 4. Save.
        assert _seg_series(orthanc, study_uid) == []
        page.evaluate("document.getElementById('femurLesionSaveLabel').click()")
        status = page.wait_for("document.getElementById('femurLesionSaveStatus').dataset.state || ''",
                               timeout_s=120, what="the save to finish",
                               check=lambda state: state in ("success", "error"))
        message = page.evaluate("document.getElementById('femurLesionSaveStatus').textContent")
        assert status == "success", f"{message}\n{page.errors()}\n{server.tail()}"

        [seg_series] = _seg_series(orthanc, study_uid)
        assert str(seg_series.SeriesDescription) == FINAL_SERIES_DESCRIPTION
        assert str(seg_series.SeriesInstanceUID) in message
        seg = _seg_file(orthanc, seg_series)
        assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
        assert str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID) == series_uid
        assert int(seg.NumberOfFrames) == loaded.volume.spatial_shape[0] * len(seg.SegmentSequence)
        back = seg_label_volume(seg, loaded)
        assert back.shape == loaded.volume.spatial_shape
        assert np.array_equal(back, corrected)

        datastore = server.get("/info/").json()["datastore"]
        assert datastore["completed"] == 1 and datastore["total"] == 2
        assert server.post("/activelearning/first").json()["id"] == studies[other][1]
