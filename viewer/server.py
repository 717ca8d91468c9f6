"""The viewer's HTTP server: OHIF's static files and a read-only DICOMweb proxy to Orthanc, on one origin.

* ``/dicom-web/...`` (GET and HEAD only) is forwarded to the PACS's DICOMweb root with HTTP basic
  authentication added: the browser needs no credentials and, the origin being the same, no CORS (which
  Orthanc does not send). Other methods are refused (405): a viewer reads, it does not write to the PACS.
  The ``Host`` the browser used is passed on, so that the ``BulkDataURI`` links Orthanc writes into the
  metadata point back at this server, not at Orthanc.
* ``/app-config.js`` is generated (:func:`viewer.ohif.app_config_js`).
* any other path is a file of OHIF's ``dist``; a path without a file extension that is no file (an OHIF
  route such as ``/viewer``) gets ``index.html`` (single-page application fallback).

Whoever reaches it reads the PACS with the proxy's credentials, so every request must show an access token
(random at each start, or given, e.g. from a file: :func:`read_token_file`):

* ``?token=...`` in the address the viewer printed: the answer is a redirect to the same address without
  the token, with the token in an ``HttpOnly``, ``SameSite=Strict`` cookie, which OHIF's own requests (same
  origin) then carry; or ``Authorization: Bearer ...`` (scripts). Anything else gets 401.
* It listens on loopback by default, and then answers only requests whose ``Host`` is a loopback name or
  address (403 otherwise): a web page that rebinds its own DNS name to 127.0.0.1 gets nothing.

The access log carries no query strings (study list searches can hold patient names; the first address
holds the token).
"""

from __future__ import annotations

import base64
import hmac
import http.client
import ipaddress
import logging
import mimetypes
import posixpath
import re
import secrets
import threading
import urllib.parse
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

from viewer.ohif import app_config_js, ohif_dist

logger = logging.getLogger(__name__)
#: Largest request body a refused write request is read for (bytes), keeping its connection open.
_DRAINED_BODY_BYTES = 1 << 20

DICOMWEB_PATH = "/dicom-web"
# Request headers the browser's DICOMweb client needs Orthanc to see; nothing else goes through
# (no cookies, no Authorization of its own).
_FORWARDED_REQUEST_HEADERS = ("Accept", "Accept-Encoding", "Range", "If-None-Match", "If-Modified-Since")
_FORWARDED_RESPONSE_HEADERS = ("Content-Type", "Content-Encoding", "Content-Range", "ETag", "Last-Modified",
                               "Accept-Ranges", "Cache-Control")
_CHUNK = 1 << 20
TOKEN_PARAMETER = "token"
# Tokens go into a query string and a cookie as they are: URL-safe characters only, and enough of them.
_TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{16,}")
# Types Python's table may lack or get wrong; WebAssembly must be application/wasm for streaming compilation.
_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm", ".json": "application/json",
          ".css": "text/css", ".svg": "image/svg+xml", ".woff2": "font/woff2", ".map": "application/json"}


