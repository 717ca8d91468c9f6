"""Signed distance functions (SDFs) of the primitives the synthetic anatomy is built from.

Every function takes local coordinates ``(a, b, c)`` in millimetres as float32 arrays that
broadcast against each other and returns the signed distance in millimetres (negative inside,
positive outside) with the broadcast shape. Most functions are exact; those that are not
(ellipsoids, smooth unions) are close to the true distance within a few millimetres of the
surface, which is where partial volume and cortical thickness are evaluated.

The formulas follow the well-known closed forms for rendering implicit surfaces
(round cones, ellipsoids, polynomial smooth minimum).
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

_F32 = np.float32


def sphere(a: np.ndarray, b: np.ndarray, c: np.ndarray, radius: float) -> np.ndarray:
    """Exact SDF of a sphere of ``radius`` mm centred at the local origin."""
    return np.sqrt(a * a + b * b + c * c) - _F32(radius)


def ellipsoid(
    a: np.ndarray, b: np.ndarray, c: np.ndarray, radii: tuple[float, float, float]
) -> np.ndarray:
    """Approximate SDF of an axis-aligned ellipsoid centred at the local origin.

    Outside and near the surface the gradient-corrected estimate ``k0 (k0 - 1) / k1`` is used
    (accurate to a fraction of a millimetre near the surface); deep inside it tends to zero, so it
    is combined with the scaled-sphere bound ``(k0 - 1) * min(radii)``, which is exact at the centre.

    Parameters
    ----------
    a, b, c
        Local coordinates in mm.
    radii
        Semi-axes along ``a``, ``b`` and ``c`` in mm.
    """
    ra, rb, rc = (_F32(r) for r in radii)
    qa, qb, qc = a / ra, b / rb, c / rc
    k0 = np.sqrt(qa * qa + qb * qb + qc * qc)
    k1 = np.sqrt((qa / ra) ** 2 + (qb / rb) ** 2 + (qc / rc) ** 2)
    k1 = np.maximum(k1, _F32(1e-6))
    near = k0 * (k0 - _F32(1.0)) / k1
    scaled = (k0 - _F32(1.0)) * _F32(min(radii))
    return np.where(k0 < 1.0, np.minimum(near, scaled), near).astype(_F32, copy=False)


def round_cone(
    a: np.ndarray,
    b: np.ndarray,
    c: np.ndarray,
    p0: np.ndarray,
    p1: np.ndarray,
    r0: float,
    r1: float,
) -> np.ndarray:
    """Exact SDF of a round cone: spheres of radius ``r0`` at ``p0`` and ``r1`` at ``p1`` joined by
    their common tangent cone (a capsule when ``r0 == r1``).

    Parameters
    ----------
    a, b, c
        Local coordinates in mm.
    p0, p1
        End points (3,) in the same local frame, mm.
    r0, r1
        End radii in mm.
    """
    p0 = np.asarray(p0, dtype=np.float64)
    ba = np.asarray(p1, dtype=np.float64) - p0
    l2 = float(ba @ ba)
    rr = float(r0 - r1)
    a2 = l2 - rr * rr
    if a2 <= 0:
        # One sphere swallows the other: the shape is the larger sphere.
        if r0 >= r1:
            return sphere(a - _F32(p0[0]), b - _F32(p0[1]), c - _F32(p0[2]), r0)
        q = p0 + ba
        return sphere(a - _F32(q[0]), b - _F32(q[1]), c - _F32(q[2]), r1)
    il2 = 1.0 / l2
    pa_a, pa_b, pa_c = a - _F32(p0[0]), b - _F32(p0[1]), c - _F32(p0[2])
    y = pa_a * _F32(ba[0]) + pa_b * _F32(ba[1]) + pa_c * _F32(ba[2])
    z = y - _F32(l2)
    pa2 = pa_a * pa_a + pa_b * pa_b + pa_c * pa_c
    x2 = np.maximum(_F32(l2) * (_F32(l2) * pa2 - y * y), _F32(0.0))
    y2 = y * y * _F32(l2)
    z2 = z * z * _F32(l2)
    k = np.sign(rr) * rr * rr * x2
    d_end1 = np.sqrt(x2 + z2) * _F32(il2) - _F32(r1)
    d_end0 = np.sqrt(x2 + y2) * _F32(il2) - _F32(r0)
    d_side = (np.sqrt(x2 * _F32(a2 * il2)) + y * _F32(rr)) * _F32(il2) - _F32(r0)
    out = np.where(np.sign(y) * _F32(a2) * y2 < k, d_end0, d_side)
    out = np.where(np.sign(z) * _F32(a2) * z2 > k, d_end1, out)
    return out.astype(_F32, copy=False)


def ellipse_2d(u: np.ndarray, v: np.ndarray, ru: np.ndarray | float, rv: np.ndarray | float) -> np.ndarray:
    """Approximate in-plane SDF of an ellipse with semi-axes ``ru``, ``rv`` (mm) at the origin.

    ``ru`` and ``rv`` may be arrays (e.g. one value per slice) that broadcast against ``u, v``.
    """
    ru = np.asarray(ru, dtype=_F32)
    rv = np.asarray(rv, dtype=_F32)
    qu, qv = u / ru, v / rv
    k0 = np.sqrt(qu * qu + qv * qv)
    k1 = np.sqrt((qu / ru) ** 2 + (qv / rv) ** 2)
    k1 = np.maximum(k1, _F32(1e-6))
    near = k0 * (k0 - _F32(1.0)) / k1
    scaled = (k0 - _F32(1.0)) * np.minimum(ru, rv)
    return np.where(k0 < 1.0, np.minimum(near, scaled), near).astype(_F32, copy=False)


def smooth_union(d1: np.ndarray, d2: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum: the union of two shapes with a fillet of about ``k`` mm."""
    if k <= 0:
        return np.minimum(d1, d2)
    k = _F32(k)
    h = _clip01(_F32(0.5) + (d2 - d1) * _F32(0.5 / k))
    return (d2 + (d1 - d2) * h - k * h * (_F32(1.0) - h)).astype(_F32, copy=False)


