"""PixelMed's SR validator, dciodvfy and highdicom on every kind of object the shipped
algorithms write: SR (TID 1500) of each algorithm, negative and not assessed, SEG and KOS.

The results have the shapes the plugins return (finding types, sites, qualifiers,
measurements, masks, study-level measurements and probability; see each plugin's
``_finding``), with the plugins' own ``AlgorithmInfo``, and are built the way the router builds
them (``build_result_objects`` with source headers and geometry; priors for a follow-up; the
next version after late images). No model runs.

PixelMed 20220618 (Debian) applies the condition of TID 1410 / 1411 rows to every measurement
group of a report that mixes TID 1410, 1411 and 1501 groups, which TID 1500 allows, and then
reports "Missing conditional content item" on the groups of the other kinds. So a mixed report
is validated whole (that message is the only error allowed) and once per kind of group (a copy
holding only the groups of that kind, which must have no error at all).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from algorithms import codes
from algorithms.contract import (
    AlgorithmInfo,
    AlgorithmResult,
    Code,
    Finding,
    ImageRegion,
    Measurement,
    Qualifier,
    Verdict,
    VolumeGeometry,
)
from algorithms.fracture.plugin import FractureDetector
from algorithms.lung_nodule.plugin import LungNoduleDetector
from algorithms.ms_lesion.plugin import MSLesionSegmenter
from algorithms.pe.plugin import PulmonaryEmbolismDetector
from dicom_sr import codes as sr_codes
from dicom_sr.context import InstanceReference, ResultVersion, SourceImage, StudyContext
from dicom_sr.identity import ObjectKind
from dicom_sr.io import write_dataset
from dicom_sr.read import read_measurement_report
from dicom_sr.read_kos import read_key_object_selection
from dicom_sr.read_seg import read_segmentation
from dicom_sr.result_objects import ResultObjects, build_result_objects
from dicom_sr.uids import derive_uid
from testing.dicom_tools import PIXELMED_JAR, PixelMedReport, run_pixelmed_sr_validator
from testing.mr_dicom import write_mr_series
from testing.synthetic_dicom import new_patient_study, radiograph_dataset
from tests.dicom_sr.support import (
    KOS_PREDECESSOR_DCIODVFY_WARNINGS,
    assert_valid_dicom,
    box_mask,
    geometry_of,
    square_region,
)

pytestmark = [
    pytest.mark.slow,  # one JVM per validated file, about 6 s of CPU each
    pytest.mark.skipif(
        not PIXELMED_JAR.is_file(), reason="PixelMed missing (Debian libpixelmed-java)"
    ),
]

MIXED_GROUPS_ERROR = re.compile(
    r"^Template (1410|1411|1501) \w+/.*: Missing conditional content item$"
)
"""The one error PixelMed 20220618 reports wrongly, on reports that mix kinds of groups."""

# PixelMed warnings accepted on these objects, and why (warnings, not errors, in PixelMed too):
ACCEPTED_PIXELMED_WARNINGS = (
    # Direct children of a measurement group that PixelMed's 2022 TID 1410 / 1411 do not
    # list: TID 4019 Algorithm Name and Version (in 1411 groups) and the qualifiers (laterality,
    # changed status) as qualitative evaluations in 1410 groups. The templates are extensible;
    # PixelMed reports such items as "not in template".
    re.compile(
        r'^[\d.]+: .*/CONTAINER \(125007,DCM,"Measurement Group"\)/'
        r'(CODE \(\w+,\w+,"[^"]+"\)|TEXT \((111001|111003),DCM,"[^"]+"\)): '
        r"Content Item not in template$"
    ),
    # The properties of the study-level statement (row 13 CODE of the Qualitative Evaluations
    # container): the reason as a Comment, the certainty and the study-level measurements.
    # TID 1500 is extensible; they are there and not in a TID 1501 group because OHIF fails on
    # a measurement group without image coordinates (docs/viewing-results.md).
    re.compile(
        r'^[\d.]+: .*/CONTAINER \(C0034375,UMLS,"Qualitative Evaluations"\)/'
        r'CODE \([^,]+,\w+,"[^"]+"\)/(TEXT \(121106,DCM,"Comment"\)|NUM \([^,]+,\w+,"[^"]+"\)): '
        r"Content Item not in template$"
    ),
    # highdicom and PixelMed spell the meaning of (121232, DCM) with different case; codes are
    # matched by value and scheme.
    re.compile(
        r'.*Code \(121232,DCM,"Source Series for Segmentation"\) has different code '
        r'meaning \("Source Series for Segmentation"\) than code meaning in template '
        r'concept name \("Source series for segmentation"\)$'
    ),
)

PRIVATE_CODE_DCIODVFY_WARNING = (
    "Unrecognized defined term <99RADROUTER> for value 1 of attribute <Coding Scheme Designator>"
)
"""ms_lesion's follow-up counts (new, enlarging lesions) have no standard code: dciodvfy
warns on the private coding scheme (99RADROUTER, algorithms/codes.py), declared or not."""

PRIOR_STUDY_UID = derive_uid("test", "pixelmed", "prior study")
PRIOR_SERIES_UID = derive_uid("test", "pixelmed", "prior series")
MR_SHAPE = (8, 48, 48)
RADIOGRAPH_SHAPE = (512, 384)


@dataclass(frozen=True)
class Case:
    """One result of a shipped algorithm, built and written as the router would."""

    result: AlgorithmResult
    source_images: list[SourceImage]
    objects: ResultObjects
    paths: dict[ObjectKind, Path]
    pixelmed_kinds: tuple[ObjectKind, ...]
    """Which of its objects PixelMed checks (SR always; the KOS where it adds a variant)."""
    accepted_dciodvfy_warnings: Mapping[ObjectKind, frozenset[str]]
    """dciodvfy warnings accepted on an object beyond those on every object."""


@dataclass(frozen=True)
class Series:
    """A source series as the router loads it: headers (no pixel data), slices, geometry."""

    headers: list[pydicom.Dataset]
    geometry: VolumeGeometry | None

    @property
    def source_images(self) -> list[SourceImage]:
        return [SourceImage(h.SOPClassUID, h.SOPInstanceUID) for h in self.headers]

    @property
    def study(self) -> StudyContext:
        return StudyContext(self.headers[0])

    def build(
        self,
        info: AlgorithmInfo,
        result: AlgorithmResult,
        *,
        version: ResultVersion | None = None,
        prior_evidence: tuple[InstanceReference, ...] = (),
        tracking_uids: dict[str, str] | None = None,
    ) -> ResultObjects:
        return build_result_objects(
            result=result,
            info=info,
            source_images=self.source_images,
            study=self.study,
            version=version or ResultVersion(1),
            source_headers=self.headers,
            geometry=self.geometry,
            prior_evidence=prior_evidence,
            tracking_uids=tracking_uids,
        )

    def case(
        self,
        folder: Path,
        info: AlgorithmInfo,
        result: AlgorithmResult,
        *,
        pixelmed_kinds: tuple[ObjectKind, ...] = (ObjectKind.SR,),
        version: ResultVersion | None = None,
        prior_evidence: tuple[InstanceReference, ...] = (),
        tracking_uids: dict[str, str] | None = None,
        accepted_dciodvfy_warnings: Mapping[ObjectKind, frozenset[str]] | None = None,
    ) -> Case:
        """Build the result's objects and write them (as the worker does) into ``folder``."""
        objects = self.build(
            info,
            result,
            version=version,
            prior_evidence=prior_evidence,
            tracking_uids=tracking_uids,
        )
        folder.mkdir(parents=True)
        paths = {
            o.kind: write_dataset(o.dataset, folder / f"{o.kind.value}.dcm") for o in objects.all()
        }
        return Case(
            result,
            self.source_images,
            objects,
            paths,
            pixelmed_kinds,
            accepted_dciodvfy_warnings or {},
        )


