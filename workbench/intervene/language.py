"""The formulas of language-neuron steering ("Neural FOXP2", reference code PhotonTJ/NeuralFoxP2; shared/PAPERS.md (e)).

Stage I, localise: selectivity Sel_j = (μ_tgt − μ_en)/(σ_tgt + σ_en + 1e-6) per unit; causal lift = median over α of
ΔM(α)/α. Stage II, subspace: for ΔZ = z_tgt − z_en over pairs restricted to the language neurons, rank
r = min(⌈erank(σ)⌉, 12, argmax_i σ_i/σ_{i+1}); layer score = top-r spectral mass × bootstrap stability; window = the
contiguous run of 3–6 layers with the largest summed score. Stage III, steer: Δz = λ·μ_tgt − β·⟨z, μ̂_en⟩μ̂_en on the
language neurons only. Pure tensor functions; the analysis that runs them on a model is built on top.
"""

from __future__ import annotations

import math

import torch

from workbench.errors import config_error, shape_error
from workbench.spectra import effective_rank

SELECTIVITY_EPS = 1e-6


def selectivity(z_tgt: torch.Tensor, z_en: torch.Tensor, *, ddof: int = 0) -> torch.Tensor:
    """``[F]`` Sel_j = (μ_tgt − μ_en)/(σ_tgt + σ_en + 1e-6) over rows of ``[N_tgt, F]`` and ``[N_en, F]``.

    ``ddof``: 0 (population standard deviation, numpy's default, as the reference's numpy code) or 1."""
    if z_tgt.ndim != 2 or z_en.ndim != 2 or z_tgt.shape[1] != z_en.shape[1]:
        raise shape_error("selectivity", "z_en", f"[N, {z_tgt.shape[-1]}] like z_tgt", tuple(z_en.shape))
    if min(z_tgt.shape[0], z_en.shape[0]) <= ddof:
        raise shape_error("selectivity", "z_tgt", f"more than ddof={ddof} rows per language",
                          (z_tgt.shape[0], z_en.shape[0]))
    mu_t, mu_e = z_tgt.double().mean(0), z_en.double().mean(0)
    sd_t, sd_e = z_tgt.double().std(0, correction=ddof), z_en.double().std(0, correction=ddof)
    return (mu_t - mu_e) / (sd_t + sd_e + SELECTIVITY_EPS)


