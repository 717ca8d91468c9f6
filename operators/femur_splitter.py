"""Split a CT into one femur-only volume per femur: the pre-processing of the lesion model.

Each femur is segmented (by default without model weights, :mod:`operators.femur_classical`; a learned
model can be plugged in, :class:`operators.femur_nnunet.NnUNetFemurSegmenter`) and cut out of the CT
into its own volume that holds only that femur's voxels, every other voxel exactly 0. The lesion
model normalises intensities over the femur only (nnU-Net's ``use_mask_for_norm``), and nnU-Net finds
"the femur" as the non-zero voxels of its input (with enclosed holes filled): so

* a femur voxel whose HU is exactly 0 would be taken for background. Such voxels are *nudged* to a
  tiny non-zero value (:attr:`SplitterConfig.zero_hu_nudge`, 1e-3 HU by default, far below CT noise),
  so that the non-zero mask of a femur-only volume equals the femur mask exactly;
* the femur mask has no enclosed holes (they are filled), so nnU-Net's hole filling adds nothing.

Arrays are (z, y, x) = (slice, row, column) of the input CT's grid, positions are LPS patient
coordinates in mm, and "left"/"right" are the patient's sides derived from the affine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import highdicom as hd
import numpy as np

from operators.errors import NoFemurInViewError
from operators.femur_classical import (
    LEFT_LABEL,
    RIGHT_LABEL,
    ClassicalFemurSegmenter,
    ClassicalSegmenterConfig,
)
from operators.femur_geometry import Box, box_from_mask, box_shape, enlarge_box
from operators.femur_points import export_femur_points

logger = logging.getLogger(__name__)

__all__ = [
    "FemurCrop",
    "FemurSegmenter",
    "FemurSplit",
    "SIDES",
    "SIDE_LABELS",
    "SplitterConfig",
    "export_femur_points",
    "split_femurs",
    "split_labels_by_side",
]

#: Patient sides in the order they are reported.
SIDES = ("left", "right")
#: Label values of the full-grid femur label map (docs/CONVENTIONS.md).
SIDE_LABELS: Mapping[str, int] = {"left": LEFT_LABEL, "right": RIGHT_LABEL}


@runtime_checkable
class FemurSegmenter(Protocol):
    """Anything that segments the femurs of a CT.

    ``segment(ct)`` takes a CT in HU (array (z, y, x), affine index -> LPS mm, any orientation) and
    returns a uint8 array of the same shape: 0 background, 1 left femur, 2 right femur (patient
    sides). A segmenter whose model knows only "femur" sets the attribute ``sided = False`` and
    returns 0/1; the splitter then tells the femurs apart and assigns sides from the geometry
    (:func:`split_labels_by_side`).
    """

    def segment(self, ct: hd.Volume) -> np.ndarray: ...


@dataclass(frozen=True)
class SplitterConfig:
    """Configuration of :func:`split_femurs`.

    Parameters
    ----------
    margin_mm:
        The femur's bounding box is enlarged by this much on every side (then clipped to the CT)
        before it is cut out.
    zero_hu_nudge:
        Value (HU) given to femur voxels whose HU is exactly 0 in the femur-only volume, so that they
        are not taken for background. Must be non-zero and tiny (|value| < 1 HU).
    min_femur_volume_ml:
        Femurs smaller than this (a few slices of a femur at the edge of the field of view, or a
        stray finding) are not reported.
    classical:
        Parameters of the default, weight-free segmenter.
    """

    margin_mm: float = 5.0
    zero_hu_nudge: float = 1e-3
    min_femur_volume_ml: float = 15.0
    classical: ClassicalSegmenterConfig = field(default_factory=ClassicalSegmenterConfig)

    def __post_init__(self) -> None:
        if not np.isfinite(self.margin_mm) or self.margin_mm < 0:
            raise ValueError(f"margin_mm must be a non-negative number of mm, got {self.margin_mm!r}")
        nudge = np.float32(self.zero_hu_nudge)
        if not np.isfinite(nudge) or nudge == 0 or abs(float(nudge)) >= 1.0:
            raise ValueError(
                f"zero_hu_nudge must be non-zero and smaller than 1 HU in magnitude, got {self.zero_hu_nudge!r}"
            )
        if not self.min_femur_volume_ml >= 0:
            raise ValueError(f"min_femur_volume_ml must not be negative, got {self.min_femur_volume_ml!r}")


@dataclass(frozen=True, eq=False)
class FemurCrop:
    """One femur cut out of the CT.

    Attributes
    ----------
    side:
        "left" or "right": the patient's side.
    box:
        Index slices (z, y, x) of the crop in the full input grid (unit steps, explicit bounds): the
        femur's bounding box enlarged by the configured margin and clipped to the CT.
    full_shape:
        Spatial shape (z, y, x) of the full input grid.
    mask:
        bool array of the crop's shape: the femur (cortex, marrow, cancellous bone, and lesions and
        cysts inside it).
    femur_only:
        The crop as a volume: float32 HU at femur voxels, exactly 0 elsewhere (femur voxels of HU 0
        are nudged, see the module docstring). Its affine is the full affine shifted to the crop's
        origin.
    volume_ml:
        Femur volume in ml (voxel count times voxel volume).
    length_mm:
        Extent of the femur along the patient's body axis (LPS z) in mm: from the lowest to the
        highest femur voxel centre.
    """

    side: str
    box: Box
    full_shape: tuple[int, int, int]
    mask: np.ndarray
    femur_only: hd.Volume
    volume_ml: float
    length_mm: float

    @property
    def bbox(self) -> Box:
        """Alias of :attr:`box`."""
        return self.box

    def to_full_grid(self, crop_array: np.ndarray, fill: Any = 0) -> np.ndarray:
        """Place an array of the crop's shape into the full input grid.

        Parameters
        ----------
        crop_array:
            Array whose first three axes have the crop's shape (z, y, x); trailing axes are kept.
        fill:
            Value of the full grid outside the crop.

        Returns
        -------
        numpy.ndarray
            Array of shape ``full_shape + crop_array.shape[3:]`` and ``crop_array``'s dtype.
        """
        crop_array = np.asarray(crop_array)
        if crop_array.shape[:3] != self.mask.shape:
            raise ValueError(f"array shape {crop_array.shape[:3]} does not match the crop shape {self.mask.shape}")
        out = np.full(self.full_shape + crop_array.shape[3:], fill, dtype=crop_array.dtype)
        out[self.box] = crop_array
        return out

    def full_mask(self) -> np.ndarray:
        """The femur mask on the full input grid (bool)."""
        return self.to_full_grid(self.mask, fill=False)

    def facts(self) -> dict[str, Any]:
        """Per-femur facts for reports: side, volume (ml), length along the body axis (mm), box."""
        return {
            "side": self.side,
            "volume_ml": round(self.volume_ml, 2),
            "length_mm": round(self.length_mm, 1),
            "bbox_zyx": [[s.start, s.stop] for s in self.box],
            "crop_shape_zyx": list(box_shape(self.box)),
        }


@dataclass(frozen=True, eq=False)
class FemurSplit:
    """The femurs found in a CT.

    Attributes
    ----------
    femurs:
        Per present patient side ("left", "right"), its :class:`FemurCrop`. Empty when no femur is
        in view.
    full_shape:
        Spatial shape (z, y, x) of the input CT.
    affine:
        4x4 affine of the input CT, index (z, y, x) -> LPS mm.
    notes:
        Human-readable remarks, e.g. "no right femur in view".
    no_femur_reason:
        Why no femur was found (None when at least one was).
    """

    femurs: dict[str, FemurCrop]
    full_shape: tuple[int, int, int]
    affine: np.ndarray
    notes: tuple[str, ...] = ()
    no_femur_reason: str | None = None

    @property
    def remarks(self) -> tuple[str, ...]:
        """The notes other than "no <side> femur in view" (which reports say per femur anyway)."""
        return _remarks(self.notes)

    def label_map(self) -> np.ndarray:
        """uint8 (z, y, x) on the full input grid: 0 background, 1 left femur, 2 right femur."""
        out = np.zeros(self.full_shape, dtype=np.uint8)
        for side, crop in self.femurs.items():
            out[crop.box][crop.mask] = SIDE_LABELS[side]
        return out

    def require_femur(self) -> FemurSplit:
        """Return self, or raise :class:`operators.errors.NoFemurInViewError` when no femur was found."""
        if not self.femurs:
            raise NoFemurInViewError(f"no femur in view: {self.no_femur_reason or 'none found'}")
        return self

    def facts(self) -> dict[str, Any]:
        """Summary for reports (no patient identifiers)."""
        return {
            "femurs": {side: crop.facts() for side, crop in self.femurs.items()},
            "notes": list(self.notes),
            "no_femur_reason": self.no_femur_reason,
        }


def _remarks(notes: Sequence[str]) -> tuple[str, ...]:
    return tuple(n for n in notes if not n.startswith(("no left femur", "no right femur")))


def _validate_ct(ct: Any) -> hd.Volume:
    if not isinstance(ct, hd.Volume):
        raise TypeError(f"ct must be a highdicom.Volume, got {type(ct).__name__}")
    if ct.number_of_channel_dimensions != 0 or ct.array.ndim != 3:
        raise ValueError(f"ct must be a single-channel 3D volume, got array shape {ct.array.shape}")
    if str(getattr(ct.coordinate_system, "value", ct.coordinate_system)).upper() != "PATIENT":
        raise ValueError("ct must be defined in the patient coordinate system (LPS)")
    if not (np.issubdtype(ct.dtype, np.floating) or np.issubdtype(ct.dtype, np.integer)):
        raise TypeError(f"ct must hold real-valued HU, got dtype {ct.dtype}")
    return ct


def split_labels_by_side(femur_mask: np.ndarray, ct: hd.Volume, *, min_volume_ml: float = 15.0) -> np.ndarray:
    """Turn a one-label femur mask into left/right labels using the geometry.

    The (at most two) largest 26-connected pieces of at least ``min_volume_ml`` are the femurs. With
    two, the one at larger LPS x is the patient's left; with one, its side is the sign of its LPS x
    relative to the scanner axis (x = 0), which in practice runs close to the patient's midline.

    Parameters
    ----------
    femur_mask:
        bool or 0/1 array (z, y, x) on the CT's grid.
    ct:
        The CT the mask belongs to (for its affine).
    min_volume_ml:
        Smaller pieces are dropped.

    Returns
    -------
    numpy.ndarray
        uint8 (z, y, x): 0 background, 1 left femur, 2 right femur.
    """
    from scipy import ndimage as ndi

    mask = np.asarray(femur_mask) > 0
    if mask.shape != ct.spatial_shape:
        raise ValueError(f"femur mask shape {mask.shape} does not match the CT shape {ct.spatial_shape}")
    comp, n = ndi.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    out = np.zeros(mask.shape, dtype=np.uint8)
    if n == 0:
        return out
    voxel_ml = float(np.prod(ct.spacing)) / 1000.0
    sizes = np.bincount(comp.ravel())
    sizes[0] = 0
    order = [int(i) for i in np.argsort(sizes)[::-1][:2] if sizes[i] * voxel_ml >= min_volume_ml]
    centres = {i: ndi.center_of_mass(comp == i) for i in order}
    xs = {i: float((ct.affine @ np.array([*centres[i], 1.0]))[0]) for i in order}
    if len(order) == 2:
        left, right = sorted(order, key=lambda i: -xs[i])
        out[comp == left] = LEFT_LABEL
        out[comp == right] = RIGHT_LABEL
    elif len(order) == 1:
        i = order[0]
        out[comp == i] = LEFT_LABEL if xs[i] > 0 else RIGHT_LABEL
    return out


def _length_along_body_axis(mask: np.ndarray, box: Box, affine: np.ndarray) -> float:
    """Distance between the lowest and highest femur voxel centres along LPS z (mm)."""
    # LPS z of a voxel is linear in its index: its extremes over the mask are attained at the
    # extremes of the index projections weighted by the z-row of the affine.
    row = affine[2, :3]
    zs, ys, xs = np.nonzero(mask)
    pos = (zs + box[0].start) * row[0] + (ys + box[1].start) * row[1] + (xs + box[2].start) * row[2]
    return float(pos.max() - pos.min()) if pos.size else 0.0


def _make_crop(
    ct: hd.Volume, side: str, femur_full: np.ndarray, tight: Box, config: SplitterConfig
) -> FemurCrop:
    spacing = ct.spacing
    margin = tuple(int(np.ceil(config.margin_mm / s)) for s in spacing)
    box = enlarge_box(tight, margin, ct.spatial_shape)  # type: ignore[arg-type]
    mask = np.ascontiguousarray(femur_full[box])
    sub = ct[box]  # highdicom shifts the affine to the crop origin
    hu = np.asarray(sub.array, dtype=np.float32)
    values = np.where(mask, hu, np.float32(0.0)).astype(np.float32, copy=False)
    zero_in_femur = mask & (values == 0)
    n_zero = int(zero_in_femur.sum())
    if n_zero:
        values[zero_in_femur] = np.float32(config.zero_hu_nudge)
        logger.debug("%s femur: %d voxel(s) of exactly 0 HU nudged to %g HU", side, n_zero, config.zero_hu_nudge)
    femur_only = sub.with_array(values)
    volume_ml = float(mask.sum()) * float(np.prod(spacing)) / 1000.0
    length = _length_along_body_axis(mask, box, ct.affine)
    return FemurCrop(
        side=side,
        box=box,
        full_shape=tuple(int(s) for s in ct.spatial_shape),  # type: ignore[arg-type]
        mask=mask,
        femur_only=femur_only,
        volume_ml=volume_ml,
        length_mm=length,
    )


def _check_label_values(labels: np.ndarray) -> None:
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise ValueError(f"segmenter returned dtype {labels.dtype}; expected integer labels 0, 1 (left), 2 (right)")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) > RIGHT_LABEL):
        raise ValueError(
            f"segmenter returned label values in [{int(labels.min())}, {int(labels.max())}];"
            " expected only 0, 1 (left), 2 (right)"
        )


def _default_segmenter(config: SplitterConfig) -> FemurSegmenter:
    return ClassicalFemurSegmenter(config=config.classical)


def split_femurs(
    ct: hd.Volume,
    *,
    config: SplitterConfig | None = None,
    segmenter: FemurSegmenter | None = None,
) -> FemurSplit:
    """Segment the femurs of a CT and cut each out into its own femur-only volume.

    Parameters
    ----------
    ct:
        CT in HU (float32 preferred), array (z, y, x) = (slice, row, column), affine index -> LPS mm,
        in any orientation (head- or feet-first, slices ascending or descending, flipped rows or
        columns).
    config:
        Margins, the zero-HU nudge and the classical segmenter's parameters.
    segmenter:
        Femur segmenter to use instead of the default classical one (e.g. an
        :class:`operators.femur_nnunet.NnUNetFemurSegmenter`).

    Returns
    -------
    FemurSplit
        One :class:`FemurCrop` per femur in view. No femur at all is a result, not an error:
        ``femurs`` is then empty and ``no_femur_reason`` says why; call
        :meth:`FemurSplit.require_femur` to turn it into :class:`operators.errors.NoFemurInViewError`.
    """
    start = time.perf_counter()
    ct = _validate_ct(ct)
    config = config or SplitterConfig()
    segmenter = segmenter or _default_segmenter(config)
    if not callable(getattr(segmenter, "segment", None)):
        raise TypeError(f"segmenter must have a segment(ct) method, got {type(segmenter).__name__}")

    labels = np.asarray(segmenter.segment(ct))
    if labels.shape != ct.spatial_shape:
        raise ValueError(f"segmenter returned shape {labels.shape}, expected the CT shape {ct.spatial_shape}")
    if not getattr(segmenter, "sided", True):
        labels = split_labels_by_side(labels, ct, min_volume_ml=config.min_femur_volume_ml)
    _check_label_values(labels)

    notes: list[str] = list(getattr(getattr(segmenter, "last_result", None), "notes", []) or [])
    femurs: dict[str, FemurCrop] = {}
    voxel_ml = float(np.prod(ct.spacing)) / 1000.0
    for side in SIDES:
        full = labels == SIDE_LABELS[side]
        tight = box_from_mask(full)
        if tight is None:
            continue
        count = int(full[tight].sum())
        if count * voxel_ml < config.min_femur_volume_ml:
            notes.append(f"{side} femur candidate of {count * voxel_ml:.1f} ml ignored (too small)")
            continue
        femurs[side] = _make_crop(ct, side, full, tight, config)
    for side in SIDES:
        if side not in femurs:
            note = f"no {side} femur in view"
            if note not in notes:
                notes.append(note)

    reason = None
    if not femurs:
        detail = _remarks(notes)
        reason = detail[0] if detail else "no femur found in the field of view"
    logger.info(
        "femur split: %s in %.1f s%s",
        ", ".join(f"{s} {c.volume_ml:.0f} ml" for s, c in femurs.items()) or "no femur",
        time.perf_counter() - start,
        f" ({reason})" if reason else "",
    )
    return FemurSplit(
        femurs=femurs,
        full_shape=tuple(int(s) for s in ct.spatial_shape),  # type: ignore[arg-type]
        affine=np.array(ct.affine, copy=True),
        notes=tuple(notes),
        no_femur_reason=reason,
    )