@dataclass(frozen=True)
class Upstream:
    """The PACS's DICOMweb service: ``http://host:port`` + ``root`` (e.g. ``/dicom-web``), basic auth."""

    host: str
    port: int
    root: str
    username: str
    password: str

    @classmethod
    def from_url(cls, dicomweb_url: str, *, username: str, password: str) -> Upstream:
        """From a DICOMweb root URL such as ``http://127.0.0.1:8042/dicom-web`` (http only)."""
        parts = urllib.parse.urlsplit(dicomweb_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the DICOMweb root must be an http:// URL, not {dicomweb_url!r}")
        return cls(host=parts.hostname, port=parts.port or 80, root=parts.path.rstrip("/"),
                   username=username, password=password)

    @property
    def authorization(self) -> str:
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode("ascii")
        return f"Basic {token}"


class InvalidTokenError(ValueError):
    """An access token that is too short or has characters a URL or a cookie cannot carry as they are."""


def check_token(token: str) -> str:
    """``token`` if it can be the viewer's access token (16 or more of ``A-Z a-z 0-9 _ -``), else
    :class:`InvalidTokenError`."""
    if not _TOKEN_PATTERN.fullmatch(token):
        raise InvalidTokenError("the viewer's access token must be 16 or more characters of A-Z a-z 0-9 _ -")
    return token


def read_token_file(path: Path) -> str:
    """The access token in ``path`` (surrounding whitespace ignored); one-line errors
    (:class:`InvalidTokenError`, or :class:`OSError` when it cannot be read)."""
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise OSError(f"cannot read the viewer's token file {path}: {exc.strerror or exc}") from None
    try:
        return check_token(text.strip())
    except InvalidTokenError as exc:
        raise InvalidTokenError(f"{path}: {exc}") from None


def _is_loopback(host: str) -> bool:
    """``host`` (a name or an address, IPv6 without brackets) is this machine's loopback."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Handler(BaseHTTPRequestHandler):
    """One request; the server object carries the dist folder, the config and the upstream."""

    server: _ViewerHTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive: OHIF makes hundreds of small requests

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self._admitted():
            self._dispatch(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        if self._admitted():
            self._dispatch(head=True)

    def _refuse(self) -> None:
        # A small body is read and dropped so that the connection can go on; closing a socket whose
        # receive buffer still holds unread bytes makes the kernel send a reset, which can reach the
        # client before the refusal does. A larger (or unsized) body ends the connection instead.
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if "Transfer-Encoding" not in self.headers and 0 <= length <= _DRAINED_BODY_BYTES:
            self.rfile.read(length)
        else:
            self.close_connection = True
        self._send_error(HTTPStatus.METHOD_NOT_ALLOWED, "the viewer's DICOMweb proxy is read-only")

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse  # noqa: N815

    # -- access ------------------------------------------------------------------------------------------

    def _admitted(self) -> bool:
        """Whether the request may go on; if not, the refusal (or the token-to-cookie redirect) is sent."""
        if self.server.loopback_only:
            host = urllib.parse.urlsplit("//" + (self.headers.get("Host") or "")).hostname or ""
            if not _is_loopback(host):
                self._send_error(HTTPStatus.FORBIDDEN, "this viewer answers to loopback addresses only")
                return False
        parts = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        given = [value for name, value in query if name == TOKEN_PARAMETER]
        if given:
            if len(given) == 1 and self._valid(given[0]):
                self._redirect_with_cookie(parts.path, [(n, v) for n, v in query if n != TOKEN_PARAMETER])
            else:
                self._send_error(HTTPStatus.UNAUTHORIZED, "wrong access token")
            return False
        authorization = self.headers.get("Authorization") or ""
        if authorization[:7].lower() == "bearer " and self._valid(authorization[7:].strip()):
            return True
        if any(self._valid(value) for value in self._cookies(self.server.cookie_name)):
            return True
        self._send_error(HTTPStatus.UNAUTHORIZED, "no access token: open the address with ?token= that the "
                                                  "viewer printed when it started")
        return False

    def _valid(self, candidate: str) -> bool:
        # Constant time: how long the comparison takes tells nothing about how much of a guess was right.
        return hmac.compare_digest(candidate.encode("utf-8", "replace"), self.server.token.encode("ascii"))

    def _cookies(self, name: str) -> list[str]:
        """Values of the request's cookies called ``name`` (parsed by hand: http.cookies gives up on a whole
        header for one cookie it dislikes, and other applications on 127.0.0.1 set theirs too)."""
        values = []
        for header in self.headers.get_all("Cookie") or []:
            for pair in header.split(";"):
                key, _, value = pair.strip().partition("=")
                if key == name:
                    values.append(value.strip().strip('"'))
        return values

    def _redirect_with_cookie(self, path: str, query: list[tuple[str, str]]) -> None:
        """303 to the address without the token, the token now in a cookie that no script can read and no
        other site's page can make the browser send."""
        location = "/" + path.lstrip("/")  # "//host/..." would leave this origin
        if query:
            location += "?" + urllib.parse.urlencode(query)
        self.send_response(HTTPStatus.SEE_OTHER)
        self.send_header("Location", location)
        self.send_header("Set-Cookie", f"{self.server.cookie_name}={self.server.token}; Path=/; HttpOnly; "
                                       "SameSite=Strict")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", "0")
        self.end_headers()

    # -- routes --------------------------------------------------------------------------------------------

    def _dispatch(self, *, head: bool) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path == DICOMWEB_PATH or path.startswith(DICOMWEB_PATH + "/"):
            self._proxy(head=head)
        elif path == "/app-config.js":
            self._send_bytes(self.server.app_config, "text/javascript", head=head, cache=False)
        else:
            self._static(path, head=head)

    # -- static files --------------------------------------------------------------------------------

    def _static(self, path: str, *, head: bool) -> None:
        relative = posixpath.normpath(urllib.parse.unquote(path)).lstrip("/")
        if relative.startswith("..") or "\0" in relative:
            self._send_error(HTTPStatus.NOT_FOUND, "not found")
            return
        file = self.server.dist / relative if relative not in ("", ".") else self.server.dist / "index.html"
        if not file.is_file():
            if posixpath.splitext(relative)[1]:  # a missing asset stays missing: a clear 404 in the console
                self._send_error(HTTPStatus.NOT_FOUND, "not found")
                return
            file = self.server.dist / "index.html"  # an OHIF route
        suffix = file.suffix.lower()
        content_type = _TYPES.get(suffix) or mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        # index.html must be re-read (it names the hashed bundles); the bundles themselves never change.
        self._send_file(file, content_type, head=head, cache=file.name != "index.html")

    def _send_file(self, file: Path, content_type: str, *, head: bool, cache: bool) -> None:
        size = file.stat().st_size
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(size))
        self.send_header("Cache-Control", "private, max-age=86400" if cache else "no-cache")
        self.end_headers()
        if not head:
            with file.open("rb") as stream:
                while chunk := stream.read(_CHUNK):
                    self.wfile.write(chunk)

    def _send_bytes(self, data: bytes, content_type: str, *, head: bool, cache: bool) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "private, max-age=86400" if cache else "no-cache")
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _send_error(self, status: HTTPStatus, message: str) -> None:
        body = (message + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if status == HTTPStatus.UNAUTHORIZED:
            self.send_header("WWW-Authenticate", 'Bearer realm="viewer"')
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    # -- DICOMweb proxy ------------------------------------------------------------------------------

    def _proxy(self, *, head: bool) -> None:
        upstream = self.server.upstream
        target = upstream.root + self.path[len(DICOMWEB_PATH):]
        headers = {name: value for name in _FORWARDED_REQUEST_HEADERS if (value := self.headers.get(name))}
        headers["Authorization"] = upstream.authorization
        host = self.headers.get("Host") or f"{self.server.server_address[0]}:{self.server.server_address[1]}"
        headers["Host"] = host  # Orthanc builds BulkDataURI links from it: they must name this server
        connection = http.client.HTTPConnection(upstream.host, upstream.port, timeout=self.server.timeout_s)
        answered = False
        try:
            connection.request(self.command, target, headers=headers)
            answer = connection.getresponse()
            answered = True
            self.send_response(answer.status)
            for name in _FORWARDED_RESPONSE_HEADERS:
                if (value := answer.getheader(name)) is not None:
                    self.send_header(name, value)
            length = answer.getheader("Content-Length")
            if length is None and not head:
                # Orthanc answered in chunks: pass them on the same way.
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                while chunk := answer.read(_CHUNK):
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.send_header("Content-Length", length or "0")
                self.end_headers()
                if not head:
                    while chunk := answer.read(_CHUNK):
                        self.wfile.write(chunk)
            if answer.status >= 400:
                logger.debug("PACS answered %d to %s %s", answer.status, self.command, _log_path(self.path))
        except (OSError, http.client.HTTPException) as exc:
            logger.warning("%s %s: %s", self.command, _log_path(self.path),
                           "the PACS did not answer" if not answered else f"transfer broken ({type(exc).__name__})")
            self.close_connection = True
            if not answered:  # nothing sent yet: the browser gets a proper 502
                try:
                    self._send_error(HTTPStatus.BAD_GATEWAY, "the PACS did not answer")
                except OSError:
                    pass
        finally:
            connection.close()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
        """Requests at DEBUG only, and without query strings."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        logger.debug("%s %s -> %s", self.command, _log_path(self.path), code)


def _log_path(path: str) -> str:
    """A request path for the log: no query string, and UIDs cut short."""
    parts = urllib.parse.urlsplit(path).path.split("/")
    return "/".join(p if len(p) < 24 else p[:8] + "..." for p in parts)


class _ViewerHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # OHIF opens many connections at once (workers, prefetch); the default backlog of 5 drops some.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], *, dist: Path, upstream: Upstream, timeout_s: float,
                 token: str) -> None:
        super().__init__(address, _Handler)
        self.dist = dist
        self.upstream = upstream
        self.timeout_s = timeout_s
        self.token = token
        self.loopback_only = _is_loopback(address[0])
        # Cookies are per host, not per port: each viewer (and any other application on 127.0.0.1) needs
        # a name of its own, or they would overwrite each other's.
        self.cookie_name = f"viewer_token_{self.server_address[1]}"
        self.app_config = app_config_js(dicomweb_path=DICOMWEB_PATH).encode()


@dataclass
class ViewerServer:
    """OHIF plus the DICOMweb proxy on ``http://127.0.0.1:port`` (0: a free port), in a background thread.

    Use as a context manager, or :meth:`start` / :meth:`stop`. ``dist`` defaults to :func:`ohif_dist`.
    ``token``: the access token (see :func:`check_token`); None: a random one. ``host``: the IPv4 address
    to listen on; on any other than loopback, requests for any ``Host`` are answered (the token still holds).
    """

    upstream: Upstream
    dist: Path | None = None
    port: int = 0
    timeout_s: float = 120.0
    token: str | None = None
    host: str = "127.0.0.1"
    _server: _ViewerHTTPServer | None = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.token = check_token(self.token) if self.token is not None else secrets.token_urlsafe(32)

    @property
    def url(self) -> str:
        """Root of the viewer, e.g. ``http://127.0.0.1:3000`` (without the token: see :meth:`with_token`)."""
        if self._server is None:
            raise RuntimeError("the viewer server is not running")
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self._server.server_address[1]}"

    def with_token(self, url: str) -> str:
        """``url`` (one of this viewer's) with the access token added: the address to open in a browser."""
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True) + [(TOKEN_PARAMETER, str(self.token))]
        return urllib.parse.urlunsplit(parts._replace(path=parts.path or "/", query=urllib.parse.urlencode(query)))

    def study_url(self, study_uid: str, *, series_uid: str | None = None, mode: str = "viewer") -> str:
        """OHIF's page for one study (route ``/viewer``, the basic viewer mode). With ``series_uid`` the
        hanging protocol puts that series in the viewport first: for a SEG series, OHIF loads the referenced
        images and the segmentation at once (no prompt, see :func:`viewer.ohif.app_config_js`)."""
        query = {"StudyInstanceUIDs": study_uid}
        if series_uid:
            query["initialSeriesInstanceUID"] = series_uid
        return f"{self.url}/{mode}?{urllib.parse.urlencode(query)}"

    def start(self) -> ViewerServer:
        dist = ohif_dist(self.dist)
        self._server = _ViewerHTTPServer((self.host, self.port), dist=dist, upstream=self.upstream,
                                         timeout_s=self.timeout_s, token=str(self.token))
        self._thread = threading.Thread(target=self._server.serve_forever, name="viewer-http", daemon=True)
        self._thread.start()
        logger.info("viewer on %s (OHIF files in %s)", self.url, dist)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> ViewerServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
