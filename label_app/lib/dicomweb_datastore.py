"""A DICOMweb datastore (e.g. Orthanc) that writes and reads final labels as DICOM-SEG with highdicom.

MONAI Label's :class:`~monailabel.datastore.dicom.DICOMWebDatastore` converts labels with dcmqi, which it
downloads from the internet when the server starts, and reads SEGs with pydicom-seg, which returns only
the frames present. This subclass:

* lists the CT series of the PACS (one image per SeriesInstanceUID) without MONAI Label's two-hour cache,
  so that a label saved a moment ago counts;
* hands inference the series' DICOM folder (downloaded once into the cache), which the pipeline's loader
  reads, instead of a NIfTI conversion;
* saves a ``final`` label as a BINARY DICOM-SEG made with highdicom on the CT series' own grid (every
  frame written, segments femur, lytic lesion, cyst as far as present, algorithm type MANUAL) and
  stores it by STOW-RS into the CT's study;
* reads a final SEG back with highdicom against the CT series (:func:`operators.dicom_seg.read_segment_masks`),
  as a label volume of the image's full shape, for training.

Only SEGs this datastore wrote (their SeriesDescription is :data:`FINAL_SERIES_DESCRIPTION`) are final
labels: the SEGs the gateway stores for the deploy application are AI results, not annotations.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from dicomweb_client.session_utils import create_session_from_user_pass
from monailabel.config import settings
from monailabel.datastore.dicom import DICOMwebClientX, DICOMWebDatastore
from monailabel.datastore.utils.dicom import dicom_web_download_series
from monailabel.interfaces.datastore import DefaultLabelTag
from pydicom import Dataset
from pydicom.sr.codedict import codes

from operators.dicom_seg import read_segment_masks
from operators.safe_names import safe_name
from operators.series_volume import LoadedSeries, load_study
from operators.volume_io import write_volume
from lesion_training.dataset_builder import onto_grid, read_volume_file

from .labels import CYST, FEMUR, LESION, annotation_labels, masks_of

logger = logging.getLogger(__name__)

__all__ = ["FINAL_SERIES_DESCRIPTION", "HighdicomDICOMWebDatastore", "label_seg", "seg_label_volume"]

#: SeriesDescription of the final-label SEGs this datastore writes (and the only SEGs it counts as labels).
FINAL_SERIES_DESCRIPTION = "Femur lesion annotation (final)"
_SERIES_NUMBER = 950
# Segment label, category, type, anatomic region, display colour (RGB); as operators.dicom_seg, unsided.
_SEGMENTS: dict[str, tuple[str, Any, Any, Any, tuple[int, int, int]]] = {
    FEMUR: ("Femur", codes.SCT.AnatomicalStructure, codes.SCT.Femur, None, (31, 119, 180)),
    LESION: ("Lytic lesion", codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm, codes.SCT.Femur,
             (214, 39, 40)),
    CYST: ("Cyst", codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Cyst, codes.SCT.Femur, (255, 191, 0)),
}


def label_seg(labels: np.ndarray, loaded: LoadedSeries) -> hd.seg.Segmentation:
    """A BINARY SEG of a label volume (values of :mod:`label_app.lib.labels`) over the series it was made on.

    Parameters
    ----------
    labels : np.ndarray
        uint8 (z, y, x) on ``loaded.volume``'s grid.
    loaded : LoadedSeries
        The CT series (headers referenced by the SEG; its affine places the frames).

    Raises
    ------
    ValueError
        If the label volume is empty, of another shape, or holds unknown values.
    """
    ct = loaded.volume
    if labels.shape != ct.spatial_shape:
        raise ValueError(f"label volume of shape {labels.shape} is not on the CT grid {ct.spatial_shape}")
    masks = masks_of(labels)
    present = [(name, mask) for name, mask in ((FEMUR, masks.femur), (LESION, masks.lesion), (CYST, masks.cyst))
               if mask.any()]
    if not present:
        raise ValueError("the label volume is empty: nothing to save")
    stack = np.stack([mask for _, mask in present], axis=-1).astype(np.uint8)
    frame_of_reference = ct.frame_of_reference_uid or str(loaded.source_datasets[0].FrameOfReferenceUID)
    volume = hd.Volume(stack, ct.affine, coordinate_system="PATIENT", frame_of_reference_uid=frame_of_reference,
                       channels={"SegmentNumber": list(range(1, len(present) + 1))})
    descriptions = []
    for number, (name, _) in enumerate(present, start=1):
        label, category, kind, region, rgb = _SEGMENTS[name]
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=label, segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            anatomic_regions=[region] if region is not None else None,
            display_color=hd.color.CIELabColor.from_rgb(*rgb),
        ))
    return hd.seg.Segmentation(
        source_images=list(loaded.source_datasets), pixel_array=volume,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=_SERIES_NUMBER, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="femur-lesion-seg", manufacturer_model_name="annotation server", software_versions="0.1.0",
        device_serial_number="0", series_description=FINAL_SERIES_DESCRIPTION,
        omit_empty_frames=False,  # every frame: readers that stack frames get the image's full shape
    )


def seg_label_volume(seg: Dataset | Path, loaded: LoadedSeries) -> np.ndarray:
    """A SEG read back with highdicom as a label volume, uint8 (z, y, x) on the CT series' full grid."""
    if isinstance(seg, Dataset) and not isinstance(seg, hd.seg.Segmentation):
        seg = hd.seg.Segmentation.from_dataset(seg)
    masks = read_segment_masks(seg, loaded.volume)
    out = np.zeros(loaded.volume.spatial_shape, dtype=np.uint8)
    values = {name: value for value, name in enumerate(annotation_labels(True), start=1)}
    for name in (FEMUR, CYST, LESION):  # the more specific value last
        word = _SEGMENTS[name][0].casefold()
        for label, mask in masks.items():
            if word in label.casefold():
                out[mask] = values[name]
    return out


