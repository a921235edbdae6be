"""Batched singular values of activations, weights and streamed Gram statistics.

Why this module exists: every spectral analysis (effective rank, RankMe, stable rank, ...) is a function of singular
values, and computing them is the expensive part. The functions here do that once, batched over leading dimensions,
on the input's device, with one clear rule for the dtype they compute in:

=========================  ===============================
input dtype                 computes in
=========================  ===============================
float16, bfloat16, float8   float32
float32                     float32
float64                     float64
integer, bool               float64
complex                     rejected (ShapeError)
=========================  ===============================

:func:`singular_values_from_gram` is the exception: it always works in float64, because it exists for the Gram
statistics a streaming capture accumulates (``XᵀX``, row mean, row count) and a Gram squares the condition number.

Precision of the Gram route. The eigenvalues of a symmetric ``d × d`` matrix computed in floating point carry an
absolute error of about ``d · eps · ‖G‖`` (Golub & Van Loan, *Matrix Computations*, 4th ed., §8.1.2 and Thm. 8.1.4,
Weyl's inequality). Since σ = sqrt(λ), singular values whose square lies below that floor are *indistinguishable from
zero in a Gram computation*; we return them as exactly 0.0 rather than as rounding noise. Centring with
``XcᵀXc = XᵀX − n·μμᵀ`` subtracts two large numbers when the mean dominates the spread, so the floor is set by the
*uncentred* Gram: a streaming accumulator should keep the centred co-moment ``Σ (x − μ)(x − μ)ᵀ`` (Welford 1962;
Chan, Golub & LeVeque 1979 pairwise update) and pass it as ``gram`` with ``center=False`` (no subtraction at all),
rather than the raw ``Σ xxᵀ`` with ``center=True``.

Eigenvalue driver. Both Gram routes need only eigenvalues. On CPU they default to LAPACK's ``syevd`` through
numpy's OpenBLAS (``numpy.linalg.eigvalsh``: the whole stack in one call below d = 128, one call per matrix from
there on, where the stacked call was measured 1.3x slower; each matrix reduced to tridiagonal form
with the optimal workspace, then the root-free QR of ``dsterf``, the same work as ``syevr`` for eigenvalues only),
because torch's CPU ``eigvalsh`` (MKL ``syevd``) takes 1.7x the CPU time for 576 × 576 on this project's AMD
machines, and per-matrix calls (scipy) pay a workspace query, a finiteness scan and a copy each, which is 3x the
stacked call for 500 matrices of 16 × 16. Splitting the stack over Python threads was measured slower (OpenBLAS
threads inside each call then compete). Every other device keeps ``torch.linalg.eigvalsh`` (cuSOLVER on CUDA), as do
a graph to differentiate and ``eig_driver="torch"``; the result is on the input's device either way.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

from workbench.errors import config_error, shape_error
from workbench.spectra.checks import as_tensor, check_finite, has_values
from workbench.validation import Int, check_choice, check_int, check_optional

__all__ = ["PrecisionWarning", "batched_singular_values", "singular_values", "singular_values_from_gram"]

# Warn when centring leaves less than this dynamic range (σ_floor / σ_max) in the centred spectrum: below it the Gram
# route is less accurate than a float32 direct SVD (whose own floor is ~1e-7·σ_max), which is what callers assume.
_CANCELLATION_RATIO = 1e-6


class PrecisionWarning(UserWarning):
    """Singular values computed from the given statistics are less precise than the caller may assume.

    Example: ``warnings.simplefilter("error", PrecisionWarning)  # make an imprecise Gram-derived spectrum fail``"""


# ---------------------------------------------------------------------------------------------------------------------
# input handling (as_tensor and check_finite, shared by every spectra module, are in checks.py)