def mr_flair(folder: Path) -> Series:
    """An axial brain FLAIR series (synthetic MR Image Storage), read back as headers."""
    affine = np.eye(4)
    affine[:3, 0] = (0.0, 0.0, 4.0)  # slices along z, 4 mm apart
    affine[:3, 1] = (0.0, 1.0, 0.0)  # rows along y
    affine[:3, 2] = (1.0, 0.0, 0.0)  # columns along x
    affine[:3, 3] = (-24.0, -24.0, -14.0)
    image = np.full(MR_SHAPE, 400, dtype=np.uint16)
    paths = write_mr_series(image, affine, new_patient_study(31), folder)
    headers: list[pydicom.Dataset] = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    return Series(headers, geometry_of(headers))


def leg_radiograph() -> Series:
    """A long-bone radiograph (CR, BodyPartExamined LEG, no frame of reference)."""
    pixels = np.full(RADIOGRAPH_SHAPE, 1000, dtype=np.uint16)
    ds = radiograph_dataset(pixels, new_patient_study(32), body_part="LEG", pixel_spacing_mm=0.2)
    del ds.PixelData
    return Series([ds], None)


def lung_nodule_result(shape: tuple[int, int, int]) -> AlgorithmResult:
    """As ``algorithms.lung_nodule.plugin._finding``: long axis, volume, lung, mask."""

    def nodule(number: int, slices: range, rows: range, columns: range) -> Finding:
        row, column = (rows.start + rows.stop - 1) / 2.0, (columns.start + columns.stop - 1) / 2.0
        return Finding(
            finding_type=codes.LUNG_NODULE,
            probability=0.9 - 0.2 * number,
            centre_voxel=(float(slices.start), row, column),
            region=square_region(slices.start, column=column, row=row, half=4.0),
            measurements=(
                Measurement(codes.LONG_AXIS, 6.4, codes.MILLIMETRE),
                Measurement(codes.VOLUME, 102.4, codes.CUBIC_MILLIMETRE),
            ),
            finding_site=codes.LUNG,
            tracking_id=f"Nodule {number}",
            mask=box_mask(shape, slices, rows, columns),
        )

    return AlgorithmResult(
        Verdict.PRESENT,
        findings=(
            nodule(1, range(1, 3), range(20, 28), range(12, 20)),
            nodule(2, range(3, 5), range(30, 38), range(40, 48)),
        ),
        reason="2 lung nodule candidate(s) detected",
    )