def _series_id(image_id: str) -> str:
    """``image_id`` (a SeriesInstanceUID, from a request or the PACS), refused when it could not be a
    single file name: it names folders and files of the local cache."""
    if safe_name(image_id) != image_id:
        raise ValueError(f"{image_id!r} is not a series id (SeriesInstanceUID)")
    return image_id


class HighdicomDICOMWebDatastore(DICOMWebDatastore):
    """See the module docstring."""

    @classmethod
    def from_settings(cls, url: str) -> HighdicomDICOMWebDatastore:
        """The datastore of a DICOMweb root, with MONAI Label's settings (credentials, prefixes, cache)."""
        session = None
        if settings.MONAI_LABEL_DICOMWEB_USERNAME and settings.MONAI_LABEL_DICOMWEB_PASSWORD:
            session = create_session_from_user_pass(settings.MONAI_LABEL_DICOMWEB_USERNAME,
                                                    settings.MONAI_LABEL_DICOMWEB_PASSWORD)
        client = DICOMwebClientX(url=url, session=session, qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
                                 wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
                                 stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX)
        cache = (settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip() or None
        return cls(client=client, search_filter=settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER, cache_path=cache,
                   fetch_by_frame=settings.MONAI_LABEL_DICOMWEB_FETCH_BY_FRAME, convert_to_nifti=False)

    # ------------------------------------------------------------------------------------ listing

    def list_images(self) -> list[str]:
        datasets = self._client.search_for_series(search_filters=self._search_filter)
        return sorted(str(Dataset.from_json(ds)["SeriesInstanceUID"].value) for ds in datasets)

    def final_labels(self) -> dict[str, str]:
        """Per CT series with a final label, the SeriesInstanceUID of its newest final-label SEG."""
        images = set(self.list_images())
        newest: dict[str, tuple[str, str]] = {}
        for item in self._client.search_for_series(search_filters={"Modality": "SEG"}):
            series = Dataset.from_json(item)
            if str(series.get("SeriesDescription", "")) != FINAL_SERIES_DESCRIPTION:
                continue
            seg_uid = str(series.SeriesInstanceUID)
            meta = Dataset.from_json(self._client.retrieve_series_metadata(str(series.StudyInstanceUID), seg_uid)[0])
            referenced = meta.get("ReferencedSeriesSequence")
            if not referenced or str(referenced[0].SeriesInstanceUID) not in images:
                continue
            image_id = str(referenced[0].SeriesInstanceUID)
            when = f"{meta.get('SeriesDate', '')}{meta.get('SeriesTime', '')}"
            if image_id not in newest or when >= newest[image_id][0]:
                newest[image_id] = (when, seg_uid)
        return {image_id: seg_uid for image_id, (_, seg_uid) in newest.items()}

    def get_labeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        return sorted(self.final_labels())

    def get_unlabeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        return sorted(set(self.list_images()) - set(self.final_labels()))

    # ------------------------------------------------------------------------------------ labels

    def get_image_uri(self, image_id: str) -> str:
        """The series' folder in the local cache (MONAI Label downloads it there under its id)."""
        return super().get_image_uri(_series_id(image_id))

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any],
                   label_id: str = "") -> str:
        """Save a label; a ``final`` one becomes a DICOM-SEG in the PACS (returns its SeriesInstanceUID)."""
        image_id = _series_id(image_id)
        extension = "".join(Path(label_filename).suffixes) or ".nrrd"
        folder = Path(self._datastore.label_path(label_tag))
        folder.mkdir(parents=True, exist_ok=True)
        if label_tag != DefaultLabelTag.FINAL:
            shutil.copy(label_filename, folder / f"{image_id}{extension}")
            return image_id
        loaded = load_study(Path(self.get_image_uri(image_id)))
        labels, change = onto_grid(read_volume_file(label_filename), loaded.volume)
        seg = label_seg(np.asarray(labels).astype(np.uint8), loaded)
        self._client.store_instances(datasets=[seg])
        shutil.copy(label_filename, folder / f"{image_id}{extension}")
        logger.info("final label of series %s stored as SEG %s (%d segments%s)", image_id, seg.SeriesInstanceUID,
                    len(seg.SegmentSequence), f"; label {change}" if change else "")
        return str(seg.SeriesInstanceUID)

    def get_label_uri(self, label_id: str, label_tag: str, image_id: str = "") -> str:
        """For a final label: the SEG ``label_id`` read back as ``labels/final/<image_id>.nrrd`` on the CT grid."""
        image_id = _series_id(image_id) if image_id else image_id
        if label_tag != DefaultLabelTag.FINAL:
            return super().get_label_uri(label_id, label_tag)
        if not image_id:
            image_id = next((i for i, s in self.final_labels().items() if s == label_id), "")
            if not image_id:
                raise ValueError(f"SEG {label_id} is no final label of a listed CT series")
        loaded = load_study(Path(self.get_image_uri(image_id)))
        with tempfile.TemporaryDirectory(prefix="seg-") as tmp:
            dicom_web_download_series(None, label_id, tmp, self._client, False)
            files = sorted(Path(tmp).glob("*.dcm"))
            if len(files) != 1:
                raise ValueError(f"SEG series {label_id} holds {len(files)} instances, expected 1")
            labels = seg_label_volume(files[0], loaded)
        target = Path(self._datastore.label_path(DefaultLabelTag.FINAL)) / f"{image_id}.nrrd"
        target.parent.mkdir(parents=True, exist_ok=True)
        write_volume(target, hd.Volume(labels, loaded.volume.affine, "PATIENT"))
        return str(target)

    def datalist(self, full_path: bool = True) -> list[dict[str, Any]]:
        """Every CT series with a final label: ``{"image": series folder, "label": label volume file}``."""
        items = []
        for image_id, seg_uid in sorted(self.final_labels().items()):
            items.append({"image": self.get_image_uri(image_id),
                          "label": self.get_label_uri(seg_uid, DefaultLabelTag.FINAL, image_id)})
        return items

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        # Images of a PACS are not in the local bookkeeping; scores live in the model store.
        logger.debug("image info of %s not kept for a DICOMweb datastore", image_id)

    def status(self) -> dict[str, Any]:
        images = self.list_images()
        labeled = self.final_labels()
        return {"total": len(images), "completed": len(labeled), "label_tags": [DefaultLabelTag.FINAL.value],
                "train": len(labeled)}

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        """The series' UIDs and modality; ``/activelearning`` returns them, and OHIF's panel opens the study.

        MONAI Label logs what ``/activelearning`` returns: no patient attributes here.
        """
        info: dict[str, Any] = {"SeriesInstanceUID": image_id,
                                "path": os.path.join(self._datastore.image_path(), image_id)}
        found = self._client.search_for_series(search_filters={"SeriesInstanceUID": image_id},
                                               fields=["StudyInstanceUID", "Modality"])
        if found:
            series = Dataset.from_json(found[0])
            for key in ("StudyInstanceUID", "Modality"):
                if key in series:
                    info[key] = str(series[key].value)
        return info
