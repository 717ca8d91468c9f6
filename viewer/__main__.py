"""``python -m viewer``: the demo study and its results in a local Orthanc, and the OHIF viewer on it.

What ``make viewer`` runs after ``make demo``: starts Orthanc on loopback (a fresh one, its files in
``<demo>/viewer-pacs``), stores the demo's CT series and the application's SEG and SR into it by C-STORE,
as the scanner and the gateway would, starts the viewer (OHIF + DICOMweb proxy) on loopback, prints the
addresses to open (they carry the viewer's access token) and serves until Ctrl-C.

Usage: ``python -m viewer --demo demo-output [--port 3000] [--token-file FILE]``. The access token is new at
each start unless ``--token-file`` (or ``$FEMUR_VIEWER_TOKEN_FILE``) names a file that holds one. Exit
status 2 with one line ``error: ...`` when the viewer or Orthanc is not installed, the demo is missing or
the token file is unusable.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

import pydicom

from gateway.orthanc import PacsError
from gateway.orthanc_server import LocalOrthanc, OrthancUnavailableError
from gateway.store import LOCAL_PEER_TIMEOUT_S, CStoreStore
from viewer.ohif import ViewerNotInstalledError, ohif_dist, ohif_version
from viewer.server import InvalidTokenError, Upstream, ViewerServer, read_token_file

logger = logging.getLogger(__name__)

TOKEN_FILE_ENV = "FEMUR_VIEWER_TOKEN_FILE"


class DemoMissingError(RuntimeError):
    """The demo folder holds no study."""


def demo_files(demo: Path) -> tuple[list[Path], list[Path]]:
    """The demo's DICOM images (``study/DICOM``) and the application's results (``app-output``: seg.dcm,
    sr.dcm, those that exist)."""
    images = sorted(p for p in (demo / "study" / "DICOM").rglob("*") if p.is_file())
    if not images:
        raise DemoMissingError(f"no demo study in {demo / 'study' / 'DICOM'} (run `make demo`)")
    results = [p for p in (demo / "app-output" / "seg.dcm", demo / "app-output" / "sr.dcm") if p.is_file()]
    return images, results


def _series_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m viewer", description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("demo-output"), help="the folder `make demo` wrote")
    parser.add_argument("--port", type=int, default=3000, help="viewer port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--token-file", type=Path, default=os.environ.get(TOKEN_FILE_ENV) or None,
                        help=f"file holding the access token (default ${TOKEN_FILE_ENV}; none: a new random "
                             "token at each start)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # one line per image otherwise

    demo: Path = args.demo.resolve()
    try:
        dist = ohif_dist()
        images, results = demo_files(demo)
        token = read_token_file(Path(args.token_file)) if args.token_file else None
    except (ViewerNotInstalledError, DemoMissingError, InvalidTokenError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    pacs_folder = demo / "viewer-pacs"
    shutil.rmtree(pacs_folder, ignore_errors=True)  # a fresh PACS each time: only this demo in it
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        with LocalOrthanc(folder=pacs_folder) as pacs:
            store = CStoreStore(host="127.0.0.1", port=pacs.dicom_port, aet=pacs.aet, calling_aet="FEMURDEMO",
                                timeout_s=LOCAL_PEER_TIMEOUT_S)
            store.store("", images + results)
            upstream = Upstream.from_url(pacs.dicomweb_url, username=pacs.username, password=pacs.password)
            with ViewerServer(upstream=upstream, dist=dist, port=args.port, token=token) as server:
                study_uid = str(pydicom.dcmread(images[0], stop_before_pixels=True).StudyInstanceUID)
                seg = next((p for p in results if p.name == "seg.dcm"), None)
                print(f"\nOHIF {ohif_version(dist)} with the demo study in Orthanc ({len(images)} images, "
                      f"results: {', '.join(p.name for p in results) or 'none (no model in model/)'})")
                # The addresses carry the access token (shown here once, never logged): opening one of them
                # gives the browser its cookie.
                print(f"  study list:          {server.with_token(server.url + '/')}")
                print(f"  the study:           {server.with_token(server.study_url(study_uid))}")
                if seg is not None:
                    seg_url = server.study_url(study_uid, series_uid=_series_uid(seg))
                    print(f"  the study with SEG:  {server.with_token(seg_url)}")
                print(f"  Orthanc (REST):      {pacs.url}  user {pacs.username}, password {pacs.password}")
                print("Ctrl-C stops both.", flush=True)
                stop.wait()
                print("stopping the viewer and Orthanc ...", flush=True)
    except (OrthancUnavailableError, PacsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