def ms_lesion_follow_up_result(shape: tuple[int, int, int]) -> AlgorithmResult:
    """As ``algorithms.ms_lesion.plugin`` with a prior: changed status, study measurements."""

    def lesion(number: int, site: Code, status: Code, at: tuple[int, int, int]) -> Finding:
        k, row, column = at
        return Finding(
            finding_type=codes.DEMYELINATION,
            probability=0.8,
            centre_voxel=(float(k), float(row), float(column)),
            region=square_region(k, column=float(column), row=float(row), half=2.5),
            measurements=(
                Measurement(codes.LONG_AXIS, 5.2, codes.MILLIMETRE),
                Measurement(codes.VOLUME, 48.0, codes.CUBIC_MILLIMETRE),
            ),
            finding_site=site,
            tracking_id=f"Lesion {number}",
            mask=box_mask(
                shape, range(k, k + 1), range(row - 2, row + 2), range(column - 3, column + 3)
            ),
            qualifiers=(Qualifier(codes.CHANGED_STATUS, status),),
        )

    return AlgorithmResult(
        Verdict.PRESENT,
        findings=(
            lesion(1, codes.CEREBRAL_WHITE_MATTER, codes.STABLE, (3, 20, 14)),
            lesion(2, codes.CEREBRAL_WHITE_MATTER, codes.INCREASED, (4, 28, 32)),
            lesion(4, codes.CEREBELLUM, codes.NEW, (1, 36, 24)),
        ),
        reason="3 FLAIR-hyperintense lesion(s); 1 new, 1 enlarging, 1 stable, 0 decreased",
        measurements=(
            Measurement(codes.NUMBER_OF_LESIONS, 3.0, codes.NO_UNITS),
            Measurement(codes.VOLUME, 144.0, codes.CUBIC_MILLIMETRE),
            Measurement(codes.NUMBER_OF_NEW_LESIONS, 1.0, codes.NO_UNITS),
            Measurement(codes.NUMBER_OF_ENLARGING_LESIONS, 1.0, codes.NO_UNITS),
        ),
    )


