"""What happens to each attribute of Table E.1-1 under the options selected (a pure function).

The table gives the Basic Profile action (X remove, Z empty, D dummy, U new UID, and the
alternatives X/Z, X/D, X/Z/D, Z/D, X/Z/U* that depend on the attribute's type in its IOD)
and, per option, K (keep) or C (clean). radrouter does not know every attribute's type in
every IOD, so it takes the alternative that is valid whatever the type, and never more
revealing than the Basic action:

- X/Z -> Z (an empty value is valid for Type 2 and 3 and carries nothing);
- X/D, X/Z/D, Z/D -> D (a dummy value is valid even for Type 1);
- a sequence is never filled with dummy items: Z (an empty sequence) when Z is allowed and
  the sequence is Type 2 at the top of some module of PS3.3 (an empty Type 3 sequence is
  invalid), else
  X when allowed (its items would otherwise carry what the table does not list, such as an
  institution's code), else (D alone) kept with every item de-identified by its own rows;
- X/Z/U* (Referenced Image and Source Image Sequence) -> kept: the UIDs inside are U.

Options: an option's K wins over everything (the option retains it); the Modified Dates
option's C shifts dates and date-times (times stay: the shift is whole days); the Clean
Descriptors option's C keeps a descriptor on the site's list when it holds no identifier of
the patient (``deidentifier``); any other C gets the Basic action (radrouter cannot clean
free text such as allergies or a device's calibration notes).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import cache

from pydicom.datadict import dictionary_VR, keyword_for_tag

from router.deidentify import annex_e_table
from router.deidentify.options import CLEAN_DESCRIPTORS, MODIFIED_DATES, DeidOptions


class Action(enum.Enum):
    REMOVE = "X"
    EMPTY = "Z"
    DUMMY = "D"
    UID = "U"
    KEEP = "K"
    SHIFT_DATE = "shift"
    CLEAN_DESCRIPTOR = "clean"


@dataclass(frozen=True)
class Row:
    """One row of Table E.1-1 with a single tag (not a repeating group or private)."""

    tag: int
    name: str
    keyword: str
    vr: str
    basic: str
    options: tuple[tuple[str, str], ...]
    types: frozenset[str]
    """The types (1, 1C, 2, 2C, 3) the attribute has at the top level of PS3.3's modules."""


@dataclass(frozen=True)
class Planned:
    row: Row
    action: Action
    because: str
    """The column that decided: ``basic X/Z/D``, ``rtnDevIdOpt K``, ..."""


KEPT_SEQUENCES_EMPTIED = frozenset({0x00401101})
"""Person Identification Code Sequence: D, but its items are codes that name a person and no
row covers them, so the sequence is emptied rather than kept."""

REPEATING_GROUP_ROWS = ("50xxxxxx", "60xx3000", "60xx4000")
"""Curve Data, Overlay Data, Overlay Comments: X (``deidentifier`` removes them)."""


@cache
def table_rows() -> tuple[Row, ...]:
    rows = []
    for tag_text, name, basic, options, types in annex_e_table.ROWS:
        if tag_text == "odd" or "x" in tag_text:
            continue
        tag = int(tag_text, 16)
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            vr = "UN"
        kinds = frozenset(types.split(",")) if types else frozenset()
        rows.append(Row(tag, name, keyword_for_tag(tag), vr, basic, options, kinds))
    return tuple(rows)


def plan(options: DeidOptions) -> tuple[Planned, ...]:
    """The action for every single-tag row of the table under ``options``."""
    return tuple(_plan_row(row, options) for row in table_rows())


PSEUDONYMISED = frozenset({"PatientName", "PatientID"})
"""Z and Z/D in the table; given the patient's pseudonym (a dummy value, which Z allows) so a
vendor can tell one patient's studies apart."""


def _plan_row(row: Row, options: DeidOptions) -> Planned:
    if row.keyword in PSEUDONYMISED:
        return Planned(row, Action.DUMMY, f"basic {row.basic} (the patient's pseudonym)")
    selected = dict.fromkeys(options.option_columns())
    option_actions = {column: action for column, action in row.options if column in selected}
    for column, action in option_actions.items():
        if action == "K":
            return Planned(row, Action.KEEP, f"{column} K")
    if option_actions.get(MODIFIED_DATES) == "C":
        if row.vr in ("DA", "DT"):
            return Planned(row, Action.SHIFT_DATE, f"{MODIFIED_DATES} C")
        return Planned(row, Action.KEEP, f"{MODIFIED_DATES} C (not a date: kept)")
    if (
        option_actions.get(CLEAN_DESCRIPTORS) == "C"
        and row.keyword in options.retained_descriptors
        and row.vr != "SQ"
    ):
        return Planned(row, Action.CLEAN_DESCRIPTOR, f"{CLEAN_DESCRIPTORS} C")
    return Planned(row, _basic(row), f"basic {row.basic}")


def _basic(row: Row) -> Action:
    code = row.basic
    if code == "X/Z/U*":
        return Action.KEEP
    choices = set(code.split("/"))
    if row.vr == "SQ":
        type_2 = bool(row.types & {"2", "2C"})
        if row.tag in KEPT_SEQUENCES_EMPTIED or ("Z" in choices and (type_2 or "X" not in choices)):
            return Action.EMPTY
        if "X" in choices:
            return Action.REMOVE
        if "U" in choices:
            return Action.UID
        return Action.KEEP  # D: kept, every item de-identified by its own rows
    if "D" in choices:
        return Action.DUMMY
    if "Z" in choices:
        return Action.EMPTY
    if "U" in choices:
        return Action.UID
    return Action.REMOVE
