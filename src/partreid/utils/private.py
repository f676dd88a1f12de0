"""Files that hold biometric data (a gallery store, its audit log): created readable by their
owner only (files 0600, folders 0700, whatever the umask), and a warning naming every existing
one that other users can reach, with the command that fixes it. Nothing is re-moded silently:
a wider mode may be an administrator's choice."""

from __future__ import annotations

import logging
import os
import stat
from typing import Iterable, List, Tuple

log = logging.getLogger("partreid")

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
_OTHERS = stat.S_IRWXG | stat.S_IRWXO


def create_private_file(path: str) -> None:
    """Create ``path`` empty with mode 0600 (an existing file is truncated, its mode kept)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    os.close(fd)


def open_private(path: str, mode: str = "a+b"):
    """``open(path, mode)``, creating a missing file with mode 0600."""
    flags = os.O_RDWR | os.O_CREAT | (os.O_APPEND if mode.startswith("a") else 0)
    return os.fdopen(os.open(path, flags, PRIVATE_FILE), mode)


def make_private_dir(path: str) -> None:
    """Create the folder ``path`` (and its parents) with mode 0700 when it does not exist."""
    if os.path.isdir(path):
        return
    os.makedirs(path, mode=PRIVATE_DIR, exist_ok=True)
    if os.name == "posix":
        os.chmod(path, PRIVATE_DIR)  # makedirs' mode is masked by the umask only


def loose_modes(paths: Iterable[str]) -> List[Tuple[str, int]]:
    """Those of ``paths`` that exist and that other users may read or enter, with their mode."""
    if os.name != "posix":
        return []
    out = []
    for p in paths:
        try:
            mode = os.stat(p).st_mode
        except OSError:
            continue
        if mode & _OTHERS:
            out.append((p, stat.S_IMODE(mode)))
    return out


def warn_loose_modes(paths: Iterable[str], what: str) -> List[str]:
    """Log one warning naming those of ``paths`` that others may read; returns them."""
    loose = loose_modes(paths)
    if not loose:
        return []
    dirs = [p for p, _ in loose if os.path.isdir(p)]
    files = [p for p, _ in loose if not os.path.isdir(p)]
    fix = [f"chmod 700 {' '.join(dirs)}"] if dirs else []
    fix += [f"chmod 600 {' '.join(files)}"] if files else []
    log.warning(
        "%s holds biometric data, but other users of this machine can read: %s (fix: %s)",
        what,
        ", ".join(f"{p} ({m:04o})" for p, m in loose),
        " && ".join(fix),
    )
    return [p for p, _ in loose]
