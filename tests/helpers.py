"""Builders shared by the tests (imported as ``from tests.helpers import ...``; conftest.py only holds fixtures)."""

from __future__ import annotations

import shutil
from pathlib import Path

PLUGIN = Path(__file__).resolve().parent / "plugin" / "wb_weight_norms.py"


def install_fake_plugin(folder: Path, *, entry: str = "weight_norms = wb_weight_norms:ANALYSIS") -> Path:
    """A third-party distribution as pip would leave it in site-packages: the module of CONTRIBUTING.md's worked
    example plus a ``.dist-info`` whose ``entry_points.txt`` lists it in the ``workbench.analyses`` group. Put
    ``folder`` on ``sys.path`` (or ``PYTHONPATH``) and :mod:`importlib.metadata` finds the entry point."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(PLUGIN, folder / PLUGIN.name)
    info = folder / "wb_weight_norms-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: wb-weight-norms\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[workbench.analyses]\n{entry}\n")
    return folder