def _working_dtype(call: str, name: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype of the table in the module docstring (float64/32 kept, low floats -> float32, ints -> float64)."""
    if dtype.is_complex:
        raise shape_error(call, name, "a real (floating, integer or bool) tensor", dtype)
    if dtype in (torch.float32, torch.float64):
        return dtype
    return torch.float32 if dtype.is_floating_point else torch.float64


def _check_matrix(call: str, name: str, x: torch.Tensor, *, exact_ndim: bool = False) -> None:
    """Shape checks of a (batch of) matrix: ndim >= 2 (== 2 if exact_ndim), at least one row and one column."""
    if (x.ndim != 2) if exact_ndim else (x.ndim < 2):
        allowed = "a 2-D tensor [n, d]" if exact_ndim else "a tensor of shape [..., n, d] with ndim >= 2"
        raise shape_error(call, name, allowed, f"shape {tuple(x.shape)}")
    if x.shape[-2] == 0 or x.shape[-1] == 0:
        raise shape_error(call, name, "at least one row and one column", f"shape {tuple(x.shape)}")


def _centre_rows(x: torch.Tensor) -> torch.Tensor:
    """Subtract the mean over rows (dim -2): VERL's mean-centring of token representations."""
    return x - x.mean(dim=-2, keepdim=True)


# ---------------------------------------------------------------------------------------------------------------------
# eigenvalues of symmetric matrices (the Gram routes)

EIG_DRIVERS = ("auto", "lapack", "torch")
# numpy's stacked eigvalsh beats per-matrix calls for small matrices (call overhead: 0.3x at 300 x 16 x 16) and loses
# to them from d = 128 on (1.3x at 30 x 576 x 576; measured on this project's 2-core AMD machines, 2026-11-28)
STACKED_BELOW = 128


def _eigvalsh(g: torch.Tensor, driver: str) -> torch.Tensor:
    """Ascending eigenvalues of a symmetric batch ``g`` [..., d, d] (lower triangle read), on ``g``'s device.

    ``"auto"``: LAPACK through numpy for CPU float64 without autograd, ``torch.linalg.eigvalsh`` otherwise (other
    devices, ``meta``, float32, a graph to differentiate). ``"lapack"``: numpy on the CPU wherever ``g`` lives (a copy
    to the host and back off-CPU). ``"torch"``: ``torch.linalg.eigvalsh``.
    """
    host = g.device.type == "cpu" and g.dtype == torch.float64 and not g.requires_grad
    if driver == "torch" or (driver == "auto" and not host):
        return torch.linalg.eigvalsh(g)
    host_g = g.detach().to("cpu", torch.float64).numpy()
    if host_g.shape[-1] < STACKED_BELOW or host_g.ndim == 2:
        values = np.linalg.eigvalsh(host_g)  # stacked [..., d, d], lower triangle
    else:
        flat = host_g.reshape(-1, *host_g.shape[-2:])
        values = np.stack([np.linalg.eigvalsh(m) for m in flat]).reshape(host_g.shape[:-1]) if len(flat) else \
            np.linalg.eigvalsh(host_g)
    return torch.from_numpy(values).to(g.device, g.dtype)


# ---------------------------------------------------------------------------------------------------------------------
# direct SVD


def singular_values(x: torch.Tensor, *, center: bool = False) -> torch.Tensor:
    """Singular values of ``x`` [..., n, d] -> [..., min(n, d)], descending, in one batched ``svdvals`` call.

    Computes on ``x``'s device in float32 for float32 and lower floats (float16/bfloat16 are upcast, since LAPACK and
    cuSOLVER have no half-precision SVD), float64 for float64 and integer input. ``center=True`` subtracts the mean over
    rows first, so the spectrum is that of the token covariance (as VERL does before its effective rank).

    Example: ``singular_values(torch.randn(4, 100, 64), center=True).shape  # [4, 64]``"""
    call = "singular_values"
    x = as_tensor(call, "x", x)
    _check_matrix(call, "x", x)
    x = x.to(_working_dtype(call, "x", x.dtype))
    check_finite(call, "x", x)
    return _svdvals(x, center)


def _svdvals(x: torch.Tensor, center: bool) -> torch.Tensor:
    """``torch.linalg.svdvals`` (already descending) of an upcast, validated batch."""
    return torch.linalg.svdvals(_centre_rows(x) if center else x)


METHODS = ("auto", "svd", "gram")


def batched_singular_values(
    matrices: Sequence[torch.Tensor], *, center: bool = False, max_batch_bytes: int = 1 << 30, method: str = "auto",
    eig_driver: str = "auto",
) -> list[torch.Tensor]:
    """Singular values of each 2-D matrix in ``matrices``, returned as 1-D tensors in the same order.

    Why: a model has many weight matrices but few distinct shapes, and one batched ``svdvals`` per shape is far faster
    than one call per matrix (kernel launch and LAPACK workspace setup dominate for small matrices). Matrices are
    grouped by (shape, dtype, device), stacked, and decomposed in chunks of at most ``max_batch_bytes`` of stacked input
    (always at least one matrix per chunk). Dtype and device rules are those of :func:`singular_values`.

    ``method``: ``"svd"`` (``svdvals``), ``"gram"`` (``eigvalsh`` of the float64 Gram of the smaller side) or
    ``"auto"``: the Gram route for float32 and lower input, the SVD for float64. For float32 matrices the float64 Gram
    is as accurate as a float32 SVD (its floor, ≈ sqrt(d·eps64)·σ_max ≈ 4e-7·σ_max at d = 576, matches float32's own
    rounding) and 1.5-6x faster on CPU, most for non-square shapes (batched ``svdvals`` of 576 × 1536 is slow).
    ``eig_driver`` (``"auto"``, ``"lapack"``, ``"torch"``) picks the eigenvalue routine of the Gram route, as in
    :func:`singular_values_from_gram`.

    Example: ``batched_singular_values([lm.weight("W_in", layer) for layer in range(lm.facts.n_layers)])``"""
    call = "batched_singular_values"
    if method not in METHODS:
        raise config_error(call, "method", f"one of {METHODS}", method)
    check_choice(call, "eig_driver", eig_driver, EIG_DRIVERS)
    check_int(call, "max_batch_bytes", max_batch_bytes, low=1)
    mats = [_prepare_listed(call, i, m) for i, m in enumerate(matrices)]
    out: list[torch.Tensor | None] = [None] * len(mats)
    for indices in _group_indices(mats).values():
        for chunk in _chunks(indices, mats[indices[0]], max_batch_bytes):
            svals = _stacked_svdvals(call, [mats[i] for i in chunk], chunk, center, method, eig_driver)
            for row, i in enumerate(chunk):
                out[i] = svals[row]
    return out  # type: ignore[return-value]


def _prepare_listed(call: str, i: int, m: object) -> torch.Tensor:
    """Convert, shape-check and upcast the i-th matrix (finiteness is checked per stacked chunk)."""
    name = f"matrices[{i}]"
    m = as_tensor(call, name, m)
    _check_matrix(call, name, m, exact_ndim=True)
    return m.to(_working_dtype(call, name, m.dtype))


def _group_indices(mats: list[torch.Tensor]) -> dict[tuple, list[int]]:
    """Indices of ``mats`` grouped by (shape, dtype, device), in order of first appearance."""
    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(mats):
        groups.setdefault((tuple(m.shape), m.dtype, m.device), []).append(i)
    return groups


def _chunks(indices: list[int], example: torch.Tensor, max_batch_bytes: int) -> list[list[int]]:
    """Split one group so each stacked chunk stays under ``max_batch_bytes`` (at least one matrix per chunk)."""
    per = max(1, max_batch_bytes // (example.numel() * example.element_size()))
    return [indices[k : k + per] for k in range(0, len(indices), per)]


def _stacked_svdvals(call: str, group: list[torch.Tensor], indices: list[int], center: bool,
                     method: str, eig_driver: str) -> torch.Tensor:
    """One batched decomposition of a stacked chunk; a NaN/Inf is reported with the index of its matrix."""
    stacked = torch.stack(group)
    if has_values(stacked) and not bool(torch.isfinite(stacked).all()):  # one host read per chunk
        row = int((~torch.isfinite(stacked)).flatten(1).any(dim=1).nonzero()[0])
        check_finite(call, f"matrices[{indices[row]}]", group[row])
    if method == "svd" or (method == "auto" and stacked.dtype == torch.float64):
        return _svdvals(stacked, center)
    x = (_centre_rows(stacked) if center else stacked).to(torch.float64)
    gram = x.mT @ x if x.shape[-2] >= x.shape[-1] else x @ x.mT
    values = _eigvalsh(gram, eig_driver).flip(-1).clamp_min(0).sqrt()
    return values.to(stacked.dtype)


# ---------------------------------------------------------------------------------------------------------------------
# Gram route


def singular_values_from_gram(
    gram: torch.Tensor,
    *,
    mean: torch.Tensor | None = None,
    n: int | None = None,
    center: bool = False,
    eig_driver: str = "auto",
) -> torch.Tensor:
    """Singular values of X from its Gram ``XᵀX`` [..., d, d] -> [..., min(n, d)] (or [..., d]), descending, float64.

    Why: a streaming capture cannot keep every token, but it can accumulate ``XᵀX`` (plus the row mean μ and count n),
    and σ_i(X) = sqrt(λ_i(XᵀX)). ``center=True`` uses ``XcᵀXc = XᵀX − n·μμᵀ``. Computes the eigenvalues in float64
    (only the lower triangle is read) and returns them on ``gram``'s device: ``eig_driver="auto"`` uses LAPACK
    through numpy on CPU (``syevd``, 1.7x faster here than torch's MKL ``syevd``) and ``torch.linalg.eigvalsh``
    elsewhere; ``"lapack"`` forces the former (on the host), ``"torch"`` the latter (see the module docstring). Every σ whose σ² is below the floor
    ``d · eps64 · λ_max(XᵀX)`` is indistinguishable from zero in a Gram computation and is returned as exactly 0.0
    (see the module docstring; when centring, λ_max(XcᵀXc) + n‖μ‖² stands in for λ_max(XᵀX)). With ``n`` given the
    result is truncated to min(n, d) values, the length of the direct SVD; after centring the rank is at most n − 1,
    and that last value is left in place (it is 0.0 or near it).

    Warns :class:`PrecisionWarning` when ``gram`` (or ``mean``) arrives in float32 or lower, and when centring cancels
    so much that σ below 1e-6·σ_max are lost; the remedy for both is to accumulate the centred co-moment in float64.

    Example: ``singular_values_from_gram(x.T @ x, mean=x.mean(0), n=len(x), center=True)``"""
    call = "singular_values_from_gram"
    check_choice(call, "eig_driver", eig_driver, EIG_DRIVERS)
    gram = as_tensor(call, "gram", gram)
    _check_gram(call, gram)
    g = gram.to(torch.float64)
    check_finite(call, "gram", g)
    mean = _check_centring(call, gram, mean, n, center)
    _warn_low_precision(gram, mean)
    g, shift = _centred_gram(g, mean, n) if center else (g, 0.0)
    lam = _eigvalsh(g, eig_driver).flip(-1)  # eigvalsh is ascending
    lam_max = lam[..., :1].clamp(min=0.0) + shift  # λ_max(Gc) + n‖μ‖² bounds λ_max(XᵀX) within a factor 2
    floor = gram.shape[-1] * torch.finfo(torch.float64).eps * lam_max
    s = torch.where(lam > floor, lam, torch.zeros_like(lam)).sqrt()
    if center and has_values(lam):
        _warn_cancellation(floor, lam[..., :1])
    return s if n is None else s[..., : min(n, gram.shape[-1])]


def _check_gram(call: str, gram: torch.Tensor) -> None:
    """``gram`` must be [..., d, d] with d >= 1 and real."""
    if gram.ndim < 2 or gram.shape[-1] != gram.shape[-2] or gram.shape[-1] == 0:
        raise shape_error(call, "gram", "a square matrix batch of shape [..., d, d] with d >= 1", tuple(gram.shape))
    _working_dtype(call, "gram", gram.dtype)


def _check_centring(
    call: str, gram: torch.Tensor, mean: object, n: object, center: bool
) -> torch.Tensor | None:
    """Validate ``n`` always and ``mean`` when centring; return ``mean`` as a tensor (or None)."""
    check_optional(call, "n", n, Int(low=1, allowed_text="an int >= 1 (the number of rows accumulated)"))
    if not center:
        if mean is not None:
            raise config_error(call, "mean", "None when center=False (pass center=True to centre)", "a tensor")
        return None
    for name, value in (("mean", mean), ("n", n)):
        if value is None:
            raise config_error(call, name, "given when center=True", None)
    mean = as_tensor(call, "mean", mean)
    if tuple(mean.shape) != tuple(gram.shape[:-1]):
        raise shape_error(call, "mean", f"of shape {tuple(gram.shape[:-1])} (gram's [..., d])", tuple(mean.shape))
    _working_dtype(call, "mean", mean.dtype)
    check_finite(call, "mean", mean)
    return mean


def _centred_gram(g: torch.Tensor, mean: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``XᵀX − n·μμᵀ`` in float64, and ``n·‖μ‖²`` (the largest eigenvalue of what was subtracted) as [..., 1]."""
    mu = mean.to(device=g.device, dtype=torch.float64)
    centred = g - n * (mu.unsqueeze(-1) * mu.unsqueeze(-2))
    return centred, n * (mu * mu).sum(dim=-1, keepdim=True)


def _warn_low_precision(gram: torch.Tensor, mean: torch.Tensor | None) -> None:
    """A float32 Gram has lost everything below ~d·1e-7·λ_max before we see it: say so rather than hide it."""
    low = [f"{name} ({t.dtype})" for name, t in (("gram", gram), ("mean", mean)) if t is not None and _is_low(t)]
    if low:
        warnings.warn(
            f"singular_values_from_gram(): {' and '.join(low)} arrived in less than float64 precision, so small "
            "singular values are unreliable; accumulate the Gram statistics in float64.",
            PrecisionWarning,
            stacklevel=3,
        )


def _is_low(t: torch.Tensor) -> bool:
    return t.dtype.is_floating_point and t.dtype != torch.float64


def _warn_cancellation(floor: torch.Tensor, lam_max_centred: torch.Tensor) -> None:
    """Warn when sqrt(floor) > 1e-6·σ_max(centred): the XᵀX − n·μμᵀ subtraction has eaten the small values."""
    ratio = floor.sqrt() / lam_max_centred.clamp(min=0.0).sqrt()
    ratio = torch.where(floor > 0, ratio.nan_to_num(nan=float("inf")), torch.zeros_like(ratio))
    worst = float(ratio.max()) if ratio.numel() else 0.0
    if worst > _CANCELLATION_RATIO:
        warnings.warn(
            "singular_values_from_gram(): centring XᵀX − n·μμᵀ cancelled catastrophically: the precision floor "
            f"sqrt(d·eps·λ_max(XᵀX)) is {worst:.3g} × σ_max of the centred spectrum (at most "
            f"{_CANCELLATION_RATIO:g} keeps small values). Accumulate the centred co-moment Σ(x−μ)(x−μ)ᵀ in float64 "
            "and pass it as gram with center=False.",
            PrecisionWarning,
            stacklevel=3,
        )
