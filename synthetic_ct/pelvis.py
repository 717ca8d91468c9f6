"""The bony pelvis and lower lumbar spine, built around the femoral heads.

Coordinates are those of the body frame (mm): ``u`` toward the patient's left, ``v`` posterior,
``w`` superior, origin midway between the two femoral head centres; the frame follows the
patient's roll on the table. Each acetabulum is a spherical cup around its femoral head with a
joint gap that is set per hip (and may be narrowed locally, as in osteoarthritis), so that the
femur splitter meets the real difficulty: a thin, partly bridged gap between head and cup.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from . import sdf as S
from .frames import Frame
from .parts import Part, chain_parts, ellipsoid_part, rotated_ellipsoid_part, round_cone_part

logger = logging.getLogger(__name__)

_F32 = np.float32


@dataclass(frozen=True)
class HipJoint:
    """The geometry of one hip joint in the body frame.

    Attributes
    ----------
    side
        ``"left"`` or ``"right"``.
    head_centre
        Femoral head centre (body frame, mm).
    head_radius
        mm.
    gap
        Mean joint gap between head and cup (mm, 1.5-4).
    cup_shift
        (3,) displacement of the cup centre from the head centre, mm. Its length is below the gap;
        the gap is narrowest on the side it points to.
    inclination, anteversion
        Orientation of the acetabular opening, degrees.
    """

    side: str
    head_centre: np.ndarray
    head_radius: float
    gap: float
    cup_shift: np.ndarray
    inclination: float
    anteversion: float

    @property
    def lateral(self) -> float:
        return 1.0 if self.side == "left" else -1.0

    @property
    def cup_centre(self) -> np.ndarray:
        return np.asarray(self.head_centre) + np.asarray(self.cup_shift)

    @property
    def cup_inner_radius(self) -> float:
        return self.head_radius + self.gap

    def opening(self) -> np.ndarray:
        """Unit normal of the acetabular opening (lateral, inferior, anterior), body frame."""
        inc, av = np.deg2rad(self.inclination), np.deg2rad(self.anteversion)
        return np.array([self.lateral * np.sin(inc) * np.cos(av), -np.sin(inc) * np.sin(av), -np.cos(inc)])

    def min_gap(self) -> float:
        """Narrowest distance between head surface and cup surface, mm."""
        return self.gap - float(np.linalg.norm(self.cup_shift))


@dataclass(frozen=True)
class PelvisParams:
    """Shape of the pelvis (mm, degrees, HU).

    Attributes
    ----------
    female
        Wider, shallower pelvis with a wider subpubic angle.
    scale
        Overall size factor.
    wing_flare
        Lateral flare of the iliac wings, degrees.
    crest_height
        Height of the iliac crest above the hip centres.
    sacrum_height
        Height of the S1 endplate above the hip centres.
    sacrum_depth
        Posterior position of the S1 body's anterior edge relative to the hip centres.
    symphysis_gap, si_gap
        Widths of the pubic symphysis and the sacroiliac joints.
    wing_thickness
        Thickness of the thin central iliac wing.
    cortex, cortex_hu, cancellous_hu
        Cortical thickness and densities of the pelvic bones.
    lumbar_levels
        Number of lumbar vertebrae modelled above the sacrum (5, plus T12 for abdominal views).
    disc_hu
        Density of the intervertebral discs.
    """

    female: bool
    scale: float
    wing_flare: float
    crest_height: float
    sacrum_height: float
    sacrum_depth: float
    symphysis_gap: float
    si_gap: float
    wing_thickness: float
    cortex: float
    cortex_hu: float
    cancellous_hu: float
    lumbar_levels: int
    disc_hu: float


def pelvis_frame(midpoint_world: np.ndarray, body_rotation: np.ndarray) -> Frame:
    """Body frame: LPS -> (u, v, w) around the hip midpoint, following the patient's roll."""
    return Frame(matrix=np.asarray(body_rotation).T, origin=np.asarray(midpoint_world, dtype=np.float64))


# ---------------------------------------------------------------------- acetabulum


