"""DICOM Structured Report of the femoral lesion findings: Comprehensive 3D SR, TID 1500 Measurement Report.

One report per CT series, a new series in the CT's study (patient and study identity are copied from the
CT by highdicom). The observer is the algorithm (a device observer named after the model); the procedure
reported is a CT (LOINC 25045-6 "CT unspecified body region": pydicom's code tables hold no code for a CT
of the lower limbs, and the femur is stated as the finding site instead).

Content: one measurement group per patient side, tracking identifier "Left femur" / "Right femur",
finding site Femur (SCT 71341001) with laterality Left / Right, and the algorithm's identification
(name, version, parameters; TID 4019). For a femur in view:

- with lesions, Finding category Morphologically abnormal structure and Finding Neoplasm, as the lesion
  segments of the SEG;
- Number of lesions (SCT 246206008, unit ``{lesions}``), always, 0 included;
- with lesions: Volume (SCT 118565006) with derivation Total and with derivation Maximum (UCUM cm3, i.e.
  ml), Diameter (SCT 81827009) with derivation Maximum (mm), the largest distance between two voxel
  centres of a lesion;
- qualitative evaluations: Lesion (SCT 52988006) = Present / Absent (DCM 121053 / 121054), so that "no
  lesion" is stated, not implied; Site involvement (DCM 112008) = Head of Femur (SCT 2812003) or Shaft of
  Femur (SCT 41111004), or free text "Femoral neck" / "Trochanteric region" (no code for them in pydicom's
  tables), or Unknown (SCT 261665006) when the proximal femur is not in view; Cortical involvement =
  Present / Absent, a concept of this product's own coding scheme :data:`CODING_SCHEME` (declared in the
  Coding Scheme Identification Sequence), as no standard code names it.

A femur not in view gets a group stating Femur (SCT 71341001) = Not visualized (DCM 122288); when neither
femur is in view both groups say so and the report references the CT only.

When the DICOM-SEG of the same CT is given, a femur's group is a Volumetric ROI group (TID 1411) that
references the segment it describes: the side's lytic lesion segment when the femur has lesions (its
measurements are then those of that segment's lesions, components under the minimum lesion volume not
counted), otherwise the femur segment; the segments are
found by the labels :mod:`operators.dicom_seg` writes. Without a SEG the groups are TID 1501 groups. The
report's evidence lists every CT instance (and the SEG), so the CT is referenced either way.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from operators.dicom_seg import AlgorithmInfo, SegmentSpec, write_dataset
from operators.errors import InputError
from operators.lesion_findings import UNKNOWN_LOCATION, FemurFindings, StudyFindings
from operators.patient_identity import identity_for_copy, patient_values_hidden

logger = logging.getLogger(__name__)

__all__ = [
    "CODING_SCHEME",
    "CORTICAL_INVOLVEMENT",
    "LESIONS_UNIT",
    "NUMBER_OF_LESIONS",
    "SITE_CODES",
    "SITE_TEXT",
    "build_findings_sr",
    "read_findings_sr",
    "write_findings_sr",
]

#: This product's coding scheme, for the concepts no standard code names (declared in the SR header).
CODING_SCHEME = "99FEMLES"
#: Whether a lesion reaches the femur's outer surface (see :mod:`operators.lesion_findings`).
CORTICAL_INVOLVEMENT = Code("CORTINV", CODING_SCHEME, "Cortical involvement")
#: SCT 246206008 with its preferred term (pydicom's meaning carries the "(observable entity)" tag).
NUMBER_OF_LESIONS = Code(codes.SCT.NumberOfLesions.value, "SCT", "Number of lesions")
#: UCUM annotation unit of a lesion count (a dimensionless count, like DICOM's "{counts}").
LESIONS_UNIT = Code("{lesions}", "UCUM", "lesions")
#: Coded sites along the femur; the others are given as text.
SITE_CODES: dict[str, Code] = {
    "head": codes.SCT.HeadOfFemur,
    "shaft": codes.SCT.ShaftOfFemur,
    UNKNOWN_LOCATION: codes.SCT.Unknown,
}
SITE_TEXT: dict[str, str] = {"neck": "Femoral neck", "trochanteric": "Trochanteric region"}

_LATERALITY = {"left": codes.SCT.Left, "right": codes.SCT.Right}
_NOT_VISUALIZED = codes.DCM.NotVisualized
_PROCEDURE = codes.cid100.CTUnspecifiedBodyRegion
_SEG_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7")
# Type 2 patient/study attributes highdicom reads from the first evidence dataset; anonymised data may
# lack them, and they are then written empty (never invented).
_PATIENT_STUDY_TYPE2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber",
                        "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName")


def build_findings_sr(
    *,
    findings: StudyFindings,
    source_datasets: Sequence[Dataset],
    algorithm: AlgorithmInfo,
    segmentation: Dataset | None = None,
    series_number: int = 902,
    series_description: str = "Femoral lytic lesion findings (AI)",
    manufacturer: str = "femur-lesion-seg",
    software_version: str = "0.1.0",
    institution_name: str | None = None,
) -> hd.sr.Comprehensive3DSR:
    """Build the Comprehensive 3D SR of a study's femoral lesion findings.

    Parameters
    ----------
    findings:
        Findings of both femurs (:func:`operators.lesion_findings.study_findings`).
    source_datasets:
        Header datasets of the CT series the findings were computed on (pixel data not needed); the
        report's patient and study identity are copied from them and it lists them as evidence.
    algorithm:
        The model that produced the segmentation: observer name and algorithm identification.
    segmentation:
        The DICOM-SEG written for the same CT by :func:`operators.dicom_seg.build_segmentation`, or None.
        When given, each femur's group references its segment (see the module docstring).
    series_number, series_description, manufacturer, software_version, institution_name:
        Header of the new SR series.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        Write it with :func:`write_findings_sr` (atomic).
    """
    if not isinstance(findings, StudyFindings):
        raise TypeError(f"findings must be StudyFindings, not {type(findings).__name__}")
    evidence = _evidence(source_datasets)
    if segmentation is not None:
        _check_segmentation(segmentation, evidence[0])
        evidence.append(segmentation)

    algorithm_id = hd.sr.AlgorithmIdentification(
        name=algorithm.name,
        version=algorithm.version,
        parameters=[f"{k}={v}" for k, v in algorithm.parameters.items()] if algorithm.parameters else None,
    )
    groups = [_femur_group(f, segmentation, algorithm_id) for f in findings.femurs]
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=_device_uid(algorithm),
            name=algorithm.name,
            manufacturer_name=algorithm.source or manufacturer,
            model_name=f"{algorithm.name} {algorithm.version}",
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=_PROCEDURE,
        imaging_measurements=groups,
        title=codes.cid7021.ImagingMeasurementReport,
    )
    scheme = hd.coding_schemes.CodingSchemeIdentificationItem(
        designator=CODING_SCHEME,
        name="Femoral lytic lesion findings",
        responsible_organization=manufacturer,
    )
    with patient_values_hidden():
        sr = hd.sr.Comprehensive3DSR(
            evidence=evidence,
            content=report[0],
            series_instance_uid=hd.UID(),
            series_number=series_number,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=manufacturer,
            manufacturer_model_name=algorithm.name,
            software_versions=software_version,
            series_description=series_description,
            institution_name=institution_name,
            # The algorithm's complete statement, preliminary until a radiologist has read it.
            is_complete=True,
            is_final=False,
            coding_schemes=[scheme],
        )
    logger.info(
        "SR built: series %s, %d femur(s) in view, SEG %s",
        sr.SeriesInstanceUID,
        sum(f.present for f in findings.femurs),
        "referenced" if segmentation is not None else "not given",
    )
    return sr


def write_findings_sr(sr: Dataset, path: Path) -> Path:
    """Write the SR to ``path`` atomically (:func:`operators.dicom_seg.write_dataset`)."""
    return write_dataset(sr, path)


# --------------------------------------------------------------------------------------------------
# Content
# --------------------------------------------------------------------------------------------------


def _femur_group(
    femur: FemurFindings,
    segmentation: Dataset | None,
    algorithm_id: hd.sr.AlgorithmIdentification,
) -> hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    tracking = hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=femur.label)
    site = hd.sr.FindingSite(anatomic_location=codes.SCT.Femur, laterality=_LATERALITY[femur.side])
    if not femur.present:
        return hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            finding_sites=[site],
            algorithm_id=algorithm_id,
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.SCT.Femur, _NOT_VISUALIZED)],
        )

    measurements = [hd.sr.Measurement(name=NUMBER_OF_LESIONS, value=femur.n_lesions, unit=LESIONS_UNIT)]
    evaluations = [hd.sr.QualitativeEvaluation(codes.SCT.Lesion,
                                               codes.DCM.Present if femur.lesions else codes.DCM.Absent)]
    texts: list[str] = []
    if femur.lesions:
        measurements += [
            hd.sr.Measurement(name=codes.SCT.Volume, value=round(femur.total_lesion_volume_ml, 3),
                              unit=codes.UCUM.CubicCentimeter, derivation=codes.SCT.Total),
            hd.sr.Measurement(name=codes.SCT.Volume, value=round(femur.largest_lesion_volume_ml, 3),
                              unit=codes.UCUM.CubicCentimeter, derivation=codes.SCT.Maximum),
            hd.sr.Measurement(name=codes.SCT.Diameter, value=round(femur.largest_diameter_mm, 1),
                              unit=codes.UCUM.Millimeter, derivation=codes.SCT.Maximum),
        ]
        for location in femur.locations:
            if location in SITE_CODES:
                evaluations.append(hd.sr.QualitativeEvaluation(codes.DCM.SiteInvolvement, SITE_CODES[location]))
            else:
                texts.append(SITE_TEXT[location])
        evaluations.append(hd.sr.QualitativeEvaluation(
            CORTICAL_INVOLVEMENT, codes.DCM.Present if femur.cortical_involvement else codes.DCM.Absent))

    common: dict[str, Any] = dict(
        tracking_identifier=tracking,
        finding_sites=[site],
        algorithm_id=algorithm_id,
        measurements=measurements,
        qualitative_evaluations=evaluations,
    )
    if femur.lesions:
        # Same category and type as the lesion segment of the SEG.
        common.update(finding_category=codes.SCT.MorphologicallyAbnormalStructure, finding_type=codes.SCT.Neoplasm)
    reference = _segment_reference(segmentation, femur) if segmentation is not None else None
    if reference is not None:
        group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(referenced_segment=reference, **common)
    else:
        group = hd.sr.MeasurementsAndQualitativeEvaluations(**common)
    for text in texts:
        group[0].ContentSequence.append(hd.sr.TextContentItem(
            name=codes.DCM.SiteInvolvement, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    return group


def _segment_reference(segmentation: Dataset, femur: FemurFindings) -> hd.sr.ReferencedSegment | None:
    """The side's lesion segment when the femur has lesions, else its femur segment; None if absent."""
    numbers = {str(item.SegmentLabel): int(item.SegmentNumber) for item in segmentation.SegmentSequence}
    wanted = [SegmentSpec.lytic_lesion(femur.side).label] if femur.lesions else []
    wanted.append(SegmentSpec.femur(femur.side).label)
    for label in wanted:
        if label not in numbers:
            continue
        try:
            return hd.sr.ReferencedSegment.from_segmentation(segmentation, segment_number=numbers[label])
        except ValueError as exc:  # e.g. a segment with no frame (all empty frames omitted)
            logger.warning("segment %r of the SEG cannot be referenced: %s", label, exc)
    logger.warning("the SEG has no usable segment for the %s femur: its SR group references no segment",
                   femur.side)
    return None


