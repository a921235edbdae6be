"""Scalar summaries of a singular-value spectrum: effective rank, RankMe, stable rank and friends.

Every function takes singular values ``s`` of shape [..., k] (a torch tensor or numpy array, in any order: nothing
assumes sorted input), reduces the last dimension and returns a tensor of shape [...] (0-d for 1-D input) on ``s``'s
device. They compute in ``s``'s floating dtype (integer and bool input in float64); :func:`numerical_rank` returns
int64.

Edge behaviour (tested). Results per row of the batch; an all-zero row inside a batch gets its values without
affecting the other rows:

=======================  ===============  ==========================
function                 all-zero row     s_min == 0 < s_max
=======================  ===============  ==========================
effective_rank           0                finite (zeros add nothing)
rankme                   0                finite
stable_rank              0                finite
nuclear_norm             0                finite
participation_ratio      0                finite
numerical_rank           0 (int64)        counts only s > tol
spectral_entropy         NaN (no p)       finite
condition_number         NaN (0/0)        inf
=======================  ===============  ==========================

Invalid input raises :class:`~workbench.errors.ShapeError` naming ``'s'``: a 0-d tensor, a last dimension of length 0,
NaN or Inf anywhere, a negative entry, a complex dtype. Bad keyword values (``eps``, ``tol`` < 0 or not finite,
``n_rows`` < 1) raise :class:`~workbench.errors.ConfigError` naming the keyword.
"""

from __future__ import annotations

import math

import torch

from workbench.errors import shape_error
from workbench.spectra.checks import as_tensor, check_finite, has_values
from workbench.validation import Int, check_number, check_optional

__all__ = [
    "condition_number",
    "effective_rank",
    "nuclear_norm",
    "numerical_rank",
    "participation_ratio",
    "rankme",
    "spectral_entropy",
    "stable_rank",
]


def _spectrum(call: str, s: object) -> torch.Tensor:
    """Validate ``s`` ([..., k], k >= 1, finite, non-negative, real) and cast integers to float64."""
    s = as_tensor(call, "s", s)
    if s.ndim == 0:
        raise shape_error(call, "s", "a tensor of singular values of shape [..., k] (ndim >= 1)", "a 0-d tensor")
    if s.shape[-1] == 0:
        raise shape_error(call, "s", "at least one value in the last dimension", f"shape {tuple(s.shape)}")
    if s.dtype.is_complex:
        raise shape_error(call, "s", "a real (floating, integer or bool) tensor", s.dtype)
    s = s if s.dtype.is_floating_point else s.to(torch.float64)
    check_finite(call, "s", s)
    if has_values(s) and bool((s < 0).any()):
        raise shape_error(call, "s", "non-negative (singular values)", f"min {float(s.min()):.6g}")
    return s


def _where_nonzero(total: torch.Tensor, value: torch.Tensor, fill: float) -> torch.Tensor:
    """``value`` where the spectrum has mass (total > 0), ``fill`` on all-zero rows (whose value is 0/0)."""
    return torch.where(total > 0, value, torch.full_like(value, fill))


