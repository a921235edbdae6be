"""Patching metrics over a dataset of (base, source) pairs (Makelov, Lange & Nanda 2024, §4 and App. B).

For each pair the base run should say ``answer`` and, if the feature were transplanted from the source, the
``counterfactual``. LD = logit(answer) − logit(counterfactual) at the last position.

- FLDD, fractional logit-difference decrease (the paper's metric): (mean LD_base − mean LD_patched)/mean LD_base:
  0 = no effect, 1 = the model became indifferent, > 1 = the preference flipped.
- fraction recovered: (mean LD_base − mean LD_patched)/(mean LD_base + mean LD_source) where LD_source is the
  source run's own preference for *its* answer over its alternative: 1 = the patched base prefers the counterfactual
  as strongly as the source prefers its own answer.
- interchange accuracy: the fraction of pairs whose patched run prefers the counterfactual (LD_patched < 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.errors import shape_error


def logit_diff(logits: torch.Tensor, answer: torch.Tensor, alternative: torch.Tensor) -> torch.Tensor:
    """``[B]`` logit(answer) − logit(alternative) at the last position of ``[B, P, V]`` (or ``[B, V]``) logits."""
    last = logits[:, -1] if logits.ndim == 3 else logits
    if answer.shape != (last.shape[0],) or alternative.shape != answer.shape:
        raise shape_error("logit_diff", "answer", f"[{last.shape[0]}] token ids", tuple(answer.shape))
    rows = torch.arange(last.shape[0], device=last.device)
    return (last[rows, answer.to(last.device)] - last[rows, alternative.to(last.device)]).float()


@dataclass(frozen=True)
class PatchEffect:
    """Means over pairs (see the module docstring)."""

    n: int
    ld_base: float
    ld_patched: float
    ld_source: float
    fldd: float
    recovered: float
    interchange_accuracy: float

    def to_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def patch_effect(ld_base: torch.Tensor, ld_patched: torch.Tensor, ld_source: torch.Tensor) -> PatchEffect:
    base, patched, source = (float(t.mean()) for t in (ld_base, ld_patched, ld_source))
    denom_fldd = base if abs(base) > 1e-9 else float("nan")
    denom_rec = base + source if abs(base + source) > 1e-9 else float("nan")
    return PatchEffect(n=int(ld_base.numel()), ld_base=base, ld_patched=patched, ld_source=source,
                       fldd=(base - patched) / denom_fldd, recovered=(base - patched) / denom_rec,
                       interchange_accuracy=float((ld_patched < 0).float().mean()))
