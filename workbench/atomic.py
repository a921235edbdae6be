"""Folders that appear whole or not at all: fill a temporary sibling, then rename it into place.

``os.rename`` of a folder is atomic on one filesystem, so a reader (or a kill mid-write) never sees half a folder.
Used for the model cache and for reports.

Writers of one target take an exclusive lock (``fcntl.flock`` on ``.<name>.lock`` beside it, removed on release), so
two processes writing the same folder take turns instead of racing for the rename. A writer killed mid-fill (SIGKILL
runs no ``finally``) leaves its temporary sibling ``.<name>.tmp-<pid>-*`` and a lock file; the next writer of the same
target removes the temporary folders of processes that are no longer alive, and its own release removes the lock file.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TypeVar

from workbench.errors import BusyError, ConfigError, DiskFullError

T = TypeVar("T")


def umask_mode(mode: int) -> int:
    """``mode`` less the process umask: what ``open``/``mkdir`` would have given (``mkdtemp``/``mkstemp`` give 0o700
    and 0o600, which would hide a report or a sweep's folders from the other users of a shared disk).

    Example: ``os.chmod(tmp_folder, umask_mode(0o777))  # as mkdir would have made it``"""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


_FULL = (errno.ENOSPC, errno.EDQUOT)
LOCK_POLL_S = 0.05


def lock_path(target: Path) -> Path:
    """The lock file of ``target``: ``.<name>.lock`` in the same folder.

    Example: ``lock_path(Path("reports/run"))  # Path("reports/.run.lock")``"""
    return target.with_name(f".{target.name}.lock")


def _open_locked(path: Path, deadline: float | None) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if deadline is not None and time.monotonic() >= deadline:
                os.close(fd)
                raise
            time.sleep(LOCK_POLL_S)


@contextmanager
def folder_lock(target: Path, *, timeout: float | None = 60.0) -> Iterator[None]:
    """Hold the exclusive lock of ``target`` (wait at most ``timeout`` seconds, ``None``: for ever); the lock file is
    removed on release. A holder that dies (even by SIGKILL) releases it: the kernel drops a dead process's flocks.

    The lock file is unlinked while still held; a waiter that then gets a lock on the unlinked file sees that the
    path no longer names its file and starts again, so two writers never both hold the lock.

    Example: ``with folder_lock(Path("cache/sae/x"), timeout=None): ...  # check, train, write, without a race``"""
    path = lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            fd = _open_locked(path, deadline)
        except BlockingIOError:
            raise BusyError(f"another process is writing {str(target)!r} (it holds {str(path)!r}); waited {timeout} s"
                            f" — try again when it has finished") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        with suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(target: Path) -> list[Path]:
    """Remove what killed writers of ``target`` left beside it: ``.<name>.tmp-<pid>-*`` and ``.<name>.old-<pid>``
    folders whose process is no longer alive. Returns what was removed. A writer killed between moving the previous
    version aside and renaming the new one in left no ``target`` but a whole ``.old-<pid>``: that is put back first.

    Example: ``clean_stale(Path("reports/run"))  # [] when no writer was killed``"""
    removed = []
    for path in target.parent.glob(f".{target.name}.old-*"):  # killed between its two renames: the old one was whole
        pid = path.name[len(target.name) + 6:]
        if not target.exists() and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            os.rename(path, target)
    for pattern in (f".{target.name}.tmp-*", f".{target.name}.old-*"):
        for path in target.parent.glob(pattern):
            pid = path.name[len(target.name) + 6:].split("-")[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def replace_folder(target: Path, fill: Callable[[Path], T], *, overwrite: bool = True, timeout: float | None = 60.0,
                   locked: bool = False) -> T:
    """Run ``fill(tmp)`` on a fresh temporary sibling of ``target``, then rename it to ``target``.

    An existing ``target`` is replaced only once ``fill`` has succeeded (``overwrite=False``: refused with a
    :class:`ConfigError`, checked under the lock, so of two racing writers the second is refused). On any error the
    temporary folder is removed and ``target`` is left as it was; a full disk raises :class:`DiskFullError`. Writers
    of one target take turns (:func:`folder_lock`, waiting at most ``timeout`` s; ``locked=True``: the caller holds
    it) and first remove what killed writers left (:func:`clean_stale`). Returns what ``fill`` returned.

    Example: ``replace_folder(Path("reports/run"), lambda tmp: (tmp / "report.json").write_text("{}"), overwrite=True)``"""
    target.parent.mkdir(parents=True, exist_ok=True)
    if not locked:
        with folder_lock(target, timeout=timeout):
            return replace_folder(target, fill, overwrite=overwrite, locked=True)
    clean_stale(target)
    if target.exists() and not overwrite:
        raise ConfigError(f"replace_folder(): parameter 'target' must not exist; received {str(target)!r}, which "
                          f"exists (another process may have just written it)")
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
        value = fill(tmp)
        os.chmod(tmp, umask_mode(0o777))
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.rename(target, old)
            shutil.rmtree(old, ignore_errors=True)
        os.rename(tmp, target)
    except BaseException as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in _FULL:
            raise DiskFullError(f"the disk is full: writing {str(target)!r} failed ({exc}); nothing was left there "
                                f"(the previous version, if any, is intact). Free some space and run again") from exc
        raise
    return value
