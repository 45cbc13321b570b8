"""The plan: Table E.1-1 and the options, one action per attribute."""

from __future__ import annotations

from router.deidentify import annex_e_table
from router.deidentify.options import DeidOptions
from router.deidentify.plan import Action, plan, table_rows


def _by_keyword(options: DeidOptions) -> dict[str, Action]:
    return {p.row.keyword: p.action for p in plan(options)}


def test_the_table_is_the_2024b_edition_with_every_row() -> None:
    assert annex_e_table.EDITION == "2024b"
    assert len(annex_e_table.ROWS) == 621
    assert len(table_rows()) == 621 - 4  # less the private and three repeating-group rows


def test_basic_profile_actions() -> None:
    basic = _by_keyword(
        DeidOptions(
            retain_longitudinal_modified_dates=False,
            retain_device_identity=False,
            retain_patient_characteristics=False,
            clean_descriptors=False,
        )
    )
    assert basic["AccessionNumber"] is Action.EMPTY  # Z
    assert basic["PatientAddress"] is Action.REMOVE  # X
    assert basic["SOPInstanceUID"] is Action.UID  # U
    assert basic["StationName"] is Action.DUMMY  # X/Z/D
    assert basic["RequestedProcedureDescription"] is Action.EMPTY  # X/Z
    assert basic["ReferencedImageSequence"] is Action.KEEP  # X/Z/U*: its UIDs are U
    assert basic["ReferencedPerformedProcedureStepSequence"] is Action.EMPTY  # Type 2 in SR
    assert basic["ReferencedStudySequence"] is Action.REMOVE  # Type 3 at the top of modules
    assert basic["OtherPatientIDsSequence"] is Action.REMOVE
    assert basic["PatientName"] is Action.DUMMY and basic["PatientID"] is Action.DUMMY
    assert basic["PatientAge"] is Action.REMOVE and basic["SeriesDescription"] is Action.REMOVE


def test_options_keep_shift_and_clean() -> None:
    chosen = _by_keyword(DeidOptions())
    assert chosen["StationName"] is Action.KEEP  # Retain Device Identity K
    assert chosen["DeviceSerialNumber"] is Action.KEEP
    assert chosen["PatientAge"] is Action.KEEP  # Retain Patient Characteristics K
    assert chosen["StudyDate"] is Action.SHIFT_DATE  # Modified Dates C on a DA
    assert chosen["AcquisitionDateTime"] is Action.SHIFT_DATE
    assert chosen["StudyTime"] is Action.KEEP  # C on a TM: whole days, times stay
    assert chosen["SeriesDescription"] is Action.CLEAN_DESCRIPTOR  # on the retained list
    assert chosen["ImageComments"] is Action.REMOVE  # a descriptor not on the list
    assert chosen["InstitutionName"] is Action.DUMMY  # no Retain Institution option here
    assert chosen["PatientBirthDate"] is Action.EMPTY  # Z, and no option keeps it
