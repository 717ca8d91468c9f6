"""Find the femoral shafts: the one large, round, solitary bone cross-section per thigh.

Over most of the thigh the femur is the only bone: an axial slice through it shows one filled,
nearly round cross-section (cortex plus marrow) per leg with no other bone piece close by. No other
bone of the body looks like that over a run of several centimetres: the tibia has the fibula beside it,
the distal femur has the patella in front of it, the spine sits on the midline with its posterior
elements and ribs or iliac wings around it, a forearm has two bones. A run of such cross-sections is
therefore a reliable anchor (a *marker*) for the femur, from which the rest of the bone is grown.

All arrays here are in the splitter's canonical view: axis 0 towards the head (superior), axis 1
towards posterior, axis 2 towards the patient's left; spacing in mm along those axes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

logger = logging.getLogger(__name__)

#: 2D (in-plane, 8-connected) labelling of every axial slice at once.
_IN_PLANE_8 = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE_8[1] = True


@dataclass(frozen=True)
class ShaftCriteria:
    """What a femoral-shaft cross-section looks like (lengths in mm, areas in mm^2).

    Parameters
    ----------
    min_area_mm2, max_area_mm2:
        Area of the filled cross-section (cortex + marrow). An adult femoral shaft is 2.5-3.5 cm across
        (500-1000 mm^2); the bounds leave room for children and large or diseased bones.
    min_roundness:
        sqrt(minor / major second moment): 1 for a circle. The shaft is mildly elliptic (~0.8).
    min_fill:
        Area over the area of the moment-equivalent ellipse: ~1 for a convex, ellipse-like piece;
        the L-, C- or ring-shaped pieces of pelvis, spine or condyles score lower.
    clearance_mm:
        No other bone piece may lie closer than this to the cross-section (edge to edge,
        approximating both as discs). Rejects tibia (fibula beside it), distal femur next to the
        patella, vertebrae, forearm bones. A piece counts when it has at least
        ``clearance_area_mm2`` and either ``solid_area_mm2`` or a peak of ``clearance_peak_hu``:
        contrast-filled vessels (femoral artery and vein, 30-80 mm^2, 150-500 HU) do not count.
    midline_clearance_mm, midline_bone_area_mm2:
        Applied when the body midline is known. A slice with a bone piece of at least
        ``midline_bone_area_mm2`` centred closer than ``midline_clearance_mm`` to the midline (spine,
        sacrum, sternum, pubic symphysis; bone-dense, unlike the table or a contrast-filled bladder)
        is not a thigh slice: it cannot hold a femoral shaft. This
        rejects the humeri of a patient scanned with the arms down, which otherwise look like
        femoral shafts. Cross-sections centred that close to the midline are rejected too.
    max_step_mm:
        Largest in-plane move of the centre between neighbouring slices of one shaft (the shaft is
        inclined ~10 degrees; a few mm per slice covers thick slices).
    max_gap_mm:
        Longest run of slices without a qualifying cross-section inside one shaft (a lesion can
        deform a few slices).
    extend_area_ratio, extend_min_roundness:
        A found run is then followed slice by slice (the piece overlapping the previous slice's)
        while the cross-section keeps within this factor of the run's median area and stays round:
        this carries the run across slices a lesion or a nearby vessel disqualified, up to where
        the trochanters or the condyles begin.
    join_gap_mm:
        Runs one above the other and in line (a lesion can interrupt a shaft over several cm) are
        joined into one when the gap between them is at most this long.
    min_length_mm:
        Shortest shaft run accepted as a femur.
    """

    min_area_mm2: float = 150.0
    max_area_mm2: float = 2500.0
    min_roundness: float = 0.55
    min_fill: float = 0.75
    clearance_mm: float = 35.0
    clearance_area_mm2: float = 40.0
    solid_area_mm2: float = 150.0
    clearance_peak_hu: float = 600.0
    midline_clearance_mm: float = 30.0
    midline_bone_area_mm2: float = 100.0
    max_step_mm: float = 6.0
    max_gap_mm: float = 15.0
    min_length_mm: float = 40.0
    extend_area_ratio: float = 1.5
    extend_min_roundness: float = 0.5
    join_gap_mm: float = 120.0


@dataclass
class ShaftTrack:
    """One femoral shaft: a run of axial cross-sections, lowest slice first.

    Attributes
    ----------
    slices:
        Canonical slice indices (axis 0, increasing towards the head).
    labels:
        For each slice, the id of the cross-section in the in-plane label array.
    centres_mm:
        (n, 2) in-plane centres in mm along canonical axes (posterior, left).
    areas_mm2:
        Cross-section areas.
    short:
        Found under looser rules in a view that ends a few cm below the lesser trochanters: the run may
        be only a few cm long and reach up into the trochanteric region.
    """

    slices: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    centres_mm: list[np.ndarray] = field(default_factory=list)
    areas_mm2: list[float] = field(default_factory=list)
    short: bool = False

    def length_mm(self, slice_mm: float) -> float:
        """Extent of the run along the body axis in mm (centre of first to centre of last slice)."""
        return (self.slices[-1] - self.slices[0]) * slice_mm if self.slices else 0.0

    @property
    def mean_centre_mm(self) -> np.ndarray:
        """Mean in-plane centre (posterior, left) in mm."""
        return np.mean(np.asarray(self.centres_mm), axis=0)


@dataclass(frozen=True)
class _Piece:
    label: int
    slice: int
    centre: np.ndarray  # (posterior, left) mm
    area: float
    radius: float  # radius of the disc of equal area, mm
    roundness: float
    fill: float
    peak: float  # highest intensity, HU


def _pieces(
    bone: np.ndarray, image: np.ndarray, spacing: tuple[float, float, float], min_area_mm2: float
) -> tuple[np.ndarray, list[_Piece]]:
    """Label the in-plane pieces of every slice and measure those of at least ``min_area_mm2``."""
    labels, n = ndi.label(bone, structure=_IN_PLANE_8)
    if n == 0:
        return labels, []
    _, sy, sx = spacing
    idx = np.nonzero(labels)
    lab = labels[idx]
    count = np.bincount(lab, minlength=n + 1).astype(np.float64)
    area = count * (sy * sx)
    keep = np.flatnonzero(area >= min_area_mm2)
    keep = keep[keep > 0]
    if keep.size == 0:
        return labels, []
    y = idx[1].astype(np.float64) * sy
    x = idx[2].astype(np.float64) * sx

    def total(w: np.ndarray) -> np.ndarray:
        return np.bincount(lab, w, minlength=n + 1)[keep]

    c = count[keep]
    z_mean = total(idx[0].astype(np.float64)) / c
    cy, cx = total(y) / c, total(x) / c
    # Second moments of the pixel set plus the moment of one pixel itself (pixel_size^2 / 12).
    vyy = total(y * y) / c - cy * cy + sy * sy / 12.0
    vxx = total(x * x) / c - cx * cx + sx * sx / 12.0
    vxy = total(x * y) / c - cx * cy
    half_trace = 0.5 * (vyy + vxx)
    root = np.sqrt(np.maximum(0.0, 0.25 * (vyy - vxx) ** 2 + vxy * vxy))
    lmax = np.maximum(half_trace + root, 1e-12)
    lmin = np.maximum(half_trace - root, 1e-12)
    ellipse_area = np.pi * 4.0 * np.sqrt(lmax * lmin)  # semi-axes 2 * sqrt(lambda)
    a = area[keep]
    peak_all = np.full(n + 1, -np.inf)
    np.maximum.at(peak_all, lab, image[idx])
    peak = peak_all[keep]
    pieces = [
        _Piece(
            label=int(keep[i]),
            slice=int(round(z_mean[i])),
            centre=np.array([cy[i], cx[i]]),
            area=float(a[i]),
            radius=float(np.sqrt(a[i] / np.pi)),
            roundness=float(np.sqrt(lmin[i] / lmax[i])),
            fill=float(a[i] / ellipse_area[i]),
            peak=float(peak[i]),
        )
        for i in range(keep.size)
    ]
    return labels, pieces


def find_shaft_tracks(
    bone: np.ndarray,
    image: np.ndarray,
    spacing: tuple[float, float, float],
    *,
    criteria: ShaftCriteria,
    midline_mm: float | None,
) -> tuple[np.ndarray, list[ShaftTrack]]:
    """Find runs of femoral-shaft cross-sections in a filled bone mask.

    Parameters
    ----------
    bone:
        Bool (S, P, L) canonical array: bone with each slice's holes (marrow) filled.
    image:
        The CT (HU) on the same grid.
    spacing:
        Voxel size in mm along (S, P, L).
    criteria:
        Shape rules, see :class:`ShaftCriteria`.
    midline_mm:
        Position of the body midline along the canonical left axis (mm from index 0), or None when
        unknown (e.g. the field of view cuts the body).

    Returns
    -------
    labels:
        int32 (S, P, L) in-plane label array the tracks' ``labels`` refer to.
    tracks:
        Runs at least ``criteria.min_length_mm`` long, longest first.
    """
    labels, pieces = _pieces(bone, image, spacing, criteria.clearance_area_mm2)
    by_slice: dict[int, list[_Piece]] = {}
    for p in pieces:
        by_slice.setdefault(p.slice, []).append(p)

    candidates: dict[int, list[_Piece]] = {}
    for z, group in by_slice.items():
        if midline_mm is not None and any(
            q.area >= criteria.midline_bone_area_mm2
            and q.peak >= criteria.clearance_peak_hu
            and abs(q.centre[1] - midline_mm) < criteria.midline_clearance_mm
            for q in group
        ):
            continue
        for p in group:
            if not (criteria.min_area_mm2 <= p.area <= criteria.max_area_mm2):
                continue
            if p.roundness < criteria.min_roundness or p.fill < criteria.min_fill:
                continue
            if midline_mm is not None and abs(p.centre[1] - midline_mm) < criteria.midline_clearance_mm:
                continue
            crowded = any(
                q.label != p.label
                and (q.area >= criteria.solid_area_mm2 or q.peak >= criteria.clearance_peak_hu)
                and np.linalg.norm(q.centre - p.centre) - q.radius - p.radius < criteria.clearance_mm
                for q in group
            )
            if not crowded:
                candidates.setdefault(z, []).append(p)

    slice_mm = spacing[0]
    max_gap = max(1, int(np.floor(criteria.max_gap_mm / slice_mm)) + 1)
    open_tracks: list[ShaftTrack] = []
    done: list[ShaftTrack] = []
    for z in sorted(candidates):
        still_open = []
        for t in open_tracks:
            (still_open if z - t.slices[-1] <= max_gap else done).append(t)
        open_tracks = still_open
        claimed: set[int] = set()
        # Extend the longest open tracks first so that a stray piece cannot steal a shaft's slice.
        for t in sorted(open_tracks, key=lambda t: -len(t.slices)):
            gap = z - t.slices[-1]
            reach = criteria.max_step_mm * gap
            best, best_d = None, reach
            for p in candidates[z]:
                d = float(np.linalg.norm(p.centre - t.centres_mm[-1]))
                if p.label not in claimed and d <= best_d:
                    best, best_d = p, d
            if best is not None:
                claimed.add(best.label)
                t.slices.append(z)
                t.labels.append(best.label)
                t.centres_mm.append(best.centre)
                t.areas_mm2.append(best.area)
        for p in candidates[z]:
            if p.label not in claimed:
                open_tracks.append(ShaftTrack([z], [p.label], [p.centre], [p.area]))
    done.extend(open_tracks)
    tracks = [t for t in done if t.length_mm(slice_mm) >= criteria.min_length_mm]
    piece_of = {p.label: p for p in pieces}
    for t in tracks:
        _extend(t, labels, piece_of, criteria, up=True)
        _extend(t, labels, piece_of, criteria, up=False)
    tracks = _merge_overlapping(tracks)
    tracks = _join_collinear(tracks, spacing[0], criteria)
    tracks.sort(key=lambda t: -t.length_mm(slice_mm))
    logger.debug(
        "shaft search: %d pieces, %d candidate slices, %d runs >= %.0f mm",
        len(pieces), len(candidates), len(tracks), criteria.min_length_mm,
    )
    return labels, tracks


def choose_femur_tracks(tracks: list[ShaftTrack], slice_mm: float) -> list[ShaftTrack]:
    """Pick at most two tracks, one per thigh.

    Two tracks are a pair when they overlap along the body axis and lie side by side (centres 6-45 cm
    apart). The pair with the longest combined length wins; with no pair, the longest track alone.
    """
    if len(tracks) <= 1:
        return list(tracks)
    best: tuple[float, list[ShaftTrack]] = (tracks[0].length_mm(slice_mm), [tracks[0]])
    for i, a in enumerate(tracks):
        for b in tracks[i + 1:]:
            lo = max(a.slices[0], b.slices[0])
            hi = min(a.slices[-1], b.slices[-1])
            overlap = (hi - lo) * slice_mm
            shorter = min(a.length_mm(slice_mm), b.length_mm(slice_mm))
            apart = abs(a.mean_centre_mm[1] - b.mean_centre_mm[1])
            if overlap >= 0.5 * shorter and 60.0 <= apart <= 450.0:
                score = a.length_mm(slice_mm) + b.length_mm(slice_mm)
                if score > best[0]:
                    best = (score, [a, b])
    return best[1]


def _extend(
    track: ShaftTrack, labels: np.ndarray, piece_of: dict[int, _Piece], criteria: ShaftCriteria, *, up: bool
) -> None:
    """Follow a run beyond its end through the pieces that overlap it slice by slice."""
    ref = float(np.median(track.areas_mm2))
    step = 1 if up else -1
    z = track.slices[-1] if up else track.slices[0]
    current = labels[z] == (track.labels[-1] if up else track.labels[0])
    while 0 <= z + step < labels.shape[0]:
        nxt = labels[z + step][current]
        nxt = nxt[nxt > 0]
        if nxt.size < 0.5 * current.sum():
            break
        ids, counts = np.unique(nxt, return_counts=True)
        p = piece_of.get(int(ids[np.argmax(counts)]))
        if (
            p is None
            or not ref / criteria.extend_area_ratio <= p.area <= ref * criteria.extend_area_ratio
            or p.roundness < criteria.extend_min_roundness
            or p.fill < criteria.min_fill
        ):
            break
        z += step
        current = labels[z] == p.label
        if up:
            track.slices.append(z)
            track.labels.append(p.label)
            track.centres_mm.append(p.centre)
            track.areas_mm2.append(p.area)
        else:
            track.slices.insert(0, z)
            track.labels.insert(0, p.label)
            track.centres_mm.insert(0, p.centre)
            track.areas_mm2.insert(0, p.area)


def _merge_overlapping(tracks: list[ShaftTrack]) -> list[ShaftTrack]:
    """Merge runs that share a cross-section (two runs of one shaft joined by their extensions)."""
    merged: list[ShaftTrack] = []
    for t in tracks:
        keys = set(zip(t.slices, t.labels))
        for m in merged:
            if keys & set(zip(m.slices, m.labels)):
                entries = {z: (lab, c, a) for z, lab, c, a in zip(m.slices, m.labels, m.centres_mm, m.areas_mm2)}
                for z, lab, c, a in zip(t.slices, t.labels, t.centres_mm, t.areas_mm2):
                    entries.setdefault(z, (lab, c, a))
                order = sorted(entries)
                m.slices = order
                m.labels = [entries[z][0] for z in order]
                m.centres_mm = [entries[z][1] for z in order]
                m.areas_mm2 = [entries[z][2] for z in order]
                break
        else:
            merged.append(t)
    return merged


def _join_collinear(tracks: list[ShaftTrack], slice_mm: float, criteria: ShaftCriteria) -> list[ShaftTrack]:
    """Join runs that continue each other along the body axis (one shaft interrupted by a lesion)."""
    tracks = sorted(tracks, key=lambda t: t.slices[0])
    joined: list[ShaftTrack] = []
    for t in tracks:
        for j in joined:
            gap_mm = (t.slices[0] - j.slices[-1]) * slice_mm
            if not 0 < gap_mm <= criteria.join_gap_mm:
                continue
            # In line: the lower run's end and the upper run's start nearly meet in the plane
            # (a femoral shaft leans ~10 degrees: ~0.2 mm per mm along the body axis).
            shift = float(np.linalg.norm(t.centres_mm[0] - j.centres_mm[-1]))
            if shift <= 10.0 + 0.25 * gap_mm:
                j.slices += t.slices
                j.labels += t.labels
                j.centres_mm += t.centres_mm
                j.areas_mm2 += t.areas_mm2
                break
        else:
            joined.append(t)
    joined.sort(key=lambda t: -t.length_mm(slice_mm))
    return joined
