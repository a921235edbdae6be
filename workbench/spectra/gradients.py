"""Spectrum of a linear map's gradient over one sample, exactly, from its per-token factors (no d × d SVD).

For y_t = W x_t (a bias-free Linear, W [m, n]) and a loss L summed or averaged over tokens, the weight gradient is
G = Σ_t δ_t x_tᵀ = Δᵀ X with δ_t = ∂L/∂y_t: Δ [T, m], X [T, n], so rank G <= T. With the reduced QR decompositions
Δᵀ = Q_δ R_δ and Xᵀ = Q_x R_x (Q orthonormal columns, R [r, T] with r = min(T, m) or min(T, n)),
G = Q_δ (R_δ R_xᵀ) Q_xᵀ, and the singular values of G are those of the small core C = R_δ R_xᵀ. This costs
O(T²(m + n) + T³) instead of the O(mn·min(m, n)) of a dense SVD of G; for T << d it is what makes long samples
affordable (MingLiiii/Gradient_Unified uses max_length 2048). Exact in exact arithmetic; computed in float64, it
agrees with the dense SVD of G to round-off (tested to 1e-6 relative). The Frobenius norm is ‖C‖_F = ‖G‖_F.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.errors import shape_error
from workbench.spectra.checks import check_finite
from workbench.spectra.metrics import effective_rank


@dataclass(frozen=True)
class GradientSpectrum:
    """Spectra of one or a batch ``[...]`` of gradients G = Δᵀ X: ``singular_values`` [..., r] descending (r =
    min(T, m, n)), ``nuclear`` Σσ, ``frobenius`` ‖G‖_F, ``erank`` exp(H(σ/Σσ)) (Roy & Vetterli, no ε; 0 for G = 0).
    All float64.

    Example: ``g: GradientSpectrum = gradient_spectrum(torch.randn(16, 64), torch.randn(16, 32)); g.nuclear, g.erank``"""

    singular_values: torch.Tensor
    nuclear: torch.Tensor
    frobenius: torch.Tensor
    erank: torch.Tensor


def _check(call: str, delta: object, x: object) -> None:
    for name, t in (("delta", delta), ("x", x)):
        if not isinstance(t, torch.Tensor) or t.ndim < 2 or not t.dtype.is_floating_point:
            got = f"{t.dtype} shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise shape_error(call, name, "a floating tensor of shape [..., T, d]", got)
        check_finite(call, name, t)
    if delta.shape[:-1] != x.shape[:-1] or delta.shape[-2] == 0:
        raise shape_error(call, "x", f"the same leading [..., T] as delta {tuple(delta.shape[:-1])}, T >= 1",
                          f"shape {tuple(x.shape)}")


def outer_sum_singular_values(delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Singular values ``[..., r]`` of G = Σ_t δ_t x_tᵀ = deltaᵀ x ([..., m, n]) from the factors ``delta``
    ``[..., T, m]`` and ``x`` ``[..., T, n]`` (module docstring), descending, float64, on the inputs' device;
    r = min(T, m, n).

    Example: ``outer_sum_singular_values(torch.randn(16, 64), torch.randn(16, 32))  # σ of deltaᵀ x, [16]``"""
    _check("outer_sum_singular_values", delta, x)
    return _core_svdvals(delta, x)[0]


def _core_svdvals(delta: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _svdvals_of_core(factor_r(delta), factor_r(x))


def factor_r(factor: torch.Tensor) -> torch.Tensor:
    """``[..., min(d, T), T]``: R of the reduced QR of ``factor``ᵀ (``factor`` ``[..., T, d]``, per-token rows), in
    float64 — one side of :func:`gradient_spectrum`'s core. Linear maps that read the same input (q/k/v projections)
    share it: compute it once and pass it as ``r_x``.

    Example: ``gradient_spectrum(delta_q, x, r_x=factor_r(x))  # reuse R of the shared input x``"""
    return torch.linalg.qr(factor.to(torch.float64).transpose(-1, -2), mode="r").R


def _svdvals_of_core(r_delta: torch.Tensor, r_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    core = r_delta @ r_x.transpose(-1, -2)
    return torch.linalg.svdvals(core), core


def gradient_spectrum(delta: torch.Tensor, x: torch.Tensor, *, r_x: torch.Tensor | None = None) -> GradientSpectrum:
    """Nuclear norm, Frobenius norm, effective rank and singular values of G = deltaᵀ x (one sample's weight gradient
    of a bias-free Linear: ``delta`` ``[..., T, m]`` the gradients of its outputs, ``x`` ``[..., T, n]`` its inputs,
    per token), from the T × T core.
    Batched over leading dimensions (e.g. every layer of one projection at once). ``r_x``: ``factor_r(x)`` when the
    caller already has it (maps sharing their input), else computed here.

    Example: ``gradient_spectrum(torch.randn(16, 64), torch.randn(16, 32)).erank``"""
    _check("gradient_spectrum", delta, x)
    s, core = _svdvals_of_core(factor_r(delta), factor_r(x) if r_x is None else r_x)
    return GradientSpectrum(singular_values=s, nuclear=s.sum(dim=-1),
                            frobenius=torch.linalg.matrix_norm(core), erank=effective_rank(s))
