"""Reproduce the shipped demonstration model in ``model/`` from scratch: ``python -m lesion_training.shipped_model``.

Steps (each logged with its duration; a step whose output exists is reused with ``--resume``):

1. **cohort**: synthetic patients (``--training-seeds``, by default 1000-1039; the shipped model 0.2.0 used
   1000-1119; used nowhere else) generated in memory and built into ``Dataset601_SyntheticFemurLesion`` by
   :func:`lesion_training.synthetic_cohort.build_synthetic_dataset` (femur crops from the application's
   splitter, lesions as 1, cysts as 2);
2. **training**: nnU-Net ``3d_fullres`` with the ``small`` configuration on a CPU (optionally other epochs,
   ``--epochs``) or, as for the shipped model, ``small_gpu`` on a GPU (``--config small_gpu --device cuda``,
   ``--time-budget-min``), nnU-Net fold ``all``: one model trained on every training case, no cross-validation.
   nnU-Net's planning and preprocessing run as in :func:`lesion_training.train.train`; the fold is trained by
   nnU-Net's own trainer (:class:`lesion_training.trainers.nnUNetTrainerFemur`) in a fresh interpreter, but
   without nnU-Net's final "validation", which for fold ``all`` only predicts the training cases again
   (tens of CPU minutes for a number that says nothing about generalisation);
3. **export**: the slim model folder (:func:`lesion_training.export.export_model`: weights only, model.json);
   with ``--continue-epochs`` this first-stage model goes into the workspace instead, and
3b. **continue**: training goes on for ``--continue-epochs`` more epochs from the first stage's weights, by
   :func:`lesion_training.finetune.fine_tune` on the same cohort (every weight carried over, the output layer
   included, a fresh learning-rate schedule; the Dice without smoothing, since the smoothed one collapsed
   there), and that model is exported as the shipped one;
4. **postprocessing**: the smallest lesion volume the model reports, chosen on other held-out standard
   studies (seeds 3000-3009) by :mod:`lesion_training.postprocessing_selection` and recorded in model.json;
5. **evaluation**: held-out ``standard`` synthetic studies (seeds 2000-2009) go through the
   application's path — :func:`operators.femur_splitter.split_femurs`, then
   :class:`operators.lesion_model.LesionModel` on each femur crop — and the per-femur predictions are
   scored against the truth (lesion 1, cyst 2, inside the crop's box) with ``python -m evaluation``;
6. **model card**: ``model/README.md`` from model.json and the evaluation.

The workspace (nnU-Net's folders, the evaluation's label files) is a scratch folder, by default
``build/shipped_model``; only the model folder and its card are part of the product.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from operators.errors import FemurSegError, TrainingRunError
from lesion_training.configurations import (
    CONFIGURATIONS,
    TrainingConfiguration,
    get_configuration,
    schedule_entry,
)

logger = logging.getLogger(__name__)

DATASET_NAME = "Dataset601_SyntheticFemurLesion"
TRAINING_SEEDS = "1000-1039"
EVALUATION_SEEDS = "2000-2009"
#: Held-out studies on which the post-processing threshold is chosen (neither training nor evaluation).
VALIDATION_SEEDS = "3000-3009"
MODEL_NAME = "femur-lesion-synthetic-demo"
MODEL_VERSION = "0.2.0"
DEFAULT_WORKSPACE = Path("build/shipped_model")
DEFAULT_MODEL_FOLDER = Path("model/femur_lesion_nnunet")
EVALUATION_FILE = "evaluation.json"
#: Lesions at least this large (equivalent-sphere diameter, mm) must be found (the model card's target).
DETECTION_SIZE_MM = 10.0
#: Below this fraction of cyst voxels labelled cyst, the model card says that the model does not find cysts.
CYSTS_FOUND_FRACTION = 0.5
TARGETS = {
    "mean_lesion_dice": 0.75,
    "sensitivity_ge_10mm": 0.9,
    "lesion_free_predicted_empty": 0.9,
}


@dataclass(frozen=True)
class Settings:
    """Everything that defines a run of the recipe (see :func:`build_parser`)."""

    workspace: Path
    model_folder: Path
    card: Path
    training_seeds: str
    evaluation_seeds: str
    validation_seeds: str
    configuration: TrainingConfiguration
    workers: int
    mirroring: bool
    resume: bool
    steps: tuple[str, ...]
    #: Epochs of the second stage (0: one stage); see the module's step 3b.
    continue_epochs: int = 0
    #: Where training runs: ``"cpu"`` or ``"cuda"`` (resolved from ``--device``).
    device: str = "cpu"


STEPS = ("cohort", "prepare-evaluation", "train", "export", "continue", "postprocessing", "evaluate", "card")
#: The record of training experiments the model card points to (relative to the repository root).
EXPERIMENTS_DOC = "docs/training/experiments.md"
#: Where the first-stage model is exported when training continues (``--continue-epochs``), in the workspace.
FIRST_STAGE_FOLDER = "first_stage_model"


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m lesion_training.shipped_model``."""
    parser = argparse.ArgumentParser(prog="python -m lesion_training.shipped_model", description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=DEFAULT_WORKSPACE,
                        help="scratch folder (default: %(default)s)")
    parser.add_argument("--model-folder", type=Path, default=DEFAULT_MODEL_FOLDER,
                        help="exported model folder (default: %(default)s)")
    parser.add_argument("--card", type=Path, default=Path("model/README.md"), help="model card (default: %(default)s)")
    parser.add_argument("--training-seeds", default=TRAINING_SEEDS, help="cohort seeds (default: %(default)s)")
    parser.add_argument("--evaluation-seeds", default=EVALUATION_SEEDS,
                        help="held-out standard studies (default: %(default)s)")
    parser.add_argument("--validation-seeds", default=VALIDATION_SEEDS,
                        help="held-out standard studies the post-processing is chosen on (default: %(default)s)")
    parser.add_argument("--config", default="small", choices=sorted(CONFIGURATIONS),
                        help="training configuration (default: small)")
    parser.add_argument("--epochs", type=int, help="epochs instead of the configuration's")
    parser.add_argument("--time-budget-min", type=float,
                        help="wall-clock minutes the training loop may take instead of the configuration's budget "
                             "(the epochs are cut to fit, the learning rate decays over those that fit)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where training runs (default: auto, CUDA when available); evaluation runs on the CPU")
    parser.add_argument("--continue-epochs", type=int, default=0,
                        help="then train this many more epochs from the first stage's weights, with a fresh "
                             "learning-rate schedule and the Dice without smoothing (default: 0, one stage)")
    parser.add_argument("--workers", type=int, default=2, help="cohort worker processes (default: 2)")
    parser.add_argument("--no-mirroring", dest="mirroring", action="store_false",
                        help="evaluate without test-time mirroring (8x faster on a CPU)")
    parser.add_argument("--resume", action="store_true", help="reuse the outputs of steps already done")
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS), help="steps to run (default: all)")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the recipe; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    configuration = get_configuration(args.config)
    try:  # the configuration checks its own values (one-line error for --epochs 0, --time-budget-min 0)
        if args.epochs is not None:
            configuration = configuration.replace(
                num_epochs=args.epochs, description=f"{configuration.description}; {args.epochs} epochs instead")
        if args.time_budget_min is not None:
            configuration = configuration.replace(
                time_budget_minutes=args.time_budget_min,
                description=f"{configuration.description}; {args.time_budget_min:g}-minute budget instead")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.continue_epochs < 0:
        print(f"error: --continue-epochs must be 0 or more, got {args.continue_epochs}", file=sys.stderr)
        return 2
    from lesion_training.train import resolve_training_device

    try:
        device = resolve_training_device(args.device)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    settings = Settings(
        workspace=args.workspace.expanduser().resolve(), model_folder=args.model_folder, card=args.card,
        training_seeds=args.training_seeds, evaluation_seeds=args.evaluation_seeds,
        validation_seeds=args.validation_seeds, configuration=configuration,
        workers=args.workers, mirroring=args.mirroring, resume=args.resume, steps=tuple(args.steps),
        continue_epochs=args.continue_epochs, device=device,
    )
    try:
        run(settings, command=_recorded_command(args))
    except FemurSegError as error:
        logger.debug("failed", exc_info=True)
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


