"""Command line: ``python -m evaluation``.

Examples
--------
Prediction against two annotators, with their agreement::

    python -m evaluation --pred predictions/ --ref radiologist1=labels_r1/ --ref radiologist2=labels_r2/ \\
        --out evaluation_output/

Cross-validation table of an nnU-Net training, alone or together with the above::

    python -m evaluation --cv-results nnUNet_results/Dataset501_FemurLesions/nnUNetTrainer__nnUNetPlans__3d_fullres \\
        --cv-labels nnUNet_raw/Dataset501_FemurLesions/labelsTr --out evaluation_output/
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from evaluation.case_metrics import EvaluationSettings, LabelValues
from evaluation.comparison import compare_annotators, compare_folders
from evaluation.cross_validation import evaluate_cross_validation
from evaluation.detection import DEFAULT_SIZE_BINS_MM, DetectionRule
from evaluation.report import EvaluationResults, console_summary, paths_text, write_report
from evaluation.surface_distance import DEFAULT_TOLERANCE_MM
from operators.errors import FemurSegError, InputError

logger = logging.getLogger(__name__)

PREDICTION_NAME = "prediction"


class _OneLineErrorParser(argparse.ArgumentParser):
    """Usage errors as one line (like every other input error), not usage text plus message."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m evaluation``."""
    parser = _OneLineErrorParser(
        prog="python -m evaluation",
        description=(
            "Evaluate femoral lesion segmentations per femur (Dice with the true-negative rule, NSD, volume "
            "error, lesion-wise detection, cysts called tumour) and write Markdown and CSV tables."
        ),
    )
    parser.add_argument("--pred", type=Path, metavar="DIR", help="folder of predicted label files <case_id>.nii.gz")
    parser.add_argument(
        "--ref", action="append", default=[], metavar="NAME=DIR",
        help="reference label folder and its name; repeat for several annotators",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created if needed)")
    parser.add_argument("--lesion-label", type=int, default=1, metavar="N", help="lesion label value (default 1)")
    parser.add_argument(
        "--cyst-label", type=_optional_label, default=2, metavar="N|none",
        help="cyst label value of the references, or 'none' (default 2)",
    )
    parser.add_argument(
        "--nsd-tolerance-mm", type=float, default=DEFAULT_TOLERANCE_MM, metavar="MM",
        help=f"normalised surface distance tolerance in mm (default {DEFAULT_TOLERANCE_MM:g})",
    )
    defaults = DetectionRule()
    parser.add_argument(
        "--min-lesion-mm3", type=float, default=defaults.min_prediction_mm3, metavar="MM3",
        help="ignore predicted components smaller than this in lesion-wise detection (default 0)",
    )
    parser.add_argument(
        "--detection-lesion-fraction", type=float, default=defaults.min_lesion_fraction, metavar="F",
        help=f"fraction of a reference lesion to cover for a detection (default {defaults.min_lesion_fraction:g})",
    )
    parser.add_argument(
        "--detection-prediction-fraction", type=float, default=defaults.min_prediction_fraction, metavar="F",
        help="or fraction of one predicted component lying inside the lesion "
        f"(default {defaults.min_prediction_fraction:g})",
    )
    parser.add_argument(
        "--size-bins-mm", type=_edges, default=DEFAULT_SIZE_BINS_MM, metavar="A,B,...",
        help="edges of the lesion diameter bins in mm (default " + ",".join(f"{e:g}" for e in DEFAULT_SIZE_BINS_MM) + ")",
    )
    parser.add_argument("--cv-results", type=Path, metavar="DIR", help="nnU-Net trainer folder with fold_<k>/validation")
    parser.add_argument("--cv-labels", type=Path, metavar="DIR", help="the dataset's labelsTr folder")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0,
        help="-v: log progress; -vv: also per-femur values and tracebacks of errors",
    )
    return parser


def _optional_label(text: str) -> int | None:
    if text.strip().lower() in ("none", "no", ""):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'none', got {text!r}") from None


def _edges(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def parse_references(values: Sequence[str]) -> dict[str, Path]:
    """``NAME=DIR`` arguments as an ordered name -> folder mapping.

    Raises
    ------
    InputError
        A value without a name or folder, or a name given twice.
    """
    references: dict[str, Path] = {}
    for value in values:
        name, sep, folder = value.partition("=")
        name = name.strip()
        if not sep or not name or not folder:
            raise InputError(f"--ref expects NAME=DIR, got {value!r}")
        if name in references:
            raise InputError(f"reference name {name!r} is given twice")
        if name == PREDICTION_NAME:
            raise InputError(f"reference name {name!r} is reserved for the prediction; choose another")
        references[name] = Path(folder)
    return references


def run(args: argparse.Namespace) -> EvaluationResults:
    """Evaluate what the arguments ask for; raises `FemurSegError` on bad input."""
    if args.pred is None and args.cv_results is None:
        raise InputError("nothing to evaluate: give --pred with --ref, and/or --cv-results with --cv-labels")
    if (args.cv_results is None) != (args.cv_labels is None):
        raise InputError("--cv-results and --cv-labels go together")
    references = parse_references(args.ref)
    if args.pred is not None and not references:
        raise InputError("--pred needs at least one --ref NAME=DIR")
    if args.pred is None and references:
        raise InputError("--ref needs --pred")
    try:
        settings = EvaluationSettings(
            labels=LabelValues(lesion=args.lesion_label, cyst=args.cyst_label),
            nsd_tolerance_mm=args.nsd_tolerance_mm,
            detection=DetectionRule(
                min_prediction_mm3=args.min_lesion_mm3,
                min_lesion_fraction=args.detection_lesion_fraction,
                min_prediction_fraction=args.detection_prediction_fraction,
            ),
            size_bins_mm=args.size_bins_mm,
        )
    except ValueError as exc:
        raise InputError(f"invalid option: {exc}") from exc
    try:
        # Fail before hours of evaluation, not after.
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output folder {args.out}: {exc.strerror or exc}") from exc

    predictions = []
    for name, folder in references.items():
        logger.info("evaluating %s against %s (%s)", args.pred, name, folder)
        predictions.append(
            compare_folders(args.pred, folder, test_name=PREDICTION_NAME, reference_name=name, settings=settings)
        )
    annotators = compare_annotators(references, settings=settings) if len(references) >= 2 else []
    cross_validation = None
    if args.cv_results is not None:
        logger.info("evaluating cross-validation folds in %s", args.cv_results)
        cross_validation = evaluate_cross_validation(
            args.cv_results, args.cv_labels, labels=settings.labels, geometry=settings.geometry
        )
    results = EvaluationResults(
        predictions=tuple(predictions), annotators=tuple(annotators), cross_validation=cross_validation
    )
    written = write_report(args.out, results, settings=settings)
    print(console_summary(results, settings=settings))
    print("Wrote:\n" + paths_text(written))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status (0 success, non-zero on bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level={0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG),
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        run(args)
    except FemurSegError as exc:
        logger.debug("evaluation failed", exc_info=True)
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code or 1
    except OSError as exc:
        # Unwritable output folder, disk full, ...: the user's to fix, not a bug.
        logger.debug("evaluation failed", exc_info=True)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
