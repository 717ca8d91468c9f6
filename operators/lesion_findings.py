"""Per-femur findings of lytic lesions: count, volumes, largest diameter, site along the femur, cortex.

The inputs are boolean masks on a CT grid: the femur (the whole bone, cortex, marrow and any lesion inside
it, as the femur splitter and the DICOM-SEG define it) and the lytic lesions of that femur. Arrays are
(z, y, x) = (slice, row, column); the grid's affine maps an index (z, y, x) to LPS patient coordinates in
mm. Every measurement is made in patient coordinates, so the same femur gives the same findings whatever
the acquisition's orientation (head-first or feet-first, ascending or descending slices, flipped rows or
columns). "Left" and "right" are the patient's.

Lesions
    A lesion is a 26-connected component of the lesion mask. Components smaller than
    :attr:`FindingsConfig.min_lesion_volume_mm3` are not reported as lesions; they are counted separately
    (``n_small_components_ignored``). Volume = voxel count x voxel volume. The largest diameter is the
    largest distance between the centres of two voxels of the lesion; it is found among the vertices of
    the convex hull of the lesion's boundary voxels (the only candidates for the farthest pair), so it
    costs little even for large lesions. A single-voxel lesion has diameter 0.

Cortical involvement (:data:`CORTICAL_RULE`)
    A lesion *reaches the cortex* when at least one of its voxels lies in the outer shell of the bone:
    the voxels of the solid bone (femur mask united with the lesion mask, enclosed cavities filled) that
    are removed by ``1 + surface_margin_voxels`` erosions with the 6-connected structuring element. With
    the default margin of one voxel this means: the lesion replaces the cortex outright, or leaves at
    most one voxel of bone between itself and the outside; at the resolution of the segmentation the
    cortex is breached or thinned to nothing. The edges of the image are not bone surface: where the
    femur leaves the field of view it is taken to continue.

Site along the femur (:data:`LOCATION_RULE`)
    Landmarks are found from the femur mask itself, in patient coordinates:

    * *femoral head*: the largest sphere inscribed in the femur (Euclidean distance transform in mm) among
      those that sit at the top of the bone: radius at least ``min_head_radius_mm``, centre within
      ``head_search_depth_mm`` of the femur's superior end and at most ``head_top_tolerance`` of its own
      radii below it (a wide trochanteric region lower down, whose sphere can be as large as the head's,
      is never taken for the head). The proximal femur counts as not
      in view when the femur reaches the superior edge of the image or no such sphere exists; all lesion
      sites are then ``"unknown"``;
    * *shaft axis*: a line fitted (principal axis) to the centroids of the single-piece axial
      cross-sections between ``trochanter_depth`` and ``trochanter_depth + shaft_fit_length`` head radii
      below the head centre (the subtrochanteric and mid femur); the shaft radius is the median
      equivalent-circle radius of those cross-sections. With fewer than three of them, or less than two
      head radii of shaft, the axis runs along the image's superior axis through their mean centroid;
    * *neck axis*: from the head centre through the centroid of the bone in the shell between
      ``neck_shell`` head radii around it (the start of the neck), down to the point of the shaft axis
      closest to that line (the neck-shaft junction).

    Each lesion voxel is then assigned one site, in this order: ``head`` (inside the head sphere, or on
    the far side of the head centre from the neck); ``shaft`` (lower than ``trochanter_depth`` head radii
    below the head centre, measured along the shaft axis: a level near the lesser trochanter);
    ``neck`` (between the head centre and the neck-shaft junction along the neck axis, within
    ``neck_radius`` head radii of that axis and outside the shaft's cylinder continued upwards);
    ``trochanteric`` (the rest of the proximal femur: trochanters and intertrochanteric region).
    A lesion's site is the site of most of its voxels. "shaft" is everything below the trochanteric
    region, the distal metaphysis and condyles included. When no shaft cross-section is in view below the
    trochanteric region, lesions outside the head are ``"unknown"``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import highdicom as hd
import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError

from operators.femur_geometry import CanonicalView, box_from_mask, box_shape, is_index_box_in

logger = logging.getLogger(__name__)

__all__ = [
    "CORTICAL_RULE",
    "FemurFindings",
    "FemurLandmarks",
    "FindingsConfig",
    "LOCATIONS",
    "LOCATION_RULE",
    "LesionFinding",
    "SIDES",
    "StudyFindings",
    "UNKNOWN_LOCATION",
    "estimate_landmarks",
    "femur_findings",
    "largest_diameter_mm",
    "study_findings",
]

#: Patient sides, in the order they are reported.
SIDES = ("left", "right")
#: Sites along the femur, proximal to distal (the order in which they are listed).
LOCATIONS = ("head", "neck", "trochanteric", "shaft")
#: Site of a lesion when the proximal femur is not in view (or the shaft axis cannot be found).
UNKNOWN_LOCATION = "unknown"

#: One-line statements of the rules, for reports.
CORTICAL_RULE = (
    "lesion voxels in the outer shell of the bone (1 + margin voxels deep, 6-connected): the cortex is "
    "breached or thinned to at most the margin"
)
LOCATION_RULE = (
    "head = largest inscribed sphere at the proximal end; shaft = below a level trochanter_depth head radii "
    "under the head centre along the shaft axis (fitted to subtrochanteric cross-section centroids); neck = "
    "between head and shaft axis along the neck axis; trochanteric = rest of the proximal femur"
)

_SITE_CODES = {name: i for i, name in enumerate(LOCATIONS)}
_UNKNOWN_CODE = len(LOCATIONS)
_FACE_6 = ndi.generate_binary_structure(3, 1)
_FULL_26 = np.ones((3, 3, 3), dtype=bool)
_IN_PLANE_8 = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE_8[1] = True


@dataclass(frozen=True)
class FindingsConfig:
    """How lesions are counted and described. Lengths in mm, volumes in mm^3.

    Parameters
    ----------
    min_lesion_volume_mm3:
        Components of the lesion mask smaller than this are not reported as lesions (counted separately).
    surface_margin_voxels:
        Bone between a lesion and the outside, in voxels, up to which the lesion still reaches the cortex.
    min_head_radius_mm:
        Smallest radius of the sphere inscribed in the proximal end accepted as a femoral head (adult heads
        are 20-27 mm; the shaft's inscribed radius is about half that).
    head_search_depth_mm:
        The head centre is searched this far below the femur's superior end.
    head_top_tolerance:
        The head centre may lie at most this many head radii below the femur's superior end.
    trochanter_depth:
        Head radii below the head centre (along the shaft axis) where the trochanteric region ends and the
        shaft begins (about the lesser trochanter).
    shaft_fit_length:
        Head radii of shaft, below the trochanteric region, whose cross-sections the shaft axis is fitted to.
    neck_radius:
        Largest distance of a neck voxel from the neck axis, in head radii.
    neck_shell:
        Inner and outer radius, in head radii, of the shell around the head centre whose bone gives the
        neck direction.
    """

    min_lesion_volume_mm3: float = 20.0
    surface_margin_voxels: int = 1
    min_head_radius_mm: float = 10.0
    head_search_depth_mm: float = 100.0
    head_top_tolerance: float = 1.5
    trochanter_depth: float = 3.5
    shaft_fit_length: float = 6.0
    neck_radius: float = 1.0
    neck_shell: tuple[float, float] = (1.15, 1.75)

    def __post_init__(self) -> None:
        for name in ("min_lesion_volume_mm3", "min_head_radius_mm", "head_search_depth_mm", "head_top_tolerance",
                     "trochanter_depth", "shaft_fit_length", "neck_radius"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite non-negative number, not {value!r}")
        margin = self.surface_margin_voxels
        if not (isinstance(margin, int) and not isinstance(margin, bool) and margin >= 0):
            raise ValueError(f"surface_margin_voxels must be a non-negative integer, not {margin!r}")
        inner, outer = self.neck_shell
        if not 0 < inner < outer:
            raise ValueError(f"neck_shell must be (inner, outer) with 0 < inner < outer, not {self.neck_shell!r}")


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


def _r(value: float | None, digits: int) -> float | None:
    # "+ 0.0" turns a rounded -0.0 into 0.0 for the JSON.
    return None if value is None else round(float(value), digits) + 0.0


def _point(p: np.ndarray) -> tuple[float, float, float]:
    return (float(p[0]), float(p[1]), float(p[2]))


@dataclass(frozen=True)
class FemurLandmarks:
    """Landmarks of a femur in LPS patient coordinates (mm), from which lesion sites are derived.

    Attributes
    ----------
    head_centre_mm, head_radius_mm:
        Centre and radius of the largest sphere inscribed in the proximal end (the femoral head).
    shaft_point_mm, shaft_direction:
        A point of the shaft axis and its unit direction, pointing towards the head (superior). None when
        too little shaft is in view.
    shaft_radius_mm:
        Median equivalent-circle radius of the shaft cross-sections the axis was fitted to.
    neck_direction:
        Unit vector from the head centre along the neck, towards the shaft.
    neck_junction_mm:
        Point of the shaft axis closest to the neck axis.
    shaft_axis_fitted:
        False when the axis had to be taken along the image's superior axis through too few cross-sections.
    """

    head_centre_mm: tuple[float, float, float]
    head_radius_mm: float
    shaft_point_mm: tuple[float, float, float] | None = None
    shaft_direction: tuple[float, float, float] | None = None
    shaft_radius_mm: float | None = None
    neck_direction: tuple[float, float, float] | None = None
    neck_junction_mm: tuple[float, float, float] | None = None
    shaft_axis_fitted: bool = False

    def to_dict(self) -> dict[str, Any]:
        def vec(v: tuple[float, ...] | None, digits: int) -> list[float] | None:
            return None if v is None else [_r(c, digits) for c in v]

        return {
            "head_centre_lps_mm": vec(self.head_centre_mm, 1),
            "head_radius_mm": _r(self.head_radius_mm, 1),
            "shaft_point_lps_mm": vec(self.shaft_point_mm, 1),
            "shaft_direction_lps": vec(self.shaft_direction, 4),
            "shaft_radius_mm": _r(self.shaft_radius_mm, 1),
            "neck_direction_lps": vec(self.neck_direction, 4),
            "neck_junction_lps_mm": vec(self.neck_junction_mm, 1),
            "shaft_axis_fitted": self.shaft_axis_fitted,
        }


@dataclass(frozen=True)
class LesionFinding:
    """One lytic lesion (a 26-connected component of the lesion mask).

    Attributes
    ----------
    number:
        1-based, in decreasing order of volume within its femur.
    volume_ml:
        Volume in ml (voxel count x voxel volume).
    largest_diameter_mm:
        Largest distance between two of its voxel centres, mm.
    centroid_lps_mm:
        Mean position of its voxel centres, LPS mm.
    location:
        One of :data:`LOCATIONS` or :data:`UNKNOWN_LOCATION`.
    cortical_involvement:
        True when it reaches the femur's outer surface (:data:`CORTICAL_RULE`).
    n_voxels:
        Voxel count.
    """

    number: int
    volume_ml: float
    largest_diameter_mm: float
    centroid_lps_mm: tuple[float, float, float]
    location: str
    cortical_involvement: bool
    n_voxels: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "volume_ml": _r(self.volume_ml, 3),
            "largest_diameter_mm": _r(self.largest_diameter_mm, 1),
            "centroid_lps_mm": [_r(c, 1) for c in self.centroid_lps_mm],
            "location": self.location,
            "cortical_involvement": self.cortical_involvement,
            "n_voxels": self.n_voxels,
        }


@dataclass(frozen=True)
class FemurFindings:
    """Findings of one femur (one patient side).

    Attributes
    ----------
    side:
        "left" or "right" (the patient's).
    present:
        Whether this femur is in view. When False every other attribute is empty.
    femur_volume_ml:
        Volume of the femur mask in ml.
    lesions:
        Lesions at least the minimum volume, largest first.
    n_small_components_ignored, small_components_volume_ml:
        Components of the lesion mask below the minimum volume, and their total volume (ml).
    proximal_femur_in_view:
        Whether the femoral head was found (lesion sites can be given).
    location_note:
        Why sites are unknown, when they are.
    landmarks:
        The landmarks sites were derived from (None when the proximal femur is not in view).
    """

    side: str
    present: bool
    femur_volume_ml: float | None = None
    lesions: tuple[LesionFinding, ...] = ()
    n_small_components_ignored: int = 0
    small_components_volume_ml: float = 0.0
    proximal_femur_in_view: bool = False
    location_note: str | None = None
    landmarks: FemurLandmarks | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        """"Left femur" / "Right femur"."""
        return f"{self.side.capitalize()} femur"

    @property
    def n_lesions(self) -> int:
        return len(self.lesions)

    @property
    def total_lesion_volume_ml(self) -> float:
        return float(sum(lesion.volume_ml for lesion in self.lesions))

    @property
    def largest_lesion_volume_ml(self) -> float | None:
        return max((lesion.volume_ml for lesion in self.lesions), default=None)

    @property
    def largest_diameter_mm(self) -> float | None:
        return max((lesion.largest_diameter_mm for lesion in self.lesions), default=None)

    @property
    def locations(self) -> tuple[str, ...]:
        """Distinct lesion sites, proximal to distal, "unknown" last."""
        found = {lesion.location for lesion in self.lesions}
        return tuple(name for name in (*LOCATIONS, UNKNOWN_LOCATION) if name in found)

    @property
    def cortical_involvement(self) -> bool | None:
        """Whether any lesion reaches the cortex; None when there is no lesion."""
        if not self.lesions:
            return None
        return any(lesion.cortical_involvement for lesion in self.lesions)

    def to_dict(self) -> dict[str, Any]:
        if not self.present:
            return {"side": self.side, "present": False}
        return {
            "side": self.side,
            "present": True,
            "femur_volume_ml": _r(self.femur_volume_ml, 2),
            "n_lesions": self.n_lesions,
            "total_lesion_volume_ml": _r(self.total_lesion_volume_ml, 3),
            "largest_lesion_volume_ml": _r(self.largest_lesion_volume_ml, 3),
            "largest_diameter_mm": _r(self.largest_diameter_mm, 1),
            "locations": list(self.locations),
            "cortical_involvement": self.cortical_involvement,
            "n_small_components_ignored": self.n_small_components_ignored,
            "small_components_volume_ml": _r(self.small_components_volume_ml, 3),
            "proximal_femur_in_view": self.proximal_femur_in_view,
            "location_note": self.location_note,
            "lesions": [lesion.to_dict() for lesion in self.lesions],
            "landmarks": self.landmarks.to_dict() if self.landmarks is not None else None,
        }


@dataclass(frozen=True)
class StudyFindings:
    """Findings of both femurs of a study.

    Attributes
    ----------
    left, right:
        Findings per patient side; ``present`` is False for a femur not in view.
    config:
        The configuration they were computed with.
    """

    left: FemurFindings
    right: FemurFindings
    config: FindingsConfig = field(default_factory=FindingsConfig)

    def __post_init__(self) -> None:
        if self.left.side != "left" or self.right.side != "right":
            raise ValueError("StudyFindings needs the left femur's findings as left and the right's as right")

    @property
    def femurs(self) -> tuple[FemurFindings, FemurFindings]:
        """(left, right)."""
        return (self.left, self.right)

    @property
    def femur_in_view(self) -> bool:
        return self.left.present or self.right.present

    def femur(self, side: str) -> FemurFindings:
        return {"left": self.left, "right": self.right}[_check_side(side)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "femur_in_view": self.femur_in_view,
            "femurs": {f.side: f.to_dict() for f in self.femurs},
            "criteria": {
                "lesion_connectivity": 26,
                "min_lesion_volume_mm3": self.config.min_lesion_volume_mm3,
                "largest_diameter": "largest distance between lesion voxel centres",
                "cortical_involvement": CORTICAL_RULE,
                "surface_margin_voxels": self.config.surface_margin_voxels,
                "location": LOCATION_RULE,
                "trochanter_depth_head_radii": self.config.trochanter_depth,
            },
        }


# --------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------


def study_findings(
    *,
    grid: hd.Volume | hd.VolumeGeometry,
    femur_masks: Mapping[str, np.ndarray | None],
    lesion_masks: Mapping[str, np.ndarray | None] | np.ndarray | None = None,
    config: FindingsConfig | None = None,
) -> StudyFindings:
    """Findings of both femurs of a CT.

    Parameters
    ----------
    grid:
        The CT (or its geometry): spatial shape (z, y, x) of the masks and affine index -> LPS mm.
    femur_masks:
        Boolean (z, y, x) femur mask per patient side ("left", "right"); a side that is missing, None or
        empty is not in view.
    lesion_masks:
        Boolean (z, y, x) lesion mask per side, or one mask for both femurs (its voxels are given to the
        femur whose mask holds them; others are dropped with a warning), or None (no lesions).
    config:
        Counting and description rules; defaults to ``FindingsConfig()``.

    Returns
    -------
    StudyFindings
    """
    config = config or FindingsConfig()
    unknown = set(femur_masks) - set(SIDES)
    if unknown:
        raise ValueError(f"femur_masks has keys {sorted(unknown)}: expected 'left' and/or 'right'")
    shape = _grid_shape(grid)
    femurs = {side: _as_mask(femur_masks.get(side), shape, f"{side} femur mask") for side in SIDES}
    if lesion_masks is None:
        lesions: dict[str, np.ndarray | None] = {side: None for side in SIDES}
    elif isinstance(lesion_masks, Mapping):
        unknown = set(lesion_masks) - set(SIDES)
        if unknown:
            raise ValueError(f"lesion_masks has keys {sorted(unknown)}: expected 'left' and/or 'right'")
        lesions = {side: _as_mask(lesion_masks.get(side), shape, f"{side} lesion mask") for side in SIDES}
    else:
        combined = _as_mask(lesion_masks, shape, "lesion mask")
        lesions = {side: None for side in SIDES}
        if combined is not None:
            assigned = np.zeros(shape, dtype=bool)
            for side in SIDES:
                if femurs[side] is not None:
                    lesions[side] = combined & femurs[side]
                    assigned |= lesions[side]
            stray = int(np.count_nonzero(combined & ~assigned))
            if stray:
                logger.warning("%d lesion voxels lie in no femur mask and are not reported", stray)
    per_side = {
        side: femur_findings(side=side, femur_mask=femurs[side], lesion_mask=lesions[side], grid=grid,
                             config=config)
        for side in SIDES
    }
    if not (per_side["left"].present or per_side["right"].present):
        logger.info("no femur in view")
    return StudyFindings(left=per_side["left"], right=per_side["right"], config=config)


def study_findings_in_boxes(
    *,
    grid: hd.Volume | hd.VolumeGeometry,
    femurs: Mapping[str, tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray | None]],
    config: FindingsConfig | None = None,
) -> StudyFindings:
    """:func:`study_findings` of femurs whose masks are given inside index boxes of ``grid``.

    The result is the one the same masks give on the full grid (each femur is measured in its box
    enlarged by the room :func:`femur_findings` takes around the bone, clipped to the grid, which is the
    region it works in on the full grid too), without allocating a full-grid array per mask: 150 MB each
    for a 512x512x600 CT.

    Parameters
    ----------
    grid:
        The CT (or its geometry): spatial shape (z, y, x) and affine index -> LPS mm.
    femurs:
        Per patient side ("left", "right") in view: ``(box, femur_mask, lesion_mask)``, where ``box`` holds
        unit-step index slices (z, y, x) of ``grid`` with explicit bounds (e.g.
        :attr:`operators.femur_splitter.FemurCrop.box`), ``femur_mask`` is boolean of the box's shape and
        ``lesion_mask`` boolean of the box's shape or None. The grid outside a box is background.
    config:
        Counting and description rules; defaults to ``FindingsConfig()``.
    """
    config = config or FindingsConfig()
    unknown = set(femurs) - set(SIDES)
    if unknown:
        raise ValueError(f"femurs has keys {sorted(unknown)}: expected 'left' and/or 'right'")
    shape = _grid_shape(grid)
    affine = _grid_affine(grid)
    pad = 2 + config.surface_margin_voxels
    per_side: dict[str, FemurFindings] = {}
    for side in SIDES:
        if side not in femurs:
            per_side[side] = femur_findings(side=side, femur_mask=None, lesion_mask=None, grid=grid, config=config)
            continue
        box, femur_mask, lesion_mask = femurs[side]
        if not is_index_box_in(box, shape):
            raise ValueError(f"{side} femur box is not a unit-step index box inside the grid {shape}")
        outer = tuple(slice(max(0, b.start - pad), min(n, b.stop + pad)) for b, n in zip(box, shape))
        inner = tuple(slice(b.start - o.start, b.stop - o.start) for b, o in zip(box, outer))
        outer_shape = tuple(o.stop - o.start for o in outer)

        def placed(mask: np.ndarray | None, what: str) -> np.ndarray | None:
            if mask is None:
                return None
            mask = np.asarray(mask)
            if mask.shape != box_shape(box):
                raise ValueError(f"{side} {what} has shape {mask.shape}, its box {box_shape(box)}")
            out = np.zeros(outer_shape, dtype=mask.dtype)
            out[inner] = mask
            return out

        origin = np.array([o.start for o in outer], dtype=np.float64)
        sub_affine = affine.copy()
        sub_affine[:3, 3] = affine[:3, :3] @ origin + affine[:3, 3]
        sub_grid = hd.VolumeGeometry(sub_affine, outer_shape, "PATIENT",
                                     frame_of_reference_uid=getattr(grid, "frame_of_reference_uid", None))
        per_side[side] = femur_findings(side=side, femur_mask=placed(femur_mask, "femur mask"),
                                        lesion_mask=placed(lesion_mask, "lesion mask"), grid=sub_grid, config=config)
    if not (per_side["left"].present or per_side["right"].present):
        logger.info("no femur in view")
    return StudyFindings(left=per_side["left"], right=per_side["right"], config=config)


def femur_findings(
    *,
    side: str,
    femur_mask: np.ndarray | None,
    lesion_mask: np.ndarray | None,
    grid: hd.Volume | hd.VolumeGeometry,
    config: FindingsConfig | None = None,
) -> FemurFindings:
    """Findings of one femur.

    Parameters
    ----------
    side:
        "left" or "right": the patient's side of this femur.
    femur_mask:
        Boolean (z, y, x) mask of the femur (the whole bone, lesions included) on ``grid``; None or empty
        when the femur is not in view.
    lesion_mask:
        Boolean (z, y, x) mask of this femur's lytic lesions on ``grid``, or None.
    grid:
        The CT (or its geometry): shape of the masks and affine index (z, y, x) -> LPS mm. A crop works as
        well as the full CT, as long as the femur touches the crop's edge only where it leaves the CT.
    config:
        Counting and description rules; defaults to ``FindingsConfig()``.

    Returns
    -------
    FemurFindings
    """
    side = _check_side(side)
    config = config or FindingsConfig()
    shape = _grid_shape(grid)
    affine = _grid_affine(grid)
    femur = _as_mask(femur_mask, shape, f"{side} femur mask")
    lesion = _as_mask(lesion_mask, shape, f"{side} lesion mask")
    if femur is None:
        if lesion is not None:
            logger.warning("%s femur not in view: its %d lesion voxels are not reported", side,
                           int(np.count_nonzero(lesion)))
        logger.info("%s femur: not in view", side)
        return FemurFindings(side=side, present=False)
    if lesion is None:
        lesion = np.zeros(shape, dtype=bool)

    voxel_mm3 = abs(float(np.linalg.det(affine[:3, :3])))
    femur_volume_ml = np.count_nonzero(femur) * voxel_mm3 / 1000.0

    # Work in the bounding box of the bone, with room for the erosions; clipping to the grid keeps the
    # femur touching the crop's edge exactly where it leaves the image.
    pad = 2 + config.surface_margin_voxels
    box = box_from_mask(femur | lesion)
    assert box is not None
    box = tuple(slice(max(0, b.start - pad), min(n, b.stop + pad)) for b, n in zip(box, shape))
    femur_c = femur[box]
    lesion_c = lesion[box]
    origin = np.array([b.start for b in box], dtype=np.float64)
    crop_affine = affine.copy()
    crop_affine[:3, 3] = affine[:3, :3] @ origin + affine[:3, 3]

    solid = _fill_enclosed(femur_c | lesion_c)
    outside_femur = int(np.count_nonzero(lesion_c & ~femur_c))
    if outside_femur:
        logger.debug("%s femur: %d lesion voxels lie outside the femur mask", side, outside_femur)

    landmarks, note = estimate_landmarks(solid, crop_affine, config=config)
    lesions, n_small, small_ml = _describe_lesions(lesion_c, solid, crop_affine, landmarks, voxel_mm3, config)
    if note is None and landmarks is not None and landmarks.shaft_direction is None:
        note = "too little of the shaft in view to place lesions outside the femoral head"
    findings = FemurFindings(
        side=side,
        present=True,
        femur_volume_ml=femur_volume_ml,
        lesions=lesions,
        n_small_components_ignored=n_small,
        small_components_volume_ml=small_ml,
        proximal_femur_in_view=landmarks is not None,
        location_note=note,
        landmarks=landmarks,
    )
    logger.info(
        "%s femur: %.1f ml, %d lesion(s), %.3f ml in total, %d component(s) under %.0f mm3 ignored%s",
        side, femur_volume_ml, findings.n_lesions, findings.total_lesion_volume_ml, n_small,
        config.min_lesion_volume_mm3, f"; sites unknown: {note}" if note and findings.lesions else "",
    )
    return findings


# --------------------------------------------------------------------------------------------------
# Lesions
# --------------------------------------------------------------------------------------------------


def _describe_lesions(
    lesion: np.ndarray,
    solid: np.ndarray,
    affine: np.ndarray,
    landmarks: FemurLandmarks | None,
    voxel_mm3: float,
    config: FindingsConfig,
) -> tuple[tuple[LesionFinding, ...], int, float]:
    labels, n = ndi.label(lesion, structure=_FULL_26)
    if n == 0:
        return (), 0, 0.0
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    volumes_mm3 = counts * voxel_mm3
    keep = np.flatnonzero(volumes_mm3 >= config.min_lesion_volume_mm3) + 1
    small = volumes_mm3 < config.min_lesion_volume_mm3
    n_small = int(np.count_nonzero(small))
    small_ml = float(volumes_mm3[small].sum() / 1000.0)
    if keep.size == 0:
        return (), n_small, small_ml

    objects = ndi.find_objects(labels)
    rotation, translation = affine[:3, :3], affine[:3, 3]

    described = []
    for label_value in keep:
        box = objects[label_value - 1]
        component = labels[box] == label_value
        touches_surface = _reaches_surface(solid, labels, label_value, box, 1 + config.surface_margin_voxels)
        origin = np.array([b.start for b in box])
        index = np.argwhere(component) + origin
        points = index @ rotation.T + translation
        centroid = points.mean(axis=0)
        location = _majority_site(points, landmarks, config)
        described.append((
            int(counts[label_value - 1]),
            _component_diameter(component, origin, affine),
            centroid,
            location,
            touches_surface,
        ))
    # Largest first; equal sizes by position (superior first), so the order does not depend on the grid's.
    described.sort(key=lambda item: (-item[0], -round(item[2][2], 3), round(item[2][0], 3), round(item[2][1], 3)))
    lesions = tuple(
        LesionFinding(
            number=i,
            volume_ml=n_voxels * voxel_mm3 / 1000.0,
            largest_diameter_mm=diameter,
            centroid_lps_mm=_point(centroid),
            location=location,
            cortical_involvement=touches_surface,
            n_voxels=n_voxels,
        )
        for i, (n_voxels, diameter, centroid, location, touches_surface) in enumerate(described, start=1)
    )
    return lesions, n_small, small_ml


def _reaches_surface(solid: np.ndarray, labels: np.ndarray, label_value: int, box: tuple[slice, ...],
                     depth: int) -> bool:
    """Whether lesion ``label_value`` has a voxel in the outer ``depth`` voxels of ``solid`` (6-connected)."""
    # Any background within ``depth`` steps of the lesion lies in its box grown by ``depth``, so the erosion
    # is needed there only. Outside that box counts as bone (border_value=1): either no background there is
    # near enough to matter, or the box meets the grid's edge, where the femur leaves the image (not its
    # surface).
    grown = tuple(slice(max(0, b.start - depth), min(n, b.stop + depth)) for b, n in zip(box, solid.shape))
    local = solid[grown]
    shell = local & ~ndi.binary_erosion(local, structure=_FACE_6, iterations=depth, border_value=1)
    return bool(np.any(shell & (labels[grown] == label_value)))


def _component_diameter(component: np.ndarray, origin: np.ndarray, affine: np.ndarray) -> float:
    # Interior voxels (all 6 neighbours in the lesion) are midpoints of two lesion voxels, so they are never
    # extreme points: the boundary voxels hold the farthest pair.
    boundary = component & ~ndi.binary_erosion(component, structure=_FACE_6, border_value=0)
    index = np.argwhere(boundary) + origin
    points = index @ affine[:3, :3].T + affine[:3, 3]
    return largest_diameter_mm(points)


def largest_diameter_mm(points_mm: np.ndarray) -> float:
    """Largest distance between two of the given points (mm), via the vertices of their convex hull.

    Parameters
    ----------
    points_mm:
        (n, 3) positions in mm (any Cartesian frame).

    Returns
    -------
    float
        The largest pairwise distance; 0 for fewer than two points.
    """
    points = np.asarray(points_mm, dtype=np.float64).reshape(-1, 3)
    points = np.unique(points, axis=0)
    if len(points) < 2:
        return 0.0
    centred = points - points.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    rank = int(np.count_nonzero(singular > 1e-9 * max(singular[0], 1e-12)))
    if rank == 1:
        projection = centred @ vt[0]
        return float(projection.max() - projection.min())
    # A flat lesion (one slice thick) has a 2D hull: take it in its own plane.
    coordinates = centred @ vt[:rank].T
    try:
        candidates = points[ConvexHull(coordinates).vertices]
    except QhullError:  # pragma: no cover - degenerate beyond the rank test; brute force is still exact
        logger.debug("convex hull failed on %d points; comparing all pairs", len(points))
        candidates = points
    return _max_pairwise(candidates)


def _max_pairwise(points: np.ndarray, chunk: int = 2048) -> float:
    best = 0.0
    for start in range(0, len(points), chunk):
        block = points[start:start + chunk]
        d2 = ((block[:, None, :] - points[None, :, :]) ** 2).sum(axis=-1)
        best = max(best, float(d2.max()))
    return math.sqrt(best)


# --------------------------------------------------------------------------------------------------
# Landmarks and sites
# --------------------------------------------------------------------------------------------------


def estimate_landmarks(
    femur_mask: np.ndarray,
    affine: np.ndarray,
    *,
    config: FindingsConfig | None = None,
) -> tuple[FemurLandmarks | None, str | None]:
    """Find the femoral head, shaft axis and neck axis of a femur (see the module docstring).

    Parameters
    ----------
    femur_mask:
        Boolean (z, y, x) mask of the solid femur (cortex and marrow).
    affine:
        4x4 affine of the mask's grid, index (z, y, x) -> LPS mm.
    config:
        Landmark parameters; defaults to ``FindingsConfig()``.

    Returns
    -------
    (FemurLandmarks or None, str or None)
        The landmarks, or None with the reason why the proximal femur is not in view. With landmarks, the
        shaft fields are None when too little shaft is in view.
    """
    config = config or FindingsConfig()
    affine = np.asarray(affine, dtype=np.float64)
    view = CanonicalView.from_affine(affine, femur_mask.shape)
    mask = view.to_canonical(np.asarray(femur_mask, dtype=bool))  # axes: superior, posterior, left
    to_lps = view.canonical_affine
    spacing = np.asarray(view.canonical_spacing)
    occupied = np.flatnonzero(mask.any(axis=(1, 2)))
    if occupied.size == 0:
        return None, "empty femur mask"
    top = int(occupied[-1])
    if top == mask.shape[0] - 1:
        return None, "the femur reaches the upper edge of the image: its proximal end is not in view"

    # Largest inscribed sphere near the top. The distance map is computed on a block reaching well below
    # the search range so that the cut at the block's bottom (not background) cannot inflate it there.
    search = int(math.ceil(config.head_search_depth_mm / spacing[0]))
    block_start = max(0, top - search - int(math.ceil(80.0 / spacing[0])))
    # One empty slice above the top keeps the head's upper surface in the map (the femur ends below the
    # image's edge, checked above).
    distance = ndi.distance_transform_edt(mask[block_start:top + 2], sampling=spacing)
    first = max(0, top - search) - block_start
    window = distance[first:top + 1 - block_start]
    per_slice = window.reshape(window.shape[0], -1)
    radii = per_slice.max(axis=1)  # largest inscribed sphere centred in each slice (mm)
    if float(radii.max()) < config.min_head_radius_mm:
        return None, f"no femoral head: the largest sphere in the proximal femur has radius {radii.max():.1f} mm"
    # The head is the largest sphere that sits at the top of the bone. The trochanteric region below it
    # can be as wide as the head (more so where a lesion fills it), so the condition is part of the search,
    # not a check on the largest sphere overall.
    depth_mm = (top - (first + block_start + np.arange(window.shape[0]))) * spacing[0]
    at_top = (depth_mm <= config.head_top_tolerance * radii) & (radii >= config.min_head_radius_mm)
    if not at_top.any():
        return None, "no femoral head at the proximal end of the femur"
    k = int(np.flatnonzero(at_top)[np.argmax(radii[at_top])])
    radius = float(radii[k])
    head_index = np.array(
        (first + block_start + k, *np.unravel_index(int(np.argmax(per_slice[k])), window.shape[1:])), dtype=np.float64
    )
    head = _apply(to_lps, head_index)

    shaft = _fit_shaft(mask, to_lps, spacing, head_index, radius, int(occupied[0]), top, config)
    neck_direction, junction = _neck_axis(mask, to_lps, spacing, head_index, head, radius, shaft, config)
    if shaft is None:
        return FemurLandmarks(head_centre_mm=_point(head), head_radius_mm=radius,
                              neck_direction=_opt_point(neck_direction)), None
    point, direction, shaft_radius, fitted = shaft
    return FemurLandmarks(
        head_centre_mm=_point(head),
        head_radius_mm=radius,
        shaft_point_mm=_point(point),
        shaft_direction=_point(direction),
        shaft_radius_mm=shaft_radius,
        neck_direction=_opt_point(neck_direction),
        neck_junction_mm=_opt_point(junction),
        shaft_axis_fitted=fitted,
    ), None


def _fit_shaft(
    mask: np.ndarray,
    to_lps: np.ndarray,
    spacing: np.ndarray,
    head_index: np.ndarray,
    head_radius: float,
    bottom: int,
    top: int,
    config: FindingsConfig,
) -> tuple[np.ndarray, np.ndarray, float, bool] | None:
    depth_mm = (head_index[0] - np.arange(mask.shape[0])) * spacing[0]
    lo = config.trochanter_depth * head_radius
    hi = (config.trochanter_depth + config.shaft_fit_length) * head_radius
    # Exclude the lowest slice: where the femur leaves the image its last cross-section may be partial.
    rows = np.flatnonzero((depth_mm >= lo) & (depth_mm <= hi) & (np.arange(mask.shape[0]) > bottom))
    if rows.size == 0:
        return None
    part = mask[rows[0]:rows[-1] + 1]
    labels, _ = ndi.label(part, structure=_IN_PLANE_8)
    pieces = np.zeros(part.shape[0], dtype=np.int64)
    for obj in ndi.find_objects(labels):
        if obj is not None:
            pieces[obj[0].start] += 1
    single = np.flatnonzero(pieces == 1)
    if single.size == 0:
        return None
    part = part[single]
    area_vox = part.sum(axis=(1, 2)).astype(np.float64)
    rows_p = part.sum(axis=2) @ np.arange(part.shape[1])
    cols_l = part.sum(axis=1) @ np.arange(part.shape[2])
    index = np.column_stack([rows[0] + single, rows_p / area_vox, cols_l / area_vox]).astype(np.float64)
    centroids = index @ to_lps[:3, :3].T + to_lps[:3, 3]
    radii = np.sqrt(area_vox * spacing[1] * spacing[2] / math.pi)
    span = (index[:, 0].max() - index[:, 0].min()) * spacing[0]
    point = centroids.mean(axis=0)
    if len(centroids) >= 3 and span >= 2.0 * head_radius:
        _, _, vt = np.linalg.svd(centroids - point, full_matrices=False)
        direction, fitted = vt[0], True
    else:
        direction, fitted = to_lps[:3, 0] / np.linalg.norm(to_lps[:3, 0]), False
    if direction[2] < 0:  # towards the head
        direction = -direction
    return point, direction, float(np.median(radii)), fitted


def _neck_axis(
    mask: np.ndarray,
    to_lps: np.ndarray,
    spacing: np.ndarray,
    head_index: np.ndarray,
    head: np.ndarray,
    head_radius: float,
    shaft: tuple[np.ndarray, np.ndarray, float, bool] | None,
    config: FindingsConfig,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    inner, outer = (f * head_radius for f in config.neck_shell)
    reach = np.ceil(outer / spacing).astype(int)
    lo = np.maximum(np.floor(head_index).astype(int) - reach, 0)
    hi = np.minimum(np.ceil(head_index).astype(int) + reach + 1, mask.shape)
    index = np.argwhere(mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]) + lo
    points = index @ to_lps[:3, :3].T + to_lps[:3, 3]
    distance = np.linalg.norm(points - head, axis=1)
    shell = points[(distance > inner) & (distance <= outer)]
    centre = shell.mean(axis=0) if len(shell) else None

    if shaft is None:
        if centre is None:
            return None, None
        return _unit(centre - head), None
    point, direction = shaft[0], shaft[1]
    foot = point + ((head - point) @ direction) * direction
    if centre is None or (centre - head) @ (foot - head) <= 0:
        # No neck seen next to the head: take the perpendicular from the head centre to the shaft axis.
        return _unit(foot - head), foot
    neck = _unit(centre - head)
    # Closest points of the lines head + s * neck and point + t * direction.
    b = float(neck @ direction)
    if 1.0 - b * b < 1e-6:
        return _unit(foot - head), foot
    w = head - point
    t = (float(w @ direction) - b * float(w @ neck)) / (1.0 - b * b)
    junction = point + t * direction
    return neck, junction


def _sites(points: np.ndarray, landmarks: FemurLandmarks, config: FindingsConfig) -> np.ndarray:
    """Site code (index into LOCATIONS, or len(LOCATIONS) for unknown) of each point (n, 3) in LPS mm."""
    head = np.asarray(landmarks.head_centre_mm)
    radius = landmarks.head_radius_mm
    sites = np.full(len(points), _UNKNOWN_CODE, dtype=np.int64)
    relative = points - head
    in_head = np.linalg.norm(relative, axis=1) <= radius
    if landmarks.neck_direction is not None:
        in_head |= relative @ np.asarray(landmarks.neck_direction) <= 0
    sites[in_head] = _SITE_CODES["head"]
    if landmarks.shaft_direction is None or landmarks.neck_junction_mm is None:
        return sites

    axis_point = np.asarray(landmarks.shaft_point_mm)
    axis = np.asarray(landmarks.shaft_direction)
    height = (points - axis_point) @ axis
    head_height = float((head - axis_point) @ axis)
    below = height < head_height - config.trochanter_depth * radius
    from_axis = np.linalg.norm((points - axis_point) - np.outer(height, axis), axis=1)

    neck = np.asarray(landmarks.neck_direction)
    length = float(np.linalg.norm(np.asarray(landmarks.neck_junction_mm) - head))
    along = relative @ neck
    off_neck = np.linalg.norm(relative - np.outer(along, neck), axis=1)
    in_neck = (
        (along >= 0) & (along <= length) & (off_neck <= config.neck_radius * radius)
        & (from_axis > float(landmarks.shaft_radius_mm or 0.0))
    )
    rest = ~in_head
    sites[rest & below] = _SITE_CODES["shaft"]
    sites[rest & ~below & in_neck] = _SITE_CODES["neck"]
    sites[rest & ~below & ~in_neck] = _SITE_CODES["trochanteric"]
    return sites


def _majority_site(points: np.ndarray, landmarks: FemurLandmarks | None, config: FindingsConfig) -> str:
    if landmarks is None:
        return UNKNOWN_LOCATION
    votes = np.bincount(_sites(points, landmarks, config), minlength=_UNKNOWN_CODE + 1)
    # Ties go to the more proximal site (argmax takes the first).
    code = int(np.argmax(votes))
    return UNKNOWN_LOCATION if code == _UNKNOWN_CODE else LOCATIONS[code]


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _fill_enclosed(mask: np.ndarray) -> np.ndarray:
    """``mask`` with its enclosed cavities filled (background not 6-connected to the array's faces)."""
    background, _ = ndi.label(~mask)
    faces = np.concatenate([
        background[0].ravel(), background[-1].ravel(), background[:, 0].ravel(), background[:, -1].ravel(),
        background[:, :, 0].ravel(), background[:, :, -1].ravel(),
    ])
    open_labels = np.unique(faces[faces > 0])
    return mask | ((background > 0) & ~np.isin(background, open_labels))


def _apply(affine: np.ndarray, index: np.ndarray) -> np.ndarray:
    return affine[:3, :3] @ np.asarray(index, dtype=np.float64) + affine[:3, 3]


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


def _opt_point(v: np.ndarray | None) -> tuple[float, float, float] | None:
    return None if v is None else _point(v)


def _check_side(side: str) -> str:
    if side not in SIDES:
        raise ValueError(f"side must be 'left' or 'right', not {side!r}")
    return side


def _grid_shape(grid: hd.Volume | hd.VolumeGeometry) -> tuple[int, int, int]:
    if not isinstance(grid, (hd.Volume, hd.VolumeGeometry)):
        raise TypeError(f"grid must be a highdicom Volume or VolumeGeometry, not {type(grid).__name__}")
    if str(getattr(grid.coordinate_system, "value", grid.coordinate_system)).upper() != "PATIENT":
        raise ValueError("grid must be in the patient coordinate system (LPS)")
    return tuple(int(n) for n in grid.spatial_shape)  # type: ignore[return-value]


def _grid_affine(grid: hd.Volume | hd.VolumeGeometry) -> np.ndarray:
    affine = np.asarray(grid.affine, dtype=np.float64)
    if abs(np.linalg.det(affine[:3, :3])) <= 0:
        raise ValueError("grid affine is singular")
    return affine


def _as_mask(mask: np.ndarray | None, shape: tuple[int, int, int], what: str) -> np.ndarray | None:
    """Validated boolean mask of ``shape``, or None when absent or empty."""
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise ValueError(f"{what} has shape {mask.shape}, the grid has {shape}")
    if mask.dtype != bool:
        if not (np.issubdtype(mask.dtype, np.integer) and mask.size and mask.min() >= 0 and mask.max() <= 1):
            raise ValueError(f"{what} must be boolean (or 0/1 integers), got dtype {mask.dtype}")
        mask = mask.astype(bool)
    return mask if mask.any() else None