def run(settings: Settings, *, command: str) -> None:
    """Run the selected steps of the recipe."""
    from lesion_training.nnunet_workspace import NnUNetWorkspace
    from lesion_training.synthetic_cohort import build_synthetic_dataset, parse_seeds

    workspace = NnUNetWorkspace(settings.workspace)
    timings_file = settings.workspace / "timings.json"
    dataset_folder = workspace.raw / DATASET_NAME

    def read_timings() -> dict[str, float]:
        return json.loads(timings_file.read_text(encoding="utf-8")) if timings_file.is_file() else {}

    def timed(step: str, seconds: float) -> None:
        # Re-read: steps may run in separate invocations side by side (e.g. prepare-evaluation).
        timings = read_timings()
        timings[step] = round(seconds, 1)
        _atomic_write(timings_file, json.dumps(timings, indent=2) + "\n")
        logger.info("step %s: %.1f min", step, seconds / 60)

    if "cohort" in settings.steps and not (settings.resume and dataset_folder.is_dir()):
        t0 = time.monotonic()
        build_synthetic_dataset(parse_seeds(settings.training_seeds), dataset_folder, cysts="separate",
                                test_fraction=0.0, workers=settings.workers)
        timed("cohort", time.monotonic() - t0)
    if "prepare-evaluation" in settings.steps:
        t0 = time.monotonic()
        prepare_evaluation_studies(parse_seeds(settings.evaluation_seeds), settings.workspace / "evaluation")
        timed("prepare-evaluation", time.monotonic() - t0)
    if "train" in settings.steps:
        t0 = time.monotonic()
        train_fold_all(workspace, settings.configuration, resume=settings.resume, device=settings.device)
        timed("train", time.monotonic() - t0)
    first_stage = settings.workspace / FIRST_STAGE_FOLDER if settings.continue_epochs else settings.model_folder
    if "export" in settings.steps:
        from lesion_training.export import export_model

        exported = export_model(
            workspace, DATASET_NAME, settings.configuration, folds=("all",), output=first_stage,
            model_name=MODEL_NAME, model_version=MODEL_VERSION, training_command=command,
            training_device=settings.device,
        )
        logger.info("model folder %s: %.1f MB", exported.folder, exported.size_bytes / 1e6)
    if "continue" in settings.steps and settings.continue_epochs:
        from lesion_training.configurations import FineTuneSchedule
        from lesion_training.finetune import fine_tune

        t0 = time.monotonic()
        exported = fine_tune(
            dataset_folder, base_model=first_stage, workspace=workspace, output=settings.model_folder,
            # The smoothed Dice collapsed to predicting no lesion in a second stage (docs/training/experiments.md).
            schedule=FineTuneSchedule(num_epochs=settings.continue_epochs, dice_smoothing=False),
            device=settings.device,
            model_name=MODEL_NAME,
            model_version=MODEL_VERSION, num_processes=max(1, min(8, os.cpu_count() or 1)), command=command,
        )
        timed("continue", time.monotonic() - t0)
        logger.info("model folder %s: %.1f MB", exported.folder, exported.size_bytes / 1e6)
    if "postprocessing" in settings.steps:
        t0 = time.monotonic()
        choose_postprocessing(settings.model_folder, parse_seeds(settings.validation_seeds),
                              settings.workspace / "validation", mirroring=settings.mirroring,
                              seeds_text=settings.validation_seeds)
        timed("postprocessing", time.monotonic() - t0)
    if "evaluate" in settings.steps:
        t0 = time.monotonic()
        evaluate_model(settings.model_folder, parse_seeds(settings.evaluation_seeds),
                       settings.workspace / "evaluation", mirroring=settings.mirroring)
        timed("evaluate", time.monotonic() - t0)
    if "card" in settings.steps:
        write_model_card(settings, read_timings(), command)


