"""Interventions on a hooked model: activation and subspace patching, DAS, interpretability-illusion diagnostics."""

from workbench.intervene.patch import Patch, apply_patch, orthonormal, patched_logits, patching, record, subspace_patch

__all__ = ["Patch", "apply_patch", "orthonormal", "patched_logits", "patching", "record", "subspace_patch"]
