"""Assemble the evaluation documents and write them to an output folder.

Files (only those that apply are written):

- ``evaluation.md``: settings, summary of the prediction vs each reference set (and the annotator
  agreement, for comparison), lesion-wise sensitivity by size, and a per-femur table per reference.
- ``summary.csv``, ``per_case.csv``, ``detection.csv``, ``lesions.csv``: the same as CSV
  (``lesions.csv``: one row per reference lesion).
- ``annotators.md``, ``annotators.csv`` (summary), ``annotators_per_case.csv``: every pair of
  reference sets, in the same format, when two or more are given.
- ``cross_validation.md``, ``cross_validation.csv`` (per fold and pooled),
  ``cross_validation_per_case.csv``: from an nnU-Net results folder.

Each file is written under a temporary name in the output folder and renamed when complete, so a
reader never sees half a table.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from evaluation import tables
from evaluation.case_metrics import EvaluationSettings
from evaluation.comparison import Comparison
from evaluation.cross_validation import CrossValidationResult
from operators.atomic_files import write_text_atomic

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class EvaluationResults:
    """What an evaluation run produced.

    Attributes
    ----------
    predictions : tuple of Comparison
        The prediction against each reference set.
    annotators : tuple of Comparison
        Each pair of reference sets.
    cross_validation : CrossValidationResult or None
        Per-fold validation Dice, when an nnU-Net results folder was given.
    """

    predictions: tuple[Comparison, ...] = ()
    annotators: tuple[Comparison, ...] = ()
    cross_validation: CrossValidationResult | None = None


def evaluation_markdown(results: EvaluationResults, *, settings: EvaluationSettings) -> str:
    """The main report: prediction vs each reference set."""
    parts = ["# Lesion segmentation: prediction vs reference\n\n", tables.settings_text(settings)]
    parts += ["\n## Summary\n\n", tables.summary_markdown(results.predictions, settings=settings)]
    if results.annotators:
        parts += [
            "\n### Annotator vs annotator (details in `annotators.md`)\n\n",
            tables.summary_markdown(results.annotators, settings=settings),
        ]
    parts += [
        "\n## Lesion-wise sensitivity by size\n\n",
        tables.detection_markdown(results.predictions, settings=settings),
    ]
    for comparison in results.predictions:
        parts += [f"\n## Per femur: {comparison.title}\n\n", tables.per_case_markdown(comparison, settings=settings)]
    return "".join(parts)


def annotators_markdown(results: EvaluationResults, *, settings: EvaluationSettings) -> str:
    """Every pair of reference sets, in the format of the main report."""
    parts = ["# Annotator vs annotator\n\n", tables.settings_text(settings)]
    parts += [
        "\nDice and NSD are symmetric; volume error and detection take the first set of a pair as the test.\n",
        "\n## Summary\n\n", tables.summary_markdown(results.annotators, settings=settings),
        "\n## Lesion-wise sensitivity by size\n\n", tables.detection_markdown(results.annotators, settings=settings),
    ]
    for comparison in results.annotators:
        parts += [f"\n## Per femur: {comparison.title}\n\n", tables.per_case_markdown(comparison, settings=settings)]
    return "".join(parts)


def cross_validation_document(result: CrossValidationResult) -> str:
    """Cross-validation Dice per fold and pooled."""
    return "".join([
        "# Cross-validation\n\n",
        "Validation predictions of each fold against the dataset's labels, lesion class. A femur where "
        f"neither holds a lesion is a true negative (`{tables.NAN_TRUE_NEGATIVE}`), counted under `TN (NaN)` "
        "and left out of the mean. Mean ± SD: sample SD over the non-NaN values; the row `all` pools the "
        "femurs of every fold.\n\n",
        tables.cross_validation_markdown(result),
    ])


def console_summary(results: EvaluationResults, *, settings: EvaluationSettings) -> str:
    """The summary tables, for the terminal."""
    parts = []
    if results.predictions:
        parts += ["Prediction vs reference\n", tables.summary_markdown(results.predictions, settings=settings)]
    if results.annotators:
        parts += ["\nAnnotator vs annotator\n", tables.summary_markdown(results.annotators, settings=settings)]
    if results.cross_validation is not None:
        parts += ["\nCross-validation\n", tables.cross_validation_markdown(results.cross_validation)]
    return "".join(parts)


def write_report(out_dir: Path, results: EvaluationResults, *, settings: EvaluationSettings) -> list[Path]:
    """Write every document that applies to `out_dir` (created if needed).

    Returns
    -------
    list of pathlib.Path
        The files written, in a stable order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    documents: list[tuple[str, str]] = []
    if results.predictions:
        p = results.predictions
        documents += [
            ("evaluation.md", evaluation_markdown(results, settings=settings)),
            ("summary.csv", tables.summary_csv(p, settings=settings)),
            ("per_case.csv", tables.per_case_csv(p)),
            ("detection.csv", tables.detection_csv(p, settings=settings)),
            ("lesions.csv", tables.lesions_csv(p, settings=settings)),
        ]
    if results.annotators:
        a = results.annotators
        documents += [
            ("annotators.md", annotators_markdown(results, settings=settings)),
            ("annotators.csv", tables.summary_csv(a, settings=settings)),
            ("annotators_per_case.csv", tables.per_case_csv(a)),
        ]
    if results.cross_validation is not None:
        cv = results.cross_validation
        documents += [
            ("cross_validation.md", cross_validation_document(cv)),
            ("cross_validation.csv", tables.cross_validation_csv(cv)),
            ("cross_validation_per_case.csv", tables.cross_validation_cases_csv(cv)),
        ]
    written = []
    for name, text in documents:
        path = out_dir / name
        write_text_atomic(path, text)
        written.append(path)
        logger.debug("wrote %s", path)
    return written


def paths_text(paths: Sequence[Path]) -> str:
    """The written files, one per line."""
    return "\n".join(str(p) for p in paths)
