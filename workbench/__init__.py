"""workbench: hook-based capture, a batched spectral engine and causal tools for transformer language models.

The public API is what this module exports; the floors below (``workbench.models``, ``workbench.capture``,
``workbench.spectra``, ``workbench.intervene``, ``workbench.tam``) export their own public pieces, and every other
module is importable but internal (it may change without notice)::

    import workbench
    lm = workbench.load_model()                      # bundled SmolLM2-135M-Instruct, converted once, offline
    cap = workbench.capture(lm, texts, sites="blocks.*.hook_resid_post")
    result = workbench.run_analysis(lm, "rankme")    # any name in workbench.registry.names()
    workbench.Report({"rankme": result}).write("reports/rankme")

Analyses register through the ``workbench.analyses`` entry-point group (loaded on the first registry lookup), so
``import workbench`` imports none of them.
"""

from workbench import registry
from workbench.analysis import Analysis, Inputs
from workbench.capture import CaptureResult, SiteStats, capture, site
from workbench.errors import BudgetError, ConfigError, ModelLoadError, ShapeError, SiteError, WorkbenchError
from workbench.models import LoadedModel, as_hooked, load_model
from workbench.report import Report
from workbench.results import Config, Result
from workbench.runner import run_analyses, run_analysis

__version__ = "0.1.0"

__all__ = ["Analysis", "BudgetError", "CaptureResult", "Config", "ConfigError", "Inputs", "LoadedModel",
           "ModelLoadError", "Report", "Result", "ShapeError", "SiteError", "SiteStats", "WorkbenchError",
           "as_hooked", "capture", "load_model", "registry", "run_analyses", "run_analysis", "site"]
