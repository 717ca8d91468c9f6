"""The viewer's HTTP server against a real Orthanc, without a browser: OHIF's files with the SPA fallback,
the generated app-config.js, and the read-only DICOMweb proxy that adds the PACS credentials (the browser
sends none) and makes Orthanc's bulk data links name the proxy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from gateway.orthanc_server import LocalOrthanc
from tests.dicom_factory import write_ct_series
from tests.gateway_support import send_study, start_orthanc
from viewer.ohif import ViewerNotInstalledError, app_config_js, ohif_dist
from viewer.server import Upstream, ViewerServer


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    """A stand-in for OHIF's dist folder: what matters here is how files are served, not OHIF itself."""
    folder = tmp_path / "dist"
    (folder / "assets").mkdir(parents=True)
    (folder / "index.html").write_text("<html>viewer</html>")
    (folder / "app.bundle.js").write_text("console.log('app')")
    (folder / "codec.wasm").write_bytes(b"\0asm\1\0\0\0")
    (folder / "app-config.js").write_text("window.config = {'public demo server': true};")
    return folder


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[LocalOrthanc]:
    yield from start_orthanc(tmp_path / "orthanc")


@pytest.fixture
def server(pacs: LocalOrthanc, dist: Path) -> Iterator[ViewerServer]:
    upstream = Upstream.from_url(pacs.dicomweb_url, username=pacs.username, password=pacs.password)
    with ViewerServer(upstream=upstream, dist=dist) as running:
        yield running


def test_static_files_routes_and_the_generated_config(server: ViewerServer) -> None:
    index = requests.get(server.url + "/", timeout=10)
    assert index.status_code == 200 and index.text == "<html>viewer</html>"
    route = requests.get(server.url + "/viewer?StudyInstanceUIDs=1.2.3", timeout=10)  # an OHIF route
    assert route.status_code == 200 and route.text == "<html>viewer</html>"
    assert requests.get(server.url + "/app.bundle.js", timeout=10).headers["Content-Type"] == "text/javascript"
    assert requests.get(server.url + "/codec.wasm", timeout=10).headers["Content-Type"] == "application/wasm"
    assert requests.get(server.url + "/missing.bundle.js", timeout=10).status_code == 404  # no index.html for assets
    assert "root:" not in requests.get(server.url + "/%2e%2e/%2e%2e/etc/passwd", timeout=10).text  # no way out

    config = requests.get(server.url + "/app-config.js", timeout=10)
    assert config.status_code == 200 and config.text == app_config_js()  # ours, not the file in dist
    assert "window.location.origin + \"/dicom-web\"" in config.text and "public demo server" not in config.text


def test_the_dicomweb_proxy_adds_the_credentials_and_is_read_only(server: ViewerServer, pacs: LocalOrthanc,
                                                                   tmp_path: Path) -> None:
    series = write_ct_series(tmp_path / "ct", n_slices=3)
    send_study(pacs, list(series.paths))
    assert requests.get(pacs.dicomweb_url + "/studies", timeout=10).status_code == 401  # Orthanc wants auth

    studies = requests.get(server.url + "/dicom-web/studies", headers={"Accept": "application/dicom+json"},
                           timeout=30)
    assert studies.status_code == 200, studies.text
    assert [s["0020000D"]["Value"][0] for s in studies.json()] == [series.study_uid]
    assert "Access-Control-Allow-Origin" not in studies.headers  # same origin: no CORS needed

    metadata = requests.get(f"{server.url}/dicom-web/studies/{series.study_uid}/metadata", timeout=30)
    assert metadata.status_code == 200 and len(metadata.json()) == 3
    bulk_links = [v["BulkDataURI"] for item in metadata.json() for v in item.values()
                  if isinstance(v, dict) and "BulkDataURI" in v]
    assert bulk_links and all(link.startswith(server.url + "/dicom-web/") for link in bulk_links), bulk_links[:2]
    frame = requests.get(bulk_links[0], timeout=30)
    assert frame.status_code == 200 and frame.headers["Content-Type"].startswith("multipart/related")

    for method in ("POST", "PUT", "DELETE"):
        refused = requests.request(method, f"{server.url}/dicom-web/studies", data=b"x", timeout=10)
        assert refused.status_code == 405, method
    assert len(requests.get(pacs.url + "/studies", auth=pacs.auth, timeout=10).json()) == 1  # nothing deleted


def test_the_proxy_answers_502_when_the_pacs_is_down(dist: Path) -> None:
    upstream = Upstream(host="127.0.0.1", port=9, root="/dicom-web", username="u", password="p")
    with ViewerServer(upstream=upstream, dist=dist) as server:
        assert requests.get(server.url + "/dicom-web/studies", timeout=30).status_code == 502


def test_a_missing_viewer_or_a_wrong_pacs_url_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ViewerNotInstalledError, match=r"^no OHIF viewer in .* \(run `make ohif`\)$"):
        ohif_dist(tmp_path)
    with pytest.raises(ValueError, match="must be an http:// URL"):
        Upstream.from_url("https://pacs/dicom-web", username="u", password="p")
