"""Carrying the CT's patient and study identity into the SEG and SR without failing on it or logging it.

DICOM requires a SEG and an SR to carry the patient and study identity of the images they describe;
highdicom copies it from the first source dataset. Two things can go wrong on the way, and both are
handled here rather than in each writer:

* highdicom converts some of the values and raises on one it cannot convert (a PatientBirthDate such as
  ``23.05.1907``, a StudyTime with letters, a PatientSex other than M, F or O), and it reads attributes
  that anonymised data may lack (PatientBirthDate, AccessionNumber, ...). One odd header would then
  stop the whole run. :func:`identity_for_copy` gives a copy of the header in which such values are
  empty (all these attributes are type 2: empty is valid) and missing ones are present and empty.
* highdicom warns about a PatientName without a caret, quoting the name, and pydicom's validation
  quotes an invalid value in its warning. Logs must never carry patient data:
  :func:`identity_for_copy` checks the values without letting pydicom validate them, and the writers
  build their objects inside :func:`patient_values_hidden`, which keeps the name out of highdicom's
  warning and log record.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.datadict import tag_for_keyword
from pydicom.valuerep import DA, TM

logger = logging.getLogger(__name__)

__all__ = ["PATIENT_STUDY_TYPE2", "identity_for_copy", "patient_values_hidden"]

#: Type 2 patient and study attributes highdicom reads from the first source dataset of a SEG or an SR.
PATIENT_STUDY_TYPE2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber",
                       "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName")


def _parses(parse: Callable[[str], object]) -> Callable[[str], bool]:
    def check(text: str) -> bool:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                parse(text)
        except (ValueError, TypeError, OverflowError):
            return False
        return True

    return check


# Attributes whose value highdicom converts, and a check that it will convert it.
_CHECKS: dict[str, Callable[[str], bool]] = {
    "PatientBirthDate": _parses(DA),
    "StudyDate": _parses(DA),
    "StudyTime": _parses(TM),
    "PatientSex": lambda text: text in ("M", "F", "O"),
}


def identity_for_copy(header: Dataset, *, required: Iterable[str] = PATIENT_STUDY_TYPE2) -> Dataset:
    """``header``, or a copy of it, from which highdicom can copy the patient and study identity.

    Attributes of ``required`` that are missing are added empty; a value highdicom would refuse (see
    the module docstring) is emptied, with a warning that names the attribute but not the value. The
    header itself is never changed: where something must change, a deep copy is returned.
    """
    missing = [keyword for keyword in required if keyword not in header]
    unusable = [keyword for keyword, check in _CHECKS.items()
                if keyword in header and not _acceptable(header, keyword, check)]
    if not missing and not unusable:
        return header
    fixed = copy.deepcopy(header)
    for keyword in missing:
        setattr(fixed, keyword, "")
    for keyword in unusable:
        setattr(fixed, keyword, "")
        logger.warning("%s of the CT is not a valid DICOM value; the SEG and SR carry it empty", keyword)
    return fixed


def _acceptable(header: Dataset, keyword: str, check: Callable[[str], bool]) -> bool:
    """Whether the value of ``keyword`` is empty or passes ``check``, read without pydicom's validation."""
    tag = tag_for_keyword(keyword)
    assert tag is not None
    element = header.get_item(tag)
    if element is None:
        return True
    if isinstance(element, RawDataElement):
        raw = element.value
        if raw is None:
            return True
        try:
            text = raw.decode("ascii") if isinstance(raw, bytes) else str(raw)
        except UnicodeDecodeError:
            return False
    elif isinstance(element, DataElement):
        value = element.value
        if value is None or value == "":
            return True
        if not isinstance(value, str):
            # Already converted (a DA or TM object is a str; anything else, e.g. a list, is not usable).
            return False
        text = value
    else:  # pragma: no cover - get_item returns one of the two
        return False
    text = text.strip(" \x00")
    return text == "" or check(text)


class _HidePatientName(logging.Filter):
    """Drops the value from highdicom's 'value of argument "patient_name" is potentially invalid: "..."'."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg if isinstance(record.msg, str) else ""
        if "patient_name" in message or "person_name" in message:
            record.msg = message.split(":", 1)[0] + " (value not shown: patient data)"
            record.args = ()
        return True


_FILTER = _HidePatientName()


@contextmanager
def patient_values_hidden() -> Iterator[None]:
    """Around highdicom's SEG or SR constructor: its warnings about the patient name do not quote it.

    highdicom checks PatientName and reports a name without a caret (``SMITH JOHN``, common in
    practice) both as a Python warning and as a log record, quoting the name. The warning is dropped
    here (the check is about form, and the name is copied as it is); the log record keeps its text
    without the value.
    """
    for name in ("highdicom", "highdicom.base", "highdicom.valuerep"):
        library_logger = logging.getLogger(name)
        if _FILTER not in library_logger.filters:
            library_logger.addFilter(_FILTER)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s)The string .* person name")
        warnings.filterwarnings("ignore", message=r"(?s).*patient_name")
        yield
