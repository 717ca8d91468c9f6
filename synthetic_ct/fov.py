"""Planning of the scan: which table positions and which in-plane field of view to reconstruct.

Like a technologist, the planner looks at the patient: the scan runs from above the hips to
below the knees (or stops in the thigh, or covers the abdomen only), the reconstruction field
of view is the body's width plus a margin, and a field of view for one femur is centred on that
thigh so that the other femur lies wholly outside it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .body import BodyModel
from .config import PhantomConfig, PresetSpec
from .femur import FemurModel
from .grid import ScannerGrid, make_grid

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanPlan:
    """The planned series geometry and why.

    Attributes
    ----------
    grid
        The thin axial series' grid.
    truncated
        Per femur: ``None`` (wholly in the scan range), ``"distal"`` (scan stops in the thigh).
    """

    grid: ScannerGrid
    truncated: dict[str, str | None]


def plan_scan(
    *,
    rng: np.random.Generator,
    preset: PresetSpec,
    config: PhantomConfig,
    uniforms: dict[str, float],
    femurs: dict[str, FemurModel],
    body: BodyModel,
) -> ScanPlan:
    """Choose the z range, slice spacing, pixel spacing and in-plane centre of the thin series."""
    u = rng.uniform
    hip_z = max(float(f.head_centre[2]) for f in femurs.values())
    knee_z = min(float(f.knee_centre[2]) for f in femurs.values())
    sup = u(*preset.superior_margin)
    inf = u(*preset.inferior_margin)
    thigh_stop = u(0.25, 0.55)
    abdomen_start = u(125.0, 160.0)
    abdomen_len = u(240.0, 330.0)
    fov_margin = u(15.0, 45.0)
    centre_jitter = rng.normal(0.0, 6.0, size=2)
    one_side_margin = u(8.0, 20.0)
    truncated: dict[str, str | None] = {s: None for s in femurs}
    if not config.femurs_in_view:
        z_lo = hip_z + abdomen_start
        z_hi = z_lo + abdomen_len
    elif config.knees_in_view:
        z_hi = hip_z + sup
        z_lo = knee_z - inf
    else:
        # Scan stops in the distal half of the thigh, above the patella.
        z_hi = hip_z + sup
        z_lo = knee_z + 95.0 + thigh_stop * max(0.0, (hip_z - knee_z) - 95.0) * 0.6
        truncated = {s: "distal" for s in femurs}
    length = z_hi - z_lo

    # Slice spacing and thickness.
    if config.slice_spacing is not None:
        spacing = float(config.slice_spacing)
        thickness = float(config.slice_thickness or spacing)
    else:
        cands = list(preset.slice_spacings)
        lo_n, hi_n = preset.slice_count
        fits = [c for c in cands if length / c[0] + 1 <= hi_n and (length / c[0] + 1 >= lo_n or not config.knees_in_view)]
        if not fits:
            fits = [min(cands, key=lambda c: abs(length / c[0] + 1 - 0.5 * (lo_n + hi_n)))]
        spacing, thickness = fits[min(int(uniforms["slice"] * len(fits)), len(fits) - 1)]
        if config.slice_thickness is not None:
            thickness = float(config.slice_thickness)

    # In-plane field of view from the body's extent over the scanned range.
    levels = np.linspace(z_lo, z_hi, 9)
    x_lo, x_hi, y_lo, y_hi = body.extent(levels)
    matrix = int(config.matrix or preset.matrix)
    ps_lo, ps_hi = preset.pixel_spacing
    in_view = config.femurs_in_view
    if len(in_view) == 1:
        keep, other = in_view[0], ("right" if in_view[0] == "left" else "left")
        o_lo, o_hi = femurs[other].bounds(pad=2.0)
        k_lo, k_hi = body.extent(levels, side=keep)[:2]
        if keep == "left":  # patient left is +x
            x_start = float(o_hi[0]) + one_side_margin
            x_end = float(k_hi) + fov_margin * 0.5
        else:
            x_end = float(o_lo[0]) - one_side_margin
            x_start = float(k_lo) - fov_margin * 0.5
        width = max(x_end - x_start, y_hi - y_lo + 10.0)
        ps = config.pixel_spacing or float(np.clip(width / matrix, 0.3, ps_hi))
        fov = ps * matrix
        cx = x_start + fov / 2.0 if keep == "left" else x_end - fov / 2.0
        # A field of view too narrow for the whole thigh is centred on the femur instead.
        f_lo, f_hi = femurs[keep].bounds()
        f_mid = 0.5 * float(f_lo[0] + f_hi[0])
        if fov < abs(x_end - x_start):
            cx = max(cx, f_mid) if keep == "left" else min(cx, f_mid)
        cy = 0.5 * (y_lo + y_hi) + centre_jitter[1]
    else:
        width = (x_hi - x_lo) + fov_margin
        if config.pixel_spacing is not None:
            ps = float(config.pixel_spacing)
        else:
            need = width / matrix
            ps = float(np.clip(need * (1.0 + 0.12 * uniforms["pixel"]), ps_lo, ps_hi))
            # Consoles set the field of view in whole millimetres.
            ps = round(ps * matrix) / matrix
        cx = 0.5 * (x_lo + x_hi) + centre_jitter[0]
        cy = 0.5 * (y_lo + y_hi) + 12.0 + centre_jitter[1]
    grid = make_grid(
        patient_position=config.patient_position,  # type: ignore[arg-type]
        matrix=(matrix, matrix),
        pixel_spacing=ps,
        fov_centre_xy=(round(cx, 1), round(cy, 1)),
        z_range=(z_lo, z_hi),
        slice_spacing=spacing,
        slice_thickness=thickness,
    )
    logger.debug("planned %s slices of %s mm, pixel %.3f mm", grid.shape[0], spacing, ps)
    return ScanPlan(grid=grid, truncated=truncated)
