"""Soft tissues: body outline, skin, subcutaneous fat, muscle, abdominal and pelvic contents,
vessels and the CT table.

The outline is defined slice by slice in the body frame (see :mod:`synthetic_ct.pelvis`): a
trunk above the crotch and one limb around each femur, joined by smooth unions, then flattened
where the patient lies on the table. Fat, muscle septa and bowel are shaped by smooth random
fields, so no two patients look alike.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from . import sdf as S
from .femur import FemurModel
from .frames import Block, Frame
from .grid import ScannerGrid
from .noise import SmoothNoise
from .parts import Part, chain_parts, ellipsoid_part, evaluate_parts, parts_bounds
from .render import Canvas, paint
from .tissues import Tissue, TissueHU

logger = logging.getLogger(__name__)

_F32 = np.float32


@dataclass(frozen=True)
class BodyParams:
    """Body habitus (mm).

    Attributes
    ----------
    bmi
        Body-mass index; drives fat thickness and visceral fat.
    fat
        Mean subcutaneous fat thickness.
    female
        Fat distribution on hips and thighs.
    trunk_half_width
        Half-width of the muscle envelope at the level of the hips.
    trunk_front, trunk_back
        Anterior and posterior extent of the muscle envelope from the hips.
    belly
        Extra anterior abdominal extent above the pelvis.
    thigh_radius
        Radius of the thigh's muscle envelope below the groin.
    crotch_drop
        Depth of the crotch below the hip centres.
    table_compression
        How far the table flattens the buttocks, mm.
    visceral_fat
        0 (lean, bowel fills the abdomen) to 1 (much fat between the loops).
    bladder_fill
        0 (empty) to 1 (full).
    """

    bmi: float
    fat: float
    female: bool
    trunk_half_width: float
    trunk_front: float
    trunk_back: float
    belly: float
    thigh_radius: float
    crotch_drop: float
    table_compression: float
    visceral_fat: float
    bladder_fill: float
    rectal_gas: float


@dataclass(frozen=True)
class TableParams:
    """The CT table under the patient (LPS mm).

    Attributes
    ----------
    top
        LPS y of the top of the pad (where the patient lies).
    pad
        Thickness of the mattress pad (0: none).
    thickness
        Thickness of the carbon-fibre table top.
    half_width
        Half-width of the table.
    curvature
        Radius of the table's transverse curvature, mm.
    centre_x
        LPS x of the table centre.
    """

    top: float
    pad: float
    thickness: float
    half_width: float
    curvature: float
    centre_x: float


class BodyModel:
    """Soft tissues of one patient.

    Parameters
    ----------
    params
        Habitus.
    frame
        The body frame (LPS -> u, v, w); its rotation is only about the z axis, so slices stay
        slices in it.
    femurs
        Both femurs (a patient has two legs even when one is outside the field of view).
    landmarks
        Pelvis landmarks in the body frame (from :func:`synthetic_ct.pelvis.pelvis_parts`).
    hu
        Tissue densities.
    rng
        Source of the random fields.
    """

    def __init__(
        self,
        params: BodyParams,
        frame: Frame,
        femurs: dict[str, FemurModel],
        landmarks: dict[str, np.ndarray],
        hu: TissueHU,
        rng: np.random.Generator,
        *,
        crest_height: float,
        contrast: bool,
        table: TableParams | None = None,
    ) -> None:
        self.p = params
        self.frame = frame
        self.femurs = femurs
        self.hu = hu
        self.marks = landmarks
        self.crest = crest_height
        self.table = table
        self._thigh_tracks = {side: self._track(f) for side, f in femurs.items()}
        lo, hi = self.bounds()
        self.n_fat = SmoothNoise(rng, lo, hi, (45.0, 45.0, 70.0))
        self.n_septa = SmoothNoise(rng, lo, hi, (20.0, 20.0, 60.0))
        self.n_texture = SmoothNoise(rng, lo, hi, (5.0, 5.0, 9.0))
        self.n_bowel = SmoothNoise(rng, lo, hi, (14.0, 14.0, 16.0))
        self.n_content = SmoothNoise(rng, lo, hi, (9.0, 9.0, 11.0))
        self.organs = self._organs(contrast)

    # ------------------------------------------------------------------ geometry
    def _track(self, femur: FemurModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Shaft centre of ``femur`` (body frame u, v) as a function of body height w."""
        g = femur.geometry
        c = np.linspace(-120.0, float(g["c_s"]) + 80.0, 200)
        pts = femur.shaft_centre_at(np.clip(c, 0.0, float(g["c_s"])))
        # Beyond the shaft ends, continue straight along the axis.
        axis = femur.frame.direction_to_world(np.array([0.0, 0.0, 1.0]))
        extra = np.where(c < 0, c, np.where(c > float(g["c_s"]), c - float(g["c_s"]), 0.0))
        pts = pts + extra[:, None] * axis[None, :]
        loc = (pts - self.frame.origin) @ self.frame.matrix.T
        order = np.argsort(loc[:, 2])
        return loc[order, 2], loc[order, 0], loc[order, 1]

    def knee_w(self, side: str) -> float:
        """Body-frame height of the knee joint line of ``side``."""
        k = (self.femurs[side].knee_centre - self.frame.origin) @ self.frame.matrix.T
        return float(k[2])

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """LPS bounds of the body (everything but the table), mm."""
        reach = self.p.trunk_half_width + self.p.fat * 2.2 + 60.0
        knee = min(self.knee_w(s) for s in self.femurs)
        lo_b = np.array([-reach, -(self.p.trunk_front + self.p.belly + self.p.fat * 2.5 + 40.0), knee - 320.0])
        hi_b = np.array([reach, self.p.trunk_back + self.p.fat * 2.5 + 40.0, self.crest + 420.0])
        return self.frame.world_bounds(lo_b, hi_b)

    def _trunk(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Trunk muscle envelope per slice: (half-width, front, back, centre v)."""
        p = self.p
        cr = -p.crotch_drop
        wk = np.array([cr - 30, cr, cr + 30, 0.0, 40.0, self.crest - 10.0, self.crest + 60.0, self.crest + 400.0])
        hw = p.trunk_half_width * np.array([0.45, 0.8, 0.95, 1.0, 0.97, 0.9, 0.86, 0.88])
        front = p.trunk_front * np.array([0.6, 0.85, 0.95, 1.0, 1.0, 1.0, 1.0, 1.0]) + p.belly * np.array([0, 0, 0, 0, 0.15, 0.7, 1.0, 1.0])
        back = p.trunk_back * np.array([0.55, 0.9, 1.05, 1.0, 0.95, 0.85, 0.8, 0.8])
        # Presence: the trunk ends at the crotch, leaving the two thighs.
        present = S.smoothstep(w, cr - 45.0, cr + 35.0)
        a = np.interp(w, wk, hw) * np.sqrt(np.maximum(present, 1e-3))
        f = np.interp(w, wk, front) * np.maximum(present, 0.05)
        b = np.interp(w, wk, back) * np.maximum(present, 0.05)
        vc = np.zeros_like(w) + 10.0
        return a.astype(_F32), f.astype(_F32), b.astype(_F32), vc.astype(_F32)

    def _limb(self, side: str, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Limb muscle envelope per slice: (centre u, centre v, radius u, radius v)."""
        tw, tu, tv = self._thigh_tracks[side]
        u = np.interp(w, tw, tu)
        v = np.interp(w, tw, tv)
        f = self.femurs[side]
        l = 1.0 if side == "left" else -1.0
        kw = self.knee_w(side)
        hip_w = float(((f.head_centre - self.frame.origin) @ self.frame.matrix.T)[2])
        r = self.p.thigh_radius
        chw = f.params.condyle_half_width
        # Height knots from below the knee up to above the hip.
        wk = np.array([kw - 150, kw - 20, kw + 30, kw + 110, 0.5 * (kw + hip_w), hip_w - 60, hip_w, hip_w + 40])
        ru = np.array([0.8 * r, chw + 9.0, chw + 11.0, 0.8 * r, 0.95 * r, 1.12 * r, 1.05 * r, 0.1])
        rv = np.array([0.85 * r, 52.0, 52.0, 0.78 * r, 0.92 * r, 1.0 * r, 0.95 * r, 0.1])
        # The thigh extends medially (adductors) near the groin; the knee forward (patella).
        du = -l * np.interp(w, wk, [0, 0, 0, 4, 10, 22, 18, 0])
        dv = np.interp(w, wk, [-4, 6, 8, 2, 2, -6, -6, 0])
        return (u + du).astype(_F32), (v + dv).astype(_F32), np.interp(w, wk, ru).astype(_F32), np.interp(w, wk, rv).astype(_F32)

    def _cavity(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Abdominopelvic cavity per slice: (half-width, centre v, half-depth, presence)."""
        s1 = self.marks["s1"]
        half_hips = 0.5 * abs(
            float((self.femurs["left"].head_centre - self.frame.origin) @ self.frame.matrix.T @ [1, 0, 0])
            - float((self.femurs["right"].head_centre - self.frame.origin) @ self.frame.matrix.T @ [1, 0, 0])
        )
        wk = np.array([-45.0, -15.0, 25.0, 60.0, self.crest, self.crest + 60.0, self.crest + 400.0])
        hw = np.array([18.0, half_hips - 42.0, half_hips - 35.0, half_hips + 10.0, self.p.trunk_half_width * 0.75, self.p.trunk_half_width * 0.8, self.p.trunk_half_width * 0.8])
        front_target = -self.p.trunk_front - self.p.belly + 14.0
        vf = np.array([-28.0, -36.0, -42.0, -55.0, front_target + 25, front_target, front_target])
        vb = np.array([40.0, 55.0, float(s1[1]) - 20.0, float(s1[1]) - 30.0, float(s1[1]) - 40.0, float(s1[1]) - 50.0, float(s1[1]) - 50.0])
        a = np.interp(w, wk, hw)
        front = np.interp(w, wk, vf)
        back = np.interp(w, wk, vb)
        present = S.smoothstep(w, -50.0, -30.0)
        return a.astype(_F32), (0.5 * (front + back)).astype(_F32), (0.5 * (back - front)).astype(_F32), present.astype(_F32)

    # ------------------------------------------------------------------ organs
    def _organs(self, contrast: bool) -> list[tuple[str, list[Part], float, Tissue]]:
        hu = self.hu
        m = self.marks
        s1 = m["s1"]
        out: list[tuple[str, list[Part], float, Tissue]] = []
        fl = (self.femurs["left"].head_centre - self.frame.origin) @ self.frame.matrix.T
        fr = (self.femurs["right"].head_centre - self.frame.origin) @ self.frame.matrix.T
        # Bladder behind the symphysis.
        pub = 0.5 * (m["pubic_body_left"] + m["pubic_body_right"])
        fill = self.p.bladder_fill
        rb = np.array([22 + 30 * fill, 16 + 26 * fill, 15 + 30 * fill])
        centre = pub + np.array([0.0, 14.0 + rb[1], rb[2] * 0.75 + 4.0])
        out.append(("bladder", [ellipsoid_part("bladder", centre, rb)], hu.urine, Tissue.FLUID))
        # Rectum and sigmoid along the front of the sacrum.
        rect = [
            np.array([0.0, float(s1[1]) + 10.0, -48.0]),
            np.array([2.0, float(s1[1]) + 22.0, -15.0]),
            np.array([-4.0, float(s1[1]) + 18.0, 20.0]),
            np.array([-10.0, float(s1[1]) - 5.0, 55.0]),
            np.array([15.0, float(s1[1]) - 30.0, 80.0]),
        ]
        rr = [11.0, 17.0, 16.0, 13.0, 12.0]
        out.append(("rectum", chain_parts("rectum", rect, rr, k=4.0), hu.viscera, Tissue.VISCERA))
        gas_r = [max(1.0, 0.6 * r * self.p.rectal_gas) for r in rr]
        out.append(("rectal_gas", chain_parts("rectal_gas", [q + np.array([0, -3.0, 0]) for q in rect], gas_r, k=2.0), hu.gas, Tissue.GAS))
        # Psoas and iliopsoas: from the lumbar spine over the pelvic brim to the lesser trochanter.
        for side, f, hc in (("left", self.femurs["left"], fl), ("right", self.femurs["right"], fr)):
            l = 1.0 if side == "left" else -1.0
            lt = (f.frame.to_world(f.geometry["lesser_trochanter"]) - self.frame.origin) @ self.frame.matrix.T
            pts = [
                np.array([l * 22.0, float(s1[1]) - 18.0, float(s1[2]) + 170.0]),
                np.array([l * 34.0, float(s1[1]) - 18.0, float(s1[2]) + 60.0]),
                np.array([l * (abs(hc[0]) - 45.0), hc[1] - 12.0, hc[2] + 45.0]),
                np.array([l * (abs(hc[0]) - 22.0), hc[1] - 32.0, hc[2] + 5.0]),
                np.array([l * (abs(hc[0]) - 12.0), hc[1] - 26.0, hc[2] - 30.0]),
                lt + np.array([-l * 4.0, -6.0, 6.0]),
            ]
            out.append((f"psoas_{side}", chain_parts(f"psoas_{side}", pts, [9.0, 20.0, 24.0, 20.0, 15.0, 9.0], k=5.0), hu.muscle, Tissue.MUSCLE))
            # External iliac -> femoral -> popliteal artery, vein beside it.
            kw = self.knee_w(side)
            tw, tu, tv = self._thigh_tracks[side]
            def shaft(wq: float, du: float, dv: float) -> np.ndarray:
                return np.array([np.interp(wq, tw, tu) + du, np.interp(wq, tw, tv) + dv, wq])
            art = [
                np.array([l * 12.0, float(s1[1]) - 35.0, float(s1[2]) + 40.0]),
                np.array([l * (abs(hc[0]) - 40.0), hc[1] - 30.0, hc[2] + 35.0]),
                np.array([l * (abs(hc[0]) - 12.0), hc[1] - 34.0, hc[2] - 5.0]),
                shaft(hc[2] - 90.0, -l * 22.0, -22.0),
                shaft(0.5 * (hc[2] + kw), -l * 22.0, -4.0),
                shaft(kw + 110.0, -l * 10.0, 22.0),
                shaft(kw + 40.0, 0.0, 34.0),
                shaft(kw - 60.0, 0.0, 32.0),
            ]
            vein = [q + np.array([-l * 3.0, 9.0, 0.0]) for q in art]
            out.append((f"artery_{side}", chain_parts(f"artery_{side}", art, [5.0, 4.5, 4.2, 3.8, 3.6, 3.4, 3.2, 3.0]), hu.artery, Tissue.BLOOD))
            out.append((f"vein_{side}", chain_parts(f"vein_{side}", vein, [7.0, 6.5, 6.0, 5.0, 4.8, 4.5, 4.5, 4.0]), hu.vein, Tissue.BLOOD))
        # Aorta and inferior vena cava in front of the spine above the bifurcation.
        top = float(s1[2]) + 400.0
        bif = float(s1[2]) + 80.0
        out.append(("aorta", chain_parts("aorta", [np.array([6.0, float(s1[1]) - 40.0, bif]), np.array([8.0, float(s1[1]) - 45.0, top])], [8.0, 11.0]), hu.artery, Tissue.BLOOD))
        out.append(("ivc", chain_parts("ivc", [np.array([-18.0, float(s1[1]) - 35.0, bif - 10.0]), np.array([-24.0, float(s1[1]) - 40.0, top])], [9.0, 11.0]), hu.vein, Tissue.BLOOD))
        # Upper abdomen: kidneys, liver, spleen (only visible on abdominal fields of view).
        kz = float(s1[2]) + 190.0
        for l in (1.0, -1.0):
            out.append(("kidney", [ellipsoid_part("kidney", np.array([l * 62.0, float(s1[1]) - 5.0, kz + (8.0 if l > 0 else -8.0)]), np.array([26.0, 24.0, 52.0]))], hu.kidney, Tissue.ORGAN))
        out.append(("liver", [ellipsoid_part("liver", np.array([-70.0, float(s1[1]) - 40.0, float(s1[2]) + 345.0]), np.array([90.0, 75.0, 85.0]))], hu.liver, Tissue.ORGAN))
        out.append(("spleen", [ellipsoid_part("spleen", np.array([85.0, float(s1[1]) - 5.0, float(s1[2]) + 320.0]), np.array([30.0, 45.0, 55.0]))], hu.spleen, Tissue.ORGAN))
        return out

    def outline(
        self, u: np.ndarray, v: np.ndarray, wz: np.ndarray, *, block: Block | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """SDFs (mm) of the muscle envelope and of the skin, before the table flattens them.

        Parameters
        ----------
        u, v
            Body-frame in-plane coordinates, shaped ``(nz, ny, nx)``.
        wz
            Body-frame height of each slice, ``(nz,)``.
        block
            The block being rendered, to sample the fat-thickness field on; without it the
            mean thickness is used.
        """
        a, f, b, vc = (x[:, None, None] for x in self._trunk(wz))
        dv = v - vc
        rv = np.where(dv < 0, f, b)
        d_m = S.ellipse_2d(u, dv, a, rv)
        for side in ("left", "right"):
            cu, cv, ru, rvv = (x[:, None, None] for x in self._limb(side, wz))
            d_m = S.smooth_union(d_m, S.ellipse_2d(u - cu, v - cv, ru, rvv), 28.0)
        p = self.p
        fat_n = self.n_fat.sample(block) if block is not None else _F32(0.0)
        buttock = S.smoothstep(wz, -p.crotch_drop - 60.0, -p.crotch_drop)[:, None, None] * S.smoothstep(wz, 90.0, 30.0)[:, None, None]
        belly = S.smoothstep(wz, 40.0, self.crest)[:, None, None]
        fat = _F32(p.fat) * (
            _F32(1.0)
            + _F32(0.6) * buttock * S.smoothstep(v, 0.0, 60.0)
            + _F32(0.5 if p.female else 0.2) * buttock * S.smoothstep(np.abs(u), 60.0, 140.0)
            + _F32(1.0) * belly * S.smoothstep(v, 0.0, -80.0) * _F32(min(1.0, p.bmi / 30.0))
        ) * (_F32(1.0) + _F32(0.3) * fat_n)
        fat = np.maximum(fat, _F32(2.5))
        return d_m, d_m - fat

    def extent(self, z_levels: np.ndarray, *, side: str | None = None) -> tuple[float, float, float, float]:
        """LPS extent ``(x_min, x_max, y_min, y_max)`` of the skin over the given z levels, mm.

        With ``side``, only the part of the body on that side of the midline counts.
        The table's flattening is ignored (it only moves the posterior skin forward).
        """
        lo, hi = self.bounds()
        xs = np.linspace(lo[0], hi[0], 160, dtype=np.float32)[None, None, :]
        ys = np.linspace(lo[1], hi[1], 160, dtype=np.float32)[None, :, None]
        zs = np.asarray(z_levels, dtype=np.float32)[:, None, None]
        u, v, _ = self.frame.to_local(xs, ys, zs)
        shape = (zs.shape[0], ys.shape[1], xs.shape[2])
        u = np.broadcast_to(u, shape)
        v = np.broadcast_to(v, shape)
        wz = np.asarray(z_levels, dtype=np.float64) - self.frame.origin[2]
        _, d_s = self.outline(u, v, wz)
        inside = d_s <= 0
        xx = np.broadcast_to(xs, shape)
        yy = np.broadcast_to(ys, shape)
        if side is not None:
            inside &= (xx > self.frame.origin[0]) if side == "left" else (xx < self.frame.origin[0])
        if not inside.any():
            o = self.frame.origin
            return float(o[0]), float(o[0]), float(o[1]), float(o[1])
        return float(xx[inside].min()), float(xx[inside].max()), float(yy[inside].min()), float(yy[inside].max())

    # ------------------------------------------------------------------ painting
    def paint(self, grid: ScannerGrid, canvas: Canvas) -> None:
        """Paint table, skin, fat, muscle, cavity contents and organs into ``canvas``."""
        if self.table is not None:
            self._paint_table(grid, canvas)
        lo, hi = self.bounds()
        box = grid.index_box(lo, hi, within=canvas.index)
        if box is None:
            return
        block = grid.block(box)
        nz, ny, nx = block.shape
        wz = np.asarray(block.z[:, 0, 0] - _F32(self.frame.origin[2]), dtype=np.float64)

        # The outline fields are smooth signed distances: evaluate them on every other pixel
        # and interpolate. Distances interpolate linearly almost exactly, so edges stay sharp
        # (the partial-volume ramp is computed at full resolution from the interpolated SDF).
        ry, rx = _coarse_index(ny), _coarse_index(nx)
        cblock = Block(index=box, x=block.x[:, :, rx], y=block.y[:, ry, :], z=block.z)
        cu, cv, _ = self.frame.to_local(cblock.x, cblock.y, cblock.z)
        cshape = (nz, ry.size, rx.size)
        cu = np.broadcast_to(cu, cshape)
        cv = np.broadcast_to(cv, cshape)
        dm_c, ds_c = self.outline(cu, cv, wz, block=cblock)
        ca, cvc, cb, cp = (x[:, None, None] for x in self._cavity(wz))
        dc_c = S.ellipse_2d(cu, cv - cvc, ca, cb) + _F32(60.0) * (_F32(1.0) - cp)
        d_m = _upsample(dm_c, ry, rx, ny, nx)
        d_s = _upsample(ds_c, ry, rx, ny, nx)
        p = self.p
        if self.table is not None:
            # The table flattens whatever rests on it (world y, not rolled with the patient).
            # Only rows near the table top can change where the surfaces lie.
            yb = block.y[0, :, 0]
            rows = np.nonzero(yb > self.table.top - 40.0)[0]
            if rows.size:
                r = slice(int(rows[0]), ny)
                flat = np.broadcast_to(block.y[:, r, :] - _F32(self.table.top), d_s[:, r, :].shape)
                d_s[:, r, :] = S.smooth_intersect(d_s[:, r, :], flat, 12.0)
                d_m[:, r, :] = S.smooth_intersect(d_m[:, r, :], flat + _F32(3.0), 12.0)

        hu = self.hu
        # Skin over subcutaneous fat (with faint fibrous strands) over muscle, which has fatty
        # septa between the muscles and a fine marbling. Composited first, painted once.
        tex = self.n_texture.sample(block)
        septa = np.abs(self.n_septa.sample(block))
        septa *= _F32(-1 / 0.13)
        septa += _F32(1.0)
        fat_frac = S.clamp(septa, 0.0, 1.0)
        fat_frac *= _F32(0.85)
        fat_frac += S.clamp(tex - _F32(1.2), 0.0, 0.6)
        np.minimum(fat_frac, _F32(1.0), out=fat_frac)
        muscle = _F32(hu.muscle) + _F32(hu.fat - hu.muscle) * fat_frac
        muscle += _F32(6.0) * tex
        value = _F32(hu.fat) + _F32(8.0) * tex
        value += S.coverage(d_m, canvas.width) * (muscle - value)
        skin_band = -(d_s + _F32(2.0))
        value += S.coverage(skin_band, canvas.width) * (_F32(hu.skin) - value)
        paint(canvas, box, d_s, value, Tissue.FAT)
        sub_t = canvas.tissue[canvas.local(box)]
        sub_t[(d_s <= 0) & (skin_band <= 0)] = Tissue.SKIN
        sub_t[d_m <= 0] = Tissue.MUSCLE

        # Abdominopelvic cavity: bowel loops in visceral fat, gas and fluid in the loops.
        near = (dc_c < 8.0) & (dm_c < -6.0)
        if near.any():
            cbox = _fine_box(near, ry, rx, box)
            cblk = grid.block(cbox)
            sub = tuple(slice(q.start - o.start, q.stop - o.start) for q, o in zip(cbox, box))
            d_c = _upsample(dc_c, ry, rx, ny, nx, rows=sub[1], cols=sub[2])[sub[0]]
            d_c = np.maximum(d_c, d_m[sub] + _F32(10.0))
            nb = self.n_bowel.sample(cblk)
            nc = self.n_content.sample(cblk)
            thr = _F32(-0.6 + 1.3 * p.visceral_fat)
            bowel = S.smoothstep(nb, thr - 0.25, thr + 0.25)
            content = hu.viscera + (hu.bowel_fluid - hu.viscera) * S.smoothstep(nc, 0.2, 0.8)
            content = content + (hu.oral_contrast - content) * S.smoothstep(nc, -1.0, -1.6)
            gas = S.smoothstep(nc, 1.1, 1.5) * bowel
            val = hu.fat + (content - hu.fat) * bowel
            val = val + (hu.gas - val) * gas
            paint(canvas, cbox, d_c, val, Tissue.VISCERA)
            # Gas is its own tissue in the map (where it dominates).
            canvas.tissue[canvas.local(cbox)][(d_c <= 0) & (gas > 0.5)] = Tissue.GAS

        for _, parts, value, tissue in self.organs:
            lo_o, hi_o = parts_bounds(parts, self.frame, 3.0)
            obox = grid.index_box(lo_o, hi_o, within=box)
            if obox is None:
                continue
            oblock = grid.block(obox)
            d = evaluate_parts(parts, self.frame, grid, oblock, margin=3.0)
            if not (d < 3.0).any():
                continue
            # Organs stay inside the body.
            sub = tuple(slice(o.start - b.start, o.stop - b.start) for o, b in zip(obox, box))
            d = np.maximum(d, d_m[sub] + _F32(2.0))
            paint(canvas, obox, d, value, tissue)

    def _paint_table(self, grid: ScannerGrid, canvas: Canvas) -> None:
        t = self.table
        assert t is not None
        zs, ys, xs = grid.axis_coordinates()
        # Only the rows the table occupies (its top rises toward the sides by the sag).
        x_all = xs - t.centre_x
        sag_max = float(np.max(x_all**2)) / (2.0 * t.curvature)
        rows = np.nonzero((ys >= t.top - sag_max - 3.0) & (ys <= t.top + t.pad + t.thickness + 3.0))[0]
        if rows.size == 0:
            return
        box = (canvas.index[0], slice(int(rows[0]), int(rows[-1]) + 1), canvas.index[2])
        x = x_all.astype(_F32)[None, :]
        y = ys[box[1]].astype(_F32)[:, None]
        sag = x * x / _F32(2.0 * t.curvature)
        top = _F32(t.top + t.pad) - sag
        d_top = np.maximum(top - y, y - (top + _F32(t.thickness)))
        d_top = np.maximum(d_top, np.abs(x) - _F32(t.half_width))
        shell = np.maximum(d_top, -(d_top + _F32(2.0)))  # carbon-fibre skins around a foam core
        nzc = canvas.hu.shape[0]
        shape = (nzc,) + d_top.shape
        paint(canvas, box, np.broadcast_to(d_top, shape), self.hu.table_core, Tissue.TABLE)
        paint(canvas, box, np.broadcast_to(shell, shape), self.hu.table_shell, Tissue.TABLE)
        if t.pad > 0:
            pad_top = _F32(t.top) - sag * _F32(0.5)
            d_pad = np.maximum(pad_top - y, y - (_F32(t.top + t.pad) - sag))
            d_pad = np.maximum(d_pad, np.abs(x) - _F32(t.half_width - 15.0))
            paint(canvas, box, np.broadcast_to(d_pad, shape), self.hu.pad, Tissue.TABLE)


def _coarse_index(n: int, step: int = 2) -> np.ndarray:
    """Every ``step``-th index of ``range(n)``, always including the last."""
    idx = np.arange(0, n, step)
    if idx[-1] != n - 1:
        idx = np.append(idx, n - 1)
    return idx


def _interp_axis(a: np.ndarray, pos: np.ndarray, n_or_targets, axis: int) -> np.ndarray:
    targets = np.arange(n_or_targets) if np.isscalar(n_or_targets) else np.asarray(n_or_targets)
    if pos.size == 1:
        return np.repeat(np.take(a, [0], axis=axis), targets.size, axis=axis)
    j = np.clip(np.searchsorted(pos, targets, side="right") - 1, 0, pos.size - 2)
    f = ((targets - pos[j]) / (pos[j + 1] - pos[j])).astype(_F32)
    shape = [1] * a.ndim
    shape[axis] = f.size
    f = f.reshape(shape)
    a0 = np.take(a, j, axis=axis)
    a1 = np.take(a, j + 1, axis=axis)
    a1 -= a0
    a1 *= f
    a0 += a1
    return a0


def _upsample(
    a: np.ndarray, ry: np.ndarray, rx: np.ndarray, ny: int, nx: int, *, rows: slice | None = None, cols: slice | None = None
) -> np.ndarray:
    """Linear interpolation of ``a`` sampled at rows ``ry`` and columns ``rx`` to full
    resolution (optionally only the given row and column ranges)."""
    ty = np.arange(ny)[rows] if rows is not None else ny
    tx = np.arange(nx)[cols] if cols is not None else nx
    return _interp_axis(_interp_axis(a, ry, ty, 1), rx, tx, 2)


def _fine_box(mask: np.ndarray, ry: np.ndarray, rx: np.ndarray, box: tuple[slice, slice, slice]) -> tuple[slice, slice, slice]:
    """Grid index box covering the True cells of a coarse mask (with one coarse cell of margin)."""
    zz = np.nonzero(mask.any(axis=(1, 2)))[0]
    yy = np.nonzero(mask.any(axis=(0, 2)))[0]
    xx = np.nonzero(mask.any(axis=(0, 1)))[0]
    y0, y1 = ry[max(yy[0] - 1, 0)], ry[min(yy[-1] + 1, ry.size - 1)]
    x0, x1 = rx[max(xx[0] - 1, 0)], rx[min(xx[-1] + 1, rx.size - 1)]
    return (
        slice(box[0].start + int(zz[0]), box[0].start + int(zz[-1]) + 1),
        slice(box[1].start + int(y0), box[1].start + int(y1) + 1),
        slice(box[2].start + int(x0), box[2].start + int(x1) + 1),
    )
