"""DICOM Segmentation (SEG) of femurs and their lytic lesions, written and read back with highdicom.

The SEG is BINARY (SOP class 1.2.840.10008.5.1.4.1.1.66.4), which OHIF and the OHIF bundled with MONAI
Label both display. Segments overlap on purpose: a femur segment is the whole bone, lesions included,
because fracture-risk analysis needs the bone as a whole; the lesion segments lie inside it.

Masks are given on the CT's grid. Where every CT slice is a source slice (the loader's series, stacked as
acquired), each frame takes the position of its source slice and references it; otherwise the masks go to
highdicom as a :class:`highdicom.Volume`, which places every frame by its position in the frame of
reference and finds the source slice it lies on. Nothing depends on the order in which the source slices
were stored or on empty frames being kept (empty frames are omitted).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from operators.atomic_files import atomic_output_path
from operators.femur_geometry import box_shape, is_index_box_in
from operators.patient_identity import identity_for_copy, patient_values_hidden

logger = logging.getLogger(__name__)

Side = str  # "left" | "right": the patient's side

_LATERALITY: Mapping[Side, Code] = {"left": codes.SCT.Left, "right": codes.SCT.Right}
# CIELab display colours (OHIF uses RecommendedDisplayCIELabValue): femurs blue/green, lesions red,
# cysts amber, close to the overview PNG's colours.
_RGB: Mapping[str, tuple[int, int, int]] = {
    "femur-left": (31, 119, 180),
    "femur-right": (44, 160, 44),
    "lesion": (214, 39, 40),
    "cyst": (255, 191, 0),
}


@dataclass(frozen=True)
class AlgorithmInfo:
    """Identification of the algorithm that produced the segments (written into every segment).

    Parameters
    ----------
    name:
        Name of the model or method, e.g. ``"femur-lytic-lesion-nnunet"``.
    version:
        Version of the model (its weights), not of this software.
    source:
        Who made it (optional).
    parameters:
        Free-text parameters worth recording (e.g. folds, configuration).
    """

    name: str
    version: str
    source: str | None = None
    parameters: Mapping[str, str] | None = None

    def to_sequence(self) -> hd.AlgorithmIdentificationSequence:
        return hd.AlgorithmIdentificationSequence(
            name=self.name,
            family=codes.cid7162.ArtificialIntelligence,
            version=self.version,
            source=self.source,
            parameters=dict(self.parameters) if self.parameters else None,
        )


@dataclass(frozen=True)
class SegmentSpec:
    """What one segment is, in words and codes.

    The property type carries the laterality for femurs (a modifier on the type, as in "Femur, Left");
    for lesions and cysts the femur is the anatomic region and the laterality modifies the region.
    """

    label: str
    category: Code
    property_type: Code
    property_type_modifier: Code | None
    anatomic_region: Code | None
    anatomic_region_modifier: Code | None
    rgb: tuple[int, int, int]

    @staticmethod
    def femur(side: Side) -> SegmentSpec:
        return SegmentSpec(
            label=f"{side.capitalize()} femur",
            category=codes.SCT.AnatomicalStructure,
            property_type=codes.SCT.Femur,
            property_type_modifier=_LATERALITY[side],
            anatomic_region=None,
            anatomic_region_modifier=None,
            rgb=_RGB[f"femur-{side}"],
        )

    @staticmethod
    def lytic_lesion(side: Side) -> SegmentSpec:
        # No verified SNOMED code means "lytic lesion": the type is Neoplasm, the label says lytic.
        return SegmentSpec(
            label=f"Lytic lesion, {side} femur",
            category=codes.SCT.MorphologicallyAbnormalStructure,
            property_type=codes.SCT.Neoplasm,
            property_type_modifier=None,
            anatomic_region=codes.SCT.Femur,
            anatomic_region_modifier=_LATERALITY[side],
            rgb=_RGB["lesion"],
        )

    @staticmethod
    def cyst(side: Side) -> SegmentSpec:
        return SegmentSpec(
            label=f"Cyst, {side} femur",
            category=codes.SCT.MorphologicallyAbnormalStructure,
            property_type=codes.SCT.Cyst,
            property_type_modifier=None,
            anatomic_region=codes.SCT.Femur,
            anatomic_region_modifier=_LATERALITY[side],
            rgb=_RGB["cyst"],
        )

    def describe(self, number: int, algorithm: AlgorithmInfo) -> hd.seg.SegmentDescription:
        """The highdicom segment description, segment number ``number`` (1-based)."""
        desc = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=self.label,
            segmented_property_category=self.category,
            segmented_property_type=self.property_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm.to_sequence(),
            anatomic_regions=[self.anatomic_region] if self.anatomic_region else None,
            display_color=hd.color.CIELabColor.from_rgb(*self.rgb),
        )
        if self.property_type_modifier is not None:
            desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                hd.sr.CodedConcept.from_code(self.property_type_modifier)
            ]
        if self.anatomic_region is not None and self.anatomic_region_modifier is not None:
            desc.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = [
                hd.sr.CodedConcept.from_code(self.anatomic_region_modifier)
            ]
        return desc


@dataclass(frozen=True)
class SegmentMask:
    """A segment and its mask on the CT grid, whole or inside an index box.

    Parameters
    ----------
    spec:
        What the segment is.
    mask:
        Boolean array (z, y, x): the shape of the CT volume the SEG describes when ``box`` is None, else
        the box's shape.
    box:
        Index slices (z, y, x) of the CT grid, unit steps and explicit bounds, where ``mask`` lies; the CT
        is background outside it. A femur's segments kept in the femur's box spare one full-grid array
        each (150 MB for a 512x512x600 CT) on the way to the SEG.
    """

    spec: SegmentSpec
    mask: np.ndarray
    box: tuple[slice, slice, slice] | None = None

    def full_mask(self, shape: Sequence[int]) -> np.ndarray:
        """The mask on the whole CT grid of ``shape`` (z, y, x), bool."""
        if self.box is None:
            return np.asarray(self.mask, dtype=bool)
        out = np.zeros(tuple(shape), dtype=bool)
        out[self.box] = self.mask
        return out

    def _check(self, shape: tuple[int, ...]) -> None:
        """Raise ValueError unless the mask (and box) fit a CT of spatial ``shape`` (z, y, x)."""
        if self.box is None:
            if self.mask.shape != shape:
                raise ValueError(
                    f"mask of segment {self.spec.label!r} has shape {self.mask.shape}, the CT has {shape}"
                )
            return
        if not is_index_box_in(self.box, shape):
            raise ValueError(f"box of segment {self.spec.label!r} is not a unit-step index box inside the CT {shape}")
        if self.mask.shape != box_shape(self.box):
            raise ValueError(
                f"mask of segment {self.spec.label!r} has shape {self.mask.shape}, its box {box_shape(self.box)}"
            )

    def _occupied_slices(self, n_slices: int) -> np.ndarray:
        """bool (n_slices,): the CT slices (axis 0) holding a voxel of this segment."""
        rows = np.asarray(self.mask).any(axis=(1, 2))
        if self.box is None:
            return rows
        occupied = np.zeros(n_slices, dtype=bool)
        occupied[self.box[0]] = rows
        return occupied

    def _paste_slab(self, out: np.ndarray, z0: int) -> None:
        """Write the mask into ``out``, the CT's slices [z0, z0 + len(out)) (z, y, x)."""
        z1 = z0 + out.shape[0]
        if self.box is None:
            out[...] = self.mask[z0:z1]
            return
        bz, by, bx = self.box
        first, stop = max(bz.start, z0), min(bz.stop, z1)
        if first < stop:
            out[first - z0:stop - z0, by, bx] = self.mask[first - bz.start:stop - bz.start]


