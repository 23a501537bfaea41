"""What a crashed load leaves behind, recognised by name and age, and removed at the next start.

A load killed mid-way (``kill -9``, the machine lost) commits nothing — its transaction dies with it —
but two kinds of files can stay on disk, each hundreds of MB for a large bill:

* the streamed loader's staging: ``<staging dir>/wxbill-<random>/part<NNNNN>.csv`` (plain CSV parts of
  the decompressed bill; the staging directory is the system temp directory unless a caller gives one);
* the archive's download in progress: ``<archive>/mchid=…/bill_type=…/bill_date=…/.<sha1>.csv.gz.<hex>.part``
  (a bill is renamed into place only once its SHA1 matched), and a sidecar being rewritten,
  ``<sha1>.json.part``.

:func:`remove_debris` removes exactly those — nothing else under those directories, and only files
older than ``min_age`` (default :data:`DEBRIS_MIN_AGE`, far longer than any load takes), so a load in
progress in another process keeps its files. The age is the file's modification time against the
filesystem's own clock (the modification time of a file written beside it just now): real time, never
the run's business clock, which may be set to any day.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

DEBRIS_MIN_AGE = timedelta(hours=6)
"""How old a staging or temporary file must be to count as left by a crashed run."""

_STAGING_DIR = re.compile(r"^wxbill-[A-Za-z0-9_]+$")
_PART = re.compile(r"^part\d{5}\.csv$")
_ARCHIVE_TEMP = re.compile(r"^\.[0-9a-f]{40}\.csv(\.gz)?\.[0-9a-f]{8}\.part$")
_SIDECAR_TEMP = re.compile(r"^[0-9a-f]{40}\.json\.part$")
_PARTITION = ("mchid=*", "bill_type=*", "bill_date=*")


@dataclass
class Debris:
    """What :func:`remove_debris` removed: the files, and their bytes."""

    files: list[Path] = field(default_factory=list)
    bytes: int = 0

    def __bool__(self) -> bool:
        return bool(self.files)

    def __str__(self) -> str:
        if not self.files:
            return "no files left by a crashed run"
        return f"{len(self.files)} file(s) left by a crashed run removed ({self.bytes / 2**20:.1f} MiB)"


def _filesystem_now(folder: Path) -> float | None:
    """The filesystem's clock: the modification time of a file written in ``folder`` just now (``None`` when
    nothing can be written there: then nothing there is cleaned, and the run names the fault where it writes)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".wxclock-", dir=folder)
    except OSError:
        return None
    try:
        return os.fstat(fd).st_mtime
    finally:
        os.close(fd)
        os.unlink(name)


def _remove_if_old(path: Path, cutoff: float, found: Debris) -> None:
    try:
        stat = path.lstat()
        if stat.st_mtime > cutoff or not path.is_file() or path.is_symlink():
            return
        path.unlink()
    except FileNotFoundError:  # another start removed it first
        return
    found.files.append(path)
    found.bytes += stat.st_size


def remove_debris(
    *,
    archive_root: str | Path | None = None,
    staging_dir: str | Path | None = None,
    min_age: timedelta = DEBRIS_MIN_AGE,
) -> Debris:
    """Remove the staging parts and archive temporary files a crashed load left (module docstring).

    ``staging_dir`` is where loads stage (``None``: the system temp directory, the loaders' default);
    ``archive_root`` the bill archive (``None``: not looked at). Returns what was removed.
    """
    found = Debris()
    staging = Path(staging_dir) if staging_dir is not None else Path(tempfile.gettempdir())
    now = _filesystem_now(staging) if staging.is_dir() else None
    if now is not None:
        cutoff = now - min_age.total_seconds()
        for folder in sorted(staging.glob("wxbill-*")):
            if not _STAGING_DIR.match(folder.name) or not folder.is_dir() or folder.is_symlink():
                continue
            old = folder.stat().st_mtime <= cutoff  # a load in progress has made or changed it since
            for part in sorted(folder.iterdir()):
                if _PART.match(part.name):
                    _remove_if_old(part, cutoff, found)
            if old:
                with contextlib.suppress(OSError):  # only once empty: anything else in it is left alone
                    folder.rmdir()
    root = Path(archive_root) if archive_root is not None else None
    now = _filesystem_now(root) if root is not None and root.is_dir() else None
    if root is not None and now is not None:
        cutoff = now - min_age.total_seconds()
        for day in sorted(root.glob("/".join(_PARTITION))):
            for path in sorted(day.glob("*.part")):
                if _ARCHIVE_TEMP.match(path.name) or _SIDECAR_TEMP.match(path.name):
                    _remove_if_old(path, cutoff, found)
    return found
