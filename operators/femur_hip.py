"""Find the femoral head as a sphere, to separate it from the acetabulum across a thin joint gap.

The hip is where a femur segmentation most often fails: the head sits in the acetabular cup with a
1.5-4 mm cartilage gap, which partial volume bridges in places. Intensity alone then joins head and
pelvis at the brightest bridge. The head, however, is very nearly a sphere, and so is the cup around
it. Knowing that sphere, the splitter seeds the femur inside the head and the pelvis beyond the cup,
and only a thin shell is left for the image to decide.

Detection (coarse grid): each edge votes for the centres that would put it on a sphere of 14-36 mm
radius, once along its intensity gradient and once against it. On the head's surface the gradient
points inwards (from the dark gap into the bright cortex), on the cup's inner surface outwards, so a
ball in a socket is the one place that collects both kinds of votes at one centre; bones that are only
convex (trochanters, shaft) or only concave do not. The best such centre above the shaft whose radial
profile shows a bright rim and a dark gap is the head. Refinement (full resolution): the median radial intensity profile from
the centre, away from the neck, gives the head radius (steepest fall), the gap and the inner surface
of the cup (steepest rise after the gap); the centre is nudged within +-2 mm to sharpen that fall.
Where coarse voxels blur a thin gap away, the valley found can be the acetabulum's marrow instead, and
the "head" reaches through the cup's cortex: a head surface much farther out than the profile's rise
from the head's cancellous interior to its rim gives that away, and the rim then places the surface.

Positions here are in mm along the canonical (S, P, L) axes of the splitter, measured from the
centre of the full-resolution voxel of index 0: ``position_mm = full_index * spacing``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

logger = logging.getLogger(__name__)


#: Where the head's surface lies beyond the half-way rise of the radial profile from the head's cancellous
#: interior to its rim (mm), and the narrowest joint gap assumed between head and cup (mm); see
#: :func:`fit_head_sphere`.
RIM_TO_SURFACE_MM = 2.2
MIN_JOINT_GAP_MM = 1.5

#: Angular grid on which the cup's coverage of the head is recorded: polar angle from the canonical
#: superior axis (0..180 degrees) by azimuth in the posterior-left plane (-180..180 degrees).
_N_POLAR, _N_AZIMUTH = 36, 72


@dataclass(frozen=True, eq=False)
class HeadSphere:
    """A femoral head and its acetabular cup (canonical mm, see the module docstring).

    Attributes
    ----------
    centre_mm:
        (3,) centre of the head.
    head_radius_mm:
        Radius of the head's outer (articular) surface.
    cup_radius_mm:
        Radius of the cup's inner surface.
    neck_direction:
        (3,) unit vector from the centre towards the femoral neck.
    covered:
        bool (36, 72) grid of directions (see ``direction_bins``) in which a ray from the centre
        crosses the joint gap into the cup: there, bone beyond the cup's radius is pelvis.
    """

    centre_mm: np.ndarray
    head_radius_mm: float
    cup_radius_mm: float
    neck_direction: np.ndarray
    covered: np.ndarray

    def shifted(self, offset_mm: np.ndarray) -> HeadSphere:
        """The same head with its centre moved by ``offset_mm`` (to another grid's origin)."""
        return HeadSphere(self.centre_mm + offset_mm, self.head_radius_mm, self.cup_radius_mm, self.neck_direction, self.covered)


def direction_bins(dz: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(polar, azimuth) bin indices of the directions (dz, dy, dx) (need not be unit vectors)."""
    r = np.sqrt(dz * dz + dy * dy + dx * dx)
    polar = np.arccos(np.clip(dz / np.maximum(r, 1e-6), -1.0, 1.0))
    azimuth = np.arctan2(dx, dy)
    i = np.minimum((polar / np.pi * _N_POLAR).astype(np.int64), _N_POLAR - 1)
    j = np.minimum(((azimuth + np.pi) / (2 * np.pi) * _N_AZIMUTH).astype(np.int64), _N_AZIMUTH - 1)
    return i, j


def _bin_directions() -> np.ndarray:
    """(36, 72, 3) unit vectors at the centres of the direction bins."""
    polar = (np.arange(_N_POLAR) + 0.5) / _N_POLAR * np.pi
    azimuth = (np.arange(_N_AZIMUTH) + 0.5) / _N_AZIMUTH * 2 * np.pi - np.pi
    p, a = np.meshgrid(polar, azimuth, indexing="ij")
    return np.stack([np.cos(p), np.sin(p) * np.cos(a), np.sin(p) * np.sin(a)], axis=-1)


def _fibonacci_directions(n: int) -> np.ndarray:
    """``n`` nearly uniform unit vectors (n, 3)."""
    k = np.arange(n) + 0.5
    phi = np.arccos(1.0 - 2.0 * k / n)
    theta = np.pi * (1.0 + 5.0**0.5) * k
    return np.stack([np.cos(phi), np.sin(phi) * np.sin(theta), np.sin(phi) * np.cos(theta)], axis=1)


_DIRECTIONS = _fibonacci_directions(240)


def _radial_profile(
    image: np.ndarray, spacing: tuple[float, ...], centre_mm: np.ndarray, directions: np.ndarray, radii: np.ndarray
) -> np.ndarray:
    """Median over ``directions`` of the image sampled at ``centre + r * d`` (linear interpolation)."""
    pts = centre_mm[None, None, :] + radii[None, :, None] * directions[:, None, :]  # (nd, nr, 3)
    idx = pts / np.asarray(spacing)[None, None, :]
    vals = ndi.map_coordinates(image, idx.reshape(-1, 3).T, order=1, mode="nearest").reshape(idx.shape[:2])
    return np.median(vals, axis=0)


def _towards_cup(neck: np.ndarray) -> np.ndarray:
    """The directions of :data:`_DIRECTIONS` within 60 degrees of the cup's axis (opposite the neck)."""
    return _DIRECTIONS[_DIRECTIONS @ (-neck) > np.cos(np.deg2rad(60.0))]


@dataclass(frozen=True)
class _JointFit:
    head_radius: float
    cup_radius: float
    depth: float  # HU below the lower shoulder
    contrast: float  # HU: the deepest valley's shoulders over its floor, what the centre search maximises
    rim: float  # HU just inside the head's surface
    gap: float  # HU in the gap
    cup: float  # HU just beyond the cup's surface
    deepest_is_joint_like: bool  # the deepest valley itself passes as a joint (see _fit_joint)


def _shoulder_mm(spacing: tuple[float, ...]) -> float:
    """How far from a joint gap's deepest point its bright shoulders (head cortex inside, cup cortex
    outside) are looked for, mm: 4 mm, up to 6 mm on coarse voxels (twice the largest voxel size),
    which blur the shoulders away from the gap. Any wider and, across a thin gap (1-2 mm, an
    arthritic hip), the marrow of the acetabulum between its inner and outer cortex outscores the
    joint, and the cup's surface is taken at the acetabulum's outer cortex."""
    return float(np.clip(2.0 * max(spacing), 4.0, 6.0))


def _fit_joint(
    image: np.ndarray,
    spacing: tuple[float, ...],
    centre: np.ndarray,
    neck: np.ndarray,
    radii: np.ndarray,
    radius_range_mm: tuple[float, float],
    *,
    min_gap_depth_hu: float,
    min_rim_contrast_hu: float,
) -> _JointFit | None:
    """Head and cup radii and the gap's depth from the median radial profile opposite the neck.

    Looking away from the neck, within 60 degrees of the cup's axis, the median profile runs: head
    (cancellous, then cortex), the dark joint gap, the cup's cortex, and beyond it the acetabulum's
    marrow and outer cortex. The gap is the innermost valley between two bright shoulders that would pass
    as a joint, at least ``min_gap_depth_hu`` under its lower shoulder and ``min_rim_contrast_hu`` under
    its inner one, or the deepest valley where none would. The innermost, not the deepest: on thick
    slices a thin joint gap is shallow, while the acetabulum's marrow between its two cortices is a deeper
    valley 6-9 mm further out, and taking that for the joint fits the head as large as the cup. The head's
    surface is the steepest fall before the gap and the cup's surface the steepest rise after it.

    The centre search ranks centres by the deepest valley, whichever it is (``deepest_is_joint_like``
    first, then ``contrast``): joint and marrow are concentric, so either is sharpest at the head's
    centre, while a thin gap blurs out of the median away from it, and the marrow's contrast there would
    outbid the joint's found at the centre. Only where no centre's deepest valley passes does the
    innermost valley that does decide.
    """
    profile = _radial_profile(image, spacing, centre, _towards_cup(neck), radii)
    step = float(radii[1] - radii[0])
    w = max(1, int(round(_shoulder_mm(spacing) / step)))
    n = profile.size
    # Running maxima over windows cut at the ends (padding with -inf keeps them cut).
    edge = np.full(w, -np.inf, dtype=profile.dtype)
    padded = np.concatenate([edge, profile, edge])
    windows = np.lib.stride_tricks.sliding_window_view(padded, w + 1)
    left = windows[:n].max(axis=1)  # max over [r - shoulder, r]
    right = windows[w:w + n].max(axis=1)  # max over [r, r + shoulder]
    depth = np.minimum(left, right) - profile
    sel = (radii >= radius_range_mm[0]) & (radii <= radius_range_mm[1] + 4.0)
    if not sel.any():
        return None
    i_deepest = int(np.flatnonzero(sel)[np.argmax(depth[sel])])
    valley = np.zeros(n, dtype=bool)
    valley[1:-1] = (depth[1:-1] >= depth[:-2]) & (depth[1:-1] > depth[2:])  # local maxima of the depth
    joint_like = sel & valley & (depth >= min_gap_depth_hu) & (left - profile >= min_rim_contrast_hu)
    i_gap = int(np.flatnonzero(joint_like)[0]) if joint_like.any() else i_deepest
    r_gap = float(radii[i_gap])
    slope = np.gradient(profile, radii)
    before = (radii >= r_gap - 5.0) & (radii <= r_gap)
    after = (radii >= r_gap) & (radii <= r_gap + 5.0)
    r_head = float(radii[before][np.argmin(slope[before])])
    r_cup = max(float(radii[after][np.argmax(slope[after])]), r_head + 0.5)
    return _JointFit(
        head_radius=r_head,
        cup_radius=r_cup,
        depth=float(depth[i_gap]),
        contrast=float(left[i_deepest] + right[i_deepest] - 2.0 * profile[i_deepest]),
        rim=float(left[i_gap]),
        gap=float(profile[i_gap]),
        cup=float(right[i_gap]),
        deepest_is_joint_like=bool(joint_like[i_deepest]),
    )


def head_candidates(
    image: np.ndarray,
    spacing: tuple[float, float, float],
    *,
    shaft_top_mm: np.ndarray,
    shaft_direction: np.ndarray,
    medial: np.ndarray,
    radius_range_mm: tuple[float, float] = (14.0, 32.0),
    min_gradient_hu_per_mm: float = 40.0,
    max_candidates: int = 4,
    min_height_mm: float = 25.0,
) -> list[np.ndarray]:
    """Likely femoral-head centres above a femoral shaft, best first (coarse grid).

    Parameters
    ----------
    image:
        CT in HU on a (coarse) canonical (S, P, L) grid; positions are ``index * spacing``.
    spacing:
        Voxel size (mm) of ``image``.
    shaft_top_mm:
        (3,) upper end of the femoral shaft run (centre of its highest cross-section).
    shaft_direction:
        (3,) unit vector along the shaft, pointing up (towards the head).
    medial:
        (3,) unit vector towards the body midline at the hip.
    radius_range_mm:
        Plausible head radii.
    min_gradient_hu_per_mm:
        Edges weaker than this do not vote.
    max_candidates:
        How many centres to return at most.
    min_height_mm:
        How far above the run's end (along ``shaft_direction``) a centre must lie at least. A run that
        ends at the lesser trochanter or below has its head 50 mm or more above; a short run that reaches
        into the trochanteric region, where the field of view ends just below it, has it 15-30 mm above.

    Returns
    -------
    list of numpy.ndarray
        (3,) centres in mm on ``image``'s grid.
    """
    up = shaft_direction / np.linalg.norm(shaft_direction)
    # The head centre lies above the shaft run and medial to it: search a box around that region.
    centre_guess = shaft_top_mm + 80.0 * up + 40.0 * medial
    half = np.array([110.0, 75.0, 90.0])
    out = []
    for centre in socket_centres(image, spacing, centre_guess - half, centre_guess + half,
                                 radius_range_mm=radius_range_mm, min_gradient_hu_per_mm=min_gradient_hu_per_mm,
                                 max_candidates=4 * max_candidates):
        # The head is above the shaft run's end (well above a run that ends at the lesser trochanter or
        # below) and medial of it: 40-50 mm medial of the shaft axis in most hips, but the top of the run
        # can lean medially itself, so that only ~15 mm are left (a valgus neck, a rotated patient).
        if (centre - shaft_top_mm) @ up < min_height_mm or (centre - shaft_top_mm) @ medial < 5.0:
            continue
        out.append(centre)
        if len(out) == max_candidates:
            break
    return out


def socket_centres(
    image: np.ndarray,
    spacing: tuple[float, float, float],
    lo_mm: np.ndarray,
    hi_mm: np.ndarray,
    *,
    radius_range_mm: tuple[float, float] = (14.0, 32.0),
    min_gradient_hu_per_mm: float = 40.0,
    max_candidates: int = 16,
) -> list[np.ndarray]:
    """Centres of balls in sockets within a box, strongest first (coarse grid).

    Each edge votes for the centres that would put it on a sphere of ``radius_range_mm``, once along its
    gradient (a bright convex surface, such as a femoral head) and once against it (a bright concave
    surface, such as the acetabular cup); a centre scores the geometric mean of the two smoothed counts,
    so that only a ball inside a socket scores high.

    Parameters
    ----------
    image:
        CT in HU on a (coarse) canonical (S, P, L) grid; positions are ``index * spacing``.
    spacing:
        Voxel size (mm) of ``image``.
    lo_mm, hi_mm:
        (3,) corners of the box searched (mm on ``image``'s grid; clipped to the image).
    radius_range_mm:
        Plausible head radii.
    min_gradient_hu_per_mm:
        Edges weaker than this do not vote.
    max_candidates:
        How many centres to return at most (local maxima at least 15 mm apart).

    Returns
    -------
    list of numpy.ndarray
        (3,) centres in mm on ``image``'s grid.
    """
    spacing_a = np.asarray(spacing, dtype=np.float64)
    lo = np.maximum(0, np.floor(np.asarray(lo_mm) / spacing_a)).astype(int)
    hi = np.minimum(image.shape, np.ceil(np.asarray(hi_mm) / spacing_a) + 1).astype(int)
    if np.any(hi - lo < 8):
        return []
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    sub = np.asarray(image[box], dtype=np.float32)
    smooth = ndi.gaussian_filter(sub, 1.0)
    grads = [ndi.gaussian_filter1d(smooth, 1.0, axis=a, order=1) / np.float32(spacing_a[a]) for a in range(3)]
    mag = np.sqrt(grads[0] ** 2 + grads[1] ** 2 + grads[2] ** 2)
    strong = mag > min_gradient_hu_per_mm
    if strong.sum() < 50:
        return []
    pos = np.argwhere(strong) * spacing_a
    unit = np.stack([g[strong] for g in grads], axis=1) / mag[strong][:, None]
    del grads, mag, smooth
    # Each vote is the flat index of the voxel it lands in; bincount then adds them up (whole numbers:
    # the same as adding 1.0 per vote).
    convex_votes: list[np.ndarray] = []
    concave_votes: list[np.ndarray] = []
    step = float(spacing_a.min()) / 2.0
    for r in np.arange(radius_range_mm[0], radius_range_mm[1] + 4.0 + 1e-6, step):
        for sign, landed in ((1.0, convex_votes), (-1.0, concave_votes)):
            target = np.round((pos + sign * r * unit) / spacing_a).astype(np.int64)
            # Per axis on the columns: several times faster than a reduction along the short axis.
            ok = np.ones(len(target), dtype=bool)
            for axis, n in enumerate(sub.shape):
                ok &= (target[:, axis] >= 0) & (target[:, axis] < n)
            landed.append(np.ravel_multi_index(tuple(target[ok].T), sub.shape))
    convex = np.bincount(np.concatenate(convex_votes), minlength=sub.size).reshape(sub.shape).astype(np.float32)
    concave = np.bincount(np.concatenate(concave_votes), minlength=sub.size).reshape(sub.shape).astype(np.float32)
    del convex_votes, concave_votes
    score = np.sqrt(ndi.gaussian_filter(convex, 1.0) * ndi.gaussian_filter(concave, 1.0))
    del convex, concave
    peaks = _peaks(score, max_candidates, min_distance=int(np.ceil(15.0 / spacing_a.min())))
    return [(np.asarray(peak) + lo) * spacing_a for peak in peaks]


def fit_head_sphere(
    image: np.ndarray,
    spacing: tuple[float, float, float],
    centre_mm: np.ndarray,
    neck_direction: np.ndarray,
    *,
    radius_range_mm: tuple[float, float] = (14.0, 32.0),
    search_mm: float = 3.0,
    min_gap_depth_hu: float = 60.0,
    min_rim_contrast_hu: float = 250.0,
    min_coverage: float = 0.25,
    rim_to_surface_mm: float = RIM_TO_SURFACE_MM,
    max_rim_to_surface_mm: float = 4.0,
    min_joint_gap_mm: float = MIN_JOINT_GAP_MM,
) -> HeadSphere | None:
    """Fit head and cup around a candidate centre at full resolution; None if it is no hip joint.

    Parameters
    ----------
    image:
        Full-resolution canonical CT view (HU); only a box around the candidate is read.
    spacing:
        Its voxel size (mm).
    centre_mm:
        Candidate centre (canonical mm of this grid).
    neck_direction:
        (3,) unit vector from the centre towards the femoral neck (the cup lies opposite), an
        anatomical guess that is refined from the image.
    radius_range_mm:
        Plausible head radii.
    search_mm:
        The centre is moved by up to about this distance per axis to make the joint sharpest.
    min_gap_depth_hu, min_rim_contrast_hu:
        To accept the fit, the joint gap in the median radial profile must lie this far below the
        lower of its two bright shoulders (the cup's cortex can be faint on thick slices), and this
        far below the head's rim.
    min_coverage:
        Least fraction of the sphere's directions in which the cup must be seen across the gap.
    rim_to_surface_mm, max_rim_to_surface_mm, min_joint_gap_mm:
        The head's surface lies about ``rim_to_surface_mm`` beyond the radius at which the profile rises
        half-way from the head's cancellous interior to its rim (the subchondral cortex, blurred by the
        voxels; 1.6-2.8 mm on 0.8-1.9 mm voxels). A fitted surface more than ``max_rim_to_surface_mm``
        beyond that rise went through the joint into the cup (a gap too faint on thick slices, and the
        acetabulum's marrow taken for it): the head's radius is then taken from the rise, and the cup's
        inner surface ``min_joint_gap_mm`` beyond it, so that the pelvis is seeded in its own cortex.
    """
    spacing_a = np.asarray(spacing, dtype=np.float64)
    boxed = _smoothed_box(image, spacing_a, np.asarray(centre_mm, dtype=np.float64),
                          radius_range_mm[1] + 14.0 + search_mm)
    if boxed is None:
        return None
    sub, origin = boxed
    radii = np.arange(4.0, radius_range_mm[1] + 12.0, 0.25)
    neck = neck_direction / np.linalg.norm(neck_direction)
    # Grid search of the joint's contrast: +-search_mm in 1.5 mm steps, then +-0.5 mm around the best.
    centre = np.asarray(centre_mm, dtype=np.float64)
    fit = None

    def rank(f: _JointFit) -> tuple[bool, bool, float]:
        # A fit that shows a joint (gap deep enough, under a bright enough rim, a head's radius) beats
        # one that does not, however sharp: near the true centre a dark ring inside the head (a cyst,
        # marrow) can give a sharper but smaller "joint" that the checks below would then reject. Among
        # those, centres whose deepest valley is itself joint-like come first (see _fit_joint).
        plausible = (f.depth >= min_gap_depth_hu and f.rim - f.gap >= min_rim_contrast_hu
                     and radius_range_mm[0] <= f.head_radius <= radius_range_mm[1])
        return f.deepest_is_joint_like and plausible, plausible, f.contrast

    for step, half in ((1.5, search_mm), (0.5, 0.5)):
        offsets = np.arange(-half, half + 1e-6, step)
        best_c, best_fit = centre, fit
        for dz in offsets:
            for dy in offsets:
                for dx in offsets:
                    c = centre + np.array([dz, dy, dx])
                    trial = _fit_joint(sub, spacing, c - origin, neck, radii, radius_range_mm,
                                       min_gap_depth_hu=min_gap_depth_hu, min_rim_contrast_hu=min_rim_contrast_hu)
                    if trial is not None and (best_fit is None or rank(trial) > rank(best_fit)):
                        best_c, best_fit = c, trial
        centre, fit = best_c, best_fit
    if fit is None or fit.depth < min_gap_depth_hu or fit.rim - fit.gap < min_rim_contrast_hu:
        logger.debug(
            "rejected a head candidate near %s mm: no joint gap around it (%s)", np.round(centre_mm, 1),
            "no radial profile with a gap" if fit is None else
            f"gap depth {fit.depth:.0f} HU, rim above gap {fit.rim - fit.gap:.0f} HU, head radius {fit.head_radius:.1f} mm",
        )
        return None
    if not radius_range_mm[0] <= fit.head_radius <= radius_range_mm[1]:
        logger.debug("rejected a head candidate near %s mm: radius %.1f mm", np.round(centre_mm, 1), fit.head_radius)
        return None
    neck = _neck_direction(sub, spacing, centre - origin, neck, fit.head_radius, fit.cup_radius)
    covered = _cup_coverage(sub, spacing, centre - origin, neck, fit)
    # A cup holds a good part of the head (about half); a few matching rays are a coincidence.
    solid_angle = np.sin((np.arange(_N_POLAR) + 0.5) / _N_POLAR * np.pi)[:, None]
    coverage = float((covered * solid_angle).sum() / (solid_angle.sum() * _N_AZIMUTH))
    if coverage < min_coverage:
        logger.debug(
            "rejected a head candidate: centre %s mm, radius %.1f mm, cup %.1f mm, gap depth %.0f HU, but the cup"
            " covers only %.0f%%", np.round(centre, 1), fit.head_radius, fit.cup_radius, fit.depth, 100 * coverage,
        )
        return None
    logger.debug(
        "femoral head: centre %s mm, radius %.1f mm, cup %.1f mm, gap depth %.0f HU, cup covers %.0f%%",
        np.round(centre, 1), fit.head_radius, fit.cup_radius, fit.depth, 100.0 * coverage,
    )
    head_radius, cup_radius = fit.head_radius, fit.cup_radius
    rim = _rim_radius(sub, spacing, centre - origin, neck, fit.head_radius)
    if rim is not None and fit.head_radius - rim > max_rim_to_surface_mm:
        # On thick slices the gap can blur shallower than the acetabulum's marrow, which the profile then
        # took for the joint: the head fitted as far out as the cup's cortex (seeds in the pelvis).
        head_radius = rim + rim_to_surface_mm
        cup_radius = head_radius + min_joint_gap_mm
        logger.debug(
            "head surface at %.1f mm lies %.1f mm beyond the rise to the rim at %.1f mm: head %.1f mm, cup %.1f mm",
            fit.head_radius, fit.head_radius - rim, rim, head_radius, cup_radius,
        )
    return HeadSphere(centre, head_radius, cup_radius, neck, covered)


def head_from_its_rim(
    image: np.ndarray,
    spacing: tuple[float, float, float],
    centre_mm: np.ndarray,
    neck_direction: np.ndarray,
    covered: np.ndarray,
    radius_guess_mm: float,
    *,
    max_radius_difference_mm: float = 5.0,
    rim_to_surface_mm: float = RIM_TO_SURFACE_MM,
    min_joint_gap_mm: float = MIN_JOINT_GAP_MM,
) -> HeadSphere | None:
    """A head whose joint shows no gap, sized from the rise to its rim around a given centre.

    Where head and cup touch across a joint narrower than the voxels (an arthritic hip on thick slices),
    the radial profile has no gap to fit; the rim, the head's subchondral cortex, still rises from its
    cancellous interior. The head's surface is taken ``rim_to_surface_mm`` beyond that rise (as in
    :func:`fit_head_sphere`), the cup ``min_joint_gap_mm`` further out.

    Parameters
    ----------
    image:
        Full-resolution canonical CT view (HU); only a box around the centre is read.
    spacing:
        Its voxel size (mm).
    centre_mm:
        (3,) the head's centre (canonical mm of this grid), found by other means (the head of the other
        hip mirrored, then the strongest ball in a socket near it).
    neck_direction, covered:
        The neck's axis and the directions the cup covers (see :class:`HeadSphere`).
    radius_guess_mm:
        The expected radius; the rim is looked for within 9 mm inside ``radius_guess_mm + 3`` and the
        result must lie within ``max_radius_difference_mm`` of the guess.

    Returns
    -------
    HeadSphere or None
        None where no rise to a rim shows, or the radius is too far from the guess.
    """
    spacing_a = np.asarray(spacing, dtype=np.float64)
    centre = np.asarray(centre_mm, dtype=np.float64)
    boxed = _smoothed_box(image, spacing_a, centre, radius_guess_mm + 10.0)
    if boxed is None:
        return None
    sub, origin = boxed
    neck = np.asarray(neck_direction, dtype=np.float64)
    neck = neck / np.linalg.norm(neck)
    rim = _rim_radius(sub, spacing, centre - origin, neck, radius_guess_mm + 3.0)
    if rim is None or abs(rim + rim_to_surface_mm - radius_guess_mm) > max_radius_difference_mm:
        logger.debug("no head sized from its rim near %s mm (rim %s, expected radius %.1f mm)",
                     np.round(centre, 1), None if rim is None else round(rim, 1), radius_guess_mm)
        return None
    radius = rim + rim_to_surface_mm
    return HeadSphere(centre, radius, radius + min_joint_gap_mm, neck, np.asarray(covered, dtype=bool).copy())


def _smoothed_box(
    image: np.ndarray, spacing: np.ndarray, centre_mm: np.ndarray, reach_mm: float
) -> tuple[np.ndarray, np.ndarray] | None:
    """The box of ``image`` within ``reach_mm`` of ``centre_mm`` (clipped to the image), smoothed by a 0.5 mm
    Gaussian against noise, and the position (mm) of its first voxel; None when it is under 4 voxels wide."""
    lo = np.maximum(0, np.floor((centre_mm - reach_mm) / spacing)).astype(int)
    hi = np.minimum(image.shape, np.ceil((centre_mm + reach_mm) / spacing) + 1).astype(int)
    if np.any(hi - lo < 4):
        return None
    sub = np.asarray(image[tuple(slice(a, b) for a, b in zip(lo, hi))], dtype=np.float32)
    return ndi.gaussian_filter(sub, tuple(0.5 / s for s in spacing)), lo * spacing


def _rim_radius(
    image: np.ndarray, spacing: tuple[float, ...], centre: np.ndarray, neck: np.ndarray, head_radius: float
) -> float | None:
    """Radius (mm) at which the median radial profile opposite the neck rises half-way from the head's
    cancellous interior (its median more than 8 mm inside ``head_radius``) to the rim (the brightest
    point within 6 mm inside ``head_radius``); None when it does not fall to half-way inside the rim.

    ``centre`` is in mm on ``image``'s (S, P, L) grid, as for :func:`_radial_profile`.
    """
    radii = np.arange(4.0, head_radius + 1e-6, 0.25)
    if radii.size < 2:
        return None
    profile = _radial_profile(image, spacing, centre, _towards_cup(neck), radii)
    inner = radii <= head_radius - 8.0
    interior = float(np.median(profile[inner])) if inner.any() else float(profile[0])
    near = np.flatnonzero(radii >= head_radius - 6.0)
    i = int(near[np.argmax(profile[near])])
    half = 0.5 * (interior + float(profile[i]))
    while i > 0 and profile[i] > half:
        i -= 1
    if profile[i] > half:
        return None
    return float(radii[i] + (half - profile[i]) / (profile[i + 1] - profile[i]) * (radii[i + 1] - radii[i]))


def _cup_coverage(
    image: np.ndarray, spacing: tuple[float, ...], centre: np.ndarray, neck: np.ndarray, fit: _JointFit
) -> np.ndarray:
    """Directions in which a ray from the centre runs head rim -> dark gap -> cup cortex.

    Each ray must be bright just inside the head's surface, dip below the gap level between the two
    surfaces and be bright again just beyond the cup's surface: that is the joint, and what lies
    beyond it is pelvis. Rays through the neck (no dip), past the cup's rim (no bright cup) or
    through a lesion (a dip, but too wide to end in cortex right after the gap) do not qualify.
    Directions within 45 degrees of the neck never do.
    """
    shoulder = min(fit.rim, fit.cup)
    low = fit.gap + 0.4 * (shoulder - fit.gap)
    high = fit.gap + 0.6 * (shoulder - fit.gap)
    dirs = _bin_directions().reshape(-1, 3)
    r_h, r_c = fit.head_radius, fit.cup_radius
    radii = np.arange(r_h - 3.0, r_c + 5.0 + 1e-6, 0.25)
    pts = (centre[None, None, :] + radii[None, :, None] * dirs[:, None, :]) / np.asarray(spacing)
    vals = ndi.map_coordinates(image, pts.reshape(-1, 3).T, order=1, mode="nearest").reshape(pts.shape[:2])
    head_side = vals[:, radii <= r_h].max(axis=1) >= high
    dip = vals[:, (radii >= r_h - 0.5) & (radii <= r_c + 1.5)].min(axis=1) <= low
    cup_side = vals[:, (radii >= r_c + 0.5) & (radii <= r_c + 5.0)].max(axis=1) >= high
    covered = head_side & dip & cup_side & (dirs @ neck < np.cos(np.deg2rad(45.0)))
    # The cup is a socket around one hemisphere of the head. Rays that pass the pattern elsewhere
    # (below the head, where it runs out into the neck and a nearby cortex looks like a cup) are
    # dropped: keep what lies within 95 degrees of the cup's axis, the mean covered direction.
    weight = np.sin((np.arange(_N_POLAR) + 0.5) / _N_POLAR * np.pi).repeat(_N_AZIMUTH)  # bin solid angle
    axis = (dirs * (covered * weight)[:, None]).sum(axis=0)
    if np.linalg.norm(axis) > 0:
        axis /= np.linalg.norm(axis)
        covered &= dirs @ axis > np.cos(np.deg2rad(95.0))
    return covered.reshape(_N_POLAR, _N_AZIMUTH)


def _neck_direction(
    image: np.ndarray, spacing: tuple[float, ...], centre: np.ndarray, guess: np.ndarray, r_head: float, r_cup: float
) -> np.ndarray:
    """Axis of the femoral neck: the directions in which bone runs on, without a gap, past the head.

    Wherever the cup covers the head, a ray from the centre crosses the dark joint gap, and beyond
    the cup's rim it runs into soft tissue; only along the neck does bone continue without a dip
    from the head's surface to well past the cup's radius. The mean of those directions within 40
    degrees of the anatomical guess is the neck's axis.
    """
    d = _DIRECTIONS[_DIRECTIONS @ guess > np.cos(np.deg2rad(40.0))]
    radii = np.arange(r_head - 1.0, r_cup + 6.0, 0.5)
    pts = centre[None, None, :] + radii[None, :, None] * d[:, None, :]
    vals = ndi.map_coordinates(image, (pts / np.asarray(spacing)).reshape(-1, 3).T, order=1, mode="nearest")
    solid = vals.reshape(pts.shape[:2]).min(axis=1) > 200.0
    if solid.sum() < 3:
        return guess
    axis = d[solid].mean(axis=0)
    norm = np.linalg.norm(axis)
    return axis / norm if norm > 0.3 else guess


def _peaks(acc: np.ndarray, n: int, *, min_distance: int) -> list[tuple[int, int, int]]:
    """Up to ``n`` local maxima of ``acc``, strongest first, at least ``min_distance`` voxels apart."""
    size = 2 * min_distance + 1
    local = (acc == ndi.maximum_filter(acc, size=size)) & (acc > 0)
    idx = np.argwhere(local)
    if idx.size == 0:
        return []
    order = np.argsort(acc[tuple(idx.T)])[::-1][:n]
    return [tuple(int(v) for v in idx[i]) for i in order]


def sphere_markers(
    shape: tuple[int, int, int],
    origin_index: tuple[int, int, int],
    spacing: tuple[float, float, float],
    sphere: HeadSphere,
    *,
    head_margin_mm: float,
    cup_margin_mm: float,
    cup_shell_mm: float = 10.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Femur and pelvis seeds implied by a head sphere on a box of a canonical grid.

    Parameters
    ----------
    shape, origin_index:
        Shape of the box and the grid index of its first voxel.
    spacing:
        Voxel size (mm) of the grid.
    sphere:
        The head.
    head_margin_mm:
        Femur seeds fill the head up to ``head_radius - head_margin``.
    cup_margin_mm, cup_shell_mm:
        Pelvis seeds fill the shell from ``cup_radius + cup_margin`` to ``cup_radius + cup_shell``
        in the directions the cup covers.

    Returns
    -------
    (femur, pelvis):
        Two bool arrays of ``shape``.
    """
    axes = [
        ((np.arange(n) + o) * s - c).astype(np.float32)
        for n, o, s, c in zip(shape, origin_index, spacing, sphere.centre_mm)
    ]
    dz, dy, dx = np.meshgrid(*axes, indexing="ij", sparse=True)
    dist = np.sqrt(dz * dz + dy * dy + dx * dx)
    femur = dist <= sphere.head_radius_mm - head_margin_mm
    shell = (dist >= sphere.cup_radius_mm + cup_margin_mm) & (dist <= sphere.cup_radius_mm + cup_shell_mm)
    pelvis = np.zeros(shape, dtype=bool)
    if shell.any():
        full = np.broadcast_to
        idx = np.nonzero(shell)
        i, j = direction_bins(full(dz, shape)[idx], full(dy, shape)[idx], full(dx, shape)[idx])
        pelvis[idx] = sphere.covered[i, j]
    return femur, pelvis
