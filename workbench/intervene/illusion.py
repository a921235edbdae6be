"""Interpretability-illusion diagnostics for a patching direction (Makelov, Lange & Nanda 2024, §3 and §4.2).

A 1-D subspace patch along v can change a model's output without v being how the model represents the feature: v may
be the sum of a *disconnected* part (in the null space of the weights that read the site, correlated with the feature,
causally inert) and a *dormant* part (in their row space, able to change the output but barely varying on real
inputs). Patching along v moves the dormant part by the disconnected part's variation. The paper's test: split
v = v_row + v_null with v_row = v·Q·Qᵀ (Q an orthonormal basis of the readers' column space in the site's space — the
reference takes Q from a QR of W_out; an SVD with a rank tolerance gives the same Q for full-rank readers and stays
correct for rank-deficient ones), check v_null is invisible downstream, and patch along v, v_row, v_null and the whole
site. Normalisation between the site and its readers (RMSNorm/LayerNorm) is not linear: v_null is invisible to the
readers' weights, not to the normalisation's scale.

The paper's criteria are qualitative: histograms of the projections on v_row / v_null for ABB vs BAB inputs
(disconnected: v_null separates them; dormant: v_row barely varies) and v_null·W_out ≈ 0 (the reference asserts it
to 1e-5). The numeric thresholds of the verdict here (``min_effect`` 0.3, ``part_share`` 0.5, ``corr_threshold`` 0.5,
``dormant_ratio`` 0.5) and the statistics they apply to (|Pearson r| with the feature, the std ratio against random
row-space directions) are **this project's heuristics**, not the paper's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch

from workbench.errors import shape_error
from workbench.intervene.metrics import PatchEffect, argmax_hits, logit_diff, patch_effect
from workbench.intervene.patch import Patch, last_logits, patching, prefix_state, record, resume_point
from workbench.models.loaded import LoadedModel

if TYPE_CHECKING:
    from transformer_lens import HookedRootModule


def row_space(readers: torch.Tensor, rtol: float = 1e-6) -> torch.Tensor:
    """``[d, r]`` orthonormal basis of the column space of ``readers`` ``[d, m]`` (the directions they can see).

    Example: ``row_space(lm.weight("W_Q", 6)[0])  # [d_model, r]: what head 6.0's queries can read``"""
    u, s, _ = torch.linalg.svd(readers.double(), full_matrices=False)
    r = int((s > rtol * s[0]).sum()) if s.numel() and s[0] > 0 else 0
    return u[:, :r]


@dataclass(frozen=True)
class Split:
    """A direction split by :func:`split_direction`: ``v_row`` (seen by the readers) + ``v_null`` (invisible to them),
    the share ``row_fraction`` = ‖v_row‖²/‖v‖² and ``null_leak`` (≈1e-16 when the split is exact).

    Example: ``s: Split = split_direction(fit.basis[:, 0], readers); s.row_fraction, s.null_leak``"""
    v_row: torch.Tensor
    v_null: torch.Tensor
    row_fraction: float  # ‖v_row‖²/‖v‖²
    null_leak: float  # ‖v_nullᵀ·readers‖ / (‖v‖·‖readers‖₂): ~1e-16 when v_null is invisible to the readers


def split_direction(v: torch.Tensor, readers: torch.Tensor, rtol: float = 1e-6) -> Split:
    """v = v_row + v_null with respect to ``readers`` ``[d, m]`` (v ``[d]``).

    Example: ``split_direction(fit.basis[:, 0], readers).row_fraction``"""
    if v.ndim != 1 or readers.ndim != 2 or readers.shape[0] != v.shape[0]:
        raise shape_error("split_direction", "readers", f"[{v.shape[0]}, m] (rows = the site's width)",
                          tuple(readers.shape))
    v64, q = v.double(), row_space(readers, rtol)
    v_row = q @ (q.T @ v64)
    v_null = v64 - v_row
    leak = float((v_null @ readers.double()).norm() / (v64.norm() * torch.linalg.matrix_norm(readers.double(), 2)))
    return Split(v_row=v_row.to(v.dtype), v_null=v_null.to(v.dtype),
                 row_fraction=float(v_row.norm() ** 2 / v64.norm() ** 2), null_leak=leak)


@dataclass(frozen=True)
class Diagnostics:
    """Effects of patching along v, v_row, v_null and the whole site; dormancy and disconnection statistics; verdict.

    ``row_std_ratio``: std over inputs of the projection on v̂_row divided by the median std over random unit
    directions of the row space (≪ 1: dormant). ``null_feature_corr``/``row_feature_corr``: |Pearson r| between the
    projection on v̂_null / v̂_row and the feature label (high for the null part: disconnected but informative).

    Example: ``d: Diagnostics = diagnose(lm, **args); d.likely_illusion, d.reasons  # args as in diagnose's example``"""

    site: str
    position: int
    effects: dict[str, PatchEffect]
    row_fraction: float
    null_leak: float
    row_std_ratio: float
    null_feature_corr: float
    row_feature_corr: float
    likely_illusion: bool
    reasons: list[str] = field(default_factory=list)