# ----------------------------------------------------------------------------------------- training


def train_fold_all(workspace: Any, configuration: TrainingConfiguration, *, resume: bool = False,
                   device: str = "cpu") -> Path:
    """Plan, preprocess and train nnU-Net fold ``all`` on the cohort; returns the fold's folder.

    Planning and preprocessing are :func:`lesion_training.train.plan_and_preprocess`; the fold trains in a
    subprocess with nnU-Net's trainer (its progress lines on stdout), without nnU-Net's end-of-training
    validation, which for fold ``all`` only predicts the training cases again
    (:func:`lesion_training.train.train_fold` with ``final_validation=False``).
    """
    from lesion_training.export import results_folder
    from lesion_training.train import plan_and_preprocess, resolve_dataset, train_fold

    processes = max(1, min(8, os.cpu_count() or 1))
    name = resolve_dataset(workspace, DATASET_NAME)
    fold_folder = results_folder(workspace, name, configuration) / "fold_all"
    if resume and (fold_folder / "checkpoint_final.pth").is_file():
        logger.info("fold all already trained: %s", fold_folder)
        return fold_folder
    plan_and_preprocess(workspace, name, configuration, num_processes=processes)
    train_fold(workspace, name, configuration, "all", device=device, num_processes=processes, final_validation=False,
               resume=resume and (fold_folder / "checkpoint_latest.pth").is_file())
    if not (fold_folder / "checkpoint_final.pth").is_file():
        raise TrainingRunError(f"nnU-Net training of fold all left no final checkpoint; log in {fold_folder}")
    return fold_folder


# ----------------------------------------------------------------------------------------- evaluation


def prepare_evaluation_studies(seeds: Sequence[int], out: Path) -> list[dict[str, Any]]:
    """Generate the held-out studies, split them, and keep each femur crop and its truth on disk.

    For each seed: ``generate_phantom(seed, "standard")`` (default draws) and ``split_femurs`` on its
    CT; per femur, ``out/crops/<case>_0000.nii.gz`` (the femur-only crop, HU) and
    ``out/references/<case>.nii.gz`` (truth on the crop grid: lesion 1, cyst 2, cut with the crop's
    box but *not* restricted to the splitter's femur mask, so lesion voxels the splitter leaves out
    count as misses), with case ids ``std<seed>_<side>``. A study already prepared (its
    ``out/studies/<seed>.json``) is reused, so this can run ahead of, or beside, the training.

    Returns
    -------
    list of dict
        Per study: seed, shape, spacing, femurs found, femurs the splitter missed, case ids.
    """
    import highdicom as hd

    from evaluation.label_io import write_label_volume
    from operators.femur_splitter import split_femurs
    from synthetic_ct import generate_phantom

    crops_dir, ref_dir, studies_dir = out / "crops", out / "references", out / "studies"
    for folder in (crops_dir, ref_dir, studies_dir):
        folder.mkdir(parents=True, exist_ok=True)
    studies: list[dict[str, Any]] = []
    started = time.monotonic()
    for k, seed in enumerate(seeds, start=1):
        done = studies_dir / f"{seed}.json"
        if done.is_file():
            studies.append(json.loads(done.read_text(encoding="utf-8")))
            continue
        phantom = generate_phantom(seed, "standard")
        labels = np.asarray(phantom.labels.array)
        split = split_femurs(phantom.ct)
        cases = []
        for side, crop in split.femurs.items():
            case = f"std{seed}_{side}"
            truth = labels[crop.box]
            reference = np.zeros(truth.shape, dtype=np.uint8)
            reference[truth == 4] = 2
            reference[truth == 3] = 1
            _write_crop(crops_dir / f"{case}_0000.nii.gz", crop.femur_only)
            write_label_volume(ref_dir / f"{case}.nii.gz",
                               hd.Volume(reference, crop.femur_only.affine, coordinate_system="PATIENT"))
            cases.append(case)
        study = {"seed": seed, "shape_zyx": list(phantom.ct.spatial_shape),
                 "spacing_mm_zyx": [round(float(s), 3) for s in phantom.ct.spacing],
                 "femurs": sorted(split.femurs), "cases": cases,
                 "femurs_missed_by_splitter": [s for s in ("left", "right") if s not in split.femurs
                                               and np.any(labels == (1 if s == "left" else 2))]}
        _atomic_write(done, json.dumps(study) + "\n")
        studies.append(study)
        elapsed = time.monotonic() - started
        logger.info("evaluation study %d/%d (seed %d): %d femur(s) | elapsed %.0f s", k, len(seeds), seed,
                    len(split.femurs), elapsed)
    return studies


