"""Generation of a synthetic lower-body CT study: :func:`generate_phantom`.

The patient is drawn from the seed (anatomy, habitus, pose, lesions), the scan is planned around
it, the ideal densities and the labels are rendered onto the scanner's grid at the LPS position
of every voxel, and the scanner's blur, noise and artefacts are applied. The result holds the
CT (what the DICOM files will contain, to the HU), the label map, the masks of both femurs and a
description of everything generated.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import highdicom as hd
import numpy as np

from . import sdf as S
from .anatomy import Patient, body_rotation, draw_patient, place_femurs
from .body import BodyModel, BodyParams, TableParams
from .config import PRESETS, PhantomConfig, resolve_config, transfer_syntax_uid
from .femur import SIDES, FemurModel
from .fov import plan_scan
from .frames import Frame
from .grid import ScannerGrid
from .identity import PatientIdentity, derived_uid, draw_identity
from .knee import knee_bones
from .lesions import LesionModel, NailModel, draw_cyst, draw_lesion, draw_nail
from .noise import SmoothNoise
from .parts import FAR, Part, ellipsoid_part, evaluate_parts, parts_bounds
from .pelvis import HipJoint, pelvis_frame, pelvis_parts
from .render import Canvas, paint, paint_bone
from .scanner import (
    Kernel,
    Localizer,
    circle_mask,
    Vendor,
    draw_bone_kernel,
    draw_vendor,
    draw_soft_kernel,
    localizer,
    metal_streaks,
    noise_profile,
    quantise,
    reconstruct,
    slice_profile_blur,
    thick_series,
)
from .tissues import Tissue, TissueHU, apply_kvp, draw_tissue_hu, kvp_factor_bone, kvp_factor_fat

logger = logging.getLogger(__name__)

_F32 = np.float32

#: Label values of the ground truth (docs/CONVENTIONS.md).
LABELS = {0: "background", 1: "left femur", 2: "right femur", 3: "lytic lesion", 4: "cyst"}
FEMUR_LABEL = {"left": 1, "right": 2}
LESION_LABEL = 3
CYST_LABEL = 4

#: A lytic lesion whose mean density differs from the bone around it by less than this (HU,
#: ideal densities) is flagged as subtle.
SUBTLE_CONTRAST_HU = 60.0

#: Version of the generator's output; bump when the same seed would give a different study.
GENERATOR_VERSION = "1.0"

ProgressFn = Callable[[str, float], None]


@dataclass
class SyntheticPhantom:
    """A generated study, in memory.

    Attributes
    ----------
    seed, preset
        What it was generated from.
    config
        The resolved :class:`~synthetic_ct.config.PhantomConfig` (no ``None`` left but the
        spacings, which are in :attr:`grid`).
    ct
        The primary (thin, bone kernel) axial series: float32 HU, array (slice, row, column),
        affine to LPS mm. Values are integers within the stored range, exactly what the DICOM
        files decode to.
    labels
        uint8 label map in the same geometry (0 background, 1 left femur, 2 right femur,
        3 lytic lesion, 4 cyst).
    tissue
        uint8 :class:`~synthetic_ct.tissues.Tissue` code of every voxel (what fills its centre),
        same geometry; for tests and training (cortex, marrow, cancellous bone, ...).
    thick_ct
        Thick soft-tissue axial series from the same patient, float32 HU.
    localizer
        Frontal localizer (projection) of the scanned range.
    truth
        Description of everything generated (what ``truth.json`` holds), without identity.
    identity
        Invented patient identity for the DICOM headers.
    grid, thick_grid
        Geometry of the two axial series.
    uids
        StudyInstanceUID (``"study"``) and FrameOfReferenceUID (``"frame_of_reference"``),
        derived from the seed and configuration (the same study always gets the same UIDs).
    kernels
        Reconstruction kernels of the ``"thin"`` and ``"thick"`` series.
    vendor
        Scanner vendor naming used in the DICOM headers.
    """

    seed: int
    preset: str
    config: PhantomConfig
    ct: hd.Volume
    labels: hd.Volume
    tissue: np.ndarray
    thick_ct: hd.Volume
    localizer: Localizer
    truth: dict[str, Any]
    identity: PatientIdentity
    grid: ScannerGrid
    thick_grid: ScannerGrid
    uids: dict[str, str]
    kernels: dict[str, Kernel]
    vendor: Vendor
    _femur_boxes: dict[str, tuple[tuple[slice, slice, slice], np.ndarray]] = field(repr=False, default_factory=dict)

    def femur_mask(self, side: Literal["left", "right"]) -> np.ndarray:
        """Full extent of one femur: bool (slice, row, column) in the CT's geometry.

        The mask holds every voxel whose centre lies inside the femur's outer surface,
        *including* its lesions, cysts and any implant inside it: what a femur splitter should
        cut out. All False when that femur is not in the field of view.
        """
        if side not in SIDES:
            raise ValueError(f"side must be 'left' or 'right', got {side!r}")
        out = np.zeros(self.grid.shape, dtype=bool)
        if side in self._femur_boxes:
            box, m = self._femur_boxes[side]
            out[box] = m
        return out

    @property
    def femurs_in_view(self) -> tuple[str, ...]:
        """Sides whose femur has at least one voxel in the CT."""
        return tuple(s for s in SIDES if s in self._femur_boxes and self._femur_boxes[s][1].any())


# ---------------------------------------------------------------------- generation


def generate_phantom(
    seed: int,
    preset: str = "small",
    *,
    config: PhantomConfig | None = None,
    progress: ProgressFn | None = None,
    **overrides: Any,
) -> SyntheticPhantom:
    """Generate a synthetic lower-body CT study.

    Parameters
    ----------
    seed
        Non-negative integer; the same seed, preset and overrides always give the same study.
    preset
        ``"small"`` (fast: 160 x 160 pixels of 2.4-3 mm, 3 mm slices) or ``"standard"``
        (512 x 512, 0.6-1 mm pixels, 400-700 slices); see :data:`synthetic_ct.config.PRESETS`.
    config
        Base configuration; ``overrides`` are applied on top of it.
    progress
        Called with ``(stage, fraction done)`` during generation.
    **overrides
        Any field of :class:`~synthetic_ct.config.PhantomConfig`, e.g. ``patient_position="FFS"``,
        ``femurs_in_view=("left",)``, ``implant="right"``, ``lesions=2``, ``noise_sd=20``.

    Returns
    -------
    SyntheticPhantom
    """
    t0 = time.perf_counter()
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    spec = PRESETS[preset]
    base = config or PhantomConfig()
    unknown = set(overrides) - {f.name for f in dataclasses.fields(PhantomConfig)}
    if unknown:
        raise ValueError(f"unknown override(s) {sorted(unknown)}; see PhantomConfig for the accepted names")
    cfg = base.replace(**overrides) if overrides else base
    report = progress or (lambda stage, frac: None)

    streams = np.random.SeedSequence(int(seed)).spawn(9)
    rng_cfg, rng_anat, rng_fov, rng_les, rng_tex, rng_noise, rng_id, rng_art, rng_body = (np.random.default_rng(s) for s in streams)
    cfg, uniforms = resolve_config(rng_cfg, spec, cfg)

    # ------------------------------------------------------------ the patient
    patient = draw_patient(rng_anat, sex=cfg.sex, joint_gap=float(cfg.joint_gap))
    elderly = patient.age >= 65
    u = rng_anat.uniform
    origin = np.array([u(-25, 25), u(-20, 20), u(-250, 150)])
    rot = body_rotation(float(cfg.patient_rotation))
    femurs = place_femurs(patient, origin=origin, rot=rot)
    pframe = pelvis_frame(origin, rot)
    pparts, marks = pelvis_parts(patient.hips, patient.pelvis)
    tissue_hu = apply_kvp(
        draw_tissue_hu(rng_anat, contrast=bool(cfg.contrast), oral_contrast=bool(u() < 0.3), elderly=elderly),
        float(cfg.kvp),
    )
    bmi = patient.bmi
    female = patient.sex == "F"
    body_params = BodyParams(
        bmi=bmi,
        fat=float(np.clip(3.0 + (bmi - 19.0) * 1.7, 3.0, 55.0) * (1.2 if female else 1.0)),
        female=female,
        trunk_half_width=float(abs(patient.hips["left"].head_centre[0] - patient.hips["right"].head_centre[0]) / 2 + u(72, 92)),
        trunk_front=u(80, 98),
        trunk_back=u(86, 110),
        belly=float(np.clip((bmi - 21.0) * u(3.0, 6.0), 0.0, 80.0)),
        thigh_radius=u(56, 72) * (0.95 if female else 1.0) * (0.9 if elderly else 1.0),
        crotch_drop=u(55, 80),
        table_compression=u(6, 22),
        visceral_fat=float(np.clip((bmi - 18.0) / 18.0 * (1.2 if not female else 0.9), 0.05, 1.0)),
        bladder_fill=u(0.0, 1.0),
        rectal_gas=u(0.0, 1.0),
    )
    pad = u(15, 50) if u() < 0.5 else 0.0
    table_thickness = u(8, 14)
    table_half_width = u(210, 260)
    table_curv = u(1500, 3500)
    body = BodyModel(
        body_params, pframe, femurs, marks, tissue_hu, rng_body,
        crest_height=patient.pelvis.crest_height, contrast=bool(cfg.contrast),
    )
    hip_z = max(float(f.head_centre[2]) for f in femurs.values())
    post = body.extent(np.linspace(hip_z - 60.0, hip_z + 40.0, 5))[3]
    table = TableParams(
        top=post - body_params.table_compression,
        pad=pad,
        thickness=table_thickness,
        half_width=table_half_width,
        curvature=table_curv,
        centre_x=float(origin[0] + u(-15, 15)),
    )
    body.table = table
    identity = draw_identity(rng_id, sex=patient.sex, age=patient.age, height_mm=patient.height, bmi=bmi)
    report("anatomy", 0.05)

    # ------------------------------------------------------------ the scan
    plan = plan_scan(rng=rng_fov, preset=spec, config=cfg, uniforms=uniforms, femurs=femurs, body=body)
    grid = plan.grid

    # ------------------------------------------------------------ lesions, cysts, implant
    lesions, cysts, nail = _draw_pathology(rng_les, cfg, femurs, grid, tissue_hu)
    report("plan", 0.08)

    # ------------------------------------------------------------ render
    vendor = draw_vendor(rng_noise)
    bone_kernel = draw_bone_kernel(rng_noise, vendor)
    soft_kernel = draw_soft_kernel(rng_noise, vendor)
    rendered = _render(
        grid=grid,
        patient=patient,
        femurs=femurs,
        in_view=cfg.femurs_in_view,
        pframe=pframe,
        pparts=pparts,
        marks=marks,
        body=body,
        lesions=lesions + cysts,
        nail=nail,
        kvp=float(cfg.kvp),
        rng_tex=rng_tex,
        patient_cartilage_hu=tissue_hu.cartilage,
        progress=lambda f: report("render", 0.08 + 0.6 * f),
    )
    hu, tissue, labels, femur_boxes, lesion_voxels = rendered

    # Where each lesion lies and how big it is, measured on the grid.
    lesion_stats = _lesion_statistics(lesions + cysts, lesion_voxels, grid)

    # ------------------------------------------------------------ image formation
    kv = float(cfg.kvp)
    # Padding value outside the reconstruction circle, as vendors write it (unsigned storage
    # cannot go below -1024). Drawn first so that the implant option does not change it.
    pad_choice = float(rng_art.choice([-1024.0, -2048.0, -3024.0]))
    if nail is not None:
        metal_streaks(hu, tissue, grid, rng_art, strength=float(rng_art.uniform(0.6, 1.3)))
    report("artefacts", 0.7)
    hi = 31743.0 if cfg.extended_hu else 3071.0
    thick_sd = float(cfg.noise_sd) * float(np.sqrt(grid.slice_thickness / float(cfg.thick_slice_thickness))) * 0.7
    thick, thick_grid = thick_series(
        hu, grid, thickness=float(cfg.thick_slice_thickness), rng=rng_noise, kernel=soft_kernel, noise_sd=thick_sd
    )
    scout = localizer(hu, grid, rng_noise)
    report("derived series", 0.75)
    slice_profile_blur(hu, thickness=grid.slice_thickness, spacing=grid.slice_spacing)
    sd = noise_profile(tissue, base_sd=float(cfg.noise_sd), pixel_area=grid.pixel_spacing[0] * grid.pixel_spacing[1])
    reconstruct(hu, rng=rng_noise, pixel_spacing=grid.pixel_spacing[0], kernel=bone_kernel, noise_sd=sd)
    report("reconstruction", 0.92)
    pad_value = None
    quantise(hu, lo=-1024.0, hi=hi)
    quantise(thick, lo=-1024.0, hi=hi)
    if cfg.circular_fov:
        pad_value = -1024.0 if cfg.storage == "unsigned" else pad_choice
        outside = ~circle_mask(grid)
        hu[:, outside] = pad_value
        thick[:, outside] = pad_value

    # ------------------------------------------------------------ volumes and truth
    frame_uid = derived_uid(seed, preset, repr(cfg), GENERATOR_VERSION, "frame-of-reference")
    uids = {
        "study": derived_uid(seed, preset, repr(cfg), GENERATOR_VERSION, "study"),
        "frame_of_reference": frame_uid,
    }
    ct = hd.Volume(array=hu, affine=grid.affine, coordinate_system="PATIENT", frame_of_reference_uid=frame_uid)
    label_vol = hd.Volume(array=labels, affine=grid.affine, coordinate_system="PATIENT", frame_of_reference_uid=frame_uid)
    thick_vol = hd.Volume(array=thick, affine=thick_grid.affine, coordinate_system="PATIENT", frame_of_reference_uid=frame_uid)
    for item, vox in zip(lesion_stats, [lesion_voxels.get(les.id) for les in lesions + cysts]):
        if vox is not None and vox.size:
            item["mean_hu"] = round(float(hu.ravel()[vox].mean()), 1)

    phantom = SyntheticPhantom(
        seed=int(seed),
        preset=preset,
        config=cfg,
        ct=ct,
        labels=label_vol,
        tissue=tissue,
        thick_ct=thick_vol,
        localizer=scout,
        truth={},
        identity=identity,
        grid=grid,
        thick_grid=thick_grid,
        uids=uids,
        kernels={"thin": bone_kernel, "thick": soft_kernel},
        vendor=vendor,
        _femur_boxes=femur_boxes,
    )
    phantom.truth = _truth(
        phantom,
        patient=patient,
        femurs=femurs,
        hips=patient.hips,
        lesions=lesions,
        cysts=cysts,
        lesion_stats=lesion_stats,
        nail=nail,
        truncated=plan.truncated,
        pad_value=pad_value,
        kvp=kv,
    )
    report("done", 1.0)
    logger.info(
        "generated seed %d preset %s: %s voxels, %d lesion(s), %d cyst(s) in %.1f s",
        seed, preset, "x".join(map(str, grid.shape)), len(phantom.truth["lesions"]), len(phantom.truth["cysts"]),
        time.perf_counter() - t0,
    )
    return phantom


# ---------------------------------------------------------------------- pathology


def _draw_pathology(
    rng: np.random.Generator,
    cfg: PhantomConfig,
    femurs: dict[str, FemurModel],
    grid: ScannerGrid,
    tissue_hu: TissueHU,
) -> tuple[list[LesionModel], list[LesionModel], NailModel | None]:
    in_view = list(cfg.femurs_in_view)
    u = rng.uniform
    # Draw the per-femur counts first, always, to keep the stream independent of the options.
    counts_drawn = {}
    for side in SIDES:
        r = u()
        counts_drawn[side] = 0 if r < 1 / 3 else int(rng.choice([1, 2, 3], p=[0.55, 0.3, 0.15]))
    n_cysts_drawn = int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))
    if isinstance(cfg.lesions, bool):
        counts = {s: (counts_drawn[s] if (cfg.lesions and s in in_view) else 0) for s in SIDES}
    else:
        n = int(cfg.lesions)
        if n > 0 and not in_view:
            raise ValueError("lesions need a femur in view; femurs_in_view is empty")
        counts = {s: 0 for s in SIDES}
        for _ in range(n):
            counts[in_view[int(rng.integers(0, len(in_view)))]] += 1
    zs = grid.axis_coordinates()[0]
    z_lo, z_hi = float(zs.min()), float(zs.max())

    def in_range(f: FemurModel, centre: np.ndarray, margin: float) -> bool:
        w = f.frame.to_world(centre)
        return z_lo + margin <= w[2] <= z_hi - margin

    lesions: list[LesionModel] = []
    cysts: list[LesionModel] = []
    taken: list[tuple[str, np.ndarray, float]] = []

    def free(side: str, c: np.ndarray, r: float) -> bool:
        return all(s != side or np.linalg.norm(c - c2) > (r + r2) * 1.15 + 4.0 for s, c2, r2 in taken)

    next_id = 1
    for side in SIDES:
        for _ in range(counts[side]):
            f = femurs[side]
            for _attempt in range(40):
                les = draw_lesion(rng, f, lesion_id=next_id)
                rmax = max(float(np.max(r)) for _, r, _ in les.lobes) + les.roughness * 2
                if in_range(f, les.centre_local, 3.0) and free(side, les.centre_local, rmax):
                    break
            else:
                continue
            les.build(f, rng)
            taken.append((side, les.centre_local, rmax))
            lesions.append(les)
            next_id += 1
    if cfg.cysts and in_view:
        for _ in range(n_cysts_drawn):
            side = in_view[int(rng.integers(0, len(in_view)))]
            f = femurs[side]
            for _attempt in range(40):
                cy = draw_cyst(rng, f, lesion_id=next_id)
                rmax = float(np.max(cy.lobes[0][1])) + 1.5
                if in_range(f, cy.centre_local, 2.0) and free(side, cy.centre_local, rmax):
                    break
            else:
                continue
            cy.build(f, rng)
            taken.append((side, cy.centre_local, rmax))
            cysts.append(cy)
            next_id += 1
    nail = None
    if cfg.implant is not None:
        nail = draw_nail(rng, femurs[cfg.implant], hu=tissue_hu.metal)
    return lesions, cysts, nail


# ---------------------------------------------------------------------- rendering


def _render(
    *,
    grid: ScannerGrid,
    patient: Patient,
    femurs: dict[str, FemurModel],
    in_view: tuple[str, ...],
    pframe: Frame,
    pparts: list[Part],
    marks: dict[str, np.ndarray],
    body: BodyModel,
    lesions: list[LesionModel],
    nail: NailModel | None,
    kvp: float,
    rng_tex: np.random.Generator,
    progress: Callable[[float], None],
    patient_cartilage_hu: float,
):
    nz, ny, nx = grid.shape
    cartilage_hu = float(patient_cartilage_hu)
    hu = np.empty(grid.shape, dtype=_F32)
    tissue = np.empty(grid.shape, dtype=np.uint8)
    labels = np.empty(grid.shape, dtype=np.uint8)
    ps = grid.pixel_spacing[0]
    width = float((ps * ps * grid.slice_spacing) ** (1.0 / 3.0))
    fb, ff = kvp_factor_bone(kvp), kvp_factor_fat(kvp)
    pp = patient.pelvis

    # Static per-structure data: bounds, textures.
    p_lo, p_hi = parts_bounds(pparts, pframe, 4.0)
    pelvis_tex = SmoothNoise(rng_tex, p_lo, p_hi, (3.0, 3.0, 3.0))
    discs = _disc_parts(marks)
    femur_info = {}
    for side in SIDES:
        f = femurs[side]
        lo, hi = f.bounds(pad=3.0)
        tex = SmoothNoise(rng_tex, lo, hi, (2.2, 2.2, 2.2))
        patches = SmoothNoise(rng_tex, lo, hi, (14.0, 14.0, 30.0))
        kb = knee_bones(
            scale=float(f.geometry["scale"]),
            condyle_half_width=f.params.condyle_half_width,
            joint_gap=patient.knee_gap[side],
            patella_height=patient.patella_height[side],
        )
        klo, khi = parts_bounds([p for v in kb.values() for p in v], f.frame, 4.0)
        ktex = SmoothNoise(rng_tex, klo, khi, (3.0, 3.0, 3.0))
        femur_info[side] = (lo, hi, tex, kb, ktex, patches)
    joints = _joint_space_parts(patient, femurs)
    les_tex = {les.id: SmoothNoise(rng_tex, *les.bounds_world(femurs[les.side].frame), (2.5, 2.5, 2.5)) for les in lesions}

    femur_boxes: dict[str, tuple[tuple[slice, slice, slice], np.ndarray]] = {}
    for side in SIDES:
        lo, hi = femur_info[side][:2]
        box = grid.index_box(lo, hi)
        if box is not None:
            femur_boxes[side] = (box, np.zeros(tuple(s.stop - s.start for s in box), dtype=bool))
    lesion_voxels: dict[int, list[np.ndarray]] = {les.id: [] for les in lesions}
    for les in lesions:
        les.cortex_voxels = les.surface_voxels = les.lesion_hu_count = les.replaced_hu_count = 0
        les.lesion_hu_sum = les.replaced_hu_sum = 0.0

    chunk = max(1, int(6_000_000 // (ny * nx)))
    for k0 in range(0, nz, chunk):
        k1 = min(nz, k0 + chunk)
        index = (slice(k0, k1), slice(0, ny), slice(0, nx))
        canvas = Canvas(
            hu=hu[index], tissue=tissue[index], labels=labels[index], index=index, width=width,
        )
        canvas.hu.fill(-1000.0)
        canvas.tissue.fill(Tissue.AIR)
        canvas.labels.fill(0)
        body.paint(grid, canvas)

        # Joint spaces (cartilage, fluid, menisci) first: the bones painted next leave only
        # the gaps between them, which therefore look like soft tissue, as on real CT.
        for frame, parts in joints:
            box = grid.index_box(*parts_bounds(parts, frame, 3.0), within=index)
            if box is None:
                continue
            block = grid.block(box)
            d = evaluate_parts(parts, frame, grid, block, margin=3.0)
            if (d < width).any():
                paint(canvas, box, d, cartilage_hu, Tissue.CARTILAGE)

        # Intervertebral discs, then the pelvis and spine.
        box = grid.index_box(*parts_bounds(discs, pframe, 3.0), within=index) if discs else None
        if box is not None:
            block = grid.block(box)
            d = evaluate_parts(discs, pframe, grid, block, margin=3.0)
            paint(canvas, box, d, pp.disc_hu, Tissue.DISC)
        box = grid.index_box(p_lo, p_hi, within=index)
        if box is not None:
            block = grid.block(box)
            d = evaluate_parts(pparts, pframe, grid, block, margin=pp.cortex + width + 3.0)
            if (d < width).any():
                tex = pelvis_tex.sample(block)
                inner = (pp.cancellous_hu * (1.0 + 0.3 * tex)) * fb
                paint_bone(
                    canvas, box, d,
                    cortex_thickness=pp.cortex, cortex_hu=pp.cortex_hu * fb, inner_hu=inner,
                    cortex_tissue=Tissue.BONE_CORTEX, inner_tissue=Tissue.BONE_CANCELLOUS,
                )

        for side in SIDES:
            f = femurs[side]
            lo, hi, ftex, kb, ktex, fpatch = femur_info[side]
            # Knee bones (tibia, fibula, patella) in the femur's frame.
            for name, parts in kb.items():
                klo, khi = parts_bounds(parts, f.frame, 4.0)
                box = grid.index_box(klo, khi, within=index)
                if box is None:
                    continue
                block = grid.block(box)
                local = f.frame.to_local(block.x, block.y, block.z)
                d = evaluate_parts(parts, f.frame, grid, block, margin=6.0, local=local)
                if not (d < width).any():
                    continue
                tex = ktex.sample(block)
                c = np.broadcast_to(local[2], block.shape)
                shaft = S.smoothstep(c, -60.0, -120.0) if name == "tibia" else _F32(0.0)
                t = _F32(1.2) + _F32(2.8) * shaft
                canc = f.params.cancellous_hu * (1.0 + 0.3 * tex) * fb
                inner = canc + (f.params.marrow_hu * ff - canc) * shaft
                paint_bone(
                    canvas, box, d, cortex_thickness=t, cortex_hu=f.params.cortex_hu * 0.85 * fb, inner_hu=inner,
                    cortex_tissue=Tissue.BONE_CORTEX, inner_tissue=Tissue.BONE_CANCELLOUS,
                )

            box = grid.index_box(lo, hi, within=index)
            if box is None:
                continue
            block = grid.block(box)
            local = f.frame.to_local(block.x, block.y, block.z)
            tmax = f.params.cortex_diaphysis + 3.0
            d = f.sdf(grid, block, margin=tmax + width + 2.0, local=local)
            if not (d < width).any():
                continue
            a, b, c = (np.broadcast_to(v, block.shape) for v in local)
            t = f.cortex_thickness(a, b, c)
            tex = ftex.sample(block)
            inner = f.inner_hu(a, b, c, tex, fpatch.sample(block))
            inner = np.where(inner > 0, inner * _F32(fb), inner * _F32(ff))
            cortex_hu = _F32(f.params.cortex_hu * fb) * (_F32(1.0) + _F32(0.04) * tex)
            # A femur that reaches into the field of view is labelled even if the plan meant to
            # leave it out: the labels describe what the image shows.
            code = FEMUR_LABEL[side]
            replace = []
            mine = [les for les in lesions if les.side == side]
            les_sdfs = []
            for les in mine:
                llo, lhi = les.bounds_world(f.frame)
                lbox = grid.index_box(llo, lhi, within=box)
                if lbox is None:
                    les_sdfs.append(None)
                    continue
                lblock = grid.block(lbox)
                sub = tuple(slice(q.start - o.start, q.stop - o.start) for q, o in zip(lbox, box))
                lsdf = np.full(block.shape, FAR, dtype=_F32)
                lsdf[sub] = les.sdf(f.frame, grid, lblock, tuple(np.broadcast_to(v, block.shape)[sub] for v in local))
                lhu = np.full(block.shape, les.hu, dtype=_F32)
                lhu[sub] += _F32(les.texture) * les_tex[les.id].sample(lblock)
                lab = (LESION_LABEL if les.kind == "lytic" else CYST_LABEL) if code is not None else None
                tis = Tissue.LESION if les.kind == "lytic" else Tissue.CYST
                if les.rim_thickness > 0:
                    replace.append((lsdf - _F32(les.rim_thickness), _F32(les.rim_hu * fb), Tissue.FEMUR_CORTEX, None))
                replace.append((lsdf, lhu, tis, lab))
                les_sdfs.append((lsdf, lhu))
            if nail is not None and nail.side == side:
                nd = evaluate_parts(nail.parts, f.frame, grid, block, margin=3.0, local=local)
                replace.append((nd, _F32(nail.hu), Tissue.METAL, code))
            paint_bone(
                canvas, box, d,
                cortex_thickness=t, cortex_hu=cortex_hu, inner_hu=inner,
                cortex_tissue=Tissue.FEMUR_CORTEX, inner_tissue=Tissue.FEMUR_MARROW,
                label=code, replace=replace,
            )
            # Cancellous vs marrow in the tissue map, by which dominates the inner density.
            sub = canvas.local(box)
            tmap = canvas.tissue[sub]
            canc_mask = (tmap == Tissue.FEMUR_MARROW) & (inner > 60.0)
            tmap[canc_mask] = Tissue.FEMUR_CANCELLOUS
            if side in femur_boxes:
                fbox, fmask = femur_boxes[side]
                rel = tuple(slice(q.start - o.start, q.stop - o.start) for q, o in zip(box, fbox))
                fmask[rel] |= d <= 0
            lab_sub = canvas.labels[sub]
            for les, entry in zip(mine, les_sdfs):
                if entry is None:
                    continue
                lsdf, lhu = entry
                want = LESION_LABEL if les.kind == "lytic" else CYST_LABEL
                m = (lsdf <= 0) & (lab_sub == want)
                if m.any():
                    zz, yy, xx = np.nonzero(m)
                    flat = np.ravel_multi_index((zz + box[0].start, yy + box[1].start, xx + box[2].start), grid.shape)
                    lesion_voxels[les.id].append(flat)
                    les.cortex_voxels += int((d[m] + t[m] > 0).sum())
                    # Within half a pixel of the outer surface: the lesion reaches it.
                    les.surface_voxels += int((d[m] > -0.5 * ps).sum())
                    les.lesion_hu_sum += float(lhu[m].sum())
                    les.lesion_hu_count += int(m.sum())
                    replaced = m & (d + t <= 0)
                    les.replaced_hu_sum += float(inner[replaced].sum())
                    les.replaced_hu_count += int(replaced.sum())
        progress(k1 / nz)

    merged = {k: (np.concatenate(v) if v else np.zeros(0, dtype=np.int64)) for k, v in lesion_voxels.items()}
    return hu, tissue, labels, femur_boxes, merged


def _joint_space_parts(patient: Patient, femurs: dict[str, FemurModel]) -> list[tuple[Frame, list[Part]]]:
    """Soft tissue filling the hip and knee joint spaces, in each femur's frame.

    Hip: a sphere reaching just past the acetabular cup's inner surface (cartilage of head
    and cup); knee: a flat disc between condyles and tibial plateau (cartilage and menisci).
    """
    out = []
    for side in SIDES:
        f = femurs[side]
        g = f.geometry
        hip = patient.hips[side]
        head = np.asarray(g["head"])
        # The cup is concentric with the head up to a small shift; cover the widest gap.
        r = f.params.head_radius + hip.gap + float(np.linalg.norm(hip.cup_shift)) + 0.5
        hx, hy, hz = (np.float32(v) for v in head)
        parts = [Part(f"hip_joint_{side}", lambda a, b, c, hx=hx, hy=hy, hz=hz, r=r: S.sphere(a - hx, b - hy, c - hz, r), head - r, head + r)]
        sc = float(g["scale"])
        gap = patient.knee_gap[side]
        chw = f.params.condyle_half_width
        centre = np.array([0.0, -4.0 * sc, -0.5 * gap])
        radii = np.array([chw * 0.95, 30.0 * sc, 0.5 * gap + 2.0])
        parts.append(ellipsoid_part(f"knee_joint_{side}", centre, radii))
        out.append((f.frame, parts))
    return out


def _disc_parts(marks: dict[str, np.ndarray]) -> list[Part]:
    """Intervertebral discs between the modelled vertebral bodies (and L5-S1)."""
    cents = np.asarray(marks["vertebral_centres"])
    if cents.size == 0:
        return []
    body_h, disc_h = (float(v) for v in marks["disc_size"])
    parts = []
    s1 = np.asarray(marks["s1"])
    below = [s1 + np.array([0.0, -6.0, 0.0])] + [c + np.array([0.0, 0.0, body_h / 2]) for c in cents[:-1]]
    for i, (c, b) in enumerate(zip(cents, below)):
        centre = 0.5 * (b + (c - np.array([0.0, 0.0, body_h / 2])))
        rl, ra = (24.0 - 1.2 * i), (17.0 - 0.5 * i)
        cz = centre.astype(_F32)
        half = _F32(disc_h / 2 + 1.0)

        def disc(u, v, w, cz=cz, rl=rl, ra=ra, half=half):
            return np.maximum(S.ellipse_2d(u - cz[0], v - cz[1], rl, ra), np.abs(w - cz[2]) - half)

        ext = np.array([rl, ra, disc_h / 2 + 1.0])
        parts.append(Part(f"disc[{i}]", disc, centre - ext, centre + ext, "union", 0.0))
    return parts


def _lesion_statistics(
    items: list[LesionModel], voxels: dict[int, np.ndarray], grid: ScannerGrid
) -> list[dict[str, Any]]:
    """Size and position of every lesion and cyst, measured on its voxels in the CT grid."""
    out = []
    vox_vol = grid.pixel_spacing[0] * grid.pixel_spacing[1] * grid.slice_spacing
    for les in items:
        flat = voxels.get(les.id, np.zeros(0, dtype=np.int64))
        n = int(flat.size)
        item: dict[str, Any] = {"id": les.id, "side": les.side, "region": les.region, "voxel_count": n}
        if n == 0:
            out.append(item)
            continue
        idx = np.stack(np.unravel_index(flat, grid.shape), axis=1).astype(np.float64)
        centroid_idx = idx.mean(axis=0)
        centre = grid.affine @ np.append(centroid_idx, 1.0)
        vol = n * vox_vol
        item.update(
            centre_lps=[round(float(v), 2) for v in centre[:3]],
            volume_mm3=round(vol, 1),
            equivalent_diameter_mm=round(float((6.0 * vol / np.pi) ** (1.0 / 3.0)), 2),
        )
        out.append(item)
    return out


# ---------------------------------------------------------------------- truth


def _truth(
    ph: SyntheticPhantom,
    *,
    patient: Patient,
    femurs: dict[str, FemurModel],
    hips: dict[str, HipJoint],
    lesions: list[LesionModel],
    cysts: list[LesionModel],
    lesion_stats: list[dict[str, Any]],
    nail: NailModel | None,
    truncated: dict[str, str | None],
    pad_value: float | None,
    kvp: float,
) -> dict[str, Any]:
    g = ph.grid
    labels = ph.labels.array
    counts = [int(np.count_nonzero(labels == k)) for k in range(5)]
    cfg = ph.config
    stats = {s["id"]: s for s in lesion_stats}
    femur_entries = {}
    for side in SIDES:
        f = femurs[side]
        n = int(ph._femur_boxes[side][1].sum()) if side in ph._femur_boxes else 0
        hip = hips[side]
        femur_entries[side] = {
            "in_view": n > 0,
            "voxel_count": n,
            "truncated": truncated.get(side) if n > 0 else None,
            "head_centre_lps": [round(float(v), 2) for v in f.head_centre],
            "knee_centre_lps": [round(float(v), 2) for v in f.knee_centre],
            "length_mm": round(f.params.length, 1),
            "head_radius_mm": round(f.params.head_radius, 2),
            "neck_shaft_angle_deg": round(f.params.neck_shaft_angle, 1),
            "anteversion_deg": round(f.params.anteversion, 1),
            "cortex_diaphysis_mm": round(f.params.cortex_diaphysis, 2),
            "hip_joint_gap_mm": round(hip.gap, 2),
            "hip_joint_min_gap_mm": round(hip.min_gap(), 2),
        }

    def lesion_entry(les: LesionModel) -> dict[str, Any] | None:
        s = stats[les.id]
        if s["voxel_count"] == 0:
            return None
        own = les.lesion_hu_sum / max(les.lesion_hu_count, 1)
        replaced = les.replaced_hu_sum / les.replaced_hu_count if les.replaced_hu_count else None
        contrast = None if replaced is None else own - replaced
        e = {
            "id": les.id,
            "side": les.side,
            "region": les.region,
            "centre_lps": s["centre_lps"],
            "equivalent_diameter_mm": s["equivalent_diameter_mm"],
            "volume_mm3": s["volume_mm3"],
            "voxel_count": s["voxel_count"],
            "mean_hu": s.get("mean_hu"),
            "lesion_hu": round(own, 1),
            "replaced_bone_hu": None if replaced is None else round(replaced, 1),
            "contrast_hu": None if contrast is None else round(contrast, 1),
        }
        if les.kind == "lytic":
            breach = les.surface_voxels > 0
            e.update(
                subtle=bool(contrast is not None and abs(contrast) < SUBTLE_CONTRAST_HU),
                cortical_breach=bool(breach),
                cortical_involvement="breach" if breach else ("thinning" if les.cortex_voxels > 0 else "none"),
                sclerotic_rim=bool(les.rim_thickness > 0),
            )
        return e

    lesion_list = [e for e in (lesion_entry(x) for x in lesions) if e is not None]
    cyst_list = [e for e in (lesion_entry(x) for x in cysts) if e is not None]
    implant = None
    if nail is not None:
        metal = int((ph.tissue == Tissue.METAL).sum())
        implant = {"side": nail.side, "kind": "intramedullary_nail", "metal_voxel_count": metal, "metal_hu": round(nail.hu, 0), "labelled_as": "femur"}
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}
    config["transfer_syntax"] = transfer_syntax_uid(cfg.transfer_syntax)
    return {
        "format_version": 1,
        "generator": {"name": "synthetic_ct", "version": GENERATOR_VERSION},
        "seed": ph.seed,
        "preset": ph.preset,
        "config": config,
        "patient": {"sex": patient.sex, "height_mm": round(patient.height), "bmi": round(patient.bmi, 1)},
        "grid": {
            "shape": list(g.shape),
            "axes": ["slice", "row", "column"],
            "spacing_mm": [g.slice_spacing, g.pixel_spacing[0], g.pixel_spacing[1]],
            "pixel_spacing_mm": list(g.pixel_spacing),
            "slice_spacing_mm": g.slice_spacing,
            "slice_thickness_mm": g.slice_thickness,
            "image_orientation_patient": list(g.image_orientation),
            "first_image_position_patient": list(g.first_position),
            "affine_lps": [[round(float(v), 6) for v in row] for row in g.affine],
            "patient_position": g.patient_position,
            "slice_order": cfg.slice_order,
        },
        "scanner": {
            "kvp": kvp,
            "noise_sd_hu": cfg.noise_sd,
            "manufacturer": ph.vendor.manufacturer,
            "thin_kernel": ph.kernels["thin"].name,
            "thick_kernel": ph.kernels["thick"].name,
            "storage": cfg.storage,
            "extended_hu": cfg.extended_hu,
            "circular_fov_padding_hu": pad_value,
            "contrast": cfg.contrast,
        },
        "labels": {str(k): v for k, v in LABELS.items()},
        "label_voxel_counts": {str(k): int(counts[k]) for k in range(5)},
        "femurs_in_view": [s for s in SIDES if femur_entries[s]["in_view"]],
        "knees_in_view": bool(cfg.knees_in_view and any(femur_entries[s]["in_view"] for s in SIDES)),
        "femurs": femur_entries,
        "lesions": lesion_list,
        "cysts": cyst_list,
        "implant": implant,
        "study_instance_uid": ph.uids["study"],
        "frame_of_reference_uid": ph.uids["frame_of_reference"],
        "series": [],
    }
