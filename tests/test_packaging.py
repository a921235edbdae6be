"""The distribution as pip would install it: a wheel built from this checkout claims only the workbench* top-level
names, ships the dashboard's pages and the bundled data, and lists every built-in analysis as an entry point."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout (the wheel is built from the tracked files)")
    src = tmp_path_factory.mktemp("src")
    archive = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True).stdout
    for name in filter(None, archive.decode().split("\0")):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(out)], check=True, capture_output=True, timeout=600)
    (path,) = out.glob("spectral_workbench-*.whl")
    return zipfile.ZipFile(path)


def test_wheel_claims_no_generic_top_level_name(wheel):
    tops = {name.split("/")[0] for name in wheel.namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"workbench", "workbench_analyses", "workbench_app"}


def test_wheel_ships_the_dashboard_pages_and_bundled_data(wheel):
    names = set(wheel.namelist())
    pages = sorted(p.name for p in (ROOT / "app" / "pages").glob("*.py"))
    assert pages and all(f"workbench_app/pages/{p}" in names for p in pages)
    assert "workbench_app/Home.py" in names
    data = subprocess.run(["git", "-C", str(ROOT), "ls-files", "workbench/data"], capture_output=True, text=True,
                          check=True).stdout.split()
    assert data and all(d in names for d in data)
    packages = {str(p.parent.relative_to(ROOT / "analyses")) for p in (ROOT / "analyses").rglob("__init__.py")}
    assert all(f"workbench_analyses/{p}/__init__.py".replace("/./", "/") in names for p in packages)


def test_wheel_ships_every_library_module(wheel):
    """Every tracked .py file of the library is in the wheel (a new subpackage missing from pyproject.toml's
    ``packages`` list would otherwise install without its modules)."""
    names = set(wheel.namelist())
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "workbench/*.py", "workbench/**/*.py"],
                             capture_output=True, text=True, check=True).stdout.split()
    missing = [t for t in tracked if t not in names]
    assert tracked and not missing, missing


def test_wheel_entry_points_are_the_builtin_analyses(wheel):
    from workbench import registry

    (entry_file,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(entry_file).decode()
    section = text.split("[workbench.analyses]")[1].split("[")[0]
    listed = {line.split("=")[0].strip() for line in section.strip().splitlines()}
    builtin = {n for n in registry.names() if registry.get(n).compute.__module__.startswith("workbench_analyses")}
    assert listed == builtin and len(listed) == len(list((ROOT / "analyses").glob("[!_]*.py"))) + len(
        [p for p in (ROOT / "analyses").iterdir() if (p / "__init__.py").is_file()])
    assert "workbench = workbench.cli:main" in text
