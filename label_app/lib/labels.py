"""The annotation labels: names and values of the label volumes the annotator sees and saves.

A label volume is uint8 on the CT's own grid: array (z, y, x) = (slice, row, column) as the loader
(:func:`operators.series_volume.load_study`) stacks the series, affine index -> LPS mm. On disk it is
NRRD or NIfTI through :mod:`operators.volume_io` (array order kept, exact geometry in the header).

Values are the position in :func:`annotation_labels` plus one, as MONAI Label numbers a list of labels:
1 femur (the whole bone, lesions included, both sides), 2 lytic lesion, 3 cyst (only for a model with a
cyst class). A lesion or cyst voxel is also femur; the volume holds the more specific value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from operators.lesion_segmentation import StudySegmentation

__all__ = ["CYST", "FEMUR", "LESION", "LabelMasks", "annotation_labels", "label_volume", "masks_of"]

FEMUR = "femur"
LESION = "lytic lesion"
CYST = "cyst"


def annotation_labels(with_cyst: bool) -> list[str]:
    """The label names, in value order (value = index + 1): femur, lytic lesion[, cyst]."""
    return [FEMUR, LESION, CYST] if with_cyst else [FEMUR, LESION]


def _value(name: str) -> int:
    return annotation_labels(True).index(name) + 1


@dataclass(frozen=True, eq=False)
class LabelMasks:
    """The masks of a label volume, bool (z, y, x) on its grid; lesions and cysts lie inside ``femur``."""

    femur: np.ndarray
    lesion: np.ndarray
    cyst: np.ndarray


def label_volume(segmentation: StudySegmentation) -> np.ndarray:
    """The pipeline's result as an annotation label volume, uint8 (z, y, x) on the CT's full grid."""
    out = np.zeros(segmentation.full_shape, dtype=np.uint8)
    for femur in segmentation.femurs.values():
        window = out[femur.crop.box]  # a view into ``out``
        window[femur.crop.mask] = _value(FEMUR)
        if femur.cyst is not None:
            window[femur.cyst] = _value(CYST)
        window[femur.lesion] = _value(LESION)  # a voxel that is both is a lesion, as in the SEG's order
    return out


def masks_of(labels: np.ndarray) -> LabelMasks:
    """Femur, lesion and cyst masks of a label volume (values of :func:`annotation_labels`).

    Raises
    ------
    ValueError
        If the volume holds values that are no annotation label.
    """
    labels = np.asarray(labels)
    unknown = sorted(set(np.unique(labels).tolist()) - {0, 1, 2, 3})
    if unknown:
        raise ValueError(f"label volume holds values {unknown}; expected 0 background, 1 femur, "
                         "2 lytic lesion, 3 cyst")
    return LabelMasks(femur=labels > 0, lesion=labels == _value(LESION), cyst=labels == _value(CYST))
