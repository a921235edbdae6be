"""Where converted models live on disk, and how a folder is written so that a kill never leaves half of one.

A converted model is a plain Hugging Face folder. It is written into a temporary sibling folder, checked, stamped with
a manifest (file names, sizes and a SHA-256 of every weight file), then renamed into place: ``os.rename`` of a folder
is atomic on one filesystem, so readers see either no folder or a complete one. A folder whose manifest does not match
its files (truncated copy, deleted shard, edited weights) is reported as corrupt and rebuilt by the caller.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from workbench.atomic import replace_folder

MANIFEST = "workbench-manifest.json"
CACHE_ENV = "WORKBENCH_CACHE"
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def cache_root() -> Path:
    """``$WORKBENCH_CACHE`` if set, else ``~/.cache/workbench``.

    Example: ``cache_root() / "models"``"""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "workbench")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _describe(folder: Path) -> dict[str, dict[str, object]]:
    files = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name != MANIFEST:
            entry: dict[str, object] = {"size": path.stat().st_size}
            if path.suffix in _WEIGHT_SUFFIXES:
                entry["sha256"] = _sha256(path)
            files[path.name] = entry
    return files


def write_manifest(folder: Path, provenance: dict[str, object]) -> None:
    """Record every file's size (and weight files' SHA-256) so :func:`verify` can detect damage later.

    Example: ``write_manifest(folder, {"source": "smollm2-135m"})``"""
    manifest = {"provenance": provenance, "files": _describe(folder)}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))


def verify(folder: Path, *, check_hashes: bool = True) -> str | None:
    """Return ``None`` when ``folder`` is a complete converted model, else a sentence saying what is wrong.

    Example: ``verify(cache_root() / "models" / "smollm2-135m", check_hashes=False)  # None when intact``"""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return f"{folder} has no {MANIFEST} (an interrupted or foreign conversion)"
    try:
        expected = json.loads(manifest_path.read_text())["files"]
    except (ValueError, KeyError) as exc:
        return f"{manifest_path} is unreadable ({exc})"
    for name, entry in expected.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != entry["size"]:
            return f"{path} has {path.stat().st_size} bytes, the manifest says {entry['size']} (truncated?)"
        if check_hashes and "sha256" in entry and _sha256(path) != entry["sha256"]:
            return f"{path} does not match its SHA-256 in the manifest (corrupt)"
    return None


def build_atomically(target: Path, build: Callable[[Path], dict[str, object]], *, locked: bool = False) -> Path:
    """Run ``build(tmp_folder)`` (returns provenance), stamp a manifest, then rename the folder to ``target``.

    An existing ``target`` is replaced (the caller decided it was corrupt). On any error the temporary folder is
    removed and ``target`` is left as it was. ``locked=True``: the caller already holds
    :func:`workbench.atomic.folder_lock` of ``target`` (else it is taken here, waiting at most 60 s).

    Example: ``build_atomically(cache_root() / "models" / "mine", lambda tmp: {"source": "mine"})``"""
    replace_folder(target, lambda tmp: write_manifest(tmp, build(tmp)), locked=locked)
    return target
