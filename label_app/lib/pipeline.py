"""The segmentation pipeline as the annotation server runs it: the deploy application's own functions.

:func:`operators.series_volume.load_study` -> :func:`operators.femur_splitter.split_femurs` ->
:func:`operators.lesion_segmentation.segment_lesions` with :class:`operators.lesion_model.LesionModel`, the
chain of the MONAI Deploy application (``app/app.py``). :class:`VersionedModel` holds the model of the
store's current version and reloads it when the version changes, so that a newly published model is
used from the next request on.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from operators.femur_splitter import FemurSegmenter, FemurSplit, split_femurs
from operators.lesion_model import LesionModel
from operators.lesion_segmentation import CYST_LABEL_NAME, StudySegmentation, segment_lesions
from operators.series_volume import LoadedSeries, load_study

from .model_store import ModelStore, ModelVersion

logger = logging.getLogger(__name__)

__all__ = ["PipelineResult", "VersionedModel", "model_has_cyst", "run_pipeline"]


def model_has_cyst(model_folder: Path) -> bool:
    """Whether the model in ``model_folder`` segments cysts (its dataset.json names a ``cyst`` label)."""
    labels = json.loads((Path(model_folder) / "dataset.json").read_text(encoding="utf-8")).get("labels", {})
    return any(str(name).strip().casefold() == CYST_LABEL_NAME for name in labels)


class VersionedModel:
    """The lesion model of a :class:`ModelStore`'s current version, loaded once per version.

    Parameters
    ----------
    store : ModelStore
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (see :meth:`LesionModel.from_folder`).
    use_mirroring : bool
        nnU-Net's test-time mirroring.
    femur_segmenter : FemurSegmenter, optional
        The femur model the splitter runs before the lesion model, the same for every version; None for the
        classical, weight-free splitter (the application's default, ``FEMUR_SPLITTER_MODEL`` unset).
    """

    def __init__(self, store: ModelStore, *, device: str = "auto", use_mirroring: bool = True,
                 femur_segmenter: FemurSegmenter | None = None) -> None:
        self.store = store
        self.device = device
        self.use_mirroring = use_mirroring
        self.femur_segmenter = femur_segmenter
        self._lock = threading.Lock()
        self._loaded: tuple[ModelVersion, LesionModel] | None = None

    def get(self) -> tuple[ModelVersion, LesionModel]:
        """The current version and its loaded model (reloaded when ``current`` points elsewhere).

        Raises
        ------
        RuntimeError
            If no version has been published.
        """
        version = self.store.current()
        if version is None:
            raise RuntimeError(f"no lesion model version in {self.store.root}")
        with self._lock:
            if self._loaded is None or self._loaded[0] != version:
                start = time.perf_counter()
                model = LesionModel.from_folder(version.folder, device=self.device, use_mirroring=self.use_mirroring)
                logger.info("lesion model version %s (%s %s) loaded in %.1f s", version.name,
                            model.model_info.name, model.model_info.version, time.perf_counter() - start)
                self._loaded = (version, model)
            return self._loaded


@dataclass(frozen=True, eq=False)
class PipelineResult:
    """One study through the pipeline: the loaded series, the femurs and their lesions."""

    loaded: LoadedSeries
    split: FemurSplit
    segmentation: StudySegmentation
    version: ModelVersion
    seconds: dict[str, float]


def run_pipeline(study: Path, model: VersionedModel) -> PipelineResult:
    """Load the CT series of the DICOM folder ``study``, split the femurs and segment their lesions.

    Raises
    ------
    operators.errors.InputError
        For a folder without a usable CT series (one-line message).
    """
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    loaded = load_study(Path(study))
    seconds["load"] = time.perf_counter() - start
    start = time.perf_counter()
    split = split_femurs(loaded.volume, segmenter=model.femur_segmenter)
    seconds["split"] = time.perf_counter() - start
    start = time.perf_counter()
    version, lesion_model = model.get()
    segmentation = segment_lesions(split, lesion_model)
    seconds["lesions"] = time.perf_counter() - start
    return PipelineResult(loaded=loaded, split=split, segmentation=segmentation, version=version, seconds=seconds)
