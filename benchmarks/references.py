"""Reference decoders: the chosen series read by SimpleITK and by highdicom, nothing else.

They read the same files in the same order as our loader and give float32 arrays, so the figure is the
cost of decoding that series alone: no scan of the other series, no selection, no geometry checks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks.memory import StageRecorder

logger = logging.getLogger(__name__)

SIMPLEITK_STAGE = "SimpleITK ImageSeriesReader"
HIGHDICOM_STAGE = "highdicom get_volume_from_series"


def chosen_series_files(dicom_dir: Path) -> list[Path]:
    """Files of the series our selection chooses, in slice order (by position along the normal)."""
    from operators.dicom_scan import scan_dicom_folder, slice_normal
    from operators.series_selection import select_series

    series = select_series(scan_dicom_folder(Path(dicom_dir))).series
    normal = slice_normal(series.instances[0].image_orientation)
    ordered = sorted(series.instances, key=lambda i: float(np.dot(normal, i.image_position)))
    return [instance.path for instance in ordered]


def read_with_simpleitk(files: Sequence[Path]) -> tuple[int, int, int]:
    """Decode ``files`` with SimpleITK's series reader into float32; returns the array shape (z, y, x)."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    reader.SetOutputPixelType(sitk.sitkFloat32)
    image = reader.Execute()
    size = image.GetSize()  # (x, y, z)
    return int(size[2]), int(size[1]), int(size[0])


def read_with_highdicom(files: Sequence[Path]) -> tuple[int, int, int]:
    """Decode ``files`` with ``highdicom.get_volume_from_series`` into float32; returns the shape (z, y, x)."""
    import highdicom as hd
    import pydicom

    volume = hd.get_volume_from_series([pydicom.dcmread(f) for f in files], dtype=np.float32)
    return tuple(int(n) for n in volume.spatial_shape)  # type: ignore[return-value]


def run_references(dicom_dir: Path, recorder: StageRecorder) -> dict[str, object]:
    """Time both reference decoders on the chosen series of ``dicom_dir``; a failure is reported, not raised."""
    files = chosen_series_files(dicom_dir)
    result: dict[str, object] = {"files": len(files), "errors": {}}
    for stage, reader in ((SIMPLEITK_STAGE, read_with_simpleitk), (HIGHDICOM_STAGE, read_with_highdicom)):
        try:
            with recorder.stage(stage):
                shape = reader(files)
            result[f"{stage} shape"] = list(shape)
        except Exception as error:  # noqa: BLE001 - a reference figure only: say why it is missing
            logger.warning("%s failed: %s", stage, error)
            result["errors"][stage] = f"{type(error).__name__}: {error}"  # type: ignore[index]
    return result
