"""Imports flow one way — workbench (library) ▸ workbench_analyses (built-in analyses) ▸ workbench_app (dashboard) —
and analyses never import one another (an analysis package's own modules import each other relatively). Checked on
the source's import statements, deferred imports inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GENERIC = {"analyses", "app"}  # source-folder names, never import names
UPPER = {"workbench_analyses", "workbench_app"}


def imports(path: Path) -> list[tuple[int, str]]:
    """(relative level, absolute-or-relative module) of every import in a file; ``importlib.import_module("x")``
    calls count too."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(0, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.level, node.module or ""))
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)):
            out.append((0, node.args[0].value))
    return out


def files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", files("workbench"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_library_imports_no_analysis_and_no_dashboard(path):
    bad = [m for level, m in imports(path) if level == 0 and m.split(".")[0] in GENERIC | UPPER]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("path", files("analyses"), ids=lambda p: str(p.relative_to(ROOT)))
def test_analyses_import_only_the_library_and_their_own_package(path):
    in_subpackage = path.parent != ROOT / "analyses"
    for level, module in imports(path):
        if level == 0:
            assert module.split(".")[0] not in GENERIC | UPPER, f"{path.relative_to(ROOT)} imports {module}"
        else:  # relative: only within the analysis' own subpackage (analyses/<name>/), never a sibling analysis
            assert in_subpackage and level == 1, f"{path.relative_to(ROOT)} imports {'.' * level}{module}"


@pytest.mark.parametrize("folder", ["app", "tests", "benchmarks"])
def test_nothing_imports_the_source_folders_by_their_generic_names(folder):
    bad = [(str(p.relative_to(ROOT)), m) for p in files(folder) for level, m in imports(p)
           if level == 0 and m.split(".")[0] in GENERIC]
    assert not bad


def test_test_module_basenames_are_unique():
    """The test folders are not packages (no __init__.py), so pytest imports each test module by its basename: two
    files with one name in different folders stop the whole suite at collection ("import file mismatch")."""
    seen: dict[str, list[str]] = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        seen.setdefault(path.name, []).append(str(path.relative_to(ROOT)))
    assert {name: paths for name, paths in seen.items() if len(paths) > 1} == {}
