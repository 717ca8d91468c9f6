"""A MONAI Label datastore over a local folder of DICOM studies: one sub-folder, one image.

MONAI Label's :class:`~monailabel.datastore.local.LocalDatastore` takes image *files* (NIfTI...). The
lesion pipeline reads DICOM series folders (series selection, geometry checks), so here each visible
sub-folder of the studies folder that holds files is an image, its name the image id; labels stay
files (``labels/<tag>/<image id>.nrrd`` or ``.nii.gz``), label volumes of :mod:`label_app.lib.labels`
on the CT's grid. The bookkeeping (``datastore_v2.json``, tags, label info) is LocalDatastore's own.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from monailabel.datastore.local import LocalDatastore

logger = logging.getLogger(__name__)

__all__ = ["LABEL_EXTENSIONS", "LocalDicomDatastore"]

#: Label file endings, longest first so that ``.nii.gz`` wins over ``.gz``.
LABEL_EXTENSIONS = (".nii.gz", ".nrrd", ".nii")


class LocalDicomDatastore(LocalDatastore):
    """Images are the DICOM sub-folders of ``studies``; labels are label-volume files."""

    def __init__(self, studies: str, **kwargs: Any) -> None:
        # "*" lets LocalDatastore consider every entry; _list_files keeps the folders (images) or the
        # label files (labels).
        super().__init__(studies, extensions=("*",), **kwargs)

    def _to_id(self, file: str) -> tuple[str, str]:
        for extension in LABEL_EXTENSIONS:
            if file.endswith(extension):
                return file[: -len(extension)], extension
        return file, ""

    def _list_files(self, path: str, patterns: Any) -> dict[str, str]:
        labels_root = os.path.realpath(self._datastore.label_path(None))
        names = sorted(os.listdir(path))
        if os.path.realpath(path) == os.path.realpath(self._datastore.image_path()):
            return {name: name for name in names
                    if not name.startswith(".") and os.path.realpath(os.path.join(path, name)) != labels_root
                    and os.path.isdir(os.path.join(path, name)) and _holds_files(os.path.join(path, name))}
        return {name: name for name in names if name.endswith(LABEL_EXTENSIONS) and not name.startswith(".")}


def _holds_files(folder: str) -> bool:
    for _, _, files in os.walk(folder):
        if any(not f.startswith(".") for f in files):
            return True
    return False
