"""Tissue classes of the phantom and their densities.

Each study draws its own density for every tissue (patients differ: fatty or red marrow,
dense or osteoporotic bone, fatty muscle), then the tube voltage shifts them the way it does
on real scanners: at lower kVp the photoelectric effect raises the HU of bone and contrast
media and lowers that of fat; water stays at 0 by calibration.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, fields, replace

import numpy as np

logger = logging.getLogger(__name__)


class Tissue(enum.IntEnum):
    """Codes of the phantom's tissue map (what fills each voxel centre)."""

    AIR = 0
    TABLE = 1
    SKIN = 2
    FAT = 3
    MUSCLE = 4
    VISCERA = 5
    GAS = 6
    FLUID = 7
    BLOOD = 8
    BONE_CORTEX = 9
    BONE_CANCELLOUS = 10
    FEMUR_CORTEX = 11
    FEMUR_CANCELLOUS = 12
    FEMUR_MARROW = 13
    LESION = 14
    CYST = 15
    METAL = 16
    DISC = 17
    ORGAN = 18
    CARTILAGE = 19


@dataclass(frozen=True)
class TissueHU:
    """Mean densities (HU) of the tissues of one study.

    Bone densities are per-bone in :class:`~synthetic_ct.femur.FemurParams` and
    :class:`~synthetic_ct.pelvis.PelvisParams`; these are the soft tissues and materials.
    """

    air: float
    table_shell: float
    table_core: float
    pad: float
    skin: float
    fat: float
    muscle: float
    viscera: float
    gas: float
    urine: float
    bowel_fluid: float
    oral_contrast: float
    artery: float
    vein: float
    liver: float
    kidney: float
    spleen: float
    cartilage: float
    metal: float


def draw_tissue_hu(rng: np.random.Generator, *, contrast: bool, oral_contrast: bool, elderly: bool) -> TissueHU:
    """Densities at 120 kVp for one study.

    Parameters
    ----------
    contrast
        Intravenous contrast (arterial/portal phase): enhanced vessels, liver and kidneys.
    oral_contrast
        Positive oral contrast in the bowel.
    elderly
        Fattier, less dense muscle.
    """
    u = rng.uniform
    return TissueHU(
        air=-1000.0,
        table_shell=u(150, 450),
        table_core=u(-960, -850),
        pad=u(-920, -750),
        skin=u(15, 60),
        fat=u(-120, -85),
        muscle=u(28, 48) if elderly else u(42, 62),
        viscera=u(20, 45),
        gas=u(-1000, -900),
        urine=u(2, 16),
        bowel_fluid=u(5, 30),
        oral_contrast=u(180, 450) if oral_contrast else u(10, 35),
        artery=u(180, 380) if contrast else u(35, 55),
        vein=u(110, 190) if contrast else u(35, 55),
        liver=u(95, 130) if contrast else u(50, 68),
        kidney=u(140, 220) if contrast else u(28, 40),
        spleen=u(100, 130) if contrast else u(42, 55),
        cartilage=u(80, 130),
        metal=u(6000, 14000),
    )


def kvp_factor_bone(kvp: float) -> float:
    """Multiplier of bone HU at ``kvp`` relative to 120 kVp (about +20 % at 80, -8 % at 140)."""
    return float(1.0 + 0.0045 * (120.0 - kvp) + 0.00003 * (120.0 - kvp) ** 2)


def kvp_factor_fat(kvp: float) -> float:
    """Multiplier of fat HU at ``kvp`` relative to 120 kVp (fat is darker at low kVp)."""
    return float(1.0 + 0.0025 * (120.0 - kvp))


def apply_kvp(hu: TissueHU, kvp: float) -> TissueHU:
    """Tissue densities as measured at ``kvp`` (iodine and metal follow bone, fat its own)."""
    fb, ff = kvp_factor_bone(kvp), kvp_factor_fat(kvp)
    iodine = {"artery", "vein", "oral_contrast", "liver", "kidney", "spleen"}
    changes = {}
    for f in fields(hu):
        v = getattr(hu, f.name)
        if f.name in ("fat", "pad"):
            changes[f.name] = v * ff if f.name == "fat" else v
        elif f.name in iodine and v > 80:
            # Only the iodine part of the signal changes with energy.
            changes[f.name] = 50.0 + (v - 50.0) * fb
        elif f.name in ("metal", "table_shell"):
            changes[f.name] = v * fb
        else:
            changes[f.name] = v
    return replace(hu, **changes)
