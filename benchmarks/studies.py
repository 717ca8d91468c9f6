"""The synthetic studies a benchmark runs on, generated once and kept in the work folder.

A study is written by :func:`synthetic_ct.write_study` with its three series (thin bone-kernel axial,
thick soft-tissue axial, localizer), as a scanner sends it. For the growth with the number of slices the
same patient (same seed) is written with the slice spacing that gives about the number of thin slices
asked for: the scanned length depends on the seed only, so a quick probe of the seed (2 mm slices on a
64 x 64 matrix) measures it first.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_PROBE_SPACING_MM = 2.0  # the length is known to within this, mm
_PROBE_MATRIX = 64
_META = "benchmark-study.json"
# PhantomConfig's accepted slice spacing range, mm.
_SPACING_RANGE_MM = (0.3, 10.0)


@dataclass(frozen=True)
class BenchStudy:
    """A written study and what the report says about it.

    Attributes
    ----------
    label : str
        E.g. ``"standard seed 11, 600 slices"``.
    dicom_dir : Path
        The folder holding only the study's DICOM files (the input of every path).
    preset, seed : str, int
        What :func:`synthetic_ct.generate_phantom` was given.
    shape_zyx : tuple of 3 int
        Shape of the thin series' volume (slices, rows, columns).
    spacing_zyx_mm : tuple of 3 float
        Its voxel spacing (slice, row, column), mm.
    n_series, n_files : int
        Series and DICOM files in the study (every series counts: the ingest reads the whole study).
    thin_series_uid : str
        SeriesInstanceUID of the thin series, the one both paths must choose.
    generation_seconds : float
        Time it took to generate and write the study (not part of any benchmark figure).
    """

    label: str
    dicom_dir: Path
    preset: str
    seed: int
    shape_zyx: tuple[int, int, int]
    spacing_zyx_mm: tuple[float, float, float]
    n_series: int
    n_files: int
    thin_series_uid: str
    generation_seconds: float

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["dicom_dir"] = str(self.dicom_dir)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchStudy:
        data = dict(data)
        data["dicom_dir"] = Path(data["dicom_dir"])
        data["shape_zyx"] = tuple(data["shape_zyx"])
        data["spacing_zyx_mm"] = tuple(data["spacing_zyx_mm"])
        return cls(**data)


def scanned_length_mm(preset: str, seed: int) -> float:
    """Length of the thin series' scan range for ``seed`` (independent of its slice spacing), mm."""
    from synthetic_ct import generate_phantom

    probe = generate_phantom(seed, preset, slice_spacing=_PROBE_SPACING_MM, slice_thickness=_PROBE_SPACING_MM,
                             matrix=_PROBE_MATRIX)
    return (probe.ct.spatial_shape[0] - 1) * _PROBE_SPACING_MM


def spacing_for_slices(length_mm: float, slices: int) -> float:
    """The slice spacing (mm, rounded to 0.001) that gives about ``slices`` slices over ``length_mm``."""
    if slices < 2:
        raise ValueError(f"a study needs at least 2 slices, not {slices}")
    spacing = round(length_mm / (slices - 1), 3)
    low, high = _SPACING_RANGE_MM
    if not low <= spacing <= high:
        raise ValueError(f"{slices} slices over {length_mm:.0f} mm need {spacing} mm slices; the synthetic "
                         f"studies allow {low}-{high} mm")
    return spacing


def ensure_study(workdir: Path, *, preset: str, seed: int, slices: int | None = None) -> BenchStudy:
    """The study for ``preset``, ``seed`` and about ``slices`` thin slices; generated unless already there.

    Parameters
    ----------
    workdir : Path
        Folder of the benchmark's studies (``<workdir>/studies/<name>/``).
    preset : str
        ``"small"`` or ``"standard"`` (see :data:`synthetic_ct.config.PRESETS`).
    seed : int
        Patient of the study.
    slices : int, optional
        Thin slices wanted; None keeps the preset's own draw for the seed.
    """
    from synthetic_ct import generate_phantom, write_study

    name = f"{preset}-seed{seed}" + (f"-{slices}slices" if slices else "")
    root = Path(workdir) / "studies" / name
    meta = root / _META
    if meta.is_file():
        return BenchStudy.from_dict(json.loads(meta.read_text(encoding="utf-8")))

    start = time.perf_counter()
    overrides: dict[str, Any] = {}
    if slices:
        spacing = spacing_for_slices(scanned_length_mm(preset, seed), slices)
        overrides = {"slice_spacing": spacing, "slice_thickness": spacing}
    logger.info("generating study %s", name)
    phantom = generate_phantom(seed, preset, **overrides)
    if root.exists():  # a run interrupted before its metadata was written
        shutil.rmtree(root)
    written = write_study(phantom, root / "study")
    thin = written.series_by_role("thin")
    study = BenchStudy(
        label=f"{preset} seed {seed}, {phantom.ct.spatial_shape[0]} slices",
        dicom_dir=written.study_dir,
        preset=preset,
        seed=seed,
        shape_zyx=tuple(int(n) for n in phantom.ct.spatial_shape),  # type: ignore[arg-type]
        spacing_zyx_mm=tuple(round(float(s), 4) for s in phantom.ct.spacing),  # type: ignore[arg-type]
        n_series=len(written.series),
        n_files=sum(len(s.files) for s in written.series),
        thin_series_uid=thin.uid,
        generation_seconds=round(time.perf_counter() - start, 1),
    )
    meta.write_text(json.dumps(study.to_dict(), indent=2) + "\n", encoding="utf-8")
    return study
