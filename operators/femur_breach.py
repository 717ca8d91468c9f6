"""Restore the femur's outline where a lytic lesion has broken through the cortex.

Marrow, cancellous bone and a lesion inside intact cortex are recovered by filling the holes of each
axial cross-section. Where a lesion has destroyed part of the cortex the cross-section is an open
crescent, and filling recovers nothing: the lesion (20-80 HU, like the muscle around it) would be
left outside the femur although it replaced bone. In the shaft and the trochanteric region the bone's
outline changes slowly along its length, so a run of such *breached* cross-sections is rebuilt slice
by slice from the intact cross-section at each end of the run, in polar form:

* seen from the centre of the neighbouring outline (intact, or rebuilt one slice before), each
  direction of the breached cross-section is *intact* when its outermost pixel lies on the
  cross-section's convex hull (no crescent opening) or, given the CT, has cortex just inside it (a
  normal notch of the bone is lined with cortex, the edge a lesion leaves is not), and is not more
  than a few mm inside the neighbour's outline (no bite whose remnant is convex, cut off by a flat
  chord) unless dense cortex lines it (where a trochanter ends);
* intact directions keep the cortex' own radius; the others take the neighbour's radius plus the
  offset between the two outlines interpolated from the intact directions on either side, so that
  the rebuilt outline joins the cortex that is left without a step;
* the sweeps from both ends are blended through their signed distance maps in proportion to the
  distance from each end (shape-based interpolation). A run with an intact end on one side only is
  carried from that side.

Fitting every slice to the cortex that is left keeps the carried outline from drifting, and no pixel
is added beyond intact cortex. In the diaphysis, whose cross-section is convex, the convex hull of the
crescent is added as well.

A lesion that opens through the cortex into a concave stretch of the outline (the notch beside the
lesser trochanter) leaves a cross-section that is neither a crescent nor short of area, so it is not
judged breached. It shows as a *lesion cavity*: a concavity of the outline (convex hull minus
cross-section) that is deep for the width of its mouth and walled by cancellous bone rather than
cortex. :func:`fill_lesion_cavities` fills those; a normal notch is shallow for its width and lined
with cortex.

Arrays are canonical views: axis 0 runs along the body axis (towards the head), axes 1 and 2 span the
axial plane; spacing in mm.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from scipy import ndimage as ndi

logger = logging.getLogger(__name__)

#: Each opening of a breached outline is widened by this angle on either side (degrees).
_OPENING_MARGIN_DEG = 4.0

#: Diaphyseal cortex (99th percentile of the shaft's voxels, HU) for which the cortex levels of
#: :func:`_rebuild_from_neighbour` are set; see :func:`_cortex_levels`.
_REFERENCE_CORTEX_HU = 1700.0


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


class _PolarGrid:
    """Polar coordinates of the pixels of a cross-section around a centre: radius (mm) and angle bin."""

    def __init__(self, shape: tuple[int, int], spacing: tuple[float, float], n_angles: int) -> None:
        self._yy, self._xx = np.indices(shape)
        self._spacing = spacing
        self.n_angles = n_angles

    def around(self, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dy = (self._yy - centre[0]) * self._spacing[0]
        dx = (self._xx - centre[1]) * self._spacing[1]
        bins = ((np.arctan2(dx, dy) + np.pi) / (2 * np.pi) * self.n_angles).astype(np.int64) % self.n_angles
        return np.hypot(dy, dx), bins

    def outer_radius(self, mask: np.ndarray, r: np.ndarray, bins: np.ndarray) -> np.ndarray:
        """Radius (mm) of the outermost pixel of ``mask`` in each direction; 0 where it has none."""
        out = np.zeros(self.n_angles)
        np.maximum.at(out, bins[mask], r[mask])
        return out


def _circular_opening(flags: np.ndarray, width: int) -> np.ndarray:
    """Binary opening of a circular 1D array: runs shorter than ``width`` go."""
    pad = width
    wrapped = np.r_[flags[-pad:], flags, flags[:pad]]
    return ndi.binary_opening(wrapped, structure=np.ones(width, dtype=bool))[pad:-pad]


def _circular_dilation(flags: np.ndarray, bins: int) -> np.ndarray:
    """Widen the runs of a circular 1D array by ``bins`` on each side."""
    wrapped = np.r_[flags[-bins:], flags, flags[:bins]]
    return ndi.binary_dilation(wrapped, structure=np.ones(2 * bins + 1, dtype=bool))[bins:-bins]


def _rebuild_from_neighbour(
    neighbour: np.ndarray,
    cross_section: np.ndarray,
    hull: np.ndarray | None,
    grid: _PolarGrid,
    *,
    tolerance_mm: float,
    max_shrink_mm: float | None,
    image: np.ndarray | None = None,
    cortex_hu: float = 400.0,
    dense_cortex_hu: float = 700.0,
    cortex_depth_mm: float = 2.5,
) -> np.ndarray:
    """Rebuild one breached cross-section from its neighbour's (intact or rebuilt) outline.

    Parameters
    ----------
    neighbour:
        bool (P, L) outline of the adjacent cross-section, filled.
    cross_section:
        bool (P, L) what is left of this cross-section (cortex, maybe cancellous bone).
    hull:
        Convex hull of ``cross_section`` (None: not computed; every direction counts as on the hull).
    max_shrink_mm:
        A direction whose outermost pixel lies more than this inside the neighbour's outline is
        breached (None: no such test).
    image:
        float (P, L) CT of the cross-section in HU, or None.
    cortex_hu, cortex_depth_mm:
        With ``image``, a direction with a pixel of at least ``cortex_hu`` within ``cortex_depth_mm``
        inside its outermost pixel is lined with cortex and counts as on the hull.
    dense_cortex_hu:
        With ``image``, a direction lined with cortex at least this dense is intact even where it lies
        more than ``max_shrink_mm`` inside the neighbour's outline.

    Returns
    -------
    numpy.ndarray
        bool (P, L): ``cross_section`` plus the rebuilt outline's inside.
    """
    r, bins = grid.around(_centroid(neighbour))
    r_neighbour = grid.outer_radius(neighbour, r, bins)
    if not cross_section.any():
        return neighbour.copy()
    r_left = grid.outer_radius(cross_section, r, bins)
    r_hull = grid.outer_radius(hull, r, bins) if hull is not None else r_left
    on_hull = r_hull - r_left <= tolerance_mm
    dense = np.zeros(grid.n_angles, dtype=bool)
    if image is not None:
        # A concave stretch of outline is intact when cortex lines it (the notch of a normal bone);
        # the edge a lesion leaves is cancellous bone or lesion, not cortex.
        near_edge = cross_section & (r >= r_left[bins] - cortex_depth_mm)
        peak = np.full(grid.n_angles, -np.inf)
        np.maximum.at(peak, bins[near_edge], image[near_edge])
        on_hull |= peak >= cortex_hu
        dense = peak >= dense_cortex_hu
    intact = (r_left > 0) & (r_neighbour > 0) & on_hull
    if max_shrink_mm is not None:
        # An outline that falls far inside its neighbour's is a bite, unless dense cortex lines it: the
        # end of the greater or lesser trochanter (a sclerotic rim around a lesion is less dense).
        intact &= (r_left >= r_neighbour - max_shrink_mm) | dense
    # A direction or two judged intact inside an opening is noise (a spur of cortex at an angle).
    intact = _circular_opening(intact, 3)
    # Where the opening meets the cortex that is left, the remnant bends inward (the end of a flat
    # cut, the lip of a crescent) without being judged breached: taking the offset there would pull
    # the rebuilt outline in, and the pull would grow slice by slice. Widen each opening a little.
    intact = ~_circular_dilation(~intact, max(1, round(_OPENING_MARGIN_DEG / 360.0 * grid.n_angles)))
    if intact.sum() < 0.15 * grid.n_angles:
        # Almost nothing left to fit to: carry the neighbour's outline over as it is.
        radius = r_neighbour
    else:
        known = np.flatnonzero(intact)
        offset = (r_left - r_neighbour)[known]
        n = grid.n_angles
        # Linear interpolation of the offset around the circle, across each opening.
        between = np.interp(np.arange(n), np.r_[known - n, known, known + n], np.r_[offset, offset, offset])
        radius = np.where(intact, r_left, np.maximum(r_neighbour + between, 0.0))
    return cross_section | (r <= radius[bins] + tolerance_mm / 3.0)


def repair_cortical_breaches(
    femur: np.ndarray,
    *,
    spacing: tuple[float, float, float],
    z_range: tuple[int, int],
    convex_range: tuple[int, int],
    blocked: np.ndarray | None = None,
    image: np.ndarray | None = None,
    hull_ratio: float = 1.2,
    area_drop: float = 0.8,
    max_bridge_mm: float = 100.0,
    one_sided_mm: float = 60.0,
    max_shrink_mm: float = 3.0,
    n_angles: int = 180,
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
    image:
        float (S, P, L) CT in HU, same shape: lets a concave stretch of outline lined with cortex count
        as intact. Without it only the convex hull tells.
    hull_ratio:
        A cross-section is breached when its convex hull is this much larger than it...
    area_drop:
        ...or when its area falls below this fraction of the median of its intact neighbours.
    max_bridge_mm:
        Runs of breached cross-sections longer than this are not rebuilt beyond it from either end.
    one_sided_mm:
        A run with an intact cross-section at one end only is rebuilt at most this far from it.
    max_shrink_mm:
        A direction whose remaining outline lies more than this inside the outline of the
        cross-section rebuilt before it (one slice nearer the intact end) is breached.
    n_angles:
        Directions of the polar outline (180: 2 degrees each).

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
    grid = _PolarGrid(femur.shape[1:], plane, n_angles)
    cortex = {} if image is None else _cortex_levels(femur, image, convex_range)
    tolerance = 1.5 * max(plane)

    def is_intact(k: int) -> bool:
        return 0 <= k < z1 - z0 and area[k] > 0 and not breached[k]

    n_rebuilt = 0
    for run in _runs(np.flatnonzero(breached), lambda k: lo_z <= z0 + k < hi_z):
        first, last = run[0], run[-1]
        below = first - 1 if is_intact(first - 1) else None
        above = last + 1 if is_intact(last + 1) else None
        reach_mm = max_bridge_mm if (below is not None and above is not None) else one_sided_mm
        # Sweep from each intact end, each cross-section rebuilt from the one before it.
        upward: dict[int, np.ndarray] = {}
        downward: dict[int, np.ndarray] = {}
        for end, order, sweep in ((below, run, upward), (above, run[::-1], downward)):
            if end is None:
                continue
            previous = main[end]
            for k in order:
                if abs(k - end) * spacing[0] > reach_mm:
                    break
                previous = _rebuild_from_neighbour(
                    previous, main[k], hulls.get(k), grid, tolerance_mm=tolerance, max_shrink_mm=max_shrink_mm,
                    image=None if image is None else image[z0 + k], **cortex,
                )
                sweep[k] = previous
        for k in run:
            if k in upward and k in downward:
                assert below is not None and above is not None
                t = (k - below) / (above - below)
                add = ((1 - t) * _signed_distance(upward[k], plane) + t * _signed_distance(downward[k], plane)) < 0
            elif k in upward or k in downward:
                add = upward[k] if k in upward else downward[k]
            else:
                continue
            z = z0 + k
            if convex_range[0] <= z < convex_range[1] and k in hulls:
                add = add | hulls[k]
            if blocked is not None:
                add = add & ~blocked[z]
            if (add & ~out[z]).any():
                out[z] |= add
                n_rebuilt += 1
    logger.debug(
        "%d breached cross-section(s), %d rebuilt within slices %d-%d", int(breached.sum()), n_rebuilt, lo_z, hi_z
    )
    return out


#: A lesion cavity is at least this deep (mm, from its mouth on the convex hull)...
_CAVITY_MIN_DEPTH_MM = 6.0
#: ...at least this deep for the width of its mouth (a normal notch of the femur is shallower: the
#: deepest seen on normal synthetic femurs was 0.6 of its mouth at >= 6 mm)...
CAVITY_MIN_DEPTH_TO_MOUTH = 0.7
#: ...or this, between the neck and the top of the greater trochanter: a lesion that destroyed the
#: trochanter's lateral wall leaves a bay 15 mm deep behind a 50-60 mm mouth there.
TROCHANTER_CAVITY_MIN_DEPTH_TO_MOUTH = 0.2
#: ...and at least this fraction of its wall is not lined with cortex.
_CAVITY_MIN_UNLINED = 0.5
#: A shallower cavity (down to this depth for its mouth) is filled when at least this share of its wall is
#: unlined: a lesion that destroyed the lateral wall of the greater trochanter below the neck leaves a bay
#: 0.25-0.4 times as deep as its 20-45 mm mouth, walled by cancellous bone; the normal notches of the
#: trochanteric region that shallow are lined with cortex (unlined share 0-0.3 on the standard studies).
WIDE_BAY_MIN_DEPTH_TO_MOUTH = 0.2
WIDE_BAY_MIN_UNLINED = 0.6
#: Concavities smaller than this (mm^2) are outline noise, never judged.
_CAVITY_MIN_AREA_MM2 = 15.0
#: Gaussian smoothing (mm) of the CT before the lining test: a noisy voxel of dense cancellous bone
#: must not pass for cortex.
_CAVITY_SMOOTHING_MM = 0.7


def fill_lesion_cavities(
    femur: np.ndarray,
    *,
    spacing: tuple[float, float, float],
    z_range: tuple[int, int],
    image: np.ndarray,
    convex_range: tuple[int, int],
    blocked: np.ndarray | None = None,
    cortex_depth_mm: float = 2.5,
    min_depth_to_mouth: float = CAVITY_MIN_DEPTH_TO_MOUTH,
) -> np.ndarray:
    """Fill the cavities a lesion leaves where it opens through the cortex into a concave outline.

    In each cross-section of ``z_range`` the concavities of the outline (convex hull minus
    cross-section, 8-connected pieces) are judged. One is a lesion cavity, and is filled, when

    * it is at least 6 mm deep (distance from the hull's edge) and at least ``min_depth_to_mouth`` (0.7)
      times as deep as its mouth (its pixels on the hull's edge) is wide: a normal notch or groove of
      the shaft is shallow for its width;
    * at least half of its wall (the cross-section's pixels beside it) has no cortex within
      ``cortex_depth_mm``: the edge a lesion leaves is cancellous bone, a normal notch is lined with
      cortex. Cortex is the smoothed CT at the dense-cortex level of :func:`_cortex_levels` (700 HU for
      a 1700 HU diaphysis, lower in faint bone);
    * or, for a wide bay shallower than that (down to :data:`WIDE_BAY_MIN_DEPTH_TO_MOUTH` of its mouth),
      at least :data:`WIDE_BAY_MIN_UNLINED` of its wall has no cortex: what a lesion leaves of a
      destroyed trochanteric wall;
    * it does not touch ``blocked`` (another bone): a concavity against the acetabulum or a sliver of
      neighbouring bone is a joint, not a lesion.

    Parameters
    ----------
    femur:
        bool (S, P, L) femur mask, each cross-section's enclosed holes already filled.
    spacing:
        Voxel size in mm along (S, P, L).
    z_range:
        Half-open range of slices (axis 0) to judge: the diaphysis and the trochanteric region.
    image:
        float (S, P, L) CT in HU, same shape.
    convex_range:
        Half-open range of diaphyseal slices, for the cortex levels (see :func:`_cortex_levels`).
    blocked:
        bool, same shape: voxels of other bones, never added.
    cortex_depth_mm:
        How far inside a wall pixel cortex may lie for the wall to count as lined (mm).
    min_depth_to_mouth:
        Smallest depth of a filled cavity for the width of its mouth. Where the outline is that of the
        neck and the top of the greater trochanter, a lesion that destroyed the trochanter's wall
        leaves a wide bay, not a deep pit: there :data:`TROCHANTER_CAVITY_MIN_DEPTH_TO_MOUTH`, and the
        lining test alone tells it from the normal notches, which are lined with cortex.

    Returns
    -------
    numpy.ndarray
        The mask with the lesion cavities filled (a new array; voxels are only ever added).
    """
    lo_z, hi_z = max(0, z_range[0]), min(femur.shape[0], z_range[1])
    out = femur.copy()
    if hi_z <= lo_z:
        return out
    plane = (spacing[1], spacing[2])
    dense_hu = _cortex_levels(femur, image, convex_range).get("dense_cortex_hu", 700.0)
    # Each cross-section is judged in its own box, with room for the smoothing and the lining reach around it.
    pad = int(np.ceil((cortex_depth_mm + 4.0 * _CAVITY_SMOOTHING_MM) / min(plane))) + 1
    n_filled = 0
    for z in range(lo_z, hi_z):
        rows = np.flatnonzero(femur[z].any(axis=1))
        if rows.size == 0:
            continue
        cols = np.flatnonzero(femur[z].any(axis=0))
        box = (
            slice(max(0, int(rows[0]) - pad), int(rows[-1]) + 1 + pad),
            slice(max(0, int(cols[0]) - pad), int(cols[-1]) + 1 + pad),
        )
        cavities = _lesion_cavities_of_section(
            femur[z][box],
            image[z][box],
            None if blocked is None else blocked[z][box],
            plane=plane,
            dense_cortex_hu=dense_hu,
            cortex_depth_mm=cortex_depth_mm,
            min_depth_to_mouth=min_depth_to_mouth,
        )
        if cavities is not None:
            out[z][box] |= cavities
            n_filled += 1
    logger.debug("lesion cavities filled in %d cross-section(s) within slices %d-%d", n_filled, lo_z, hi_z)
    return out


def _lesion_cavities_of_section(
    section: np.ndarray,
    image: np.ndarray,
    blocked: np.ndarray | None,
    *,
    plane: tuple[float, float],
    dense_cortex_hu: float,
    cortex_depth_mm: float,
    min_depth_to_mouth: float,
) -> np.ndarray | None:
    """The lesion cavities of one cross-section (see :func:`fill_lesion_cavities`), or None if it has none.

    ``section`` bool (P, L) and ``image`` (HU) and ``blocked`` of the same box; ``plane`` its pixel size (mm).
    """
    if section.sum() < 3:
        return None
    pixel_mm2 = plane[0] * plane[1]
    eight = np.ones((3, 3), dtype=bool)
    hull = _convex_hull(section)
    concave = hull & ~section
    pieces, n = ndi.label(concave, structure=eight)
    if n == 0:
        return None
    large = np.flatnonzero(np.bincount(pieces.ravel())[1:] * pixel_mm2 >= _CAVITY_MIN_AREA_MM2) + 1
    if large.size == 0:
        return None
    # Depth below the hull's edge; one voxel of padding so that a hull at the box's edge is measured right.
    depth = ndi.distance_transform_edt(np.pad(hull, 1), sampling=plane)[1:-1, 1:-1]
    ry, rx = (int(np.floor(cortex_depth_mm / s)) for s in plane)
    yy, xx = np.ogrid[-ry:ry + 1, -rx:rx + 1]
    reach = (yy * plane[0]) ** 2 + (xx * plane[1]) ** 2 <= cortex_depth_mm**2
    outside_hull = ndi.binary_dilation(~hull, structure=eight)
    lined = None
    found = np.zeros_like(section)
    for i in large:
        piece = pieces == i
        deepest = float(depth[piece].max())
        if deepest < _CAVITY_MIN_DEPTH_MM:
            continue
        mouth_y, mouth_x = np.nonzero(piece & outside_hull)
        mouth_mm = max(plane)
        if mouth_y.size:
            dy = (mouth_y[:, None] - mouth_y[None, :]) * plane[0]
            dx = (mouth_x[:, None] - mouth_x[None, :]) * plane[1]
            mouth_mm += float(np.hypot(dy, dx).max())
        # A wide, shallow bay is judged by its lining alone, with a stricter share of unlined wall.
        wide_bay = deepest < min_depth_to_mouth * mouth_mm
        if wide_bay and deepest < WIDE_BAY_MIN_DEPTH_TO_MOUTH * mouth_mm:
            continue
        around = ndi.binary_dilation(piece, structure=eight)
        if blocked is not None and (around & blocked).any():
            continue
        wall = around & section
        if not wall.any():
            continue
        if lined is None:
            sigma = (_CAVITY_SMOOTHING_MM / plane[0], _CAVITY_SMOOTHING_MM / plane[1])
            smooth = ndi.gaussian_filter(image.astype(np.float32), sigma)
            lined = ndi.binary_dilation(section & (smooth >= dense_cortex_hu), structure=reach)
        unlined = float((wall & ~lined).sum()) / float(wall.sum())
        if unlined < (WIDE_BAY_MIN_UNLINED if wide_bay else _CAVITY_MIN_UNLINED):
            continue
        found |= piece  # no pixel of another bone: a piece touching one was skipped above
    return found if found.any() else None


def _cortex_levels(femur: np.ndarray, image: np.ndarray, convex_range: tuple[int, int]) -> dict[str, float]:
    """Cortex levels for :func:`_rebuild_from_neighbour` and the lining test of lesion cavities, scaled
    down for faint bone.

    The levels (400 and 700 HU) suit a diaphyseal cortex of about 1700 HU (its 99th percentile). Bone
    that is fainter as a whole (osteoporosis, high kVp) has a fainter cortex everywhere: where it is,
    the levels are lowered in proportion, or the normal notch between the neck and the end of the
    greater trochanter would be taken for a breach and filled. Never raised: dense bone keeps them.
    """
    lo, hi = max(0, convex_range[0]), min(femur.shape[0], convex_range[1])
    shaft = femur[lo:hi]
    if hi - lo < 1 or not shaft.any():
        return {}
    reference = float(np.percentile(image[lo:hi][shaft], 99.0))
    scale = float(np.clip(reference / _REFERENCE_CORTEX_HU, 0.5, 1.0))
    return {"cortex_hu": 400.0 * scale, "dense_cortex_hu": 700.0 * scale}


def _runs(indices: np.ndarray, keep: Callable[[int], bool]) -> list[list[int]]:
    """Runs of consecutive integers among the sorted ``indices`` that ``keep`` accepts."""
    runs: list[list[int]] = []
    for k in (int(i) for i in indices):
        if not keep(k):
            continue
        if runs and k == runs[-1][-1] + 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    return runs
