"""The registry: analyses arrive through the ``workbench.analyses`` entry-point group, loaded on the first lookup —
the built-in ones exactly as a third-party package's (tests/plugin/wb_weight_norms.py, CONTRIBUTING.md's example)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from tests.helpers import install_fake_plugin
from workbench import registry
from workbench.analysis import Analysis
from workbench.errors import ConfigError
from workbench.runner import run_analysis

BUILTIN = {"activation_spectra", "erank_dynamics", "gradient_spectra", "language_neurons", "rankme", "steer2edit",
           "subspace_patching", "token_maps", "weight_spectra"}


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    """A fake installed distribution on sys.path; the registry forgets everything before and after."""
    folder = install_fake_plugin(tmp_path / "site")
    monkeypatch.syspath_prepend(str(folder))
    registry._reset()
    yield folder
    sys.modules.pop("wb_weight_norms", None)
    registry._reset()


@pytest.fixture
def fresh_registry():
    registry._reset()
    yield
    registry._reset()


def test_builtins_come_from_the_entry_point_group():
    from importlib.metadata import entry_points

    assert {e.name for e in entry_points(group=registry.GROUP)} >= BUILTIN
    assert set(registry.names()) >= BUILTIN
    assert all(registry.get(n).name == n for n in BUILTIN)


def test_import_workbench_imports_no_analysis_module():
    code = ("import sys, workbench; from workbench import registry, runner, report, cli; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('analyses', 'app', 'workbench_analyses', "
            "'workbench_app')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_a_fake_entry_point_registers_and_runs(plugin_path, tiny_model):
    assert "weight_norms" in registry.names() and set(registry.names()) >= BUILTIN
    spec = registry.get("weight_norms")
    assert isinstance(spec, Analysis) and spec.needs_weights
    result = run_analysis(tiny_model, "weight_norms")
    n_layer_matrices = sum(1 for _, layer, _ in tiny_model.weights() if layer is not None)
    assert len(result.matrix) == n_layer_matrices and all(1 <= e <= 64 for e in result.erank)
    assert registry.result_from_dict(result.to_dict()) == result


def test_without_the_plugin_on_the_path_it_is_gone(fresh_registry):
    assert "weight_norms" not in registry.names()
    with pytest.raises(ConfigError, match="'name'"):
        registry.get("weight_norms")


@pytest.mark.parametrize("entry, why", [
    ("weight_norms = wb_no_such_module:ANALYSIS", "ModuleNotFoundError"),
    ("weight_norms = wb_weight_norms:compute", "must name a workbench.analysis.Analysis"),
    ("other_name = wb_weight_norms:ANALYSIS", "must be the analysis' name"),
])
def test_a_broken_entry_point_is_logged_and_skipped(tmp_path, monkeypatch, caplog, entry, why):
    monkeypatch.syspath_prepend(str(install_fake_plugin(tmp_path / "site", entry=entry)))
    registry._reset()
    try:
        with caplog.at_level(logging.WARNING, logger="workbench.registry"):
            names = registry.names()
        assert set(names) >= BUILTIN and "weight_norms" not in names and "other_name" not in names
        assert why in caplog.text
    finally:
        sys.modules.pop("wb_weight_norms", None)
        registry._reset()


def test_a_broken_builtin_entry_point_raises(tmp_path, monkeypatch):
    """The built-in analyses' distribution is not a plugin: its import errors surface instead of being skipped."""
    entry = "weight_norms = wb_no_such_module:ANALYSIS"
    monkeypatch.syspath_prepend(str(install_fake_plugin(tmp_path / "site", entry=entry, dist=registry.DISTRIBUTION)))
    registry._reset()
    try:
        with pytest.raises(ModuleNotFoundError, match="wb_no_such_module"):
            registry.names()
    finally:
        registry._reset()


def test_register_by_hand_refuses_duplicates_and_non_analyses(plugin_path):
    import wb_weight_norms

    with pytest.raises(ValueError, match="already registered"):
        registry.register(wb_weight_norms.ANALYSIS)
    with pytest.raises(ConfigError, match="'analysis'"):
        registry.register("weight_norms")


def test_the_cli_runs_a_fake_entry_point_analysis(plugin_path, tiny_model, tmp_path):
    import json
    import os

    out = tmp_path / "report"
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(plugin_path), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-m", "workbench", "report", "--model", str(tiny_model.folder), "--analyses",
                    "weight_norms", "--out", str(out)], check=True, env=env, timeout=600, capture_output=True)
    data = json.loads((out / "report.json").read_text())
    assert data["results"]["weight_norms"]["kind"] == "weight_norms"
    from workbench.report import Report

    assert Report.load(out).results["weight_norms"].matrix == data["results"]["weight_norms"]["matrix"]