def diagnose(lm: LoadedModel | HookedRootModule, *, site: str, position: int, direction: torch.Tensor, readers: torch.Tensor,
             base: torch.Tensor, source: torch.Tensor, answer: torch.Tensor, counterfactual: torch.Tensor,
             source_answer: torch.Tensor | None = None, source_alternative: torch.Tensor | None = None,
             feature: torch.Tensor | None = None, baseline_site: str | None = None, batch_size: int = 32,
             min_effect: float = 0.3, part_share: float = 0.5, corr_threshold: float = 0.5,
             dormant_ratio: float = 0.5, seed: int = 0) -> Diagnostics:
    """Run the paper's checks for ``direction`` (``[d]``) at ``site``/``position`` over (base, source) pairs.

    ``answer``/``counterfactual``: ``[N]`` ids the base run says / would say with the feature transplanted;
    ``source_answer``/``source_alternative`` (default: counterfactual/answer) give the source run's own logit
    difference. ``feature``: a ``[2N]`` label of the base then source inputs (default: 0 for base, 1 for source).
    ``baseline_site``: the site whose whole-site patch (same position) "fraction recovered" is relative to (the
    reference: the residual stream of the layer; default ``site``).
    Verdict (this project's heuristic thresholds, see the module docstring): v's effect (FLDD) ≥ ``min_effect``
    while v_row and v_null alone each reach < ``part_share`` of it, and the null part is feature-correlated
    (|r| ≥ ``corr_threshold``) or the row part dormant (std ratio < ``dormant_ratio``).

    Example: ``diagnose(lm, site=s, position=-1, direction=v, readers=r, base=b, source=x, answer=a, counterfactual=c)``"""
    split = split_direction(direction, readers)
    src_ans = counterfactual if source_answer is None else source_answer
    src_alt = answer if source_alternative is None else source_alternative
    ld_base, hits_base = _ld(lm, base, answer, counterfactual, batch_size)
    ld_source, _ = _ld(lm, source, src_ans, src_alt, batch_size)
    patches = {
        "v": Patch(site, positions=[position], basis=direction),
        "v_row": Patch(site, positions=[position], basis=split.v_row) if split.row_fraction > 1e-9 else None,
        "v_null": Patch(site, positions=[position], basis=split.v_null) if split.row_fraction < 1 - 1e-9 else None,
        "whole site": Patch(site, positions=[position]),
    }
    baseline = {} if baseline_site in (None, site) else {"baseline": Patch(baseline_site, positions=[position])}
    patched = _patched(lm, {name: p for name, p in patches.items() if p is not None} | baseline, base, source, answer,
                       counterfactual, batch_size)
    runs = {name: (ld_base, hits_base) if patch is None else patched[name]  # an empty part changes nothing
            for name, patch in patches.items()}
    ld_whole = patched["baseline" if baseline else "whole site"][0]
    effects = {name: patch_effect(ld_base, ld, hits=hits, ld_whole=ld_whole, ld_source=ld_source)
               for name, (ld, hits) in runs.items()}
    acts = torch.cat([record(lm, x[i], [site])[site][:, position]
                      for x in (base, source) for i in torch.arange(x.shape[0]).split(batch_size)]).double()
    if feature is not None and feature.shape != (base.shape[0] + source.shape[0],):
        raise shape_error("diagnose", "feature", f"[{base.shape[0] + source.shape[0]}] labels (base then source)",
                          tuple(feature.shape))
    label = (torch.cat([torch.zeros(base.shape[0]), torch.ones(source.shape[0])]) if feature is None
             else feature).double().to(acts.device)
    row_std_ratio = _dormancy(acts, split.v_row, readers, seed)
    null_corr = _abs_corr(acts @ _unit(split.v_null), label)
    row_corr = _abs_corr(acts @ _unit(split.v_row), label)
    verdict, reasons = _verdict(effects, split, row_std_ratio, null_corr, min_effect, part_share, corr_threshold,
                                dormant_ratio)
    return Diagnostics(site=site, position=position, effects=effects, row_fraction=split.row_fraction,
                       null_leak=split.null_leak, row_std_ratio=row_std_ratio, null_feature_corr=null_corr,
                       row_feature_corr=row_corr, likely_illusion=verdict, reasons=reasons)


