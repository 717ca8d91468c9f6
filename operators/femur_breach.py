"""Restore the femur's outline where a lytic lesion has broken through the cortex.

Marrow, cancellous bone and a lesion inside intact cortex are recovered by filling the holes of each
axial cross-section. Where a lesion has destroyed part of the cortex the cross-section is an open
crescent, and filling recovers nothing: the lesion (20-80 HU, like the muscle around it) would be
left outside the femur although it replaced bone. In the shaft and the trochanteric region the bone's
outline changes slowly along its length, so such a *breached* cross-section is rebuilt from the
intact cross-sections above and below it: their signed distance maps, moved to the interpolated
centre, are blended linearly (shape-based interpolation) and the blend is grown or shrunk so that its
outline passes through the cortex that is left. In the diaphysis, whose cross-section is convex, the
convex hull of the crescent is added as well.

Arrays are canonical views: axis 0 runs along the body axis (towards the head), axes 1 and 2 span the
axial plane; spacing in mm.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage as ndi

logger = logging.getLogger(__name__)


def _signed_distance(mask: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """2D signed distance in mm: negative inside, positive outside."""
    inside = ndi.distance_transform_edt(mask, sampling=spacing)
    outside = ndi.distance_transform_edt(~mask, sampling=spacing)
    return (outside - inside).astype(np.float32)


def _convex_hull(mask: np.ndarray) -> np.ndarray:
    """Convex hull image of a non-empty 2D mask, computed in the mask's bounding box.

    The hull of the pixels cannot reach a pixel centre outside their bounding box, and the box is a
    fraction of the femur's whole cross-section box in the shaft: same image, far less work.
    """
    from skimage.morphology import convex_hull_image

    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    box = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
    out = np.zeros(mask.shape, dtype=bool)
    out[box] = convex_hull_image(mask[box])
    return out


def _centroid(mask: np.ndarray) -> np.ndarray:
    return np.array(ndi.center_of_mass(mask), dtype=np.float64)


def _within_intact_outline(
    mask: np.ndarray,
    hull: np.ndarray | None,
    spacing: tuple[float, float],
    rebuilt: np.ndarray | None = None,
    n_angles: int = 180,
) -> np.ndarray:
    """Pixels not beyond the cross-section's own outline where that outline is intact.

    Seen from the cross-section's centre, the outline is intact in a direction when the mask's
    outermost pixel there lies on the convex hull (no crescent opening) and, given the rebuilt
    outline's signed distance ``rebuilt`` (mm, negative inside), on that outline too (no bite whose
    remnant is convex, cut off by a flat chord). Nothing beyond an intact outline may be added; in
    the other directions the mask stops short of the true outline and any radius is allowed.
    """
    if not mask.any() or (hull is None and rebuilt is None):
        return np.ones(mask.shape, dtype=bool)
    cy, cx = _centroid(mask)
    yy, xx = np.indices(mask.shape)
    dy, dx = (yy - cy) * spacing[0], (xx - cx) * spacing[1]
    r = np.hypot(dy, dx)
    bins = ((np.arctan2(dx, dy) + np.pi) / (2 * np.pi) * n_angles).astype(np.int64) % n_angles
    tolerance = 1.5 * max(spacing)
    r_mask = np.zeros(n_angles)
    np.maximum.at(r_mask, bins[mask], r[mask])
    intact = r_mask > 0
    if hull is not None:
        r_hull = np.zeros(n_angles)
        np.maximum.at(r_hull, bins[hull], r[hull])
        intact &= (r_hull - r_mask) <= tolerance
    if rebuilt is not None:
        # The outermost pixel of each direction and the rebuilt outline's distance there.
        b, rr = bins[mask], r[mask]
        order = np.lexsort((rr, b))
        last = np.r_[b[order][1:] != b[order][:-1], True]
        depth = np.full(n_angles, -np.inf)
        depth[b[order][last]] = rebuilt[mask][order][last]
        intact &= depth >= -tolerance
    limit = np.where(intact, r_mask + 0.5 * max(spacing), np.inf)
    return r <= limit[bins]


def repair_cortical_breaches(
    femur: np.ndarray,
    *,
    spacing: tuple[float, float, float],
    z_range: tuple[int, int],
    convex_range: tuple[int, int],
    blocked: np.ndarray | None = None,
    hull_ratio: float = 1.3,
    area_drop: float = 0.8,
    max_bridge_mm: float = 100.0,
    one_sided_mm: float = 25.0,
    max_offset_mm: float = 4.0,
) -> np.ndarray:
    """Rebuild breached cross-sections of a femur mask.

    Parameters
    ----------
    femur:
        bool (S, P, L) femur mask with each cross-section's enclosed holes already filled.
    spacing:
        Voxel size in mm along (S, P, L).
    z_range:
        Half-open range of slices (axis 0) where cross-sections may be rebuilt: the diaphysis and the
        trochanteric region, not the head or the condyles whose outlines change too fast.
    convex_range:
        Half-open range of slices whose cross-section is convex (the diaphysis): there the convex hull
        of a breached cross-section is added too.
    blocked:
        bool, same shape: voxels that must not be added (other bones).
    hull_ratio:
        A cross-section is breached when its convex hull is this much larger than it...
    area_drop:
        ...or when its area falls below this fraction of the median of its intact neighbours.
    max_bridge_mm:
        Intact cross-sections farther than this from a breached one are not used to rebuild it.
    one_sided_mm:
        With an intact cross-section on one side only, it is carried over at most this far.
    max_offset_mm:
        Largest growth or shrinkage of the rebuilt outline when it is fitted to the remaining cortex.

    Returns
    -------
    numpy.ndarray
        The repaired mask (a new array; voxels are only ever added).
    """
    nz = femur.shape[0]
    lo_z, hi_z = max(0, z_range[0]), min(nz, z_range[1])
    if hi_z - lo_z < 3:
        return femur
    plane = (spacing[1], spacing[2])
    # Intact cross-sections outside the range may bracket breached ones inside it, so judge all.
    present = np.flatnonzero(femur.any(axis=(1, 2)))
    if present.size == 0:
        return femur
    z0, z1 = int(present[0]), int(present[-1]) + 1
    area = femur[z0:z1].sum(axis=(1, 2)).astype(np.float64)
    hulls: dict[int, np.ndarray] = {}
    breached = np.zeros(z1 - z0, dtype=bool)
    main = np.zeros_like(femur[z0:z1])
    for k in range(z1 - z0):
        if area[k] == 0:
            continue
        # The femur's own cross-section: its large in-plane pieces (a lesion can cut it in two).
        # A sliver of a neighbouring bone that went to the femur must not stretch the hull.
        pieces, n = ndi.label(femur[z0 + k], structure=np.ones((3, 3), dtype=bool))
        if n > 1:
            sizes = np.bincount(pieces.ravel())
            sizes[0] = 0
            main[k] = (sizes >= 0.2 * sizes.max())[pieces]
        else:
            main[k] = pieces > 0
        area[k] = main[k].sum()
        hull = _convex_hull(main[k])
        hulls[k] = hull
        if hull.sum() > hull_ratio * area[k]:
            breached[k] = True
    # A lesion can also take a bite without leaving a crescent: compare with intact neighbours.
    reach = max(1, int(round(30.0 / spacing[0])))
    for k in np.flatnonzero(~breached & (area > 0)):
        lo, hi = max(0, k - reach), min(z1 - z0, k + reach + 1)
        ref = area[lo:hi][~breached[lo:hi] & (area[lo:hi] > 0)]
        if ref.size >= 3 and area[k] < area_drop * np.median(ref):
            breached[k] = True
    if not breached.any():
        return femur
    out = femur.copy()
    intact = np.flatnonzero(~breached & (area > 0))
    max_gap = int(round(max_bridge_mm / spacing[0]))
    cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def sdf_of(k: int) -> tuple[np.ndarray, np.ndarray]:
        if k not in cache:
            m = main[k]
            cache[k] = (_signed_distance(m, plane), _centroid(m))
        return cache[k]

    n_rebuilt = 0
    for k in np.flatnonzero(breached):
        if not lo_z <= z0 + k < hi_z:
            continue
        below = intact[(intact < k) & (intact >= k - max_gap)]
        above = intact[(intact > k) & (intact <= k + max_gap)]
        add = np.zeros(femur.shape[1:], dtype=bool)
        blend = None
        if below.size and above.size:
            kb, ka = int(below[-1]), int(above[0])
            t = (k - kb) / (ka - kb)
            (sb, cb), (sa, ca) = sdf_of(kb), sdf_of(ka)
            centre = (1 - t) * cb + t * ca
            # Move both outlines to the interpolated centre before blending, so that the slant of
            # the shaft does not shrink the blend.
            sb_shift = ndi.shift(sb, centre - cb, order=1, mode="nearest")
            sa_shift = ndi.shift(sa, centre - ca, order=1, mode="nearest")
            blend = (1 - t) * sb_shift + t * sa_shift
        elif below.size or above.size:
            # Only one side is intact (the lesion reaches the end of the range): carry the nearest
            # intact outline over, centred on what is left of this cross-section, but not far.
            kn = int(below[-1]) if below.size else int(above[0])
            if abs(kn - k) * spacing[0] <= one_sided_mm:
                sn, cn = sdf_of(kn)
                blend = ndi.shift(sn, _centroid(main[k]) - cn, order=1, mode="nearest")
        if blend is not None:
            # Calibrate on what is left of the outline: the part of the cross-section's edge that
            # lies on its convex hull is mostly intact cortex, and the rebuilt outline should pass
            # through it. A constant offset of the signed distance grows or shrinks it so. The hull's
            # edge also runs along the flat cut of a bite, far inside the rebuilt outline: the upper
            # quartile, not the median, follows the intact part.
            hull = hulls.get(k)
            if hull is not None:
                rim = main[k] & hull & ~ndi.binary_erosion(hull)
                if rim.sum() >= 8:
                    level = np.percentile(blend[rim], 75)
                    offset = float(np.clip(level, -max_offset_mm, max_offset_mm))
                    blend = blend - np.float32(offset)
            add |= (blend < 0) & _within_intact_outline(main[k], hulls.get(k), plane, blend)
        z = z0 + k
        if convex_range[0] <= z < convex_range[1] and k in hulls:
            add |= hulls[k]
        if blocked is not None:
            add &= ~blocked[z]
        if add.any():
            out[z] |= add
            n_rebuilt += 1
    logger.debug(
        "%d breached cross-section(s), %d rebuilt within slices %d-%d", int(breached.sum()), n_rebuilt, lo_z, hi_z
    )
    return out