def pe_result(shape: tuple[int, int, int]) -> AlgorithmResult:
    """As ``algorithms.pe.plugin._finding``: laterality and level, volume, artery, mask."""

    def embolus(
        number: int, qualifiers: tuple[Qualifier, ...], site: Code, k: int, row: int
    ) -> Finding:
        return Finding(
            finding_type=codes.PULMONARY_EMBOLISM,
            probability=0.7,
            centre_voxel=(float(k), float(row), 32.0),
            region=square_region(k, column=32.0, row=float(row), half=3.0),
            measurements=(Measurement(codes.VOLUME, 310.5, codes.CUBIC_MILLIMETRE),),
            finding_site=site,
            tracking_id=f"Embolus {number}",
            mask=box_mask(shape, range(k, k + 2), range(row - 3, row + 3), range(29, 35)),
            qualifiers=qualifiers,
        )

    return AlgorithmResult(
        Verdict.PRESENT,
        findings=(
            embolus(
                1,
                (
                    Qualifier(codes.LATERALITY, codes.RIGHT),
                    Qualifier(codes.TOPOGRAPHICAL_MODIFIER, codes.LOBAR),
                ),
                codes.PULMONARY_ARTERY,
                2,
                20,
            ),
            embolus(
                2,
                (Qualifier(codes.TOPOGRAPHICAL_MODIFIER, codes.CENTRAL),),
                codes.PULMONARY_TRUNK,
                3,
                40,
            ),
        ),
        probability=0.83,
        reason="suspected PE, right lobar artery, p=0.70 (+1 more)",
    )


def fracture_result() -> AlgorithmResult:
    """As ``algorithms.fracture.plugin._finding``: boxes on the radiograph, site by body part."""

    def fracture(number: int, column: float, row: float) -> Finding:
        outline = (
            (column, row),
            (column + 40, row),
            (column + 40, row + 60),
            (column, row + 60),
            (column, row),
        )
        return Finding(
            finding_type=codes.FRACTURE,
            probability=0.77,
            centre_voxel=(0.0, row + 30, column + 20),
            region=ImageRegion(slice_index=0, points=outline),
            finding_site=codes.LOWER_LEG,
            tracking_id=f"Fracture {number}",
        )

    return AlgorithmResult(
        Verdict.PRESENT,
        findings=(fracture(1, 150.0, 200.0), fracture(2, 170.0, 330.0)),
        probability=0.91,
        reason="Suspected fracture: 2 region(s) marked (fracture probability 0.910 >= 0.500)",
    )


@pytest.fixture(scope="module")
def cases(
    tmp_path_factory: pytest.TempPathFactory,
    ct_slices: list[pydicom.Dataset],
    geometry: VolumeGeometry,
) -> dict[str, Case]:
    root = tmp_path_factory.mktemp("pixelmed")
    ct = Series([copy.deepcopy(ds) for ds in ct_slices], geometry)
    for header in ct.headers:
        del header.PixelData
    mr = mr_flair(root / "mr")
    radiograph = leg_radiograph()

    assert ct.geometry is not None
    nodules = lung_nodule_result(ct.geometry.shape)
    # lung_nodule: the re-run after late images (version 2 names version 1's SR, SEG, KOS).
    first = ct.build(LungNoduleDetector.info, nodules)
    prior_evidence = tuple(
        InstanceReference(
            PRIOR_STUDY_UID, PRIOR_SERIES_UID, str(h.SOPClassUID), derive_uid("prior", str(k))
        )
        for k, h in enumerate(mr.headers)
    )
    absent = AlgorithmResult(
        Verdict.ABSENT,
        probability=0.12,
        reason="No pulmonary embolism detected (p=0.12, threshold 0.50; pulmonary trunk 310 HU)",
    )
    not_assessed = AlgorithmResult(
        Verdict.NOT_ASSESSED, reason="Slice spacing 6.0 mm is above the 5 mm limit"
    )
    with_kos = (ObjectKind.SR, ObjectKind.KOS)
    return {
        "lung_nodule": ct.case(
            root / "lung_nodule",
            LungNoduleDetector.info,
            nodules,
            pixelmed_kinds=with_kos,
            version=first.successor_version(),
            accepted_dciodvfy_warnings={ObjectKind.KOS: KOS_PREDECESSOR_DCIODVFY_WARNINGS},
        ),
        "ms_lesion_follow_up": mr.case(
            root / "ms_lesion",
            MSLesionSegmenter.info,
            ms_lesion_follow_up_result(MR_SHAPE),
            prior_evidence=prior_evidence,
            tracking_uids={
                "Lesion 1": derive_uid("prior finding", "1"),
                "Lesion 2": derive_uid("prior finding", "2"),
            },
            accepted_dciodvfy_warnings={ObjectKind.SR: frozenset({PRIVATE_CODE_DCIODVFY_WARNING})},
        ),
        "pe": ct.case(root / "pe", PulmonaryEmbolismDetector.info, pe_result(ct.geometry.shape)),
        "fracture": radiograph.case(
            root / "fracture", FractureDetector.info, fracture_result(), pixelmed_kinds=with_kos
        ),
        "absent": ct.case(root / "absent", PulmonaryEmbolismDetector.info, absent),
        "not_assessed": ct.case(root / "not_assessed", LungNoduleDetector.info, not_assessed),
    }


