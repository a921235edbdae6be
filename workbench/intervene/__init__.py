"""Interventions on a hooked model — the public pieces of each module, re-exported here:

- patching (``patch``): whole-site and subspace activation patching, always-removed hooks;
- ``das``: distributed alignment search (a learned rotated subspace);
- ``illusion``: the interpretability-illusion diagnostics of a patched direction;
- ``steer``: contrast vectors and additive steering;
- ``edit``: Steer2Edit rank-1 weight edits, applied and reverted exactly;
- ``generation``: KV-cached greedy/sampled generation that keeps every hook (steering, recorded states, logits);
- ``readout``: logits, margins, greedy continuations and NLL read off the model;
- ``language``: language-neuron selectivity, steering subspaces and shifts (Neural FOXP2);
- ``metrics``: logit difference and patching-effect summaries.

Names not listed in ``__all__`` are internal.
"""

from workbench.intervene import das, edit, generation, illusion, language, metrics, patch, readout, steer
from workbench.intervene.das import DASFit, RotatedSubspace, train_das
from workbench.intervene.edit import (
    ComponentEdit,
    EditHandle,
    apply_edits,
    edited,
    elastic_net_lambda,
    head_attribution,
    head_edit,
    load_edits,
    neuron_attribution,
    neuron_edit,
    save_edits,
    steer2edit,
)
from workbench.intervene.generation import Generation, generate
from workbench.intervene.illusion import Diagnostics, Split, diagnose, row_space, split_direction
from workbench.intervene.language import (
    best_window,
    causal_lift,
    prototypes,
    reference_shift,
    selectivity,
    sparse_shift,
    steering_directions,
    steering_rank,
)
from workbench.intervene.metrics import PatchEffect, argmax_hits, fldd, logit_diff, patch_effect
from workbench.intervene.patch import Patch, apply_patch, orthonormal, patched_logits, patching, record, subspace_patch
from workbench.intervene.readout import (
    continuation_nll,
    final_residual,
    greedy_continuations,
    greedy_from_ids,
    position_logits,
    texts_margin,
    token_set_margin,
    unembed,
)
from workbench.intervene.steer import ContrastVectors, Steer, apply_steer, contrast_vectors, steering, vector_steers

__all__ = [
    "ComponentEdit", "ContrastVectors", "DASFit", "Diagnostics", "EditHandle", "Generation", "Patch", "PatchEffect",
    "RotatedSubspace", "Split", "Steer", "apply_edits", "apply_patch", "apply_steer", "argmax_hits", "best_window",
    "causal_lift", "continuation_nll", "contrast_vectors", "das", "diagnose", "edit", "edited", "elastic_net_lambda",
    "final_residual", "fldd", "generate", "generation", "greedy_continuations", "greedy_from_ids", "head_attribution",
    "head_edit", "illusion", "language", "load_edits", "logit_diff", "metrics", "neuron_attribution", "neuron_edit",
    "orthonormal", "patch", "patch_effect", "patched_logits", "patching", "position_logits", "prototypes", "readout",
    "record", "reference_shift", "row_space", "save_edits", "selectivity", "sparse_shift", "split_direction", "steer",
    "steer2edit", "steering", "steering_directions", "steering_rank", "subspace_patch", "texts_margin",
    "token_set_margin", "train_das", "unembed", "vector_steers",
]
