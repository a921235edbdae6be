"""Names that moved from the analyses into the library still import from the old path, with a DeprecationWarning
that names the new one; the new path is the same object."""

from __future__ import annotations

import importlib

import pytest

MOVED = [
    ("workbench_analyses.rankme", "rankme_of", "workbench.spectra.embeddings"),
    ("workbench_analyses.rankme", "rankme_of_file", "workbench.spectra.embeddings"),
    ("workbench_analyses.erank_dynamics", "erv_era", "workbench.spectra.dynamics"),
    ("workbench_analyses.erank_dynamics", "rank_dynamics", "workbench.spectra.dynamics"),
    ("workbench_analyses.gradient_spectra", "response_loss", "workbench.capture.gradients"),
    ("workbench_analyses.gradient_spectra", "DatasetGradients", "workbench.capture.gradients"),
]


@pytest.mark.parametrize("old, name, new", MOVED)
def test_old_path_warns_and_serves_the_library_object(old, name, new):
    with pytest.warns(DeprecationWarning, match=f"{new}.{name}"):
        obj = getattr(importlib.import_module(old), name)
    assert obj is getattr(importlib.import_module(new), name)


def test_unknown_names_still_raise_attribute_error():
    module = importlib.import_module("workbench_analyses.rankme")
    with pytest.raises(AttributeError, match="no_such_name"):
        module.no_such_name  # noqa: B018
