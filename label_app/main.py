"""MONAI Label application: femurs and lytic lesions on CT, with the MONAI Deploy application's pipeline.

Start it with::

    monailabel start_server --app label_app --studies STUDIES -i 127.0.0.1 [--conf KEY VALUE ...]

``STUDIES`` is a DICOMweb root (e.g. Orthanc's ``http://127.0.0.1:8042/dicom-web``; one image per CT
series; final labels are stored back as DICOM-SEG) or a local folder whose sub-folders are DICOM studies
(one image per sub-folder; labels are files in ``labels/``). ``PYTHONPATH`` must include
``label_app/pythonpath`` (see its ``sitecustomize.py``).

``--conf`` keys (all optional):

``models``
    The model store folder (versions and the ``current`` pointer); default ``label_app/model-store``.
``model``
    The model the store starts from when it holds no version yet; default the repository's ``model/``.
``device``
    ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; default ``FEMUR_LESION_DEVICE``, else ``auto``.
``mirroring``
    ``true``/``false``: nnU-Net's test-time mirroring; default ``FEMUR_LESION_MIRRORING``, else on.
``epochs``, ``iterations_per_epoch``
    The fine-tuning schedule of a training run (default 10 x 25).
``femur_model``
    A learned femur model for the splitter (an nnU-Net model folder or a ``femur_model.json``, see
    :func:`operators.femur_nnunet.femur_segmenter_from_settings`); default ``FEMUR_SPLITTER_MODEL``, else the
    classical, weight-free splitter, as in the application. Inference, scoring and the training crops use it.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

from lesion_training.finetune import FineTuneSchedule
from lib.activelearning import MostUncertain, UncertaintyScoring
from lib.infer import FemurLesionInfer
from lib.local_datastore import LocalDicomDatastore
from lib.model_store import ModelStore
from lib.pipeline import VersionedModel

logger = logging.getLogger(__name__)

#: Name of the model in /info, /infer/<model> and /train/<model>.
MODEL_NAME = "femur_lesion"
_TRUE = ("1", "true", "yes", "on")


class FemurLesionLabelApp(MONAILabelApp):
    """Inference, training and active learning for femur lytic lesions (see the module docstring)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        here = Path(app_dir).resolve()
        self.store = ModelStore(conf.get("models") or here / "model-store")
        if self.store.current() is None:
            base = Path(conf.get("model") or here.parent / "model")
            try:
                self.store.seed(base)
            except Exception as error:  # noqa: BLE001 - the server still starts; /info then lists no model
                logger.error("no lesion model to start from: %s", error)
        device = (conf.get("device") or os.environ.get("FEMUR_LESION_DEVICE") or "auto").strip().lower()
        mirroring = (conf.get("mirroring") or os.environ.get("FEMUR_LESION_MIRRORING") or "1").strip().lower()
        self.femur_segmenter = _femur_segmenter(conf.get("femur_model") or os.environ.get("FEMUR_SPLITTER_MODEL"),
                                                device)
        self.model = VersionedModel(self.store, device=device, use_mirroring=mirroring in _TRUE,
                                    femur_segmenter=self.femur_segmenter)
        self.schedule = FineTuneSchedule(num_epochs=int(conf.get("epochs", 10)),
                                         iterations_per_epoch=int(conf.get("iterations_per_epoch", 25)))
        self.device = device
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="Femur lytic lesions",
                         description="Femurs and lytic lesions on CT (nnU-Net, as the MONAI Deploy application)",
                         version="0.1.0")

    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            self.studies = self.studies.rstrip("/").strip()
            return self.init_remote_datastore()
        return LocalDicomDatastore(self.studies, auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
                                   read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY)

    def init_remote_datastore(self) -> Datastore:
        # MONAI Label's own DICOMweb datastore downloads dcmqi at start-up and writes SEGs with it; this
        # one writes and reads SEGs with highdicom and needs no network beyond the PACS.
        from lib.dicomweb_datastore import HighdicomDICOMWebDatastore

        return HighdicomDICOMWebDatastore.from_settings(self.studies)

    def init_infers(self) -> dict[str, InferTask]:
        return {MODEL_NAME: FemurLesionInfer(self.model)}

    def init_trainers(self) -> dict[str, TrainTask]:
        return {MODEL_NAME: _trainer(self.store, self.schedule, self.device, self.femur_segmenter)}

    def init_strategies(self) -> dict[str, Strategy]:
        return {"random": Random(), "first": First(), "uncertainty": MostUncertain(self.model)}

    def init_scoring_methods(self) -> dict[str, ScoringMethod]:
        return {"uncertainty": UncertaintyScoring(self.model)}

    def server_mode(self, mode: bool) -> None:
        super().server_mode(mode)
        served = sys.modules.get("monailabel.app")  # the FastAPI application uvicorn runs, when it is MONAI Label's
        if mode and served is not None:
            from lib.ohif import install

            install(served.app)  # the bundled OHIF with the annotation script (port, save button)

    def info(self) -> dict[str, Any]:
        info = super().info()
        current, previous = self.store.current(), self.store.previous()
        info["model_versions"] = {"current": current.name if current else None,
                                  "previous": previous.name if previous else None,
                                  "all": [v.name for v in self.store.versions()]}
        return info


def _trainer(store: ModelStore, schedule: FineTuneSchedule, device: str, femur_segmenter: Any) -> TrainTask:
    from lib.trainer import FemurLesionTrainer

    return FemurLesionTrainer(store, schedule=schedule, device=device, femur_segmenter=femur_segmenter)


def _femur_segmenter(setting: str | None, device: str) -> Any:
    """The femur model of the ``femur_model`` setting, or None (the classical splitter) when it is empty.

    A setting that names no usable model stops the server at start-up (a one-line ModelFolderError), rather
    than serving crops from another splitter than the one asked for.
    """
    from operators.femur_nnunet import femur_segmenter_from_setting

    return femur_segmenter_from_setting(setting, device=device)
