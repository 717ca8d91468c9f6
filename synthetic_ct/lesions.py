"""Lytic lesions, fluid cysts and intramedullary nails inside a femur.

All three are defined in the canonical frame of their femur (see :mod:`synthetic_ct.femur`)
and painted by replacing bone inside the femur's outer surface, so they never leave it.

Lytic lesions are unions of a few randomly oriented ellipsoids whose surface is displaced by a
smooth random field: irregular, lobulated, from a few millimetres to several centimetres. Where
they reach the cortex they thin it or break through it. Cysts are round, smooth and
well defined, in the femoral head, near its articular surface.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from .femur import FemurModel, shaft_bow
from .frames import Block, Frame, rotation
from .grid import ScannerGrid
from .noise import SmoothNoise
from .parts import Part, chain_parts, evaluate_parts, parts_bounds, rotated_ellipsoid_part, round_cone_part

logger = logging.getLogger(__name__)

_F32 = np.float32

REGIONS = ("head", "neck", "trochanteric", "shaft")


@dataclass
class LesionModel:
    """One lytic lesion or cyst.

    Attributes
    ----------
    id
        1-based identifier within the study.
    kind
        ``"lytic"`` or ``"cyst"``.
    side
        Femur it lies in.
    region
        ``head``, ``neck``, ``trochanteric`` or ``shaft`` (where its centre is).
    centre_local
        Centre in the femur's canonical frame, mm.
    lobes
        ``(centre_local, radii, axes)`` of each ellipsoid.
    roughness
        Amplitude (mm) of the surface displacement.
    hu
        Mean density, HU.
    texture
        Amplitude of the density's heterogeneity, HU.
    rim_hu, rim_thickness
        Sclerotic rim (``rim_thickness`` 0: none).
    """

    id: int
    kind: str
    side: str
    region: str
    centre_local: np.ndarray
    lobes: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    roughness: float
    hu: float
    texture: float
    rim_hu: float = 0.0
    rim_thickness: float = 0.0
    noise: SmoothNoise | None = field(default=None, repr=False)
    parts: list[Part] = field(default_factory=list, repr=False)
    #: Filled while rendering: lesion voxels in the cortex and at the outer surface, and sums of
    #: the lesion's own density and of the density of the inner bone it replaced (HU).
    cortex_voxels: int = 0
    surface_voxels: int = 0
    lesion_hu_sum: float = 0.0
    lesion_hu_count: int = 0
    replaced_hu_sum: float = 0.0
    replaced_hu_count: int = 0

    def build(self, femur: FemurModel, rng: np.random.Generator) -> None:
        """Prepare the parts and the random fields (call once, before :meth:`sdf`)."""
        self.parts = [
            rotated_ellipsoid_part(f"lobe{i}", c, r, ax, k=0.35 * float(np.min(r)))
            for i, (c, r, ax) in enumerate(self.lobes)
        ]
        lo, hi = self.bounds_world(femur.frame)
        self.noise = SmoothNoise(rng, lo, hi, (max(2.5, self.roughness * 2.2),) * 3)

    def bounds_world(self, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
        """LPS bounds of the lesion including its surface roughness and rim, mm."""
        return parts_bounds(self.parts, frame, self.roughness * 2.5 + self.rim_thickness + 2.0)

    def sdf(self, frame: Frame, grid: ScannerGrid, block: Block, local) -> np.ndarray:
        """Signed distance (mm) to the lesion surface over ``block``."""
        d = evaluate_parts(self.parts, frame, grid, block, margin=self.roughness * 2.5 + self.rim_thickness + 3.0, local=local)
        if self.roughness > 0 and self.noise is not None:
            d = d + _F32(self.roughness) * self.noise.sample(block)
        return d


def _random_axes(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=(3, 3))
    qq, r = np.linalg.qr(q)
    return (qq * np.sign(np.diag(r))).T


def _shaft_axes(rng: np.random.Generator) -> np.ndarray:
    """Axes of a lesion elongated along the shaft (third axis near the local c axis)."""
    tilt = rotation(rng.normal(size=3), rng.normal(0, 12))
    return (tilt @ np.eye(3)).T


def draw_lesion(
    rng: np.random.Generator, femur: FemurModel, *, lesion_id: int, region: str | None = None, subtle: bool | None = None
) -> LesionModel:
    """Draw one lytic lesion in ``femur``.

    Parameters
    ----------
    region
        Force a region; drawn otherwise (shaft and trochanteric region most often, as in
        metastatic disease).
    subtle
        Force a low-contrast lesion in the fatty marrow of the shaft (the hard case).
    """
    p, g = femur.params, femur.geometry
    u = rng.uniform
    if subtle is None:
        subtle = bool(u() < 0.22)
    if region is None:
        region = "shaft" if subtle else str(rng.choice(REGIONS, p=[0.17, 0.18, 0.3, 0.35]))
    head = np.asarray(g["head"])
    s = np.asarray(g["neck_base"])
    sc = float(g["scale"])
    # Equivalent diameter: log-uniform from a few mm to several cm.
    d_eq = float(np.exp(u(np.log(5.0), np.log(55.0))))
    elong = 1.0
    if region == "head":
        d_eq = min(d_eq, 1.3 * p.head_radius)
        r = u(0.0, max(0.1, p.head_radius - 0.35 * d_eq))
        centre = head + r * _unit(rng.normal(size=3))
        axes = _random_axes(rng)
    elif region == "neck":
        d_eq = min(d_eq, 1.1 * p.head_radius)
        t = u(0.2, 0.75)
        centre = s + t * (head - s) + rng.normal(0, 3.0, size=3)
        axes = _random_axes(rng)
    elif region == "trochanteric":
        d_eq = min(d_eq, 45.0)
        choices = [
            np.asarray(g["greater_trochanter"]) + rng.normal(0, 5.0, size=3),
            s + np.array([0.0, 0.0, -u(10, 45)]) * sc + rng.normal(0, 4.0, size=3),
            np.asarray(g["lesser_trochanter"]) + np.array([8.0, 5.0, 0.0]) * sc + rng.normal(0, 3.0, size=3),
        ]
        centre = choices[int(rng.integers(0, 3))]
        axes = _random_axes(rng)
    else:
        region = "shaft"
        c_lo = float(g["c_distal"]) + 40.0 * sc
        c_hi = float(g["c_prox_end"]) - 5.0
        c = u(c_lo, c_hi)
        ecc = u(0.0, 0.4) if subtle else u(0.0, 1.0)
        ang = u(0, 2 * np.pi)
        rad = ecc * p.shaft_radius * 0.85
        centre = np.array([rad * np.cos(ang), float(shaft_bow(p, g, np.array(c))) + rad * np.sin(ang), c])
        # Shaft lesions spread along the medullary canal: a cross-section up to about the
        # canal's (larger ones destroy the cortex around them), a length up to several times it.
        canal = max(3.0, p.shaft_radius - p.cortex_diaphysis)
        rc = canal * (u(0.35, 0.85) if subtle else u(0.35, 1.45))
        elong = u(1.0, 3.5)
        d_eq = 2.0 * rc * elong ** (1 / 3)
        axes = _shaft_axes(rng)
    base_r = 0.5 * d_eq
    radii0 = base_r * np.array([u(0.75, 1.2), u(0.75, 1.2), u(0.85, 1.25)])
    radii0 *= base_r / np.prod(radii0) ** (1 / 3)
    radii0 *= np.array([elong ** (-1 / 3), elong ** (-1 / 3), elong ** (2 / 3)])
    lobes = [(centre, radii0, axes)]
    for _ in range(int(rng.integers(0, 4))):
        off = rng.normal(size=3)
        if region == "shaft":
            off = axes.T @ (off * np.array([0.25, 0.25, 1.0]))  # satellites along the canal
        off = off / np.linalg.norm(off) * u(0.3, 0.8) * float(np.max(radii0))
        rr = radii0 * u(0.35, 0.7) * np.array([u(0.8, 1.2) for _ in range(3)])
        lobes.append((centre + off, rr, axes if region == "shaft" else _random_axes(rng)))
    roughness = float(np.clip(u(0.08, 0.22) * base_r, 0.4, 4.0))
    if subtle:
        # Barely denser than the marrow it replaces: the paper's hard case.
        hu = float(np.clip(p.marrow_hu + u(35, 60), 10.0, 55.0))
        texture = u(4, 8)
    else:
        hu = u(22, 75)
        texture = u(5, 14)
    rim = u() < 0.2 and not subtle
    return LesionModel(
        id=lesion_id,
        kind="lytic",
        side=femur.side,
        region=region,
        centre_local=centre,
        lobes=lobes,
        roughness=roughness,
        hu=hu,
        texture=texture,
        rim_hu=u(350, 750) if rim else 0.0,
        rim_thickness=u(1.0, 2.0) if rim else 0.0,
    )


def draw_cyst(rng: np.random.Generator, femur: FemurModel, *, lesion_id: int) -> LesionModel:
    """Draw a subchondral fluid cyst in the femoral head of ``femur``: round, smooth, 0-20 HU."""
    p, g = femur.params, femur.geometry
    u = rng.uniform
    head = np.asarray(g["head"])
    radius = u(2.5, min(8.0, 0.32 * p.head_radius))
    # Toward the weight-bearing dome: superior and medial on the canonical femur.
    direction = _unit(np.array([-0.35, 0.0, 1.0]) + rng.normal(0, 0.35, size=3))
    depth = p.head_radius - radius - p.cortex_head - u(1.0, 4.0)
    centre = head + direction * max(depth, 0.0)
    radii = radius * np.array([u(0.9, 1.1), u(0.9, 1.1), u(0.9, 1.1)])
    return LesionModel(
        id=lesion_id,
        kind="cyst",
        side=femur.side,
        region="head",
        centre_local=centre,
        lobes=[(centre, radii, _random_axes(rng))],
        roughness=0.0,
        hu=u(2, 18),
        texture=u(1, 3),
        rim_hu=u(450, 800),
        rim_thickness=u(0.6, 1.2),
    )


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


@dataclass
class NailModel:
    """Intramedullary nail with a cephalic screw (metal), in one femur's canonical frame."""

    side: str
    parts: list[Part]
    hu: float