# --------------------------------------------------------------------------------------------------
# Checks at the boundary
# --------------------------------------------------------------------------------------------------


def _evidence(source_datasets: Sequence[Dataset]) -> list[Dataset]:
    datasets = list(source_datasets)
    if not datasets:
        raise ValueError("the SR needs the source CT datasets it reports on")
    first = datasets[0]
    series = str(first.get("SeriesInstanceUID", "") or "")
    for name in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if not str(first.get(name, "") or ""):
            raise InputError(f"source CT series {series or '(no UID)'} has no {name}: the SR cannot reference it")
    studies = {str(ds.get("StudyInstanceUID", "")) for ds in datasets}
    if len(studies) != 1:
        raise InputError(f"source CT datasets of series {series} belong to {len(studies)} studies")
    # Missing type 2 attributes are written empty (never invented), values highdicom cannot convert are
    # emptied, and the source header itself is left as it is.
    datasets[0] = identity_for_copy(first, required=_PATIENT_STUDY_TYPE2)
    return datasets


def _check_segmentation(segmentation: Dataset, ct: Dataset) -> None:
    if str(segmentation.get("SOPClassUID", "")) not in _SEG_SOP_CLASSES:
        raise ValueError("segmentation must be a DICOM Segmentation instance")
    if str(segmentation.get("StudyInstanceUID", "")) != str(ct.StudyInstanceUID):
        raise InputError(
            f"the SEG {segmentation.get('SOPInstanceUID', '')} belongs to another study than CT series "
            f"{ct.SeriesInstanceUID}"
        )
    referenced = {str(item.SeriesInstanceUID) for item in segmentation.get("ReferencedSeriesSequence", [])}
    if referenced and str(ct.SeriesInstanceUID) not in referenced:
        raise InputError(f"the SEG {segmentation.SOPInstanceUID} does not reference CT series {ct.SeriesInstanceUID}")


