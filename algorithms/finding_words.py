"""How a finding is said in words, the same wherever a person reads it: the worklist's reason,
the labels drawn over the images (presentation state) and the summary image.

``12 mm nodule, right upper lobe``: a finding with a length is named by its size, then where
it is; coded meanings are written as a radiologist writes them inside a sentence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from algorithms import codes
from algorithms.contract import Code, Measurement, Qualifier

DIAMETER = Code("81827009", "SCT", "Diameter")

PLAIN_WORDS: MappingProxyType[tuple[str, str], str] = MappingProxyType(
    {
        ("SCT", "125605004"): "fracture",  # Fracture of bone
        ("SCT", "32693004"): "demyelinating lesion",  # Demyelination
    }
)
"""(scheme, code value) -> what a radiologist writes for a finding type whose coded meaning
reads awkwardly in a sentence ("suspected fracture", not "suspected fracture of bone").
A worklist flag's ``label`` still wins."""

LENGTH_UNITS = frozenset({"um", "mm", "cm", "m"})
"""UCUM codes of lengths: a measurement in one of these is a size ("12 mm nodule")."""

LATERALITY_WORDS: Mapping[str, str] = {"R": "right", "L": "left"}
"""Image Laterality (0020,0062) / Laterality (0020,0060) values that name one side; ``B``
(both) and ``U`` (unpaired) say nothing about where a finding is."""


def same_code(a: Code, b: Code) -> bool:
    return (a.value, a.scheme_designator) == (b.value, b.scheme_designator)


def is_qualifier(name: Code, concept: Code) -> bool:
    """Whether a qualifier's name is ``concept`` (by code, or by meaning in any case)."""
    return same_code(name, concept) or name.meaning.casefold() == concept.meaning.casefold()


def size_measurement(measurements: Sequence[Measurement]) -> Measurement | None:
    """A finding's size: its long axis (or diameter), else its first length."""
    lengths = [m for m in measurements if m.unit.value in LENGTH_UNITS]
    preferred = [
        m for m in lengths if same_code(m.name, codes.LONG_AXIS) or same_code(m.name, DIAMETER)
    ]
    return next(iter(preferred or lengths), None)


def size_words(size: Measurement) -> str:
    """``12 mm``."""
    return f"{number_words(size.value)} {size.unit.value}"


def measurement_words(m: Measurement) -> str:
    """``volume 620 mm3``, ``number of new lesions 2``."""
    unit = "" if m.unit.value == "1" else f" {m.unit.value}"
    return f"{in_sentence(m.name.meaning)} {number_words(m.value)}{unit}"


def plain_name(code: Code) -> str:
    """What a radiologist calls a coded finding type (``fracture``, ``nodule``)."""
    return PLAIN_WORDS.get((code.scheme_designator, code.value)) or in_sentence(code.meaning)


def sized_name(name: str, measurements: Sequence[Measurement]) -> str:
    """``12 mm nodule``, or ``suspected nodule`` when the finding has no length."""
    size = size_measurement(measurements)
    return f"{size_words(size)} {name}" if size else f"suspected {name}"


def in_sentence(meaning: str) -> str:
    """A coded meaning inside a sentence: ``Nodule`` -> ``nodule``; acronyms stay (``PE``)."""
    if len(meaning) > 1 and meaning[0].isupper() and meaning[1].islower():
        return meaning[0].lower() + meaning[1:]
    return meaning


def number_words(value: float) -> str:
    """``12``, ``12.5``: one decimal at most, no trailing zero."""
    return f"{value:.1f}".rstrip("0").rstrip(".")


def describe_location(
    site: Code | None, qualifiers: Sequence[Qualifier], image_laterality: str = ""
) -> str:
    """``right lobar pulmonary artery, new``: laterality and level (topographical modifier)
    before the site, other qualifier values after it. Laterality is the finding's own, else
    the image's (``R``/``L``: a radiograph of one limb), and is left out when the site names
    it already (``Right pulmonary artery``)."""
    site_words = set(site.meaning.casefold().split()) if site else set()
    sides = [q.value.meaning for q in qualifiers if is_qualifier(q.name, codes.LATERALITY)]
    site_side = site_words & set(LATERALITY_WORDS.values())  # the site's own side wins
    if not sides and not site_side and image_laterality in LATERALITY_WORDS:
        sides = [LATERALITY_WORDS[image_laterality]]
    levels = [
        q.value.meaning for q in qualifiers if is_qualifier(q.name, codes.TOPOGRAPHICAL_MODIFIER)
    ]
    others = [
        in_sentence(q.value.meaning)
        for q in qualifiers
        if not is_qualifier(q.name, codes.LATERALITY)
        and not is_qualifier(q.name, codes.TOPOGRAPHICAL_MODIFIER)
    ]
    before = [text for text in [*sides, *levels] if text.casefold() not in site_words]
    if not site:
        # Without a site, "right" or "lobar" alone is still where to look.
        return ", ".join(in_sentence(text) for text in [*before, *others])
    where = " ".join(in_sentence(text) for text in [*before, site.meaning])
    return ", ".join(part for part in [where, *others] if part)


@dataclass(frozen=True)
class KeyImage:
    """Where a radiologist finds one finding in the PACS viewer: the Series Number and the
    Instance Number ("image") of the slice its region is drawn on, as in the received files.

    The router takes them from the loaded series when it writes the result (the plugin only
    knows slice indices, which no viewer shows). ``frame_number`` is set for an image of a
    multi-frame instance; ``laterality`` is the image's own R/L (Image Laterality, else
    Laterality), for a radiograph of a paired body part."""

    series_number: int | None = None
    instance_number: int | None = None
    frame_number: int | None = None
    laterality: str = ""

    def __post_init__(self) -> None:
        for name in ("instance_number", "frame_number"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"KeyImage.{name} must be >= 1 when given, got {value}")
        if self.laterality not in ("", *LATERALITY_WORDS):
            raise ValueError(f"KeyImage.laterality must be R, L or empty, got {self.laterality!r}")

    def words(self) -> str:
        """``series 3 image 87`` (``... frame 5`` in a multi-frame image), what is known of it;
        "" when nothing is."""
        parts = [] if self.series_number is None else [f"series {self.series_number}"]
        if self.instance_number is not None:
            parts.append(f"image {self.instance_number}")
            if self.frame_number is not None:
                parts.append(f"frame {self.frame_number}")
        return " ".join(parts)
