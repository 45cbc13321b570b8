"""Files that hold patient data are the service user's alone: 0600 files in 0700 folders.

Modes are set explicitly where each file and folder is made, whatever the umask, so a copy of
the data folder or a lenient umask never makes a spool file readable by other local users.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) readable by the owner only; an existing folder
    is narrowed to 0700 when it allows more."""
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(PRIVATE_DIR_MODE)


def create_private_file(path: Path) -> int:
    """A new file at ``path`` (it must not exist) open for writing, mode 0600; its descriptor."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)


def narrow_to_owner(path: Path) -> None:
    """Make an existing file (one another component created, such as the database) 0600."""
    if path.exists() and path.stat().st_mode & 0o077:
        path.chmod(PRIVATE_FILE_MODE)
