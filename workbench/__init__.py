"""workbench: hook-based capture, a batched spectral engine and causal tools for transformer language models.

The public API is small and handed on from the floors below (model ▸ capture ▸ spectra ▸ analyses ▸ report)::

    import workbench
    lm = workbench.load_model()                      # bundled SmolLM2-135M-Instruct, converted once, offline
    cap = workbench.capture(lm, texts, sites="blocks.*.hook_resid_post")
"""

from workbench.capture import CaptureResult, SiteStats, capture
from workbench.errors import BudgetError, ConfigError, ModelLoadError, ShapeError, SiteError, WorkbenchError
from workbench.models import LoadedModel, load_model

__version__ = "0.1.0"

__all__ = ["BudgetError", "CaptureResult", "ConfigError", "LoadedModel", "ModelLoadError", "ShapeError",
           "SiteError", "SiteStats", "WorkbenchError", "capture", "load_model"]
