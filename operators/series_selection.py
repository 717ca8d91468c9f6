"""Choice of the one CT series to segment among the series of a scanned study.

:class:`SelectionRules` holds the requirements (attribute conditions in the spirit of the MONAI Deploy
App SDK's series-selection JSON, orientation, minimum slice count) and the ranking preferences.
:func:`select_series` applies them to a :class:`~operators.dicom_scan.StudyIndex` using headers only
and returns a :class:`SeriesSelection`: the chosen series and, for every other series, why it was
rejected or ranked lower. The decisions are logged without patient identifiers.

Condition syntax (``SelectionRules.conditions``, keyed by DICOM keyword, evaluated on the series'
first instance; attribute names are case-sensitive keywords, values are matched case-insensitively):

- string on a single-valued attribute: equal, or else a regular-expression search
  (``"Modality": "(?i)^CT$"``);
- list of strings on a multi-valued attribute: each value must be present, a value starting with
  ``"!"`` must be absent (``"ImageType": ["ORIGINAL", "PRIMARY", "!LOCALIZER"]``). Unlike the SDK,
  values are compared whole, not as substrings (``"AXIAL"`` does not match ``"NON_AXIAL"``);
- numbers: ``5`` equal, ``[1, 3]`` inclusive range, ``[2, ">"]`` relational (``>``, ``>=``,
  ``<``, ``<=``, ``!=``);
- ``"ImageOrientationPatient": "Axial"`` (or Coronal, Sagittal) sets :attr:`SelectionRules.orientation`.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
from pydicom.datadict import tag_for_keyword

from operators.dicom_scan import PATIENT_IDENTIFYING_KEYWORDS, SeriesInfo, StudyIndex, slice_normal
from operators.errors import NoSuitableSeriesError, printable

logger = logging.getLogger(__name__)

Orientation = Literal["axial", "coronal", "sagittal"]

# Unit vectors of the LPS axes that an image normal of each orientation points along.
_ORIENTATION_AXES: dict[str, np.ndarray] = {
    "sagittal": np.array([1.0, 0.0, 0.0]),
    "coronal": np.array([0.0, 1.0, 0.0]),
    "axial": np.array([0.0, 0.0, 1.0]),
}
_RELATIONS = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    "!=": lambda a, b: a != b,
}
# Slice spacings closer than this (mm) count as equal in the ranking, so that rounding in
# ImagePositionPatient does not decide between two reconstructions of the same thickness.
_SPACING_TIE_MM = 0.01

_DEFAULT_CONDITIONS: Mapping[str, Any] = MappingProxyType(
    {"Modality": "(?i)^CT$", "ImageType": ("ORIGINAL", "PRIMARY", "!LOCALIZER")}
)


def _validate_condition(keyword: str, condition: Any) -> None:
    if not isinstance(keyword, str) or tag_for_keyword(keyword) is None:
        raise ValueError(f"condition key {keyword!r} is not a DICOM keyword (e.g. 'Modality', 'ImageType')")
    if isinstance(condition, str):
        try:
            re.compile(condition)
        except re.error as exc:
            raise ValueError(f"condition {keyword}: invalid regular expression {condition!r}: {exc}") from exc
    elif isinstance(condition, (list, tuple)):
        if len(condition) == 2 and isinstance(condition[1], str) and not isinstance(condition[0], str):
            if condition[1] not in _RELATIONS:
                raise ValueError(
                    f"condition {keyword}: unknown relation {condition[1]!r}; use one of {list(_RELATIONS)}"
                )
        elif not all(isinstance(v, (str, int, float)) for v in condition):
            raise ValueError(f"condition {keyword}: list items must be strings or numbers")
    elif not isinstance(condition, (int, float, bool)) or condition is None:
        raise ValueError(f"condition {keyword}: unsupported value {condition!r}")


@dataclass(frozen=True)
class SelectionRules:
    """Requirements a series must meet, and how candidates are ranked.

    Attributes
    ----------
    name : str
        Name of the rule set, for logs.
    conditions : mapping of str to value
        Attribute conditions (see the module docstring for the syntax). Default: Modality CT,
        ImageType containing ORIGINAL and PRIMARY and not LOCALIZER.
    orientation : {"axial", "coronal", "sagittal"} or None
        Required image plane; None accepts any.
    max_orientation_deviation_deg : float
        Largest angle, in degrees, between the image normal and the LPS axis of ``orientation``.
    min_slices : int
        Fewest distinct slice positions a series must have (rejects localizers and short scouts).
    bone_kernel_patterns : tuple of str
        Regular expressions (case-insensitive) matched against ConvolutionKernel. When non-empty, a
        series with a matching kernel ranks above one without, after spacing and slice count; e.g.
        ``("BONE", "^B[r]?[6-9]", "^YC", "^FC3[0-5]")``. Empty by default (no kernel preference).

    Notes
    -----
    Ranking among series that meet the requirements: thinnest slice spacing (measured from
    ImagePositionPatient) first, then most slices, then bone kernel (if configured), then lowest
    SeriesNumber, so that the choice is deterministic.
    """

    name: str = "axial CT"
    conditions: Mapping[str, Any] = field(default_factory=lambda: dict(_DEFAULT_CONDITIONS))
    orientation: Orientation | None = "axial"
    max_orientation_deviation_deg: float = 10.0
    min_slices: int = 10
    bone_kernel_patterns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.orientation is not None and self.orientation not in _ORIENTATION_AXES:
            raise ValueError(
                f"orientation must be one of {sorted(_ORIENTATION_AXES)} or None, not {self.orientation!r}"
            )
        if not 0.0 <= self.max_orientation_deviation_deg <= 90.0:
            raise ValueError(
                f"max_orientation_deviation_deg must be within [0, 90], not {self.max_orientation_deviation_deg}"
            )
        if self.min_slices < 1:
            raise ValueError(f"min_slices must be at least 1, not {self.min_slices}")
        if isinstance(self.bone_kernel_patterns, str):
            raise ValueError("bone_kernel_patterns must be a sequence of patterns, not one string")
        for pattern in self.bone_kernel_patterns:
            re.compile(pattern)
        for key, value in self.conditions.items():
            _validate_condition(key, value)
        # Freeze the containers so that a shared rules object cannot change under a caller; lists
        # (as JSON gives them) become tuples so that equal rules compare equal.
        conditions = {k: tuple(v) if isinstance(v, list) else v for k, v in self.conditions.items()}
        object.__setattr__(self, "conditions", MappingProxyType(conditions))
        object.__setattr__(self, "bone_kernel_patterns", tuple(self.bone_kernel_patterns))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SelectionRules:
        """Build rules from a JSON-like mapping.

        Two layouts are accepted: this class's own fields (``name``, ``conditions``, ``orientation``,
        ``max_orientation_deviation_deg``, ``min_slices``, ``bone_kernel_patterns``), or the MONAI
        Deploy SDK's ``{"selections": [{"name": ..., "conditions": {...}}]}`` with exactly one
        selection, whose other keys may carry this class's fields. Fields not given keep their defaults.

        Raises
        ------
        ValueError
            On unknown keys, several SDK selections, or an invalid condition.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"selection rules must be a JSON object, not {type(data).__name__}")
        data = dict(data)
        if "selections" in data:
            selections = data.pop("selections")
            if data:
                raise ValueError(f"unexpected keys beside 'selections': {sorted(data)}")
            if not isinstance(selections, list) or len(selections) != 1:
                raise ValueError("'selections' must hold exactly one selection (one series is segmented)")
            data = dict(selections[0])
        known = {"name", "conditions", "orientation", "max_orientation_deviation_deg", "min_slices",
                 "bone_kernel_patterns"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown selection-rule keys {sorted(unknown)}; known: {sorted(known)}")
        kwargs: dict[str, Any] = {}
        if "conditions" in data:
            conditions = dict(data["conditions"])
            orientation = conditions.pop("ImageOrientationPatient", None)
            if orientation is not None:
                if not isinstance(orientation, str):
                    raise ValueError("condition ImageOrientationPatient must be 'Axial', 'Coronal' or 'Sagittal'")
                kwargs["orientation"] = orientation.strip().lower()
            kwargs["conditions"] = conditions
        for key in ("name", "max_orientation_deviation_deg", "min_slices"):
            if key in data:
                kwargs[key] = data[key]
        if "orientation" in data:
            value = data["orientation"]
            kwargs["orientation"] = None if value is None else str(value).strip().lower()
        if "bone_kernel_patterns" in data:
            kwargs["bone_kernel_patterns"] = tuple(data["bone_kernel_patterns"])
        return cls(**kwargs)

    @classmethod
    def from_json(cls, source: str | Path) -> SelectionRules:
        """Build rules from a JSON file path or a JSON text (see :meth:`from_dict`)."""
        if isinstance(source, Path) or (isinstance(source, str) and not source.lstrip().startswith("{")):
            path = Path(source)
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise ValueError(f"cannot read selection rules {path}: {exc.strerror or exc}") from exc
        else:
            text = source
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"selection rules are not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, readable by :meth:`from_dict`."""
        return {
            "name": self.name,
            "conditions": {k: list(v) if isinstance(v, tuple) else v for k, v in self.conditions.items()},
            "orientation": self.orientation,
            "max_orientation_deviation_deg": self.max_orientation_deviation_deg,
            "min_slices": self.min_slices,
            "bone_kernel_patterns": list(self.bone_kernel_patterns),
        }

    def with_options(self, **changes: Any) -> SelectionRules:
        """Copy with some fields changed (validated like a new instance)."""
        return replace(self, **changes)


#: Rules used when none are given: original primary axial CT, at least 10 slices, thinnest first.
DEFAULT_RULES = SelectionRules()


@dataclass(frozen=True)
class SeriesDecision:
    """Outcome for one series.

    Attributes
    ----------
    series : SeriesInfo
        The series concerned.
    status : {"selected", "ranked lower", "rejected"}
        What happened to it.
    reason : str
        One line, without patient identifiers.
    """

    series: SeriesInfo
    status: Literal["selected", "ranked lower", "rejected"]
    reason: str


@dataclass(frozen=True)
class SeriesSelection:
    """Result of :func:`select_series`.

    Attributes
    ----------
    series : SeriesInfo
        The chosen series.
    candidates : tuple of SeriesInfo
        Every series that meets the rules, best first (``candidates[0] is series``). A caller may fall
        back to the next one when the best cannot be stacked into a volume.
    decisions : tuple of SeriesDecision
        One per series in the index: the chosen one first, then the ranked-lower candidates in rank
        order, then the rejected series.
    rules : SelectionRules
        The rules applied.
    """

    series: SeriesInfo
    candidates: tuple[SeriesInfo, ...]
    decisions: tuple[SeriesDecision, ...]
    rules: SelectionRules


def select_series(index: StudyIndex, rules: SelectionRules = DEFAULT_RULES) -> SeriesSelection:
    """Choose the series to segment, header-only.

    Parameters
    ----------
    index : StudyIndex
        Result of :func:`operators.dicom_scan.scan_dicom_folder`. Series of all studies compete.
    rules : SelectionRules, optional
        Requirements and ranking; :data:`DEFAULT_RULES` by default.

    Returns
    -------
    SeriesSelection
        The chosen series, the ranked candidates and a decision with a reason for every series.

    Raises
    ------
    operators.errors.NoSuitableSeriesError
        If no series meets the rules; the message names what was found (modalities and counts).
    """
    rejected: list[SeriesDecision] = []
    candidates: list[SeriesInfo] = []
    for series in index.all_series():
        reason = rejection_reason(series, rules)
        if reason is None:
            candidates.append(series)
        else:
            rejected.append(SeriesDecision(series, "rejected", reason))

    if not candidates:
        for decision in rejected:
            logger.info("series rejected: %s: %s", decision.series.describe(), decision.reason)
        reasons = Counter(d.reason for d in rejected)
        listing = "; ".join(
            f"{reason} ({count} series)" if count > 1 else reason for reason, count in reasons.most_common(3)
        )
        raise NoSuitableSeriesError(
            f"no series meets the rules '{rules.name}' in {index.root}; found {_summarise(index)}; "
            f"rejected because: {listing}"
        )

    ranked = sorted(candidates, key=lambda s: _rank_key(s, rules))
    best = ranked[0]
    decisions = [SeriesDecision(best, "selected", _describe_rank(best, rules))]
    for other in ranked[1:]:
        decisions.append(SeriesDecision(other, "ranked lower", _why_lower(other, best, rules)))
    decisions.extend(rejected)

    studies = {s.study_instance_uid for s in ranked}
    if len(studies) > 1:
        logger.warning("candidate series come from %d different studies; choosing across them", len(studies))
    for decision in decisions:
        logger.info("%s %s: %s", decision.status, decision.series.describe(), decision.reason)
    return SeriesSelection(series=best, candidates=tuple(ranked), decisions=tuple(decisions), rules=rules)


def rejection_reason(series: SeriesInfo, rules: SelectionRules) -> str | None:
    """Why ``series`` fails ``rules`` (one line, no patient identifiers), or None when it meets them."""
    for keyword, condition in rules.conditions.items():
        reason = _condition_failure(series, keyword, condition)
        if reason is not None:
            return reason
    if series.is_multiframe:
        return (
            "multi-frame image (e.g. Enhanced CT) is not supported; "
            "export the series as classic single-frame CT images"
        )
    colour = _colour_reason(series)
    if colour is not None:
        return colour
    for instance in sorted(series.instances, key=lambda i: str(i.relative_path)):
        lacking = [keyword for keyword, value in (("Rows", instance.rows),
                                                  ("ImagePositionPatient", instance.image_position),
                                                  ("ImageOrientationPatient", instance.image_orientation))
                   if value is None]
        if lacking:
            return (
                "not an image series with patient geometry: "
                f"{instance.relative_path} lacks {', '.join(lacking)} (or has an invalid value)"
            )
    if rules.orientation is not None:
        deviation = _orientation_deviation_deg(series, rules.orientation)
        if deviation is None:
            return "ImageOrientationPatient does not define an image plane"
        if deviation > rules.max_orientation_deviation_deg:
            return (
                f"not {rules.orientation}: image normal is {deviation:.1f} deg from the "
                f"{rules.orientation} axis (tolerance {rules.max_orientation_deviation_deg:g} deg)"
            )
    n_positions = series.n_positions
    if n_positions < rules.min_slices:
        return (
            f"{n_positions} distinct slice position{'s' if n_positions != 1 else ''}, "
            f"fewer than the {rules.min_slices} required"
        )
    return None


#: Photometric interpretations of a greyscale image (CT is MONOCHROME2; MONOCHROME1 only inverts the display).
_GREYSCALE = frozenset({"MONOCHROME1", "MONOCHROME2"})


def _colour_reason(series: SeriesInfo) -> str | None:
    """Why the series is not greyscale (colour or palette images), from its headers; None when it is."""
    for instance in series.instances:
        header = instance.header
        try:
            samples = header.get("SamplesPerPixel")
            photometric = str(header.get("PhotometricInterpretation", "") or "").strip().upper()
        except Exception:  # noqa: BLE001 - an unparsable value: left to the decoder, which names the file
            continue
        try:
            samples = int(samples) if samples not in (None, "") else 1
        except (TypeError, ValueError):
            samples = 1
        if samples != 1 or (photometric and photometric not in _GREYSCALE):
            return (
                f"not a greyscale image: {instance.relative_path} is {printable(photometric or 'colour')} with "
                f"{samples} sample{'s' if samples != 1 else ''} per pixel"
            )
    return None


def _condition_failure(series: SeriesInfo, keyword: str, condition: Any) -> str | None:
    """Why the series' attribute fails one condition, or None when it passes."""
    hidden = keyword in PATIENT_IDENTIFYING_KEYWORDS
    try:
        value = series.header.get(keyword)
    except Exception:  # noqa: BLE001 - an unparsable value fails the condition like a missing one
        value = None
    if value is None or value == "":
        return f"{keyword} is missing"
    shown = "<hidden>" if hidden else repr(_display(value))

    multi = not isinstance(value, (str, bytes, int, float)) and isinstance(value, Sequence)
    if isinstance(condition, str):
        if multi:
            return _contains_failure(keyword, [str(v) for v in value], [condition], shown)
        if _matches_number(value):
            return None if re.fullmatch(condition, str(value)) else f"{keyword} is {shown}, rule wants {condition!r}"
        text = str(value)
        if text.casefold() == condition.casefold() or re.search(condition, text, re.IGNORECASE):
            return None
        return f"{keyword} is {shown}, rule wants {condition!r}"
    if isinstance(condition, (list, tuple)):
        if len(condition) == 2 and isinstance(condition[1], str) and not isinstance(condition[0], str):
            number = _to_float(value)
            if number is None:
                return f"{keyword} is {shown}, not a number"
            if _RELATIONS[condition[1]](number, float(condition[0])):
                return None
            return f"{keyword} is {shown}, rule wants {condition[1]} {condition[0]}"
        if len(condition) == 2 and all(isinstance(v, (int, float)) for v in condition):
            number = _to_float(value)
            if number is None:
                return f"{keyword} is {shown}, not a number"
            low, high = float(condition[0]), float(condition[1])
            if low <= number <= high:
                return None
            return f"{keyword} is {shown}, rule wants [{low:g}, {high:g}]"
        values = [str(v) for v in value] if multi else [str(value)]
        return _contains_failure(keyword, values, [str(c) for c in condition], shown)
    number = _to_float(value)
    if number is not None and number == float(condition):
        return None
    return f"{keyword} is {shown}, rule wants {condition!r}"


def _contains_failure(keyword: str, values: list[str], terms: list[str], shown: str) -> str | None:
    present = {v.strip().casefold() for v in values}
    for term in terms:
        term_cf = term.strip().casefold()
        if term_cf.startswith("!"):
            if term_cf[1:] in present:
                return f"{keyword} is {shown}, rule excludes {term[1:]!r}"
        elif term_cf not in present:
            return f"{keyword} is {shown}, rule wants {term!r}"
    return None


def _display(value: Any) -> Any:
    if isinstance(value, (str, int, float)):
        return value
    try:
        return [str(v) for v in value]
    except TypeError:
        return str(value)


def _matches_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _to_float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _orientation_deviation_deg(series: SeriesInfo, orientation: str) -> float | None:
    iop = series.image_orientation
    if iop is None:
        return None
    try:
        normal = slice_normal(iop)
    except ValueError:
        return None
    cosine = min(1.0, abs(float(normal @ _ORIENTATION_AXES[orientation])))
    return math.degrees(math.acos(cosine))


def _has_bone_kernel(series: SeriesInfo, rules: SelectionRules) -> bool:
    return any(
        re.search(pattern, kernel, re.IGNORECASE)
        for pattern in rules.bone_kernel_patterns
        for kernel in series.convolution_kernel
    )


def _rank_key(series: SeriesInfo, rules: SelectionRules) -> tuple[Any, ...]:
    spacing = series.slice_spacing_mm
    spacing_key = math.inf if spacing is None else round(spacing / _SPACING_TIE_MM)
    bone_key = 0 if (rules.bone_kernel_patterns and _has_bone_kernel(series, rules)) else 1
    number = series.series_number
    return (spacing_key, -series.n_positions, bone_key, number is None, number or 0, series.key)


def _describe_rank(series: SeriesInfo, rules: SelectionRules) -> str:
    spacing = series.slice_spacing_mm
    text = f"{series.n_positions} slices, spacing {spacing:.3g} mm" if spacing else f"{series.n_positions} slices"
    if rules.bone_kernel_patterns:
        text += ", bone kernel" if _has_bone_kernel(series, rules) else ", no bone kernel"
    return text


def _why_lower(series: SeriesInfo, best: SeriesInfo, rules: SelectionRules) -> str:
    key, best_key = _rank_key(series, rules), _rank_key(best, rules)
    if key[0] != best_key[0] and series.slice_spacing_mm is None:
        return "slice spacing unknown (fewer than two slice positions)"
    if key[0] != best_key[0]:
        return (
            f"slice spacing {series.slice_spacing_mm:.3g} mm is thicker than "
            f"{best.slice_spacing_mm:.3g} mm of the selected series"
        )
    if key[1] != best_key[1]:
        return f"{series.n_positions} slices, fewer than {best.n_positions} of the selected series"
    if key[2] != best_key[2]:
        return "same spacing and slice count, but not a bone kernel"
    return "same spacing, slice count and kernel preference; higher SeriesNumber"


def _summarise(index: StudyIndex) -> str:
    """'2 series: 1 MR (20 images), 1 SR (1 image)', without patient identifiers."""
    series = index.all_series()
    by_modality: dict[str, list[int]] = {}
    for s in series:
        by_modality.setdefault(s.modality or "unknown modality", []).append(s.n_instances)
    parts = [
        f"{len(counts)} {modality} ({sum(counts)} image{'s' if sum(counts) != 1 else ''})"
        for modality, counts in sorted(by_modality.items())
    ]
    return f"{len(series)} series: " + ", ".join(parts)