def build_segmentation(
    *,
    source_datasets: Sequence[Dataset],
    ct: hd.Volume,
    segments: Sequence[SegmentMask],
    algorithm: AlgorithmInfo,
    series_number: int = 901,
    series_description: str = "Femurs and lytic lesions (AI)",
    manufacturer: str = "femur-lesion-seg",
    software_version: str = "0.1.0",
    device_serial_number: str = "0",
) -> hd.seg.Segmentation:
    """Build a BINARY DICOM-SEG of the given segments over the CT series they were computed on.

    Parameters
    ----------
    source_datasets:
        Header datasets of the CT series' instances (pixel data not needed), referenced by the SEG; patient
        and study identity are carried over from them. The SEG is a new series in the same study.
    ct:
        The CT volume the masks are on: its affine (index (z, y, x) -> LPS mm) places each frame.
    segments:
        Segments in the order they get numbers 1, 2, ...; masks boolean (z, y, x) of ``ct``'s shape, or of
        their box's shape (see :class:`SegmentMask`). At least one segment is required.
    algorithm:
        The model that produced the masks.

    Returns
    -------
    highdicom.seg.Segmentation
    """
    if not segments:
        raise ValueError("a segmentation needs at least one segment")
    if not source_datasets:
        raise ValueError("a segmentation needs the source CT datasets it refers to")
    shape = ct.spatial_shape
    for seg in segments:
        seg._check(tuple(shape))
    # Only the slab of slices holding a segment voxel goes to highdicom: the other frames would be
    # omitted as empty anyway, and the stack is the largest array of this step (4 segments of a
    # 512x512x600 CT: 600 MB). The slab's affine starts at its first slice, so every frame keeps its
    # position and its reference to the source slice.
    z0, z1 = _occupied_slab(segments, shape[0])
    stack = np.zeros((z1 - z0, *shape[1:], len(segments)), dtype=np.uint8)
    for i, seg in enumerate(segments):
        seg._paste_slab(stack[..., i], z0)
    descriptions = [seg.spec.describe(i, algorithm) for i, seg in enumerate(segments, start=1)]
    slab_sources = _slab_source_datasets(source_datasets, ct, z0, z1)
    if slab_sources is not None:
        # Each slab slice has its own source slice: highdicom copies the frames' positions from those
        # and references them one to one. The other slices are referenced as further sources, as they
        # would be otherwise. (Matching frames to sources by position instead costs highdicom 0.28 a
        # search over all sources per frame: 2 s of attribute reads for a 600-slice CT.)
        pixel_array: np.ndarray | hd.Volume = stack
        own = {id(ds) for ds in slab_sources}
        source_images = list(slab_sources)
        further = [ds for ds in source_datasets if id(ds) not in own]
    else:
        # The volume's slices are not the source slices one to one (gaps filled, spacing resampled):
        # highdicom places each frame by its position and finds the source slice it lies on.
        affine = np.array(ct.affine, dtype=float, copy=True)
        affine[:3, 3] += affine[:3, 0] * z0
        frame_of_reference = ct.frame_of_reference_uid or str(source_datasets[0].FrameOfReferenceUID)
        pixel_array = hd.Volume(
            stack,
            affine,
            coordinate_system="PATIENT",
            frame_of_reference_uid=frame_of_reference,
            channels={"SegmentNumber": list(range(1, len(segments) + 1))},
        )
        source_images = list(source_datasets)
        further = []
    # highdicom copies the patient and study identity from the first source dataset: a missing or
    # unconvertible value must not stop the run, and no value may reach the log.
    source_images[0] = identity_for_copy(source_images[0])
    with patient_values_hidden():
        return _Segmentation(
            source_images=source_images,
            further_source_images=further or None,
            pixel_array=pixel_array,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=series_number,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=manufacturer,
            manufacturer_model_name=algorithm.name,
            software_versions=software_version,
            device_serial_number=device_serial_number,
            series_description=series_description,
            omit_empty_frames=True,
        )


