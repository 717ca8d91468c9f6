"""The femur: shape, placement in the patient, cortical thickness and inner density.

Each femur is built in a canonical local frame and placed in LPS by a :class:`Frame`:

- ``a``: lateral (away from the midline), ``b``: anterior, ``c``: superior along the shaft axis;
- origin at the knee centre on the joint line (the distal end of the condyles is at ``c ~ 0``);
- the shaft axis is the ``c`` axis (plus the anterior bow), the head centre lies medial,
  anterior (anteversion) and above the neck-shaft junction.

The canonical frame is that of a right femur; the left femur uses the mirror image (its frame
matrix has determinant -1), so that ``a`` is lateral for both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from . import sdf as S
from .frames import Block, Frame, rotation, rotation_between
from .grid import ScannerGrid
from .parts import Part, ellipsoid_part, evaluate_parts, parts_bounds, round_cone_part

logger = logging.getLogger(__name__)

_F32 = np.float32

SIDES = ("left", "right")
LATERAL_SIGN = {"left": 1.0, "right": -1.0}  # LPS x of the lateral direction


@dataclass(frozen=True)
class FemurParams:
    """Size, shape and density of one femur. Lengths in mm, angles in degrees, densities in HU
    at 120 kVp.

    Attributes
    ----------
    length
        Maximum length, top of the head to the distal end of the condyles.
    head_radius
        Radius of the femoral head.
    neck_shaft_angle
        Angle between neck axis and shaft axis in the coronal plane (120-140).
    anteversion
        Forward rotation of the neck relative to the condyles.
    offset
        Distance from the head centre to the shaft axis.
    shaft_radius
        Mid-diaphysis outer radius.
    bow
        Anterior bow of the shaft (sagitta).
    linea_aspera
        Height of the posterior ridge of the shaft.
    condyle_half_width
        Half the bicondylar width.
    cortex_diaphysis, cortex_metaphysis, cortex_head
        Cortical thickness in the mid-shaft, at the metaphyses/condyles and at the head.
    cortex_hu, cancellous_hu, marrow_hu, head_extra_hu
        Densities of compact bone, cancellous bone, fatty marrow, and the extra density of the
        head's compressive trabeculae.
    """

    length: float
    head_radius: float
    neck_shaft_angle: float
    anteversion: float
    offset: float
    shaft_radius: float
    bow: float
    linea_aspera: float
    condyle_half_width: float
    cortex_diaphysis: float
    cortex_metaphysis: float
    cortex_head: float
    cortex_hu: float
    cancellous_hu: float
    marrow_hu: float
    head_extra_hu: float
    greater_trochanter_scale: float = 1.0
    lesser_trochanter_scale: float = 1.0
    red_marrow_hu: float = 0.0


@dataclass
class FemurModel:
    """A femur placed in the patient.

    Attributes
    ----------
    side
        ``"left"`` or ``"right"`` (the patient's).
    params
        Its :class:`FemurParams`.
    frame
        LPS -> canonical local frame.
    """

    side: str
    params: FemurParams
    frame: Frame
    parts: list[Part] = field(init=False)
    geometry: dict[str, np.ndarray | float] = field(init=False)

    def __post_init__(self) -> None:
        self.geometry = canonical_geometry(self.params)
        self.parts = canonical_parts(self.params, self.geometry)

    # ------------------------------------------------------------------ landmarks
    @property
    def head_centre(self) -> np.ndarray:
        """LPS position of the femoral head centre, mm."""
        return self.frame.to_world(self.geometry["head"])

    @property
    def knee_centre(self) -> np.ndarray:
        """LPS position of the knee centre on the joint line, mm."""
        return self.frame.to_world(np.zeros(3))

    def shaft_centre_at(self, c: np.ndarray) -> np.ndarray:
        """LPS positions (n, 3) of the shaft centreline at canonical heights ``c`` (mm)."""
        c = np.asarray(c, dtype=np.float64)
        b = shaft_bow(self.params, self.geometry, c)
        return self.frame.to_world(np.stack([np.zeros_like(c), b, c], axis=-1))

    def bounds(self, pad: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """LPS bounds of the whole femur enlarged by ``pad`` mm."""
        return parts_bounds(self.parts, self.frame, pad)

    # ------------------------------------------------------------------ fields
    def sdf(self, grid: ScannerGrid, block: Block, *, margin: float, local=None) -> np.ndarray:
        """Signed distance (mm) to the outer bone surface at the voxel centres of ``block``."""
        return evaluate_parts(self.parts, self.frame, grid, block, margin=margin, local=local)

    def cortex_thickness(self, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
        """Cortical thickness (mm) to use at local positions: thick in the diaphysis, thin at
        the metaphyses, the condyles and the head."""
        p, g = self.params, self.geometry
        w = diaphysis_weight(g, c)
        t = _F32(p.cortex_metaphysis) + _F32(p.cortex_diaphysis - p.cortex_metaphysis) * w
        h = g["head"]
        dh = np.sqrt((a - _F32(h[0])) ** 2 + (b - _F32(h[1])) ** 2 + (c - _F32(h[2])) ** 2)
        in_head = S.smoothstep(dh, p.head_radius * 0.95, p.head_radius * 0.7)
        t = t + (_F32(p.cortex_head) - t) * in_head
        # The calcar femorale: a thick medial cortex where the neck meets the shaft.
        calcar = S.smoothstep(np.abs(c - _F32(g["calcar_c"])), 25.0, 5.0) * S.smoothstep(a, -8.0, -18.0)
        return (t + _F32(2.5) * calcar).astype(_F32, copy=False)

    def inner_hu(
        self, a: np.ndarray, b: np.ndarray, c: np.ndarray, texture: np.ndarray, patches: np.ndarray | float = 0.0
    ) -> np.ndarray:
        """Density (HU) inside the cortex: cancellous bone in the epiphyses and metaphyses,
        fatty marrow in the diaphysis.

        ``texture`` is a zero-mean unit-variance field giving the trabecular pattern;
        ``patches`` a coarser one for islands of red (haematopoietic) marrow, which are denser
        than fatty marrow and can mimic a lesion.
        """
        p, g = self.params, self.geometry
        marrow_w = marrow_weight(g, c)
        h = g["head"]
        dh = np.sqrt((a - _F32(h[0])) ** 2 + (b - _F32(h[1])) ** 2 + (c - _F32(h[2])) ** 2)
        head_w = S.smoothstep(dh, p.head_radius * 1.05, p.head_radius * 0.6)
        canc = _F32(p.cancellous_hu) + _F32(p.head_extra_hu) * head_w
        # Trabecular texture: relative variation, stronger where bone is sparse.
        canc = canc * (_F32(1.0) + _F32(0.28) * texture)
        red = S.smoothstep(patches, 0.6, 1.6) if not np.isscalar(patches) else _F32(0.0)
        marrow = _F32(p.marrow_hu) + _F32(10.0) * texture + _F32(p.red_marrow_hu - p.marrow_hu) * red
        return (canc + (marrow - canc) * marrow_w).astype(_F32, copy=False)

    def region_of(self, p_local: np.ndarray) -> str:
        """Anatomical region of a local point: ``head``, ``neck``, ``trochanteric`` or ``shaft``."""
        g = self.geometry
        h = np.asarray(g["head"])
        s = np.asarray(g["neck_base"])
        if np.linalg.norm(p_local - h) <= self.params.head_radius * 0.98:
            return "head"
        axis = h - s
        t = float((p_local - s) @ axis / (axis @ axis))
        if t > 0.15 and p_local[0] < float(g["neck_base"][0]) - 3.0:
            return "neck"
        if p_local[2] >= float(g["lesser_trochanter"][2]) - 25.0:
            return "trochanteric"
        return "shaft"


# ---------------------------------------------------------------------- canonical femur


def canonical_geometry(p: FemurParams) -> dict[str, np.ndarray | float]:
    """Landmarks of the canonical femur (local mm)."""
    beta = np.deg2rad(180.0 - p.neck_shaft_angle)
    theta = np.deg2rad(p.anteversion)
    neck_len = p.offset / np.sin(beta)
    head_c = p.length - p.head_radius
    c_s = head_c - neck_len * np.cos(beta)
    s = np.array([0.0, 0.0, c_s])
    head = s + neck_len * np.array([-np.sin(beta) * np.cos(theta), np.sin(beta) * np.sin(theta), np.cos(beta)])
    scale = p.length / 450.0
    return {
        "scale": scale,
        "neck_base": s,
        "head": head,
        "c_s": c_s,
        # The shaft runs from the distal metaphysis to the neck base.
        "c_distal": 0.19 * p.length,
        "c_prox_end": c_s - 52.0 * scale,
        "lesser_trochanter": s + np.array([-13.0, -11.0, -44.0]) * scale,
        "greater_trochanter": s + np.array([21.0, -7.0, 4.0]) * scale,
        "calcar_c": c_s - 22.0 * scale,
    }


def shaft_bow(p: FemurParams, g: dict, c: np.ndarray) -> np.ndarray:
    """Anterior displacement (mm, local ``b``) of the shaft centreline at height ``c``."""
    lo, hi = float(g["c_distal"]), float(g["c_s"])
    t = np.minimum(np.maximum((c - lo) / (hi - lo), 0.0), 1.0)
    return p.bow * np.sin(np.pi * t)


def diaphysis_weight(g: dict, c: np.ndarray) -> np.ndarray:
    """1 in the diaphysis, 0 in the metaphyses and beyond (smooth)."""
    sc = float(g["scale"])
    lo = float(g["c_distal"]) + 25.0 * sc
    hi = float(g["c_prox_end"]) + 5.0 * sc
    return S.smoothstep(c, lo, lo + 55.0 * sc) * S.smoothstep(c, hi, hi - 45.0 * sc)


def marrow_weight(g: dict, c: np.ndarray) -> np.ndarray:
    """1 where the medullary cavity holds fatty marrow, 0 where cancellous bone fills it."""
    sc = float(g["scale"])
    lo = float(g["c_distal"]) + 35.0 * sc
    hi = float(g["c_prox_end"]) + 10.0 * sc
    return S.smoothstep(c, lo, lo + 60.0 * sc) * S.smoothstep(c, hi, hi - 50.0 * sc)


def canonical_parts(p: FemurParams, g: dict) -> list[Part]:
    """The primitives of the canonical femur, in the order they are combined."""
    sc = float(g["scale"])
    s = np.asarray(g["neck_base"])
    head = np.asarray(g["head"])
    rh = p.head_radius
    c_lo = float(g["c_distal"]) - 5.0
    c_hi = float(g["c_s"]) + 5.0
    r_mid = p.shaft_radius

    # Outer radius along the shaft (mediolateral, anteroposterior) at knots of height.
    knots_c = np.array([c_lo, c_lo + 0.08 * p.length, 0.5 * (c_lo + c_hi), c_hi - 70 * sc, c_hi])
    r_ml = r_mid * np.array([1.2, 1.0, 1.0, 1.12, 1.25])
    r_ap = r_mid * np.array([1.05, 0.98, 1.0, 0.95, 1.0])
    ridge_c = (c_lo + 0.15 * p.length, c_hi - 80 * sc)

    def shaft(a, b, c):
        cc = S.clamp(c, c_lo, c_hi)
        bc = shaft_bow(p, g, cc).astype(_F32)
        ra = np.interp(cc, knots_c, r_ml).astype(_F32)
        rb = np.interp(cc, knots_c, r_ap).astype(_F32)
        db = b - bc
        rho = np.sqrt(a * a + db * db)
        inv = _F32(1.0) / np.maximum(rho, _F32(1e-3))
        cos_t, sin_t = a * inv, db * inv
        r = ra * rb / np.sqrt((rb * cos_t) ** 2 + (ra * sin_t) ** 2)
        # Linea aspera: a posterior ridge along the middle of the shaft.
        ridge = _F32(p.linea_aspera) * np.exp(-(((sin_t + 1.0) / 0.12) ** 2)).astype(_F32)
        ridge = ridge * S.smoothstep(c, ridge_c[0], ridge_c[0] + 40) * S.smoothstep(c, ridge_c[1], ridge_c[1] - 40)
        d2 = rho - (r + ridge)
        cap = np.maximum(_F32(c_lo) - c, c - _F32(c_hi))
        return np.maximum(d2, cap)

    r_out = r_mid * 1.35 + p.bow + p.linea_aspera
    parts: list[Part] = [
        Part("shaft", shaft, np.array([-r_out, -r_out, c_lo]), np.array([r_out, r_out, c_hi])),
    ]
    gts = p.greater_trochanter_scale
    lts = p.lesser_trochanter_scale
    parts += [
        ellipsoid_part("intertrochanteric", s + np.array([4.0, -3.0, -16.0]) * sc, np.array([24.0, 18.0, 36.0]) * sc, k=14 * sc),
        ellipsoid_part("greater_trochanter", g["greater_trochanter"], np.array([14.0, 19.0, 27.0]) * sc * gts, k=7 * sc),
        ellipsoid_part("lesser_trochanter", g["lesser_trochanter"], np.array([8.0, 8.0, 12.0]) * sc * lts, k=5 * sc),
        round_cone_part("neck", s + 0.08 * (head - s), head - 0.45 * rh * (head - s) / np.linalg.norm(head - s), 0.86 * rh, 0.66 * rh, k=6 * sc),
    ]
    parts.append(Part("head", lambda a, b, c: S.sphere(a - _F32(head[0]), b - _F32(head[1]), c - _F32(head[2]), rh), head - rh, head + rh, "union", 4.0 * sc))
    chw = p.condyle_half_width
    parts += [
        ellipsoid_part("distal_metaphysis", np.array([0.0, -3.0, 0.1 * p.length]), np.array([0.74 * chw, 25.0 * sc, 0.085 * p.length]), k=16 * sc),
        ellipsoid_part("medial_condyle", np.array([-0.5 * chw, -7.0 * sc, 27.0 * sc]), np.array([0.43 * chw, 31.0 * sc, 27.5 * sc]), k=6 * sc),
        ellipsoid_part("lateral_condyle", np.array([0.5 * chw, -7.0 * sc, 28.5 * sc]), np.array([0.41 * chw, 30.0 * sc, 27.0 * sc]), k=6 * sc),
        ellipsoid_part("medial_epicondyle", np.array([-0.86 * chw, -4.0 * sc, 40.0 * sc]), np.array([7.0, 11.0, 12.0]) * sc, k=4 * sc),
        ellipsoid_part("lateral_epicondyle", np.array([0.86 * chw, -4.0 * sc, 42.0 * sc]), np.array([6.0, 10.0, 11.0]) * sc, k=4 * sc),
        round_cone_part("intercondylar_notch", np.array([0.0, -48.0, 13.0]) * sc, np.array([0.0, -4.0, 13.0]) * sc, 9.5 * sc, 9.5 * sc, k=2.5 * sc, op="subtract"),
        round_cone_part("trochlear_groove", np.array([0.0, 34.0, 22.0]) * sc, np.array([0.0, 31.0, 64.0]) * sc, 12.0 * sc, 11.0 * sc, k=3.0 * sc, op="subtract"),
    ]
    return parts


# ---------------------------------------------------------------------- placement


def femur_frame(
    side: str,
    params: FemurParams,
    *,
    hip_centre: np.ndarray,
    knee_direction: np.ndarray,
    external_rotation: float,
    body_rotation: np.ndarray,
) -> Frame:
    """Frame that puts the canonical femur's head at ``hip_centre`` with its mechanical axis
    pointing along ``knee_direction``.

    Parameters
    ----------
    side
        ``"left"`` or ``"right"``.
    hip_centre
        LPS position of the head centre, mm.
    knee_direction
        Unit vector from the head centre to the knee centre, in the body's own frame (before the
        patient's roll on the table).
    external_rotation
        Rotation of the leg about its mechanical axis, toes outward positive, degrees.
    body_rotation
        (3, 3) roll of the patient on the table (body frame -> LPS).
    """
    g = canonical_geometry(params)
    head = np.asarray(g["head"])
    mech_len = float(np.linalg.norm(head))
    lat = LATERAL_SIGN[side]
    mirror = np.diag([lat, -1.0, 1.0])  # canonical (lateral, anterior, superior) -> LPS axes
    m0 = mirror @ (head / mech_len)
    m_body = -np.asarray(knee_direction, dtype=np.float64)
    m_body /= np.linalg.norm(m_body)
    r1 = rotation_between(m0, m_body)
    # External rotation turns the front of the leg toward its lateral side.
    r2 = rotation(m_body, -lat * external_rotation)
    r = body_rotation @ r2 @ r1
    knee = np.asarray(hip_centre, dtype=np.float64) - mech_len * (body_rotation @ m_body)
    return Frame(matrix=(r @ mirror).T, origin=knee)


def mechanical_length(params: FemurParams) -> float:
    """Distance from the knee centre to the head centre, mm."""
    return float(np.linalg.norm(canonical_geometry(params)["head"]))