def draw_nail(rng: np.random.Generator, femur: FemurModel, *, hu: float) -> NailModel:
    """A cephalomedullary nail: entry at the greater trochanter, down the medullary canal to the
    distal metaphysis, a lag screw up the neck into the head and two distal locking screws."""
    p, g = femur.params, femur.geometry
    u = rng.uniform
    sc = float(g["scale"])
    gt = np.asarray(g["greater_trochanter"])
    s = np.asarray(g["neck_base"])
    head = np.asarray(g["head"])

    def axis_at(c: float) -> np.ndarray:
        return np.array([0.0, float(shaft_bow(p, g, np.array(c))), c])

    c_end = float(g["c_distal"]) + u(10, 60) * sc
    r_nail = u(4.5, 6.0)
    entry = gt + np.array([-6.0, 2.0, 18.0]) * sc
    pts = [entry, axis_at(float(s[2]) - 30 * sc), axis_at(float(s[2]) - 120 * sc), axis_at(0.5 * (float(s[2]) - 120 * sc + c_end)), axis_at(c_end)]
    radii = [r_nail + 2.5, r_nail + 1.0, r_nail, r_nail, r_nail * 0.9]
    parts = chain_parts("nail", pts, radii)
    # Lag screw from the lateral cortex through the nail, along the neck, stopping short of the
    # head's surface.
    axis = head - s
    axis /= np.linalg.norm(axis)
    start = s - axis * 35.0 * sc + np.array([0.0, 0.0, -8.0]) * sc
    tip = head - axis * (p.head_radius * 0.25) + np.array([0.0, 0.0, -3.0])
    parts.append(round_cone_part("lag_screw", start, tip, 5.0, 5.0))
    for dc in (12.0, 35.0):
        c = c_end + dc * sc
        q = axis_at(c)
        parts.append(round_cone_part("locking_screw", q + np.array([-40.0, 0.0, 0.0]), q + np.array([40.0, 0.0, 0.0]), 2.4, 2.4))
    return NailModel(side=femur.side, parts=parts, hu=hu)
