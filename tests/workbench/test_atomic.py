"""Atomic folders and files appear with the modes a plain mkdir/open would give (umask applied), not mkdtemp's 0o700."""

import os
import stat

import pytest

from workbench.atomic import replace_folder, umask_mode


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_replace_folder_gives_the_umask_mode(tmp_path, umask_022):
    target = tmp_path / "report"
    replace_folder(target, lambda folder: (folder / "a.json").write_text("{}"))
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert umask_mode(0o666) == 0o644


def test_replace_folder_failure_leaves_nothing(tmp_path):
    def fail(folder):
        (folder / "half").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        replace_folder(tmp_path / "out", fail)
    assert list(tmp_path.iterdir()) == []


def test_sweep_report_is_readable_by_others(tmp_path, umask_022):
    from tests.workbench.sweeps.synthetic import make_sweep
    from workbench.sweeps.compare import write_sweep_report

    out = tmp_path / "sweep"
    make_sweep(out)
    path = write_sweep_report(out)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
