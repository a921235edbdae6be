"""Truncate the real model and measure: at each verification budget, whitened truncation at the ranks the budget
allows, and plain truncation at the same total size; held-out perplexity and top-1 agreement with the unmodified
model. Weights are replaced through :class:`~workbench.intervene.low_rank_edit.ReplacementHandle` and restored bit for
bit after each measurement.

Parameter accounting: a matrix truncated to rank r costs r·(d_in + d_out) numbers (its two factors); when that is not
less than d_in·d_out the dense matrix is kept (error 0 for that matrix) — a factorisation that saves nothing is not
made. The model's fraction is the sum of these costs over the analysed matrices divided by their dense size.
"""

from __future__ import annotations

import math

import torch

from workbench.intervene.low_rank_edit import LowRankReplacement, ReplacementHandle
from workbench.intervene.readout import token_predictions
from workbench.progress import bar
from workbench.spectra.low_rank import truncate

METHODS = ("whitened", "plain")
_BISECTIONS = 50


def cost(rank: int, shape: tuple[int, int]) -> int:
    """Numbers stored for a matrix of ``shape`` truncated to ``rank`` (dense when factoring saves nothing).

    Example: ``cost(64, (576, 1536))  # 135168 = 64 * (576 + 1536)``"""
    d_in, d_out = shape
    return min(rank * (d_in + d_out), d_in * d_out)


def ranks_at(spectra: dict, method: str, budget: float) -> dict:
    """Per matrix: the smallest rank whose predicted relative error is at most ``budget`` (``method``'s curve).

    Example: ``ranks_at(spectra, "whitened", 0.05)[("W_in", 3)]``"""
    out = {}
    for m, s in spectra.items():
        curve = s[method]
        out[m] = int((curve > budget).sum())  # curves are non-increasing in r: the first r at or under the budget
    return out


def _total(ranks: dict, spectra: dict) -> int:
    return sum(cost(r, spectra[m]["shape"]) for m, r in ranks.items())


def plain_ranks_of_size(spectra: dict, target: int) -> tuple[dict, float]:
    """Plain truncation's own ranks (each matrix at one common budget ε') with the total cost closest to ``target``
    from below (bisection on ε'); returns the ranks and ε'.

    Example: ``ranks, eps = plain_ranks_of_size(spectra, 50_000_000)``"""
    low, high = 0.0, 1.0  # cost is non-increasing in the budget: cost(low) >= target >= cost(high)
    for _ in range(_BISECTIONS):
        mid = (low + high) / 2
        if _total(ranks_at(spectra, "plain", mid), spectra) > target:
            low = mid
        else:
            high = mid
    return ranks_at(spectra, "plain", high), high


def _replacements(method: str, ranks: dict, spectra: dict, factors: dict) -> list[LowRankReplacement]:
    out = []
    for m, r in ranks.items():
        shape = spectra[m]["shape"]
        if cost(r, shape) >= shape[0] * shape[1]:
            continue  # kept dense
        left, right = factors[m]
        out.append(LowRankReplacement(m[0], m[1], left[:, :r], right[:r], method=method))
    return out


def _predicted(method: str, ranks: dict, spectra: dict) -> tuple[float, float]:
    errors = [0.0 if cost(r, spectra[m]["shape"]) >= math.prod(spectra[m]["shape"]) else float(spectra[m][method][r])
              for m, r in ranks.items()]
    return math.sqrt(sum(e * e for e in errors) / len(errors)), max(errors)


def _full_factors(method, matrices, spectra, weights, whitening, sites, floor, progress) -> dict:
    """Full-rank factors ``(W V, Vᵀ)`` of every matrix (float32, CPU), batched per shape: any rank's truncation is
    their leading slice. The site's whitening factor is reused unless a ``floor`` asks for another."""
    by_shape: dict[tuple[int, int], list] = {}
    for m in matrices:
        by_shape.setdefault(spectra[m]["shape"], []).append(m)
    out = {}
    for shape, group in bar(list(by_shape.items()), desc=f"Factorising ({method})", disable=not progress):
        w = torch.stack([weights[m] for m in group])
        c = torch.stack([whitening[sites[m]][0] for m in group])
        if method == "plain":
            left, right = truncate(w, c, min(shape), "plain")
        elif floor > 0:
            left, right = truncate(w, c, min(shape), "whitened", floor=floor)
        else:
            f = torch.stack([whitening[sites[m]][1] for m in group])
            left, right = truncate(w, c, min(shape), "whitened", factor=f)
        out |= {m: (left[i].float().cpu(), right[i].float().cpu()) for i, m in enumerate(group)}
    return out


def verify(lm, matrices, spectra, weights, whitening, sites, held_out, config, progress: bool) -> dict:
    """Measure every verification budget, both methods; ``{"base_ppl", "rows"}`` (rows: one per budget and method).
    ``whitening``: site -> (C, F) as computed for the spectra.

    Example: ``verify(lm, matrices, spectra, weights, whitening, sites, held_out, LowRankConfig(), progress=False)``"""
    if not config.verify_budgets:
        return {"base_ppl": None, "rows": [], "n_tokens": 0}
    base_nll, base_top = token_predictions(lm, held_out, max_length=config.max_length, batch_size=config.batch_size)
    dense = sum(math.prod(spectra[m]["shape"]) for m in matrices)
    plans = []
    for budget in sorted(config.verify_budgets):
        white = ranks_at(spectra, "whitened", budget)
        plain, plain_budget = plain_ranks_of_size(spectra, _total(white, spectra))
        plans += [(budget, "whitened", white, budget), (budget, "plain", plain, plain_budget)]
    rows = []
    for method in METHODS:
        factors = _full_factors(method, matrices, spectra, weights, whitening, sites, config.floor, progress)
        for budget, plan_method, ranks, own_budget in plans:
            if plan_method != method:
                continue
            with ReplacementHandle(lm, _replacements(method, ranks, spectra, factors)) as handle:
                nll, top = token_predictions(lm, held_out, max_length=config.max_length, batch_size=config.batch_size)
            rms, worst = _predicted(method, ranks, spectra)
            rows.append({"budget": budget, "method": method, "method_budget": own_budget,
                         "fraction": _total(ranks, spectra) / dense, "replaced": len(handle.edits),
                         "predicted_rms": rms, "predicted_max": worst, "ppl": math.exp(float(nll.mean())),
                         "ppl_ratio": math.exp(float(nll.mean() - base_nll.mean())),
                         "agreement": float((top == base_top).double().mean())})
        del factors
    rows.sort(key=lambda r: (r["budget"], METHODS.index(r["method"])))
    return {"base_ppl": math.exp(float(base_nll.mean())), "rows": rows, "n_tokens": int(base_nll.numel())}
