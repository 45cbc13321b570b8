"""Real DICOM files available offline (pydicom's test files and the pydicom-data wheel)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file

__all__ = [
    "CorpusFile",
    "pydicom_data_files",
    "pydicom_test_file",
    "real_corpus",
]


@dataclass(frozen=True)
class CorpusFile:
    """One real Part-10 file with what tests need to know about it without reading it."""

    path: Path
    transfer_syntax_uid: str
    sop_class_uid: str
    description: str
    decodes: bool = True
    """The installed decoders can decode its pixel data."""
    has_study_and_series_uids: bool = True
    """It has Study and Series Instance UIDs (a store that indexes by them can accept it)."""

    @property
    def name(self) -> str:
        return self.path.name


def pydicom_test_file(name: str) -> Path:
    """Path of a file shipped with pydicom or pydicom-data, never downloading it."""
    found = get_testdata_file(name, download=False)
    if found is None:
        raise FileNotFoundError(
            f"DICOM test file {name!r} is not available offline: it is neither in pydicom's "
            "test files nor in the installed pydicom-data package (pip install pydicom-data)"
        )
    if not isinstance(found, str):
        raise TypeError(f"get_testdata_file({name!r}) did not return a path")
    return Path(found)


def pydicom_data_files() -> list[Path]:
    """Every file of the pydicom-data wheel (``data_store/data/*``), sorted by name."""
    try:
        import data_store
    except ImportError as exc:
        raise FileNotFoundError(
            "the pydicom-data package (module data_store) is not installed"
        ) from exc
    root = Path(data_store.__file__).parent / "data"
    return sorted(path for path in root.iterdir() if path.is_file())


# (file name, description, decodes, has Study and Series UIDs)
_CURATED: tuple[tuple[str, str, bool, bool], ...] = (
    ("MR_small_implicit.dcm", "MR 64x64 single frame, Implicit VR Little Endian", True, True),
    ("CT_small.dcm", "CT 128x128 single frame, Explicit VR Little Endian", True, True),
    (
        "image_dfl.dcm",
        "Secondary Capture 512x512 8-bit monochrome, Deflated Explicit VR",
        True,
        True,
    ),
    ("MR_small_RLE.dcm", "MR 64x64 single frame, RLE Lossless", True, True),
    (
        "SC_rgb_jpeg_dcmtk.dcm",
        "Secondary Capture 100x100 colour (YBR_FULL), JPEG Baseline",
        True,
        True,
    ),
    (
        "JPGExtended.dcm",
        "NM 1024x256 12-bit, JPEG Extended (process 2 and 4); no installed decoder handles "
        "12-bit JPEG (GDCM and Pillow refuse it, pylibjpeg-libjpeg is GPL and not installed)",
        False,
        True,
    ),
    ("JPEG-LL.dcm", "NM 1024x256 16-bit, JPEG Lossless process 14 SV1", True, True),
    ("MR_small_jpeg_ls_lossless.dcm", "MR 64x64 single frame, JPEG-LS Lossless", True, True),
    (
        "JPEGLSNearLossless_16.dcm",
        "Secondary Capture 50x10 16-bit, JPEG-LS near-lossless; has no Study or Series "
        "Instance UID, so an indexing store must refuse it",
        True,
        False,
    ),
    ("693_J2KR.dcm", "CT 512x512, JPEG 2000 Lossless Only", True, True),
    ("693_J2KI.dcm", "CT 512x512, JPEG 2000 (lossy)", True, True),
    (
        "eCT_Supplemental.dcm",
        "Enhanced CT 2 frames 512x512 with plane positions, Explicit VR Little Endian",
        True,
        True,
    ),
    (
        "emri_small_jpeg_ls_lossless.dcm",
        "Enhanced MR 10 frames 64x64, JPEG-LS Lossless; its functional groups were stripped, "
        "so frames have no plane positions",
        True,
        True,
    ),
    ("RG3_UNCR.dcm", "CR 1760x1760 MONOCHROME1, no patient geometry, Explicit VR", True, True),
    ("693_UNCR.dcm", "CT 512x512, Explicit VR Little Endian", True, True),
)


@functools.cache
def _real_corpus() -> tuple[CorpusFile, ...]:
    files: list[CorpusFile] = []
    for name, description, decodes, has_uids in _CURATED:
        path = pydicom_test_file(name)
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        files.append(
            CorpusFile(
                path=path,
                transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                sop_class_uid=str(ds.SOPClassUID),
                description=description,
                decodes=decodes,
                has_study_and_series_uids=has_uids,
            )
        )
    return tuple(files)


def real_corpus() -> list[CorpusFile]:
    """Curated real files covering the transfer syntaxes and image kinds the router receives.

    Implicit and Explicit VR Little Endian, Deflate, RLE, JPEG Baseline, JPEG Extended
    (12-bit, not decodable here), JPEG Lossless SV1, JPEG-LS lossless and near-lossless,
    JPEG 2000 lossless and lossy, enhanced multi-frame CT and MR, a CR and a 512x512 CT.
    """
    return list(_real_corpus())