def cup_part(hip: HipJoint, *, wall: float, rim: float) -> Part:
    """Acetabular cup: a spherical shell around the head, open toward :meth:`HipJoint.opening`.

    ``rim`` is how far (mm) past the cup centre the rim plane lies along the opening: positive
    values wrap the cup beyond the head's equator.
    """
    c = hip.cup_centre
    r_in = hip.cup_inner_radius
    r_out = r_in + wall
    n = hip.opening().astype(_F32)
    # Acetabular fossa: a shallow pit medially and inferiorly where the gap is wider (fat pad).
    fossa_dir = np.array([-hip.lateral * 0.75, -0.1, -0.65])
    fossa_dir /= np.linalg.norm(fossa_dir)
    r_f = 0.42 * r_in
    fossa_c = (fossa_dir * (r_in + 3.5 - r_f)).astype(_F32)
    cx, cy, cz = (_F32(v) for v in c)

    def fn(u, v, w):
        du, dv, dw = u - cx, v - cy, w - cz
        rho = np.sqrt(du * du + dv * dv + dw * dw)
        shell = np.maximum(rho - _F32(r_out), _F32(r_in) - rho)
        plane = du * n[0] + dv * n[1] + dw * n[2] - _F32(rim)
        d = S.smooth_intersect(shell, plane, 2.0)
        fossa = S.sphere(du - fossa_c[0], dv - fossa_c[1], dw - fossa_c[2], r_f)
        return S.smooth_subtract(d, fossa, 1.5)

    return Part(f"acetabulum_{hip.side}", fn, c - r_out, c + r_out, "union", 3.0)


# ---------------------------------------------------------------------- iliac wing


def iliac_wing_part(hip: HipJoint, p: PelvisParams, *, si_plane: tuple[np.ndarray, np.ndarray]) -> Part:
    """The ilium as a curved plate: in every axial section an arc around a centre anteromedial to
    it, flaring laterally as it rises, thick at the crest, near the sacroiliac joint and above the
    acetabulum, thin in the iliac fossa."""
    l = hip.lateral
    sc = p.scale
    h = np.asarray(hip.head_centre)
    ou = abs(h[0]) - 55.0 * sc  # arc centre, lateral coordinate (unsigned)
    ov = h[1] - 20.0 * sc
    r0 = 82.0 * sc
    tan_flare = np.tan(np.deg2rad(p.wing_flare))
    th_ant, th_post = np.deg2rad(-22.0), np.deg2rad(84.0)
    crest = p.crest_height
    n_si, p_si = si_plane

    def fn(u, v, w):
        uu = u * _F32(l)  # lateral coordinate, positive on this side
        wr = w - _F32(h[2])
        du, dv = uu - _F32(ou), v - _F32(ov)
        rho = np.sqrt(du * du + dv * dv)
        theta = np.arctan2(dv, du)
        radius = _F32(r0) + (wr - _F32(40.0 * sc)) * _F32(tan_flare)
        s = S.clamp((theta - _F32(th_ant)) * _F32(1.0 / (th_post - th_ant)), 0.0, 1.0)
        # Crest: low at the anterior superior spine, highest a third of the way back, then down
        # toward the posterior superior spine.
        top = _F32(crest) * (_F32(0.58) + _F32(0.42) * np.sin(np.pi * np.minimum(s / 0.7, 1.0) * 0.5 + 0.0) ** 2) - _F32(28.0 * sc) * S.smoothstep(s, 0.75, 1.0)
        bottom = _F32(18.0 * sc) + _F32(22.0 * sc) * S.smoothstep(s, 0.8, 1.0)
        # Thickness: thin fossa, thick crest, thick body above the cup and near the SI joint.
        t = _F32(p.wing_thickness)
        t = t + _F32(9.0 * sc) * S.smoothstep(wr, top - 18.0 * sc, top)
        t = t + _F32(16.0 * sc) * S.smoothstep(wr, bottom + 30.0 * sc, bottom)
        t = t + _F32(22.0 * sc) * S.smoothstep(s, 0.72, 0.95)
        plate = np.abs(rho - radius) - t * _F32(0.5)
        ends = np.maximum((_F32(th_ant) - theta) * radius, (theta - _F32(th_post)) * radius)
        vert = np.maximum(wr - top, bottom - wr)
        d = S.smooth_intersect(plate, ends, 3.0)
        d = S.smooth_intersect(d, vert, 4.0)
        # Stop short of the sacrum: the sacroiliac joint space.
        side_si = -((u - _F32(p_si[0])) * _F32(n_si[0]) + (v - _F32(p_si[1])) * _F32(n_si[1])) + _F32(p.si_gap)
        return np.maximum(d, side_si)

    rmax = r0 + (crest + 10.0) * tan_flare + 30.0 * sc
    lo = np.array([min(l * (ou - 5), l * (ou + rmax)), ov - rmax, h[2]])
    hi = np.array([max(l * (ou - 5), l * (ou + rmax)), ov + rmax, h[2] + crest + 10.0])
    return Part(f"ilium_{hip.side}", fn, lo, hi, "union", 6.0 * sc)


