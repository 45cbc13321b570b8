"""A stand-in for a vendor's AI service, run by the vendor Orthanc's Python script
(``testing.vendor_orthanc``): it reads the de-identified series it was sent, "analyses" it (the
mean CT number in a central box of each slice: dense enough is a finding), and writes the
answer a vendor would return: a TID 1500 Comprehensive 3D SR in the same study, referencing the
images it was sent, stating the target Present or Absent (row 12 Qualitative Evaluations,
CID 240) and, when present, the finding as a TID 1410 Planar ROI group on the densest slice.

Written with highdicom, as a vendor might, not with radrouter's own writer.

    python -m testing.vendor_analysis IN_FOLDER OUT_FILE [THRESHOLD_HU]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

VENDOR = "ACME Imaging AI"
ALGORITHM = "ACME Density"
VERSION = "3.1.4"
TARGET = Code("4147007", "SCT", "Mass")
PRESENT, ABSENT = Code("52101004", "SCT", "Present"), Code("272519000", "SCT", "Absent")
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
ATTENUATION = Code("112031", "DCM", "Attenuation Coefficient")
HOUNSFIELD_UNIT = Code("[hnsf'U]", "UCUM", "Hounsfield unit")
CERTAINTY = Code("111012", "DCM", "Certainty of Finding")


def analyse(images: Sequence[pydicom.Dataset], threshold_hu: float) -> tuple[bool, int, float]:
    """(present, index of the densest slice, its mean CT number in the central box)."""
    means = []
    for ds in images:
        hu = ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + float(
            ds.get("RescaleIntercept", 0)
        )
        rows, cols = hu.shape
        box = hu[rows // 3 : 2 * rows // 3, cols // 3 : 2 * cols // 3]
        means.append(float(box.mean()))
    densest = int(np.argmax(means))
    return means[densest] > threshold_hu, densest, means[densest]


def answer(images: Sequence[pydicom.Dataset], threshold_hu: float) -> hd.sr.Comprehensive3DSR:
    images = sorted(images, key=lambda ds: float(ds.ImagePositionPatient[2]))
    present, densest, mean_hu = analyse(images, threshold_hu)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=ALGORITHM, manufacturer_name=VENDOR, model_name=VERSION
        ),
    )
    groups: list[
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
        | hd.sr.MeasurementsAndQualitativeEvaluations
    ] = []
    if present:
        ds = images[densest]
        rows, cols = int(ds.Rows), int(ds.Columns)
        top, left, bottom, right = rows // 3, cols // 3, 2 * rows // 3, 2 * cols // 3
        outline = np.array(
            [[left, top], [right, top], [right, bottom], [left, bottom], [left, top]],
            dtype=np.float32,
        )
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=hd.UID(), identifier="Dense region 1"
                ),
                referenced_region=hd.sr.ImageRegion(
                    graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                    graphic_data=outline,
                    source_image=hd.sr.SourceImageForRegion(
                        referenced_sop_class_uid=ds.SOPClassUID,
                        referenced_sop_instance_uid=ds.SOPInstanceUID,
                    ),
                ),
                finding_type=TARGET,
                measurements=[
                    hd.sr.Measurement(
                        name=ATTENUATION, value=round(mean_hu, 1), unit=HOUNSFIELD_UNIT
                    ),
                    hd.sr.Measurement(
                        name=CERTAINTY, value=90.0, unit=Code("%", "UCUM", "Percent")
                    ),
                ],
            )
        )
    groups.append(  # TID 1501: the densest slice's mean CT number, found or not
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="Series"),
            measurements=[
                hd.sr.Measurement(name=ATTENUATION, value=round(mean_hu, 1), unit=HOUNSFIELD_UNIT)
            ],
        )
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=Code("25045-6", "LN", "CT unspecified body region"),
        imaging_measurements=groups,
    )
    statement = hd.sr.CodeContentItem(
        name=TARGET,
        value=PRESENT if present else ABSENT,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    statement.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=Code("121106", "DCM", "Comment"),
                value=f"densest slice {densest + 1}: mean {mean_hu:.0f} HU",
                relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES,
            )
        ]
    )
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS,
        is_content_continuous=False,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    container.ContentSequence = hd.sr.ContentSequence([statement])
    report[0].ContentSequence.append(container)
    return hd.sr.Comprehensive3DSR(
        evidence=images,
        content=report[0],
        series_instance_uid=hd.UID(),
        series_number=901,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=VENDOR,
        series_description=f"{ALGORITHM} {VERSION}",
        is_complete=True,
    )


def main(argv: list[str]) -> int:
    folder, out = Path(argv[0]), Path(argv[1])
    threshold = float(argv[2]) if len(argv) > 2 else 0.0
    images = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    answer(images, threshold).save_as(out, enforce_file_format=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
