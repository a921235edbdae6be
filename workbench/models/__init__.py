"""Model loading and adapters: the only floor that reads weights from disk."""

from workbench.models.adapters import ModelAdapter, ModelFacts, adapter_for, register_adapter
from workbench.models.bundled import BundledSource, bundled_names, register_bundled
from workbench.models.load import load_model
from workbench.models.loaded import LoadedModel, as_hooked, hook_points

__all__ = ["BundledSource", "LoadedModel", "ModelAdapter", "ModelFacts", "adapter_for", "as_hooked", "bundled_names", "hook_points",
           "load_model", "register_adapter", "register_bundled"]
