"""Our path, stage by stage: the plain functions the application's operators call, in the same order.

scan (:func:`operators.dicom_scan.scan_dicom_folder`) -> select (:func:`operators.series_selection.select_series`)
-> decode + volume (:func:`operators.series_volume.load_series_volume`) -> split
(:func:`operators.femur_splitter.split_femurs`) -> lesion inference on each femur-only crop
(:func:`operators.lesion_segmentation.segment_lesions` with :class:`operators.lesion_model.LesionModel`) ->
outputs (:func:`operators.study_outputs.write_study_outputs`: SEG, SR, report.json, summary, overview; it
times its own parts, which the report lists under the outputs stage).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import highdicom as hd

from benchmarks.memory import StageRecorder
from benchmarks.model import ModelSettings

logger = logging.getLogger(__name__)

MODEL_STAGE = "model load"
SCAN_STAGE = "scan"
SELECT_STAGE = "select"
DECODE_STAGE = "decode + volume"
SPLIT_STAGE = "split"
INFERENCE_PREFIX = "inference "
OUTPUTS_STAGE = "outputs"
#: Stages of the study ingest, compared with the SDK's loader + selector + volume.
INGEST_STAGES = (SCAN_STAGE, SELECT_STAGE, DECODE_STAGE)
# write_study_outputs's own part names -> the report's.
_OUTPUT_PARTS = {"findings": "findings", "seg": "SEG", "sr": "SR", "report": "report", "overview": "overview"}


class _TimedModel:
    """The lesion model, with each femur's prediction recorded as its own stage ("inference left" ...).

    :func:`operators.lesion_segmentation.segment_lesions` calls ``predict`` once per femur crop; the crop
    volume tells which femur it is.
    """

    def __init__(self, model: Any, sides: dict[int, str], recorder: StageRecorder) -> None:
        self._model = model
        self._sides = sides
        self._recorder = recorder

    @property
    def model_info(self) -> Any:
        return self._model.model_info

    def predict(self, volume: hd.Volume) -> Any:
        side = self._sides.get(id(volume), "femur")
        with self._recorder.stage(INFERENCE_PREFIX + side):
            return self._model.predict(volume)


def run_our_path(dicom_dir: Path, out_dir: Path, settings: ModelSettings | None, recorder: StageRecorder
                 ) -> dict[str, Any]:
    """Run our path on the study in ``dicom_dir``, writing its outputs into ``out_dir``.

    Parameters
    ----------
    dicom_dir : Path
        Folder of the study's DICOM files (every series).
    out_dir : Path
        Where the SEG, SR and reports go.
    settings : ModelSettings or None
        The lesion model; None stops after the ingest (scan, select, decode).
    recorder : StageRecorder
        Receives the stages.

    Returns
    -------
    dict
        ``series_uid`` chosen, ``shape_zyx`` of the CT, ``voxels`` (full volume, femur crops, femur
        mask), ``femurs`` found, ``lesion_voxels`` per femur and the written ``outputs`` (file names).
    """
    from operators.dicom_scan import scan_dicom_folder
    from operators.femur_splitter import split_femurs
    from operators.lesion_segmentation import segment_lesions
    from operators.series_selection import select_series
    from operators.series_volume import load_series_volume
    from operators.study_outputs import write_study_outputs

    model = None
    if settings is not None:
        with recorder.stage(MODEL_STAGE):
            model = settings.load()
    with recorder.stage(SCAN_STAGE):
        index = scan_dicom_folder(Path(dicom_dir))
    with recorder.stage(SELECT_STAGE):
        series = select_series(index).series
    with recorder.stage(DECODE_STAGE):
        loaded = load_series_volume(series)
    shape = tuple(int(n) for n in loaded.volume.spatial_shape)
    result: dict[str, Any] = {"series_uid": series.series_instance_uid, "shape_zyx": list(shape),
                              "files_in_study": index.n_files}
    if model is None:
        return result

    with recorder.stage(SPLIT_STAGE):
        split = split_femurs(loaded.volume)
    crops = {side: crop for side, crop in split.femurs.items()}
    timed = _TimedModel(model, {id(crop.femur_only): side for side, crop in crops.items()}, recorder)
    segmentation = segment_lesions(split, timed)
    with recorder.stage(OUTPUTS_STAGE):
        written = write_study_outputs(out_dir, loaded=loaded, split=split, segmentation=segmentation)
    for part, seconds in written.seconds.items():
        recorder.add_part(_OUTPUT_PARTS.get(part, part), seconds, part_of=OUTPUTS_STAGE)

    full = int(shape[0] * shape[1] * shape[2])
    result.update(
        femurs=sorted(crops),
        voxels={
            "full_volume": full,
            "femur_crops": sum(int(crop.mask.size) for crop in crops.values()),
            "femur_mask": sum(int(crop.mask.sum()) for crop in crops.values()),
            "crop_shapes_zyx": {side: list(crop.mask.shape) for side, crop in crops.items()},
        },
        lesion_voxels={side: femur.n_lesion_voxels for side, femur in segmentation.femurs.items()},
        outputs=sorted(p.name for p in written.paths()),
        model={"name": model.model_info.name, "version": model.model_info.version, "device": model.device},
    )
    return result
