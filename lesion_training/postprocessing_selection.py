"""Choose a lesion model's smallest reported lesion volume on held-out femurs, and record it in model.json.

nnU-Net chooses its own post-processing (keep the largest component, or not) on cross-validation; a
lesion model needs another rule, since a femur may hold several lesions. Here each candidate
threshold (ml) is applied to the model's predictions on held-out femurs (never the training cases,
never the final test studies) with :func:`operators.lesion_postprocessing.remove_small_components`, and
scored per femur:

* a femur with reference lesions: Dice of the lesion label;
* a lesion-free femur: 1 when the prediction is empty too, else 0.

The second line is what the paper's Dice leaves out (a femur empty in both is NaN there), and it is where
small false positives hurt a radiologist most: a "lesion" reported in a healthy femur. The threshold
with the best mean wins; ties go to the smaller threshold. Candidates stop at 0.5 ml: a lesion of 10 mm
(0.52 ml), the smallest the product must find, is never removed when it is segmented whole.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from operators.lesion_postprocessing import MIN_LESION_VOLUME_KEY, remove_small_components

logger = logging.getLogger(__name__)

#: Candidate thresholds, ml.
DEFAULT_CANDIDATES_ML: tuple[float, ...] = (0.0, 0.05, 0.1, 0.25, 0.5)


@dataclass(frozen=True)
class FemurPrediction:
    """One held-out femur: the model's labels, the reference lesion mask and the voxel size.

    Attributes
    ----------
    case:
        Case id, for the log.
    labels:
        The model's labels on the femur crop, axes (z, y, x), lesion = ``lesion_value``.
    reference:
        Bool reference lesion mask on the same grid.
    spacing_mm:
        Voxel size along (z, y, x), mm.
    """

    case: str
    labels: np.ndarray
    reference: np.ndarray
    spacing_mm: tuple[float, float, float]


@dataclass(frozen=True)
class CandidateScore:
    """How one threshold does on the held-out femurs.

    Attributes
    ----------
    min_lesion_volume_ml:
        The threshold.
    score:
        Mean per-femur score (module docstring): the selection criterion.
    mean_lesion_dice:
        Mean Dice over femurs with reference lesions (the paper's rule: lesion-free femurs left out).
    lesion_free_predicted_empty:
        Lesion-free femurs whose prediction is empty, and how many lesion-free femurs there are.
    """

    min_lesion_volume_ml: float
    score: float
    mean_lesion_dice: float
    lesion_free_predicted_empty: tuple[int, int]


def score_candidates(
    femurs: Sequence[FemurPrediction],
    candidates_ml: Sequence[float] = DEFAULT_CANDIDATES_ML,
    *,
    lesion_value: int = 1,
) -> list[CandidateScore]:
    """Score each candidate threshold on the held-out femurs (see the module docstring)."""
    if not femurs:
        raise ValueError("no held-out femur to choose a threshold on")
    scores = []
    for threshold in candidates_ml:
        per_femur, dices, empty, free = [], [], 0, 0
        for femur in femurs:
            if femur.labels.shape != femur.reference.shape:
                raise ValueError(f"{femur.case}: prediction {femur.labels.shape} and reference "
                                 f"{femur.reference.shape} differ in shape")
            kept = remove_small_components(femur.labels, lesion_value, threshold, femur.spacing_mm) == lesion_value
            reference = femur.reference.astype(bool, copy=False)
            if reference.any():
                dice = 2.0 * float((kept & reference).sum()) / float(kept.sum() + reference.sum())
                dices.append(dice)
                per_femur.append(dice)
            else:
                free += 1
                empty += int(not kept.any())
                per_femur.append(float(not kept.any()))
        scores.append(CandidateScore(
            min_lesion_volume_ml=float(threshold), score=float(np.mean(per_femur)),
            mean_lesion_dice=float(np.mean(dices)) if dices else math.nan,
            lesion_free_predicted_empty=(empty, free),
        ))
    return scores


def choose(scores: Sequence[CandidateScore]) -> CandidateScore:
    """The best-scoring candidate; ties (within 1e-9) go to the smaller threshold."""
    best = max(score.score for score in scores)
    return min((s for s in scores if s.score >= best - 1e-9), key=lambda s: s.min_lesion_volume_ml)


def read_femur_predictions(predictions: Path, references: Path, *, reference_lesion_value: int = 1) -> list[FemurPrediction]:
    """Pair ``predictions/<case>.nii.gz`` with ``references/<case>.nii.gz`` (label files, same grid)."""
    from evaluation.label_io import read_label_volume

    femurs = []
    for pred_file in sorted(predictions.glob("*.nii.gz")):
        ref_file = references / pred_file.name
        if not ref_file.is_file():
            raise FileNotFoundError(f"no reference for {pred_file.name} in {references}")
        pred, ref = read_label_volume(pred_file), read_label_volume(ref_file)
        femurs.append(FemurPrediction(
            case=pred_file.name.removesuffix(".nii.gz"), labels=np.asarray(pred.array),
            reference=np.asarray(ref.array) == reference_lesion_value,
            spacing_mm=tuple(float(s) for s in pred.spacing),  # type: ignore[arg-type]
        ))
    return femurs


def record_in_model_json(model_folder: Path, chosen: CandidateScore, scores: Sequence[CandidateScore], *,
                         chosen_on: str) -> Path:
    """Write the threshold (and the table it was chosen from) into the model folder's model.json, atomically."""
    from operators.atomic_files import atomic_output_path

    path = Path(model_folder) / "model.json"
    info: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    info["postprocessing"] = {
        MIN_LESION_VOLUME_KEY: chosen.min_lesion_volume_ml,
        "chosen_on": chosen_on,
        "criterion": "mean per femur of lesion Dice (femurs with lesions) and 1/0 for an empty/non-empty "
                     "prediction (lesion-free femurs)",
        "candidates": [asdict(s) for s in scores],
    }
    with atomic_output_path(path) as tmp:
        Path(tmp).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    logger.info("model.json: lesions under %g ml are dropped (score %.3f, chosen on %s)",
                chosen.min_lesion_volume_ml, chosen.score, chosen_on)
    return path
