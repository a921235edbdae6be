"""Patching metrics over a dataset of (base, source) pairs (Makelov, Lange & Nanda 2024, §4 and App. B), as the
reference code computes them (amakelov/activation-patching-illusion: ``ioi_analysis.ipynb`` ``get_patching_acc_and_ld``
and ``include_fractional_ld``; ``model_utils.py`` ``patch_training``).

For each pair the base run says ``answer`` and, if the feature were transplanted from the source, would say the
``counterfactual``. LD = logit(answer) − logit(counterfactual) at the last position.

- FLDD, fractional logit-difference decrease (the paper's metric): 1 − mean LD_patched / mean LD_base:
  0 = no effect, 1 = the model became indifferent, > 1 = the preference flipped.
- interchange accuracy: the fraction of pairs whose patched run's argmax over the *whole vocabulary* is the
  counterfactual token (``get_patching_acc_and_ld``). ``sign_rate`` keeps the weaker "LD_patched < 0" rate.
- fraction recovered (``patch_training``'s ``ld_fraction_recovered``): mean(LD_base − LD_target) /
  mean(LD_base − LD_target,whole), where LD_target = logit(counterfactual) − logit(answer) of the patched run (the
  reference gathers the patched logits at ``patched_answer_tokens``) and "whole" is the whole-site patch of the
  residual stream at the patched layer and position (the reference's ``baseline_patcher``: ``Full()`` at
  ``resid_post`` 8). For these flip pairs LD_target = −LD_patched, so this is mean(LD_base + LD_patched) /
  mean(LD_base + LD_whole): 1 = the patch leaves the target as far from the clean preference as the whole-site patch
  does, 0 = the patched run prefers the counterfactual exactly as strongly as the clean run preferred the answer.
  (The reference's docstring reads LD_patched on the base answers instead, mean(LD_base − LD_patched) /
  mean(LD_base − LD_whole): kept as ``fldd_vs_whole``.)
- ``recovered_source``: the earlier (mean LD_base − mean LD_patched)/(mean LD_base + mean LD_source), LD_source
  the source run's own preference for its answer — a named extra, not the reference's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from workbench.errors import shape_error


def logit_diff(logits: torch.Tensor, answer: torch.Tensor, alternative: torch.Tensor) -> torch.Tensor:
    """``[B]`` logit(answer) − logit(alternative) at the last position of ``[B, P, V]`` (or ``[B, V]``) logits.

    Example: ``logit_diff(forward(lm, tokens), io_ids, s_ids).mean()``"""
    last = logits[:, -1] if logits.ndim == 3 else logits
    if answer.shape != (last.shape[0],) or alternative.shape != answer.shape:
        raise shape_error("logit_diff", "answer", f"[{last.shape[0]}] token ids", tuple(answer.shape))
    rows = torch.arange(last.shape[0], device=last.device)
    return (last[rows, answer.to(last.device)] - last[rows, alternative.to(last.device)]).float()


def argmax_hits(logits: torch.Tensor, counterfactual: torch.Tensor) -> torch.Tensor:
    """``[B]`` bool: the last position's argmax over the whole vocabulary is ``counterfactual`` (interchange hit).

    Example: ``argmax_hits(patched_logits(lm, base, source, patches), counterfactual).float().mean()``"""
    last = logits[:, -1] if logits.ndim == 3 else logits
    if counterfactual.shape != (last.shape[0],):
        raise shape_error("argmax_hits", "counterfactual", f"[{last.shape[0]}] token ids", tuple(counterfactual.shape))
    return last.argmax(-1) == counterfactual.to(last.device)


@dataclass(frozen=True)
class PatchEffect:
    """Means over pairs (see the module docstring). ``ld_whole``: mean LD of the whole-site residual patch that
    ``recovered`` is relative to (NaN when none was given).

    Example: ``e: PatchEffect = patch_effect(ld_base, ld_patched, hits=hits); e.fldd, e.to_dict()``"""

    n: int
    ld_base: float
    ld_patched: float
    ld_source: float
    ld_whole: float
    fldd: float
    recovered: float
    fldd_vs_whole: float
    recovered_source: float
    interchange_accuracy: float
    sign_rate: float

    def to_dict(self) -> dict[str, float]:
        """The metrics as a plain ``{name: float}`` dict (for JSON results and tables).

        Example: ``patch_effect(ld_base, ld_patched, hits=hits).to_dict()["fldd"]``"""
        return dict(self.__dict__)


def _ratio(num: float, den: float) -> float:
    return num / den if abs(den) > 1e-9 else float("nan")


def fldd(ld_base: torch.Tensor, ld_patched: torch.Tensor) -> float:
    """1 − mean LD_patched / mean LD_base (the notebook's ``include_fractional_ld``, as a fraction, not %).

    Example: ``fldd(torch.tensor([3.0, 2.0]), torch.tensor([1.0, 0.0]))  # 0.8``"""
    base = float(ld_base.double().mean())
    return 1 - float(ld_patched.double().mean()) / base if abs(base) > 1e-9 else math.nan


def patch_effect(ld_base: torch.Tensor, ld_patched: torch.Tensor, *, hits: torch.Tensor,
                 ld_whole: torch.Tensor | None = None, ld_source: torch.Tensor | None = None) -> PatchEffect:
    """The metrics of one patch from per-pair ``[N]`` tensors: clean and patched LD, the interchange ``hits``
    (:func:`argmax_hits` of the patched logits), the whole-site residual patch's LD and the source run's LD.

    Example: ``patch_effect(ld_base, ld_patched, hits=argmax_hits(patched, counterfactual), ld_source=ld_src)``"""
    n = ld_base.shape[0]
    for name, t in (("ld_patched", ld_patched), ("hits", hits), ("ld_whole", ld_whole), ("ld_source", ld_source)):
        if t is not None and t.shape != (n,):
            raise shape_error("patch_effect", name, f"[{n}] per-pair values", tuple(t.shape))
    base, patched = float(ld_base.double().mean()), float(ld_patched.double().mean())
    whole = float(ld_whole.double().mean()) if ld_whole is not None else math.nan
    source = float(ld_source.double().mean()) if ld_source is not None else math.nan
    return PatchEffect(n=int(n), ld_base=base, ld_patched=patched, ld_source=source, ld_whole=whole,
                       fldd=fldd(ld_base, ld_patched),
                       recovered=_ratio(base + patched, base + whole), fldd_vs_whole=_ratio(base - patched,
                                                                                             base - whole),
                       recovered_source=_ratio(base - patched, base + source),
                       interchange_accuracy=float(hits.double().mean()),
                       sign_rate=float((ld_patched < 0).double().mean()))