def _device_uid(algorithm: AlgorithmInfo) -> str:
    # The same model version is the same device in every report: a name-based UUID, as a 2.25 UID.
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, f'femur-lesion-seg:{algorithm.name}:{algorithm.version}').int}"


# --------------------------------------------------------------------------------------------------
# Reading back
# --------------------------------------------------------------------------------------------------


def read_findings_sr(sr: Dataset | Path) -> dict[str, dict[str, Any]]:
    """The per-femur content of an SR written by :func:`build_findings_sr`, as plain values.

    Parameters
    ----------
    sr:
        The SR dataset or its file.

    Returns
    -------
    dict
        Keyed by tracking identifier ("Left femur", "Right femur"): ``measurements`` maps
        "<concept meaning>" or "<concept meaning> (<derivation meaning>)" to ``(value, unit code)``;
        ``evaluations`` maps a concept meaning to the list of its values' meanings (coded or text);
        ``laterality`` is the finding site's laterality meaning; ``referenced_segment`` the referenced
        segment number (None for a TID 1501 group).
    """
    if not isinstance(sr, Dataset):
        sr = pydicom.dcmread(sr)
    out: dict[str, dict[str, Any]] = {}
    for container in sr.ContentSequence:
        if _meaning(container) != "Imaging Measurements":
            continue
        for group in container.ContentSequence:
            entry: dict[str, Any] = {"measurements": {}, "evaluations": {}, "laterality": None,
                                     "referenced_segment": None}
            tracking = None
            for item in group.ContentSequence:
                name = _meaning(item)
                if item.ValueType == "TEXT" and name == "Tracking Identifier":
                    tracking = str(item.TextValue)
                elif item.ValueType == "NUM":
                    value = float(item.MeasuredValueSequence[0].NumericValue)
                    unit = str(item.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue)
                    derivation = [_value(m) for m in item.get("ContentSequence", []) if _meaning(m) == "Derivation"]
                    key = f"{name} ({derivation[0]})" if derivation else name
                    entry["measurements"][key] = (value, unit)
                elif name == "Finding Site":
                    for modifier in item.get("ContentSequence", []):
                        if _meaning(modifier) == "Laterality":
                            entry["laterality"] = _value(modifier)
                elif item.ValueType == "IMAGE" and name == "Referenced Segment":
                    entry["referenced_segment"] = int(item.ReferencedSOPSequence[0].ReferencedSegmentNumber)
                elif item.ValueType in ("CODE", "TEXT") and item.RelationshipType == "CONTAINS":
                    entry["evaluations"].setdefault(name, []).append(_value(item))
            if tracking is not None:
                out[tracking] = entry
    return out


def _meaning(item: Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeMeaning)


def _value(item: Dataset) -> str:
    if item.ValueType == "TEXT":
        return str(item.TextValue)
    return str(item.ConceptCodeSequence[0].CodeMeaning)