def choose_postprocessing(model_folder: Path, seeds: Sequence[int], out: Path, *, mirroring: bool,
                          seeds_text: str) -> Any:
    """Choose the model's smallest reported lesion volume on held-out validation studies; record it in model.json.

    The model predicts the validation femurs without post-processing (:func:`evaluate_model` with
    ``apply_postprocessing=False``), then :mod:`lesion_training.postprocessing_selection` scores the candidate
    thresholds on those predictions. Returns the chosen :class:`~lesion_training.postprocessing_selection.CandidateScore`.
    """
    from lesion_training.postprocessing_selection import (
        choose,
        read_femur_predictions,
        record_in_model_json,
        score_candidates,
    )

    evaluate_model(model_folder, seeds, out, mirroring=mirroring, apply_postprocessing=False)
    femurs = read_femur_predictions(out / "predictions", out / "references")
    scores = score_candidates(femurs)
    for score in scores:
        logger.info("lesions under %.2f ml dropped: score %.3f, lesion Dice %.3f, lesion-free femurs empty %d/%d",
                    score.min_lesion_volume_ml, score.score, score.mean_lesion_dice,
                    *score.lesion_free_predicted_empty)
    chosen = choose(scores)
    record_in_model_json(model_folder, chosen, scores, chosen_on=(
        f"held-out standard synthetic studies, seeds {seeds_text} ({len(femurs)} femurs)"))
    return chosen


def evaluate_model(model_folder: Path, seeds: Sequence[int], out: Path, *, mirroring: bool = True,
                   apply_postprocessing: bool = True) -> dict[str, Any]:
    """Score the model on held-out standard synthetic studies, the application's way.

    The studies are prepared by :func:`prepare_evaluation_studies` (femur splitter on each CT); then
    :class:`operators.lesion_model.LesionModel` predicts each femur crop, the predictions are written
    as ``out/predictions/<case>.nii.gz`` and scored against the truth with ``python -m evaluation``.
    When the model has a post-processing, the network's labels before it are written and scored too
    (``out/predictions_before_postprocessing``, ``out/report_before_postprocessing``).

    Returns
    -------
    dict
        Written to ``out/evaluation.json``: the headline metrics (also ``metrics_before_postprocessing``
        when the model has a post-processing), per-femur inference times (s, post-processing
        included), and the studies' settings.
    """
    import highdicom as hd

    from evaluation.cli import main as evaluation_main
    from evaluation.label_io import write_label_volume
    from operators.lesion_model import LesionModel
    from lesion_training.dataset_builder import read_volume_file

    studies = prepare_evaluation_studies(seeds, out)
    pred_dir, report_dir = out / "predictions", out / "report"
    raw_dir, raw_report_dir = out / "predictions_before_postprocessing", out / "report_before_postprocessing"
    pred_dir.mkdir(parents=True, exist_ok=True)
    model = LesionModel.from_folder(model_folder, device="cpu", use_mirroring=mirroring,
                                    apply_postprocessing=apply_postprocessing)
    # One inference per femur: the network's labels are kept as well, so that the card can say what the
    # post-processing changes on the same predictions.
    keep_raw = model.has_postprocessing
    if keep_raw:
        raw_dir.mkdir(parents=True, exist_ok=True)
    times: list[float] = []
    cases = [case for study in studies for case in study["cases"]]
    for k, case in enumerate(cases, start=1):
        crop = read_volume_file(out / "crops" / f"{case}_0000.nii.gz")
        t0 = time.perf_counter()
        raw = model.predict(crop, postprocess=False).labels
        labels = model.postprocess(raw, crop.spacing)
        times.append(time.perf_counter() - t0)
        write_label_volume(pred_dir / f"{case}.nii.gz", hd.Volume(labels, crop.affine, coordinate_system="PATIENT"))
        if keep_raw:
            write_label_volume(raw_dir / f"{case}.nii.gz", hd.Volume(raw, crop.affine, coordinate_system="PATIENT"))
        logger.info("predicted %s (%d/%d) in %.1f s", case, k, len(cases), times[-1])
    for predictions, report in ((pred_dir, report_dir), (raw_dir, raw_report_dir))[:2 if keep_raw else 1]:
        status = evaluation_main(["--pred", str(predictions), "--ref", f"truth={out / 'references'}",
                                  "--out", str(report)])
        if status != 0:
            raise TrainingRunError(f"evaluation of the model failed (exit status {status})")
    result = {
        "seeds": list(seeds),
        "mirroring": mirroring,
        "metrics": headline_metrics(report_dir),
        "inference_seconds_per_femur": {"mean": round(float(np.mean(times)), 2), "max": round(float(np.max(times)), 2),
                                        "n": len(times)},
        "studies": studies,
    }
    if keep_raw:
        result["metrics_before_postprocessing"] = headline_metrics(raw_report_dir)
    _atomic_write(out / EVALUATION_FILE, json.dumps(result, indent=2) + "\n")
    return result


def _write_crop(path: Path, volume: Any) -> None:
    """Write a femur-only crop (float32 HU, (z, y, x), affine -> LPS) as NIfTI, atomically."""
    import SimpleITK as sitk

    array = np.asarray(volume.array, dtype=np.float32)
    affine = np.asarray(volume.affine, dtype=float)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)  # (sz, sy, sx)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(v) for v in spacing[::-1]))
    image.SetDirection(tuple(float(v) for v in (affine[:3, :3] / spacing)[:, ::-1].ravel()))
    image.SetOrigin(tuple(float(v) for v in affine[:3, 3]))
    tmp = path.with_name(f".{path.name}")
    sitk.WriteImage(image, str(tmp), useCompression=True)
    os.replace(tmp, path)


