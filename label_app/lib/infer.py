"""The MONAI Label inference task: femurs, lytic lesions (and cysts) of a CT study, on the CT's own grid.

:class:`FemurLesionInfer` overrides ``InferTask.__call__`` whole: MONAI Label's pre/post-transform chain
would load the image itself, whereas this task runs the MONAI Deploy application's pipeline
(:func:`label_app.lib.pipeline.run_pipeline`) on the DICOM series folder the datastore hands over, and
writes the result as one label volume (:mod:`label_app.lib.labels`) of the series' own grid.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from operators.errors import FemurSegError
from operators.volume_io import write_volume

from .labels import annotation_labels, label_volume
from .pipeline import VersionedModel, model_has_cyst, run_pipeline

logger = logging.getLogger(__name__)

__all__ = ["FemurLesionInfer", "RESULT_EXTENSIONS", "SLICE_ORDERS", "ascending_slices"]

#: Label file formats the task writes; ``.nrrd`` is what the OHIF panel asks for.
RESULT_EXTENSIONS = (".nrrd", ".nii.gz", ".nii")
#: Slice orders of the label file: the series' as loaded, or ascending along the image plane's normal.
SLICE_ORDERS = ("loaded", "ascending")


def ascending_slices(labels: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The label volume with its slices in ascending order along the normal of the image plane.

    OHIF (cornerstone) stacks a series into a volume in that order (the normal is the row direction
    times the column direction, as in DICOM), with each slice's pixels as stored, and MONAI Label's
    panel copies the label file's voxels into that volume as they come. Geometry stays exact: when the
    slices are reversed, so is the affine's slice axis.

    Parameters
    ----------
    labels : np.ndarray
        (z, y, x) = (slice, row, column).
    affine : np.ndarray
        4 x 4, index (z, y, x) -> LPS mm.
    """
    affine = np.asarray(affine, dtype=float)
    normal = np.cross(affine[:3, 2], affine[:3, 1])  # row direction (along x) x column direction (along y)
    if float(np.dot(affine[:3, 0], normal)) >= 0:
        return labels, affine
    flipped = affine.copy()
    flipped[:3, 3] = affine[:3, 3] + affine[:3, 0] * (labels.shape[0] - 1)
    flipped[:3, 0] = -affine[:3, 0]
    return np.ascontiguousarray(labels[::-1]), flipped


class FemurLesionInfer(InferTask):
    """Femur, lytic lesion (and cyst) labels of one CT series by the deploy pipeline and the current model.

    Request keys: ``image`` (the series' DICOM folder, from the datastore), ``result_extension``
    (``.nrrd`` by default, ``.nii.gz`` or ``.nii``), ``slice_order`` (``loaded``, the default, or
    ``ascending``: see :func:`ascending_slices`; the OHIF page's script asks for it), ``result_compress``
    (default true; the OHIF panel asks for false). Returns the label
    file (uint8, array (z, y, x) of the series, affine to LPS mm in the header) and a JSON with the label
    names and values, the model version and the stage timings (s).
    """

    def __init__(self, model: VersionedModel, *, description: str = "Femurs and lytic lesions (nnU-Net)") -> None:
        current = model.store.current()
        self.with_cyst = current is not None and model_has_cyst(current.folder)
        super().__init__(type=InferType.SEGMENTATION, labels=annotation_labels(self.with_cyst), dimension=3,
                         description=description, config={"result_extension": ".nrrd"})
        self.model = model

    def is_valid(self) -> bool:
        return self.model.store.current() is not None

    def info(self) -> dict[str, Any]:
        info = super().info()
        current = self.model.store.current()
        info["model_version"] = current.name if current else None
        return info

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        started = time.perf_counter()
        study = Path(str(request.get("image", "")))
        if not study.is_dir():
            raise MONAILabelException(MONAILabelError.INVALID_INPUT,
                                      "image must be a CT series (a DICOM folder from the datastore)")
        extension = str(request.get("result_extension") or ".nrrd")
        if extension not in RESULT_EXTENSIONS:
            raise MONAILabelException(MONAILabelError.INVALID_INPUT,
                                      f"result_extension must be one of {', '.join(RESULT_EXTENSIONS)}")
        try:
            result = run_pipeline(study, self.model)
        except FemurSegError as error:
            raise MONAILabelException(MONAILabelError.INVALID_INPUT, str(error)) from error

        labels = label_volume(result.segmentation)
        slice_order = str(request.get("slice_order") or "loaded")
        if slice_order not in SLICE_ORDERS:
            raise MONAILabelException(MONAILabelError.INVALID_INPUT,
                                      f"slice_order must be one of {', '.join(SLICE_ORDERS)}")
        affine = result.loaded.volume.affine
        if slice_order == "ascending":
            labels, affine = ascending_slices(labels, affine)
        volume = hd.Volume(labels, affine, "PATIENT")
        handle, name = tempfile.mkstemp(suffix=extension, prefix="femur-labels-")
        os.close(handle)
        compress = str(request.get("result_compress", True)).strip().lower() not in ("false", "0", "no")
        write_volume(name, volume, compress=compress)
        info = result.segmentation.model
        seconds = {**{k: round(v, 2) for k, v in result.seconds.items()},
                   "total": round(time.perf_counter() - started, 2)}
        logger.info("series %s: %s; model version %s; %s", result.loaded.series.series_instance_uid,
                    ", ".join(f"{side} femur {f.n_lesion_voxels} lesion voxel(s)"
                              for side, f in result.segmentation.femurs.items()) or "no femur in view",
                    result.version.name, seconds)
        return name, {
            "label_names": {label: value for value, label in enumerate(self.labels, start=1)},
            "model": {"name": info.name, "version": info.version, "store_version": result.version.name},
            "femurs": sorted(result.segmentation.femurs),
            "no_femur_reason": result.segmentation.no_femur_reason,
            "shape_zyx": list(labels.shape),
            "slice_order": slice_order,
            "latencies": seconds,
        }
