"""Folders that appear whole or not at all: fill a temporary sibling, then rename it into place.

``os.rename`` of a folder is atomic on one filesystem, so a reader (or a kill mid-write) never sees half a folder.
Used for the model cache and for reports.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def umask_mode(mode: int) -> int:
    """``mode`` less the process umask: what ``open``/``mkdir`` would have given (``mkdtemp``/``mkstemp`` give 0o700
    and 0o600, which would hide a report or a sweep's folders from the other users of a shared disk).

    Example: ``os.chmod(tmp_folder, umask_mode(0o777))  # as mkdir would have made it``"""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def replace_folder(target: Path, fill: Callable[[Path], T]) -> T:
    """Run ``fill(tmp)`` on a fresh temporary sibling of ``target``, then rename it to ``target``.

    An existing ``target`` is replaced only once ``fill`` has succeeded. On any error the temporary folder is removed
    and ``target`` is left as it was. Returns what ``fill`` returned.

    Example: ``replace_folder(Path("reports/run"), lambda tmp: (tmp / "report.json").write_text("{}"))``"""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        value = fill(tmp)
        os.chmod(tmp, umask_mode(0o777))
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.rename(target, old)
            shutil.rmtree(old, ignore_errors=True)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return value
