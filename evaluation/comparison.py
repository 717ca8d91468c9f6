"""Evaluate one label folder against another, case by case, and summarise over femurs.

A comparison has a *test* label set (the prediction, or an annotator when annotators are compared
with each other) and a *reference* label set. Cases are matched by case id (file name without
suffix); every pair of volumes must share its voxel grid.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluation.case_metrics import CaseMetrics, EvaluationSettings, LabelValues, evaluate_case
from evaluation.label_io import check_same_geometry, list_label_files, read_label_volume
from evaluation.statistics import MeanSD, mean_sd
from operators.errors import CaseMismatchError

logger = logging.getLogger(__name__)

_MAX_NAMED_CASES = 5


@dataclass(frozen=True)
class Comparison:
    """Per-femur metrics of a test label set against a reference label set.

    Attributes
    ----------
    test_name, reference_name : str
        Names of the two label sets (e.g. ``"prediction"`` and ``"radiologist1"``).
    cases : tuple of CaseMetrics
        One entry per femur, sorted by case id.
    """

    test_name: str
    reference_name: str
    cases: tuple[CaseMetrics, ...]

    @property
    def title(self) -> str:
        """``"<test> vs <reference>"``."""
        return f"{self.test_name} vs {self.reference_name}"


@dataclass(frozen=True)
class ComparisonSummary:
    """Summary of a comparison over femurs.

    Attributes
    ----------
    femurs : int
        Femurs evaluated.
    dice, nsd : MeanSD
        Mean ± SD over non-NaN values; ``n_nan`` counts the true negatives.
    volume_error_ml : MeanSD
        Mean ± SD of test minus reference lesion volume in ml, over all femurs.
    lesions_total, lesions_detected : int
        Reference lesions and detected reference lesions, pooled over femurs.
    false_positives : int
        False-positive predicted components, pooled over femurs.
    femurs_with_cyst, femurs_cyst_called_tumour : int
        Femurs whose reference has a cyst, and of those the ones with a cyst called tumour.
    """

    femurs: int
    dice: MeanSD
    nsd: MeanSD
    volume_error_ml: MeanSD
    lesions_total: int
    lesions_detected: int
    false_positives: int
    femurs_with_cyst: int
    femurs_cyst_called_tumour: int

    @property
    def sensitivity(self) -> float:
        """Detected / total reference lesions; NaN without reference lesions."""
        return self.lesions_detected / self.lesions_total if self.lesions_total else math.nan

    @property
    def false_positives_per_femur(self) -> float:
        """False-positive components per femur; NaN without femurs."""
        return self.false_positives / self.femurs if self.femurs else math.nan


def summarise(cases: Iterable[CaseMetrics]) -> ComparisonSummary:
    """Pool the per-femur metrics of a comparison."""
    cases = list(cases)
    return ComparisonSummary(
        femurs=len(cases),
        dice=mean_sd(c.dice for c in cases),
        nsd=mean_sd(c.nsd for c in cases),
        volume_error_ml=mean_sd(c.volume.error_ml for c in cases),
        lesions_total=sum(c.detection.total for c in cases),
        lesions_detected=sum(c.detection.detected for c in cases),
        false_positives=sum(c.detection.false_positives for c in cases),
        femurs_with_cyst=sum(c.cyst.cysts > 0 for c in cases),
        femurs_cyst_called_tumour=sum(bool(c.cyst.called_tumour) for c in cases),
    )


def compare_folders(
    test_dir: Path,
    reference_dir: Path,
    *,
    test_name: str = "prediction",
    reference_name: str = "reference",
    settings: EvaluationSettings = EvaluationSettings(),
    require_all_reference_cases: bool = True,
) -> Comparison:
    """Evaluate every case of `reference_dir` against the same case in `test_dir`.

    Parameters
    ----------
    test_dir, reference_dir : pathlib.Path
        Label folders (``<case_id>.nii.gz`` / ``.nii`` / ``.nrrd``).
    test_name, reference_name : str
        Names used in messages and tables.
    settings : EvaluationSettings
        Label values, NSD tolerance, detection rule, geometry tolerance.
    require_all_reference_cases : bool
        True (prediction vs reference): a reference case without a test file is an error, because
        leaving it out would silently improve the scores. False (annotator vs annotator): only the
        cases both sets hold are compared.

    Returns
    -------
    Comparison

    Raises
    ------
    InputError
        Unreadable folders or files.
    CaseMismatchError
        Missing test cases, or no case in common.
    GeometryMismatchError
        A case whose two volumes are not on the same voxel grid.
    """
    test_files = list_label_files(test_dir)
    reference_files = list_label_files(reference_dir)
    missing = sorted(set(reference_files) - set(test_files))
    extra = sorted(set(test_files) - set(reference_files))
    if missing and require_all_reference_cases:
        raise CaseMismatchError(
            f"{test_name} is missing {len(missing)} case(s) of reference '{reference_name}': {_name_cases(missing)}"
        )
    common = sorted(set(test_files) & set(reference_files))
    if not common:
        raise CaseMismatchError(f"{test_name} and {reference_name} have no case in common")
    if extra:
        logger.info("%d case(s) of %s have no %s label and are not evaluated: %s",
                    len(extra), test_name, reference_name, _name_cases(extra))
    if missing:
        logger.info("%d case(s) of %s have no %s label and are not evaluated: %s",
                    len(missing), reference_name, test_name, _name_cases(missing))

    # Values other than background, lesion and cyst usually mean the label convention differs
    # (e.g. lesion = 3 in the synthetic studies); report them once per label set, not per file.
    unexpected: dict[str, set[int]] = {test_name: set(), reference_name: set()}
    files_with_unexpected = {test_name: 0, reference_name: 0}
    cases = []
    for case_id in common:
        test = read_label_volume(test_files[case_id])
        reference = read_label_volume(reference_files[case_id])
        check_same_geometry(
            test, reference, case_id=case_id, test_name=test_name, reference_name=reference_name,
            tolerance=settings.geometry,
        )
        for name, volume in ((test_name, test), (reference_name, reference)):
            other = _label_values(volume.array) - settings.labels.known
            if other:
                unexpected[name] |= other
                files_with_unexpected[name] += 1
        metrics = evaluate_case(
            test.array, reference.array, case_id=case_id, spacing=reference.spacing, settings=settings
        )
        logger.debug("%s %s: dice=%.4f nsd=%.4f", case_id, f"{test_name} vs {reference_name}", metrics.dice, metrics.nsd)
        cases.append(metrics)
    for name, values in unexpected.items():
        if values:
            logger.warning(
                "%s (in %s vs %s): %d of %d file(s) hold label values %s besides %s; they count as background "
                "(check the lesion and cyst label values)",
                name, test_name, reference_name, files_with_unexpected[name], len(common), sorted(values),
                _describe_labels(settings.labels),
            )
    return Comparison(test_name=test_name, reference_name=reference_name, cases=tuple(cases))


def compare_annotators(
    references: Mapping[str, Path], *, settings: EvaluationSettings = EvaluationSettings()
) -> list[Comparison]:
    """Compare every pair of reference label sets (in the given order: first vs second, ...).

    Only the cases both sets of a pair hold are compared. Dice and NSD are symmetric; volume error
    and detection take the first set of a pair as the test.

    Parameters
    ----------
    references : mapping of str to pathlib.Path
        Name -> label folder, at least two entries for any pair to exist.
    settings : EvaluationSettings
        As for `compare_folders`.
    """
    return [
        compare_folders(
            references[a], references[b], test_name=a, reference_name=b, settings=settings,
            require_all_reference_cases=False,
        )
        for a, b in itertools.combinations(references, 2)
    ]


def _label_values(array: np.ndarray) -> set[int]:
    if array.dtype == np.uint8:
        # A histogram is much faster than np.unique's sort on a femur volume.
        return {int(v) for v in np.flatnonzero(np.bincount(array.ravel(), minlength=256))}
    return {int(v) for v in np.unique(array)}


def _describe_labels(labels: LabelValues) -> str:
    text = f"background (0), lesion ({labels.lesion})"
    return text + (f", cyst ({labels.cyst})" if labels.cyst is not None else "")


def _name_cases(case_ids: list[str]) -> str:
    shown = ", ".join(case_ids[:_MAX_NAMED_CASES])
    return shown + (f" and {len(case_ids) - _MAX_NAMED_CASES} more" if len(case_ids) > _MAX_NAMED_CASES else "")
