"""Femur segmentation by classical image processing: no model weights.

Method (all in the canonical (S, P, L) view, see :mod:`operators.femur_geometry`):

1. **Coarse pass over the whole CT** (block means to ~2 mm voxels):
   bone = HU above a bone threshold inside the body, holes of every axial slice filled (marrow,
   cancellous bone, lytic lesions enclosed by cortex).
2. **Markers.** Femur: the femoral shafts, found as the one large round solitary bone cross-section
   per thigh over a run of slices (:mod:`operators.femur_shafts`). A thigh without such a run may be a view
   that ends a few cm below the lesser trochanters (an abdomen-pelvis CT): there a shorter run, nearer other
   bone, counts when a femoral head is fitted above it (:attr:`ClassicalSegmenterConfig.proximal_shaft`).
   A view that ends at the trochanters, with no shaft at all, gets its femurs from the heads: a level pair
   of balls in their sockets, each with bone below and lateral of it (:mod:`operators.femur_head_first`).
   Other bone (pelvis, tibia, fibula,
   patella, spine): bone pieces that stay separate from the femur markers after a one-voxel erosion,
   bone farther from the femur along the bone (geodesic distance) than any femur reaches, and bone on
   the body midline between the two femurs (sacrum, pubic symphysis).
3. **Watershed on the CT intensity.** Each bone voxel goes to the marker it is joined to by the path
   whose lowest intensity is highest, so femur and pelvis (or tibia) part where the joint between
   them is darkest: in the cartilage gap. A dark-valley term (positive Laplacian of the smoothed CT)
   raises the cost of crossing thin gaps that partial volume has partly bridged. The femoral head is
   found as a sphere in its cup (:mod:`operators.femur_hip`) and seeds femur inside the head and
   pelvis beyond the cup. Where one hip shows its joint and the other none (a narrow, arthritic joint on
   thick slices), the other head is looked for where the first one, mirrored across the midline, says,
   and sized from the rise to its rim. Below the shaft run, the bone still joined to it after the erosion (the
   metaphysis and condyles) goes back to the femur after the watershed, where the tibia's label took
   it across a bridged knee joint.
4. **Fine pass per femur at full resolution** inside the femur's box: the bone edge is placed at half
   the height of the local cortical peak above soft tissue (where a blurred edge really is, so the
   mask neither grows nor shrinks with cortical density), the coarse labels (eroded, so that they are
   safely inside each bone, except away from the other bone, where a thin cortex keeps its own seeds) seed
   a second watershed that puts the joint boundary in the gap at full resolution, and the result is
   closed and filled slice by slice and in 3D so that marrow, cancellous bone, cysts and lytic lesions,
   also where they break the cortex, belong to the femur. Holes walled by the femur together with a
   neighbouring bone (a stretch of the neck's cortex the watershed gave to the ischium) go to the femur
   when most of their wall is the femur's. Cross-sections a lesion has broken open are rebuilt from the
   intact ones above and below, and a lesion that opens into a concave stretch of the outline (deep for
   its mouth, walled by cancellous bone, not cortex; up to the head's centre, where a destroyed greater
   trochanter leaves a wide bay, any depth from 0.2 of its mouth) has its cavity filled
   (:mod:`operators.femur_breach`).

Metal (implants) is bone-bright: it belongs to the femur it sits in; its streaks are thin and are
removed by a small opening near metal before the fine watershed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

import highdicom as hd
import numpy as np
from scipy import ndimage as ndi

from operators.binary_morphology import closing_in_plane, fill_holes
from operators.femur_breach import TROCHANTER_CAVITY_MIN_DEPTH_TO_MOUTH, fill_lesion_cavities, repair_cortical_breaches
from operators.femur_geometry import Box, CanonicalView, box_from_mask, enlarge_box
from operators.femur_head_first import find_head_first_femurs
from operators.femur_hip import (
    HeadSphere,
    fit_head_sphere,
    head_candidates,
    head_from_its_rim,
    socket_centres,
    sphere_markers,
)
from operators.femur_shafts import ShaftCriteria, ShaftTrack, choose_femur_tracks, find_shaft_tracks
from operators.geodesic_distance import geodesic_distance

logger = logging.getLogger(__name__)

#: Shortest shaft run and clearance from other bone (mm) of :attr:`ClassicalSegmenterConfig.proximal_shaft`: the
#: shaft below the lesser trochanter, which the ischium comes close to, in a view that ends there.
PROXIMAL_SHAFT_MIN_LENGTH_MM = 20.0
PROXIMAL_SHAFT_CLEARANCE_MM = 20.0
#: A short run counts only for a thigh without a run: at least this far (mm, left-right) from every run found.
_PROXIMAL_RUN_MIN_SEPARATION_MM = 60.0
#: Shortest shaft run (mm) accepted within the shaft rules' midline clearance of the body midline, when
#: that "midline" may be the centre of the only thigh in view. The lower sacrum and the coccyx give round,
#: solitary runs of a few cm on the true midline.
_MIDLINE_RUN_MIN_LENGTH_MM = 100.0

#: Label values of the segmenter's output (docs/CONVENTIONS.md): patient sides.
LEFT_LABEL = 1
RIGHT_LABEL = 2
#: Internal label of bone that is not a femur.
_OTHER = 3

_SIX = ndi.generate_binary_structure(3, 1)

_T = TypeVar("_T")


@dataclass(frozen=True)
class ClassicalSegmenterConfig:
    """Parameters of :class:`ClassicalFemurSegmenter` (HU, mm, ml).

    Parameters
    ----------
    coarse_spacing_mm:
        Target voxel size of the coarse pass (integer block means of the input voxels).
    bone_threshold_hu:
        Lowest intensity counted as bone anywhere (osteoporotic cortex and cancellous bone are still
        above it; muscle, cartilage, fluid and lytic lesions are below it).
    body_threshold_hu:
        Intensity separating the body from air (to ignore the table and things outside the body).
    soft_tissue_hu:
        Level of the soft tissue around bone; the fine bone edge is placed half-way between it and the
        local cortical peak.
    edge_peak_cap_hu:
        Local peaks above this (dense cortex, metal) are treated as this when placing the edge, so that
        metal does not push the edge of nearby bone inwards.
    edge_window_mm:
        Width of the window in which the local cortical peak is searched.
    min_cortex_peak_hu:
        Voxels with no density of at least this within the window are not bone (contrast-filled
        vessels touching the femur); even osteoporotic cortex reaches it.
    smoothing_mm:
        Gaussian sigma applied to the full-resolution CT before thresholding (noise).
    valley_sigma_mm, valley_weight:
        Scale and weight of the dark-valley term of the watershed landscape.
    landscape_cap_hu:
        Intensities above this are all "bone" to the full-resolution watershed (see ``_landscape_base``).
    coarse_landscape_cap_hu:
        The same for the coarse watershed. At the bone threshold (the default) every bone voxel is on
        the floor: labels grow through cancellous bone as fast as through cortex, so a femoral head
        seeded inside reaches its own cortex as soon as the pelvis does across a bridged joint, and
        the femoral neck goes to the nearer seed along the bone instead of to whichever label first
        reached the cortical shell.
    marker_erosion_mm:
        Coarse labels are eroded by about this much before they seed the fine watershed, which then
        decides the boundary within that distance of the coarse one at full resolution.
    seed_clearance_mm:
        Coarse-label voxels farther than this from the other label (femur from other bone, other bone
        from the femur) seed the fine watershed without the erosion: there the coarse boundary is a
        bone's outer surface, and a thin cortex seeded by its own bone cannot be flooded by a neighbour's.
        Of the femur's, only the largest connected piece does (the rest is coarse label gone astray).
    joint_zone_mm:
        Within this distance of where the coarse femur label touches another bone (hip, knee), the
        fine watershed gets no seeds and decides alone (at full resolution, where joint gaps show).
    far_geodesic_mm:
        Bone farther than this along the bone from a femoral shaft run cannot be femur (the femoral
        head is ~10-14 cm from the end of the shaft run); it seeds the "other bone" label.
    midline_band_mm:
        Half-width of the band around the body midline whose bone seeds "other bone".
    closing_radius_mm:
        Radius of the in-plane closing that seals small cortical breaks before holes are filled.
    metal_threshold_hu:
        Intensity above which a voxel is taken for metal.
    min_femur_volume_ml:
        Femur candidates smaller than this are dropped.
    proximal_shaft:
        Looser shaft rules for a view that ends a few cm below the lesser trochanters (an abdomen-pelvis CT),
        tried for a thigh where no run meets ``shaft``: a run found with them counts only where a femoral
        head is fitted above it (that head is fitted again with both femurs' runs known, as for any run).
        None: such thighs report no femur.
    head_first:
        For thighs still without a run (a view that ends at the trochanters), look for the femoral heads
        without a shaft (:mod:`operators.femur_head_first`): a level pair of balls in their sockets, each
        with bone below and lateral of it, or one such head level with the head of the other thigh's run.
    fine_pass_threads:
        Femurs worked on at once: refined at full resolution, and their heads fitted while the coarse
        bone is sorted. 1, 2, or None for 2 where at least 2 CPUs are usable and 1 otherwise. Two at once
        take a 512 x 512 x 600 study's split from about 12 to 10 s on 2 cores and hold a second femur box's
        temporaries (about 0.2 GB more at the peak; their watersheds, the largest, run one at a time). Set
        1 where memory is tighter than time. The masks are the same either way.
    shaft:
        Shape rules of a femoral-shaft cross-section.
    """

    coarse_spacing_mm: float = 2.0
    bone_threshold_hu: float = 180.0
    body_threshold_hu: float = -400.0
    soft_tissue_hu: float = 40.0
    edge_peak_cap_hu: float = 2500.0
    edge_window_mm: float = 5.0
    min_cortex_peak_hu: float = 500.0
    smoothing_mm: float = 0.5
    valley_sigma_mm: float = 1.0
    valley_weight: float = 1.0
    landscape_cap_hu: float = 450.0
    coarse_landscape_cap_hu: float = 180.0
    marker_erosion_mm: float = 3.0
    seed_clearance_mm: float = 6.0
    joint_zone_mm: float = 12.0
    far_geodesic_mm: float = 180.0
    midline_band_mm: float = 15.0
    closing_radius_mm: float = 3.0
    metal_threshold_hu: float = 2800.0
    min_femur_volume_ml: float = 15.0
    fine_pass_threads: int | None = None
    head_first: bool = True
    shaft: ShaftCriteria = field(default_factory=ShaftCriteria)
    proximal_shaft: ShaftCriteria | None = field(
        default_factory=lambda: ShaftCriteria(min_length_mm=PROXIMAL_SHAFT_MIN_LENGTH_MM,
                                              clearance_mm=PROXIMAL_SHAFT_CLEARANCE_MM)
    )

    def __post_init__(self) -> None:
        positive = (
            "coarse_spacing_mm", "edge_window_mm", "valley_sigma_mm", "marker_erosion_mm",
            "seed_clearance_mm", "far_geodesic_mm", "min_femur_volume_ml",
        )
        for name in positive:
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.fine_pass_threads is not None and (
            isinstance(self.fine_pass_threads, bool) or self.fine_pass_threads not in (1, 2)
        ):
            raise ValueError(f"fine_pass_threads must be 1, 2 or None, got {self.fine_pass_threads!r}")
        for name in ("smoothing_mm", "valley_weight", "closing_radius_mm", "midline_band_mm"):
            if not float(getattr(self, name)) >= 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)!r}")
        if not self.body_threshold_hu < self.soft_tissue_hu < self.bone_threshold_hu:
            raise ValueError("thresholds must satisfy body_threshold_hu < soft_tissue_hu < bone_threshold_hu")
        if not self.bone_threshold_hu < self.edge_peak_cap_hu < self.metal_threshold_hu:
            raise ValueError("thresholds must satisfy bone_threshold_hu < edge_peak_cap_hu < metal_threshold_hu")


@dataclass
class ClassicalResult:
    """What the classical segmenter found, in the input grid.

    Attributes
    ----------
    labels:
        uint8 (z, y, x) input grid: 0 background, 1 left femur, 2 right femur (patient sides).
    side_evidence:
        Per found side, how the side was decided (for the log and the report).
    notes:
        Observations worth reporting (e.g. a shaft run without a femur around it).
    """

    labels: np.ndarray
    side_evidence: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class ClassicalFemurSegmenter:
    """Femur segmenter without model weights (thresholds, shaft markers, watershed).

    Implements the :class:`operators.femur_splitter.FemurSegmenter` protocol: :meth:`segment` returns
    uint8 labels on the CT's grid with 0 background, 1 left femur, 2 right femur (patient sides from
    the affine).

    Parameters
    ----------
    config:
        Method parameters; defaults suit adult CT of 0.5-3 mm voxels.
    """

    sided = True

    def __init__(self, *, config: ClassicalSegmenterConfig | None = None) -> None:
        self.config = config or ClassicalSegmenterConfig()
        self.last_result: ClassicalResult | None = None

    def segment(self, ct: hd.Volume) -> np.ndarray:
        """Segment the femurs of a CT.

        Parameters
        ----------
        ct:
            CT in HU, array (z, y, x), affine index -> LPS mm, any orientation.

        Returns
        -------
        numpy.ndarray
            uint8 (z, y, x) on the CT's grid: 0 background, 1 left femur, 2 right femur.
        """
        result = self.run(ct)
        return result.labels

    def run(self, ct: hd.Volume) -> ClassicalResult:
        """Like :meth:`segment`, also returning how sides were decided and notes."""
        start = time.perf_counter()
        view = CanonicalView.from_affine(ct.affine, ct.spatial_shape)
        image = view.to_canonical(ct.array)
        out = np.zeros(ct.spatial_shape, dtype=np.uint8)
        result = ClassicalResult(labels=out)
        canonical_out = view.to_canonical(out)  # writes through to ``out``
        found = _segment_canonical(image, view, self.config, result)
        for side, (box, mask) in found.items():
            value = LEFT_LABEL if side == "left" else RIGHT_LABEL
            region = canonical_out[box]
            region[mask] = value
        self.last_result = result
        logger.info(
            "classical femur segmentation: %s in %.1f s",
            ", ".join(f"{s} ({result.side_evidence.get(s, '?')})" for s in sorted(found)) or "no femur",
            time.perf_counter() - start,
        )
        return result


# ------------------------------------------------------------------------------------------------
# Coarse pass
# ------------------------------------------------------------------------------------------------


def _block_factors(spacing: tuple[float, ...], shape: tuple[int, ...], target_mm: float) -> tuple[int, int, int]:
    return tuple(
        int(max(1, min(n, round(target_mm / s)))) for s, n in zip(spacing, shape)
    )  # type: ignore[return-value]


#: Most threads :func:`block_mean` uses: each holds a float32 copy of its chunk (32 slices of 512 x 512: 32 MB).
_BLOCK_MEAN_THREADS = 4


def block_mean(image: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Mean over non-overlapping blocks of ``factors`` voxels (trailing partial blocks dropped).

    Works in chunks of slices so that a strided view of a large CT is never copied whole. The chunks are
    independent and numpy's arithmetic releases the interpreter lock, so they are spread over the CPUs
    this process may use (at most :data:`_BLOCK_MEAN_THREADS`); each output value is computed as in one
    thread.

    A block's sum is taken one axis at a time, by adding the strided views of its columns, then rows,
    then slices, and divided by the block's size in float32: four times faster than a reduction over the
    three block axes of a reshaped array, whose inner loops are a block wide. For whole-number HU (every
    CT with an integer rescale) the float32 sums are exact, so the result is ``reshape(...).mean(axis=(1,
    3, 5), dtype=float32)`` to the last bit; for fractional values the two may differ in the last bit.
    """
    fz, fy, fx = factors
    nz, ny, nx = (s // f for s, f in zip(image.shape, factors))
    out = np.empty((nz, ny, nx), dtype=np.float32)
    step = max(1, 32 // fz)
    size = np.float32(fz * fy * fx)

    def mean_of_chunk(z0: int) -> None:
        z1 = min(nz, z0 + step)
        block = np.asarray(image[z0 * fz:z1 * fz, :ny * fy, :nx * fx], dtype=np.float32)
        columns = block[:, :, 0::fx].copy()
        for k in range(1, fx):
            columns += block[:, :, k::fx]
        rows = columns[:, 0::fy].copy()
        for k in range(1, fy):
            rows += columns[:, k::fy]
        sums = rows[0::fz].copy()
        for k in range(1, fz):
            sums += rows[k::fz]
        np.divide(sums, size, out=out[z0:z1])

    starts = range(0, nz, step)
    threads = min(_BLOCK_MEAN_THREADS, len(os.sched_getaffinity(0)), len(starts))
    if threads <= 1:
        for z0 in starts:
            mean_of_chunk(z0)
    else:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="block-mean") as pool:
            list(pool.map(mean_of_chunk, starts))
    return out


#: In-plane 4-connectivity: background connected only within an axial slice, so that a fill with it
#: fills the holes of every slice independently in one call.
_IN_PLANE_4 = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE_4[1] = ndi.generate_binary_structure(2, 1)


def _fill_slices(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of every axial slice (canonical axis 0) of a 3D mask."""
    return fill_holes(mask, structure=_IN_PLANE_4)


def _fill_holes_walled_with(femur: np.ndarray, other: np.ndarray, min_share: float = 0.6) -> np.ndarray:
    """Fill the holes of each axial slice that the femur encloses together with another bone.

    Where the femoral neck lies against the ischium or the acetabular rim, the watershed can give a
    stretch of the neck's cortex to that bone: the neck's cross-section is then an open ring, and its
    cancellous interior, walled partly by the other bone, is no hole of the femur's mask alone. A hole
    of the two bones together belongs to the femur when most of its wall (``min_share`` of the pixels
    around it) is the femur's; the marrow of the other bone, walled by that bone, stays out.

    Parameters
    ----------
    femur, other:
        bool (S, P, L) masks of the femur and of the other bones in the same box.

    Returns
    -------
    numpy.ndarray
        bool (S, P, L): ``femur`` plus the holes it walls mostly itself (``femur`` itself when there are
        none).
    """
    # Only slices that hold another bone can hold such a hole (near the hip and the knee): each run of
    # such slices is handled on its own.
    shared = np.flatnonzero(other.any(axis=(1, 2)) & femur.any(axis=(1, 2)))
    out = femur
    for run in np.split(shared, np.flatnonzero(np.diff(shared) > 1) + 1):
        if run.size == 0:
            continue
        slab = slice(int(run[0]), int(run[-1]) + 1)
        add = _walled_holes(femur[slab], other[slab], min_share)
        if add is not None:
            if out is femur:
                out = femur.copy()
            out[slab] |= add
    return out


def _walled_holes(femur: np.ndarray, other: np.ndarray, min_share: float) -> np.ndarray | None:
    """The in-plane holes of ``femur | other`` walled mostly by ``femur``, or None when there are none."""
    wall = femur | other
    holes = fill_holes(wall, structure=_IN_PLANE_4) & ~wall
    del wall
    if not holes.any():
        return None
    # Work in the box of the holes plus the pixels around them: the holes are a small part of the box.
    box = enlarge_box(box_from_mask(holes), (0, 1, 1), holes.shape)  # type: ignore[arg-type]
    holes = holes[box]
    # Each in-plane component of the holes lies in one slice; the pixels just around it are its wall.
    labels, n = ndi.label(holes, structure=_IN_PLANE_4)
    around = ndi.grey_dilation(labels, footprint=_IN_PLANE_4) * ~holes
    by_femur = np.bincount(around[femur[box]], minlength=n + 1)
    by_other = np.bincount(around[other[box]], minlength=n + 1)
    keep = by_femur >= min_share * np.maximum(by_femur + by_other, 1)
    keep[0] = False
    if not keep.any():
        return None
    add = np.zeros(femur.shape, dtype=bool)
    add[box] = keep[labels]
    return add


def _body_mask(coarse: np.ndarray, threshold: float) -> np.ndarray:
    """Body (not air, not the table) as the large 3D components above ``threshold``, slices filled.

    The table is a separate, much smaller component under the patient; two legs seen without the
    pelvis are two components of similar size.
    """
    inside = coarse > threshold
    labels, n = ndi.label(inside)
    if n == 0:
        return inside
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    keep = sizes >= 0.3 * sizes.max()
    return _fill_slices(keep[labels])


def _midline(body: np.ndarray, spacing_l: float) -> float | None:
    """Body midline along the canonical left axis (mm from index 0), from the widest untruncated slice.

    Returns None when every slice's body touches the left or right edge of the field of view (then the
    midline cannot be seen).
    """
    cols = body.any(axis=1)  # (S, L)
    best: tuple[int, float] | None = None
    n = cols.shape[1]
    for k in range(cols.shape[0]):
        hit = np.flatnonzero(cols[k])
        if hit.size == 0 or hit[0] == 0 or hit[-1] == n - 1:
            continue
        width = int(hit[-1] - hit[0])
        if best is None or width > best[0]:
            best = (width, 0.5 * (hit[0] + hit[-1]) * spacing_l)
    return None if best is None else best[1]


def _geodesic_far(
    mask: np.ndarray, seeds: np.ndarray, spacing: tuple[float, float, float], far_mm: float
) -> np.ndarray:
    """Voxels of ``mask`` farther than ``far_mm`` from ``seeds`` along paths inside ``mask``.

    Voxels not joined to any seed are not returned (they are not "far", they are elsewhere).
    """
    box = box_from_mask(mask)
    if box is None or not seeds[box].any():
        return np.zeros_like(mask)
    sub = mask[box]
    dist = geodesic_distance(sub, seeds[box], spacing)
    out = np.zeros_like(mask)
    out[box] = sub & np.isfinite(dist) & (dist > far_mm)
    return out


def _laplacian_valley(
    image: np.ndarray, spacing: tuple[float, ...], sigma_mm: float, within: np.ndarray | None = None
) -> np.ndarray:
    """sigma^2 * max(Laplacian of Gaussian, 0) in HU: large in thin dark gaps between bright bone.

    With ``within`` (a bool mask of ``image``'s shape) the filter runs only on the box of that mask
    enlarged by the Gaussian's reach, and the result is 0 beyond it: inside the box every value is the
    one the whole image gives, bit for bit, since each output voxel reads only input voxels within that
    reach. The watershed reads its relief inside its mask only.
    """
    sigma = tuple(sigma_mm / s for s in spacing)
    if within is not None:
        box = box_from_mask(within)
        if box is None:
            return np.zeros(image.shape, dtype=np.float32)
        # scipy's Gaussian reaches int(truncate * sigma + 0.5) voxels (truncate 4) either side.
        reach = tuple(int(4.0 * float(s) + 0.5) for s in sigma)
        box = enlarge_box(box, reach, image.shape)
        out = np.zeros(image.shape, dtype=np.float32)
        _laplacian_valley_into(image[box], spacing, sigma_mm, out[box])
        return out
    return _laplacian_valley_into(image, spacing, sigma_mm, np.empty(image.shape, dtype=np.float32))


def _laplacian_valley_into(
    image: np.ndarray, spacing: tuple[float, ...], sigma_mm: float, lap: np.ndarray
) -> np.ndarray:
    """:func:`_laplacian_valley` of the whole ``image``, written into the float32 array ``lap``."""
    sigma = tuple(sigma_mm / s for s in spacing)
    # The Laplacian is the sum of three second derivatives, each a Gaussian filter along every axis in
    # turn (axis 0, 1, 2) of order 2 along one axis. Those along axes 1 and 2 share their first pass
    # (order 0 along axis 0): computed once, the same float32 intermediate scipy's gaussian_filter makes.
    # The passes write into three float32 buffers besides ``lap``, not a new array each (a fine pass runs
    # this on a femur's box, two femurs at once where threads allow).
    def along(data: np.ndarray, axis: int, order: int, out: np.ndarray) -> np.ndarray:
        return ndi.gaussian_filter1d(data, sigma[axis], axis=axis, order=order, output=out)

    smooth_0, first, second = (np.empty(image.shape, dtype=np.float32) for _ in range(3))
    along(along(along(image, 0, 2, first), 1, 0, second), 2, 0, lap)
    lap /= np.float32(spacing[0] ** 2)
    along(image, 0, 0, smooth_0)
    along(along(smooth_0, 1, 2, first), 2, 0, second)
    lap += np.divide(second, np.float32(spacing[1] ** 2), out=second)
    along(along(smooth_0, 1, 0, first), 2, 2, second)
    lap += np.divide(second, np.float32(spacing[2] ** 2), out=second)
    del smooth_0, first, second
    np.maximum(lap, 0, out=lap)
    lap *= np.float32(sigma_mm**2)
    return lap


def _watershed_relief(
    image: np.ndarray,
    spacing: tuple[float, ...],
    cap_hu: float,
    cfg: ClassicalSegmenterConfig,
    *,
    within: np.ndarray,
    sigma_mm: float | None = None,
) -> np.ndarray:
    """The watershed's relief: :func:`_landscape_base` plus ``cfg.valley_weight`` times
    :func:`_laplacian_valley` (at ``sigma_mm``, default ``cfg.valley_sigma_mm``).

    Summed into the valley's array, the base made only once the filter's buffers are gone: the same
    float32 values as ``base + weight * valley``, with one copy of the image's size less at the peak.
    """
    if cfg.valley_weight <= 0:
        return _landscape_base(image, cap_hu)
    sigma = cfg.valley_sigma_mm if sigma_mm is None else sigma_mm
    relief = _laplacian_valley(image, spacing, sigma, within=within)
    relief *= np.float32(cfg.valley_weight)
    # weight * valley - min(image, cap) is weight * valley + base, bit for bit (x - m is x + (-m)).
    relief -= np.minimum(image, np.float32(cap_hu))
    return relief


def _landscape_base(image: np.ndarray, cap_hu: float) -> np.ndarray:
    """Watershed relief from intensity: dark is high, and all bone above the cap is one flat floor.

    Without the cap a bright cortical shell would be a deep channel: the first label to reach it
    anywhere (say the pelvis, across one partial-volume bridge of the hip joint) would flood the
    whole shell of the femoral head before the femur's own label got there through cancellous bone.
    On the flat floor labels advance at equal pace, so bones part at the dark joint gaps and,
    where a gap is bridged, half-way between the seeds.
    """
    return -np.minimum(image, np.float32(cap_hu))


#: One watershed at a time: it is the largest temporary of a fine pass (skimage works on float64 and
#: int32 padded copies of its inputs, about 30 bytes per voxel of the box, and a heap), so two femurs
#: refined at once share everything else but never hold two of these.
_WATERSHED_LOCK = threading.Lock()


def _watershed(landscape: np.ndarray, markers: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Marker watershed (6-connected) of ``landscape`` within ``mask``: int32 labels of ``markers``.

    Run on the bounding box of ``mask`` only. The result is the one the whole arrays give, voxel for voxel:
    the flood never leaves the mask, and the box keeps the raster order in which skimage queues the markers
    and breaks ties, while the float64 copies skimage makes shrink with the box (on the coarse grid of a
    512 x 512 x 600 study the bone's box is a quarter of the volume).
    """
    from skimage.segmentation import watershed

    out = np.zeros(markers.shape, dtype=np.int32)
    box = box_from_mask(mask)
    if box is None:
        return out
    with _WATERSHED_LOCK:
        out[box] = watershed(landscape[box], markers=markers[box], mask=mask[box], connectivity=1)
    return out


def _side_of(centre_lps_x: float, midline_lps_x: float) -> str:
    # LPS: +x is the patient's left.
    return "left" if centre_lps_x > midline_lps_x else "right"


@dataclass
class _Coarse:
    factors: tuple[int, int, int]
    spacing: tuple[float, float, float]
    labels: np.ndarray  # int32 coarse canonical: 0 bg, femur ids 1..n, _OTHER
    heads: dict[int, HeadSphere]  # per femur id, in full-resolution canonical mm
    anchors: np.ndarray  # int8 coarse canonical: femur id on the shaft-run cores, else 0
    shafts: dict[int, tuple[int, int]]  # per femur id, full-resolution slices [first, last] of the run


def _segment_canonical(
    image: np.ndarray, view: CanonicalView, cfg: ClassicalSegmenterConfig, result: ClassicalResult
) -> dict[str, tuple[Box, np.ndarray]]:
    """Segment the femurs of a canonical (S, P, L) CT view.

    Returns, per patient side, the canonical box and the bool femur mask inside it.
    """
    spacing = view.canonical_spacing
    factors = _block_factors(spacing, image.shape, cfg.coarse_spacing_mm)
    coarse_shape = tuple(s // f for s, f in zip(image.shape, factors))
    if min(coarse_shape) < 3:
        result.notes.append("the volume is too small to hold a femur")
        return {}
    cspacing = tuple(s * f for s, f in zip(spacing, factors))
    t0 = time.perf_counter()
    coarse = block_mean(image, factors)
    body = _body_mask(coarse, cfg.body_threshold_hu)
    bone = _fill_slices((coarse > cfg.bone_threshold_hu) & body)
    midline_mm = _midline(body, cspacing[2])
    plane_labels, tracks = find_shaft_tracks(bone, coarse, cspacing, criteria=cfg.shaft, midline_mm=midline_mm)
    if not tracks and midline_mm is not None:
        # The "midline" can be the centre of a single leg: with one thigh in view and the other cut by
        # the field of view, the cut leg is a small piece the body mask drops, and the leg left is
        # untruncated. Its femur then sits on that false midline and is rejected; a body midline never
        # runs through a femoral shaft, so look again without it.
        _, tracks = find_shaft_tracks(bone, coarse, cspacing, criteria=cfg.shaft, midline_mm=None)
        # That explanation needs a thigh in view, hence a long shaft: a short run on the midline is more
        # likely the lower sacrum or the coccyx of a view that ends below the lesser trochanters. Runs clear
        # of the midline were only hidden by other bone near it, and stay.
        tracks = [t for t in tracks
                  if t.length_mm(cspacing[0]) >= _MIDLINE_RUN_MIN_LENGTH_MM
                  or abs(t.mean_centre_mm[1] - midline_mm) >= cfg.shaft.midline_clearance_mm]
        if tracks:
            logger.debug("the body midline at %.0f mm ran through the only shaft run(s); ignoring it", midline_mm)
            midline_mm = None
    tracks = choose_femur_tracks(tracks, cspacing[0])
    if len(tracks) < 2 and cfg.proximal_shaft is not None:
        # A thigh without a run: the view may end a few cm below the lesser trochanters.
        short = _proximal_tracks(image, view, coarse, bone, cspacing, factors, midline_mm, cfg.proximal_shaft)
        # Only for a thigh that has no run yet, keeping those found.
        short = [r for r in short
                 if all(abs(r.mean_centre_mm[1] - t.mean_centre_mm[1]) >= _PROXIMAL_RUN_MIN_SEPARATION_MM
                        for t in tracks)]
        combined = choose_femur_tracks(tracks + short, cspacing[0]) if short else tracks
        if len(combined) > len(tracks) and all(any(t is c for c in combined) for t in tracks):
            tracks = combined
            result.notes.append(
                "femur(s) found from a short shaft run below the head: the view ends near the lesser trochanters"
            )
    if len(tracks) < 2 and cfg.head_first:
        # Still a thigh without a run: the view may end at the trochanters, with no shaft at all.
        from_heads = _head_first_tracks(image, view, coarse, plane_labels, tracks, cspacing, factors, midline_mm)
        if from_heads:
            tracks = tracks + from_heads
            result.notes.append(
                "femur(s) found from the femoral head down: the view ends too close below the hips for a shaft run"
            )
    logger.debug(
        "coarse pass: factors %s, %d shaft run(s) in %.1f s", factors, len(tracks), time.perf_counter() - t0
    )
    if not tracks:
        result.notes.append(
            "no femoral shaft found (no long, round, solitary bone cross-section)"
            + (" and no pair of femoral heads in their sockets" if cfg.head_first else "")
        )
        return {}

    midline_est = _midline_estimate(tracks, midline_mm, view, factors, cspacing)
    # The femoral heads need only the images and the runs, not the seeds the coarse labelling sorts: with
    # threads to spare they are fitted meanwhile, one thread per femur (the fits read the CT and write
    # nothing shared, and their filters and arithmetic release the interpreter lock).
    full_spacing, shift = _full_grid(cspacing, factors)
    head_fits = [partial(_find_head, coarse, image, track, cspacing, full_spacing, shift, midline_est)
                 for track in tracks]
    with _meanwhile(head_fits, _femur_workers(cfg, len(tracks)), "femur-head") as head_of:
        coarse_res = _coarse_labels(
            coarse, bone, tracks, cspacing, factors, midline_est, cfg, head_of,
            partial(_mirrored_head, coarse, image, cspacing, full_spacing, shift, midline_est),
        )
    sides = _decide_sides(coarse_res, tracks, view, midline_mm, cspacing, result)
    found: dict[str, tuple[Box, np.ndarray]] = {}
    t1 = time.perf_counter()
    refined_by_side = _refine_all(image, view, coarse_res, sides, cfg)
    for side, refined in refined_by_side.items():
        if refined is None:
            result.notes.append(f"the {side} shaft run did not grow into a femur")
            continue
        box, mask = refined
        volume_ml = float(mask.sum()) * float(np.prod(spacing)) / 1000.0
        if volume_ml < cfg.min_femur_volume_ml:
            result.notes.append(f"{side} femur candidate of {volume_ml:.1f} ml dropped (too small)")
            continue
        found[side] = (box, mask)
        logger.debug("fine pass %s: %.1f ml", side, volume_ml)
    logger.debug("fine pass of %d femur(s) in %.1f s", len(sides), time.perf_counter() - t1)
    return found


def _proximal_tracks(
    image: np.ndarray,
    view: CanonicalView,
    coarse: np.ndarray,
    bone: np.ndarray,
    cspacing: tuple[float, float, float],
    factors: tuple[int, int, int],
    midline_mm: float | None,
    criteria: ShaftCriteria,
) -> list[ShaftTrack]:
    """Shaft runs under the looser ``criteria`` that have a femoral head above them.

    Where the field of view ends a few cm below the lesser trochanters no run is long enough, or clear
    enough of the ischium, for the usual rules. Looser rules alone also take pieces of pelvis for shafts;
    a run counts here only where a ball in a socket (:func:`_find_head`) is fitted above and medial of it.
    """
    _, runs = find_shaft_tracks(bone, coarse, cspacing, criteria=criteria, midline_mm=midline_mm)
    if not runs:
        return []
    full_spacing, shift = _full_grid(cspacing, factors)
    confirmed = []
    for run in runs:
        run.short = True
        midline_est = _midline_estimate([run], midline_mm, view, factors, cspacing)
        if _find_head(coarse, image, run, cspacing, full_spacing, shift, midline_est) is not None:
            confirmed.append(run)
    logger.debug("%d short shaft run(s), %d with a femoral head above", len(runs), len(confirmed))
    return confirmed


def _head_first_tracks(
    image: np.ndarray,
    view: CanonicalView,
    coarse: np.ndarray,
    plane_labels: np.ndarray,
    tracks: list[ShaftTrack],
    cspacing: tuple[float, float, float],
    factors: tuple[int, int, int],
    midline_mm: float | None,
) -> list[ShaftTrack]:
    """Runs for the thighs without one, from femoral heads found without a shaft (:mod:`operators.femur_head_first`).

    The head of each thigh that has a run is fitted first: a head found without a run must pair with it.
    """
    full_spacing, shift = _full_grid(cspacing, factors)
    known = []
    for track in tracks:
        midline_est = _midline_estimate([track], midline_mm, view, factors, cspacing)
        sphere = _find_head(coarse, image, track, cspacing, full_spacing, shift, midline_est)
        if sphere is None:
            # Without its head the pair cannot be checked: no femur is added beside it.
            return []
        known.append(sphere.centre_mm)
    runs = find_head_first_femurs(coarse, plane_labels, image, cspacing, full_spacing, shift, known_heads_mm=known,
                                  midline_mm=midline_mm)
    if any(abs(r.mean_centre_mm[1] - t.mean_centre_mm[1]) < _PROXIMAL_RUN_MIN_SEPARATION_MM
           for r in runs for t in tracks):
        return []
    logger.debug("%d femur(s) found from the head down", len(runs))
    return runs


def _full_grid(cspacing: tuple[float, ...], factors: tuple[int, ...]) -> tuple[tuple[float, ...], np.ndarray]:
    """Full-resolution voxel size (mm) and the offset (mm) of a coarse voxel's centre from its first voxel's."""
    full_spacing = tuple(c / f for c, f in zip(cspacing, factors))
    # Coarse voxel k covers full voxels k*f .. k*f+f-1: its centre is (f-1)/2 full voxels further.
    shift = np.array([(f - 1) / 2.0 * s for f, s in zip(factors, full_spacing)])
    return full_spacing, shift


def _femur_workers(cfg: ClassicalSegmenterConfig, n_femurs: int) -> int:
    """Threads for work done once per femur (head fits, fine passes): ``cfg.fine_pass_threads``, the CPUs
    this process may use and the number of femurs, whichever is least."""
    cpus = len(os.sched_getaffinity(0))
    threads = cfg.fine_pass_threads if cfg.fine_pass_threads is not None else (2 if cpus >= 2 else 1)
    return max(1, min(n_femurs, threads, cpus))


@contextmanager
def _meanwhile(
    calls: list[Callable[[], _T]], workers: int, thread_name_prefix: str
) -> Iterator[list[Callable[[], _T]]]:
    """Getters of the results of ``calls``: with more than one worker the calls start in threads now and
    each getter waits for its own; otherwise each getter makes its call when asked. Calls not started
    when the block ends are cancelled; the block waits for those running."""
    if workers <= 1:
        yield calls
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=thread_name_prefix) as pool:
        pending = [pool.submit(call) for call in calls]
        try:
            yield [future.result for future in pending]
        finally:
            for future in pending:
                future.cancel()


def _refine_all(
    image: np.ndarray, view: CanonicalView, coarse: _Coarse, sides: dict[str, int], cfg: ClassicalSegmenterConfig
) -> dict[str, tuple[Box, np.ndarray] | None]:
    """The fine pass of every femur, two at once in threads where the configuration and the CPUs allow.

    Each femur's pass reads the shared CT and coarse labels and writes only its own arrays, and the heavy
    steps (Gaussian filters, labelling, distance transforms, watershed) release the GIL; the result is the
    same as one after the other.
    """
    passes = [partial(_refine, image, view, coarse, fid, cfg) for fid in sides.values()]
    with _meanwhile(passes, _femur_workers(cfg, len(sides)), "femur-fine-pass") as results:
        return {side: result() for side, result in zip(sides, results)}


def _midline_estimate(
    tracks: list[ShaftTrack],
    body_midline_mm: float | None,
    view: CanonicalView,
    factors: tuple[int, int, int],
    cspacing: tuple[float, float, float],
) -> float:
    """Best guess of the body midline along the canonical left axis (coarse mm).

    Between two femoral shafts; else the body's midline; else the scanner axis (LPS x = 0), near
    which patients are centred.
    """
    if len(tracks) == 2:
        return 0.5 * float(tracks[0].mean_centre_mm[1] + tracks[1].mean_centre_mm[1])
    if body_midline_mm is not None:
        return body_midline_mm
    t = tracks[0]
    z = t.slices[len(t.slices) // 2] * factors[0]
    p = t.mean_centre_mm[0] / view.canonical_spacing[1]
    a = view.canonical_affine[0]
    if abs(a[2]) < 1e-6:
        return float(t.mean_centre_mm[1])
    l_index = -(a[3] + a[0] * z + a[1] * p) / a[2]
    return float(l_index * view.canonical_spacing[2])


def _coarse_labels(
    coarse: np.ndarray,
    bone: np.ndarray,
    tracks: list[ShaftTrack],
    cspacing: tuple[float, float, float],
    factors: tuple[int, int, int],
    midline_mm: float,
    cfg: ClassicalSegmenterConfig,
    head_of: list[Callable[[], HeadSphere | None]],
    mirrored: Callable[[HeadSphere], HeadSphere | None] | None = None,
) -> _Coarse:
    """Watershed of the coarse bone into femurs (1, 2, ...) and other bone (``_OTHER``); each track's
    femoral head (or None) is given by calling ``head_of[i]`` (see :func:`_meanwhile`). Where one of
    two femurs has a head and the other none, ``mirrored`` (see :func:`_mirrored_head`) may give the
    other from the first."""
    from operators.femur_shafts import _IN_PLANE_8

    markers = np.zeros(coarse.shape, dtype=np.int32)
    plane_labels, _ = ndi.label(bone, structure=_IN_PLANE_8)
    femur_seed = np.zeros(coarse.shape, dtype=bool)
    for fid, track in enumerate(tracks, start=1):
        for z, lab in zip(track.slices, track.labels):
            piece = plane_labels[z] == lab
            core = ndi.binary_erosion(piece)
            markers[z][core if core.any() else piece] = fid
        femur_seed |= markers == fid
    anchors = markers.astype(np.int8)

    # Other bone 1: at the knee, pieces that stay apart from every femur seed once partial-volume
    # bridges are eroded away and that lie below the shafts (patella, tibia, fibula). Not above the
    # shafts: there a lytic lesion can cut a trochanter or the neck off the shaft, and the pelvis is
    # recognised by the rules below.
    # (border_value=1: a tibia cut by the edge of the field of view must not erode away.)
    eroded = ndi.binary_erosion(bone, structure=_SIX, border_value=1)
    comp, n = ndi.label(eroded, structure=_SIX)
    if n:
        bottom = min(t.slices[0] for t in tracks)
        has_seed = np.zeros(n + 1, dtype=bool)
        has_seed[np.unique(comp[femur_seed & eroded])] = True
        z_sum = np.zeros(n + 1)
        count = np.zeros(n + 1)
        for z in range(comp.shape[0]):
            per_slice = np.bincount(comp[z].ravel(), minlength=n + 1)
            count += per_slice
            z_sum += z * per_slice
        below = np.zeros(n + 1, dtype=bool)
        below[1:] = z_sum[1:] < bottom * np.maximum(count[1:], 1.0)
        other = (~has_seed & below)[comp]
        markers[other & (markers == 0)] = _OTHER
    condyles = _condyles(markers, eroded, tracks, cspacing)
    # Other bone 2: too far along the bone from the shafts to be femur.
    far = _geodesic_far(bone, femur_seed, cspacing, cfg.far_geodesic_mm)
    markers[far & (markers == 0)] = _OTHER
    # Other bone 3: the midline between two femurs (sacrum, coccyx, pubic symphysis).
    l_mm = np.arange(coarse.shape[2]) * cspacing[2]
    if len(tracks) == 2:
        # Only above the shafts: at the knees the medial condyles of both femurs can come close to
        # the midline.
        top = max(t.slices[-1] for t in tracks)
        band = np.abs(l_mm - midline_mm) < cfg.midline_band_mm
        above = np.zeros(coarse.shape[0], dtype=bool)
        above[top + 1:] = True
        markers[bone & band[None, None, :] & above[:, None, None] & (markers == 0)] = _OTHER

    # Femoral heads: seed the femur inside each head and the pelvis beyond its cup.
    heads: dict[int, HeadSphere] = {}
    _, shift = _full_grid(cspacing, factors)
    spheres = [head() for head in head_of]
    if mirrored is not None and len(spheres) == 2 and sum(s is None for s in spheres) == 1:
        # One hip shows its joint, the other none (a narrow joint on thick slices): without a head there,
        # nothing keeps the acetabulum from the femur.
        missing = spheres.index(None)
        spheres[missing] = mirrored(spheres[1 - missing])
    for fid, sphere in enumerate(spheres, start=1):
        if sphere is None:
            continue
        heads[fid] = sphere
        coarse_sphere = sphere.shifted(-shift)
        _apply_sphere(markers, bone, coarse_sphere, fid, (0, 0, 0), cspacing, head_margin_mm=4.0, cup_margin_mm=2.0)

    landscape = _watershed_relief(
        coarse, cspacing, cfg.coarse_landscape_cap_hu, cfg, within=bone,
        sigma_mm=max(cfg.valley_sigma_mm, 0.5 * min(cspacing)),
    )
    labels = _watershed(landscape, markers, bone).astype(np.int32)
    for fid, (slab, region) in condyles.items():
        # The eroded region and the layer that erosion took off it, on the slab and a slice either side.
        lo, hi = max(0, slab.start - 1), min(labels.shape[0], slab.stop + 1)
        grown = np.zeros((hi - lo,) + labels.shape[1:], dtype=bool)
        grown[slab.start - lo:slab.stop - lo] = region
        grown = ndi.binary_dilation(grown, structure=_SIX)
        part = labels[lo:hi]
        part[grown & (part == _OTHER)] = fid
    shafts = {
        fid: (t.slices[0] * factors[0], t.slices[-1] * factors[0] + factors[0] - 1)
        for fid, t in enumerate(tracks, start=1)
    }
    return _Coarse(factors=factors, spacing=cspacing, labels=labels, heads=heads, anchors=anchors, shafts=shafts)


def _condyles(
    markers: np.ndarray, eroded: np.ndarray, tracks: list[ShaftTrack], cspacing: tuple[float, float, float],
    depth_mm: float = 80.0,
) -> dict[int, tuple[slice, np.ndarray]]:
    """Per femur id, the bone below its shaft run that stays joined to the run once bridges are eroded.

    The shaft run ends where the metaphysis flares, 4-6 cm above the condyles. The femur's label has
    to flood all that bone to reach the condyles, while the tibia's label lies just across the knee
    joint: where partial volume bridges the joint on the coarse grid, the tibia gets there first and
    takes the condyles. What this returns goes back to the femur after the watershed (not as seeds:
    seeds added anywhere change the order in which the watershed settles ties elsewhere, at the hip).
    Only bone within ``depth_mm`` below the run and joined to this femur alone counts (canonical
    grid, axis 0 upwards; ``markers`` as seeded so far). Each region is given on a slab of slices:
    ``(slab, mask)``, ``mask`` covering ``markers[slab]``.
    """
    out: dict[int, tuple[slice, np.ndarray]] = {}
    for fid, track in enumerate(tracks, start=1):
        bottom = int(track.slices[0])
        low = max(0, bottom - int(round(depth_mm / cspacing[0])))
        if low >= bottom:
            continue
        comp, n = ndi.label(eroded[low:bottom + 1], structure=_SIX)
        if n == 0:
            continue
        seeded = markers[low:bottom + 1]
        own = np.unique(comp[(seeded == fid) & (comp > 0)])
        foreign = np.unique(comp[(seeded > 0) & (seeded != fid) & (comp > 0)])
        keep = np.setdiff1d(own, foreign)
        if keep.size == 0:
            continue
        out[fid] = (slice(low, bottom), np.isin(comp[:-1], keep))
    return out


#: Edge strengths (HU/mm on the coarse grid) that vote for head centres, tried in turn until a head is
#: found (see ``_find_head``).
_HEAD_EDGE_GRADIENTS_HU_PER_MM = (40.0, 15.0)
#: Least height (mm) of a head centre above the top of its shaft run; a short run (``ShaftTrack.short``)
#: can reach into the trochanteric region, 15-30 mm below the head's centre.
_HEAD_MIN_HEIGHT_MM = 25.0
_SHORT_RUN_HEAD_MIN_HEIGHT_MM = 12.0


def _find_head(
    coarse: np.ndarray,
    image: np.ndarray,
    track: ShaftTrack,
    cspacing: tuple[float, float, float],
    full_spacing: tuple[float, float, float],
    shift: np.ndarray,
    midline_mm: float,
) -> HeadSphere | None:
    """The femoral head above a shaft run, fitted at full resolution (full canonical mm)."""
    z_mm = np.asarray(track.slices, dtype=np.float64) * cspacing[0]
    centres = np.asarray(track.centres_mm)
    min_height_mm = _SHORT_RUN_HEAD_MIN_HEIGHT_MM if track.short else _HEAD_MIN_HEIGHT_MM
    if track.short:
        # A short run that reaches into the trochanteric region bends towards the greater trochanter at
        # its top: a line through its centres leans 15-20 degrees laterally, twice the shaft's own lean,
        # and puts the head below its end. The body axis is the better "up" there.
        slope_p = slope_l = 0.0
    elif z_mm.size >= 2 and np.ptp(z_mm) > 0:
        slope_p = np.polyfit(z_mm, centres[:, 0], 1)[0]
        slope_l = np.polyfit(z_mm, centres[:, 1], 1)[0]
    else:
        slope_p = slope_l = 0.0
    up = np.array([1.0, slope_p, slope_l])
    up /= np.linalg.norm(up)
    top = np.array([z_mm[-1], centres[-1, 0], centres[-1, 1]])
    medial = np.array([0.0, 0.0, 1.0 if midline_mm > top[2] else -1.0])

    def neck_guess(centre: np.ndarray) -> np.ndarray:
        # Anatomical guess of the neck axis: from the head towards the shaft, down and lateral at
        # ~50 degrees from the shaft axis (neck-shaft angle ~130 degrees).
        to_axis = top + ((centre - top) @ up) * up - centre
        lateral = to_axis / max(np.linalg.norm(to_axis), 1e-6)
        return -np.cos(np.deg2rad(50.0)) * up + np.sin(np.deg2rad(50.0)) * lateral

    tried: list[np.ndarray] = []
    # Strong edges first. A thin, faint head cortex (osteoporotic bone, high kVp) blurred by the
    # coarse grid can stay under that gradient everywhere, so that the head collects no votes and
    # only the pelvis' thick edges are left: then weaker edges vote too. The fit below, not the
    # vote, decides what is a head, so the second round only adds candidates.
    for min_gradient in _HEAD_EDGE_GRADIENTS_HU_PER_MM:
        candidates = head_candidates(
            coarse, cspacing, shaft_top_mm=top, shaft_direction=up, medial=medial, min_gradient_hu_per_mm=min_gradient,
            min_height_mm=min_height_mm,
        )
        for centre in candidates:
            if any(np.linalg.norm(centre - t) < 5.0 for t in tried):
                continue
            tried.append(centre)
            sphere = fit_head_sphere(image, full_spacing, centre + shift, neck_guess(centre))
            if sphere is not None:
                return sphere
    return None


#: How far (mm; superior, posterior, left) the head of a hip may lie from the other hip's head mirrored
#: across the midline: the pelvis tilts sideways by a few degrees (one hip up to ~15 mm higher), and the
#: midline between the femoral shafts is a few mm off the pelvis' own.
_MIRRORED_HEAD_TOLERANCE_MM = np.array([15.0, 10.0, 10.0])


def _mirrored_head(
    coarse: np.ndarray,
    image: np.ndarray,
    cspacing: tuple[float, float, float],
    full_spacing: tuple[float, float, float],
    shift: np.ndarray,
    midline_mm: float,
    known: HeadSphere,
) -> HeadSphere | None:
    """The femoral head of a hip whose joint shows no gap, found from the other hip's head ``known``.

    ``known`` mirrored across the midline (``midline_mm``, coarse mm along the canonical left axis) tells
    where to look; the strongest ball in a socket (:func:`socket_centres`, coarse grid) within
    :data:`_MIRRORED_HEAD_TOLERANCE_MM` of that place is the centre, and the rise to the head's rim around
    it the radius (:func:`head_from_its_rim`). The neck's axis and the cup's coverage are ``known``'s,
    mirrored. Positions as ``known``'s: full-resolution canonical mm.
    """
    mirror = np.array(known.centre_mm, dtype=np.float64)
    mirror[2] = 2.0 * (midline_mm + shift[2]) - mirror[2]
    # Balls in sockets whose centres may lie within the tolerance: edges up to the largest radius away vote.
    reach = _MIRRORED_HEAD_TOLERANCE_MM + 40.0
    centre = None
    for min_gradient in _HEAD_EDGE_GRADIENTS_HU_PER_MM:
        for candidate in socket_centres(coarse, cspacing, mirror - shift - reach, mirror - shift + reach,
                                        min_gradient_hu_per_mm=min_gradient):
            if np.all(np.abs(candidate + shift - mirror) <= _MIRRORED_HEAD_TOLERANCE_MM):
                centre = candidate + shift
                break
        if centre is not None:
            break
    if centre is None:
        logger.debug("no ball in a socket near the other head mirrored, %s mm", np.round(mirror, 1))
        return None
    neck = np.array(known.neck_direction, dtype=np.float64)
    neck[2] = -neck[2]
    # Mirroring the left axis turns azimuth atan2(left, posterior) into its negative: bin j into N - 1 - j.
    covered = known.covered[:, ::-1]
    sphere = head_from_its_rim(image, full_spacing, centre, neck, covered, known.head_radius_mm)
    if sphere is not None:
        logger.debug(
            "femoral head without a joint gap placed from the other hip's: centre %s mm (mirror %s mm), radius %.1f mm",
            np.round(centre, 1), np.round(mirror, 1), sphere.head_radius_mm,
        )
    return sphere


def _apply_sphere(
    markers: np.ndarray,
    bone: np.ndarray,
    sphere: HeadSphere,
    femur_value: int,
    origin_index: tuple[int, int, int],
    spacing: tuple[float, float, float],
    *,
    head_margin_mm: float,
    cup_margin_mm: float,
    other_value: int = _OTHER,
) -> None:
    """Seed the femur inside a head and the pelvis beyond its cup, within a box around the head."""
    reach = sphere.cup_radius_mm + 11.0
    lo = [max(0, int(np.floor((c - reach) / s)) - o) for c, s, o in zip(sphere.centre_mm, spacing, origin_index)]
    hi = [min(n, int(np.ceil((c + reach) / s)) + 1 - o) for c, s, o, n in zip(sphere.centre_mm, spacing, origin_index, markers.shape)]
    if any(b <= a for a, b in zip(lo, hi)):
        return
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    femur, pelvis = sphere_markers(
        tuple(b - a for a, b in zip(lo, hi)),
        tuple(o + a for o, a in zip(origin_index, lo)),
        spacing,
        sphere,
        head_margin_mm=head_margin_mm,
        cup_margin_mm=cup_margin_mm,
    )
    sub = markers[box]
    inside_cup = _ball_mask(sub.shape, tuple(o + a for o, a in zip(origin_index, lo)), spacing, sphere.centre_mm,
                            sphere.cup_radius_mm + cup_margin_mm)
    # Nothing but the femur inside the cup; nothing but pelvis in the shell beyond it.
    sub[inside_cup & (sub == other_value)] = 0
    sub[femur & bone[box]] = femur_value
    sub[pelvis & bone[box] & (sub != femur_value)] = other_value


def _ball_mask(shape, origin_index, spacing, centre_mm, radius_mm) -> np.ndarray:
    axes = [((np.arange(n) + o) * s - c).astype(np.float32) for n, o, s, c in zip(shape, origin_index, spacing, centre_mm)]
    dz, dy, dx = np.meshgrid(*axes, indexing="ij", sparse=True)
    return dz * dz + dy * dy + dx * dx <= np.float32(radius_mm) ** 2


def _decide_sides(
    coarse: _Coarse,
    tracks: list[ShaftTrack],
    view: CanonicalView,
    midline_mm: float | None,
    cspacing: tuple[float, float, float],
    result: ClassicalResult,
) -> dict[str, int]:
    """Patient side of each femur id, from LPS positions (never from array indices)."""
    affine = view.canonical_affine
    f = np.asarray(coarse.factors, dtype=np.float64)

    def lps_x(z: float, p_mm: float, l_mm: float) -> float:
        # Coarse position (slice index; mm = coarse index * coarse spacing) -> full canonical index
        # (a coarse voxel k covers full voxels k*f .. k*f+f-1) -> LPS x.
        idx = np.array([
            z * f[0] + 0.5 * (f[0] - 1),
            p_mm / cspacing[1] * f[1] + 0.5 * (f[1] - 1),
            l_mm / cspacing[2] * f[2] + 0.5 * (f[2] - 1),
            1.0,
        ])
        return float((affine @ idx)[0])

    centres = []
    for t in tracks:
        mid = t.slices[len(t.slices) // 2]
        c = t.centres_mm[len(t.slices) // 2]
        centres.append(lps_x(mid, c[0], c[1]))
    if len(tracks) == 2:
        a, b = (1, 2) if centres[0] > centres[1] else (2, 1)
        result.side_evidence = {"left": "two femurs", "right": "two femurs"}
        return {"left": a, "right": b}

    track = tracks[0]
    side, evidence = _single_side(coarse, track, centres[0], view, midline_mm, cspacing, lps_x)
    result.side_evidence[side] = evidence
    result.notes.append(f"no {'right' if side == 'left' else 'left'} femur in view")
    return {side: 1}


def _single_side(coarse, track, centre_x, view, midline_mm, cspacing, lps_x) -> tuple[str, str]:
    """Side of a lone femur: hip anatomy first, then the body midline, then the scanner axis."""
    # Shaft axis along the canonical left axis as a function of the (coarse) slice.
    sl = np.asarray(track.slices, dtype=np.float64)
    cl = np.asarray([c[1] for c in track.centres_mm])
    slope, icpt = np.polyfit(sl, cl, 1) if sl.size > 1 else (0.0, float(cl[0]))
    head = coarse.heads.get(1)
    if head is not None:
        # The femoral head lies medial to the shaft: towards -x (patient right) for a left femur.
        z = (head.centre_mm[0] - 0.5 * (coarse.factors[0] - 1) * cspacing[0] / coarse.factors[0]) / cspacing[0]
        head_l_mm = head.centre_mm[2] - 0.5 * (coarse.factors[2] - 1) * cspacing[2] / coarse.factors[2]
        offset_x = lps_x(z, 0.0, head_l_mm) - lps_x(z, 0.0, slope * z + icpt)
        if abs(offset_x) >= 15.0:
            return ("left" if offset_x < 0 else "right"), "femoral head medial to the shaft"
    mask = coarse.labels == 1
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    top_z = int(zs[-1]) if zs.size else track.slices[-1]
    # Without a fitted head: the top of the femur (mostly the head) still lies medial to the shaft
    # when the proximal femur is in view.
    if zs.size and (top_z - track.slices[-1]) * cspacing[0] >= 60.0:
        first = max(0, top_z - int(round(25.0 / cspacing[0])))
        zc, _, lc = np.nonzero(mask[first:top_z + 1])
        z = float(zc.mean()) + first
        cap_l_mm = float(lc.mean()) * cspacing[2]
        offset_x = lps_x(z, 0.0, cap_l_mm) - lps_x(z, 0.0, slope * z + icpt)
        if abs(offset_x) >= 15.0:
            return ("left" if offset_x < 0 else "right"), "top of the femur medial to the shaft"
    if midline_mm is not None:
        mid_slice = track.slices[len(track.slices) // 2]
        mid_x = lps_x(mid_slice, 0.0, midline_mm)
        if abs(centre_x - mid_x) >= 30.0:
            return _side_of(centre_x, mid_x), "position relative to the body midline"
    return _side_of(centre_x, 0.0), "position relative to the scanner axis (x = 0)"


# ------------------------------------------------------------------------------------------------
# Fine pass
# ------------------------------------------------------------------------------------------------


def _upsample_index(n_fine: int, start: int, f: int, n_coarse: int) -> np.ndarray:
    return np.minimum((np.arange(start, start + n_fine)) // f, n_coarse - 1)


def _disk(radius_vox_y: float, radius_vox_x: float) -> np.ndarray:
    ry, rx = max(1, int(np.floor(radius_vox_y))), max(1, int(np.floor(radius_vox_x)))
    y, x = np.ogrid[-ry:ry + 1, -rx:rx + 1]
    return (y / max(radius_vox_y, 1e-6)) ** 2 + (x / max(radius_vox_x, 1e-6)) ** 2 <= 1.0


def _refine(
    image: np.ndarray,
    view: CanonicalView,
    coarse: _Coarse,
    fid: int,
    cfg: ClassicalSegmenterConfig,
) -> tuple[Box, np.ndarray] | None:
    """Full-resolution femur mask inside the femur's box: (canonical box, bool mask)."""
    spacing = view.canonical_spacing
    f = coarse.factors
    cshape = coarse.labels.shape
    own = coarse.labels == fid
    cbox = box_from_mask(own)
    if cbox is None:
        return None
    margin_mm = cfg.marker_erosion_mm + 2.0 * cfg.coarse_spacing_mm + cfg.edge_window_mm
    fine_box = tuple(slice(b.start * k, b.stop * k) for b, k in zip(cbox, f))
    fine_box = enlarge_box(
        fine_box, tuple(int(np.ceil(margin_mm / s)) for s in spacing), image.shape  # type: ignore[arg-type]
    )
    sub = np.asarray(image[fine_box], dtype=np.float32)
    if cfg.smoothing_mm > 0:
        sub_s = ndi.gaussian_filter(sub, tuple(cfg.smoothing_mm / s for s in spacing), output=np.float32)
    else:
        sub_s = sub

    # Generous bone mask first (it may bridge thin joint gaps; the watershed separates the bones),
    # the exact edge is placed once the femur's own voxels are known (_peel_to_half_maximum).
    bone = sub_s > np.float32(cfg.bone_threshold_hu)

    metal = sub_s > cfg.metal_threshold_hu
    if metal.any():
        # Streaks from metal are thin bright lines: an opening near the metal removes them while the
        # implant itself and thick cortex survive.
        near = ndi.binary_dilation(metal, iterations=max(1, int(round(40.0 / max(spacing)))))
        opened = ndi.binary_opening(bone, structure=_SIX, iterations=1)
        bone = np.where(near, opened | metal, bone)
    del metal
    # The relief first: the smoothed image is not needed after it, and the seeds are not needed during it.
    landscape = _watershed_relief(sub_s, spacing, cfg.landscape_cap_hu, cfg, within=bone)
    del sub_s

    # Seeds from the coarse labels, eroded so that they lie safely inside each bone.
    zi = _upsample_index(sub.shape[0], fine_box[0].start, f[0], cshape[0])
    yi = _upsample_index(sub.shape[1], fine_box[1].start, f[1], cshape[1])
    xi = _upsample_index(sub.shape[2], fine_box[2].start, f[2], cshape[2])
    cz = slice(int(zi[0]), int(zi[-1]) + 1)
    cy = slice(int(yi[0]), int(yi[-1]) + 1)
    cx = slice(int(xi[0]), int(xi[-1]) + 1)
    clab = coarse.labels[cz, cy, cx]
    steps = max(1, int(round(cfg.marker_erosion_mm / min(coarse.spacing))))
    own_c = clab == fid
    other_c = (clab != fid) & (clab > 0)
    # Where the femur touches another bone (hip, knee) the coarse boundary may be off by up to a
    # femoral head: leave a wide zone around the contact unseeded, so that the full-resolution
    # watershed alone places the boundary there, in the joint gap.
    contact = own_c & ndi.binary_dilation(other_c, structure=_SIX)
    if contact.any():
        zone = ndi.distance_transform_edt(~contact, sampling=coarse.spacing) <= cfg.joint_zone_mm
    else:
        zone = np.zeros_like(contact)
    # Eroded, a seed may miss a thin cortex (the ischium's, the femoral neck's): on the relief's flat
    # floor (see _landscape_base) the first label to reach that cortex from anywhere floods all of it,
    # and a femur seeded in its thick shaft cortex can reach the ischium's across one bright bridge
    # before the ischium's own seed gets out of its cancellous bone. Away from the other label the coarse
    # boundary is a bone's outer surface, not a contested one: there the labels seed as they are. Of the
    # femur's such voxels only the piece that holds most of them: a piece apart from it is the coarse
    # femur label astray in a neighbouring bone (a stretch of the ischium's ramus), which the fine pass
    # must stay free to give back.
    own_far = _largest_part(own_c & _farther_than(other_c, coarse.spacing, cfg.seed_clearance_mm))
    other_far = other_c & _farther_than(own_c, coarse.spacing, cfg.seed_clearance_mm)
    own_c = (ndi.binary_erosion(own_c, structure=_SIX, iterations=steps, border_value=1) | own_far) & ~zone
    other_c = (ndi.binary_erosion(other_c, structure=_SIX, iterations=steps, border_value=1) | other_far) & ~zone
    seeds_c = np.where(own_c, 1, np.where(other_c, 2, 0)).astype(np.int32)
    seeds = seeds_c[np.ix_(zi - cz.start, yi - cy.start, xi - cx.start)]
    head = coarse.heads.get(fid)
    origin = tuple(b.start for b in fine_box)
    if head is not None:
        _apply_sphere(seeds, bone, head, 1, origin, spacing, head_margin_mm=2.0, cup_margin_mm=1.0, other_value=2)
    seeds[~bone] = 0
    if not (seeds == 1).any():
        return None

    ws = _watershed(landscape, seeds, bone)
    del landscape
    femur = ws == 1
    other = ws == 2
    del ws
    femur = _peel_to_half_maximum(femur, sub, spacing, cfg)
    if head is not None:
        # The head is a ball: a cyst or lesion that opens onto its surface still lies inside it.
        ball = _ball_mask(femur.shape, origin, spacing, head.centre_mm, head.head_radius_mm)
        femur |= ball & ~other

    femur = _close_and_fill(femur, other, spacing, cfg.closing_radius_mm)
    # Before the breach repair too: a neck whose cortex ring the pelvis broke open is no breach to rebuild
    # (the rebuild from the slice below would carry that slice's separate tip of the greater trochanter
    # across the trochanteric fossa).
    femur = _fill_holes_walled_with(femur, other)
    # Cross-sections where a lesion broke through the cortex: rebuild the outline along the shaft
    # and the trochanteric region from the intact cross-sections above and below.
    first, last = coarse.shafts[fid]
    top = int(round((head.centre_mm[0] - 20.0) / spacing[0])) if head is not None else last + int(60.0 / spacing[0])
    z_off = fine_box[0].start
    rebuild_range = (first - z_off, top - z_off)
    shaft_range = (first - z_off, last + 1 - z_off)
    if z_off == 0:
        # The box starts at the field of view's distal edge: the shaft may go on below its run there.
        start = _shaft_start_at_cut(femur, shaft_range)
        rebuild_range, shaft_range = (start, rebuild_range[1]), (start, shaft_range[1])
    femur = repair_cortical_breaches(
        femur, spacing=spacing, z_range=rebuild_range, convex_range=shaft_range, blocked=other, image=sub
    )
    # Lesions that open into a concave stretch of the outline (the notch beside the lesser trochanter)
    # leave a cross-section that is not judged breached: fill their cavities.
    femur = fill_lesion_cavities(
        femur, spacing=spacing, z_range=rebuild_range, image=sub, convex_range=shaft_range, blocked=other
    )
    if head is not None:
        # Above the rebuild, up to the head's centre, the cross-section is the neck and the top of the
        # greater trochanter. A lesion that destroyed the trochanter's wall leaves a wide, unlined bay there.
        centre = int(round(head.centre_mm[0] / spacing[0]))
        femur = fill_lesion_cavities(
            femur, spacing=spacing, z_range=(top - z_off, centre - z_off), image=sub, convex_range=shaft_range,
            blocked=other, min_depth_to_mouth=TROCHANTER_CAVITY_MIN_DEPTH_TO_MOUTH,
        )
    femur = _fill_holes_walled_with(femur, other)
    femur = fill_holes(femur)
    # Keep the pieces that hold a shaft-run core or the head: what the edge threshold cut loose from
    # them (an artery that touched the cortex, a bridge into a neighbouring bone) goes.
    anchor = (coarse.anchors[cz, cy, cx] == fid)[np.ix_(zi - cz.start, yi - cy.start, xi - cx.start)]
    if head is not None:
        anchor |= _ball_mask(femur.shape, origin, spacing, head.centre_mm, head.head_radius_mm - 2.0)
    comp, n = ndi.label(femur, structure=_SIX)
    if n > 1:
        keep = np.zeros(n + 1, dtype=bool)
        keep[np.unique(comp[anchor & femur])] = True
        keep[0] = False
        femur = keep[comp]
    tight = box_from_mask(femur)
    if tight is None:
        return None
    box = tuple(slice(fb.start + t.start, fb.start + t.stop) for fb, t in zip(fine_box, tight))
    return box, femur[tight]  # type: ignore[return-value]


def _largest_part(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected piece of ``mask`` (empty if it is)."""
    pieces, n = ndi.label(mask, structure=_SIX)
    if n <= 1:
        return mask
    sizes = np.bincount(pieces.ravel())
    sizes[0] = 0
    return pieces == int(np.argmax(sizes))


def _farther_than(mask: np.ndarray, spacing: tuple[float, ...], distance_mm: float) -> np.ndarray:
    """Voxels farther than ``distance_mm`` from every voxel of ``mask`` (all of them if it is empty)."""
    if not mask.any():
        return np.ones(mask.shape, dtype=bool)
    return ndi.distance_transform_edt(~mask, sampling=spacing) > distance_mm


def _shaft_start_at_cut(femur: np.ndarray, shaft_range: tuple[int, int], max_flare: float = 1.3) -> int:
    """First slice of the shaft when the field of view cuts the femur below its shaft run.

    The shaft run is the longest stretch of round, solitary cross-sections; a lesion that breaks the
    cortex ends it. When the field of view then cuts the shaft a few cm further down (knees out of view),
    the cross-sections between the lesion and the cut are shaft too, yet outside the run, and a breach
    there would not be rebuilt: the lesion would stay outside the femur. They count as shaft when the
    femur reaches the box's first slice (the edge of the field of view; the caller checks that the box
    starts there) and no cross-section below the run is more than ``max_flare`` times the run's median
    area (a cut through the metaphysis, which flares towards the knee, is left alone).

    Parameters
    ----------
    femur:
        bool (S, P, L) femur mask in its box, axis 0 towards the head, holes filled.
    shaft_range:
        Half-open slices [first, last + 1) of the shaft run in the box.

    Returns
    -------
    int
        0 when the shaft goes on down to the cut, else the run's first slice.
    """
    first, stop = shaft_range
    if first <= 0 or stop <= first or not femur[0].any():
        return first
    area = femur[:stop].sum(axis=(1, 2))
    if area[:first].max() <= max_flare * float(np.median(area[first:stop])):
        return 0
    return first


def _peel_to_half_maximum(
    femur: np.ndarray, image: np.ndarray, spacing: tuple[float, ...], cfg: ClassicalSegmenterConfig
) -> np.ndarray:
    """Move the femur's outer edge to half the height of its own cortical peak above soft tissue.

    A blurred edge between bone of peak ``p`` and soft tissue ``s`` lies where the intensity is
    ``(p + s) / 2``; a fixed bone threshold would put it too far out where the cortex is dense and
    too far in where it is thin. The peak is taken over the femur's own voxels only, so that a
    neighbouring bone across a thin joint gap (the acetabulum's cortex next to the femoral head) does
    not raise it. Only the two outermost voxel layers are judged so; what lies deeper and is not near
    cortex-level density at all (a contrast-filled artery that touched the bone) goes too.
    """
    own = np.where(femur, image, np.float32(-1024.0))
    window = tuple(max(3, int(round(cfg.edge_window_mm / s)) | 1) for s in spacing)
    peak = ndi.maximum_filter(own, size=window)
    del own
    np.minimum(peak, np.float32(cfg.edge_peak_cap_hu), out=peak)
    threshold = np.float32(0.5) * (peak + np.float32(cfg.soft_tissue_hu))
    # Nothing is bone that is not within reach of cortex-level density (contrast-filled vessels).
    cortical = peak >= np.float32(cfg.min_cortex_peak_hu)
    del peak
    # Only the outer layers are judged against the half maximum: deeper inside, cancellous bone
    # stays even where a lesion has opened the cortex and the hole filling cannot bring it back.
    inner = ndi.binary_erosion(femur, structure=_SIX, iterations=2)
    return femur & cortical & (inner | (image >= threshold))


def _close_and_fill(femur: np.ndarray, other: np.ndarray, spacing: tuple[float, ...], radius_mm: float) -> np.ndarray:
    """Seal small cortical breaks slice by slice, fill enclosed marrow / lesions, then fill in 3D.

    Voxels the watershed gave to another bone are never added.
    """
    out = _fill_slices(femur)
    if radius_mm > 0:
        disk = _disk(radius_mm / spacing[1], radius_mm / spacing[2])
        pad = ((0, 0), (disk.shape[0], disk.shape[0]), (disk.shape[1], disk.shape[1]))
        # Pad in-plane so that the closing is not cut short at the edge of the box.
        closed = closing_in_plane(np.pad(femur, pad), disk)
        closed = closed[:, pad[1][0]:-pad[1][1], pad[2][0]:-pad[2][1]]
        out |= _fill_slices(closed) & ~other
    return fill_holes(out)