def smooth_subtract(d: np.ndarray, cutter: np.ndarray, k: float) -> np.ndarray:
    """``d`` minus the shape ``cutter`` with a fillet of about ``k`` mm."""
    return -smooth_union(-d, cutter, k)


def smooth_intersect(d1: np.ndarray, d2: np.ndarray, k: float) -> np.ndarray:
    """Intersection of two shapes with a fillet of about ``k`` mm."""
    return -smooth_union(-d1, -d2, k)


def smoothstep(x: np.ndarray | float, edge0: float, edge1: float) -> np.ndarray:
    """Hermite step from 0 at ``edge0`` to 1 at ``edge1`` (``edge0 > edge1`` gives a falling step)."""
    t = (np.asarray(x, dtype=_F32) - _F32(edge0)) * _F32(1.0 / (edge1 - edge0))
    t = _clip01(np.asarray(t, dtype=_F32))
    return (t * t * (_F32(3.0) - _F32(2.0) * t)).astype(_F32, copy=False)


def coverage(sdf: np.ndarray, width: float) -> np.ndarray:
    """Fraction of a voxel of size ``width`` mm covered by the shape: a linear ramp of the SDF.

    This is the partial-volume (anti-aliasing) model of the renderer: 1 deep inside, 0 far
    outside, 0.5 on the surface. A voxel centre inside the shape (``sdf <= 0``) always has a
    coverage of at least 0.5, so labels taken at voxel centres agree with the intensities.
    """
    return _clip01(_F32(0.5) - sdf * _F32(1.0 / width))


def clamp(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``np.clip`` for large float32 arrays (a new array; several times faster)."""
    out = np.maximum(x, _F32(lo))
    np.minimum(out, _F32(hi), out=out)
    return out


def _clip01(t: np.ndarray) -> np.ndarray:
    """Clip to [0, 1] in place (``np.clip`` is several times slower on large arrays)."""
    if t.ndim == 0:
        return np.asarray(min(max(float(t), 0.0), 1.0), dtype=_F32)
    np.maximum(t, _F32(0.0), out=t)
    np.minimum(t, _F32(1.0), out=t)
    return t
