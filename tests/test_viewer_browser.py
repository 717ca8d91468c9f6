"""The results as a radiologist sees them: the real OHIF viewer in a real (headless) Chromium, on Orthanc.

The whole chain: a real Orthanc; a small synthetic study arrives by C-STORE; the gateway (``watch``) runs
the real application and stores the SEG and SR into the study; the viewer server (OHIF + DICOMweb proxy)
serves it; Chromium opens the study with the SEG series first (the address with the viewer's access
token), OHIF loads the segmentation and its segmentation service lists exactly the segments of the SEG
in Orthanc, by label; the viewport draws them (hiding them changes the picture). The screenshot is kept
in ``test-artifacts/`` (and in the test's temporary folder).
"""

from __future__ import annotations

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
from PIL import Image

from gateway.jobs import Job, JobQueue
from gateway.orthanc_server import LocalOrthanc
from synthetic_ct import WrittenStudy, generate_phantom, write_study
from tests.browser_support import Chromium, Page, require_chromium
from tests.gateway_support import (REPO_ROOT, client_of, send_study, start_gateway, start_orthanc, stop_gateway,
                                   wait_for, write_config)
from tests.test_app_model import lesion_model  # noqa: F401 - session fixture
from viewer.ohif import ViewerNotInstalledError, ohif_dist
from viewer.server import Upstream, ViewerServer

pytestmark = pytest.mark.slow

APP_TIMEOUT_S = 400
# OHIF on software WebGL with two busy cores: loading the bundles, the CT and the SEG takes a while.
VIEWER_TIMEOUT_S = 240
ARTIFACTS = REPO_ROOT / "test-artifacts"

try:
    import monai.deploy.core  # noqa: F401
except Exception as exc:  # noqa: BLE001 - ImportError, or OSError when libcudart.so.13 is not found
    pytest.skip(f"holoscan cannot be imported ({type(exc).__name__}: {exc}); run through `make test`",
                allow_module_level=True)

# What OHIF holds: every segmentation, its segments by index with their labels, and the viewports that show
# it (cornerstone's segmentation state, through OHIF's segmentation service).
_SEGMENTATIONS_JS = """(() => {
  const service = window.services && window.services.segmentationService;
  if (!service) { return null; }
  return service.getSegmentations().map(s => ({
    id: s.segmentationId,
    label: s.label,
    segments: Object.values(s.segments || {}).filter(Boolean).map(x => ({index: x.segmentIndex, label: x.label})),
    viewports: (service.getViewportIdsWithSegmentation ? service.getViewportIdsWithSegmentation(s.segmentationId)
                : []),
  }));
})()"""

# OHIF's first-visit tour and its "investigational use" notice cover the viewport: a user dismisses them.
_DISMISS_JS = """(() => {
  const names = ['Skip all', 'Confirm and hide'];
  const buttons = Array.from(document.querySelectorAll('button')).filter(b => names.includes(b.innerText.trim()));
  buttons.forEach(b => b.click());
  return buttons.length;
})()"""
_SEGMENTATION_PANEL = "@ohif/extension-cornerstone.panelModule.panelSegmentation"

# Where the first viewport's canvas is on the page (CSS pixels).
_VIEWPORT_BOX_JS = """(() => {
  const canvas = document.querySelector('.cornerstone-canvas, .viewport-element canvas');
  if (!canvas) { return null; }
  const r = canvas.getBoundingClientRect();
  return {x: r.x, y: r.y, width: r.width, height: r.height, ratio: window.devicePixelRatio};
})()"""


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> WrittenStudy:
    """A small synthetic lower-body study (thin and thick axial series, localizer)."""
    return write_study(generate_phantom(23, "small"), tmp_path_factory.mktemp("viewer-e2e") / "study")


def _job(database: Path, study_uid: str) -> Job | None:
    with JobQueue(path=database) as queue:
        return queue.find(study_uid)


def _seg_in_pacs(pacs: LocalOrthanc, study_uid: str) -> pydicom.Dataset:
    [sop_uid] = client_of(pacs).instances_by_modality(study_uid)["SEG"]
    [found] = requests.post(f"{pacs.url}/tools/lookup", data=sop_uid, auth=pacs.auth, timeout=30).json()
    answer = requests.get(f"{pacs.url}/instances/{found['ID']}/file", auth=pacs.auth, timeout=60)
    return pydicom.dcmread(io.BytesIO(answer.content))


