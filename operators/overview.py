"""Overview pictures of a CT with a label map laid over it.

People who check a result would rather look than read: this renders one PNG with a coronal projection of
the whole field of view and a few axial slices, with each label drawn in its own colour. Views follow the
radiological convention: the patient's right is on the left of the picture, the head at the top, anterior
at the top of axial slices. Orientation is taken from the volume's affine, never from array indices.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np

from operators.atomic_files import atomic_output_path

logger = logging.getLogger(__name__)

#: Array axes of the display orientation: axis 0 towards the Feet (row 0 = head), axis 1 towards
#: Posterior, axis 2 towards the patient's Left (column 0 = patient right).
_DISPLAY_ORIENTATION = "FPL"


@dataclass(frozen=True)
class LabelStyle:
    """How one label value is drawn.

    Parameters
    ----------
    name:
        Legend text.
    color:
        Any matplotlib colour.
    priority:
        Where labels overlap in a projection, the higher priority is drawn (lesions over femurs).
    """

    name: str
    color: str
    priority: int = 0


#: Styles of the label values in docs/CONVENTIONS.md (ground truth and femur label maps).
DEFAULT_LABEL_STYLES: Mapping[int, LabelStyle] = {
    1: LabelStyle("left femur", "#1f77b4", 0),
    2: LabelStyle("right femur", "#2ca02c", 0),
    3: LabelStyle("lytic lesion", "#d62728", 2),
    4: LabelStyle("cyst", "#ffbf00", 1),
}


# Label maps are scanned this many slices (axis 0) at a time: whole-volume comparisons of a 512x512x600
# map would each allocate a 150 MB temporary (np.isin several of them).
_SLAB = 32


@dataclass(frozen=True)
class _LabelSummary:
    """What the overview needs from a label map, gathered in one pass over it.

    Attributes
    ----------
    projection:
        The map projected along the chosen axis, keeping per ray the label of highest priority.
    present:
        The styled label values that occur in the map, in the order of the styles.
    per_slice:
        Per styled value, its voxels in each slice (axis 0), int64 (n_slices,).
    labelled_per_slice:
        Voxels of any non-zero label in each slice (axis 0), int64 (n_slices,).
    """

    projection: np.ndarray
    present: list[int]
    per_slice: dict[int, np.ndarray]
    labelled_per_slice: np.ndarray


def _summarise_labels(labels: np.ndarray, styles: Mapping[int, LabelStyle], axis: int) -> _LabelSummary:
    """Projection along ``axis`` (1 or 2), values present and voxel counts per slice, slab by slab.

    One comparison per value and slab serves the projection, the counts and the presence: on a
    512x512x600 map each further whole-map pass costs about a second.
    """
    if axis not in (1, 2):
        raise ValueError(f"projection axis must be 1 or 2 (slab-wise along axis 0), got {axis}")
    n = labels.shape[0]
    out = np.zeros(np.delete(labels.shape, axis), dtype=labels.dtype)
    best = np.full(out.shape, -1, dtype=np.int16)
    per_slice = {value: np.zeros(n, dtype=np.int64) for value in styles}
    labelled = np.zeros(n, dtype=np.int64)
    for start in range(0, n, _SLAB):
        slab = labels[start:start + _SLAB]
        rows = slice(start, start + slab.shape[0])
        labelled[rows] = np.count_nonzero(slab.reshape(slab.shape[0], -1), axis=1)
        for value, style in styles.items():
            hit = slab == value
            per_slice[value][rows] = np.count_nonzero(hit.reshape(slab.shape[0], -1), axis=1)
            take = hit.any(axis=axis) & (style.priority > best[rows])
            out[rows][take] = value
            best[rows][take] = style.priority
    present = [value for value in styles if per_slice[value].any()]
    return _LabelSummary(projection=out, present=present, per_slice=per_slice, labelled_per_slice=labelled)


def _projection_labels(labels: np.ndarray, styles: Mapping[int, LabelStyle], axis: int) -> np.ndarray:
    """Project a label map along ``axis`` (1 or 2) keeping, per ray, the label of highest priority."""
    return _summarise_labels(labels, styles, axis).projection


def _overlay(ax, image: np.ndarray, labels: np.ndarray, styles: Mapping[int, LabelStyle],
             extent: tuple[float, float, float, float], window: tuple[float, float]) -> None:
    from matplotlib.colors import to_rgba

    ax.imshow(image, cmap="gray", vmin=window[0], vmax=window[1], extent=extent, interpolation="nearest")
    rgba = np.zeros(labels.shape + (4,), dtype=np.float32)
    for value, style in styles.items():
        rgba[labels == value] = to_rgba(style.color, alpha=0.45)
    ax.imshow(rgba, extent=extent, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def display_orientation(ct: hd.Volume, labels: np.ndarray) -> tuple[hd.Volume, np.ndarray]:
    """Bring a CT and its label map into display orientation (permutation and flips only).

    Returns the CT volume and the label array with axes (z, y, x) running towards the patient's feet,
    posterior and left: row 0 of a coronal or axial picture is the head or anterior side, column 0 the
    patient's right (radiological convention).
    """
    if labels.shape != ct.spatial_shape:
        raise ValueError(f"label map shape {labels.shape} does not match CT shape {ct.spatial_shape}")
    ct_d = ct.to_patient_orientation(_DISPLAY_ORIENTATION)
    lab_d = hd.Volume(labels, ct.affine, coordinate_system="PATIENT").to_patient_orientation(
        _DISPLAY_ORIENTATION
    ).array
    return ct_d, lab_d


def render_overview(
    ct: hd.Volume,
    labels: np.ndarray,
    out_path: Path,
    *,
    styles: Mapping[int, LabelStyle] = DEFAULT_LABEL_STYLES,
    title: str = "",
    window: tuple[float, float] = (-250.0, 1250.0),
) -> Path:
    """Render a coronal projection and up to three axial slices with labels to a PNG.

    Parameters
    ----------
    ct:
        CT volume in HU, array (z, y, x), affine index -> LPS mm, any orientation.
    labels:
        Label map with the same shape as ``ct.array``, integer values keyed in ``styles``; 0 is not drawn.
    out_path:
        PNG to write. Written to a temporary file in the same folder first, then renamed.
    styles:
        Colour, legend text and overlap priority of each label value.
    title:
        Figure title. Must not contain patient identifiers.
    window:
        Display window (low, high) in HU.

    Returns
    -------
    pathlib.Path
        ``out_path``.
    """
    # The object-oriented API, not pyplot: no global figure registry, so the overview can be drawn in a
    # thread beside other work (the study outputs draw it while the SEG is written).
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    ct_d, lab_d = display_orientation(ct, labels)
    image = ct_d.array
    sz, sy, sx = ct_d.spacing  # mm along (feet, posterior, left)
    nz, ny, nx = image.shape

    # Coronal: maximum intensity projection along anterior-posterior shows all bones at once.
    coronal = image.max(axis=1)
    summary = _summarise_labels(lab_d, styles, axis=1)
    coronal_labels = summary.projection

    axial_slices: list[tuple[str, int]] = []
    lesion_like = [v for v, s in styles.items() if s.priority > 0]
    if lesion_like:
        per_slice = sum(summary.per_slice[v] for v in lesion_like)
        if per_slice.any():
            axial_slices.append(("largest lesion", int(per_slice.argmax())))
    labelled = np.flatnonzero(summary.labelled_per_slice)
    if labelled.size:
        top, bottom = int(labelled[0]), int(labelled[-1])
        axial_slices.append(("proximal", top + (bottom - top) // 12))
        axial_slices.append(("mid", (top + bottom) // 2))
    else:
        axial_slices.append(("mid", nz // 2))
    axial_slices = axial_slices[:3]

    # Size the figure so the coronal panel (physical aspect) fills its height: no empty bands.
    panel_w = 3.2
    coronal_aspect = (nz * sz) / max(nx * sx, 1e-6)
    fig_h = min(max(1.3 * panel_w * coronal_aspect, panel_w), 12.0) + 0.9
    fig_w = 1.3 * panel_w + panel_w * len(axial_slices) + 0.4
    fig = Figure(figsize=(fig_w, fig_h), dpi=110)
    widths = [1.3] + [1.0] * len(axial_slices)
    grid = fig.add_gridspec(1, len(widths), width_ratios=widths, wspace=0.05)

    ax = fig.add_subplot(grid[0, 0])
    # extent = (left, right, bottom, top) in mm so the aspect is physical.
    _overlay(ax, coronal, coronal_labels, styles, (0, nx * sx, nz * sz, 0), window)
    ax.set_title("coronal MIP", fontsize=9)
    ax.text(2, nz * sz * 0.02, "R", color="white", fontsize=9, va="top")
    ax.text(nx * sx - 2, nz * sz * 0.02, "L", color="white", fontsize=9, va="top", ha="right")
    for name, k in axial_slices:
        ax.axhline(k * sz, color="white", lw=0.5, ls=":")
    for i, (name, k) in enumerate(axial_slices, start=1):
        axs = fig.add_subplot(grid[0, i])
        _overlay(axs, image[k], lab_d[k], styles, (0, nx * sx, ny * sy, 0), window)
        axs.set_title(f"axial, {name}", fontsize=9)

    handles = [Patch(color=styles[v].color, label=styles[v].name) for v in summary.present]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)

    out_path = Path(out_path)
    with atomic_output_path(out_path) as tmp:
        fig.savefig(tmp, bbox_inches="tight", format="png")
    logger.info("wrote overview %s", out_path.name)
    return out_path
