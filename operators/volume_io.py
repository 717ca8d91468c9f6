"""NIfTI / NRRD files of :class:`highdicom.Volume` objects, through SimpleITK.

One convention everywhere (datasets for nnU-Net, label maps, femur-only crops, ground truth): the numpy
array keeps its (z, y, x) axis order on disk, so ``SimpleITK.GetArrayFromImage`` -- and therefore
nnU-Net's own reader -- gives back the same array. SimpleITK's index order is (x, y, z), the reverse of
the numpy axes, so the ITK spacing and direction columns are the volume's reversed. SimpleITK works in
LPS and writes the LPS->RAS flip into the NIfTI header itself, so the geometry on disk is exact.

(``highdicom.Volume.to_simpleitk`` maps numpy axis 0 to ITK's x instead: geometrically right too, but a
reader that takes the array as it comes, as nnU-Net does, would see it transposed.)
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import SimpleITK as sitk

from operators.atomic_files import atomic_output_path

__all__ = ["read_volume", "volume_from_sitk", "volume_to_sitk", "write_volume"]


def volume_to_sitk(volume: hd.Volume) -> sitk.Image:
    """The volume as a SimpleITK image whose array (``GetArrayFromImage``) is ``volume.array``, (z, y, x)."""
    array = np.asarray(volume.array)
    if array.ndim != 3:
        raise ValueError(f"expected a 3-D volume (z, y, x), got array shape {array.shape}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(tuple(float(s) for s in np.asarray(volume.spacing)[::-1]))
    image.SetDirection(tuple(float(v) for v in np.asarray(volume.direction)[:, ::-1].ravel()))
    image.SetOrigin(tuple(float(v) for v in volume.position))
    return image


def volume_from_sitk(image: sitk.Image) -> hd.Volume:
    """A 3-D SimpleITK image as a volume: array (z, y, x) as SimpleITK returns it, affine to LPS mm."""
    if image.GetDimension() != 3:
        raise ValueError(f"expected a 3-D image, got {image.GetDimension()}-D")
    spacing_xyz = np.asarray(image.GetSpacing(), dtype=float)
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)  # columns: ITK axes x, y, z
    affine = np.eye(4)
    # Column k of the affine is the step in LPS mm along array axis k; array axis 0 is ITK's z.
    affine[:3, :3] = direction[:, ::-1] * spacing_xyz[::-1]
    affine[:3, 3] = image.GetOrigin()
    return hd.Volume(sitk.GetArrayFromImage(image), affine, "PATIENT")


def write_volume(path: str | Path, volume: hd.Volume, *, compress: bool = True) -> Path:
    """Write a volume to ``path`` (``.nii.gz``, ``.nii`` or ``.nrrd``) atomically."""
    image = volume_to_sitk(volume)
    with atomic_output_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=compress and not str(path).endswith(".nii"))
    return Path(path)


def read_volume(path: str | Path) -> hd.Volume:
    """Read a 3-D NIfTI / NRRD file as a volume (array (z, y, x), affine index -> LPS mm)."""
    return volume_from_sitk(sitk.ReadImage(str(path)))