CASES = ("lung_nodule", "ms_lesion_follow_up", "pe", "fracture", "absent", "not_assessed")


def measurement_group_kinds(ds: pydicom.Dataset) -> list[str]:
    """Template identifiers of the measurement groups of a TID 1500 report, in order (none
    without an Imaging Measurements container: a report without findings)."""
    if not any(_is_imaging_measurements(item) for item in ds.ContentSequence):
        return []
    return [
        str(group.ContentTemplateSequence[0].TemplateIdentifier)
        for group in _imaging_measurements(ds).ContentSequence
    ]


def with_group_kind(ds: pydicom.Dataset, kind: str) -> pydicom.Dataset:
    """A copy of the report that keeps only the measurement groups of template ``kind``."""
    single = copy.deepcopy(ds)
    container = _imaging_measurements(single)
    container.ContentSequence = [
        group
        for group in container.ContentSequence
        if group.ContentTemplateSequence[0].TemplateIdentifier == kind
    ]
    return single


def _imaging_measurements(ds: pydicom.Dataset) -> pydicom.Dataset:
    item: pydicom.Dataset
    for item in ds.ContentSequence:
        if _is_imaging_measurements(item):
            return item
    raise AssertionError("no Imaging Measurements container (126010, DCM)")


def _is_imaging_measurements(item: pydicom.Dataset) -> bool:
    name = item.ConceptNameCodeSequence[0]
    return (name.CodeValue, name.CodingSchemeDesignator) == ("126010", "DCM")


def assert_pixelmed_accepts(
    report: PixelMedReport,
    allowed_error: re.Pattern[str] | None,
    what: str,
    accepted_warnings: tuple[re.Pattern[str], ...] = (),
) -> None:
    """PixelMed validated the file and found no error (but ``allowed_error``) and no warning
    beyond the accepted ones."""
    message = f"{what}:\n{report.output}"
    assert report.validated, message
    errors = [e for e in report.errors if allowed_error is None or not allowed_error.match(e)]
    assert errors == [], message
    accepted = ACCEPTED_PIXELMED_WARNINGS + accepted_warnings
    warnings = [w for w in report.warnings if not any(p.match(w) for p in accepted)]
    assert warnings == [], message


OUTSIDE_CID_7021 = re.compile(
    r'^[\d.]+: /CONTAINER \(18748-4,LN,"Diagnostic Imaging Report"\)(/.*)?: '
    r"Content Item not in template$"
)
"""A report without findings is titled (18748-4, LN, "Diagnostic Imaging Report"), outside
CID 7021 (extensible), so that OHIF shows it as text; PixelMed then matches no row 1 and calls
every item "not in template". The same report titled "Imaging Measurement Report" is
validated as well (``pixelmed_runs``)."""


@dataclass(frozen=True)
class PixelMedRun:
    """One file for PixelMed: what it is, its root template, the one error it may report."""

    what: str
    path: Path
    root_template: str
    allowed_error: re.Pattern[str] | None = None
    accepted_warnings: tuple[re.Pattern[str], ...] = ()


def pixelmed_runs(case: Case, folder: Path) -> Iterator[PixelMedRun]:
    """Every object of ``case`` PixelMed checks, whole; a report mixing kinds of measurement
    groups also once per kind (a copy holding only that kind's groups)."""
    if ObjectKind.KOS in case.pixelmed_kinds:
        yield PixelMedRun("KOS", case.paths[ObjectKind.KOS], "TID_2010")
    ds = pydicom.dcmread(case.paths[ObjectKind.SR])
    kinds = sorted(set(measurement_group_kinds(ds)))
    if ds.ConceptNameCodeSequence[0].CodeValue == "18748-4":
        yield PixelMedRun("SR", case.paths[ObjectKind.SR], "TID_1500", None, (OUTSIDE_CID_7021,))
        titled = copy.deepcopy(ds)
        titled.ConceptNameCodeSequence[0].CodeValue = "126000"
        titled.ConceptNameCodeSequence[0].CodingSchemeDesignator = "DCM"
        titled.ConceptNameCodeSequence[0].CodeMeaning = "Imaging Measurement Report"
        path = write_dataset(titled, folder / "titled-126000.dcm")
        yield PixelMedRun("SR, titled Imaging Measurement Report", path, "TID_1500")
        return
    if len(kinds) <= 1:
        yield PixelMedRun("SR", case.paths[ObjectKind.SR], "TID_1500")
        return
    yield PixelMedRun("SR", case.paths[ObjectKind.SR], "TID_1500", MIXED_GROUPS_ERROR)
    for kind in kinds:
        single = write_dataset(with_group_kind(ds, kind), folder / f"TID{kind}.dcm")
        yield PixelMedRun(f"SR, TID {kind} groups only", single, "TID_1500")