#: Largest distance (mm) between a source slice's ImagePositionPatient and the position the CT's affine
#: gives its slice for the two to count as the same plane (DS values carry ~16 significant characters).
_SAME_PLANE_MM = 1e-2


def _slab_source_datasets(
    source_datasets: Sequence[Dataset], ct: hd.Volume, z0: int, z1: int
) -> list[Dataset] | None:
    """The source datasets of slices ``z0 .. z1 - 1`` of ``ct``, in that order, or None.

    None unless there is one source dataset per CT slice, in slice order, each lying on its slice: the
    loader's ``LoadedSeries.source_datasets`` of a series stacked as it was acquired. A volume with filled
    gaps or resampled spacing, or datasets in another order, gets None.
    """
    if len(source_datasets) != ct.spatial_shape[0]:
        return None
    slab = list(source_datasets[z0:z1])
    try:
        positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in slab], dtype=np.float64)
        orientations = {tuple(float(v) for v in ds.ImageOrientationPatient) for ds in slab}
        if any((int(ds.Rows), int(ds.Columns)) != tuple(ct.spatial_shape[1:]) for ds in (slab[0], slab[-1])):
            return None
    except (AttributeError, TypeError, ValueError):
        return None
    if positions.shape != (len(slab), 3) or len(orientations) != 1:
        return None
    affine = np.asarray(ct.affine, dtype=np.float64)
    index = np.zeros((len(slab), 4))
    index[:, 0] = np.arange(z0, z1)
    index[:, 3] = 1.0
    expected = (index @ affine.T)[:, :3]
    if not np.all(np.linalg.norm(positions - expected, axis=1) <= _SAME_PLANE_MM):
        return None
    # The frames' orientation and pixel spacing are copied from the sources too: they must be the CT's.
    (orientation,) = orientations
    row, column = np.array(orientation[:3]), np.array(orientation[3:])
    spacing_y, spacing_x = ct.spacing[1], ct.spacing[2]
    if not (np.allclose(affine[:3, 2], row * spacing_x, atol=1e-4) and np.allclose(affine[:3, 1], column * spacing_y, atol=1e-4)):
        return None
    return slab


