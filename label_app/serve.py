"""Start a local Orthanc with synthetic studies and the MONAI Label server on it, both on loopback.

``make label`` runs this (``python label_app/serve.py``): it writes ``--studies`` small synthetic CT
studies (once; kept in ``--work``), starts Orthanc (:class:`gateway.orthanc_server.LocalOrthanc`) in
``<work>/orthanc`` with its DICOMweb plugin, stores the studies into it, and runs
``monailabel start_server`` on ``http://127.0.0.1:<port>`` until interrupted (Ctrl-C stops both).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
APP_DIR = REPO_ROOT / "label_app"
sys.path.insert(0, str(REPO_ROOT))  # run as a script from anywhere

from gateway.orthanc import OrthancClient  # noqa: E402
from gateway.orthanc_server import LocalOrthanc  # noqa: E402

logger = logging.getLogger("label_app.serve")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "build" / "label")
    parser.add_argument("--studies", type=int, default=3, help="synthetic studies to load into Orthanc")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--port", type=int, default=8000,
                        help="MONAI Label port (any port: the OHIF page it serves points its panel at it)")
    parser.add_argument("--orthanc-port", type=int, default=8042)
    parser.add_argument("--device", default=os.environ.get("FEMUR_LESION_DEVICE", "auto"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import pydicom

    from synthetic_ct import generate_phantom, write_study
    from synthetic_ct.writer import DICOM_FOLDER

    studies = []
    for k in range(args.studies):
        folder = args.work / "studies" / f"study-{k + 1:02d}"
        if not folder.is_dir():
            logger.info("writing synthetic study %d of %d (%s)", k + 1, args.studies, args.preset)
            write_study(generate_phantom(100 + k, args.preset), folder, series=("thin",))
        studies.append(folder / DICOM_FOLDER)

    # A new random password at every start (no fixed default); printed once on the console for the
    # annotator's own Orthanc login, not written to any log file.
    with LocalOrthanc(folder=args.work / "orthanc", http_port=args.orthanc_port) as pacs:
        client = OrthancClient(url=pacs.url, auth=pacs.auth)
        study_uid = "<study UID>"
        for folder in studies:
            files = sorted(p for p in folder.rglob("*") if p.is_file())
            study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
            client.stow(study_uid, files)
        logger.info("Orthanc %s holds %d studies", pacs.url, len(studies))
        print(f"Orthanc login (this run only): user {pacs.username}, password {pacs.password}", flush=True)
        env = {**os.environ, "PYTHONPATH": str(APP_DIR / "pythonpath"),
               "MONAI_LABEL_DICOMWEB_USERNAME": pacs.username, "MONAI_LABEL_DICOMWEB_PASSWORD": pacs.password,
               "MONAI_LABEL_DICOMWEB_CACHE_EXPIRY": "10"}
        # The installed ``monailabel`` script runs whichever ``python`` is first on PATH: use this one.
        command = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(APP_DIR),
                   "--studies", pacs.dicomweb_url, "-i", "127.0.0.1", "-p", str(args.port),
                   "--conf", "device", args.device, "--conf", "models", str(args.work / "model-store")]
        logger.info("MONAI Label on http://127.0.0.1:%d (Ctrl-C stops it and Orthanc); annotate in OHIF at "
                    "http://127.0.0.1:%d/ohif/monai-label?StudyInstanceUIDs=%s", args.port, args.port, study_uid)
        server = subprocess.Popen(command, cwd=REPO_ROOT, env=env, start_new_session=True)
        try:
            return server.wait()
        except KeyboardInterrupt:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
            return 0


if __name__ == "__main__":
    sys.exit(main())