@pytest.mark.parametrize("name", CASES)
def test_every_sr_and_kos_passes_pixelmed(
    name: str, cases: dict[str, Case], tmp_path: Path
) -> None:
    for run in pixelmed_runs(cases[name], tmp_path):
        report = run_pixelmed_sr_validator(run.path)
        assert report.root_template == run.root_template, (run.what, report.output)
        assert_pixelmed_accepts(report, run.allowed_error, run.what, run.accepted_warnings)


def test_reports_mix_the_kinds_of_measurement_groups_expected(
    cases: dict[str, Case],
) -> None:
    """Which reports PixelMed also sees split by kind of group (and where its mixed-groups
    message is allowed on the whole report): those with findings (TID 1410) and masks (1411).
    The study-level statement is in no group (row 12), so a negative report has none."""
    kinds = {
        name: sorted(set(measurement_group_kinds(pydicom.dcmread(case.paths[ObjectKind.SR]))))
        for name, case in cases.items()
    }
    assert kinds == {
        "lung_nodule": ["1410", "1411"],
        "ms_lesion_follow_up": ["1410", "1411"],
        "pe": ["1410", "1411"],
        "fracture": ["1410"],
        "absent": [],
        "not_assessed": [],
    }


@pytest.mark.parametrize("name", CASES)
def test_every_object_passes_dciodvfy(name: str, cases: dict[str, Case]) -> None:
    case = cases[name]
    for kind, path in case.paths.items():
        assert_valid_dicom(path, case.accepted_dciodvfy_warnings.get(kind, frozenset()))


@pytest.mark.parametrize("name", CASES)
def test_every_object_reads_back_with_highdicom(name: str, cases: dict[str, Case]) -> None:
    case, result = cases[name], cases[name].result
    report = read_measurement_report(hd.sr.srread(case.paths[ObjectKind.SR]))
    assert (report.verdict, report.reason) == (result.verdict, result.reason)
    assert [(f.tracking_id, f.qualifiers) for f in report.findings] == [
        (f.tracking_id, f.qualifiers) for f in result.findings
    ]
    masked = [f.tracking_id for f in result.findings if f.mask is not None]
    assert [f.tracking_id for f in report.findings if f.segment is not None] == masked
    assert (ObjectKind.SEG in case.paths) == bool(masked)
    if masked:
        segmentation = read_segmentation(hd.seg.segread(case.paths[ObjectKind.SEG]))
        assert [s.tracking_id for s in segmentation.segments] == masked
    assert (ObjectKind.KOS in case.paths) == (result.verdict is Verdict.PRESENT)
    if ObjectKind.KOS in case.paths:
        kos = pydicom.dcmread(case.paths[ObjectKind.KOS])
        document = hd.ko.KeyObjectSelectionDocument.from_dataset(kos)
        images = document.content.get_references(value_type=hd.sr.ValueTypeValues.IMAGE)
        key_objects = read_key_object_selection(kos)
        assert key_objects.title == sr_codes.to_contract_code(sr_codes.OF_INTEREST)
        assert key_objects.description.startswith("Key images selected by AI algorithm")
        slices = [case.source_images[f.region.slice_index] for f in result.findings]
        expected = list(dict.fromkeys(s.sop_instance_uid for s in slices))
        assert [i.sop_instance_uid for i in key_objects.key_images] == expected
        assert [str(i.referenced_sop_instance_uid) for i in images] == expected


@pytest.mark.parametrize("name", CASES)
def test_every_object_carries_series_and_content_date_time_of_the_result(
    name: str, cases: dict[str, Case]
) -> None:
    stamps = set()
    for path in cases[name].paths.values():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert (ds.SeriesDate, ds.SeriesTime) == (ds.ContentDate, ds.ContentTime), path
        stamps.add((ds.SeriesDate, ds.SeriesTime))
    assert len(stamps) == 1
