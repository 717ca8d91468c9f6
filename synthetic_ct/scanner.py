"""Image formation: what the scanner does to the ideal densities.

- the slice profile (blur along z to the nominal slice thickness);
- the in-plane point-spread function of the reconstruction kernel (Gaussian blur, with the edge
  overshoot of sharp bone kernels), applied in the Fourier domain together with
- correlated noise with the texture of filtered back-projection, stronger in slices through
  more tissue;
- streaks from metal;
- padding outside the reconstruction circle, rounding to integers and clipping to the stored
  range.

It also derives the other two series of the study from the same ideal densities: a thick
soft-tissue series (slab averages) and a frontal localizer (a projection).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.fft
import scipy.ndimage as ndi

from .grid import ScannerGrid
from .tissues import Tissue

logger = logging.getLogger(__name__)

_F32 = np.float32

#: Water's linear attenuation at CT energies, 1/mm (for the localizer's projection).
MU_WATER = 0.019


@dataclass(frozen=True)
class Kernel:
    """A reconstruction kernel.

    Attributes
    ----------
    name
        What scanners call it (written to ConvolutionKernel).
    sigma_mm
        In-plane Gaussian PSF, mm.
    sharpen
        Edge-enhancement gain of the kernel (0: none).
    sharpen_sigma_mm
        Scale of the enhanced edges, mm.
    noise_peak
        Frequency (cycles/mm) where the noise power peaks.
    """

    name: str
    sigma_mm: float
    sharpen: float
    sharpen_sigma_mm: float
    noise_peak: float


@dataclass(frozen=True)
class Vendor:
    """How a scanner family names things (written to the DICOM headers).

    Attributes
    ----------
    manufacturer
        Manufacturer (0008,0070).
    models
        Candidate ManufacturerModelName values.
    bone_kernels, soft_kernels
        Candidate ConvolutionKernel names.
    software
        Candidate SoftwareVersions.
    """

    manufacturer: str
    models: tuple[str, ...]
    bone_kernels: tuple[str, ...]
    soft_kernels: tuple[str, ...]
    software: tuple[str, ...]


VENDORS: tuple[Vendor, ...] = (
    Vendor("SIEMENS", ("SOMATOM Definition AS+", "SOMATOM Force", "SOMATOM go.Top"), ("B70f", "Br64", "B60s"), ("B30f", "Br40", "I30f"), ("syngo CT VA48A", "syngo CT VB20A")),
    Vendor("GE MEDICAL SYSTEMS", ("Revolution CT", "LightSpeed VCT", "Discovery CT750 HD"), ("BONE", "BONEPLUS"), ("STANDARD", "SOFT"), ("gmp_vct.42", "revo_ct_22bc")),
    Vendor("Philips", ("iCT 256", "IQon - Spectral CT", "Ingenuity CT"), ("D", "YB", "E"), ("B", "C"), ("4.1.5", "5.0.1")),
    Vendor("Canon Medical Systems", ("Aquilion ONE", "Aquilion Prime SP"), ("FC30", "FC35", "FC81"), ("FC13", "FC18"), ("V10.2", "V8.9")),
)


def draw_vendor(rng: np.random.Generator) -> Vendor:
    """One of :data:`VENDORS`."""
    return VENDORS[int(rng.integers(0, len(VENDORS)))]


def draw_bone_kernel(rng: np.random.Generator, vendor: Vendor) -> Kernel:
    """A sharp kernel of the kind used for bone reconstructions."""
    name = str(rng.choice(vendor.bone_kernels))
    return Kernel(name, rng.uniform(0.35, 0.6), rng.uniform(0.15, 0.5), rng.uniform(0.8, 1.4), rng.uniform(0.28, 0.45))


def draw_soft_kernel(rng: np.random.Generator, vendor: Vendor) -> Kernel:
    """A smooth soft-tissue kernel."""
    name = str(rng.choice(vendor.soft_kernels))
    return Kernel(name, rng.uniform(0.7, 1.1), 0.0, 1.0, rng.uniform(0.1, 0.16))


def slice_profile_blur(volume: np.ndarray, *, thickness: float, spacing: float) -> None:
    """Blur ``volume`` (slices along axis 0) in place to a slice sensitivity profile whose FWHM is
    the nominal ``thickness`` (mm); ``spacing`` is the distance between slices (mm)."""
    sigma = thickness / 2.355 / spacing
    if sigma > 0.05:
        ndi.gaussian_filter1d(volume, sigma, axis=0, output=volume, mode="nearest", truncate=3.0)


def reconstruct(
    clean: np.ndarray,
    *,
    rng: np.random.Generator,
    pixel_spacing: float,
    kernel: Kernel,
    noise_sd: np.ndarray,
) -> np.ndarray:
    """Apply the kernel's PSF and add noise, slice by slice in the Fourier domain (in place).

    Parameters
    ----------
    clean
        (slices, rows, columns) float32 HU; overwritten with the result, which is returned.
    pixel_spacing
        mm.
    kernel
        PSF and noise texture.
    noise_sd
        Noise standard deviation per slice, HU, shape (slices,).
    """
    nz, ny, nx = clean.shape
    fy = np.fft.fftfreq(ny, d=pixel_spacing)[:, None]
    fx = np.fft.rfftfreq(nx, d=pixel_spacing)[None, :]
    f2 = fx * fx + fy * fy
    mtf = np.exp(-2.0 * np.pi**2 * kernel.sigma_mm**2 * f2)
    if kernel.sharpen > 0:
        mtf = mtf * (1.0 + kernel.sharpen * (1.0 - np.exp(-2.0 * np.pi**2 * kernel.sharpen_sigma_mm**2 * f2)))
    f = np.sqrt(f2)
    f0 = kernel.noise_peak * np.sqrt(2.0)
    amp = np.sqrt(f * np.exp(-((f / f0) ** 2)))
    weight = np.full_like(amp, 2.0)
    weight[:, 0] = 1.0
    if nx % 2 == 0:
        weight[:, -1] = 1.0
    amp = amp / np.sqrt((weight * amp**2).sum() / (nx * ny))
    mtf = mtf.astype(_F32)
    # White noise drawn directly in the half spectrum: complex normal coefficients whose
    # real and imaginary parts each have variance N/2 have the spectrum of real white noise of
    # unit variance (irfft2 keeps the Hermitian part of the self-conjugate bins).
    amp = (amp * np.sqrt(nx * ny / 2.0)).astype(_F32)
    step = 8
    for k in range(0, nz, step):
        sl = slice(k, min(nz, k + step))
        n = sl.stop - sl.start
        spec = scipy.fft.rfft2(clean[sl], workers=-1)
        spec *= mtf
        noise = rng.standard_normal((2, n, ny, fx.size), dtype=_F32)
        scale = amp[None] * noise_sd[sl].astype(_F32)[:, None, None]
        spec.real += noise[0] * scale
        spec.imag += noise[1] * scale
        clean[sl] = scipy.fft.irfft2(spec, s=(ny, nx), workers=-1)
    return clean


def noise_profile(tissue: np.ndarray, *, base_sd: float, pixel_area: float) -> np.ndarray:
    """Noise SD per slice (HU): higher through thick parts of the body (pelvis), lower through
    thin ones (knees), as with partial tube-current modulation."""
    body = (tissue != Tissue.AIR) & (tissue != Tissue.TABLE)
    area = body.reshape(body.shape[0], -1).sum(axis=1).astype(np.float64) * pixel_area
    ref = np.median(area[area > 0]) if (area > 0).any() else 1.0
    factor = np.clip((np.maximum(area, 1.0) / ref) ** 0.35, 0.7, 1.4)
    return (base_sd * factor).astype(_F32)


def metal_streaks(
    hu: np.ndarray,
    tissue: np.ndarray,
    grid: ScannerGrid,
    rng: np.random.Generator,
    *,
    strength: float,
) -> None:
    """Add streak artefacts radiating from metal to ``hu`` (in place).

    In every slice that holds metal, bright and dark streaks leave the metal along a set of
    directions that drift slowly from slice to slice; a dark band joins the metal to the other
    dense structures of the slice (beam hardening between them); a dark halo hugs the metal.
    """
    nz, ny, nx = hu.shape
    metal_slices = np.nonzero((tissue == Tissue.METAL).reshape(nz, -1).any(axis=1))[0]
    if metal_slices.size == 0:
        return
    ps = grid.pixel_spacing[0]
    yy, xx = np.mgrid[0:ny, 0:nx].astype(_F32)
    n_streaks = int(rng.integers(6, 12))
    base_angles = rng.uniform(0, np.pi, n_streaks)
    amps = rng.uniform(150, 500, n_streaks) * rng.choice([-1.0, 1.0], n_streaks)
    widths = rng.uniform(0.01, 0.035, n_streaks)
    drift = rng.normal(0, 0.004, n_streaks)
    for k in metal_slices:
        m = tissue[k] == Tissue.METAL
        area_mm2 = float(m.sum()) * ps * ps
        cy, cx = ndi.center_of_mass(m)
        dy, dx = yy - _F32(cy), xx - _F32(cx)
        r = np.sqrt(dx * dx + dy * dy) * _F32(ps)
        phi = np.arctan2(dy, dx)
        size = _F32(min(1.5, area_mm2 / 120.0) * strength)
        fall = _F32(1.0) / (_F32(1.0) + r / _F32(25.0))
        img = np.zeros((ny, nx), dtype=_F32)
        for j in range(n_streaks):
            ang = base_angles[j] + drift[j] * (k - metal_slices[0]) + rng.normal(0, 0.01)
            # Streaks are lines through the metal: both directions, angle modulo pi.
            dphi = np.angle(np.exp(2j * (phi - ang))) / 2.0
            img += _F32(amps[j]) * np.exp(-((dphi / widths[j]) ** 2)).astype(_F32)
        # Dark band toward the other dense bone in the slice.
        dense = (tissue[k] == Tissue.FEMUR_CORTEX) | (tissue[k] == Tissue.BONE_CORTEX)
        far = dense & (np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) * ps > 60.0)
        if far.any():
            oy, ox = ndi.center_of_mass(far)
            ang = np.arctan2(oy - cy, ox - cx)
            dphi = np.angle(np.exp(1j * (phi - ang)))
            img -= _F32(rng.uniform(150, 350)) * np.exp(-((dphi / 0.06) ** 2)).astype(_F32) * (r < np.hypot(oy - cy, ox - cx) * ps)
        halo = np.exp(-(((r - 8.0) / 6.0) ** 2)).astype(_F32) * _F32(-180.0)
        hu[k] += (img * fall + halo) * size * (~m)


def circle_mask(grid: ScannerGrid) -> np.ndarray:
    """(rows, columns) True inside the reconstruction circle (diameter = the field of view)."""
    ny, nx = grid.shape[1:]
    yy, xx = np.mgrid[0:ny, 0:nx]
    r = 0.5 * min(ny, nx)
    return (yy - (ny - 1) / 2.0) ** 2 + (xx - (nx - 1) / 2.0) ** 2 <= r * r


def quantise(hu: np.ndarray, *, lo: float, hi: float) -> np.ndarray:
    """Round to integer HU and clip to ``[lo, hi]`` in place (float32 kept)."""
    np.rint(hu, out=hu)
    np.maximum(hu, _F32(lo), out=hu)
    np.minimum(hu, _F32(hi), out=hu)
    return hu


def thick_series(
    clean: np.ndarray,
    grid: ScannerGrid,
    *,
    thickness: float,
    rng: np.random.Generator,
    kernel: Kernel,
    noise_sd: float,
) -> tuple[np.ndarray, ScannerGrid]:
    """A thick axial series from the same ideal densities: slab averages over ``thickness`` mm,
    contiguous, reconstructed with a soft kernel.

    Returns
    -------
    array
        (slices, rows, columns) float32 HU (not yet quantised).
    grid
        Its geometry (same in-plane grid and orientation as ``grid``).
    """
    zs = grid.slice_positions() @ grid.normal  # position of each thin slice along the normal
    n_thick = max(1, int(np.floor((zs[-1] - zs[0]) / thickness)))
    start = zs[0] + 0.5 * ((zs[-1] - zs[0]) - (n_thick - 1) * thickness)
    centres = start + thickness * np.arange(n_thick)
    out = np.empty((n_thick,) + clean.shape[1:], dtype=_F32)
    for i, c in enumerate(centres):
        w = np.clip(0.5 + (thickness / 2.0 - np.abs(zs - c)) / grid.slice_spacing, 0.0, 1.0)
        idx = np.nonzero(w > 0)[0]
        ww = (w[idx] / w[idx].sum()).astype(_F32)
        out[i] = np.tensordot(ww, clean[idx], axes=1)
    first = np.asarray(grid.first_position) + (centres[0] - zs[0]) * grid.normal
    tg = ScannerGrid(
        shape=out.shape,
        image_orientation=grid.image_orientation,
        first_position=tuple(float(v) for v in first),
        pixel_spacing=grid.pixel_spacing,
        slice_spacing=float(thickness),
        slice_thickness=float(thickness),
        patient_position=grid.patient_position,
    )
    sd = np.full(n_thick, noise_sd, dtype=_F32)
    reconstruct(out, rng=rng, pixel_spacing=grid.pixel_spacing[0], kernel=kernel, noise_sd=sd)
    return out, tg


@dataclass(frozen=True)
class Localizer:
    """A frontal projection radiograph (scout) of the scanned range.

    Attributes
    ----------
    array
        (rows, columns) uint16 pixel values; rows run head to feet, columns to the patient's left.
    image_position
        LPS position of the centre of the top-left pixel, mm.
    image_orientation
        ImageOrientationPatient (row cosines, column cosines).
    pixel_spacing
        (row spacing, column spacing), mm.
    """

    array: np.ndarray
    image_position: tuple[float, float, float]
    image_orientation: tuple[float, float, float, float, float, float]
    pixel_spacing: tuple[float, float]


def localizer(clean: np.ndarray, grid: ScannerGrid, rng: np.random.Generator) -> Localizer:
    """Frontal localizer: line integrals of attenuation through the volume along y (AP)."""
    ps_y = grid.pixel_spacing[0]
    proj = np.empty((clean.shape[0], clean.shape[2]), dtype=np.float64)
    for k in range(0, clean.shape[0], 32):
        mu = np.maximum(clean[k : k + 32] + _F32(1000.0), _F32(0.0))
        proj[k : k + 32] = mu.sum(axis=1, dtype=np.float64)
    proj *= MU_WATER * ps_y / 1000.0  # (slices, columns)
    zs, ys, xs = grid.axis_coordinates()
    # Rows head to feet, columns to the patient's left.
    proj = proj[np.argsort(-zs)]
    proj = proj[:, np.argsort(xs)]
    img = proj * 420.0 + rng.normal(0, 6.0, proj.shape)
    img = np.clip(np.rint(img), 0, 4095).astype(np.uint16)
    z_top = float(zs.max())
    x_left = float(xs.min())
    return Localizer(
        array=img,
        image_position=(x_left, float(np.mean(ys)), z_top),
        image_orientation=(1.0, 0.0, 0.0, 0.0, 0.0, -1.0),
        pixel_spacing=(float(grid.slice_spacing), float(grid.pixel_spacing[1])),
    )
