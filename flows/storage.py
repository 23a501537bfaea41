"""Storage faults named as what they are: a file we could not write (or read) because of the storage under it.

A full disk, an exhausted quota, a read-only or failing filesystem, a file-size limit, a directory we may not
write: none of these is a format, integrity or "late" finding, and none is a bug. :class:`StorageError` says
which file, what we were doing, the operating system's error (``ENOSPC`` …) and what to do about it::

    try:
        write(path)
    except OSError as exc:
        raise StorageError(path, "appending to the notification log", exc) from exc

It is an ``OSError`` (callers that catch ``OSError`` still do) whose ``str`` reads as one sentence for an
operator. :func:`is_storage_fault` tells a storage errno from the rest; :func:`storage_fault_in` finds one in
an error that names it only in its text (DuckDB's ``IO Error: Could not write file "…": No space left on
device``); :class:`DamagedFileError` is a file of ours that is not what we wrote (a damaged warehouse);
:func:`free_space` is the cheap ``statvfs`` look used to stop *before* a disk is full.
"""

from __future__ import annotations

import errno as errnos
import os
import re
from dataclasses import dataclass
from pathlib import Path

STORAGE_ERRNOS: frozenset[int] = frozenset(
    code
    for code in (
        errnos.ENOSPC,  # no space left on device
        getattr(errnos, "EDQUOT", None),  # disk quota exceeded
        errnos.EROFS,  # read-only file system
        errnos.EIO,  # input/output error (a failing device)
        errnos.EFBIG,  # file too large (ulimit -f, or the filesystem's maximum)
        errnos.EACCES,  # permission denied
        errnos.EPERM,  # operation not permitted
        errnos.ENOTDIR,  # a file where a directory should be
        errnos.EISDIR,  # a directory where a file should be
        errnos.EMFILE,  # too many open files (this process)
        errnos.ENFILE,  # too many open files (the system)
    )
    if code is not None
)

_WHAT_TO_DO = {
    errnos.ENOSPC: "free space on that filesystem (or move the directory to a larger one)",
    getattr(errnos, "EDQUOT", -1): "raise the disk quota of the user the process runs as, or free space",
    errnos.EROFS: "the filesystem is read-only: remount it read-write (check the kernel log for why it was remounted)",
    errnos.EIO: "the device reports I/O errors: check the disk and the kernel log (dmesg) before writing again",
    errnos.EFBIG: "a file-size limit was hit: check `ulimit -f` of the process and the filesystem's maximum file size",
    errnos.EACCES: "give the user the process runs as write access to that path",
    errnos.EPERM: "give the user the process runs as write access to that path",
    errnos.ENOTDIR: "something that is not a directory is in the way: move it",
    errnos.EISDIR: "a directory is where a file should be: move it",
    errnos.EMFILE: "the process has too many files open: raise its file-descriptor limit (ulimit -n)",
    errnos.ENFILE: "the system has too many files open: raise fs.file-max or find what holds them",
}


def is_storage_fault(exc: BaseException) -> bool:
    """Whether ``exc`` is an error of the storage (space, quota, read-only, I/O, size limit, permissions)."""
    return isinstance(exc, StorageError) or (isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS)


class StorageError(OSError):
    """A file could not be written (or read) because of the storage: ``path``, ``doing``, the OS error.

    ``errno`` / ``strerror`` are the cause's; ``code`` is its symbolic name (``ENOSPC``); ``what_to_do``
    is a hint for the operator.
    """

    def __init__(self, path: str | os.PathLike[str], doing: str, cause: OSError):
        super().__init__(cause.errno, cause.strerror or str(cause))
        self.path = Path(path)
        self.doing = doing
        self.cause = cause
        self.code = errnos.errorcode.get(cause.errno or 0, "unknown error")
        self.what_to_do = _WHAT_TO_DO.get(cause.errno or 0, "check the filesystem under that path")

    def __str__(self) -> str:
        return f"storage fault {self.doing}: {self.path}: {self.strerror} ({self.code}); what to do: {self.what_to_do}"

    def __reduce__(self):  # picklable across processes, like the OSError it is
        return (type(self), (self.path, self.doing, self.cause))


class DamagedFileError(StorageError):
    """A file of ours that cannot be read as what we wrote (``path``, the ``problem``, ``what_to_do``)."""

    def __init__(self, path: str | os.PathLike[str], problem: str, what_to_do: str):
        OSError.__init__(self, problem)
        self.path = Path(path)
        self.doing = "reading"
        self.cause = None
        self.code = "damaged"
        self.problem = problem
        self.what_to_do = what_to_do

    def __str__(self) -> str:
        return f"damaged file: {self.path}: {self.problem}; what to do: {self.what_to_do}"

    def __reduce__(self):
        return (type(self), (self.path, self.problem, self.what_to_do))


_NAMED_FILE = re.compile(r'file "([^"]+)"')
_DUCKDB_FILE_ERROR = re.compile(r"Could not (write|read|open|create|truncate|sync) file")
"""DuckDB's words for a failed file operation, also inside a fatal error (a checkpoint that could not be written)."""


def storage_fault_in(
    exc: BaseException, path: str | os.PathLike[str] | None = None, doing: str = "writing"
) -> StorageError | None:
    """``exc`` as a :class:`StorageError` if it is a storage fault, else ``None``.

    An ``OSError`` with a storage errno is one (named with its own file name, else ``path``); so is an
    I/O error of DuckDB (or a fatal one caused by it: a checkpoint that could not be written) whose text
    ends in the operating system's words for one (``File too large``), named with the file its text quotes.
    Other text is never read for this: a bill value or a query error that happens to say "Permission
    denied" is not a storage fault.
    """
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, OSError):
        if exc.errno not in STORAGE_ERRNOS:
            return None
        return StorageError(exc.filename or path or "(unknown file)", doing, exc)
    text = str(exc)
    if not (text.startswith("IO Error") or _DUCKDB_FILE_ERROR.search(text)):
        return None
    for code in sorted(STORAGE_ERRNOS):
        words = os.strerror(code)
        if words in text:
            named = _NAMED_FILE.search(text)
            where = named[1] if named else (path or "(unknown file)")
            return StorageError(where, doing, OSError(code, words))
    return None


@dataclass(frozen=True)
class FreeSpace:
    """What ``statvfs`` says about the filesystem of a path: bytes an unprivileged writer may still use."""

    path: Path
    free_bytes: int
    total_bytes: int

    @property
    def free_ratio(self) -> float:
        return self.free_bytes / self.total_bytes if self.total_bytes else 0.0


def free_space(path: str | os.PathLike[str]) -> FreeSpace:
    """``statvfs`` of ``path`` (or of its nearest existing parent, for a directory not made yet)."""
    where = Path(path)
    while not where.exists() and where != where.parent:
        where = where.parent
    stat = os.statvfs(where)
    return FreeSpace(where, stat.f_bavail * stat.f_frsize, stat.f_blocks * stat.f_frsize)
