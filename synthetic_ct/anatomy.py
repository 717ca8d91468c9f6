"""The patient: draws of size, shape, pose and density, and the models built from them.

Everything here is in millimetres, degrees and HU (at 120 kVp). Population ranges follow the
anatomical literature (femoral length about 26.6 % of stature, neck-shaft angle 120-140 degrees,
anteversion 0-30 degrees, head diameter 40-54 mm); both sides share the patient's values with a
small left-right asymmetry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .femur import SIDES, FemurModel, FemurParams, canonical_geometry, femur_frame
from .frames import rotation
from .pelvis import HipJoint, PelvisParams

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LegPose:
    """Position of one leg in the body frame (mm, degrees).

    Attributes
    ----------
    hip_centre
        Femoral head centre, body frame.
    knee_direction
        Unit vector from the head centre to the knee centre, body frame.
    external_rotation
        Outward rotation of the leg about its mechanical axis.
    """

    hip_centre: np.ndarray
    knee_direction: np.ndarray
    external_rotation: float


@dataclass(frozen=True)
class Patient:
    """Drawn characteristics of the synthetic patient.

    Attributes
    ----------
    sex
        ``"F"`` or ``"M"``.
    age
        Years.
    height
        Stature, mm.
    bmi
        Body-mass index, kg/m^2.
    femurs
        :class:`~synthetic_ct.femur.FemurParams` per side.
    legs
        :class:`LegPose` per side.
    hips
        :class:`~synthetic_ct.pelvis.HipJoint` per side (body frame).
    pelvis
        :class:`~synthetic_ct.pelvis.PelvisParams`.
    knee_gap, patella_height
        Knee joint space and patella height above the joint line, mm, per side.
    """

    sex: str
    age: int
    height: float
    bmi: float
    femurs: dict[str, FemurParams]
    legs: dict[str, LegPose]
    hips: dict[str, HipJoint]
    pelvis: PelvisParams
    knee_gap: dict[str, float]
    patella_height: dict[str, float]


def draw_patient(rng: np.random.Generator, *, sex: str | None, joint_gap: float) -> Patient:
    """Draw a patient.

    Parameters
    ----------
    rng
        The anatomy's random stream.
    sex
        Forced sex, or ``None`` to draw it.
    joint_gap
        Mean hip joint gap (mm); each hip varies a little around it.
    """
    u, n = rng.uniform, rng.normal
    drawn_sex = "F" if u() < 0.5 else "M"
    sex = sex or drawn_sex
    female = sex == "F"
    age = int(np.clip(round(n(64, 13)), 25, 92))
    elderly = age >= 65
    height = float(np.clip(n(1630 if female else 1760, 65), 1480, 1980))
    bmi = float(np.clip(np.exp(n(np.log(26.5), 0.17)), 17.0, 45.0))
    fl = 0.266 * height + n(0, 9)
    sc = fl / 450.0

    base = dict(
        length=fl,
        head_radius=(u(20.5, 23.5) if female else u(23.0, 26.5)) * sc**0.5,
        neck_shaft_angle=float(np.clip(n(129, 5), 120, 140)),
        anteversion=float(np.clip(n(13, 6), 0, 30)),
        offset=float(np.clip(n(40, 4) * sc, 32, 50)),
        shaft_radius=(u(11.5, 13.3) if female else u(12.8, 14.8)) * sc**0.5,
        bow=u(4.0, 12.0),
        linea_aspera=u(1.5, 4.0),
        condyle_half_width=(u(35.0, 39.0) if female else u(39.0, 44.0)) * sc**0.5,
        cortex_diaphysis=u(3.4, 5.8) if elderly else u(4.8, 7.5),
        cortex_metaphysis=u(0.9, 1.7),
        cortex_head=u(0.7, 1.3),
        cortex_hu=u(1150, 1650) if elderly else u(1450, 1900),
        cancellous_hu=u(140, 280) if elderly else u(210, 400),
        marrow_hu=u(-115, -45) if elderly else u(-85, 10),
        head_extra_hu=u(40, 140),
        greater_trochanter_scale=u(0.9, 1.15),
        lesser_trochanter_scale=u(0.85, 1.15),
    )
    base["red_marrow_hu"] = base["marrow_hu"] + u(30, 90)
    femurs = {}
    for side in SIDES:
        femurs[side] = FemurParams(
            **{
                **base,
                "length": base["length"] * (1 + n(0, 0.005)),
                "head_radius": base["head_radius"] * (1 + n(0, 0.012)),
                "neck_shaft_angle": float(np.clip(base["neck_shaft_angle"] + n(0, 1.5), 118, 142)),
                "anteversion": float(np.clip(base["anteversion"] + n(0, 3), -2, 34)),
                "cortex_diaphysis": base["cortex_diaphysis"] * (1 + n(0, 0.04)),
                "bow": base["bow"] * (1 + n(0, 0.08)),
            }
        )

    half_hips = (u(88, 100) if female else u(83, 95)) * sc**0.5
    legs, hips = {}, {}
    knee_half = u(40, 85)
    knee_dy = u(12, 55)
    for side in SIDES:
        l = 1.0 if side == "left" else -1.0
        hip = np.array([l * (half_hips + n(0, 1.2)), n(0, 1.5), n(0, 2.5)])
        mech = float(np.linalg.norm(_mech_vector(femurs[side])))
        kx = l * max(25.0, knee_half + n(0, 6))
        dy = knee_dy + n(0, 4)
        dx = kx - hip[0]
        dz = -np.sqrt(max(mech**2 - dx**2 - dy**2, 1.0))
        kd = np.array([dx, dy, dz]) / mech
        legs[side] = LegPose(hip_centre=hip, knee_direction=kd, external_rotation=float(u(-5, 25)))
        gap = float(np.clip(joint_gap + n(0, 0.2), 1.2, 4.5))
        if gap < 2.05:
            # Narrow joint (osteoarthritis): the cup sits closer to the weight-bearing dome, so
            # the gap there shrinks below a millimetre and partial volume bridges it.
            shift_len = gap - u(0.35, 0.8)
        else:
            shift_len = u(0.0, 0.45) * gap
        direction = np.array([l * 0.45, n(0, 0.2), 1.0])
        direction /= np.linalg.norm(direction)
        hips[side] = HipJoint(
            side=side,
            head_centre=hip,
            head_radius=femurs[side].head_radius,
            gap=gap,
            cup_shift=direction * shift_len,
            inclination=u(38, 50),
            anteversion=u(10, 25),
        )
    psc = half_hips / 90.0
    pelvis = PelvisParams(
        female=female,
        scale=psc,
        wing_flare=u(24, 34) if female else u(18, 28),
        crest_height=u(95, 122) * psc,
        sacrum_height=u(72, 92) * psc,
        sacrum_depth=u(32, 46) * psc,
        symphysis_gap=u(3.0, 6.0),
        si_gap=u(2.0, 3.8),
        wing_thickness=u(2.5, 4.5),
        cortex=u(1.0, 1.9),
        cortex_hu=u(650, 1100) if elderly else u(850, 1350),
        cancellous_hu=u(110, 230) if elderly else u(170, 320),
        lumbar_levels=11,
        disc_hu=u(65, 110),
    )
    knee_gap = {s: float(u(4.0, 7.0)) for s in SIDES}
    patella_height = {s: float(u(28, 48) * sc) for s in SIDES}
    return Patient(
        sex=sex,
        age=age,
        height=height,
        bmi=bmi,
        femurs=femurs,
        legs=legs,
        hips=hips,
        pelvis=pelvis,
        knee_gap=knee_gap,
        patella_height=patella_height,
    )


def _mech_vector(p: FemurParams) -> np.ndarray:
    return np.asarray(canonical_geometry(p)["head"])


def body_rotation(roll_deg: float) -> np.ndarray:
    """Rotation (body frame -> LPS) of a patient rolled by ``roll_deg`` about the table axis.

    Positive values lift the patient's left side (left goes anterior)."""
    return rotation((0.0, 0.0, 1.0), -roll_deg)


def place_femurs(patient: Patient, *, origin: np.ndarray, rot: np.ndarray) -> dict[str, FemurModel]:
    """Both femurs placed in LPS for a body frame at ``origin`` (LPS mm) with rotation ``rot``."""
    out = {}
    for side in SIDES:
        leg = patient.legs[side]
        hip_world = origin + rot @ leg.hip_centre
        frame = femur_frame(
            side,
            patient.femurs[side],
            hip_centre=hip_world,
            knee_direction=leg.knee_direction,
            external_rotation=leg.external_rotation,
            body_rotation=rot,
        )
        out[side] = FemurModel(side=side, params=patient.femurs[side], frame=frame)
    return out