def _ld(lm: LoadedModel | HookedRootModule, inputs, answer, alternative, batch_size) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean-run LD and interchange hits (argmax = ``alternative``) per input."""
    lds, hits = [], []
    with torch.no_grad():
        for i in torch.arange(inputs.shape[0]).split(batch_size):
            logits = last_logits(lm, inputs[i])
            lds.append(logit_diff(logits, answer[i], alternative[i]))
            hits.append(argmax_hits(logits, alternative[i]))
    return torch.cat(lds), torch.cat(hits)


def _patched(lm: LoadedModel | HookedRootModule, patches: dict[str, Patch], base, source, answer, counterfactual,
             batch_size) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Patched-run LD and interchange hits (whole-vocabulary argmax = the counterfactual) per pair, for each patch.
    Per batch the source's activations at every patched site are recorded once, and each patched forward starts at
    the earliest patched block from the base run's residual and unembeds the last position only
    (:func:`~workbench.intervene.patch.last_logits`: the numbers of the full patched forward)."""
    if base.shape != source.shape:
        raise shape_error("diagnose", "source", f"the base inputs' shape {tuple(base.shape)} (equal token lengths: "
                          "patching is position-aligned)", tuple(source.shape))
    sites = list(dict.fromkeys(p.site for p in patches.values()))
    n_pos = base.shape[1] if base.ndim == 2 else 0
    at_last = n_pos > 1 and all(_positions(p) in ([-1], [n_pos - 1]) for p in patches.values())
    out: dict[str, tuple[list, list]] = {name: ([], []) for name in patches}
    for i in torch.arange(base.shape[0]).split(batch_size):
        acts = record(lm, source[i], sites)
        start = prefix_state(lm, base[i], sites) if at_last else None
        if start is None:
            start, run = resume_point(lm, base[i], sites), patches
        else:  # only the last position is recomputed: patch it as position -1 of a one-position forward
            acts = {s: a[:, -1:] for s, a in acts.items()}
            run = {name: replace(p, positions=[-1]) for name, p in patches.items()}
        for name, patch in run.items():
            with patching(lm, [patch], acts), torch.no_grad():
                logits = last_logits(lm, base[i], start=start)
            out[name][0].append(logit_diff(logits, answer[i], counterfactual[i]))
            out[name][1].append(argmax_hits(logits, counterfactual[i]))
    return {name: (torch.cat(lds), torch.cat(hits)) for name, (lds, hits) in out.items()}


def _positions(patch: Patch) -> list | None:
    return None if patch.positions is None else (
        [patch.positions] if isinstance(patch.positions, int) else list(patch.positions))


def _unit(v: torch.Tensor) -> torch.Tensor:
    v = v.double()
    n = v.norm()
    return v / n if n > 0 else v


def _abs_corr(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x - x.mean(), y - y.mean()
    denom = float(x.norm() * y.norm())
    return abs(float(x @ y)) / denom if denom > 1e-300 else 0.0


def _dormancy(acts: torch.Tensor, v_row: torch.Tensor, readers: torch.Tensor, seed: int, draws: int = 64) -> float:
    """std of the projection on v̂_row over the median std on random unit directions of the row space."""
    if float(v_row.norm()) == 0.0:
        return float("nan")
    q = row_space(readers)
    gen = torch.Generator().manual_seed(seed)
    rand = q @ torch.randn(q.shape[1], draws, generator=gen, dtype=torch.float64).to(q.device)
    rand = rand / rand.norm(dim=0, keepdim=True)
    ref = float((acts @ rand).std(dim=0).median())
    own = float((acts @ _unit(v_row)).std())
    return own / ref if ref > 0 else (0.0 if own == 0 else float("inf"))


def _verdict(effects, split, row_std_ratio, null_corr, min_effect, part_share, corr_threshold, dormant_ratio):
    v, row, null, whole = (effects[k].fldd for k in ("v", "v_row", "v_null", "whole site"))
    reasons = [f"patching along v changes the logit difference by FLDD {v:.2f} (whole site: {whole:.2f}); "
               f"v_row alone {row:.2f}, v_null alone {null:.2f}",
               f"v is {100 * split.row_fraction:.0f}% row space by energy; v_null leaks {split.null_leak:.1e} "
               "into the readers (≈ 0: invisible downstream)"]
    strong = math.isfinite(v) and v >= min_effect
    needs_both = strong and all(math.isfinite(x) and x < part_share * v for x in (row, null))
    disconnected = null_corr >= corr_threshold
    dormant = math.isfinite(row_std_ratio) and row_std_ratio < dormant_ratio
    reasons.append(f"the null-space part correlates with the feature (|r| = {null_corr:.2f}"
                   f"{', disconnected' if disconnected else ''}); the row-space part varies "
                   f"{row_std_ratio:.2f}x as much as a typical row-space direction{' (dormant)' if dormant else ''}")
    reasons.append(f"thresholds are this project's heuristics (effect ≥ {min_effect}, each part < {part_share} of it, "
                   f"|r| ≥ {corr_threshold} disconnected, std ratio < {dormant_ratio} dormant); the paper's criteria "
                   "are qualitative (projection histograms, v_null·W ≈ 0)")
    verdict = needs_both and (disconnected or dormant)
    if not strong:
        reasons.append(f"no illusion to diagnose: v's effect is below {min_effect}")
    elif verdict:
        reasons.append("likely illusion: v's effect needs both parts — the patch moves the (dormant) row-space "
                       "component using the (disconnected) null-space component's variation across inputs")
    elif needs_both:
        reasons.append("v's effect needs both parts, but neither the disconnected nor the dormant signature is clear")
    else:
        reasons.append("not an illusion by this test: one part alone carries most of v's effect")
    return verdict, reasons