def causal_lift(delta_m: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """Lift = median over α of ΔM(α)/α; ``delta_m`` ``[..., A]`` (mean change of M per α), ``alphas`` ``[A]``.

    torch's median of an even count is the lower middle value; the reference's numpy median averages the two middle
    values: this follows numpy."""
    if delta_m.shape[-1] != alphas.shape[0] or bool((alphas == 0).any()):
        raise config_error("causal_lift", "alphas", f"{delta_m.shape[-1]} non-zero values", alphas.tolist())
    return torch.quantile((delta_m.double() / alphas.double()), 0.5, dim=-1)


def steering_rank(s: torch.Tensor, *, cap: int = 12, energy: bool = False, rtol: float = 1e-12) -> int:
    """r = min(⌈erank⌉, cap, argmax_i σ_i/σ_{i+1}) for descending singular values ``s`` (i counted from 1).

    ``energy=False``: Roy–Vetterli effective rank on σ (the project's definition); the reference computes it on the
    energies σ² (``energy=True``: for σ = [2, 1], 1.649 instead of 1.890). Values below ``rtol·σ_1`` count as zero
    (a gap into zeros is infinite and wins)."""
    s = s.double()
    if s.ndim != 1 or s.numel() == 0 or not bool((s[:-1] >= s[1:]).all()) or bool((s < 0).any()):
        raise config_error("steering_rank", "s", "descending non-negative singular values", s.tolist())
    if float(s[0]) == 0.0:
        return 0
    er = float(effective_rank(s * s if energy else s))
    kept = s[s > rtol * s[0]]
    if kept.numel() < s.numel():
        gap = kept.numel()  # the gap into the zero values
    elif s.numel() == 1:
        gap = 1
    else:
        gap = int(torch.argmax(s[:-1] / s[1:])) + 1
    return max(1, min(math.ceil(er - 1e-9), cap, gap))


def top_mass(s: torch.Tensor, r: int) -> float:
    """Σ_{i≤r} σ_i² / Σ σ_i²: the share of ΔZ's energy in the top-r directions."""
    e = s.double() ** 2
    total = float(e.sum())
    return float(e[:r].sum()) / total if total > 0 else 0.0


def subspace_stability(delta: torch.Tensor, r: int, *, resamples: int = 20, seed: int = 0) -> float:
    """Median over pairs of bootstrap resamples (rows of ``delta`` ``[N, d]`` drawn with replacement) of
    tr(P_i P_j)/r, P = the projector onto the top-r right singular vectors. 1 = the same subspace every time.
    (The reference divides by min(d, 10); the issue's definition, /r, is used so that 1 means identical.)"""
    if r < 1:
        return 0.0
    n = delta.shape[0]
    if r > min(delta.shape):
        raise config_error("subspace_stability", "r", f"at most min(N, d) = {min(delta.shape)}", r)
    gen = torch.Generator().manual_seed(seed)
    bases = []
    for _ in range(resamples):
        rows = torch.randint(n, (n,), generator=gen)
        _, _, vh = torch.linalg.svd(delta[rows].double(), full_matrices=False)
        bases.append(vh[:r].T)  # [d, r]
    overlaps = [float(((bases[i].T @ bases[j]) ** 2).sum()) / r
                for i in range(resamples) for j in range(i + 1, resamples)]
    return float(torch.tensor(overlaps).median()) if overlaps else 1.0


def best_window(scores: list[float], *, min_len: int = 3, max_len: int = 6) -> tuple[int, int]:
    """``(first, last)`` layer (inclusive) of the contiguous run of ``min_len``..``max_len`` layers with the largest
    summed score (ties: the earlier, then the shorter). With non-negative scores the longest runs tend to win, as
    in the reference."""
    n = len(scores)
    if not 1 <= min_len <= max_len:
        raise config_error("best_window", "min_len", f"1 <= min_len <= max_len={max_len}", min_len)
    if n < min_len:
        raise config_error("best_window", "scores", f"at least min_len={min_len} layers", n)
    best, where = -math.inf, (0, min_len - 1)
    for start in range(n - min_len + 1):  # earlier first, then shorter: a strict improvement is needed to move
        for length in range(min_len, min(max_len, n - start) + 1):
            total = sum(scores[start:start + length])
            if total > best + 1e-12:
                best, where = total, (start, start + length - 1)
    return where


def sparse_shift(z: torch.Tensor, mu_tgt: torch.Tensor, mu_en: torch.Tensor, mask: torch.Tensor, *, lam: float,
                 beta: float) -> torch.Tensor:
    """Δz = λ·μ_tgt − β·⟨z, μ̂_en⟩μ̂_en, restricted to the units in ``mask`` (``[d]`` bool), zero elsewhere.

    μ̂_en is μ_en restricted to the mask and normalised, so β = 1 removes z's component along the English mean there."""
    d = z.shape[-1]
    if mu_tgt.shape != (d,) or mu_en.shape != (d,) or mask.shape != (d,):
        raise shape_error("sparse_shift", "mu_tgt", f"[{d}] vectors and mask", (tuple(mu_tgt.shape),
                                                                                tuple(mu_en.shape), tuple(mask.shape)))
    if not bool(mask.any()):
        raise config_error("sparse_shift", "mask", "at least one language neuron", "an empty set")
    m = mask.to(z.dtype)
    tgt = mu_tgt.to(z.dtype) * m
    en = mu_en.to(z.dtype) * m
    norm = en.norm()
    en_hat = en / norm if float(norm) > 0 else en
    return lam * tgt - beta * (z * m @ en_hat)[..., None] * en_hat
