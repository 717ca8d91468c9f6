"""MONAI Label's bundled OHIF, served with this app's annotation script (``label_app/ohif/``).

The OHIF v3 viewer that monailabel 0.8.5 serves at ``/ohif/`` has a MONAI Label panel that talks to the
server at port 8000 of the page's host unless the ``MONAILABEL_SERVER_URL`` cookie says otherwise, and it
has no button that saves the annotator's segmentation. The installed package is not to be changed, so
the running server answers ``/ohif/`` pages (the ones that fall back to ``index.html``) itself, with one
more ``<script>`` in the page: :data:`SCRIPT_FILE`, which points the panel at the server that served
the page and adds a "Save label" button (see the script's header). Every other ``/ohif/`` file is
MONAI Label's own answer.

:func:`install` puts the route first in the FastAPI application that serves the app (MONAI Label's
``monailabel.app:app``), so that it is matched before MONAI Label's ``/ohif/{path}`` route.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.routing import APIRoute
from monailabel.config import settings
from monailabel.endpoints import ohif as monailabel_ohif
from monailabel.endpoints.user.auth import RBAC, User

logger = logging.getLogger(__name__)

__all__ = ["SCRIPT_FILE", "SCRIPT_URL_NAME", "install", "patched_index"]

#: The annotation script, kept readable in the repository.
SCRIPT_FILE = Path(__file__).resolve().parents[1] / "ohif" / "femur-lesion-label.js"
#: Its name under ``/ohif/`` (no file of the bundled viewer has this name).
SCRIPT_URL_NAME = "femur-lesion-label.js"
_OHIF_DIR = Path(monailabel_ohif.__file__).resolve().parent / "static" / "ohif"
_MARKER = "<head>"


def patched_index(index_html: str, prefix: str = "") -> str:
    """OHIF's ``index.html`` with the annotation script loaded first in ``<head>``.

    The script is not deferred: it runs before OHIF's (deferred) bundle, so the cookie it sets is there
    when the panel first reads it.

    Raises
    ------
    ValueError
        If the page has no ``<head>`` (not the viewer's index page).
    """
    at = index_html.find(_MARKER)
    if at < 0:
        raise ValueError("OHIF's index.html has no <head>")
    tag = f'<script src="{prefix}/ohif/{SCRIPT_URL_NAME}"></script>'
    at += len(_MARKER)
    return index_html[:at] + tag + index_html[at:]


def _is_bundled_file(path: str) -> bool:
    """Whether MONAI Label's own route answers ``path`` with a file other than ``index.html``."""
    if not path:
        return False
    # As monailabel.endpoints.ohif.get_ohif looks the file up (it joins with os.pathsep).
    candidate = os.path.join(str(_OHIF_DIR), path.replace("/", os.pathsep))
    return os.path.isfile(candidate) and os.path.basename(candidate) != "index.html"


def _ohif(path: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))) -> Response:
    if path == SCRIPT_URL_NAME:
        if not SCRIPT_FILE.is_file():
            raise HTTPException(status_code=404, detail="annotation script not installed")
        return FileResponse(SCRIPT_FILE, media_type="text/javascript", headers={"Cache-Control": "no-cache"})
    if _is_bundled_file(path):
        return monailabel_ohif.get_ohif(path)
    index = (_OHIF_DIR / "index.html").read_text(encoding="utf-8")
    return HTMLResponse(patched_index(index, settings.MONAI_LABEL_API_STR), headers={"Cache-Control": "no-cache"})


def install(app: FastAPI) -> None:
    """Answer ``/ohif/{path}`` in ``app`` before MONAI Label's route does (once; later calls do nothing)."""
    prefix = f"{settings.MONAI_LABEL_API_STR}/ohif/{{path:path}}"
    if any(getattr(r, "name", "") == "femur_lesion_ohif" for r in app.router.routes):
        return
    app.router.add_api_route(prefix, _ohif, methods=["GET"], include_in_schema=False, name="femur_lesion_ohif")
    route = app.router.routes.pop()
    assert isinstance(route, APIRoute)
    app.router.routes.insert(0, route)  # Starlette matches routes in order: before MONAI Label's /ohif/
    logger.info("OHIF at %s/ohif/ serves the annotation script %s", settings.MONAI_LABEL_API_STR, SCRIPT_URL_NAME)
