"""Markdown and CSV tables of an evaluation, in the layout of Rachmil et al. (2024).

Missing values are written differently for people and for programs:

* Markdown: a Dice or NSD that is NaN because neither label set holds a lesion is shown as
  ``NaN (TN)`` (a true negative); other undefined values (a relative volume error without reference
  lesion, a mean over no value) as ``n/a``.
* CSV: every NaN is an **empty cell** (read as missing by pandas, R and spreadsheets). The per-femur
  CSV also has a ``true_negative`` column, so the reason is not lost. Booleans are ``true``/``false``;
  a "cyst called tumour" of a femur without a reference cyst is empty.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence

from evaluation.case_metrics import CaseMetrics, EvaluationSettings
from evaluation.comparison import Comparison, ComparisonSummary, summarise
from evaluation.cross_validation import CrossValidationResult
from evaluation.detection import BinSensitivity, SizeBin, sensitivity_by_size, size_bins
from evaluation.statistics import MeanSD

NAN_TRUE_NEGATIVE = "NaN (TN)"
NOT_APPLICABLE = "n/a"

Cell = str | int | float | bool | None


# ----------------------------------------------------------------------------------------- formatting

def format_mean_sd(stats: MeanSD, *, digits: int = 3) -> str:
    """``"0.690 ± 0.120"``; the mean alone for one value; ``n/a`` for none."""
    if stats.n == 0:
        return NOT_APPLICABLE
    if stats.n == 1:
        return f"{stats.mean:.{digits}f}"
    return f"{stats.mean:.{digits}f} ± {stats.sd:.{digits}f}"


def _score(value: float) -> str:
    """A Dice or NSD for Markdown: NaN is a true negative."""
    return NAN_TRUE_NEGATIVE if math.isnan(value) else f"{value:.3f}"


def _number(value: float, digits: int) -> str:
    return NOT_APPLICABLE if math.isnan(value) else f"{value:.{digits}f}"


def _yes_no(value: bool | None) -> str:
    return NOT_APPLICABLE if value is None else ("yes" if value else "no")


def _side(side: str | None) -> str:
    return side if side is not None else "-"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]], *, text_columns: int = 1) -> str:
    """A GitHub-flavoured Markdown table: the first `text_columns` left-aligned, numbers right-aligned."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    rule = "|" + "|".join([":---"] * text_columns + ["---:"] * (len(header) - text_columns)) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)]) + "\n"


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Cell]]) -> str:
    """CSV with NaN and None as empty cells and booleans as ``true``/``false``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_csv_cell(c) for c in row])
    return buffer.getvalue()


def _csv_cell(value: Cell) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "" if math.isnan(value) else format(value, ".10g")
    return str(value)


def settings_text(settings: EvaluationSettings) -> str:
    """Markdown bullet list of the settings that change the numbers."""
    labels = settings.labels
    cyst = f"{labels.cyst}" if labels.cyst is not None else "none"
    edges = ", ".join(f"{e:g}" for e in settings.size_bins_mm) or "none"
    return "\n".join([
        f"- Labels: lesion = {labels.lesion}, cyst = {cyst}; metrics are those of the lesion class, per femur.",
        "- Dice and NSD of a femur where neither label set holds a lesion are NaN: a true negative, shown as "
        f"`{NAN_TRUE_NEGATIVE}`, counted under `TN (NaN)` and left out of means. One empty and the other not gives 0.",
        "- Mean ± SD: sample standard deviation (n - 1) over the non-NaN values.",
        f"- NSD: normalised surface distance at {settings.nsd_tolerance_mm:g} mm (boundary voxels, anisotropic spacing).",
        f"- Detection: {settings.detection.describe()}.",
        f"- Size bins: equivalent-sphere diameter of the reference lesion, edges {edges} mm.",
        f"- Cyst called tumour: a reference cyst component with >= {settings.cyst_called_fraction:.0%} of its voxels "
        "labelled lesion.",
    ]) + "\n"


# ------------------------------------------------------------------------------------------ summaries

SUMMARY_CSV_HEADER = (
    "comparison", "test", "reference", "femurs", "dice_mean", "dice_sd", "dice_n", "true_negatives",
    "nsd_tolerance_mm", "nsd_mean", "nsd_sd", "nsd_n", "volume_error_ml_mean", "volume_error_ml_sd",
    "lesions_total", "lesions_detected", "sensitivity", "false_positives", "false_positives_per_femur",
    "femurs_with_cyst", "femurs_cyst_called_tumour",
)


def summary_markdown(comparisons: Sequence[Comparison], *, settings: EvaluationSettings) -> str:
    """One row per comparison: Dice mean ± SD, n, true negatives, NSD, volume error, detection, cysts."""
    header = (
        "Comparison", "Femurs", "Dice (mean ± SD)", "n (Dice)", "TN (NaN)",
        f"NSD @{settings.nsd_tolerance_mm:g} mm (mean ± SD)", "Vol. error ml (mean ± SD)",
        "Lesions detected", "Sensitivity", "FP / femur", "Cyst called tumour",
    )
    rows = []
    for comparison in comparisons:
        s = summarise(comparison.cases)
        rows.append((
            comparison.title, str(s.femurs), format_mean_sd(s.dice), str(s.dice.n), str(s.dice.n_nan),
            format_mean_sd(s.nsd), format_mean_sd(s.volume_error_ml, digits=2),
            f"{s.lesions_detected}/{s.lesions_total}", _number(s.sensitivity, 3),
            _number(s.false_positives_per_femur, 2),
            f"{s.femurs_cyst_called_tumour}/{s.femurs_with_cyst} femurs" if s.femurs_with_cyst else NOT_APPLICABLE,
        ))
    return markdown_table(header, rows)


def summary_csv(comparisons: Sequence[Comparison], *, settings: EvaluationSettings) -> str:
    """Machine-readable `summary_markdown` (columns: `SUMMARY_CSV_HEADER`)."""
    rows = []
    for comparison in comparisons:
        s: ComparisonSummary = summarise(comparison.cases)
        rows.append((
            comparison.title, comparison.test_name, comparison.reference_name, s.femurs,
            s.dice.mean, s.dice.sd, s.dice.n, s.dice.n_nan,
            settings.nsd_tolerance_mm, s.nsd.mean, s.nsd.sd, s.nsd.n,
            s.volume_error_ml.mean, s.volume_error_ml.sd,
            s.lesions_total, s.lesions_detected, s.sensitivity, s.false_positives, s.false_positives_per_femur,
            s.femurs_with_cyst, s.femurs_cyst_called_tumour,
        ))
    return csv_text(SUMMARY_CSV_HEADER, rows)


# ------------------------------------------------------------------------------------------ per femur

PER_CASE_CSV_HEADER = (
    "comparison", "test", "reference", "case_id", "patient", "side", "dice", "true_negative", "nsd",
    "test_volume_ml", "reference_volume_ml", "volume_error_ml", "volume_error_relative",
    "lesions_detected", "lesions_total", "false_positives", "predicted_components",
    "ignored_small_predictions", "cysts", "cysts_called_tumour", "cyst_called_tumour",
    "cyst_voxel_fraction_called_lesion", "cyst_voxel_fraction_called_cyst",
)


def per_case_markdown(comparison: Comparison, *, settings: EvaluationSettings) -> str:
    """One row per femur of a comparison."""
    header = (
        "Case", "Patient", "Side", "Dice", f"NSD @{settings.nsd_tolerance_mm:g} mm",
        f"Vol. {comparison.test_name} (ml)", f"Vol. {comparison.reference_name} (ml)", "Vol. error (ml)",
        "Vol. error (%)", "Lesions detected/total", "FP", "Cyst called tumour",
    )
    rows = [_per_case_markdown_row(c) for c in comparison.cases]
    return markdown_table(header, rows, text_columns=3)


def _per_case_markdown_row(c: CaseMetrics) -> tuple[str, ...]:
    relative = c.volume.relative * 100.0
    return (
        c.case.case_id, c.case.patient, _side(c.case.side), _score(c.dice), _score(c.nsd),
        f"{c.volume.predicted_ml:.2f}", f"{c.volume.reference_ml:.2f}", f"{c.volume.error_ml:+.2f}",
        NOT_APPLICABLE if math.isnan(relative) else f"{relative:+.1f}",
        f"{c.detection.detected}/{c.detection.total}", str(c.detection.false_positives),
        _yes_no(c.cyst.called_tumour),
    )


def per_case_csv(comparisons: Sequence[Comparison]) -> str:
    """One row per femur and comparison (columns: `PER_CASE_CSV_HEADER`)."""
    rows = []
    for comparison in comparisons:
        for c in comparison.cases:
            rows.append((
                comparison.title, comparison.test_name, comparison.reference_name,
                c.case.case_id, c.case.patient, c.case.side, c.dice, c.true_negative, c.nsd,
                c.volume.predicted_ml, c.volume.reference_ml, c.volume.error_ml, c.volume.relative,
                c.detection.detected, c.detection.total, c.detection.false_positives,
                c.detection.predicted_components, c.detection.ignored_small_predictions,
                c.cyst.cysts, c.cyst.cysts_called_tumour, c.cyst.called_tumour, c.cyst.voxel_fraction_called_lesion,
                c.cyst.voxel_fraction_called_cyst,
            ))
    return csv_text(PER_CASE_CSV_HEADER, rows)


# ------------------------------------------------------------------------------------------ detection

DETECTION_CSV_HEADER = (
    "comparison", "test", "reference", "size_bin", "diameter_min_mm", "diameter_max_mm",
    "lesions_total", "lesions_detected", "sensitivity",
)
LESIONS_CSV_HEADER = (
    "comparison", "case_id", "patient", "side", "lesion", "voxels", "volume_mm3", "diameter_mm", "size_bin",
    "overlap_voxels", "overlap_fraction", "best_prediction_fraction", "detected",
)


def _bins_with_total(comparison: Comparison, edges_mm: Sequence[float]) -> list[BinSensitivity]:
    lesions = [lesion for c in comparison.cases for lesion in c.detection.lesions]
    rows = sensitivity_by_size(lesions, edges_mm=edges_mm)
    if len(rows) > 1:
        rows.append(sensitivity_by_size(lesions, edges_mm=())[0])
    return rows


def detection_markdown(comparisons: Sequence[Comparison], *, settings: EvaluationSettings) -> str:
    """Lesion-wise sensitivity per size bin (and over all sizes) for each comparison."""
    header = ("Comparison", "Lesion size (equivalent-sphere diameter)", "Detected/total", "Sensitivity")
    rows = []
    for comparison in comparisons:
        for b in _bins_with_total(comparison, settings.size_bins_mm):
            rows.append((comparison.title, b.size_bin.label, f"{b.detected}/{b.total}", _number(b.sensitivity, 3)))
    return markdown_table(header, rows, text_columns=2)


def detection_csv(comparisons: Sequence[Comparison], *, settings: EvaluationSettings) -> str:
    """Machine-readable `detection_markdown`; the open upper bound of the last bin is empty."""
    rows = []
    for comparison in comparisons:
        for b in _bins_with_total(comparison, settings.size_bins_mm):
            upper = None if math.isinf(b.size_bin.upper_mm) else b.size_bin.upper_mm
            rows.append((
                comparison.title, comparison.test_name, comparison.reference_name, b.size_bin.label,
                b.size_bin.lower_mm, upper, b.total, b.detected, b.sensitivity,
            ))
    return csv_text(DETECTION_CSV_HEADER, rows)


def lesions_csv(comparisons: Sequence[Comparison], *, settings: EvaluationSettings) -> str:
    """One row per reference lesion: size, overlap with the test labels, detected or not."""
    bins: tuple[SizeBin, ...] = size_bins(settings.size_bins_mm)
    rows = []
    for comparison in comparisons:
        for c in comparison.cases:
            for number, lesion in enumerate(c.detection.lesions, start=1):
                label = next(b.label for b in bins if b.contains(lesion.diameter_mm))
                rows.append((
                    comparison.title, c.case.case_id, c.case.patient, c.case.side, number, lesion.voxels,
                    lesion.volume_mm3, lesion.diameter_mm, label, lesion.overlap_voxels, lesion.overlap_fraction,
                    lesion.best_prediction_fraction, lesion.detected,
                ))
    return csv_text(LESIONS_CSV_HEADER, rows)


# ---------------------------------------------------------------------------------- cross-validation

CROSS_VALIDATION_CSV_HEADER = ("fold", "femurs", "dice_mean", "dice_sd", "dice_n", "true_negatives")
CROSS_VALIDATION_CASES_CSV_HEADER = ("fold", "case_id", "patient", "side", "dice", "true_negative")


def cross_validation_markdown(result: CrossValidationResult) -> str:
    """Dice mean ± SD per fold and over all folds (pooled over femurs)."""
    header = ("Fold", "Femurs", "Dice (mean ± SD)", "n (Dice)", "TN (NaN)")
    rows = []
    for fold in result.folds:
        d = fold.dice
        rows.append((str(fold.fold), str(len(fold.cases)), format_mean_sd(d), str(d.n), str(d.n_nan)))
    overall = result.overall
    rows.append(("all", str(overall.n + overall.n_nan), format_mean_sd(overall), str(overall.n), str(overall.n_nan)))
    return markdown_table(header, rows)


def cross_validation_csv(result: CrossValidationResult) -> str:
    """Machine-readable `cross_validation_markdown`; the pooled row has fold ``all``."""
    rows: list[tuple[Cell, ...]] = [
        (fold.fold, len(fold.cases), fold.dice.mean, fold.dice.sd, fold.dice.n, fold.dice.n_nan)
        for fold in result.folds
    ]
    o = result.overall
    rows.append(("all", o.n + o.n_nan, o.mean, o.sd, o.n, o.n_nan))
    return csv_text(CROSS_VALIDATION_CSV_HEADER, rows)


def cross_validation_cases_csv(result: CrossValidationResult) -> str:
    """One row per validation femur (columns: `CROSS_VALIDATION_CASES_CSV_HEADER`)."""
    rows = [
        (fold.fold, c.case.case_id, c.case.patient, c.case.side, c.dice, math.isnan(c.dice))
        for fold in result.folds
        for c in fold.cases
    ]
    return csv_text(CROSS_VALIDATION_CASES_CSV_HEADER, rows)