def _occupied_slab(segments: Sequence[SegmentMask], n_slices: int) -> tuple[int, int]:
    """First and one-past-last slice index (axis 0) holding a voxel of any segment; all slices if none."""
    occupied = np.zeros(n_slices, dtype=bool)
    for seg in segments:
        occupied |= seg._occupied_slices(n_slices)
    if not occupied.any():
        return 0, n_slices
    hits = np.flatnonzero(occupied)
    return int(hits[0]), int(hits[-1]) + 1


class _Segmentation(hd.seg.Segmentation):
    """highdicom's Segmentation, with the segment-overlap check of a binary stack done slab by slab.

    highdicom 0.28 decides SegmentsOverlap by summing the whole (z, y, x, segment) uint8 stack over its
    segments in one call, which numpy does in uint64: 8 bytes per voxel, 1.2 GB for a 512x512x600 CT,
    the peak of the whole application. The same decision taken on 16 slices at a time needs a few MB.
    Any other kind of pixel array goes through highdicom's own check unchanged.
    """

    @classmethod
    def _check_and_cast_pixel_array(cls, pixel_array, segment_numbers, segmentation_type, dtype):  # type: ignore[override]
        plain = pixel_array.array if isinstance(pixel_array, hd.Volume) else pixel_array
        if not (
            segmentation_type == hd.seg.SegmentationTypeValues.BINARY
            and plain.ndim == 4
            and plain.dtype == np.uint8
            and plain.shape[-1] > 1
            and np.array_equal(np.asarray(segment_numbers), np.arange(1, plain.shape[-1] + 1))
        ):
            return super()._check_and_cast_pixel_array(pixel_array, segment_numbers, segmentation_type, dtype)
        if plain.max(initial=0) > 1:
            raise ValueError("When passing a 4D stack of segments with an integer pixel type, the pixel array must be binary.")
        overlap = any(_slab_has_overlap(plain[z:z + 16]) for z in range(0, plain.shape[0], 16))
        return pixel_array, hd.seg.SegmentsOverlapValues.YES if overlap else hd.seg.SegmentsOverlapValues.NO


def _slab_has_overlap(slab: np.ndarray) -> bool:
    """Whether a voxel of a binary (z, y, x, segment) uint8 slab is in two segments or more.

    The segments are added one at a time (uint8, at most 255 of them): a reduction along the short last
    axis is several times slower.
    """
    total = slab[..., 0].copy()
    for i in range(1, slab.shape[-1]):
        total += slab[..., i]
    return bool(total.max(initial=0) > 1)


def read_segment_masks(seg: Dataset | Path, ct: hd.Volume) -> dict[str, np.ndarray]:
    """Read a SEG back as boolean masks on the grid of ``ct``, keyed by segment label.

    Frames are placed by their positions (highdicom's ``get_volume``) and then brought onto ``ct``'s grid
    by permutation, flips and padding only (no resampling); a SEG whose frames do not lie on that grid
    raises ``RuntimeError``.
    """
    if not isinstance(seg, hd.seg.Segmentation):
        seg = hd.seg.segread(seg)
    out: dict[str, np.ndarray] = {}
    for desc in seg.SegmentSequence:
        number = int(desc.SegmentNumber)
        vol = seg.get_volume(segment_numbers=[number], combine_segments=False)
        # get_volume covers only the frames present (empty ones were omitted): pad back onto the CT grid.
        arr = vol.array[..., 0] if vol.array.ndim == 4 else vol.array
        matched = hd.Volume(arr, vol.affine, "PATIENT").match_geometry(ct)
        out[str(desc.SegmentLabel)] = matched.array.astype(bool)
    return out


def write_dataset(dataset: Dataset, path: Path) -> Path:
    """Write a DICOM dataset to ``path`` atomically (temporary file in the same folder, then rename)."""
    with atomic_output_path(path) as tmp:
        dataset.save_as(tmp, enforce_file_format=True)
    return Path(path)
