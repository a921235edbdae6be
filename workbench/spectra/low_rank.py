"""Activation-aware low-rank truncation: the output error of every rank at once, exactly, from spectra.

Setting (TransformerLens orientation ``y = x @ W``, ``W`` is ``[d_in, d_out]``). With the uncentred input second
moment ``C = E[x xᵀ]`` (``[d_in, d_in]``, PSD, possibly rank-deficient), replacing ``W`` by ``W_r`` changes the output
by ``E‖x (W − W_r)‖² = tr((W − W_r)ᵀ C (W − W_r)) = ‖F (W − W_r)‖_F²`` for any factor ``F`` with ``FᵀF = C`` (here
``F = Λ^{1/2} Qᵀ`` from ``C = Q Λ Qᵀ``). Two ways to pick ``W_r``, both as a projection of W's outputs:

* ``"plain"``: the SVD truncation of W itself, ``W = U S Vᵀ``, ``W_r = U_r S_r V_rᵀ = W V_r V_rᵀ``. Its error is
  ``Σ_{i>r} s_i² · u_iᵀ C u_i`` (exact: the ``v_i`` are orthonormal, so the cross terms vanish).
* ``"whitened"``: SVD-LLM's truncation-aware data whitening (Wang et al., ICLR 2025, arXiv:2403.07378; EoRA's
  eigenspace projection does the same): the SVD of the whitened weight ``F W = P Σ Vᵀ``, keep its top ``r``. Its
  error is ``Σ_{i>r} σ_i²``, the smallest of any rank-r matrix (Eckart–Young on ``F W``).

Relative errors are ``error(r) / ‖F W‖_F`` for ``r = 0..k``, ``k = min(d_in, d_out)``: 1 at r = 0, 0 at r = k.

The reference, AIoT-MLSys-Lab/SVD-LLM (commit 1c1009a), ``SVDLLM.py`` (HF orientation: ``nn.Linear.weight`` is
``[out, in]``, ``y = x Wᵀ``):

* ``profle_svdllm`` sums ``XᵀX`` over the calibration tokens of each linear layer's input (the raw sum, not divided
  by the count), casts it to float64 and takes its Cholesky factor ``S`` (``XᵀX = S Sᵀ``). If the Cholesky fails
  (``XᵀX`` not numerically positive definite) it shifts the whole spectrum, ``XᵀX += (−λ_min + 1e-6)·I`` (an
  absolute 1e-6), and factors again.
* ``whitening`` inverts ``S`` (on failure it adds ``1e-6·I`` to ``S`` itself), takes ``U, Σ, Vᵀ = svd(W S)``, keeps
  ``r = int(d_out·d_in·ratio / (d_out + d_in))`` values and stores ``U_r Σ_r^{1/2}`` and ``Σ_r^{1/2} V_rᵀ S⁻¹``, so
  ``W' = U_r Σ_r V_rᵀ S⁻¹``.

What this module does differently, and why (the same ``W_r`` wherever the reference's ``C`` is positive definite;
tests/workbench/spectra/test_low_rank.py transcribes the reference and checks it to 1e-8):

* Precision: float64 throughout (the reference casts ``S`` and ``S⁻¹`` back to float32 for the SVD and products).
* Orientation: TransformerLens ``W = W_hfᵀ`` and ``C = XᵀX / n``; the reference's ``W S`` is our ``(Sᵀ W)ᵀ``.
* Square root: ``F = Λ^{1/2} Qᵀ`` from a symmetric eigendecomposition instead of Cholesky. Any ``F`` with
  ``FᵀF = C`` gives the same objective, hence the same optimum; ``eigh`` also works when ``C`` is singular, where
  Cholesky fails. The scale of ``C`` (sum vs mean) changes nothing.
* No inverse. ``U_r Σ_r V_rᵀ S⁻¹ = U_r U_rᵀ W`` (reference orientation): the truncation only projects the outputs
  onto the top-r left singular vectors of ``W S``. We form ``W_r = W V_r V_rᵀ`` (our orientation), never ``S⁻¹``, so
  nothing is amplified by an ill-conditioned ``S`` and a rank-deficient ``C`` needs no floor at all: ``W_r`` is
  exactly optimal on ``C`` and finite.
* Floor: optional (``floor`` of :func:`truncate`, default 0) and relative to ``λ_max`` (eigenvalues below
  ``floor·λ_max`` are raised to it, the others kept) instead of an absolute 1e-6 shift of every eigenvalue, because
  activation scales differ by orders of magnitude between sites and the reference's ``C`` is an unnormalised sum.
* Rounding: eigenvalues of ``C`` below ``d_in · eps · λ_max`` (eps of ``C``'s input dtype) are indistinguishable from
  zero (the floor of :func:`~workbench.spectra.svd.singular_values_from_gram`) and are set to 0, so a rank-deficient
  ``C`` gives errors that are exactly 0 past its rank rather than ``sqrt(eps)``-sized noise.
* Errors from singular values of ``F W`` (and column norms of ``F U``), not from eigenvalues of ``Wᵀ C W``: the Gram
  route squares the condition number and leaves ``~sqrt(d·eps)·‖F W‖`` of noise in the errors near full rank.

Directions ``C`` never excites (its null space N; fewer calibration tokens than ``d_in``, or dead features). They
cost nothing in the errors. ``W_r = W V_r V_rᵀ`` maps an input ``x`` in N to ``x W V_r V_rᵀ``: W's own output,
projected onto the r output directions kept for the calibration data (the pseudo-inverse solution
``C^{+1/2} P_r Σ_r V_rᵀ`` would map it to 0). That is also the limit of the reference's floored ``S⁻¹`` as its floor
goes to 0. Nothing in the calibration data tells which output directions such inputs need, so their error is not
controlled: an input outside the calibration distribution can lose whatever part of ``x W`` lies outside the kept
subspace. ``floor > 0`` weights N by ``floor·λ_max`` when choosing the subspace (``floor = 1`` is plain truncation),
trading calibration error for fidelity there.

Everything computes in float64 on the inputs' device, batched over leading dimensions with batched ``torch.linalg``
calls (``eigh`` of C, ``svd`` of W, ``svdvals``/``svd`` of ``F W``); results are float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.errors import config_error, shape_error
from workbench.spectra.checks import as_tensor, check_finite, has_values
from workbench.validation import check_choice, check_int, check_number

__all__ = [
    "METHODS",
    "TruncationErrors",
    "parameter_fraction",
    "rank_for_budget",
    "second_moment",
    "truncate",
    "truncation_errors",
    "whitening_factor",
]

METHODS = ("plain", "whitened")
# A moment whose most negative eigenvalue is below −max(this, sqrt(eps))·λ_max is not a second moment. Streamed
# moments are PSD only to rounding: capture's float32 fast path keeps eigenvalues within 1e-6·λ_max (Moments).
_NEGATIVE_TOLERANCE = 1e-5


# ---------------------------------------------------------------------------------------------------------------------
# inputs


def _real64(call: str, name: str, x: object) -> tuple[torch.Tensor, torch.dtype]:
    """``x`` as a float64 tensor, with the dtype it came in (its eps sets the rounding floors); complex is refused."""
    x = as_tensor(call, name, x)
    if x.dtype.is_complex:
        raise shape_error(call, name, "a real (floating, integer or bool) tensor", x.dtype)
    source = x.dtype if x.dtype.is_floating_point else torch.float64
    x = x.to(torch.float64)
    check_finite(call, name, x)
    return x, source


def _matrix(call: str, name: str, x: torch.Tensor) -> None:
    if x.ndim < 2 or x.shape[-2] == 0 or x.shape[-1] == 0:
        raise shape_error(call, name, "a tensor [..., rows, cols] with ndim >= 2 and no empty side",
                          f"shape {tuple(x.shape)}")


def _pair(call: str, weights: object, moments: object, wname: str, mname: str
          ) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:
    """Validated float64 ``(W [..., d_in, d_out], C [..., d_in, d_in] symmetrised, C's source dtype)``."""
    w, _ = _real64(call, wname, weights)
    c, source = _real64(call, mname, moments)
    _matrix(call, wname, w)
    _matrix(call, mname, c)
    if c.shape[-1] != c.shape[-2] or c.shape[-1] != w.shape[-2] or c.shape[:-2] != w.shape[:-2]:
        raise shape_error(call, mname, f"of shape {(*w.shape[:-2], w.shape[-2], w.shape[-2])} (square, d_in of "
                          f"{wname} {tuple(w.shape)}, same leading dims)", f"shape {tuple(c.shape)}")
    if c.device != w.device:
        raise shape_error(call, mname, f"on the device of {wname} ({w.device})", str(c.device))
    if has_values(c):
        scale = float(c.abs().max())
        asym = float((c - c.mT).abs().max())
        if asym > torch.finfo(source).eps ** 0.5 * scale:
            raise shape_error(call, mname, "symmetric (a second moment)", f"max |C − Cᵀ| = {asym:.3g} of max |C| "
                              f"{scale:.3g}")
    return w, (c + c.mT) / 2, source


def _factor(call: str, name: str, c: torch.Tensor, source: torch.dtype, floor: float = 0.0) -> torch.Tensor:
    """``F = Λ^{1/2} Qᵀ`` [..., d, d] with ``FᵀF = C``: eigenvalues below the rounding floor ``d·eps·λ_max`` set to 0,
    then raised to ``floor·λ_max``; a clearly negative eigenvalue (not PSD) raises ShapeError."""
    lam, q = torch.linalg.eigh(c)
    lam_max = lam[..., -1:].clamp(min=0)
    eps = torch.finfo(source).eps
    if has_values(lam):
        worst = float((lam[..., :1] / lam_max.clamp(min=torch.finfo(torch.float64).tiny)).min())
        if worst < -max(_NEGATIVE_TOLERANCE, eps ** 0.5):
            raise shape_error(call, name, "positive semi-definite (a second moment E[x xᵀ])",
                              f"an eigenvalue of {worst:.3g} · λ_max")
    lam = torch.where(lam > c.shape[-1] * eps * lam_max, lam, torch.zeros_like(lam))
    if floor > 0:
        lam = torch.maximum(lam, floor * lam_max)
    return lam.sqrt().unsqueeze(-1) * q.mT


def _relative(terms: torch.Tensor) -> torch.Tensor:
    """Relative errors sqrt(Σ_{i>=r} t_i / Σ t_i) for r = 0..k from non-negative terms [..., k]; all-zero rows give 0.

    Summed from the smallest end (reverse cumsum), so each tail carries only its own rounding."""
    tail = torch.cat([terms.flip(-1).cumsum(-1).flip(-1), torch.zeros_like(terms[..., :1])], dim=-1)
    total = tail[..., :1]
    ratio = tail / torch.where(total > 0, total, torch.ones_like(total))
    return ratio.clamp(0, 1).sqrt()


# ---------------------------------------------------------------------------------------------------------------------
# public API


def second_moment(mean: torch.Tensor, comoment: torch.Tensor, n: int) -> torch.Tensor:
    """The uncentred second moment ``E[x xᵀ] = comoment / n + mean meanᵀ`` [..., d, d] in float64, from what
    :class:`~workbench.capture.accumulators.Moments` streams (``mean`` [..., d], the centred co-moment
    ``Σ (x − x̄)(x − x̄)ᵀ`` [..., d, d] and the row count ``n``). Uncentred because a linear layer sees the mean too.

    Example: ``C = second_moment(mean=m.mean, comoment=m.comoment, n=m.n)``"""
    call = "second_moment"
    n = check_int(call, "n", n, low=1)
    mu, _ = _real64(call, "mean", mean)
    m, _ = _real64(call, "comoment", comoment)
    if mu.ndim < 1 or m.ndim != mu.ndim + 1 or m.shape[:-1] != mu.shape or m.shape[-1] != mu.shape[-1]:
        raise shape_error(call, "comoment", f"of shape [..., d, d] matching mean {tuple(mu.shape)}",
                          f"shape {tuple(m.shape)}")
    if m.device != mu.device:
        raise shape_error(call, "comoment", f"on the device of mean ({mu.device})", str(m.device))
    return m / n + mu.unsqueeze(-1) * mu.unsqueeze(-2)


@dataclass(frozen=True)
class TruncationErrors:
    """Relative output errors of rank-r truncations for r = 0..k (k = min(d_in, d_out)), float64.

    ``plain`` [..., k+1]: SVD truncation of W; ``whitened`` [..., k+1]: SVD-LLM's whitened truncation (optimal, never
    above ``plain``); ``total`` [...]: ``‖C^{1/2} W‖_F = sqrt(E‖x W‖²)``, the scale the errors are relative to. A
    matrix with ``total == 0`` (W zero on everything C excites) has errors 0 at every rank.

    Example: ``TruncationErrors(plain=torch.ones(1, 2), whitened=torch.ones(1, 2), total=torch.ones(1))``"""

    plain: torch.Tensor
    whitened: torch.Tensor
    total: torch.Tensor


def whitening_factor(moment: torch.Tensor, *, floor: float = 0.0) -> torch.Tensor:
    """``F`` [..., d, d] float64 with ``FᵀF = C`` for a second moment ``moment`` [..., d, d]: ``Λ^{1/2} Qᵀ`` from C's
    eigendecomposition, eigenvalues below ``d·eps·λ_max`` set to 0 and those below ``floor·λ_max`` raised to it (see
    :func:`truncate`). Compute it once per site and pass it as ``factor=`` to :func:`truncation_errors` and
    :func:`truncate` for every matrix reading that site (W_Q, W_K and W_V share an input): the ``eigh`` is most of
    their cost. Rows of F that are zero mark directions C never excites, so its numerical rank is the count of the
    non-zero rows.

    Example: ``F = whitening_factor(moment=C); truncation_errors(weights=W, moments=C, factor=F)``"""
    call = "whitening_factor"
    floor = check_number(call, "floor", floor, low=0, high=1)
    c, source = _real64(call, "moment", moment)
    _matrix(call, "moment", c)
    if c.shape[-1] != c.shape[-2]:
        raise shape_error(call, "moment", "square [..., d, d]", f"shape {tuple(c.shape)}")
    return _factor(call, "moment", (c + c.mT) / 2, source, floor)


def _given_factor(call: str, factor: object, c: torch.Tensor) -> torch.Tensor:
    f, _ = _real64(call, "factor", factor)
    if f.shape != c.shape or f.device != c.device:
        raise shape_error(call, "factor", f"whitening_factor(moment) of shape {tuple(c.shape)} on {c.device}",
                          f"shape {tuple(f.shape)} on {f.device}")
    return f


def truncation_errors(weights: torch.Tensor, moments: torch.Tensor, *,
                      factor: torch.Tensor | None = None) -> TruncationErrors:
    """Relative output errors ``‖C^{1/2}(W − W_r)‖_F / ‖C^{1/2} W‖_F`` of plain and whitened truncation for every rank
    r = 0..min(d_in, d_out) at once, exactly from spectra (no truncated matrix is formed).

    ``weights`` [..., d_in, d_out] (TransformerLens orientation, ``y = x @ W``), ``moments`` [..., d_in, d_in] the
    uncentred input second moments (:func:`second_moment`), same leading dims (no broadcasting: ``expand`` a moment
    shared by several weights). Plain: ``Σ_{i>r} s_i² ‖F u_i‖²`` from ``W = U S Vᵀ``; whitened: ``Σ_{i>r} σ_i²``
    from the singular values of ``F W`` (AIoT-MLSys-Lab/SVD-LLM, ``SVDLLM.py``, ``profle_svdllm`` + ``whitening``;
    see the module docstring for the differences). A rank-deficient C is exact: directions it never excites add 0.
    Costs one batched ``eigh`` of C (skipped when ``factor`` = :func:`whitening_factor` of ``moments`` is given),
    ``svd`` of W and ``svdvals`` of ``F W``; float64 on the inputs' device.

    Example: ``errs = truncation_errors(weights=torch.randn(3, 64, 32), moments=torch.eye(64).expand(3, 64, 64))``"""
    call = "truncation_errors"
    w, c, source = _pair(call, weights, moments, "weights", "moments")
    f = _factor(call, "moments", c, source) if factor is None else _given_factor(call, factor, c)
    u, s, _ = torch.linalg.svd(w, full_matrices=False)
    fw = f @ w
    plain = s.square() * (f @ u).square().sum(-2)
    whitened = torch.linalg.svdvals(fw).square()
    total = torch.linalg.matrix_norm(fw)
    return TruncationErrors(plain=_relative(plain), whitened=_relative(whitened), total=total)


def rank_for_budget(errors: torch.Tensor, budget: float) -> torch.Tensor:
    """The smallest rank r with ``errors[..., r] <= budget`` -> [...] int64, for relative errors [..., k+1] indexed by
    rank (a field of :class:`TruncationErrors`; they are non-increasing, so every larger rank meets the budget too).

    Example: ``rank_for_budget(errors=truncation_errors(W, C).whitened, budget=0.05)``"""
    call = "rank_for_budget"
    budget = check_number(call, "budget", budget, low=0, high=1)
    e, _ = _real64(call, "errors", errors)
    if e.ndim < 1 or e.shape[-1] == 0:
        raise shape_error(call, "errors", "a tensor [..., k+1] of relative errors by rank", f"shape {tuple(e.shape)}")
    ok = e <= budget
    if has_values(e) and not bool(ok.any(-1).all()):
        raise config_error(call, "budget", f"reached by every row (the largest last error is {float(e[..., -1].max())})",
                           budget)
    return ok.to(torch.int8).argmax(-1)  # the first True


def parameter_fraction(rank: int, d_in: int, d_out: int) -> float:
    """Storage of the factors ``[d_in, r] + [r, d_out]`` relative to the dense ``[d_in, d_out]``:
    ``r·(d_in + d_out) / (d_in·d_out)``. SVD-LLM (``SVDLLM.py``, ``whitening``) keeps ``int(d_in·d_out·ratio /
    (d_in + d_out))`` values for a ``ratio``: the largest r with ``parameter_fraction(r, d_in, d_out) <= ratio``.

    Example: ``parameter_fraction(rank=64, d_in=576, d_out=1536)  # 0.153``"""
    call = "parameter_fraction"
    d_in = check_int(call, "d_in", d_in, low=1)
    d_out = check_int(call, "d_out", d_out, low=1)
    rank = check_int(call, "rank", rank, low=0, high=min(d_in, d_out))
    return rank * (d_in + d_out) / (d_in * d_out)


def truncate(weight: torch.Tensor, moment: torch.Tensor, rank: int, method: str = "whitened", *,
             floor: float = 0.0, factor: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-``rank`` factors ``(left [..., d_in, r], right [..., r, d_out])``, float64, with ``W_r = left @ right``
    achieving exactly the error :func:`truncation_errors` predicts for ``method`` (``"plain"`` or ``"whitened"``).

    Both are ``W_r = W V_r V_rᵀ``: ``left = W V_r``, ``right = V_rᵀ`` (orthonormal rows), with ``V_r`` the top right
    singular vectors of W (plain) or of the whitened ``F W`` (whitened, ``FᵀF = C``). For whitened this equals the
    reference's ``U_r Σ_r V_rᵀ S⁻¹`` (AIoT-MLSys-Lab/SVD-LLM, ``SVDLLM.py``, ``whitening``, transposed) without forming
    ``S⁻¹``, so a rank-deficient ``moment`` needs no floor: inputs it never excites map to ``x W V_r V_rᵀ`` (see the
    module docstring). ``floor`` in [0, 1] (whitened only) raises C's eigenvalues below ``floor·λ_max`` to it before
    choosing ``V_r`` — the reference's fallback for a non-PD C, made relative; 0 (default) keeps the exact optimum on
    C, 1 gives plain truncation. ``factor``: :func:`whitening_factor` of ``moment`` (with this ``floor``), computed
    once per site; it replaces the ``eigh`` (whitened only). Cast the factors to the model's dtype yourself.

    Example: ``left, right = truncate(weight=W, moment=C, rank=32, method="whitened", floor=0.0)``"""
    call = "truncate"
    method = check_choice(call, "method", method, METHODS)
    floor = check_number(call, "floor", floor, low=0, high=1)
    if method == "plain" and floor != 0:
        raise config_error(call, "floor", "0 with method='plain' (a floor only changes the whitening)", floor)
    w, c, source = _pair(call, weight, moment, "weight", "moment")
    rank = check_int(call, "rank", rank, low=0, high=min(w.shape[-2], w.shape[-1]))
    if method == "plain":
        target = w
    else:
        f = _factor(call, "moment", c, source, floor) if factor is None else _given_factor(call, factor, c)
        target = f @ w
    _, _, vh = torch.linalg.svd(target, full_matrices=False)
    right = vh[..., :rank, :]
    return w @ right.mT, right