def headline_metrics(report_dir: Path) -> dict[str, Any]:
    """The model card's metrics from the evaluation package's ``per_case.csv`` and ``lesions.csv``.

    * mean lesion Dice over femurs, true negatives (both empty, NaN) left out;
    * lesion-wise sensitivity for reference lesions >= 10 mm (equivalent-sphere diameter);
    * fraction of lesion-free femurs predicted without any lesion voxel;
    * cysts called tumour: fraction of reference cyst voxels predicted lesion, and femurs with a cyst
      mostly called tumour;
    * cysts found as cyst: fraction of reference cyst voxels predicted cyst (a model can keep cysts out
      of its lesions by leaving them out altogether; this figure tells).
    """
    per_case = _read_csv(report_dir / "per_case.csv")
    lesions = _read_csv(report_dir / "lesions.csv")
    logger.debug("per_case columns %s; lesions columns %s", list(per_case[0]) if per_case else [],
                 list(lesions[0]) if lesions else [])

    def number(row: dict[str, str], *names: str) -> float:
        for name in names:
            if name in row and row[name] not in ("", None):
                return float(row[name])
        return math.nan

    dice = [number(r, "dice") for r in per_case]
    ref_ml = [number(r, "reference_volume_ml") for r in per_case]
    pred_ml = [number(r, "test_volume_ml") for r in per_case]
    lesion_free = [p for r, p in zip(ref_ml, pred_ml) if r == 0]
    sizes = [(number(r, "diameter_mm"), str(r.get("detected", "")).lower())
             for r in lesions]
    large = [d for s, d in sizes if s >= DETECTION_SIZE_MM]
    valid_dice = [d for d in dice if not math.isnan(d)]
    return {
        "femurs": len(per_case),
        "femurs_with_lesion": sum(r > 0 for r in ref_ml),
        "femurs_predicted_empty": sum(p == 0 for p in pred_ml),
        "mean_lesion_dice": _round(np.mean(valid_dice)) if valid_dice else None,
        "dice_true_negatives": sum(math.isnan(d) for d in dice),
        "reference_lesions": len(sizes),
        "lesions_ge_10mm": len(large),
        "sensitivity_ge_10mm": _round(sum(d in ("true", "1", "yes") for d in large) / len(large)) if large else None,
        "lesion_free_femurs": len(lesion_free),
        "lesion_free_predicted_empty": _round(sum(p == 0 for p in lesion_free) / len(lesion_free))
        if lesion_free else None,
        "cyst_voxels_called_tumour": _mean_column(per_case, "cyst_voxel_fraction_called_lesion"),
        "femurs_with_cyst_called_tumour": _count_true(per_case, "cyst_called_tumour"),
        "femurs_with_cyst": sum(number(r, "cysts") > 0 for r in per_case),
        "cyst_voxels_called_cyst": _mean_column(per_case, "cyst_voxel_fraction_called_cyst"),
    }


# ----------------------------------------------------------------------------------------- card


def write_model_card(settings: Settings, timings: dict[str, float], command: str) -> Path:
    """Write ``model/README.md`` from the model's model.json, the timings and ``evaluation.json``."""
    info = json.loads((settings.model_folder / "model.json").read_text(encoding="utf-8"))
    evaluation_file = settings.workspace / "evaluation" / EVALUATION_FILE
    evaluation = json.loads(evaluation_file.read_text(encoding="utf-8")) if evaluation_file.is_file() else None
    report_file = settings.workspace / "nnUNet_raw" / DATASET_NAME / "dataset_report.json"
    report = json.loads(report_file.read_text(encoding="utf-8")) if report_file.is_file() else None
    size = sum(p.stat().st_size for p in settings.model_folder.rglob("*") if p.is_file())
    text = render_model_card(info, evaluation, timings, size, settings, command, dataset_report=report)
    _atomic_write(settings.card, text)
    logger.info("model card %s", settings.card)
    return settings.card


