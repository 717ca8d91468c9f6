"""Which series of a study the application should see, and therefore which studies are processed.

A study qualifies when at least one of its series qualifies. A series qualifies when

1. its Modality is one of ``modalities`` (CT),
2. its ImageType has none of ``exclude_image_types`` (localizers/topograms are not volumes),
3. it has at least ``min_instances`` images, and
4. it shows the femurs, by any one of: BodyPartExamined in ``body_parts``; SeriesDescription matching one
   of ``description_patterns`` (regular expressions, case-insensitive); or, when ``min_extent_mm`` is set,
   a scan length along the slice normal of at least that many millimetres. With none of the three
   configured, step 4 is skipped.

The same rules serve both entry points: the watcher describes series from Orthanc's metadata, the C-STORE
receiver from the files it received (:func:`series_from_datasets`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pydicom

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeriesInfo:
    """What the rules look at in one series (no patient data).

    ``extent_mm`` is the distance in millimetres between the first and last image positions projected on
    the slice normal, None when unknown (no geometry).
    """

    series_uid: str
    modality: str
    body_part: str = ""
    description: str = ""
    image_types: tuple[str, ...] = ()
    instances: int = 0
    extent_mm: float | None = None


@dataclass(frozen=True)
class SeriesRules:
    """Selection rules (see the module docstring); the defaults suit lower-body and leg CT."""

    modalities: tuple[str, ...] = ("CT",)
    exclude_image_types: tuple[str, ...] = ("LOCALIZER",)
    min_instances: int = 20
    body_parts: tuple[str, ...] = ("PELVIS", "HIP", "LEG", "FEMUR", "THIGH", "LOWEXM", "LOWER LIMB",
                                   "EXTREMITY", "WHOLEBODY", "WHOLE BODY", "ABDOMENPELVIS", "CAP", "TAP")
    description_patterns: tuple[str, ...] = (r"femur|femoral|hip|pelvi|thigh|leg|lower.?(limb|ext)|whole.?body",)
    min_extent_mm: float | None = None
    _compiled: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        try:
            compiled = tuple(re.compile(p, re.IGNORECASE) for p in self.description_patterns)
        except re.error as error:
            raise ValueError(f"invalid description pattern: {error}") from None
        object.__setattr__(self, "_compiled", compiled)

    def reasons_against(self, series: SeriesInfo) -> list[str]:
        """Why ``series`` does not qualify; an empty list when it does."""
        reasons: list[str] = []
        if series.modality.upper() not in {m.upper() for m in self.modalities}:
            reasons.append(f"modality {series.modality or '(none)'}")
        excluded = {t.upper() for t in self.exclude_image_types} & {t.upper() for t in series.image_types}
        if excluded:
            reasons.append(f"image type {'/'.join(sorted(excluded))}")
        if series.instances < self.min_instances:
            reasons.append(f"{series.instances} image(s) < {self.min_instances}")
        if not self._shows_femurs(series):
            reasons.append("body part, description and length do not indicate the femurs")
        return reasons

    def qualifies(self, series: SeriesInfo) -> bool:
        """True when the series should be given to the application."""
        return not self.reasons_against(series)

    def select(self, series: Iterable[SeriesInfo]) -> list[SeriesInfo]:
        """The qualifying series, in the given order; logs why each other series was left out."""
        chosen: list[SeriesInfo] = []
        for s in series:
            reasons = self.reasons_against(s)
            if reasons:
                logger.info("series %s left out: %s", s.series_uid, "; ".join(reasons))
            else:
                chosen.append(s)
        return chosen

    def _shows_femurs(self, series: SeriesInfo) -> bool:
        checks_configured = bool(self.body_parts or self._compiled or self.min_extent_mm is not None)
        if not checks_configured:
            return True
        if series.body_part and series.body_part.strip().upper() in {b.upper() for b in self.body_parts}:
            return True
        if series.description and any(p.search(series.description) for p in self._compiled):
            return True
        return (self.min_extent_mm is not None and series.extent_mm is not None
                and series.extent_mm >= self.min_extent_mm)


def scan_extent_mm(positions: Sequence[Sequence[float]], orientation: Sequence[float] | None) -> float | None:
    """Length covered by image positions along the slice normal (mm); None when it cannot be computed.

    ``positions`` are ImagePositionPatient values (LPS, mm); ``orientation`` is ImageOrientationPatient
    (row then column direction cosines). Without an orientation the axial normal (0, 0, 1) is assumed.
    """
    if len(positions) == 0:
        return None
    try:
        points = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
        if orientation is not None and len(orientation) == 6:
            cosines = np.asarray(orientation, dtype=np.float64)
            normal = np.cross(cosines[:3], cosines[3:])
        else:
            normal = np.array([0.0, 0.0, 1.0])
    except (TypeError, ValueError):
        return None
    projected = points @ normal
    return float(projected.max() - projected.min())


def series_from_datasets(datasets: Iterable[pydicom.Dataset]) -> list[SeriesInfo]:
    """Describe the series of a set of DICOM headers (pixel data not needed), in order of appearance."""
    groups: dict[str, list[pydicom.Dataset]] = {}
    for ds in datasets:
        uid = str(ds.get("SeriesInstanceUID", ""))
        if uid:
            groups.setdefault(uid, []).append(ds)
    infos: list[SeriesInfo] = []
    for uid, members in groups.items():
        first = members[0]
        positions = [list(map(float, ds.ImagePositionPatient)) for ds in members if "ImagePositionPatient" in ds]
        orientation = first.get("ImageOrientationPatient")
        infos.append(SeriesInfo(
            series_uid=uid,
            modality=str(first.get("Modality", "")),
            body_part=str(first.get("BodyPartExamined", "")),
            description=str(first.get("SeriesDescription", "")),
            image_types=tuple(str(t) for t in _as_list(first.get("ImageType"))),
            instances=len(members),
            extent_mm=scan_extent_mm(positions, [float(v) for v in orientation] if orientation else None),
        ))
    return infos


def _as_list(value: object) -> list[object]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v for v in value.split("\\") if v]
    try:
        return list(value)  # type: ignore[call-overload]
    except TypeError:
        return [value]
