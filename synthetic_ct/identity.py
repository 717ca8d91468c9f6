"""Synthetic patient identity and study dates.

Identities are invented (random names from common given and family names, a random ID), so that
the product's de-identification and logging rules are exercised on realistic-looking values.
They go into the DICOM files only, never into ``truth.json`` or logs.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import numpy as np
import uuid

logger = logging.getLogger(__name__)

#: Namespace of the generator's name-based UIDs.
_UID_NAMESPACE = uuid.UUID("6f1b7e8c-2d0a-5c3e-9a41-3e5d2b7c9f10")

_FAMILY = (
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez "
    "Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris "
    "Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill "
    "Flores Green Adams Nelson Baker Hall Rivera Campbell Mitchell Carter Roberts Muller Schmidt "
    "Schneider Fischer Weber Meyer Wagner Becker Schulz Hoffmann Rossi Russo Ferrari Esposito "
    "Bianchi Romano Colombo Dubois Durand Lefebvre Moreau Laurent Simon Michel Cohen Levi Mizrahi "
    "Peretz Biton Friedman Kowalski Nowak Wisniewski Jansen DeVries Bakker Visser Smit Novak "
    "Svoboda Horvat Kovacs Nagy Papadopoulos Yilmaz Kaya Demir Sato Suzuki Takahashi Tanaka Kim "
    "Park Choi Wang Li Zhang Liu Chen Yang Huang Singh Kumar Sharma Patel Silva Santos Oliveira"
).split()
_GIVEN_F = (
    "Mary Patricia Jennifer Linda Elizabeth Barbara Susan Jessica Sarah Karen Nancy Lisa Betty "
    "Margaret Sandra Ashley Dorothy Anna Maria Sofia Emma Olga Ruth Miriam Noa Yael Tamar Sara "
    "Leah Rachel Hannah Ingrid Greta Chiara Giulia Claire Camille Marta Ewa Eva Yuki Mei Aiko "
    "Priya Ana Lucia Carmen Rosa Helena Irene Judith Agnes Ursula Monika"
).split()
_GIVEN_M = (
    "James Robert John Michael David William Richard Joseph Thomas Charles Daniel Matthew Anthony "
    "Mark Paul Steven Andrew Kenneth Yosef Avraham Moshe Yitzhak Eitan Noam Ari Hans Klaus Jurgen "
    "Marco Luca Giovanni Pierre Jean Louis Jan Piotr Tomasz Pavel Istvan Hiroshi Kenji Wei Jun "
    "Rahul Arjun Carlos Jose Luis Miguel Pedro Ahmed Omar Ivan Nikolai Erik Lars"
).split()


@dataclass(frozen=True)
class PatientIdentity:
    """Identity and dates written into the DICOM headers.

    Attributes
    ----------
    name
        DICOM person name ``Family^Given``.
    patient_id
        Medical record number.
    birth_date, study_date
        ``YYYYMMDD``.
    study_time
        ``HHMMSS.ffffff``.
    sex
        ``"F"`` or ``"M"``.
    age
        ``nnnY`` (DICOM AS).
    accession_number
        Radiology accession number.
    weight, size
        kg and m.
    """

    name: str
    patient_id: str
    birth_date: str
    study_date: str
    study_time: str
    sex: str
    age: str
    accession_number: str
    weight: float
    size: float


def draw_identity(rng: np.random.Generator, *, sex: str, age: int, height_mm: float, bmi: float) -> PatientIdentity:
    """Invent an identity consistent with the drawn patient (sex, age, stature, weight)."""
    given = _GIVEN_F if sex == "F" else _GIVEN_M
    family = str(rng.choice(_FAMILY))
    first = str(rng.choice(given))
    middle = str(rng.choice(given))[0] if rng.uniform() < 0.3 else ""
    name = f"{family}^{first}" + (f"^{middle}" if middle else "")
    pid = str(int(rng.integers(10_000_000, 99_999_999)))
    start = dt.date(2014, 1, 1)
    study = start + dt.timedelta(days=int(rng.integers(0, 11 * 365)))
    days_before = int(age * 365.25 + rng.integers(0, 365))
    birth = study - dt.timedelta(days=days_before)
    seconds = int(rng.integers(7 * 3600, 22 * 3600))
    micro = int(rng.integers(0, 1_000_000))
    study_time = f"{seconds // 3600:02d}{(seconds // 60) % 60:02d}{seconds % 60:02d}.{micro:06d}"
    size = height_mm / 1000.0
    weight = round(bmi * size * size, 1)
    return PatientIdentity(
        name=name,
        patient_id=pid,
        birth_date=birth.strftime("%Y%m%d"),
        study_date=study.strftime("%Y%m%d"),
        study_time=study_time,
        sex=sex,
        age=f"{age:03d}Y",
        accession_number=f"A{int(rng.integers(10**8, 10**9 - 1))}",
        weight=weight,
        size=round(size, 2),
    )


def derived_uid(*parts: object) -> str:
    """A UID (2.25 form) derived deterministically from ``parts``.

    The same phantom always gets the same UIDs, and any difference in seed or configuration
    gives different ones.
    """
    # A name-based (version 5) UUID in the 2.25 root: deterministic and globally unique.
    name = "\x1f".join(str(p) for p in parts)
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"