def render_model_card(info: dict[str, Any], evaluation: dict[str, Any] | None, timings: dict[str, float],
                      size_bytes: int, settings: Settings, command: str,
                      dataset_report: dict[str, Any] | None = None) -> str:
    """The model card's Markdown (``dataset_report``: the cohort's ``dataset_report.json``, optional)."""
    schedule = info.get("schedule") or {}
    training = info.get("training") or {}
    # A model trained in two stages (--continue-epochs) records the first stage as the model it was fine-tuned from.
    first_stage = training.get("fine_tuned_from") or {}
    first_schedule = (first_stage.get("schedule") or {}) if first_stage else schedule
    configuration_name = first_stage.get("configuration") if first_stage else info.get("configuration")
    folder = settings.model_folder.as_posix()
    configured = CONFIGURATIONS.get(configuration_name or "")
    default_epochs = configured.num_epochs if configured is not None else None
    default_budget = schedule_entry(configured)["time_budget_s"] if configured is not None else None
    on_gpu = str(training.get("device") or "").startswith("cuda")
    command = reproduce_command(command, first_schedule.get("num_epochs"), default_epochs,
                                continue_epochs=schedule.get("num_epochs") if first_stage else None,
                                configuration=configuration_name, device="cuda" if on_gpu else None,
                                time_budget_s=first_schedule.get("time_budget_s"), default_time_budget_s=default_budget)
    batch = info.get("batch_size") or 2
    if first_stage:
        schedule_text = (
            f"{first_schedule.get('num_epochs')} epochs x {first_schedule.get('num_iterations_per_epoch')} iterations "
            f"(batch {batch}), then {schedule.get('num_epochs')} epochs x {schedule.get('num_iterations_per_epoch')} more "
            "from those weights (every weight carried over, the output layer included; the learning "
            f"rate restarted at 0.01 and decayed again), {schedule.get('num_val_iterations_per_epoch')} validation "
            "iterations per epoch")
    elif schedule.get("time_budget_s"):
        trained = ", ".join(str(v) for v in (training.get("epochs_trained") or {}).values()) or "?"
        schedule_text = (f"**{trained} epochs** x {schedule.get('num_iterations_per_epoch')} iterations (batch {batch}): "
                         f"as many as fitted in a {schedule['time_budget_s'] / 60.0:g}-minute budget (at most "
                         f"{schedule.get('num_epochs')}), the learning rate decayed over those; "
                         f"{schedule.get('num_val_iterations_per_epoch')} validation iterations per epoch")
    else:
        schedule_text = (f"{schedule.get('num_epochs')} epochs x {schedule.get('num_iterations_per_epoch')} iterations "
                         f"(batch {batch}), {schedule.get('num_val_iterations_per_epoch')} validation iterations per epoch")
    m = (evaluation or {}).get("metrics", {})

    def fmt(value: Any, digits: int = 2) -> str:
        return "n/a" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))

    def target(key: str) -> str:
        value = m.get(key)
        if value is None:
            return "not measured"
        return "met" if value >= TARGETS[key] else "**not met**"

    lines = [
        "# Model card: femur lytic lesion segmentation (nnU-Net), synthetic demonstration model",
        "",
        "> **A demonstration model for synthetic data, not for clinical use.** It was trained only on synthetic",
        "> CT phantoms (`synthetic_ct`) and has never seen a patient's CT. It shows that the method of",
        "> Rachmil et al. (2024) runs end to end in this product; it says nothing about performance on real scans.",
        "",
        "## Model",
        "",
        "| | |",
        "|---|---|",
        f"| name, version | `{info.get('name')}` {info.get('version')} |",
        "| method | nnU-Net v2 `3d_fullres` (PlainConvUNet), after Rachmil et al. 2024: one femur-only crop per case, "
        "z-score over the femur's voxels |",
        f"| configuration | `{configuration_name}`: target spacing {info.get('target_spacing_mm_zyx')} mm "
        "(z, y, x), "
        f"patch {info.get('patch_size_zyx')}, features {info.get('features_per_stage')} |",
        f"| schedule | {schedule_text} |",
        "| folds | nnU-Net fold `all`: **one model trained on all training cases** (no cross-validation, no "
        "ensemble, no nnU-Net post-processing of its own; nnU-Net's end-of-training validation, which for fold `all` only "
        "re-predicts the training cases, is skipped) |",
        _postprocessing_row(info),
        "| labels | " + ", ".join(f"{k} {v}" for k, v in (info.get("label_names") or {}).items()) + " |",
        f"| files | `{folder}/`: `plans.json`, `dataset.json`, `dataset_fingerprint.json`, `model.json`, "
        "`fold_all/checkpoint_final.pth` (network weights only) |",
        f"| size | {size_bytes / 1e6:.1f} MB |",
        "| loads with | `operators.lesion_model.LesionModel.from_folder`, or stock `nnUNetv2_predict_from_modelfolder` "
        "(checkpoint names `nnUNetTrainer`) |",
        "",
        "## Intended use",
        "",
        "Demonstration and testing of the application and of the training pipeline on synthetic studies. Input: one",
        "femur-only crop from the femur splitter (HU inside the femur, 0 outside), any orientation (brought to HPL by",
        "permutation/flips). Output: 0 background, 1 lytic lesion, 2 cyst, on the crop's grid.",
        "",
        "## Training data",
        "",
        f"- {training.get('num_training_cases')} femur cases from the synthetic patients with seeds "
        f"{settings.training_seeds} (`python -m lesion_training synthetic-dataset`), generated in memory and built by the "
        "same dataset builder as real studies: femurs cut out by the application's splitter, reference lesions and "
        "cysts cut with the crop box and restricted to the femur mask (clipped voxels are counted in "
        f"`dataset_report.md`). Seeds {settings.training_seeds} are used nowhere else in the project.",
        "- Drawn wide on purpose: pixels 1.2-1.9 mm, slices 1.5-3 mm, field of view 400-500 mm, noise 5-45 HU, "
        "kVp 80-140, with/without contrast, head- or feet-first, either slice order, knees in view or not, sometimes "
        "one femur only, 0-4 lesions per patient, cysts in about a third.",
        "- Cysts are their own class (label 2), so that the model can learn to tell them from tumour (how far it "
        "does: \"cysts found as cyst\" under Evaluation).",
        *_cohort_lines(dataset_report),
        "",
        "## Training",
        "",
        "Reproduce from scratch" + (":" if not timings else
                                    f" ({sum(timings.values()) / 60:.0f} min, measured below):" if on_gpu else
                                    f" ({sum(timings.values()) / 60:.0f} min on 2 CPU cores, measured below):"),
        "",
        "```",
        command,
        "```",
        "",
        f"Trained {training.get('date')} on {training.get('device')}, nnunetv2 {training.get('nnunetv2')}, "
        f"torch {training.get('torch')}.",
    ]
    if timings:
        where = ("training on the GPU, every other step on 2 shared CPU cores" if on_gpu
                 else "2 shared CPU cores")
        lines += ["", f"Measured durations ({where}): " + ", ".join(
            f"{k} {v / 60:.1f} min" for k, v in timings.items()) + "."]
    if default_epochs is not None and first_schedule.get("num_epochs") != default_epochs:
        change = "shortened" if first_schedule.get("num_epochs", 0) < default_epochs else "lengthened"
        whose = "first stage's " if first_stage else ""
        lines += ["", f"The {whose}schedule was {change} to "
                      f"{first_schedule.get('num_epochs')} epochs with `--epochs` (the `{configuration_name}` "
                      f"configuration's default is {default_epochs})."]
    if first_stage:
        loss = "nnU-Net's Dice + CE" if schedule.get("dice_smoothing", True) else "Dice (without smoothing) + CE"
        lines += ["", f"Training then went on for {schedule.get('num_epochs')} epochs from the first stage's weights "
                      f"with {loss} (`--continue-epochs`: `lesion_training.finetune.fine_tune` on the same cohort); "
                      "`model.json` records the first stage under `training.fine_tuned_from`."]
    lines += ["", "## Evaluation", ""]
    if evaluation is None:
        lines.append("Not evaluated yet.")
    else:
        seeds = evaluation["seeds"]
        t = evaluation["inference_seconds_per_femur"]
        lines += [
            f"Held-out `standard` synthetic studies, seeds {seeds[0]}-{seeds[-1]} ({len(seeds)} studies, "
            f"{m.get('femurs')} femurs), default generator draws (0.6-1 mm pixels, 0.8-1.5 mm slices), run the "
            "application's way: femur splitter, then the model on each crop"
            + ("" if evaluation.get("mirroring") else ", **test-time mirroring off**") + ". The truth is "
            "cut with the crop box but not restricted to the splitter's femur mask: lesion voxels the splitter "
            "leaves out count as misses. Scored with `python -m evaluation` (per-femur Dice, both empty = NaN and "
            "left out).",
            "",
            "| metric | value | target | |",
            "|---|---|---|---|",
            f"| mean lesion Dice (NaN excluded; {m.get('dice_true_negatives')} true negatives) | "
            f"{fmt(m.get('mean_lesion_dice'))} | >= 0.75 | {target('mean_lesion_dice')} |",
            f"| lesion-wise sensitivity, lesions >= 10 mm ({m.get('lesions_ge_10mm')} lesions) | "
            f"{fmt(m.get('sensitivity_ge_10mm'))} | >= 0.90 | {target('sensitivity_ge_10mm')} |",
            f"| lesion-free femurs predicted empty ({m.get('lesion_free_femurs')} femurs) | "
            f"{fmt(m.get('lesion_free_predicted_empty'))} | >= 0.90 | {target('lesion_free_predicted_empty')} |",
            f"| cysts called tumour: fraction of cyst voxels predicted lesion | "
            f"{fmt(m.get('cyst_voxels_called_tumour'))} | mostly not | |",
            f"| femurs whose cyst is mostly called tumour | {fmt(m.get('femurs_with_cyst_called_tumour'))} of "
            f"{fmt(m.get('femurs_with_cyst'))} | | |",
            f"| cysts found as cyst: fraction of cyst voxels predicted cyst | "
            f"{fmt(m.get('cyst_voxels_called_cyst'))} | | |",
            f"| inference time per femur crop (CPU, 2 cores{'' if evaluation.get('mirroring') else ', no mirroring'}) "
            f"| {t['mean']:.1f} s mean, {t['max']:.1f} s max | | |",
            "",
            "Reference points from the paper (real CT): Dice 0.69 against a specialist, 0.67 / 0.68 against two "
            "radiologists (radiologist against radiologist 0.73).",
        ]
        before = evaluation.get("metrics_before_postprocessing")
        if before:
            lines += ["", "The same predictions before the post-processing (every lesion component kept): lesion Dice "
                          f"{fmt(before.get('mean_lesion_dice'))}, sensitivity >= 10 mm "
                          f"{fmt(before.get('sensitivity_ge_10mm'))}, lesion-free femurs predicted empty "
                          f"{fmt(before.get('lesion_free_predicted_empty'))}."]
        candidates = (info.get("postprocessing") or {}).get("candidates") or []
        if candidates:
            lines += ["", "How the smallest reported lesion volume was chosen (validation femurs, not the ones above; "
                          "score: lesion Dice where there are lesions, 1/0 for an empty/non-empty prediction in "
                          "lesion-free femurs):", "",
                      "| lesions dropped under (ml) | score | lesion Dice | lesion-free femurs predicted empty |",
                      "|---:|---:|---:|---:|"]
            lines += [f"| {c['min_lesion_volume_ml']:g} | {c['score']:.3f} | {c['mean_lesion_dice']:.3f} | "
                      f"{c['lesion_free_predicted_empty'][0]} of {c['lesion_free_predicted_empty'][1]} |"
                      for c in candidates]
        if m.get("femurs") and m.get("femurs_predicted_empty") == m.get("femurs"):
            lines += ["", f"**The model predicts no lesion voxel in any of the {m['femurs']} femurs: it is "
                          "undertrained.** The lesion-free figure is met only trivially, and the cyst figures say "
                          "nothing. Train with the full schedule (no `--epochs`), ideally on a GPU, before "
                          "relying on any figure here."]
    lines += [
        "",
        "## Experiments behind the recipe",
        "",
        "What was tried to improve this model (Dice smoothing, cohort size, longer training), with the figures: "
        f"[{EXPERIMENTS_DOC}](../{EXPERIMENTS_DOC}).",
        "",
        "## Limitations",
        "",
        "- Synthetic data only: anatomy, lesions, noise and artefacts come from one generator; real scanners, "
        "kernels, implants and pathology are not represented.",
        "- The lesion is searched inside the splitter's femur mask only: lesion parts the splitter leaves out "
        "(e.g. where a lesion breaks through the cortex) cannot be found.",
        "- Trained at >= 2.0 x 1.6 x 1.6 mm" + (" for minutes on a GPU" if on_gpu else " on a short CPU schedule")
        + ": small lesions and fine borders suffer.",
        "- Subtle low-contrast shaft lesions can be confused with marrow; femoral-head cysts are not tumours.",
    ]
    found_as_cyst = m.get("cyst_voxels_called_cyst") if evaluation is not None else None
    if found_as_cyst is not None and found_as_cyst < CYSTS_FOUND_FRACTION:
        lines.append(f"- Cysts: only {fmt(found_as_cyst)} of the cyst voxels are labelled cyst. The model keeps cysts "
                     "out of its lesions by leaving them out (background), not by telling them apart: its cyst "
                     "label is not to be relied on.")
    lines.append("")
    return "\n".join(lines)


