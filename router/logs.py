"""radrouter's log: one line format, its own loggers loud, libraries quiet, header values safe.

An administrator reads this log to follow studies, so radrouter's own lines are at INFO and
every library (highdicom copies attributes at INFO, pynetdicom narrates each association) only
speaks at WARNING unless ``-v`` is given. Values that come from a DICOM header or a peer are
hostile: :func:`log_safe` makes them one bounded line before they reach a log line.
"""

from __future__ import annotations

import logging
import unicodedata
from typing import TextIO

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

OWN_LOGGERS: tuple[str, ...] = (
    "radrouter",
    "router",
    "algorithms",
    "dicom_sr",
    "worklist",
    "config",
)
"""The top-level loggers of what radrouter ships (``radrouter`` is the command's own)."""

LIBRARY_LEVEL = logging.WARNING
LIBRARY_LEVEL_VERBOSE = logging.INFO
"""With ``-v`` libraries speak at INFO: pynetdicom's association lines help, its DEBUG PDU dumps
and PIL's chunk-by-chunk DEBUG lines do not."""

DEFAULT_MAX_CHARS = 128
"""Enough for any UID (64), AE title or host; a longer value is cut and says so."""

# Unicode categories that must not reach a log line: controls (newline, carriage return, escape:
# forged lines and terminal escapes), format characters (bidirectional overrides that reorder
# what an administrator reads) and line/paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


class _RadrouterHandler(logging.StreamHandler[TextIO]):
    """The one handler :func:`configure_logging` installs; a second call replaces it."""


def configure_logging(verbose: bool = False, stream: TextIO | None = None) -> logging.Handler:
    """Log to ``stream`` (stderr by default) in one format: radrouter's loggers at INFO (DEBUG
    when ``verbose``), every other logger at WARNING (INFO when ``verbose``). Returns the
    handler. Calling it again replaces the handler it installed; other handlers are kept."""
    root = logging.getLogger()
    for existing in [h for h in root.handlers if isinstance(h, _RadrouterHandler)]:
        root.removeHandler(existing)
        existing.close()
    handler = _RadrouterHandler(stream)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(LIBRARY_LEVEL_VERBOSE if verbose else LIBRARY_LEVEL)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)
    return handler


def log_safe(value: object, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """``value`` as one line of at most about ``max_chars`` characters for a log message.

    Control, format and separator characters are written as escapes (``\\n``, ``\\x1b``,
    ``\\u202e``), so a header cannot forge a log line or hide text; a longer value is cut and
    the cut is stated. Use it on everything taken from a DICOM header or a peer, UIDs included.
    """
    if max_chars < 1:
        raise ValueError(f"log_safe: max_chars must be >= 1, got {max_chars}")
    text = str(value)
    if len(text) > 4 * max_chars:  # never escape megabytes only to cut them
        text = text[: 4 * max_chars]
        total = len(str(value))
    else:
        total = len(text)
    escaped = "".join(
        _escape(c) if unicodedata.category(c) in _UNSAFE_CATEGORIES else c for c in text
    )
    if len(escaped) <= max_chars and total == len(text):
        return escaped
    return f"{escaped[:max_chars]}... ({total} characters)"


def _escape(character: str) -> str:
    return character.encode("unicode_escape").decode("ascii")
