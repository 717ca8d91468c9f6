"""The stock MONAI Deploy path: the App SDK's own DICOM operators and the same nnU-Net on the whole CT.

What a MONAI Deploy application built from the SDK's parts does with the same study and model:

* ``DICOMDataLoaderOperator.load_data_to_studies``: lists the folder and reads every file, pixel data
  included, of every series;
* ``DICOMSeriesSelectorOperator.filter``: CT, ``ImageType`` PRIMARY/ORIGINAL/AXIAL, all matches sorted by
  instance count (the SDK's way to prefer the thin series over the thick one);
* ``DICOMSeriesToVolumeOperator.convert_to_image``: sorts, decodes and rescales the chosen series;
* the lesion model (:class:`operators.lesion_model.LesionModel`, same folder and settings as ours) on the
  whole CT volume, since the stock path has no femur splitter;
* ``DICOMSegmentationWriterOperator.process_images``: the SEG (highdicom BINARY), read back once written.

The operators are instantiated on a bare Holoscan ``Fragment`` and their plain methods called in the order
their ``compute`` calls them: a graph adds only the scheduler's overhead, and a method call lets each
stage be timed and measured on its own.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np

from benchmarks.memory import StageRecorder
from benchmarks.model import ModelSettings

logger = logging.getLogger(__name__)

MODEL_STAGE = "model load"
LOADER_STAGE = "SDK loader (list + read all files)"
SELECTOR_STAGE = "SDK selector"
VOLUME_STAGE = "SDK series to volume (decode)"
INFERENCE_STAGE = "inference whole volume"
SEG_STAGE = "SDK SEG writer"
#: Stages of the study ingest, compared with ours.
INGEST_STAGES = (LOADER_STAGE, SELECTOR_STAGE, VOLUME_STAGE)

#: Selection rules in the SDK's JSON format: the primary axial CT series.
SELECTION_RULES = json.dumps({
    "selections": [{
        "name": "CT series",
        "conditions": {"Modality": "(?i)CT", "ImageType": ["PRIMARY", "ORIGINAL", "AXIAL"]},
    }]
})


def _zyx_affine(dicom_affine: np.ndarray) -> np.ndarray:
    """The SDK's DICOM affine (index (column, row, slice) -> LPS mm) for our (slice, row, column) order."""
    affine = np.asarray(dicom_affine, dtype=np.float64)
    return affine[:, [2, 1, 0, 3]]


def _segment_descriptions(label_names: dict[int, str], algorithm: tuple[str, str]) -> list[Any]:
    """One SDK segment description per non-background label value of the model, in value order."""
    from monai.deploy.operators.dicom_seg_writer_operator import SegmentDescription
    from pydicom.sr.codedict import codes

    descriptions = []
    for value in range(1, max(label_names) + 1):
        name = str(label_names.get(value, f"label {value}"))
        kind = codes.SCT.Cyst if "cyst" in name.casefold() else codes.SCT.Neoplasm
        descriptions.append(SegmentDescription(
            segment_label=name, segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=kind, algorithm_name=algorithm[0], algorithm_version=algorithm[1]))
    return descriptions


def run_stock_path(dicom_dir: Path, out_dir: Path, settings: ModelSettings | None, recorder: StageRecorder
                   ) -> dict[str, Any]:
    """Run the stock path on the study in ``dicom_dir``, writing its SEG into ``out_dir``.

    Parameters
    ----------
    dicom_dir : Path
        Folder of the study's DICOM files (every series).
    out_dir : Path
        Where the SDK's SEG writer puts its file.
    settings : ModelSettings or None
        The lesion model; None stops after the ingest (loader, selector, volume).
    recorder : StageRecorder
        Receives the stages.

    Returns
    -------
    dict
        ``series_uid`` chosen, ``shape_zyx`` and ``dtype`` of the SDK's volume, ``voxels`` sent to the
        network, ``lesion_voxels`` found in the whole volume and the written ``outputs``.
    """
    from monai.deploy.core import Fragment
    from monai.deploy.operators import (
        DICOMDataLoaderOperator,
        DICOMSegmentationWriterOperator,
        DICOMSeriesSelectorOperator,
        DICOMSeriesToVolumeOperator,
    )

    fragment = Fragment()
    model = None
    if settings is not None:
        with recorder.stage(MODEL_STAGE):
            model = settings.load()
    loader = DICOMDataLoaderOperator(fragment, input_folder=Path(dicom_dir), name="dicom_loader")
    selector = DICOMSeriesSelectorOperator(fragment, rules=SELECTION_RULES, all_matched=True,
                                           sort_by_sop_instance_count=True, name="series_selector")
    to_volume = DICOMSeriesToVolumeOperator(fragment, name="series_to_volume")

    with recorder.stage(LOADER_STAGE):
        studies = loader.load_data_to_studies(Path(dicom_dir))
    with recorder.stage(SELECTOR_STAGE):
        selected = selector.filter(json.loads(SELECTION_RULES), studies, True, True)
    with recorder.stage(VOLUME_STAGE):
        image = to_volume.convert_to_image(selected)
    series = selected[0].selected_series[0].series
    array = image.asnumpy()
    result: dict[str, Any] = {"series_uid": str(series.SeriesInstanceUID), "shape_zyx": list(array.shape),
                              "dtype": str(array.dtype)}
    if model is None:
        return result

    with recorder.stage(INFERENCE_STAGE):
        # The SDK's volume is (slice, row, column) like ours; its DICOM affine indexes (column, row, slice).
        volume = hd.Volume(array=array, affine=_zyx_affine(series.dicom_affine_transform),
                           coordinate_system="PATIENT")
        labels = model.predict(volume).labels
    info = model.model_info
    writer = DICOMSegmentationWriterOperator(
        fragment, segment_descriptions=_segment_descriptions(info.label_names, (info.name, info.version)),
        output_folder=Path(out_dir), name="seg_writer")
    with recorder.stage(SEG_STAGE):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        writer.process_images(np.asarray(labels, dtype=np.uint8), selected, Path(out_dir))
    result.update(
        voxels={"full_volume": int(array.size)},
        lesion_voxels={"whole volume": int(np.count_nonzero(labels))},
        outputs=sorted(p.name for p in Path(out_dir).glob("*.dcm")),
    )
    return result
