"""Case identifiers of femur-only volumes: ``<patient>_<side>``.

The dataset builder names every femur-only volume after the patient and the patient's side of the
femur, e.g. ``FEMUR0007_left``. Tables report the two parts in their own columns so that results can
be grouped by patient (both femurs of a patient belong to the same split) or by side.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Side = Literal["left", "right"]

# The side is the last underscore-separated token; matching is case-insensitive because some
# annotation tools upper-case file names, and the patient part keeps its own spelling.
_CASE_ID = re.compile(r"^(?P<patient>.+)_(?P<side>left|right)$", re.IGNORECASE)


@dataclass(frozen=True)
class CaseId:
    """A parsed case identifier.

    Attributes
    ----------
    case_id : str
        The identifier as found in the file name (without extension).
    patient : str
        The patient part; the whole identifier when it carries no side.
    side : {"left", "right"} or None
        The patient's side of the femur, or None when the identifier does not name one.
    """

    case_id: str
    patient: str
    side: Side | None


def parse_case_id(case_id: str) -> CaseId:
    """Split a case identifier into patient and side.

    Parameters
    ----------
    case_id : str
        A file name without extension, e.g. ``"FEMUR0007_left"``.

    Returns
    -------
    CaseId
        ``patient="FEMUR0007", side="left"`` for the example; identifiers without a trailing
        ``_left``/``_right`` are tolerated and give ``patient=case_id, side=None``.

    Raises
    ------
    ValueError
        If `case_id` is empty.
    """
    if not case_id:
        raise ValueError("case id is empty")
    match = _CASE_ID.match(case_id)
    if match is None:
        return CaseId(case_id=case_id, patient=case_id, side=None)
    side: Side = "left" if match.group("side").lower() == "left" else "right"
    return CaseId(case_id=case_id, patient=match.group("patient"), side=side)