def _postprocessing_row(info: dict[str, Any]) -> str:
    """The model card's post-processing row, from model.json's ``postprocessing`` section."""
    section = info.get("postprocessing") or {}
    threshold = section.get("min_lesion_volume_ml")
    if not threshold:
        return "| post-processing | none: every predicted lesion component is kept |"
    return (f"| post-processing | lesion components under {threshold:g} ml are dropped (26-connected), the threshold "
            f"chosen on {section.get('chosen_on', 'held-out studies')} by `lesion_training.postprocessing_selection` |")


def _cohort_lines(report: dict[str, Any] | None) -> list[str]:
    if not report:
        return []
    summary = report["summary"]
    cases = report["cases"]
    kept = sum(c["lesion_voxels"] for c in cases)
    clipped = sum(c["clipped_lesion_voxels"] for c in cases)
    lost = sum(i["voxels"] or 0 for i in report["issues"] if i["kind"] == "lesion_outside_femur" and not i["case"])
    excluded = [i for i in report["issues"] if i["action"] == "excluded"]
    lines = [f"- Cohort as built: {summary['training_cases']} femur cases from "
             f"{summary['studies'] - summary['studies_excluded']} of {summary['studies']} patients; "
             f"{summary['cases_with_lesion']} femurs with a lesion, {summary['cases_with_cyst']} with a cyst."]
    if excluded:
        lines.append(f"- {len(excluded)} patient(s) gave no case: " + "; ".join(
            f"{i['patient']}: {i['message']}" for i in excluded) + ".")
    if kept + clipped + lost:
        lines.append(f"- {100.0 * (clipped + lost) / (kept + clipped + lost):.0f} % of the reference lesion voxels "
                     "lay outside the splitter's femur mask and were clipped (listed per case in the dataset report).")
    return lines


