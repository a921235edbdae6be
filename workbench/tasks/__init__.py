"""Task datasets for causal experiments (activation patching)."""

from workbench.tasks.ioi import (NAMES, OBJECTS, PLACES, TEMPLATES, VARIANTS, PatchPair, ioi_pairs, ioi_prompt,
                                 single_token_names)

__all__ = ["NAMES", "OBJECTS", "PLACES", "TEMPLATES", "VARIANTS", "PatchPair", "ioi_pairs", "ioi_prompt",
           "single_token_names"]
