"""Everything a run leaves for a study: DICOM-SEG, DICOM SR, report.json, summary.txt and an overview picture.

:func:`write_study_outputs` writes, into one output folder, under names that do not change:

===============  ===========================================================================================
file             content
===============  ===========================================================================================
``seg.dcm``      DICOM Segmentation (BINARY, :mod:`operators.dicom_seg`) over the CT series: "Left femur",
                 "Right femur" (those in view), "Lytic lesion, <side> femur" for each femur with a lesion,
                 "Cyst, <side> femur" for each femur with a cyst when the model segments cysts. A femur
                 without lesion contributes its femur segment only. Not written when no femur is in view.
``sr.dcm``       DICOM Comprehensive 3D SR, TID 1500 (:mod:`operators.dicom_sr`): per femur the number of
                 lesions, volumes, largest diameter, site and cortical involvement; "Lesion: Absent" for a
                 femur without lesion; "Femur: Not visualized" for a femur not in view. References the SEG.
``report.json``  The same findings, per lesion, with software and model versions
                 (:mod:`operators.findings_report`); identifies the study by its UIDs only.
``summary.txt``  One line per femur, or "No femur in view.".
``overview.png`` Coronal projection and axial slices of the CT with the femurs and the predicted lesions
                 and cysts drawn in (:mod:`operators.overview`).
===============  ===========================================================================================

The DICOM files are new series in the CT's study and need the CT's Study, Series and SOP Instance UIDs:
for a CT that lacks them (some anonymised exports) neither is written, and the run says so in its log
and in :attr:`OutputFiles.notes`; report.json, summary.txt and the overview are written all the same.

All files are first written into a temporary folder inside the output folder and moved into place only
when every one of them is complete, ``report.json`` last: a failure leaves nothing half-written, and a
``report.json`` in the folder means the set beside it is complete. Files of these names left by an
earlier run that this run does not write (e.g. ``seg.dcm`` when no femur is in view now) are removed,
so the folder always describes one run.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom import Dataset

from operators.dicom_seg import AlgorithmInfo, SegmentMask, SegmentSpec, build_segmentation, write_dataset
from operators.dicom_sr import build_findings_sr, write_findings_sr
from operators.femur_splitter import SIDES, FemurSplit
from operators.findings_report import write_findings_report
from operators.lesion_findings import FindingsConfig, StudyFindings, study_findings_in_boxes
from operators.lesion_model import LesionModelInfo
from operators.lesion_segmentation import StudySegmentation
from operators.overview import render_overview
from operators.series_volume import LoadedSeries

logger = logging.getLogger(__name__)

__all__ = [
    "OUTPUT_FILE_NAMES",
    "OVERVIEW_FILE",
    "OutputFiles",
    "REPORT_FILE",
    "SEG_FILE",
    "SR_FILE",
    "SUMMARY_FILE",
    "algorithm_info",
    "segment_masks",
    "software_version",
    "write_study_outputs",
]

SEG_FILE = "seg.dcm"
SR_FILE = "sr.dcm"
REPORT_FILE = "report.json"
SUMMARY_FILE = "summary.txt"
OVERVIEW_FILE = "overview.png"
#: Every file a run may write, in the order they are moved into place (report.json last).
OUTPUT_FILE_NAMES = (SEG_FILE, SR_FILE, OVERVIEW_FILE, SUMMARY_FILE, REPORT_FILE)

_PACKAGE = "femur-lesion-seg"
# UIDs a DICOM result must copy or reference from the CT (dicom_sr refuses a CT without them).
_REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


@dataclass(frozen=True)
class OutputFiles:
    """What :func:`write_study_outputs` wrote.

    Attributes
    ----------
    folder:
        The output folder.
    segmentation, structured_report:
        ``seg.dcm`` and ``sr.dcm``, or None when not written (no femur in view; CT without UIDs).
    report, summary:
        ``report.json`` and ``summary.txt`` (always written).
    overview:
        ``overview.png``, or None when not asked for.
    findings:
        The findings the SR and the reports state.
    notes:
        Why an output was not written, one line each.
    seconds:
        Wall time per step ("findings", "seg", "sr", "report", "overview"), s. The overview is drawn
        beside the other steps, so the steps add up to more than the whole.
    """

    folder: Path
    segmentation: Path | None
    structured_report: Path | None
    report: Path
    summary: Path
    overview: Path | None
    findings: StudyFindings
    notes: tuple[str, ...] = ()
    seconds: Mapping[str, float] = field(default_factory=dict)

    def paths(self) -> list[Path]:
        """The files written, in the order of :data:`OUTPUT_FILE_NAMES`."""
        return [p for p in (self.segmentation, self.structured_report, self.overview, self.summary, self.report)
                if p is not None]


def software_version() -> str:
    """Version of this software (the installed distribution's), or "unknown" when it is not installed."""
    try:
        return metadata.version(_PACKAGE)
    except metadata.PackageNotFoundError:
        return "unknown"


def algorithm_info(model: LesionModelInfo, *, source: str | None = None) -> AlgorithmInfo:
    """The SEG/SR algorithm identification of a lesion model: its name, version and how it predicts."""
    return AlgorithmInfo(
        name=model.name,
        version=model.version,
        source=source,
        parameters={
            "configuration": model.configuration,
            "plans": model.plans,
            "trainer": model.trainer,
            "folds": ",".join(str(f) for f in model.folds),
        },
    )


def segment_masks(segmentation: StudySegmentation) -> list[SegmentMask]:
    """The SEG's segments, in order: femurs (left, right), then lytic lesions, then cysts.

    A femur in view always has its segment; a lesion or cyst segment is included only for a femur where
    it is not empty (a cyst segment only from a model with a cyst class). Each mask stays in its femur's
    crop box (:attr:`operators.femur_splitter.FemurCrop.box`): no full-grid array is built.
    """
    present = [side for side in SIDES if side in segmentation.femurs]
    femurs = segmentation.femurs
    segments = [SegmentMask(SegmentSpec.femur(side), femurs[side].crop.mask, femurs[side].crop.box)
                for side in present]
    segments += [SegmentMask(SegmentSpec.lytic_lesion(side), femurs[side].lesion, femurs[side].crop.box)
                 for side in present if femurs[side].has_lesion]
    if segmentation.has_cyst_class:
        segments += [SegmentMask(SegmentSpec.cyst(side), femurs[side].cyst, femurs[side].crop.box)  # type: ignore[arg-type]
                     for side in present if femurs[side].has_cyst]
    return segments


def write_study_outputs(
    out_dir: str | Path,
    *,
    loaded: LoadedSeries,
    split: FemurSplit,
    segmentation: StudySegmentation,
    algorithm: AlgorithmInfo | None = None,
    findings_config: FindingsConfig | None = None,
    overview: bool = True,
    version: str | None = None,
) -> OutputFiles:
    """Write the SEG, SR, report.json, summary.txt and overview.png of one CT into ``out_dir``.

    Parameters
    ----------
    out_dir:
        Output folder; created if needed. Only the files of :data:`OUTPUT_FILE_NAMES` are written or
        removed there.
    loaded:
        The CT series: its volume (the grid of every mask) and its header datasets (referenced by the
        SEG and SR, whose patient and study identity they supply).
    split:
        The femurs found in the CT (for the reason when none is in view).
    segmentation:
        Femurs, lesions and cysts on the CT's grid (:func:`operators.lesion_segmentation.segment_lesions`).
    algorithm:
        Identification of the lesion model in the SEG and SR; by default from ``segmentation.model``.
    findings_config:
        How lesions are counted and described (:class:`operators.lesion_findings.FindingsConfig`).
    overview:
        Also render ``overview.png``.
    version:
        Software version written into the DICOM headers and report.json; by default the installed one.

    Returns
    -------
    OutputFiles

    Raises
    ------
    ValueError
        If ``split`` or ``segmentation`` is not on the grid of ``loaded.volume``.
    """
    out_dir = Path(out_dir)
    ct = loaded.volume
    _check_same_grid(loaded, split, segmentation)
    algorithm = algorithm or algorithm_info(segmentation.model)
    version = version or software_version()
    seconds: dict[str, float] = {}
    notes: list[str] = []

    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".outputs-", suffix=".partial", dir=out_dir))
    try:
        # The overview is drawn in a thread beside the findings, SEG and SR: it reads the CT and the labels
        # only, and much of either side's time is spent outside the interpreter lock (numpy, Agg, zlib).
        # Leaving the block waits for it, also on an error, before the staging folder goes.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="overview") as drawing:
            drawn = (drawing.submit(_draw_overview, ct, segmentation, staging / OVERVIEW_FILE, algorithm)
                     if overview else None)

            start = time.perf_counter()
            # Each femur measured in its crop box: the full-grid result without four full-grid masks
            # (600 MB for a 512x512x600 CT).
            findings = study_findings_in_boxes(
                grid=ct,
                femurs={side: (femur.crop.box, femur.crop.mask, femur.lesion)
                        for side, femur in segmentation.femurs.items()},
                config=findings_config,
            )
            seconds["findings"] = time.perf_counter() - start

            header = loaded.source_datasets[0] if loaded.source_datasets else None
            missing = _missing_uids(header)
            if missing:
                notes.append(f"no DICOM SEG or SR: the CT series has no {', '.join(missing)} to reference")
            if not segmentation.femur_in_view:
                reason = segmentation.no_femur_reason or split.no_femur_reason or "none found"
                notes.append(f"no DICOM SEG: no femur in view ({reason})")

            seg: Dataset | None = None
            if segmentation.femur_in_view and not missing:
                start = time.perf_counter()
                segments = segment_masks(segmentation)
                seg = build_segmentation(source_datasets=loaded.source_datasets, ct=ct, segments=segments,
                                         algorithm=algorithm, software_version=version)
                write_dataset(seg, staging / SEG_FILE)
                seconds["seg"] = time.perf_counter() - start
                logger.info("SEG: %s", ", ".join(repr(s.spec.label) for s in segments))

            sr: Dataset | None = None
            if not missing:
                start = time.perf_counter()
                sr = build_findings_sr(findings=findings, source_datasets=loaded.source_datasets,
                                       algorithm=algorithm, segmentation=seg, software_version=version)
                write_findings_sr(sr, staging / SR_FILE)
                seconds["sr"] = time.perf_counter() - start

            start = time.perf_counter()
            write_findings_report(staging, findings=findings, algorithm=algorithm, software_version=version,
                                  ct=header, segmentation=seg, structured_report=sr,
                                  json_name=REPORT_FILE, text_name=SUMMARY_FILE, notes=split.remarks)
            seconds["report"] = time.perf_counter() - start

            if drawn is not None:
                seconds["overview"] = drawn.result()

        written = _move_into_place(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    for note in notes:
        logger.info("%s", note)
    result = OutputFiles(
        folder=out_dir,
        segmentation=written.get(SEG_FILE),
        structured_report=written.get(SR_FILE),
        report=written[REPORT_FILE],
        summary=written[SUMMARY_FILE],
        overview=written.get(OVERVIEW_FILE),
        findings=findings,
        notes=tuple(notes),
        seconds=seconds,
    )
    logger.info("wrote %s (%s)", ", ".join(p.name for p in result.paths()),
                ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
    return result


def _draw_overview(ct: hd.Volume, segmentation: StudySegmentation, path: Path, algorithm: AlgorithmInfo) -> float:
    """Render overview.png (see :func:`operators.overview.render_overview`); returns the seconds it took."""
    start = time.perf_counter()
    render_overview(ct, segmentation.label_map(), path,
                    title=f"Femurs and lytic lesions ({algorithm.name} {algorithm.version})")
    return time.perf_counter() - start


def _move_into_place(staging: Path, out_dir: Path) -> dict[str, Path]:
    """Move the staged files into ``out_dir`` (report.json last); remove stale files of the same names."""
    staged = {name for name in OUTPUT_FILE_NAMES if (staging / name).is_file()}
    for name in OUTPUT_FILE_NAMES:
        stale = out_dir / name
        if name not in staged and stale.is_file():
            stale.unlink()
            logger.info("removed %s left by an earlier run", name)
    # Temporary files are created private (0600); results are for whoever reads the folder (umask applies).
    umask = os.umask(0)
    os.umask(umask)
    written: dict[str, Path] = {}
    for name in OUTPUT_FILE_NAMES:
        if name in staged:
            os.chmod(staging / name, 0o666 & ~umask)
            os.replace(staging / name, out_dir / name)
            written[name] = out_dir / name
    return written


def _missing_uids(header: Dataset | None) -> list[str]:
    if header is None:
        return list(_REQUIRED_UIDS)
    return [name for name in _REQUIRED_UIDS if not str(header.get(name, "") or "").strip()]


def _check_same_grid(loaded: LoadedSeries, split: FemurSplit, segmentation: StudySegmentation) -> None:
    shape = tuple(int(n) for n in loaded.volume.spatial_shape)
    for what, other_shape, affine in (("femur split", split.full_shape, split.affine),
                                      ("lesion segmentation", segmentation.full_shape, segmentation.affine)):
        if tuple(other_shape) != shape or not np.allclose(affine, loaded.volume.affine, atol=1e-4):
            raise ValueError(f"the {what} is not on the grid of the loaded CT (shape {tuple(other_shape)} vs {shape})")
    if set(segmentation.femurs) - set(split.femurs):
        raise ValueError(f"the lesion segmentation has femurs ({sorted(segmentation.femurs)}) the split does not "
                         f"({sorted(split.femurs)})")
