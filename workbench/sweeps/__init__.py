"""Sweeps: many models, checkpoints, prompt sets and configs in one resumable run on Ray, with a DuckDB results store.

A spec (TOML or JSON) names models (bundled names, folders, globs over checkpoint folders), analyses, prompt sets and a
config grid per analysis; every (model, analysis, prompts, config) is a cell (:mod:`workbench.sweeps.spec`). Each cell
writes ``DIR/cells/<id>/`` atomically (:mod:`workbench.sweeps.cells`), the driver indexes those folders in
``DIR/results.duckdb`` (:mod:`workbench.sweeps.store`), :func:`run_sweep` runs the cells on Ray
(:mod:`workbench.sweeps.execute`) and ``DIR/report.html`` compares them (:mod:`workbench.sweeps.compare`).
Ray and DuckDB are imported only when a sweep runs or the store is opened.
"""

from workbench.sweeps.execute import SweepSummary, run_sweep
from workbench.sweeps.spec import Cell, SpecError, SweepSpec, load_spec, parse_spec
from workbench.sweeps.store import ResultsStore, open_store, reindex

__all__ = ["Cell", "ResultsStore", "SpecError", "SweepSpec", "SweepSummary", "load_spec", "open_store", "parse_spec",
           "reindex", "run_sweep", "write_sweep_report"]


def __getattr__(name: str):
    # the comparative report (plotly) loads only when asked for
    if name == "write_sweep_report":
        from workbench.sweeps.compare import write_sweep_report

        return write_sweep_report
    raise AttributeError(f"module 'workbench.sweeps' has no attribute {name!r}")
