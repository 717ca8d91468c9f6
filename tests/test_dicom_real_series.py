"""The loader on a real CT series (JPEG 2000, empty Study/Series/SOP Instance UIDs, files without
extension), compared with highdicom's and SimpleITK's readers."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from operators.series_volume import load_study

REAL_SERIES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real_ct_chest_j2k"

pytestmark = pytest.mark.skipif(
    not REAL_SERIES.is_dir(), reason=f"real test series not present at {REAL_SERIES} (shared data folder)"
)
logger = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def loaded():  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = load_study(REAL_SERIES)
    logger.info("load_study on the real series: %.2f s", time.perf_counter() - start)
    return result


def test_real_series_loads_despite_empty_uids(loaded) -> None:  # type: ignore[no-untyped-def]
    volume = loaded.volume
    assert volume.array.dtype == np.float32
    assert volume.spatial_shape == (20, 512, 512)
    assert loaded.series.study_instance_uid == "" and loaded.series.series_instance_uid == ""
    # Spacing measured from positions (2 mm), not SliceThickness (3 mm).
    assert loaded.geometry.slice_spacing_mm == pytest.approx(2.0)
    assert loaded.geometry.slice_thickness_tag == 3.0
    # Air outside the body, soft tissue inside: plausible HU.
    assert volume.array[:, 5, 5].max() < -900
    assert -100 < float(volume.array[:, 256, 256].mean()) < 200
    # Headers for a SEG writer: SOP Instance UIDs from the file meta, no pixel data.
    uids = [ds.SOPInstanceUID for ds in loaded.source_datasets]
    assert all(uids) and len(set(uids)) == 20
    assert all("PixelData" not in ds for ds in loaded.source_datasets)


def test_real_series_matches_highdicom_and_simpleitk(loaded) -> None:  # type: ignore[no-untyped-def]
    datasets = []
    for path in sorted(p for p in REAL_SERIES.iterdir() if p.is_file()):
        ds = pydicom.dcmread(path)
        # highdicom needs the SOP class to find the IOD; the files carry it only in their file meta.
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        datasets.append(ds)
    start = time.perf_counter()
    reference = hd.get_volume_from_series(datasets, dtype=np.float32)
    logger.info("highdicom get_volume_from_series: %.2f s", time.perf_counter() - start)
    np.testing.assert_array_equal(loaded.volume.array, reference.array)
    np.testing.assert_allclose(loaded.volume.affine, reference.affine, atol=1e-6)

    sitk = pytest.importorskip("SimpleITK")
    reader = sitk.ImageSeriesReader()
    start = time.perf_counter()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(REAL_SERIES)))
    image = reader.Execute()
    logger.info("SimpleITK ImageSeriesReader: %.2f s", time.perf_counter() - start)
    # SimpleITK stacks towards the head; bring it into the loader's (and highdicom's) orientation.
    itk_volume = hd.Volume.from_simpleitk(image).match_orientation(loaded.volume)
    np.testing.assert_allclose(loaded.volume.affine, itk_volume.affine, atol=1e-4)
    np.testing.assert_array_equal(loaded.volume.array, itk_volume.array.astype(np.float32))