def _entropy(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shannon entropy (nats) of p = s/‖s‖₁ with 0·log 0 = 0 (NaN on all-zero rows), and ‖s‖₁."""
    total = s.sum(dim=-1)
    p = s / total.unsqueeze(-1)
    return -torch.special.xlogy(p, p).sum(dim=-1), total


def spectral_entropy(s: torch.Tensor) -> torch.Tensor:
    """Shannon entropy H(p) in nats of p = s/‖s‖₁ (Roy & Vetterli 2007, eq. 2); exp(H) is :func:`effective_rank`.

    NaN for an all-zero spectrum, where p is undefined.

    Example: ``spectral_entropy(torch.tensor([1.0, 1.0, 1.0, 1.0]))  # log 4``"""
    h, total = _entropy(_spectrum("spectral_entropy", s))
    return _where_nonzero(total, h, math.nan)


def effective_rank(s: torch.Tensor, *, eps: float = 0.0) -> torch.Tensor:
    """Effective rank exp(−Σ p_k log p_k), p = s/‖s‖₁ (Roy & Vetterli 2007, eqs. 1-2), with 0·log 0 = 0.

    It is 1 for a rank-1 matrix, n for any matrix with n equal singular values, scale- and rotation-invariant.
    ``eps > 0`` reproduces VERL's reference numerics exactly: p = s/(Σs + eps), erank = exp(−Σ p·log(p + eps)); VERL
    uses eps=1e-8. An all-zero spectrum gives 0 for every eps (VERL's formula would give exp(0) = 1 there).

    Example: ``effective_rank(cap["blocks.10.hook_resid_post"].singular_values(center=True))``"""
    call = "effective_rank"
    eps = check_number(call, "eps", eps, low=0)
    s = _spectrum(call, s)
    if eps == 0.0:
        h, total = _entropy(s)
    else:
        total = s.sum(dim=-1)
        p = s / (total.unsqueeze(-1) + eps)
        h = -(p * torch.log(p + eps)).sum(dim=-1)
    return _where_nonzero(total, torch.exp(h), 0.0)


def rankme(s: torch.Tensor, *, eps: float = 1e-7) -> torch.Tensor:
    """RankMe = exp(−Σ p_k log p_k) with p_k = s_k/‖s‖₁ + eps (Garrido et al. 2023, "RankMe", eq. 1).

    The eps shifts the value slightly above the effective rank (RankMe(I_100) = 100.0036 with eps=1e-7). An all-zero
    spectrum gives 0.

    Example: ``rankme(torch.ones(100))  # 100.0036``"""
    call = "rankme"
    eps = check_number(call, "eps", eps, low=0)
    s = _spectrum(call, s)
    total = s.sum(dim=-1)
    p = s / total.unsqueeze(-1) + eps
    return _where_nonzero(total, torch.exp(-torch.special.xlogy(p, p).sum(dim=-1)), 0.0)


def stable_rank(s: torch.Tensor) -> torch.Tensor:
    """Stable rank ‖A‖_F²/‖A‖₂² = Σ s²/s_max² (Rudelson & Vershynin 2007): a rank that small values cannot inflate.

    Computed as Σ (s/s_max)² so it cannot overflow; 0 for an all-zero spectrum.

    Example: ``stable_rank(torch.linalg.svdvals(lm.weight("W_Q", 3)))``"""
    s = _spectrum("stable_rank", s)
    smax = s.amax(dim=-1)
    r = s / smax.unsqueeze(-1)
    return _where_nonzero(smax, (r * r).sum(dim=-1), 0.0)


def nuclear_norm(s: torch.Tensor) -> torch.Tensor:
    """Nuclear (trace) norm ‖A‖_* = Σ s_k.

    Example: ``nuclear_norm(torch.linalg.svdvals(torch.randn(8, 4)))``"""
    return _spectrum("nuclear_norm", s).sum(dim=-1)


def participation_ratio(s: torch.Tensor) -> torch.Tensor:
    """Participation ratio (Σλ)²/Σλ² of the eigenvalues λ = s² of XᵀX (Gao et al. 2017, "A theory of multineuronal
    dimensionality, dynamics and measurement"): the dimensionality of the covariance spectrum when X is centred.

    Computed on λ/λ_max (it is scale-invariant) so it cannot overflow; 0 for an all-zero spectrum.

    Example: ``participation_ratio(singular_values(torch.randn(500, 64), center=True))``"""
    s = _spectrum("participation_ratio", s)
    smax = s.amax(dim=-1)
    r = s / smax.unsqueeze(-1)
    lam = r * r
    return _where_nonzero(smax, lam.sum(dim=-1) ** 2 / (lam * lam).sum(dim=-1), 0.0)


def numerical_rank(s: torch.Tensor, *, tol: float | None = None, n_rows: int | None = None) -> torch.Tensor:
    """Number of singular values above ``tol`` (int64), the ``numpy.linalg.matrix_rank`` convention.

    Default tol = s_max · max(k, n_rows) · eps(dtype of s) (Press et al., *Numerical Recipes*, 2nd ed., §2.6; numpy's
    default): pass ``n_rows = max(M, N)`` of the decomposed matrix to match numpy exactly, since k = min(M, N).
    Use the eps of the dtype the SVD ran in, i.e. pass ``s`` in that dtype. An all-zero spectrum has rank 0.

    Example: ``numerical_rank(torch.linalg.svdvals(x), n_rows=max(x.shape))  # == numpy.linalg.matrix_rank(x)``"""
    call = "numerical_rank"
    if tol is not None:
        tol = check_number(call, "tol", tol, low=0)
    check_optional(call, "n_rows", n_rows, Int(low=1, allowed_text="an int >= 1 (max(M, N) of the decomposed matrix)"))
    s = _spectrum(call, s)
    k = s.shape[-1]
    if tol is None:
        threshold = s.amax(dim=-1, keepdim=True) * (max(k, n_rows or k) * torch.finfo(s.dtype).eps)
    else:
        threshold = torch.tensor(tol, dtype=s.dtype, device=s.device)
    return (s > threshold).sum(dim=-1, dtype=torch.int64)


def condition_number(s: torch.Tensor) -> torch.Tensor:
    """Condition number κ = s_max/s_min (2-norm); inf when s_min == 0 < s_max, NaN for an all-zero spectrum (0/0).

    Example: ``condition_number(torch.tensor([10.0, 2.0, 0.5]))  # 20.0``"""
    s = _spectrum("condition_number", s)
    return s.amax(dim=-1) / s.amin(dim=-1)
