"""Configuration of a synthetic study: presets and the choices a seed makes.

:class:`PhantomConfig` holds every choice that shapes a study. A field left at ``None`` is drawn
from the seed; a field given by the caller overrides the draw. All draws happen in a fixed order
whatever the overrides, so overriding one choice (say the storage) never changes the others.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pydicom.uid

logger = logging.getLogger(__name__)

Side = Literal["left", "right"]


@dataclass(frozen=True)
class PresetSpec:
    """Scanner set-up of a preset.

    Attributes
    ----------
    name
        Preset name.
    matrix
        Rows = columns of the axial images.
    pixel_spacing
        ``(min, max)`` pixel size, mm; the size is chosen to fit the body in the field of view.
    slice_spacings
        Candidate ``(spacing, thickness)`` pairs in mm.
    slice_count
        ``(min, max)`` number of axial slices aimed for (for knees-in-view studies).
    superior_margin
        ``(min, max)`` extent of the scan above the femoral head centres, mm.
    inferior_margin
        ``(min, max)`` extent below the knee joint line when the knees are in view, mm.
    noise_sd
        ``(min, max)`` noise standard deviation of the thin series, HU.
    thick_thickness
        Candidate thicknesses of the thick soft-tissue series, mm.
    """

    name: str
    matrix: int
    pixel_spacing: tuple[float, float]
    slice_spacings: tuple[tuple[float, float], ...]
    slice_count: tuple[int, int]
    superior_margin: tuple[float, float]
    inferior_margin: tuple[float, float]
    noise_sd: tuple[float, float]
    thick_thickness: tuple[float, ...]


PRESETS: dict[str, PresetSpec] = {
    "small": PresetSpec(
        name="small",
        matrix=160,
        pixel_spacing=(2.4, 3.0),
        slice_spacings=((2.5, 2.5), (3.0, 3.0), (2.5, 3.0)),
        slice_count=(120, 230),
        superior_margin=(35.0, 60.0),
        inferior_margin=(8.0, 30.0),
        noise_sd=(8.0, 25.0),
        thick_thickness=(5.0, 6.0),
    ),
    "standard": PresetSpec(
        name="standard",
        matrix=512,
        pixel_spacing=(0.6, 1.0),
        slice_spacings=((0.8, 1.0), (1.0, 1.0), (1.0, 1.25), (1.25, 1.25), (1.5, 1.5), (1.2, 1.5)),
        slice_count=(400, 700),
        superior_margin=(50.0, 140.0),
        inferior_margin=(25.0, 80.0),
        noise_sd=(10.0, 40.0),
        thick_thickness=(3.0, 4.0, 5.0),
    ),
}

#: Transfer syntaxes a series can be written with (name -> UID); which of them can actually be
#: encoded here is reported by :func:`synthetic_ct.transfer_syntax.available_transfer_syntaxes`.
TRANSFER_SYNTAX_NAMES: dict[str, str] = {
    "explicit": pydicom.uid.ExplicitVRLittleEndian,
    "implicit": pydicom.uid.ImplicitVRLittleEndian,
    "deflated": pydicom.uid.DeflatedExplicitVRLittleEndian,
    "rle": pydicom.uid.RLELossless,
    "jpeg-ls": pydicom.uid.JPEGLSLossless,
    "jpeg2000": pydicom.uid.JPEG2000Lossless,
    "jpeg-lossless": pydicom.uid.JPEGLosslessSV1,
}


@dataclass(frozen=True)
class PhantomConfig:
    """Every choice that shapes a synthetic study. ``None`` means "drawn from the seed".

    Attributes
    ----------
    patient_position
        ``"HFS"`` or ``"FFS"`` (supine, head or feet first).
    slice_order
        ``"ascending"``: instance numbers increase toward the head; ``"descending"``: toward the feet.
    storage
        ``"signed"`` (int16, RescaleIntercept 0) or ``"unsigned"`` (uint16, intercept -1024).
    extended_hu
        16 bits stored, so metal keeps its HU above 3071; otherwise 12 bits and HU is clipped at
        3071 like on most scanners.
    femurs_in_view
        Which femurs the field of view shows: both, one (a field of view centred on one hip and
        thigh), or none (an abdominal field of view).
    knees_in_view
        Whether the scan reaches below the knee joint (tibiae, fibulae, patellae). When False the
        scan stops in the distal thigh and the femurs are cut there.
    implant
        ``"left"`` / ``"right"``: an intramedullary nail with a cephalic screw in that femur.
    lesions
        True: the usual draw (about a third of the femurs without a lesion); False or 0: none;
        an int: exactly that many lytic lesions over the femurs in view.
    cysts
        Fluid cysts in the femoral heads (labelled as cysts, not tumour).
    noise_sd
        Noise standard deviation of the thin series in soft tissue, HU.
    pixel_spacing, slice_spacing, slice_thickness
        mm. A thickness larger than the spacing makes overlapping slices.
    matrix
        Rows and columns of the axial images.
    kvp
        Tube voltage (80-140); shifts bone, iodine and fat HU.
    joint_gap
        Mean hip joint gap of both hips, mm (1.5-4 when drawn).
    patient_rotation
        Roll of the patient on the table, degrees (positive: left side up).
    contrast
        Intravenous contrast.
    circular_fov
        Pixels outside the reconstruction circle are padding (as on many scanners).
    thick_slice_thickness
        Thickness and spacing of the thick soft-tissue series, mm.
    transfer_syntax
        Default transfer syntax of the written series (UID or a key of
        :data:`TRANSFER_SYNTAX_NAMES`).
    sex
        ``"F"`` or ``"M"``; shapes pelvis, bones and fat.
    """

    patient_position: Literal["HFS", "FFS"] | None = None
    slice_order: Literal["ascending", "descending"] | None = None
    storage: Literal["signed", "unsigned"] | None = None
    extended_hu: bool | None = None
    femurs_in_view: tuple[Side, ...] = ("left", "right")
    knees_in_view: bool | None = None
    implant: Side | None = None
    lesions: bool | int = True
    cysts: bool | None = None
    noise_sd: float | None = None
    pixel_spacing: float | None = None
    slice_spacing: float | None = None
    slice_thickness: float | None = None
    matrix: int | None = None
    kvp: float | None = None
    joint_gap: float | None = None
    patient_rotation: float | None = None
    contrast: bool | None = None
    circular_fov: bool | None = None
    thick_slice_thickness: float | None = None
    transfer_syntax: str = pydicom.uid.ExplicitVRLittleEndian
    sex: Literal["F", "M"] | None = None

    def replace(self, **changes: Any) -> "PhantomConfig":
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)

    def __post_init__(self) -> None:
        _validate(self)


def _validate(c: PhantomConfig) -> None:
    def bad(msg: str) -> None:
        raise ValueError(msg)

    if c.patient_position not in (None, "HFS", "FFS"):
        bad(f"patient_position must be 'HFS' or 'FFS', got {c.patient_position!r}")
    if c.slice_order not in (None, "ascending", "descending"):
        bad(f"slice_order must be 'ascending' or 'descending', got {c.slice_order!r}")
    if c.storage not in (None, "signed", "unsigned"):
        bad(f"storage must be 'signed' or 'unsigned', got {c.storage!r}")
    fiv = tuple(c.femurs_in_view)
    if any(s not in ("left", "right") for s in fiv) or len(set(fiv)) != len(fiv):
        bad(f"femurs_in_view must hold 'left' and/or 'right' once each, got {c.femurs_in_view!r}")
    object.__setattr__(c, "femurs_in_view", tuple(s for s in ("left", "right") if s in fiv))
    if c.implant not in (None, "left", "right"):
        bad(f"implant must be None, 'left' or 'right', got {c.implant!r}")
    if c.implant is not None and c.implant not in fiv:
        bad(f"implant in the {c.implant} femur needs that femur in view")
    if isinstance(c.lesions, bool):
        pass
    elif isinstance(c.lesions, (int, np.integer)):
        if c.lesions < 0 or c.lesions > 12:
            bad(f"lesions must be a bool or a count from 0 to 12, got {c.lesions}")
    else:
        bad(f"lesions must be a bool or a count, got {c.lesions!r}")
    for name, lo, hi in (
        ("noise_sd", 0.0, 200.0),
        ("pixel_spacing", 0.2, 5.0),
        ("slice_spacing", 0.3, 10.0),
        ("slice_thickness", 0.3, 10.0),
        ("kvp", 70.0, 150.0),
        ("joint_gap", 0.5, 8.0),
        ("patient_rotation", -30.0, 30.0),
        ("thick_slice_thickness", 1.0, 10.0),
    ):
        v = getattr(c, name)
        if v is not None and not (lo <= float(v) <= hi):
            bad(f"{name} must lie in [{lo}, {hi}], got {v}")
    if c.matrix is not None and not (32 <= int(c.matrix) <= 1024):
        bad(f"matrix must lie in [32, 1024], got {c.matrix}")
    if c.sex not in (None, "F", "M"):
        bad(f"sex must be 'F' or 'M', got {c.sex!r}")
    ts = c.transfer_syntax
    if ts not in TRANSFER_SYNTAX_NAMES and ts not in TRANSFER_SYNTAX_NAMES.values():
        bad(f"unknown transfer syntax {ts!r}; use one of {sorted(TRANSFER_SYNTAX_NAMES)}")


def resolve_config(
    rng: np.random.Generator, preset: PresetSpec, config: PhantomConfig
) -> tuple[PhantomConfig, dict[str, float]]:
    """Fill every ``None`` of ``config`` with a draw from ``rng``.

    Every quantity is drawn, in a fixed order, before the caller's values are applied, so that
    a given seed makes the same choices whatever is overridden.

    Returns
    -------
    config
        The resolved configuration; the spacings and the pixel size may still be ``None``: they
        depend on the patient's size and are fixed when the field of view is planned.
    uniforms
        Uniform [0, 1) numbers reserved for those later choices (``"slice"``, ``"pixel"``).
    """
    u = rng.uniform
    drawn: dict[str, Any] = {
        "patient_position": "HFS" if u() < 0.7 else "FFS",
        "slice_order": "ascending" if u() < 0.5 else "descending",
        "storage": "signed" if u() < 0.5 else "unsigned",
        "extended_hu": bool(u() < 0.3),
        "knees_in_view": True,
        "cysts": bool(u() < 0.15),
        "noise_sd": float(np.round(u(*preset.noise_sd), 1)),
        "matrix": preset.matrix,
        "kvp": float(rng.choice([80.0, 100.0, 120.0, 140.0], p=[0.1, 0.25, 0.5, 0.15])),
        "joint_gap": float(np.round(u(2.0, 4.0) if u() < 0.7 else u(1.5, 2.0), 2)),
        "patient_rotation": float(np.round(np.clip(rng.normal(0.0, 3.0), -8.0, 8.0), 1)),
        "contrast": bool(u() < 0.35),
        "circular_fov": bool(u() < 0.4),
        "thick_slice_thickness": float(rng.choice(preset.thick_thickness)),
    }
    uniforms = {"slice": float(u()), "pixel": float(u())}
    values = {}
    for f in dataclasses.fields(PhantomConfig):
        given = getattr(config, f.name)
        values[f.name] = drawn[f.name] if (given is None and f.name in drawn) else given
    return PhantomConfig(**values), uniforms


def transfer_syntax_uid(name_or_uid: str) -> str:
    """UID of a transfer syntax given by UID or by a key of :data:`TRANSFER_SYNTAX_NAMES`."""
    if name_or_uid in TRANSFER_SYNTAX_NAMES:
        return TRANSFER_SYNTAX_NAMES[name_or_uid]
    if name_or_uid in TRANSFER_SYNTAX_NAMES.values():
        return name_or_uid
    raise ValueError(f"unknown transfer syntax {name_or_uid!r}; use one of {sorted(TRANSFER_SYNTAX_NAMES)}")
