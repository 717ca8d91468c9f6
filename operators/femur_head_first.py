"""Find femurs from their heads down, in a view of the hips that ends too close below them for a shaft run.

An abdomen-pelvis CT often ends at the lesser trochanters or a few cm below: the femoral shaft, the
splitter's usual anchor (:mod:`operators.femur_shafts`), is then missing or too short, and too close to
the ischium, to be told from other bone. The femoral heads are in view, though, and a ball in its socket
is recognised without a shaft (:func:`operators.femur_hip.socket_centres`, :func:`operators.femur_hip.fit_head_sphere`).

A head found this way gives its femur a short run of cross-sections below it: starting 4 cm below the
head's centre (the intertrochanteric region, one bone piece lateral to the head) and followed down, slice
by slice through the piece that overlaps the one above, to the end of the view. The splitter then treats
that run like any short shaft run (:attr:`operators.femur_shafts.ShaftTrack.short`): it fits the head
again above it and grows the femur from both.

Heads count only in level pairs (one per hip, 11-28 cm apart left to right, level within 25 mm), with
the head of a thigh that already has a shaft run as one of the pair: a lone ball in a socket can be a
shoulder.

Arrays are canonical views (axis 0 towards the head, 1 posterior, 2 patient left); positions in mm are
``index * spacing`` of the grid named.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from operators.femur_hip import HeadSphere, fit_head_sphere, socket_centres
from operators.femur_shafts import ShaftTrack

logger = logging.getLogger(__name__)

#: Only this much of the view above its lowest slice is searched for heads (mm): a view in which the heads
#: lie higher holds enough femur below them for a shaft run.
SEARCH_HEIGHT_MM = 220.0
#: Edge strengths (HU/mm, coarse grid) that vote for centres, tried in turn (see :func:`socket_centres`).
EDGE_GRADIENTS_HU_PER_MM = (40.0, 15.0)
#: Most ball-in-socket candidates fitted per edge strength.
MAX_CANDIDATES = 8
#: A pair of femoral heads: level within this (mm, along the body axis) ...
PAIR_MAX_LEVEL_DIFFERENCE_MM = 25.0
#: ... and this far apart left to right (mm, centre to centre; adult hips 15-22 cm).
PAIR_APART_MM = (110.0, 280.0)
#: The run below a head starts this far below its centre (mm): the intertrochanteric region.
RUN_TOP_BELOW_HEAD_MM = 40.0
#: The piece where the run starts lies at least this far lateral of the head's centre (mm) ...
RUN_TOP_MIN_LATERAL_MM = 10.0
#: ... and within this distance of it in the axial plane (mm).
RUN_TOP_MAX_DISTANCE_MM = 90.0
#: Smallest cross-section (mm^2) a run piece may have.
MIN_PIECE_AREA_MM2 = 150.0
#: Two fits closer than this (mm) are the same head.
SAME_HEAD_MM = 10.0


def find_head_first_femurs(
    coarse: np.ndarray,
    plane_labels: np.ndarray,
    image: np.ndarray,
    cspacing: tuple[float, float, float],
    full_spacing: tuple[float, float, float],
    shift_mm: np.ndarray,
    known_heads_mm: Sequence[np.ndarray] = (),
    midline_mm: float | None = None,
) -> list[ShaftTrack]:
    """Runs for the femurs of thighs without a shaft run, found from their heads.

    Parameters
    ----------
    coarse:
        Coarse canonical CT (HU), positions ``index * cspacing``.
    plane_labels:
        The in-plane (8-connected) labels of each slice of the coarse bone mask, as the shaft search
        returns them (:func:`operators.femur_shafts.find_shaft_tracks`).
    image:
        Full-resolution canonical CT (HU), positions ``index * full_spacing``.
    cspacing, full_spacing:
        Voxel sizes (mm) of the two grids.
    shift_mm:
        (3,) offset (mm) of a coarse voxel's centre from its first full-resolution voxel's: a coarse
        position plus ``shift_mm`` is the full-resolution position of the same point.
    known_heads_mm:
        Centres (full-resolution canonical mm) of the heads of thighs that have a shaft run; each pairs
        with a head found here, and no femur is returned for it.
    midline_mm:
        The body midline along axis 2 (coarse mm), if known: a head left of it has its neck to the left.
        Without it the middle of the field of view stands in.

    Returns
    -------
    list of ShaftTrack
        None, one (paired with a known head) or two (a pair), for the thighs without a run; each a
        ``short`` run from below its head down to the end of the view.
    """
    known = [np.asarray(k, dtype=np.float64) for k in known_heads_mm]
    heads = _fitted_heads(coarse, image, cspacing, full_spacing, shift_mm, midline_mm)
    new = [h for h in heads if all(np.linalg.norm(h.centre_mm - k) >= SAME_HEAD_MM for k in known)]
    pair = _best_pair(new, known)
    if not pair:
        logger.debug("head-first search: %d head(s) fitted, no level pair", len(heads))
        return []
    found = []
    for head, partner in pair:
        lateral = np.sign(head.centre_mm[2] - partner[2]) or 1.0
        track = _run_below(plane_labels, head.centre_mm - shift_mm, lateral, cspacing)
        if track is None:
            logger.debug("head-first search: no bone piece below the head at %s mm", np.round(head.centre_mm))
            continue
        found.append(track)
    if len(found) != len(pair):
        # Half a pair is no evidence of a hip: both heads need their femur below them.
        return []
    return found


def _fitted_heads(
    coarse: np.ndarray,
    image: np.ndarray,
    cspacing: tuple[float, float, float],
    full_spacing: tuple[float, float, float],
    shift_mm: np.ndarray,
    midline_mm: float | None,
) -> list[HeadSphere]:
    """Heads fitted at the ball-in-socket candidates of the lower part of the view, strongest first."""
    extent = np.asarray(coarse.shape, dtype=np.float64) * np.asarray(cspacing)
    hi = np.array([min(extent[0], SEARCH_HEIGHT_MM), extent[1], extent[2]])
    centre_l = 0.5 * extent[2] if midline_mm is None else float(midline_mm)
    heads: list[HeadSphere] = []
    tried: list[np.ndarray] = []
    for min_gradient in EDGE_GRADIENTS_HU_PER_MM:
        for centre in socket_centres(coarse, cspacing, np.zeros(3), hi, min_gradient_hu_per_mm=min_gradient,
                                     max_candidates=MAX_CANDIDATES):
            if any(np.linalg.norm(centre - t) < 5.0 for t in tried):
                continue
            tried.append(centre)
            # The neck leaves the head downwards and laterally, ~50 degrees from the body axis; the
            # side is guessed from the body midline (or the middle of the field of view) and refined by
            # the fit.
            lateral = 1.0 if centre[2] > centre_l else -1.0
            neck = np.array([-np.cos(np.deg2rad(50.0)), 0.0, lateral * np.sin(np.deg2rad(50.0))])
            sphere = fit_head_sphere(image, full_spacing, centre + shift_mm, neck)
            if sphere is not None and all(
                np.linalg.norm(sphere.centre_mm - h.centre_mm) >= SAME_HEAD_MM for h in heads
            ):
                heads.append(sphere)
    return heads


def _is_pair(a: np.ndarray, b: np.ndarray) -> bool:
    apart = abs(float(a[2] - b[2]))
    return (abs(float(a[0] - b[0])) <= PAIR_MAX_LEVEL_DIFFERENCE_MM
            and PAIR_APART_MM[0] <= apart <= PAIR_APART_MM[1])


def _best_pair(new: list[HeadSphere], known: list[np.ndarray]) -> list[tuple[HeadSphere, np.ndarray]]:
    """The new heads to use, each with its partner's centre: the first level pair, strongest first.

    With a known head (a thigh with a run), one new head that pairs with it; else two new heads that pair
    with each other.
    """
    if known:
        for head in new:
            for k in known:
                if _is_pair(head.centre_mm, k):
                    return [(head, k)]
        return []
    for i, a in enumerate(new):
        for b in new[i + 1:]:
            if _is_pair(a.centre_mm, b.centre_mm):
                return [(a, b.centre_mm), (b, a.centre_mm)]
    return []


def _run_below(
    plane_labels: np.ndarray, head_mm: np.ndarray, lateral: float, cspacing: tuple[float, float, float]
) -> ShaftTrack | None:
    """The femur's cross-sections from the intertrochanteric region down to the end of the view.

    ``head_mm`` is the head's centre on the coarse grid (mm); ``lateral`` is +1 when lateral is towards
    the patient's left (+ axis 2), -1 otherwise. The run lists the lowest slice first.
    """
    sz, sp, sl = cspacing
    z0 = int(np.floor((head_mm[0] - RUN_TOP_BELOW_HEAD_MM) / sz))
    z0 = min(max(z0, 0), plane_labels.shape[0] - 1)
    ids, centres, areas = _pieces_of_slice(plane_labels[z0], sp, sl)
    # The piece nearest to where the intertrochanteric region should be (lateral of the head), among those
    # big enough, lateral of the head and near it: the ischium and the pubis lie medial of the head.
    target = np.array([head_mm[1], head_mm[2] + lateral * RUN_TOP_BELOW_HEAD_MM])
    admissible = [(lab, c, a) for lab, c, a in zip(ids, centres, areas)
                  if a >= MIN_PIECE_AREA_MM2 and (c[1] - head_mm[2]) * lateral >= RUN_TOP_MIN_LATERAL_MM
                  and np.linalg.norm(c - head_mm[1:]) <= RUN_TOP_MAX_DISTANCE_MM]
    if not admissible:
        return None
    lab, c, a = min(admissible, key=lambda piece: float(np.linalg.norm(piece[1] - target)))
    slices, labels, run_centres, run_areas = [z0], [lab], [c], [a]
    current = plane_labels[z0] == lab
    for z in range(z0 - 1, -1, -1):
        below = plane_labels[z][current]
        below = below[below > 0]
        if below.size < 0.3 * current.sum():
            break
        values, counts = np.unique(below, return_counts=True)
        lab = int(values[np.argmax(counts)])
        current = plane_labels[z] == lab
        area = float(current.sum()) * sp * sl
        if area < MIN_PIECE_AREA_MM2:
            break
        yy, xx = np.nonzero(current)
        slices.append(z)
        labels.append(lab)
        run_centres.append(np.array([yy.mean() * sp, xx.mean() * sl]))
        run_areas.append(area)
    order = np.argsort(slices)
    return ShaftTrack(
        slices=[int(slices[i]) for i in order], labels=[int(labels[i]) for i in order],
        centres_mm=[run_centres[i] for i in order], areas_mm2=[run_areas[i] for i in order], short=True,
    )


def _pieces_of_slice(labels: np.ndarray, sp: float, sl: float) -> tuple[list[int], list[np.ndarray], list[float]]:
    """Ids, in-plane centres (mm, posterior and left) and areas (mm^2) of the labelled pieces of one slice."""
    ids = [int(v) for v in np.unique(labels) if v > 0]
    if not ids:
        return [], [], []
    centres = ndi.center_of_mass(np.ones(labels.shape), labels, ids)
    counts = ndi.sum_labels(np.ones(labels.shape), labels, ids)
    return (ids, [np.array([c[0] * sp, c[1] * sl]) for c in centres],
            [float(n) * sp * sl for n in np.atleast_1d(counts)])
