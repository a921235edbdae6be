"""The converted-model cache (workbench.models.cache): atomic builds and verification of what they left."""

import pytest

from tests.helpers import flip_last_byte, truncate_file
from workbench.models import cache
from workbench.models.bundled import BundledSource


def _built_folder(tmp_path):
    """A folder written by build_atomically, with one weight file and one other file."""
    def build(tmp):
        (tmp / "config.json").write_text("{}")
        (tmp / "model.safetensors").write_bytes(bytes(range(256)) * 4)
        return {"test": True}
    return cache.build_atomically(tmp_path / "model", build)


def test_build_atomically_failure_leaves_nothing_behind(tmp_path):
    def broken(tmp):
        (tmp / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("conversion died")

    with pytest.raises(RuntimeError, match="conversion died"):
        cache.build_atomically(tmp_path / "model", broken)
    assert list(tmp_path.iterdir()) == []


def test_build_atomically_failure_keeps_existing_target(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("previous build")

    def broken(tmp):
        (tmp / "new.txt").write_text("new")
        raise KeyboardInterrupt  # also a kill-like interruption

    with pytest.raises(KeyboardInterrupt):
        cache.build_atomically(target, broken)
    assert list(tmp_path.iterdir()) == [target]
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    assert (target / "old.txt").read_text() == "previous build"


def test_build_atomically_replaces_target_and_stamps_manifest(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("stale")
    assert _built_folder(tmp_path) == target
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors", cache.MANIFEST]
    assert list(tmp_path.iterdir()) == [target]  # no temporary or graveyard folder left
    assert cache.verify(target) is None


def test_verify_detects_truncated_weights(tmp_path):
    folder = _built_folder(tmp_path)
    truncate_file(folder / "model.safetensors")
    assert "truncated" in cache.verify(folder)
    assert "truncated" in cache.verify(folder, check_hashes=False)


def test_verify_detects_same_size_corruption_by_hash(tmp_path):
    folder = _built_folder(tmp_path)
    size = (folder / "model.safetensors").stat().st_size
    flip_last_byte(folder / "model.safetensors")
    assert (folder / "model.safetensors").stat().st_size == size
    assert "SHA-256" in cache.verify(folder)
    assert cache.verify(folder, check_hashes=False) is None  # the cheap check sees sizes only


def test_verify_detects_missing_manifest_and_missing_file(tmp_path):
    folder = _built_folder(tmp_path)
    (folder / "config.json").unlink()
    assert "config.json is missing" in cache.verify(folder)
    (folder / cache.MANIFEST).unlink()
    assert cache.MANIFEST in cache.verify(folder)


def test_verify_detects_unreadable_manifest(tmp_path):
    folder = _built_folder(tmp_path)
    (folder / cache.MANIFEST).write_text("{not json")
    assert "unreadable" in cache.verify(folder)


def test_cache_root_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path))
    assert cache.cache_root() == tmp_path
    assert BundledSource(name="x", description="", package="x==1", module="m", gguf_file="x.gguf",
                         license="MIT").cache_folder() == tmp_path / "models" / "x"
