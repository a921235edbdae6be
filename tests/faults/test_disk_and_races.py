"""A full disk and two writers at once (issue 21 points 1 and 2), and the clean-up of what killed writers left.

ENOSPC is simulated at the lowest write the library makes itself (``Path.write_text``: it writes half its text, then
fails as a full disk does); the result must be a :class:`DiskFullError` naming the path, and no partial output (the
target absent, or the previous version intact). Races use real processes from the fork server
(tests/faults/conftest.py), released together by a barrier file.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from workbench.atomic import clean_stale, folder_lock, lock_path, replace_folder
from workbench.errors import BusyError, ConfigError, DiskFullError
from workbench.report import Report


class FullDisk:
    """``fill()``: from now on ``Path.write_text`` writes half of its text, then raises ENOSPC; ``free()``: undone."""

    def __init__(self, monkeypatch) -> None:
        self.monkeypatch, self.original = monkeypatch, pathlib.Path.write_text

    def fill(self) -> None:
        original = self.original

        def write_half(path, data, *args, **kwargs):
            original(path, data[: len(data) // 2], *args, **kwargs)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

        self.monkeypatch.setattr(pathlib.Path, "write_text", write_half)

    def free(self) -> None:
        self.monkeypatch.undo()


@pytest.fixture
def full_disk(monkeypatch):
    return FullDisk(monkeypatch)


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_full_disk_while_writing_a_report_leaves_nothing(tmp_path, full_disk):
    out = tmp_path / "reports" / "run"
    full_disk.fill()
    with pytest.raises(DiskFullError, match="disk is full.*reports/run"):
        Report(results={}, provenance={"model": "m"}).write(out)
    assert _listing(out.parent) == []


def test_full_disk_while_replacing_a_report_keeps_the_previous(tmp_path, full_disk):
    out = tmp_path / "reports" / "run"
    Report(results={}, provenance={"model": "old"}).write(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    full_disk.fill()
    with pytest.raises(DiskFullError):
        Report(results={}, provenance={"model": "new"}).write(out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _listing(out.parent) == ["run"]


def test_full_disk_while_writing_a_cache_entry_leaves_nothing(tmp_path, full_disk):
    from workbench.models.cache import build_atomically, verify
    from workbench.sae.training import cached_sae

    z = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    kwargs = dict(key={"disk": "full"}, cache_dir=tmp_path / "sae", d_sae=8, k=2, epochs=1, batch_size=16)
    full_disk.fill()
    with pytest.raises(DiskFullError, match="sae"):
        cached_sae(z, **kwargs)
    assert _listing(tmp_path / "sae") == []
    with pytest.raises(DiskFullError, match="models/fake"):
        build_atomically(tmp_path / "models" / "fake", lambda tmp: (tmp / "config.json").write_text("{}") or {})
    assert _listing(tmp_path / "models") == []
    full_disk.free()  # space again: the next call writes the entry whole
    assert cached_sae(z, **kwargs).path.parent == tmp_path / "sae"
    assert len(_listing(tmp_path / "sae")) == 1
    assert verify(build_atomically(tmp_path / "models" / "fake", lambda tmp: {})) is None


def test_full_disk_before_the_first_byte(tmp_path, monkeypatch):
    """Even the temporary folder cannot be made: still the named error, and nothing there."""
    import tempfile

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tempfile, "mkdtemp", no_space)
    with pytest.raises(DiskFullError, match="out"):
        replace_folder(tmp_path / "out", lambda tmp: None)
    assert _listing(tmp_path) == []


def test_disk_full_error_is_named():
    assert issubclass(DiskFullError, OSError) and issubclass(BusyError, RuntimeError)


def test_two_processes_training_the_same_sae_share_one_entry(fork_server, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (first, code1), (second, code2) = fork_server.race("sae", root)
    assert (code1, code2) == (0, 0), (tmp_path / f"{first}.err").read_text() + (tmp_path / f"{second}.err").read_text()
    one, two = (json.loads((tmp_path / f"sae-{pid}.json").read_text()) for pid in (first, second))
    assert one == two  # the one that waited loaded what the other wrote
    entries = _listing(root / "sae")
    assert len(entries) == 1 and not entries[0].startswith(".")
    assert json.loads((root / "sae" / entries[0] / "workbench-sae.json").read_text())["fvu"] == one["fvu"]


def test_two_processes_asking_for_one_bundled_model_convert_it_once(fork_server, tmp_path):
    from workbench.models.cache import verify

    root = tmp_path / "root"
    root.mkdir()
    runs = fork_server.race("model", root)
    assert [code for _, code in runs] == [0, 0], [(tmp_path / f"{pid}.err").read_text() for pid, _ in runs]
    assert len((tmp_path / "conversions.log").read_text().split()) == 1  # the other waited, then found the folder
    assert _listing(root / "models") == ["fake"] and verify(root / "models" / "fake") is None


def test_two_reports_racing_for_one_out(fork_server, tiny_model_folder, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the cat sat on the mat\nhello world again\n")
    args = (str(tiny_model_folder), str(prompts))
    runs = fork_server.race("report", root, *args)
    codes = sorted(code for _, code in runs)
    assert codes == [0, 2], [(tmp_path / f"{pid}.err").read_text() for pid, _ in runs]  # 2: the CLI's named error
    loser = next(pid for pid, code in runs if code == 2)
    assert "error: Report.write(): parameter 'out' must not exist" in (tmp_path / f"{loser}.err").read_text()
    out = root / "out" / "report"
    assert json.loads((out / "report.json").read_text())["results"]
    assert _listing(out.parent) == ["report"]
    runs = fork_server.race("report", root, *args, "--overwrite")  # both replace, in turn
    assert [code for _, code in runs] == [0, 0]
    assert json.loads((out / "report.json").read_text())["results"]
    assert _listing(out.parent) == ["report"]


def test_a_held_lock_makes_a_writer_wait_or_fail_by_name(tmp_path):
    target = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", (  # the lock's protocol, without importing workbench (slow)
        "import fcntl, os, sys\n"
        f"fd = os.open({str(lock_path(target))!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BusyError, match="another process is writing"):
            replace_folder(target, lambda tmp: (tmp / "a").write_text("a"), timeout=0.2)
        assert not target.exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    replace_folder(target, lambda tmp: (tmp / "a").write_text("a"), timeout=5)
    assert _listing(tmp_path) == ["out"]  # the holder left its lock file; the next writer removed it


def test_overwrite_false_is_checked_under_the_lock(tmp_path):
    target = tmp_path / "out"
    replace_folder(target, lambda tmp: (tmp / "a").write_text("1"))
    with pytest.raises(ConfigError, match="must not exist"):
        replace_folder(target, lambda tmp: (tmp / "a").write_text("2"), overwrite=False)
    assert (target / "a").read_text() == "1"


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    target = tmp_path / "out"
    (tmp_path / f".out.tmp-{pid}-abc").mkdir()
    (tmp_path / f".out.tmp-{pid}-abc" / "half").write_text("x")
    (tmp_path / f".out.tmp-{os.getppid()}-live").mkdir()  # a live process's: kept
    (tmp_path / ".other.tmp-1-x").mkdir()  # another target's: kept
    lock_path(target).touch()
    removed = clean_stale(target)
    assert [p.name for p in removed] == [f".out.tmp-{pid}-abc"]
    replace_folder(target, lambda tmp: (tmp / "a").write_text("a"))
    assert _listing(tmp_path) == sorted([f".out.tmp-{os.getppid()}-live", ".other.tmp-1-x", "out"])


def test_a_writer_killed_between_its_renames_gets_the_old_version_back(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    old = tmp_path / f".out.old-{int(dead.stdout)}"
    old.mkdir()
    (old / "a").write_text("whole")
    with folder_lock(tmp_path / "out"):
        clean_stale(tmp_path / "out")
    assert (tmp_path / "out" / "a").read_text() == "whole"
    assert _listing(tmp_path) == ["out"]
