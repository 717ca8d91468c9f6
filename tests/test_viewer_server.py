"""The viewer's HTTP server against a real Orthanc, without a browser: OHIF's files with the SPA fallback,
the generated app-config.js, the read-only DICOMweb proxy that adds the PACS credentials (the browser
sends none) and makes Orthanc's bulk data links name the proxy, and the access token that guards both."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from gateway.orthanc_server import LocalOrthanc
from tests.dicom_factory import write_ct_series
from tests.gateway_support import send_study, start_orthanc
from viewer.ohif import ViewerNotInstalledError, app_config_js, ohif_dist
from viewer.server import InvalidTokenError, Upstream, ViewerServer, read_token_file


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


@pytest.fixture
def browser(server: ViewerServer) -> Iterator[requests.Session]:
    """A client that opened the address the viewer prints, as a browser would: it holds the cookie."""
    with requests.Session() as session:
        assert session.get(server.with_token(server.url + "/"), timeout=10).status_code == 200
        yield session


def test_static_files_routes_and_the_generated_config(server: ViewerServer, browser: requests.Session) -> None:
    index = browser.get(server.url + "/", timeout=10)
    assert index.status_code == 200 and index.text == "<html>viewer</html>"
    route = browser.get(server.url + "/viewer?StudyInstanceUIDs=1.2.3", timeout=10)  # an OHIF route
    assert route.status_code == 200 and route.text == "<html>viewer</html>"
    assert browser.get(server.url + "/app.bundle.js", timeout=10).headers["Content-Type"] == "text/javascript"
    assert browser.get(server.url + "/codec.wasm", timeout=10).headers["Content-Type"] == "application/wasm"
    assert browser.get(server.url + "/missing.bundle.js", timeout=10).status_code == 404  # no index.html for assets
    assert "root:" not in browser.get(server.url + "/%2e%2e/%2e%2e/etc/passwd", timeout=10).text  # no way out

    config = browser.get(server.url + "/app-config.js", timeout=10)
    assert config.status_code == 200 and config.text == app_config_js()  # ours, not the file in dist
    assert "window.location.origin + \"/dicom-web\"" in config.text and "public demo server" not in config.text


def test_the_dicomweb_proxy_adds_the_credentials_and_is_read_only(server: ViewerServer, pacs: LocalOrthanc,
                                                                   browser: requests.Session,
                                                                   tmp_path: Path) -> None:
    series = write_ct_series(tmp_path / "ct", n_slices=3)
    send_study(pacs, list(series.paths))
    assert requests.get(pacs.dicomweb_url + "/studies", timeout=10).status_code == 401  # Orthanc wants auth

    studies = browser.get(server.url + "/dicom-web/studies", headers={"Accept": "application/dicom+json"},
                          timeout=30)
    assert studies.status_code == 200, studies.text
    assert [s["0020000D"]["Value"][0] for s in studies.json()] == [series.study_uid]
    assert "Access-Control-Allow-Origin" not in studies.headers  # same origin: no CORS needed

    metadata = browser.get(f"{server.url}/dicom-web/studies/{series.study_uid}/metadata", timeout=30)
    assert metadata.status_code == 200 and len(metadata.json()) == 3
    bulk_links = [v["BulkDataURI"] for item in metadata.json() for v in item.values()
                  if isinstance(v, dict) and "BulkDataURI" in v]
    assert bulk_links and all(link.startswith(server.url + "/dicom-web/") for link in bulk_links), bulk_links[:2]
    frame = browser.get(bulk_links[0], timeout=30)
    assert frame.status_code == 200 and frame.headers["Content-Type"].startswith("multipart/related")

    for method in ("POST", "PUT", "DELETE"):
        refused = browser.request(method, f"{server.url}/dicom-web/studies", data=b"x", timeout=10)
        assert refused.status_code == 405, method
    assert len(requests.get(pacs.url + "/studies", auth=pacs.auth, timeout=10).json()) == 1  # nothing deleted


def test_every_request_needs_the_access_token(server: ViewerServer) -> None:
    studies = server.url + "/dicom-web/studies"
    port = server.url.rsplit(":", 1)[1]
    for url in (server.url + "/", server.url + "/viewer", server.url + "/app.bundle.js", server.url + "/app-config.js",
                studies):
        refused = requests.get(url, timeout=10)
        assert refused.status_code == 401, url
        assert refused.headers["Content-Type"].startswith("text/plain") and refused.text.count("\n") == 1
    assert requests.get(studies, cookies={f"viewer_token_{port}": "x" * 43}, timeout=10).status_code == 401
    assert requests.get(studies, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
    assert requests.get(studies + "?token=" + "x" * 43, timeout=10, allow_redirects=False).status_code == 401

    # The printed address: its token becomes a cookie only this origin's own requests carry, and the browser
    # goes on to the same address without the token.
    opened = requests.get(server.with_token(server.url + "/viewer?StudyInstanceUIDs=1.2.3"), timeout=10,
                          allow_redirects=False)
    assert opened.status_code == 303
    assert opened.headers["Location"] == "/viewer?StudyInstanceUIDs=1.2.3"
    set_cookie = opened.headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie and "Path=/" in set_cookie
    assert requests.get(studies, cookies=opened.cookies, timeout=30).status_code == 200  # proxied to Orthanc
    assert requests.get(studies, headers={"Authorization": f"Bearer {server.token}"}, timeout=30).status_code == 200

    # Another name for this machine is fine; a web page's own name pointed at 127.0.0.1 (DNS rebinding) is not.
    cookie = dict(opened.cookies)  # not the jar: it would keep the cookie from a host named otherwise
    assert requests.get(studies, cookies=cookie, headers={"Host": f"localhost:{port}"}, timeout=30).status_code == 200
    rebound = requests.get(studies, cookies=cookie, headers={"Host": f"attacker.example:{port}"}, timeout=10)
    assert rebound.status_code == 403


def test_a_token_from_a_file(tmp_path: Path, dist: Path) -> None:
    upstream = Upstream(host="127.0.0.1", port=9, root="/dicom-web", username="u", password="p")
    file = tmp_path / "viewer.token"
    file.write_text("a-fixed-token_0123456789\n")
    with ViewerServer(upstream=upstream, dist=dist, token=read_token_file(file)) as server:
        assert server.token == "a-fixed-token_0123456789"
        opened = requests.get(server.url + "/?token=a-fixed-token_0123456789", timeout=10, allow_redirects=False)
        assert opened.status_code == 303 and opened.headers["Location"] == "/"
    file.write_text("short\n")
    with pytest.raises(InvalidTokenError, match=r"viewer\.token: .* 16 or more characters"):
        read_token_file(file)
    with pytest.raises(OSError, match="cannot read the viewer's token file"):
        read_token_file(tmp_path / "missing")
    with pytest.raises(InvalidTokenError):
        ViewerServer(upstream=upstream, dist=dist, token="has spaces and ; in it")


def test_the_proxy_answers_502_when_the_pacs_is_down(dist: Path) -> None:
    upstream = Upstream(host="127.0.0.1", port=9, root="/dicom-web", username="u", password="p")
    with ViewerServer(upstream=upstream, dist=dist) as server:
        bearer = {"Authorization": f"Bearer {server.token}"}
        assert requests.get(server.url + "/dicom-web/studies", headers=bearer, timeout=30).status_code == 502


def test_a_missing_viewer_or_a_wrong_pacs_url_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ViewerNotInstalledError, match=r"^no OHIF viewer in .* \(run `make ohif`\)$"):
        ohif_dist(tmp_path)
    with pytest.raises(ValueError, match="must be an http:// URL"):
        Upstream.from_url("https://pacs/dicom-web", username="u", password="p")
