"""The MONAI Label training task: fine-tune the lesion model on the final labels and publish a new version.

A run (``POST /train/femur_lesion``; MONAI Label runs it in a background process):

1. takes every study with a final label from the datastore (``datastore.datalist()``: the DICOM series
   folder and the label volume on its grid, :mod:`label_app.lib.labels`);
2. builds an nnU-Net dataset of femur-only crops with the training pipeline's
   :class:`lesion_training.dataset_builder.DatasetBuilder` (the deploy application's femur splitter;
   lesion and cyst masks of the label volume; cysts as their own class when the model has one);
3. fine-tunes the current version with :func:`lesion_training.finetune.fine_tune` (nnU-Net, from the
   current weights, fold ``all``);
4. publishes the exported model as the next version (:meth:`ModelStore.publish`): the inference task
   uses it from its next request; the version before it stays for rollback.

Request keys (all optional): ``epochs``, ``iterations_per_epoch``, ``val_iterations_per_epoch``,
``device`` (``auto``, ``cpu``, ``cuda``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.train import TrainTask

from operators.atomic_files import write_text_atomic
from operators.femur_splitter import FemurSegmenter
from operators.series_volume import load_study
from lesion_training.dataset_builder import BuildOptions, DatasetBuilder, onto_grid, read_volume_file
from lesion_training.finetune import FineTuneSchedule, fine_tune

from .labels import masks_of
from .model_store import ModelStore
from .pipeline import model_has_cyst

logger = logging.getLogger(__name__)

__all__ = ["FemurLesionTrainer"]

_DATASET = "Dataset950_FemurLesionFinalLabels"
_LAST_RUN = "last_training.json"


class FemurLesionTrainer(TrainTask):
    """Fine-tunes the current lesion model on the datastore's final labels and publishes a new version.

    Parameters
    ----------
    store : ModelStore
    schedule : FineTuneSchedule
        Default schedule (a request may shorten or lengthen it).
    device : str
        Default training device.
    femur_segmenter : FemurSegmenter, optional
        The femur model the splitter cuts the training crops with (None: the classical splitter); the
        inference side's (:class:`~lib.pipeline.VersionedModel`), so that training and inference crops agree.
    """

    def __init__(self, store: ModelStore, *, schedule: FineTuneSchedule = FineTuneSchedule(),
                 device: str = "auto", femur_segmenter: FemurSegmenter | None = None) -> None:
        super().__init__("Fine-tune the nnU-Net lesion model on the final labels (new model version)")
        self.store = store
        self.schedule = schedule
        self.device = device
        self.femur_segmenter = femur_segmenter

    def config(self) -> dict[str, Any]:
        return {"epochs": self.schedule.num_epochs, "iterations_per_epoch": self.schedule.iterations_per_epoch,
                "val_iterations_per_epoch": self.schedule.val_iterations_per_epoch, "device": self.device}

    def stats(self) -> dict[str, Any]:
        try:
            return json.loads((self.store.root / _LAST_RUN).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return {}

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        started = time.monotonic()
        base = self.store.current()
        if base is None:
            raise RuntimeError(f"no lesion model version to fine-tune in {self.store.root}")
        schedule = FineTuneSchedule(
            num_epochs=int(request.get("epochs", self.schedule.num_epochs)),
            iterations_per_epoch=int(request.get("iterations_per_epoch", self.schedule.iterations_per_epoch)),
            val_iterations_per_epoch=int(request.get("val_iterations_per_epoch",
                                                     self.schedule.val_iterations_per_epoch)),
        )
        device = str(request.get("device") or self.device)
        if device.startswith("cuda:"):  # nnU-Net's -device takes cuda, the GPU comes from CUDA_VISIBLE_DEVICES
            device = "cuda"
        items = datastore.datalist()
        if not items:
            raise RuntimeError("no study has a final label: save labels (tag 'final') before training")
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        work = self.store.root / "training" / stamp
        with_cyst = model_has_cyst(base.folder)
        # The femur crops are cut as inference cuts them: by the same femur segmenter.
        builder = DatasetBuilder(work / "raw" / _DATASET, BuildOptions(cysts="separate" if with_cyst else "background",
                                                                     femur_segmenter=self.femur_segmenter))
        try:
            for number, item in enumerate(sorted(items, key=lambda i: str(i["image"])), start=1):
                loaded = load_study(Path(item["image"]))
                array, change = onto_grid(read_volume_file(item["label"]), loaded.volume)
                masks = masks_of(array)
                builder.add_study(f"study{number:03d}", loaded.volume, masks.lesion, masks.cyst,
                                  notes=[f"reoriented: {change}"] if change else [], source=f"label {number}")
            dataset = builder.finish(test_fraction=0.0, description="final labels of the annotation server")
        except Exception:
            builder.abandon()
            raise
        next_name = f"{len(self.store.versions()) + 1:04d}"
        base_info = _read_json(base.folder / "model.json")
        exported = fine_tune(
            dataset.folder, base_model=base.folder, workspace=work / "nnunet", output=work / "model",
            schedule=schedule, device=device, model_version=f"{base_info.get('version', 'unversioned')}+label.{next_name}",
            command=f"annotation server fine-tuning of version {base.name} on {len(dataset.training_cases)} femur(s)",
        )
        published = self.store.publish(exported.folder)
        shutil.rmtree(work / "nnunet", ignore_errors=True)  # preprocessed copies and full checkpoints
        summary = {
            "version": published.name,
            "previous": base.name,
            "model_version": exported.model_json.get("version"),
            "studies": len(items),
            "femur_cases": len(dataset.training_cases),
            "epochs": schedule.num_epochs,
            "iterations_per_epoch": schedule.iterations_per_epoch,
            "device": device,
            "minutes": round((time.monotonic() - started) / 60, 2),
            "finished": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        }
        write_text_atomic(self.store.root / _LAST_RUN, json.dumps(summary, indent=2) + "\n")
        logger.info("training done: version %s published (previous %s) in %.1f min", published.name, base.name,
                    summary["minutes"])
        return summary


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