def test_ohif_in_chromium_shows_the_segments_the_gateway_stored(tmp_path: Path, study: WrittenStudy,
                                                                  lesion_model: Path) -> None:  # noqa: F811
    require_chromium()
    try:
        dist = ohif_dist()
    except ViewerNotInstalledError as exc:
        pytest.skip(str(exc))

    for pacs in start_orthanc(tmp_path / "orthanc"):
        # The gateway end to end: study in by C-STORE, the application run, SEG and SR stored into the study.
        # The study is sent before the gateway starts (it reads the change feed from the beginning): on a busy
        # machine a pause in the C-STORE longer than StableAge would otherwise hand it a partial study.
        send_study(pacs, study.study_dir)
        config = write_config(tmp_path / "gateway.toml", pacs=pacs, model=lesion_model)
        log = tmp_path / "gateway.log"
        gateway = start_gateway("watch", config, log)
        try:
            job = wait_for(lambda: (j := _job(tmp_path / "gateway.sqlite", study.study_uid)) is not None
                           and j.state in ("done", "failed") and j, timeout_s=APP_TIMEOUT_S,
                           what="the gateway's job", log=log)
            assert job.state == "done", f"{job.last_error}\n{log.read_text()[-4000:]}"
        finally:
            stop_gateway(gateway)
        seg = _seg_in_pacs(pacs, study.study_uid)
        expected = sorted(str(s.SegmentLabel) for s in seg.SegmentSequence)
        assert {"Left femur", "Right femur"} <= set(expected), expected
        assert hd.seg.Segmentation.from_dataset(seg).StudyInstanceUID == study.study_uid

        upstream = Upstream.from_url(pacs.dicomweb_url, username=pacs.username, password=pacs.password)
        with ViewerServer(upstream=upstream, dist=dist) as server, Chromium(tmp_path / "chromium") as page:
            # As a user would: the address the viewer prints, with its access token (the server swaps it
            # for a cookie, which OHIF's own requests then carry).
            page.navigate(server.with_token(server.study_url(study.study_uid, series_uid=str(seg.SeriesInstanceUID))))
            segmentations = page.wait_for(
                _SEGMENTATIONS_JS, timeout_s=VIEWER_TIMEOUT_S, what="OHIF to list the SEG's segments",
                check=lambda value: bool(value) and len(value[0]["segments"]) == len(expected))
            assert len(segmentations) == 1, json.dumps(segmentations, indent=1)
            shown = sorted(segment["label"] for segment in segmentations[0]["segments"])
            assert shown == expected, f"OHIF lists {shown}, the SEG in Orthanc holds {expected}"
            assert "token=" not in page.evaluate("window.location.href")  # swapped for the cookie

            # Shown, not only loaded. As a user would: dismiss OHIF's first-visit tour and notice, open the
            # segmentation panel, jump to the right femur. Then the overlay must be what changes the viewport
            # when the segments are hidden.
            attached = page.wait_for(_SEGMENTATIONS_JS, timeout_s=60, what="a viewport to show the segmentation",
                                     check=lambda value: bool(value) and bool(value[0]["viewports"]))
            segmentation_id, viewport_id = attached[0]["id"], attached[0]["viewports"][0]
            page.evaluate(_DISMISS_JS)
            page.evaluate(f"window.services.panelService.activatePanel({json.dumps(_SEGMENTATION_PANEL)}, true)")
            right_femur = next(s["index"] for s in segmentations[0]["segments"] if s["label"] == "Right femur")
            page.evaluate(f"window.services.segmentationService.jumpToSegmentCenter({json.dumps(segmentation_id)}, "
                          f"{right_femur}, {json.dumps(viewport_id)}, 0.9, false)")
            _pause(page, 3)
            box = page.wait_for(_VIEWPORT_BOX_JS, timeout_s=30, what="the viewport's canvas")
            shown_png = page.screenshot(tmp_path / "ohif-segments.png")
            _set_visibility(page, segmentations[0], viewport_id, visible=False)
            _pause(page, 3)
            hidden_png = page.screenshot(tmp_path / "ohif-segments-hidden.png")
            _set_visibility(page, segmentations[0], viewport_id, visible=True)
            ARTIFACTS.mkdir(exist_ok=True)
            shutil.copy2(shown_png, ARTIFACTS / shown_png.name)
            changed = _changed_fraction(shown_png, hidden_png, box)
            assert changed > 0.001, (f"hiding the segments changed {changed:.4%} of the viewport: no overlay drawn "
                                     f"(screenshot in {ARTIFACTS}); page log:\n{page.errors()}")


def _pause(page: Page, seconds: float) -> None:
    """Let the page render for a while (in the page's own clock, so its events keep being read)."""
    page.evaluate(f"new Promise(resolve => setTimeout(resolve, {int(seconds * 1000)}))")


def _set_visibility(page: Page, segmentation: dict[str, Any], viewport_id: str, *, visible: bool) -> None:
    for segment in segmentation["segments"]:
        page.evaluate(f"window.services.segmentationService.setSegmentVisibility({json.dumps(viewport_id)}, "
                      f"{json.dumps(segmentation['id'])}, {segment['index']}, {json.dumps(visible)})")


def _changed_fraction(first: Path, second: Path, box: dict[str, float]) -> float:
    """Fraction of the viewport's pixels that differ between two screenshots."""
    a, b = (np.asarray(Image.open(png).convert("RGB")).astype(np.int16) for png in (first, second))
    ratio = box.get("ratio") or 1.0
    top, left = int(box["y"] * ratio), int(box["x"] * ratio)
    window = (slice(top, top + int(box["height"] * ratio)), slice(left, left + int(box["width"] * ratio)))
    changed = np.abs(a[window] - b[window]).sum(axis=2) > 30
    return float(changed.mean()) if changed.size else 0.0
