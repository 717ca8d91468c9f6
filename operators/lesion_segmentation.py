"""Segment the lytic lesions of every femur of a CT: the lesion model on each femur crop, mapped back.

:func:`segment_lesions` runs a lesion model (:class:`operators.lesion_model.LesionModel`) on the
femur-only volume of each femur the splitter found (:class:`operators.femur_splitter.FemurSplit`),
and maps each result back into the full CT grid with the crop's own mapping
(:meth:`~operators.femur_splitter.FemurCrop.to_full_grid`: the crop is an index box of the CT grid,
so the mapping is an exact copy, never a resampling). Lesions and cysts are kept only inside the
femur mask: a voxel the model labels outside its femur is set to background (and counted).

The MONAI Deploy application (:mod:`operators.deploy.lesion_operator`) and the MONAI Label application
call this same function.

Arrays are (z, y, x) = (slice, row, column) of the input CT's grid; the grid's affine maps an index to
LPS patient coordinates in mm; "left"/"right" are the patient's sides. Full-grid masks are built on
access (:meth:`FemurSegmentation.lesion_mask` ...), so that a study holds only crop-sized arrays.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import highdicom as hd
import numpy as np

from operators.errors import ModelFolderError
from operators.femur_splitter import SIDE_LABELS, SIDES, FemurCrop, FemurSplit
from operators.lesion_model import LesionModelInfo, LesionPrediction

logger = logging.getLogger(__name__)

__all__ = [
    "CYST_LABEL_NAME",
    "LESION_LABEL_NAME",
    "STUDY_LABELS",
    "label_values",
    "FemurSegmentation",
    "LesionPredictor",
    "StudySegmentation",
    "resolve_model_path",
    "segment_lesions",
]

#: Label names of the lesion models' dataset.json (docs/CONVENTIONS.md, "nnU-Net lesion dataset labels").
LESION_LABEL_NAME = "lesion"
CYST_LABEL_NAME = "cyst"
#: Values of :meth:`StudySegmentation.label_map`, those of docs/CONVENTIONS.md (ground-truth labels).
STUDY_LABELS: Mapping[str, int] = {"left femur": 1, "right femur": 2, "lytic lesion": 3, "cyst": 4}

_DEFAULT_LESION_VALUE = 1


@runtime_checkable
class LesionPredictor(Protocol):
    """What :func:`segment_lesions` needs of a model: :class:`operators.lesion_model.LesionModel` is one.

    ``predict(volume)`` takes a femur-only crop (HU inside the femur, 0 outside; array (z, y, x),
    affine index -> LPS mm, any orientation) and returns a :class:`LesionPrediction` whose ``labels``
    (uint8) lie on the crop's own grid; ``model_info.label_names`` maps label values to names.
    """

    @property
    def model_info(self) -> LesionModelInfo: ...

    def predict(self, volume: hd.Volume) -> LesionPrediction: ...


@dataclass(frozen=True, eq=False)
class FemurSegmentation:
    """The lesion model's result for one femur.

    Attributes
    ----------
    crop:
        The femur's crop (box in the full grid, femur mask, femur-only volume).
    lesion:
        bool, the crop's shape (z, y, x): lytic lesion voxels, all inside ``crop.mask``.
    cyst:
        bool, the crop's shape: cyst voxels, all inside ``crop.mask``; None when the model has no cyst
        class.
    seconds:
        Wall time of the prediction and the mapping back, s.
    voxels_outside_femur:
        Voxels the model labelled lesion or cyst outside the femur mask, set to background.
    """

    crop: FemurCrop
    lesion: np.ndarray
    cyst: np.ndarray | None
    seconds: float
    voxels_outside_femur: int = 0

    @property
    def side(self) -> str:
        """"left" or "right" (the patient's)."""
        return self.crop.side

    @property
    def femur_mask(self) -> np.ndarray:
        """bool (z, y, x) on the full CT grid: the femur (lesions and cysts included)."""
        return self.crop.full_mask()

    @property
    def lesion_mask(self) -> np.ndarray:
        """bool (z, y, x) on the full CT grid: the femur's lytic lesions."""
        return self.crop.to_full_grid(self.lesion, fill=False)

    @property
    def cyst_mask(self) -> np.ndarray | None:
        """bool (z, y, x) on the full CT grid: the femur's cysts; None when the model has no cyst class."""
        return None if self.cyst is None else self.crop.to_full_grid(self.cyst, fill=False)

    @property
    def n_lesion_voxels(self) -> int:
        return int(np.count_nonzero(self.lesion))

    @property
    def n_cyst_voxels(self) -> int:
        return 0 if self.cyst is None else int(np.count_nonzero(self.cyst))

    @property
    def has_lesion(self) -> bool:
        return self.n_lesion_voxels > 0

    @property
    def has_cyst(self) -> bool:
        return self.n_cyst_voxels > 0


@dataclass(frozen=True, eq=False)
class StudySegmentation:
    """Femurs, lytic lesions and cysts of a CT, on its full grid.

    Attributes
    ----------
    femurs:
        Per patient side in view ("left", "right"), its :class:`FemurSegmentation`. Empty when no
        femur is in view.
    full_shape:
        Spatial shape (z, y, x) of the CT.
    affine:
        4x4 affine of the CT, index (z, y, x) -> LPS mm.
    model:
        The lesion model that produced the lesions (name, version, folds, label names).
    has_cyst_class:
        Whether the model segments cysts as their own class.
    timings:
        Wall time per femur side, s.
    no_femur_reason:
        Why no femur was found (from the splitter); None when at least one was.
    """

    femurs: dict[str, FemurSegmentation]
    full_shape: tuple[int, int, int]
    affine: np.ndarray
    model: LesionModelInfo
    has_cyst_class: bool
    timings: dict[str, float] = field(default_factory=dict)
    no_femur_reason: str | None = None

    @property
    def femur_in_view(self) -> bool:
        return bool(self.femurs)

    @property
    def has_lesion(self) -> bool:
        """Whether any femur has a lytic lesion voxel."""
        return any(f.has_lesion for f in self.femurs.values())

    def femur_masks(self) -> dict[str, np.ndarray]:
        """Per side in view, the femur as a bool (z, y, x) mask on the full grid."""
        return {side: f.femur_mask for side, f in self.femurs.items()}

    def lesion_masks(self) -> dict[str, np.ndarray]:
        """Per side in view, its lytic lesions as a bool (z, y, x) mask on the full grid (maybe empty)."""
        return {side: f.lesion_mask for side, f in self.femurs.items()}

    def cyst_masks(self) -> dict[str, np.ndarray]:
        """Per side in view, its cysts as a bool (z, y, x) mask on the full grid; empty dict without a cyst class."""
        if not self.has_cyst_class:
            return {}
        return {side: f.cyst_mask for side, f in self.femurs.items()}  # type: ignore[misc]

    def label_map(self) -> np.ndarray:
        """uint8 (z, y, x) on the full grid, values of :data:`STUDY_LABELS`.

        0 background, 1 left femur, 2 right femur, 3 lytic lesion, 4 cyst (lesions and cysts drawn over
        their femur), as the synthetic studies' ground truth (docs/CONVENTIONS.md).
        """
        out = np.zeros(self.full_shape, dtype=np.uint8)
        for side, femur in self.femurs.items():
            window = out[femur.crop.box]  # a view: writing into it writes into ``out``
            window[femur.crop.mask] = SIDE_LABELS[side]
            if femur.cyst is not None:
                window[femur.cyst] = STUDY_LABELS["cyst"]
            window[femur.lesion] = STUDY_LABELS["lytic lesion"]
        return out


def label_values(info: LesionModelInfo) -> tuple[int, int | None]:
    """The label values of lytic lesion and cyst in a model's output (cyst None when it has none).

    Taken from the model's label names ("lesion", "cyst"); a model whose names say neither is taken to
    use 1 for lesions, the lesion datasets' convention.
    """
    by_name = {str(name).strip().casefold(): int(value) for value, name in info.label_names.items()}
    lesion = by_name.get(LESION_LABEL_NAME, _DEFAULT_LESION_VALUE)
    cyst = by_name.get(CYST_LABEL_NAME)
    return lesion, cyst


def segment_lesions(split: FemurSplit, model: LesionPredictor) -> StudySegmentation:
    """Segment the lytic lesions (and cysts, if the model has them) of every femur of a split CT.

    Parameters
    ----------
    split:
        The femurs of the CT (:func:`operators.femur_splitter.split_femurs`). With no femur in view the
        result is empty and the model is not run.
    model:
        The lesion model, e.g. :meth:`operators.lesion_model.LesionModel.from_folder`.

    Returns
    -------
    StudySegmentation
        Per femur: lesion (and cyst) masks on the crop's grid, mapped to the full CT grid on access by
        the crop's index box, exactly. Model labels outside the femur mask are dropped.

    Raises
    ------
    ValueError
        If the model returns labels of another shape than the crop, or label values it does not name.
    """
    info = model.model_info
    lesion_value, cyst_value = label_values(info)
    known = {0, lesion_value} | ({cyst_value} if cyst_value is not None else set())
    femurs: dict[str, FemurSegmentation] = {}
    timings: dict[str, float] = {}
    for side in SIDES:
        crop = split.femurs.get(side)
        if crop is None:
            continue
        start = time.perf_counter()
        labels = np.asarray(model.predict(crop.femur_only).labels)
        if labels.shape != crop.mask.shape:
            raise ValueError(
                f"lesion model returned labels of shape {labels.shape} for the {side} femur crop of shape "
                f"{crop.mask.shape}"
            )
        unexpected = sorted(set(np.unique(labels).tolist()) - known)
        if unexpected:
            raise ValueError(
                f"lesion model {info.name} returned label values {unexpected} it does not name "
                f"(labels {dict(info.label_names)})"
            )
        lesion = labels == lesion_value
        cyst = labels == cyst_value if cyst_value is not None else None
        outside = int(np.count_nonzero(lesion & ~crop.mask))
        lesion &= crop.mask
        if cyst is not None:
            outside += int(np.count_nonzero(cyst & ~crop.mask))
            cyst &= crop.mask
        seconds = time.perf_counter() - start
        femur = FemurSegmentation(crop=crop, lesion=lesion, cyst=cyst, seconds=seconds,
                                  voxels_outside_femur=outside)
        femurs[side] = femur
        timings[side] = seconds
        voxel_ml = float(abs(np.linalg.det(split.affine[:3, :3]))) / 1000.0
        logger.info(
            "%s femur: lesion %.2f ml (%d voxels)%s in %.1f s%s",
            side, femur.n_lesion_voxels * voxel_ml, femur.n_lesion_voxels,
            f", cyst {femur.n_cyst_voxels * voxel_ml:.2f} ml" if cyst is not None else "",
            seconds,
            f"; {outside} labelled voxel(s) outside the femur dropped" if outside else "",
        )
    return StudySegmentation(
        femurs=femurs,
        full_shape=tuple(int(n) for n in split.full_shape),  # type: ignore[arg-type]
        affine=np.array(split.affine, copy=True),
        model=info,
        has_cyst_class=cyst_value is not None,
        timings=timings,
        no_femur_reason=split.no_femur_reason,
    )


def resolve_model_path(path: str | Path) -> Path:
    """The lesion model folder (or zip) that ``path`` names, directly or as its only model.

    A MONAI Application Package mounts its models as ``<models>/<name>/``, and ``HOLOSCAN_MODEL_PATH``
    names ``<models>``: so ``path`` may be

    * a model folder (``plans.json``, ``dataset.json``, ``fold_*/``), or nnU-Net's exported zip;
    * a folder holding exactly one such folder or zip (at any depth up to two levels).

    Raises
    ------
    ModelFolderError
        If nothing is at ``path``, no model is found in it, or several are.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelFolderError(f"lesion model not found: {path}")
    if path.is_file() or _is_model_folder(path):
        return path
    candidates: list[Path] = []
    for level in (1, 2):
        pattern = "/".join(["*"] * level)
        candidates = sorted(
            p for p in path.glob(pattern)
            if not any(part.startswith(".") for part in p.relative_to(path).parts)
            and (_is_model_folder(p) or (p.is_file() and p.suffix == ".zip"))
        )
        if candidates:
            break
    if not candidates:
        raise ModelFolderError(f"no lesion model in {path}: expected a folder with plans.json, dataset.json "
                               "and fold_*/, or one such folder inside it")
    if len(candidates) > 1:
        names = ", ".join(str(c.relative_to(path)) for c in candidates)
        raise ModelFolderError(f"several lesion models in {path} ({names}): name one")
    return candidates[0]


def _is_model_folder(path: Path) -> bool:
    return (path.is_dir() and (path / "plans.json").is_file() and (path / "dataset.json").is_file()
            and any(path.glob("fold_*")))