# ----------------------------------------------------------------------------------------- helpers


def reproduce_command(command: str, trained_epochs: int | None, default_epochs: int | None, *,
                      continue_epochs: int | None = None, configuration: str | None = None,
                      device: str | None = None, time_budget_s: float | None = None,
                      default_time_budget_s: float | None = None) -> str:
    """The command that reproduces the model: ``command`` with the configuration, device and schedule it was
    trained with.

    The card can be rewritten by a later invocation (``--steps card``, or evaluation only) that does not
    repeat ``--epochs``, ``--continue-epochs``, ``--config``, ``--device`` or ``--time-budget-min``; the model
    (its ``configuration``, training ``device``, trained schedule: ``trained_epochs``, then ``continue_epochs``
    from those weights, and ``time_budget_s`` against the configuration's ``default_time_budget_s``), not that
    invocation, says how it was trained.
    """
    parts = shlex.split(command)
    for option in ("--epochs", "--continue-epochs", "--config", "--device", "--time-budget-min"):
        if option in parts:
            i = parts.index(option)
            del parts[i:i + 2]
    at = parts.index("--workers") + 2 if "--workers" in parts else len(parts)
    if time_budget_s is not None and time_budget_s != default_time_budget_s:
        parts[at:at] = ["--time-budget-min", f"{time_budget_s / 60.0:g}"]
    if device == "cuda":
        parts[at:at] = ["--device", "cuda"]
    if configuration and configuration != "small":
        parts[at:at] = ["--config", configuration]
    if continue_epochs:
        parts[at:at] = ["--continue-epochs", str(continue_epochs)]
    if trained_epochs is not None and trained_epochs != default_epochs:
        parts[at:at] = ["--epochs", str(trained_epochs)]
    return shlex.join(parts)


def _recorded_command(args: argparse.Namespace) -> str:
    parts = ["python", "-m", "lesion_training.shipped_model", "--workers", str(args.workers)]
    if args.config != "small":
        parts += ["--config", args.config]
    if args.device != "auto":
        parts += ["--device", args.device]
    if args.time_budget_min is not None:
        parts += ["--time-budget-min", f"{args.time_budget_min:g}"]
    if args.epochs is not None:
        parts += ["--epochs", str(args.epochs)]
    if args.continue_epochs:
        parts += ["--continue-epochs", str(args.continue_epochs)]
    if not args.mirroring:
        parts.append("--no-mirroring")
    if args.training_seeds != TRAINING_SEEDS:
        parts += ["--training-seeds", args.training_seeds]
    if args.evaluation_seeds != EVALUATION_SEEDS:
        parts += ["--evaluation-seeds", args.evaluation_seeds]
    return shlex.join(parts)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _mean_column(rows: list[dict[str, str]], *names: str) -> float | None:
    values = [float(r[n]) for r in rows for n in names if n in r and r[n] not in ("", None)]
    return _round(np.mean(values)) if values else None


def _count_true(rows: list[dict[str, str]], *names: str) -> int | None:
    values = [str(r[n]).lower() for r in rows for n in names if n in r and r[n] not in ("", None)]
    return sum(v in ("true", "1", "yes") for v in values) if values else None


def _round(value: float) -> float:
    return round(float(value), 4)


def _atomic_write(path: Path, text: str) -> None:
    from lesion_training.raw_dataset import _atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(path, text)


if __name__ == "__main__":
    sys.exit(main())
