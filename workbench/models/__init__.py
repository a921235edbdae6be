"""Model loading and adapters: the only floor that reads weights from disk."""

from workbench.models.adapters import ModelAdapter, ModelFacts, adapter_for, register_adapter
from workbench.models.bundled import BundledSource, bundled_names, register_bundled
from workbench.models.load import load_model
from workbench.models.loaded import LoadedModel

__all__ = ["BundledSource", "LoadedModel", "ModelAdapter", "ModelFacts", "adapter_for", "bundled_names",
           "load_model", "register_adapter", "register_bundled"]
