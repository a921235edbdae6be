"""CONTRIBUTING.md's worked example is the file the tests install as a third-party analysis, and its test runs."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from tests.helpers import PLUGIN, install_fake_plugin
from workbench import registry

DOC = Path(__file__).resolve().parents[1] / "CONTRIBUTING.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def test_the_worked_example_is_the_plugin_file():
    assert blocks("python")[0] == PLUGIN.read_text(encoding="utf-8")


def test_the_entry_point_block_matches_the_installed_fake_distribution(tmp_path):
    (toml,) = blocks("toml")
    entry = toml.splitlines()[1].replace('"', "")
    info = install_fake_plugin(tmp_path / "site") / "wb_weight_norms-0.1.dist-info" / "entry_points.txt"
    assert f"[workbench.analyses]\n{entry}\n" == info.read_text()


def test_the_example_test_passes(tmp_path, monkeypatch, tiny_model):
    monkeypatch.syspath_prepend(str(install_fake_plugin(tmp_path / "site")))
    registry._reset()
    try:
        namespace: dict = {}
        exec(compile(blocks("python")[1], str(DOC), "exec"), namespace)
        namespace["test_weight_norms_match_numpy"](tiny_model)
    finally:
        sys.modules.pop("wb_weight_norms", None)
        registry._reset()