# ---------------------------------------------------------------------- whole pelvis


def pelvis_parts(hips: dict[str, HipJoint], p: PelvisParams) -> tuple[list[Part], dict[str, np.ndarray]]:
    """Primitives of the pelvis and lumbar spine in the body frame, and a few landmarks.

    ``hips`` must hold both sides (a pelvis has two acetabula even when only one femur is in
    view).
    """
    sc = p.scale
    hl, hr = np.asarray(hips["left"].head_centre), np.asarray(hips["right"].head_centre)
    mid = 0.5 * (hl + hr)
    half = 0.5 * abs(hl[0] - hr[0])
    parts: list[Part] = []
    marks: dict[str, np.ndarray] = {}

    # Sacrum centreline (midsagittal), from the S1 endplate to the coccyx tip.
    s1 = np.array([0.0, mid[1] + p.sacrum_depth + 16.0 * sc, mid[2] + p.sacrum_height])
    sac = [
        s1,
        s1 + np.array([0.0, 14.0, -28.0]) * sc,
        s1 + np.array([0.0, 26.0, -55.0]) * sc,
        s1 + np.array([0.0, 32.0, -80.0]) * sc,
        s1 + np.array([0.0, 30.0, -102.0]) * sc,
        s1 + np.array([0.0, 18.0, -125.0]) * sc,
        s1 + np.array([0.0, 6.0, -140.0]) * sc,
    ]
    half_w = np.array([24.0, 40.0, 34.0, 24.0, 15.0, 9.0, 6.0]) * sc
    half_t = np.array([16.0, 13.0, 10.0, 8.0, 7.0, 5.0, 4.0]) * sc
    marks["s1"] = s1
    # Sacroiliac joint planes: the sacrum is wider in front, so each joint runs from
    # anterolateral to posteromedial.
    si_planes = {}
    for side, l in (("left", 1.0), ("right", -1.0)):
        ang = np.deg2rad(24.0)
        n = np.array([l * np.cos(ang), np.sin(ang), 0.0])
        p_si = np.array([l * (half - 40.0 * sc), s1[1] + 10.0 * sc, 0.0])
        si_planes[side] = (n, p_si)

    # Sacrum segments as oriented ellipsoids along the curved centreline.
    for i in range(len(sac) - 1):
        a, b = sac[i], sac[i + 1]
        axis = (b - a) / np.linalg.norm(b - a)
        lat = np.array([1.0, 0.0, 0.0])
        ant = np.cross(axis, lat)
        axes = np.stack([lat, ant, axis])
        seg_len = np.linalg.norm(b - a)
        radii = (0.5 * (half_w[i] + half_w[i + 1]), 0.5 * (half_t[i] + half_t[i + 1]), 0.6 * seg_len)
        parts.append(rotated_ellipsoid_part(f"sacrum[{i}]", 0.5 * (a + b), radii, axes, k=7.0 * sc))
    for side, l in (("left", 1.0), ("right", -1.0)):
        n, p_si = si_planes[side]
        ala = ellipsoid_part(f"sacral_ala_{side}", s1 + np.array([l * 34.0, 4.0, -22.0]) * sc, np.array([26.0, 20.0, 34.0]) * sc, k=8.0 * sc)
        fn0 = ala.fn
        nn = n.astype(_F32)
        ps = p_si.astype(_F32)

        def cut(u, v, w, fn0=fn0, nn=nn, ps=ps):
            return np.maximum(fn0(u, v, w), (u - ps[0]) * nn[0] + (v - ps[1]) * nn[1])

        parts.append(Part(ala.name, cut, ala.lo, ala.hi, "union", ala.k))
    # Sacral canal and foramina.
    canal = [q + np.array([0.0, 0.55 * t, 0.0]) for q, t in zip(sac[:5], half_t[:5])]
    parts += [
        Part(pp.name, pp.fn, pp.lo, pp.hi, "subtract", 1.5)
        for pp in chain_parts("sacral_canal", canal, [7.0 * sc, 6.0 * sc, 5.0 * sc, 4.0 * sc, 3.0 * sc])
    ]
    for i in range(1, 5):
        q = 0.5 * (sac[i - 1] + sac[i]) if i > 1 else sac[1] + np.array([0.0, 0.0, 6.0]) * sc
        for l in (1.0, -1.0):
            parts.append(
                round_cone_part(
                    f"sacral_foramen_{i}",
                    q + np.array([l * (15.0 - i), -30.0, 0.0]) * sc,
                    q + np.array([l * (15.0 - i), 30.0, 0.0]) * sc,
                    (4.5 - 0.5 * i) * sc,
                    (4.5 - 0.5 * i) * sc,
                    k=1.0,
                    op="subtract",
                )
            )

    # Lumbar vertebrae above S1 (lordosis: each level a little further forward).
    level_top = s1 + np.array([0.0, 0.0, 0.0])
    body_h = 27.0 * sc
    disc_h = 10.0 * sc
    centres = []
    for i in range(p.lumbar_levels):
        c_body = level_top + np.array([0.0, -(4.0 + 3.0 * i) * sc, disc_h + body_h / 2 + i * (body_h + disc_h)])
        centres.append(c_body)
        rl, ra = (25.0 - 1.2 * i) * sc, (18.0 - 0.5 * i) * sc
        cz = c_body.astype(_F32)
        hb = _F32(body_h / 2)

        def body(u, v, w, cz=cz, rl=rl, ra=ra, hb=hb):
            d2 = S.ellipse_2d(u - cz[0], v - cz[1], rl, ra)
            dz = np.abs(w - cz[2]) - hb
            # Rounded box: exact outside for the cylinder, edges softened by 2 mm.
            r = _F32(2.0)
            q1 = np.maximum(d2 + r, 0.0)
            q2 = np.maximum(dz + r, 0.0)
            return np.sqrt(q1 * q1 + q2 * q2) + np.minimum(np.maximum(d2, dz), 0.0) - r

        ext = np.array([rl, ra, body_h / 2])
        parts.append(Part(f"vertebral_body[{i}]", body, c_body - ext, c_body + ext, "union", 0.0))
        # Posterior arch: pedicles, laminae, spinous and transverse processes.
        back = c_body + np.array([0.0, ra + 2.0 * sc, 2.0 * sc])
        for l in (1.0, -1.0):
            ped0 = back + np.array([l * 11.0, -6.0, 0.0]) * sc
            ped1 = back + np.array([l * 12.0, 12.0, 0.0]) * sc
            lam = back + np.array([0.0, 26.0, -3.0]) * sc
            parts.append(round_cone_part("pedicle", ped0, ped1, 5.0 * sc, 5.5 * sc, k=2.0))
            parts.append(round_cone_part("lamina", ped1, lam, 5.0 * sc, 4.5 * sc, k=2.0))
            tp_len = (28.0 if i == 0 else 34.0) * sc
            parts.append(round_cone_part("transverse_process", ped1, ped1 + np.array([l * tp_len, 6.0 * sc, 2.0 * sc]), 5.0 * sc, 3.0 * sc, k=3.0))
            parts.append(round_cone_part("articular_process", ped1 + np.array([0, 4.0, 0]) * sc, ped1 + np.array([l * 2.0, 6.0, -14.0]) * sc, 5.5 * sc, 4.5 * sc, k=2.0))
        parts.append(round_cone_part("spinous_process", back + np.array([0.0, 24.0, -2.0]) * sc, back + np.array([0.0, 52.0, -10.0]) * sc, 5.0 * sc, 5.0 * sc, k=3.0))
    marks["vertebral_centres"] = np.array(centres) if centres else np.zeros((0, 3))
    marks["disc_size"] = np.array([body_h, disc_h])

    for side, hip in hips.items():
        l = hip.lateral
        h = np.asarray(hip.head_centre)
        rin = hip.cup_inner_radius
        parts.append(cup_part(hip, wall=11.0 * sc, rim=rin * 0.12))
        parts.append(iliac_wing_part(hip, p, si_plane=si_planes[side]))
        # Supra-acetabular bone joining cup and ilium; posterior column behind the cup.
        parts.append(ellipsoid_part(f"iliac_body_{side}", h + np.array([-l * 10.0, 8.0, rin + 10.0]) * np.array([1, 1, 1]), np.array([24.0, 30.0, 20.0]) * sc, k=8.0 * sc))
        parts.append(ellipsoid_part(f"posterior_column_{side}", h + np.array([-l * 12.0, 26.0, -4.0]) * sc, np.array([13.0, 12.0, 30.0]) * sc, k=7.0 * sc))
        parts.append(ellipsoid_part(f"anterior_column_{side}", h + np.array([-l * 10.0, -25.0, 4.0]) * sc, np.array([13.0, 10.0, 24.0]) * sc, k=7.0 * sc))
        # Pubis: superior ramus to the body at the symphysis, inferior ramus down to the ischium.
        sym_u = l * (p.symphysis_gap / 2 + 13.0 * sc)
        pub_body = np.array([sym_u, h[1] - (48.0 if not p.female else 52.0) * sc, h[2] - 40.0 * sc])
        ischial_tub = h + np.array([-l * (26.0 if not p.female else 20.0), 24.0, -54.0]) * sc
        junction = np.array([l * (half - (40.0 if not p.female else 30.0) * sc), h[1] - 10.0 * sc, h[2] - 70.0 * sc])
        parts.append(round_cone_part(f"superior_pubic_ramus_{side}", h + np.array([-l * 12.0, -20.0, -10.0]) * sc, pub_body + np.array([0.0, 0.0, 6.0]) * sc, 12.0 * sc, 9.5 * sc, k=6.0))
        sym_gap = p.symphysis_gap
        pb = ellipsoid_part(f"pubic_body_{side}", pub_body, np.array([13.0, 9.0, 19.0]) * sc, k=5.0)
        fn_pb = pb.fn

        def pubic_body(u, v, w, fn_pb=fn_pb, l=l):
            return np.maximum(fn_pb(u, v, w), _F32(sym_gap / 2) - u * _F32(l))

        parts.append(Part(pb.name, pubic_body, pb.lo, pb.hi, "union", 5.0))
        parts.append(round_cone_part(f"inferior_pubic_ramus_{side}", pub_body + np.array([l * 2.0, 2.0, -14.0]) * sc, junction, 7.5 * sc, 6.5 * sc, k=5.0))
        parts.append(round_cone_part(f"ischium_{side}", h + np.array([-l * 8.0, 20.0, -16.0]) * sc, ischial_tub, 14.0 * sc, 12.0 * sc, k=7.0))
        parts.append(ellipsoid_part(f"ischial_tuberosity_{side}", ischial_tub + np.array([l * 2.0, 4.0, -6.0]) * sc, np.array([13.0, 17.0, 18.0]) * sc, k=6.0))
        parts.append(round_cone_part(f"ischial_ramus_{side}", ischial_tub + np.array([0.0, -6.0, -8.0]) * sc, junction, 8.0 * sc, 6.5 * sc, k=5.0))
        parts.append(round_cone_part(f"ischial_spine_{side}", h + np.array([-l * 22.0, 34.0, -2.0]) * sc, h + np.array([-l * 34.0, 40.0, -6.0]) * sc, 6.0 * sc, 3.0 * sc, k=4.0))
        marks[f"pubic_body_{side}"] = pub_body
        marks[f"ischial_tuberosity_{side}"] = ischial_tub
    # Nothing of the pelvis may enter the joint space: a final sharp cut keeps every part out of
    # the sphere of the cup's inner surface, so the gap is exactly what HipJoint says.
    for side, hip in hips.items():
        c = hip.cup_centre
        r_in = hip.cup_inner_radius
        cx, cy, cz = (_F32(v) for v in c)
        parts.append(
            Part(
                f"joint_space_{side}",
                lambda u, v, w, cx=cx, cy=cy, cz=cz, r=r_in: S.sphere(u - cx, v - cy, w - cz, r),
                c - r_in,
                c + r_in,
                "subtract",
                0.0,
            )
        )
    return parts, marks
