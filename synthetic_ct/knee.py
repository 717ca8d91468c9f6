"""Bones of the knee below and in front of each femur: proximal tibia, fibula and patella.

They are defined in the femur's canonical frame (see :mod:`synthetic_ct.femur`) with the knee
extended, so they follow the leg's pose.
"""

from __future__ import annotations

import logging

import numpy as np

from . import sdf as S
from .parts import Part, ellipsoid_part, round_cone_part

logger = logging.getLogger(__name__)

_F32 = np.float32


def knee_bones(
    *, scale: float, condyle_half_width: float, joint_gap: float, patella_height: float
) -> dict[str, list[Part]]:
    """Parts of the tibia, fibula and patella in the femur's canonical frame (mm).

    Parameters
    ----------
    scale
        Size factor of the femur (length / 450 mm).
    condyle_half_width
        Half the femur's bicondylar width, mm.
    joint_gap
        Radiographic joint space between femoral condyles and tibial plateau (cartilage), mm.
    patella_height
        Height of the patella's centre above the joint line, mm.
    """
    sc = scale
    chw = condyle_half_width
    top = -joint_gap
    plateau_c = np.array([0.0, -4.0 * sc, top - 24.0 * sc])
    plateau_r = np.array([chw * 0.98, 27.0 * sc, 24.0 * sc])
    pc = plateau_c.astype(_F32)

    def plateau(a, b, c):
        d = S.ellipsoid(a - pc[0], b - pc[1], c - pc[2], tuple(plateau_r))
        # Flat articular surface.
        return S.smooth_intersect(d, c - _F32(top), 2.0)

    tibia = [
        Part("tibial_plateau", plateau, plateau_c - plateau_r, plateau_c + plateau_r, "union", 0.0),
        round_cone_part("tibial_metaphysis", plateau_c + np.array([0.0, 2.0, -6.0]) * sc, np.array([0.0, 4.0 * sc, top - 110.0 * sc]), 30.0 * sc, 16.0 * sc, k=8.0 * sc),
        round_cone_part("tibial_shaft", np.array([0.0, 4.0 * sc, top - 110.0 * sc]), np.array([0.0, 6.0 * sc, top - 260.0 * sc]), 16.0 * sc, 13.0 * sc, k=6.0 * sc),
        ellipsoid_part("tibial_tuberosity", np.array([2.0, 26.0, top - 42.0]) * sc, np.array([11.0, 8.0, 16.0]) * sc, k=6.0 * sc),
        ellipsoid_part("intercondylar_eminence", np.array([0.0, -2.0, top + 1.0]) * sc, np.array([7.0, 9.0, 5.0]) * sc, k=3.0 * sc),
    ]
    fh = np.array([chw * 0.78, -20.0 * sc, top - 24.0 * sc])
    fibula = [
        ellipsoid_part("fibular_head", fh, np.array([10.0, 10.0, 12.0]) * sc, k=3.0 * sc),
        round_cone_part("fibular_shaft", fh + np.array([0.0, 0.0, -8.0]) * sc, fh + np.array([-4.0, 2.0, -240.0]) * sc, 7.5 * sc, 6.0 * sc, k=4.0 * sc),
    ]
    # Patella: flattened, tilted slightly, in front of the trochlear groove.
    pcen = np.array([3.0 * sc, 40.0 * sc, patella_height])
    patella = [ellipsoid_part("patella", pcen, np.array([22.0, 11.0, 23.0]) * sc)]
    return {"tibia": tibia, "fibula": fibula, "patella": patella}
