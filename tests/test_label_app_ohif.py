"""The server side of the app's additions to MONAI Label's bundled OHIF, without a browser.

The page is served with the annotation script first in ``<head>``, before MONAI Label's own route (which
keeps answering the viewer's other files); and the label file in OHIF's slice order keeps its geometry.
The round trip in a real browser is in ``test_label_app_browser.py``.
"""

from __future__ import annotations

import numpy as np
from fastapi import FastAPI
from fastapi.testclient import TestClient
from monailabel.endpoints import ohif as monailabel_ohif

from label_app.lib.infer import ascending_slices
from label_app.lib.ohif import SCRIPT_FILE, SCRIPT_URL_NAME, install, patched_index

_TAG = f'<script src="/ohif/{SCRIPT_URL_NAME}"></script>'


def _app() -> FastAPI:
    app = FastAPI()
    app.include_router(monailabel_ohif.router)  # as MONAI Label's application has it, before the app loads
    install(app)
    install(app)  # the server may call it again: still one route
    return app


def test_viewer_pages_load_the_annotation_script_before_ohifs_bundle() -> None:
    client = TestClient(_app())
    for path in ("/ohif/", "/ohif/monai-label?StudyInstanceUIDs=1.2.3", "/ohif/viewer"):
        page = client.get(path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.text.count(_TAG) == 1, path
        assert page.text.index(_TAG) < page.text.index("app.bundle"), "the script must run before OHIF's bundle"

    script = client.get(f"/ohif/{SCRIPT_URL_NAME}")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert script.text == SCRIPT_FILE.read_text(encoding="utf-8")
    assert "MONAILABEL_SERVER_URL" in script.text and "datastore/label" in script.text

    config = client.get("/ohif/app-config.js")  # the viewer's own files: MONAI Label's answer, unchanged
    assert config.status_code == 200 and "/proxy/dicom" in config.text and _TAG not in config.text


def test_patched_index_needs_a_head() -> None:
    assert patched_index("<html><head></head></html>", "/api") == (
        f'<html><head><script src="/api/ohif/{SCRIPT_URL_NAME}"></script></head></html>')
    try:
        patched_index("<html></html>")
    except ValueError:
        pass
    else:
        raise AssertionError("a page without <head> must be refused")


def _world(affine: np.ndarray, index: tuple[int, int, int]) -> np.ndarray:
    return (np.asarray(affine) @ np.array([*index, 1.0]))[:3]


def test_ascending_slices_reverses_a_descending_series_and_keeps_every_voxel_in_place() -> None:
    labels = np.arange(4 * 3 * 2, dtype=np.uint8).reshape(4, 3, 2)
    # Slices going down (as the loader stacks a head-first axial series), rows along +y, columns along +x.
    affine = np.array([[0, 0, 0.8, -100], [0, 0.8, 0, -50], [-3, 0, 0, 20], [0, 0, 0, 1]], dtype=float)
    out, out_affine = ascending_slices(labels, affine)
    assert np.array_equal(out, labels[::-1]) and out.flags["C_CONTIGUOUS"]
    assert out_affine[2, 0] == 3.0  # now up, along the image plane's normal (x cross y = +z)
    for index in np.ndindex(labels.shape):
        k, j, i = index
        np.testing.assert_allclose(_world(out_affine, (labels.shape[0] - 1 - k, j, i)), _world(affine, index))

    same, same_affine = ascending_slices(out, out_affine)  # already ascending: unchanged
    assert same is out and np.array_equal(same_affine, out_affine)
