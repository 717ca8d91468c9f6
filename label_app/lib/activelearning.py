"""Active learning: which unlabeled study the annotator should take next.

:class:`UncertaintyScoring` (a MONAI Label scoring method, which the server runs as a background task:
at start-up, after each training run and on ``POST /scoring/uncertainty``) runs the current model on
every unlabeled study and scores it by the model's own uncertainty inside the femurs: the mean over
femur voxels of the normalised softmax entropy ``-sum_c p_c log p_c / log C`` (0 = certain, 1 = uniform).
Scores are kept per model version in ``uncertainty.json`` in the model store, written atomically, so
that the server process reads what the background process wrote. :class:`MostUncertain` (strategy
``uncertainty``) returns the unlabeled study with the highest score of the current version.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy

from operators.atomic_files import write_text_atomic
from operators.errors import FemurSegError
from operators.femur_splitter import split_femurs
from operators.series_volume import load_study

from .pipeline import VersionedModel

logger = logging.getLogger(__name__)

__all__ = ["MostUncertain", "UncertaintyScoring", "femur_entropy", "read_scores"]

SCORES_FILE = "uncertainty.json"
#: Key of the score in the datastore's image info.
INFO_KEY = "femur_uncertainty"


def femur_entropy(probabilities: np.ndarray, mask: np.ndarray) -> tuple[float, int]:
    """Sum of the normalised softmax entropy over the voxels of ``mask``, and their count.

    Parameters
    ----------
    probabilities : np.ndarray
        float (classes, z, y, x), summing to 1 over classes.
    mask : np.ndarray
        bool (z, y, x).
    """
    p = np.clip(np.asarray(probabilities, dtype=np.float64)[:, mask], 1e-12, 1.0)
    classes = probabilities.shape[0]
    entropy = -(p * np.log(p)).sum(axis=0) / np.log(classes)
    return float(entropy.sum()), int(entropy.size)


def read_scores(store_root: Path) -> dict[str, Any]:
    """The scores file: ``{"versions": {version: {image id: {"entropy": float, ...}}}}`` (empty if none)."""
    path = Path(store_root) / SCORES_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {"versions": {}}


class UncertaintyScoring(ScoringMethod):
    """Scores each unlabeled study by the current model's mean softmax entropy inside the femurs."""

    def __init__(self, model: VersionedModel) -> None:
        super().__init__("Model uncertainty inside the femurs (mean normalised softmax entropy)")
        self.model = model

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        version, lesion_model = self.model.get()
        root = self.model.store.root
        scores = read_scores(root)
        mine = scores.setdefault("versions", {}).setdefault(version.name, {})
        images = sorted(datastore.get_unlabeled_images())
        done = 0
        for image_id in images:
            if image_id in mine and not request.get("rescore"):
                continue
            start = time.perf_counter()
            try:
                loaded = load_study(Path(datastore.get_image_uri(image_id)))
            except FemurSegError as error:
                logger.warning("image %s not scored: %s", image_id, error)
                continue
            split = split_femurs(loaded.volume, segmenter=self.model.femur_segmenter)
            total, count = 0.0, 0
            for crop in split.femurs.values():
                prediction = lesion_model.predict(crop.femur_only, return_probabilities=True)
                part, n = femur_entropy(prediction.probabilities, crop.mask)
                total, count = total + part, count + n
            if count == 0:
                logger.info("image %s: no femur in view, not scored", image_id)
                continue
            mine[image_id] = {"entropy": total / count, "femur_voxels": count,
                              "seconds": round(time.perf_counter() - start, 2)}
            done += 1
            # Written after each study, so that the strategy can use the scores before the run ends.
            write_text_atomic(root / SCORES_FILE, json.dumps(scores, indent=2) + "\n")
            try:
                datastore.update_image_info(image_id, {INFO_KEY: mine[image_id]["entropy"],
                                                       f"{INFO_KEY}_version": version.name})
            except Exception:  # noqa: BLE001 - the scores file is the record; the info is a convenience
                logger.debug("image info of %s not updated", image_id, exc_info=True)
            logger.info("image %s: femur uncertainty %.4f over %d voxels", image_id, mine[image_id]["entropy"], count)
        return {"model_version": version.name, "scored": done, "unlabeled": len(images)}


class MostUncertain(Strategy):
    """The unlabeled study the current model is least sure about (highest :class:`UncertaintyScoring` score)."""

    def __init__(self, model: VersionedModel) -> None:
        super().__init__("Most uncertain unlabeled study (softmax entropy inside the femurs)")
        self.model = model

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any] | None:
        current = self.model.store.current()
        if current is None:
            return None
        scores = read_scores(self.model.store.root).get("versions", {}).get(current.name, {})
        unlabeled = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        ranked = sorted((scores[i]["entropy"], i) for i in unlabeled if i in scores)
        if not ranked:
            logger.info("no uncertainty scores for model version %s yet (%d unlabeled studies)", current.name,
                        len(unlabeled))
            return None
        entropy, image_id = ranked[-1]
        logger.info("uncertainty: %s (%.4f), %d of %d unlabeled studies scored", image_id, entropy, len(ranked),
                    len(unlabeled))
        return {"id": image_id, "uncertainty": entropy, "model_version": current.name,
                "scored": len(ranked), "unlabeled": len(unlabeled)}
