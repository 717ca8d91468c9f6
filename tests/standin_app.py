"""A quick stand-in for the application, for gateway tests that need many or repeated runs.

It keeps the application's contract as the gateway sees it (``-i INPUT -o OUTPUT -m MODEL``; writes
``seg.dcm`` and ``sr.dcm`` into OUTPUT, each under a temporary name then renamed; exit 0, 1 with one
line ``error: ...`` on a failure worth retrying, 2 on unusable input) in about two seconds instead of
the application's twenty: the SEG (highdicom, BINARY) marks a small box in the middle of the largest CT
series, the SR is a minimal Comprehensive 3D SR of the same study. New SOPInstanceUIDs every run, as
the application. Environment: ``STANDIN_DELAY_S`` seconds to wait before writing (so that a test can act
while it "computes"), ``STANDIN_SEG_MB`` megabytes of padding added to the SEG (a large output, for
disk-full tests), ``STANDIN_LIGHT=1`` for a SEG header without frames, made without highdicom (half a
second a run: for load tests, where only the gateway's work counts). Never prints patient data.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("-i", "--input", type=Path, required=True)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("-m", "--model", type=Path, required=True)
    args = parser.parse_args(argv)
    light = os.environ.get("STANDIN_LIGHT") == "1"
    series: dict[str, list[Dataset]] = {}
    for path in sorted(p for p in args.input.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=light)
        except (OSError, pydicom.errors.InvalidDicomError):
            continue
        if str(ds.get("Modality", "")) == "CT" and (light or "PixelData" in ds):
            series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    if not series:
        print("error: no CT series in the input", file=sys.stderr)
        return 2
    images = max(series.values(), key=len)
    images.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    time.sleep(float(os.environ.get("STANDIN_DELAY_S", "0")))
    try:
        seg = _header_only_segmentation(images[0]) if light else _segmentation(images)
        args.output.mkdir(parents=True, exist_ok=True)
        _write(seg, args.output / "seg.dcm", padding_mb=float(os.environ.get("STANDIN_SEG_MB", "0")))
        _write(_report(images[0]), args.output / "sr.dcm")
    except OSError as error:
        print(f"error: cannot write the results: {error.strerror or error}", file=sys.stderr)
        return 1
    print(f"stand-in: {len(images)} image(s), seg.dcm and sr.dcm written")
    return 0


def _segmentation(images: list[Dataset]) -> Dataset:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    rows, columns = int(images[0].Rows), int(images[0].Columns)
    mask = np.zeros((len(images), rows, columns), dtype=bool)
    middle = len(images) // 2
    mask[max(middle - 2, 0):middle + 2, rows // 2 - 8:rows // 2 + 8, columns // 2 - 8:columns // 2 + 8] = True
    algorithm = hd.AlgorithmIdentificationSequence(name="gateway test stand-in", version="1",
                                                   family=codes.cid7162.ArtificialIntelligence)
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Stand-in box", segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm)
    return hd.seg.Segmentation(
        source_images=images, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment], series_instance_uid=hd.UID(), series_number=901,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="femur-lesion test",
        manufacturer_model_name="stand-in", software_versions="1", device_serial_number="0",
        series_description="Stand-in segmentation", omit_empty_frames=True)


def _header_only_segmentation(source: Dataset) -> Dataset:
    seg = _instance(source, SEGMENTATION, "SEG", series_number=901)
    reference = Dataset()
    reference.SeriesInstanceUID = source.SeriesInstanceUID
    seg.ReferencedSeriesSequence = [reference]
    seg.SegmentationType = "BINARY"
    return seg


def _instance(source: Dataset, sop_class: str, modality: str, *, series_number: int) -> Dataset:
    """A new instance of the source's study (patient and study attributes copied, new UIDs)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                    "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName"):
        setattr(ds, keyword, source.get(keyword, ""))
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = series_number
    ds.InstanceNumber = 1
    ds.Manufacturer = "femur-lesion test"
    return ds


def _report(source: Dataset) -> Dataset:
    sr = _instance(source, COMPREHENSIVE_3D_SR, "SR", series_number=902)
    sr.ValueType = "CONTAINER"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator = "126000", "DCM"
    concept.CodeMeaning = "Imaging Measurement Report"
    sr.ConceptNameCodeSequence = [concept]
    sr.ContinuityOfContent = "SEPARATE"
    sr.CompletionFlag = "COMPLETE"
    sr.VerificationFlag = "UNVERIFIED"
    sr.ContentSequence = []
    return sr


def _write(ds: Dataset, path: Path, *, padding_mb: float = 0.0) -> None:
    """Write under a temporary name in the same folder, then rename (as the application does)."""
    partial = path.with_name(f".{path.name}.partial")
    if padding_mb > 0:
        # Padding in a private tag (a valid element every reader skips): a large file on demand.
        ds.add_new(0x00990010, "LO", "FEMUR GATEWAY TEST")
        ds.add_new(0x00991010, "OB", b"\0" * int(padding_mb * 1024 * 1024))
    ds.save_as(partial, enforce_file_format=True)
    os.replace(partial, path)


if __name__ == "__main__":
    sys.exit(main())
