"""Inference settings against speed and accuracy, on held-out synthetic studies.

For each study (generated in memory from a seed the model never saw in training: the training cohort
uses seeds 1000-1039) the femur splitter cuts the femur crops once; then for each setting (test-time
mirroring on or off, sliding-window tile step, resampling of the crop to the model's spacing) the lesion
model predicts every crop. Per setting the
table gives the mean inference time per femur, the mean lesion Dice over femurs with a lesion (against
the generated truth cut with the crop's box, so lesion voxels the splitter leaves out count as misses),
and the femurs without a lesion that were predicted empty.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any

import numpy as np

from benchmarks.memory import StageRecorder
from benchmarks.model import ModelSettings

logger = logging.getLogger(__name__)

#: Settings compared by default: (test-time mirroring, tile step as a fraction of the patch, input resampling).
DEFAULT_SETTINGS: tuple[tuple[bool, float, str], ...] = (
    (True, 0.5, "plans"), (True, 0.5, "torch"), (False, 0.5, "plans"), (False, 0.5, "torch"),
    (False, 0.75, "torch"), (False, 1.0, "torch"),
)
#: Held-out seeds by default (the shipped model's evaluation seeds; never used in training).
DEFAULT_SEEDS: tuple[int, ...] = (2000, 2001)
_LESION_TRUTH = 3  # lytic lesion in the synthetic studies' label map


def setting_name(use_mirroring: bool, tile_step_size: float, input_resampling: str) -> str:
    """E.g. ``"mirroring off, tile step 0.75, input resampling torch"``."""
    return (f"mirroring {'on' if use_mirroring else 'off'}, tile step {tile_step_size:g}, "
            f"input resampling {input_resampling}")


def _crops_and_truth(preset: str, seed: int) -> list[tuple[str, Any, np.ndarray]]:
    """(case, femur-only crop volume, lesion truth on the crop grid) for each femur the splitter finds."""
    from operators.femur_splitter import split_femurs
    from synthetic_ct import generate_phantom

    phantom = generate_phantom(seed, preset)
    labels = np.asarray(phantom.labels.array)
    split = split_femurs(phantom.ct)
    return [(f"{preset}{seed}_{side}", crop.femur_only, labels[crop.box] == _LESION_TRUTH)
            for side, crop in sorted(split.femurs.items())]


def run_settings_table(table: dict[str, Any], model: ModelSettings, recorder: StageRecorder) -> dict[str, Any]:
    """Time and score each inference setting on held-out studies.

    Parameters
    ----------
    table : dict
        ``preset`` (str), ``seeds`` (list of int) and ``settings`` (list of [use_mirroring, tile_step,
        input_resampling]).
    model : ModelSettings
        Model folder and device; mirroring, tile step and input resampling are taken from each setting.
    recorder : StageRecorder
        Receives one stage per setting (all femurs of all studies).

    Returns
    -------
    dict
        ``preset``, ``seeds``, ``femurs`` (case ids) and ``rows``: per setting its name, mirroring,
        tile step, input resampling, ``seconds_per_femur``, ``mean_lesion_dice`` (None when no femur has a lesion),
        ``femurs_with_lesion``, ``lesion_free_femurs`` and ``lesion_free_predicted_empty``.
    """
    from evaluation.overlap import dice
    from operators.lesion_segmentation import label_values

    cases = [case for seed in table["seeds"] for case in _crops_and_truth(table["preset"], int(seed))]
    rows = []
    for use_mirroring, step, input_resampling in table["settings"]:
        name = setting_name(bool(use_mirroring), float(step), input_resampling)
        lesion_model = dataclasses.replace(model, use_mirroring=bool(use_mirroring), tile_step_size=float(step),
                                           input_resampling=input_resampling).load()
        lesion_value, _ = label_values(lesion_model.model_info)
        # On CUDA a loaded model warms up in the background; its first femur would wait for that.
        lesion_model.wait_for_warm_up()
        seconds: list[float] = []
        dices: list[float] = []
        empty_ok = 0
        lesion_free = 0
        with recorder.stage(f"settings: {name}"):
            for _, crop, truth in cases:
                start = time.perf_counter()
                predicted = np.asarray(lesion_model.predict(crop).labels) == lesion_value
                seconds.append(time.perf_counter() - start)
                if truth.any():
                    dices.append(dice(predicted, truth))
                else:
                    lesion_free += 1
                    empty_ok += int(not predicted.any())
        valid = [d for d in dices if not math.isnan(d)]
        rows.append({
            "setting": name, "use_mirroring": bool(use_mirroring), "tile_step_size": float(step),
            "input_resampling": input_resampling,
            "seconds_per_femur": float(np.mean(seconds)) if seconds else None,
            "mean_lesion_dice": float(np.mean(valid)) if valid else None,
            "femurs_with_lesion": len(dices), "lesion_free_femurs": lesion_free,
            "lesion_free_predicted_empty": empty_ok,
        })
        logger.info("%s: %.2f s per femur, mean lesion Dice %s", name, rows[-1]["seconds_per_femur"] or 0.0,
                    rows[-1]["mean_lesion_dice"])
    return {"preset": table["preset"], "seeds": list(table["seeds"]), "femurs": [c[0] for c in cases], "rows": rows}
