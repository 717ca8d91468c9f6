"""Compound shapes: smooth unions and subtractions of primitives, evaluated box by box.

A shape made of many primitives (a femur is about fifteen) is evaluated on a block of voxels by
visiting each primitive only inside its own bounding box, enlarged by the fillet radius and
the largest depth the caller needs. Elsewhere the primitive cannot change the result, so the
cost follows the volume of each part, not the volume of the whole shape's bounding box.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from . import sdf as S
from .frames import Block, Frame
from .grid import ScannerGrid

logger = logging.getLogger(__name__)

#: Distance (mm) reported where no primitive was evaluated: "far outside".
FAR = np.float32(1.0e3)

SdfFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Part:
    """One primitive of a compound shape, in the compound's local frame.

    Attributes
    ----------
    name
        What it is (for debugging and docs).
    fn
        ``fn(a, b, c) -> sdf`` in local mm.
    lo, hi
        Local bounding box (mm) of the primitive's surface.
    op
        ``"union"`` (smooth union with what came before) or ``"subtract"``.
    k
        Fillet radius of the smooth operation, mm.
    """

    name: str
    fn: SdfFn
    lo: np.ndarray
    hi: np.ndarray
    op: Literal["union", "subtract"] = "union"
    k: float = 0.0


def ellipsoid_part(name: str, centre, radii, *, k: float = 0.0, op: str = "union") -> Part:
    """Axis-aligned ellipsoid part centred at ``centre`` (local mm) with semi-axes ``radii``."""
    c0 = np.asarray(centre, dtype=np.float64)
    r = np.asarray(radii, dtype=np.float64)
    cx, cy, cz = (np.float32(v) for v in c0)

    def fn(a, b, c):
        return S.ellipsoid(a - cx, b - cy, c - cz, tuple(r))

    return Part(name, fn, c0 - r, c0 + r, op, k)  # type: ignore[arg-type]


def rotated_ellipsoid_part(
    name: str, centre, radii, axes: np.ndarray, *, k: float = 0.0, op: str = "union"
) -> Part:
    """Ellipsoid with semi-axes ``radii`` along the rows of the orthonormal ``axes`` (3, 3)."""
    c0 = np.asarray(centre, dtype=np.float64)
    r = np.asarray(radii, dtype=np.float64)
    ax = np.asarray(axes, dtype=np.float64).astype(np.float32)
    cx, cy, cz = (np.float32(v) for v in c0)

    def fn(a, b, c):
        da, db, dc = a - cx, b - cy, c - cz
        u = ax[0, 0] * da + ax[0, 1] * db + ax[0, 2] * dc
        v = ax[1, 0] * da + ax[1, 1] * db + ax[1, 2] * dc
        w = ax[2, 0] * da + ax[2, 1] * db + ax[2, 2] * dc
        return S.ellipsoid(u, v, w, tuple(r))

    ext = np.abs(np.asarray(axes, dtype=np.float64).T) @ r
    return Part(name, fn, c0 - ext, c0 + ext, op, k)  # type: ignore[arg-type]


def round_cone_part(name: str, p0, p1, r0: float, r1: float, *, k: float = 0.0, op: str = "union") -> Part:
    """Round cone (capsule with end radii ``r0``, ``r1``) from ``p0`` to ``p1`` (local mm)."""
    p0 = np.asarray(p0, dtype=np.float64)
    p1 = np.asarray(p1, dtype=np.float64)
    rmax = max(r0, r1)

    def fn(a, b, c):
        return S.round_cone(a, b, c, p0, p1, r0, r1)

    return Part(name, fn, np.minimum(p0, p1) - rmax, np.maximum(p0, p1) + rmax, op, k)  # type: ignore[arg-type]


def chain_parts(name: str, points: Sequence, radii: Sequence[float], *, k: float = 0.0) -> list[Part]:
    """A tube through ``points`` (local mm) whose radius goes through ``radii``."""
    out = []
    for i in range(len(points) - 1):
        out.append(
            round_cone_part(f"{name}[{i}]", points[i], points[i + 1], radii[i], radii[i + 1], k=k)
        )
    return out


def evaluate_parts(
    parts: Sequence[Part],
    frame: Frame,
    grid: ScannerGrid,
    block: Block,
    *,
    margin: float,
    local: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """SDF (mm, float32, ``block.shape``) of the compound shape made of ``parts``.

    Parameters
    ----------
    parts
        Applied in order: each union or subtraction acts on the result of the ones before.
    frame
        Maps LPS to the parts' local coordinates.
    margin
        How far (mm) outside and inside the surface the SDF must be right. Voxels further
        from every part than this get :data:`FAR` or a value at least ``margin`` away.
    local
        Local coordinates of the block if already computed (saves the transform).
    """
    if local is None:
        local = frame.to_local(block.x, block.y, block.z)
    a, b, c = (np.broadcast_to(v, block.shape) for v in local)
    d = np.full(block.shape, FAR, dtype=np.float32)
    origin = [s.start for s in block.index]
    for part in parts:
        pad = margin + part.k
        lo_w, hi_w = frame.world_bounds(part.lo - pad, part.hi + pad)
        box = grid.index_box(lo_w, hi_w, within=block.index)
        if box is None:
            continue
        sub = tuple(slice(s.start - o, s.stop - o) for s, o in zip(box, origin))
        val = part.fn(a[sub], b[sub], c[sub])
        if part.op == "union":
            d[sub] = S.smooth_union(d[sub], val, part.k)
        else:
            d[sub] = S.smooth_subtract(d[sub], val, part.k)
    return d


def parts_bounds(parts: Sequence[Part], frame: Frame, pad: float) -> tuple[np.ndarray, np.ndarray]:
    """LPS bounds (mm) of the union parts of a compound shape, enlarged by ``pad``."""
    los, his = [], []
    for p in parts:
        if p.op != "union":
            continue
        lo, hi = frame.world_bounds(p.lo - pad, p.hi + pad)
        los.append(lo)
        his.append(hi)
    return np.min(los, axis=0), np.max(his, axis=0)
