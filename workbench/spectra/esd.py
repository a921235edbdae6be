"""WeightWatcher's heavy-tailed self-regularisation metrics as batched tensor functions of ESD eigenvalues.

Why: WeightWatcher (Martin & Mahoney 2021, "Predicting trends in the quality of state-of-the-art neural networks
without access to training or testing data", Nat. Commun. 12:4122) is what practitioners use, but it fits one matrix at
a time in Python loops. Here every function takes eigenvalues ``evals [..., k]`` (any order) and works on the whole
batch at once; the power-law fit is vectorised over all candidate xmins.

Conventions (read from weightwatcher 0.7.7, the wheel on PyPI; file/function names are WeightWatcher's):

* **ESD.** ``weightwatcher.py: combined_eigenvalues`` takes ``evals = sv**2`` of W (``svd_vals``, torch ``svdvals`` in
  float32 with the default ``svd_method='fast'``). The ``evals / N`` normalisation is commented out and
  ``apply_normalize_Wmats`` leaves W unscaled (``normalize=False`` in ``DEFAULT_PARAMS``), so the ESD is that of
  ``WᵀW`` *without* 1/N. We follow it: ``evals = σ²``. Dividing by N (the ``XᵀX/N`` ESD) leaves alpha, stable_rank,
  num_spikes and mp_softrank unchanged and shifts ``log_norm`` and ``log_spectral_norm`` by ``-log10 N``.
  N ≥ M are the larger and smaller side of W, Q = N/M, and there are k = M eigenvalues.
* **alpha.** ``WW_powerlaw.py: WWFit`` (the default ``pl_package='ww'``; ``fix_fingers`` defaults to False/None, and
  ``xmax=None`` means no upper cut). Data: the sorted evals above ``EVALS_THRESH = 1e-5``
  (``fit_powerlaw``). Candidates: every datum but the largest. For candidate x_i with tail size n = #{x ≥ x_i}:
  continuous MLE ``alpha = 1 + n / Σ_{j≥i} log(x_j/x_i)`` (Clauset, Shalizi & Newman 2009, eq. 3.1) and the KS distance
  ``D = max_j |1 − (x_j/x_i)^(1−alpha) − (j−i)/n|`` (D = 1 where alpha ≤ 1); xmin = argmin D (first minimum).
  With fewer than 20 data (``SMALL_N_CUTOFF``) it uses ``fit_powerlaw_smallN``: bias-corrected
  ``alpha = 1 + (n−1)/Σ log(x_j/x_i)``, only tails n ≥ 8, chosen by ``D − 0.868/sqrt(n)``.
  ``sigma = (alpha−1)/sqrt(n)``; ``num_pl_spikes = #{evals ≥ xmin}``.
* **norm metrics** (``apply_norm_metrics``): ``log_norm = log10 Σλ`` (log10 of ‖W‖_F²),
  ``log_spectral_norm = log10 λ_max`` (log10 ‖W‖₂²), ``alpha_weighted = alpha · log10 λ_max``,
  ``stable_rank = Σλ/λ_max`` (= :func:`workbench.spectra.stable_rank` of the singular values).
* **MP fit** (``mp_fit`` and ``RMT_Util.py: fit_density_with_range, resid_mp``; only with ``analyze(mp_fit=True)``):
  evals are rescaled to mean 1 (``Wscale² = k/Σλ``); σ is chosen on the grid ``[0.05, 2)·s0`` step ``0.01·s0``,
  ``s0 = sqrt(λ_max/(1+1/√Q)²)``, minimising the squared residual between the MP density and a linear-kernel KDE
  (bandwidth 0.1, 1000 points on [0, max+0.5], points of density ≤ 0.01 dropped); grids whose bulk edges miss the
  KDE peak are penalised; for Q = 1 the quarter-circle law is fitted to sqrt(evals). Then
  ``bulk_max = (σ(1+1/√Q))²``, Tracy–Widom margin ``TW = Q^(-1/2)·bulk_max^(2/3)·M^(-2/3)``,
  ``num_spikes = #{λ > bulk_max + sqrt(TW)}`` and ``mp_softrank = bulk_max/λ_max`` (Martin & Mahoney 2021, JMLR 22,
  "Implicit self-regularization in deep neural networks", §3).

σ is then polished with Nelder–Mead from the grid minimum, as ``scipy.optimize.brute``'s default finish does in
WeightWatcher (``scipy.optimize.fmin``, its default tolerances). Deviations: rows with fewer than two eigenvalues
above 1e-5 get NaN alpha (WeightWatcher reports -1 and status 'failed'). Everything is computed in float64 on the input's device.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from workbench.errors import shape_error
from workbench.spectra.checks import as_tensor, check_finite, has_values
from workbench.validation import Int, check_list, check_number

__all__ = ["EVALS_THRESH", "MPFit", "PowerLawFit", "alpha_weighted", "esd_eigenvalues", "log_norm",
           "log_spectral_norm", "mp_fit", "powerlaw_fit"]

EVALS_THRESH = 1e-5  # WeightWatcher constants.EVALS_THRESH: evals at or below it are left out of the fit
_SMALL_N = 20  # WW_powerlaw.SMALL_N_CUTOFF
_SMALL_K_MIN = 8  # fit_powerlaw_smallN(k_min=8)
_CHUNK_ELEMS = 1 << 23  # float64 elements per temporary [rows, k, k] / [rows, grid, points] (64 MB)
_KDE_POINTS, _KDE_BW, _KDE_THRESH = 1000, 0.1, 0.01


class PowerLawFit(NamedTuple):
    """Per-matrix results of :func:`powerlaw_fit`, each of shape ``evals.shape[:-1]``.

    Example: ``fit: PowerLawFit = powerlaw_fit(esd_eigenvalues(torch.linalg.svdvals(w))); fit.alpha, fit.xmin``"""

    alpha: torch.Tensor
    xmin: torch.Tensor
    D: torch.Tensor
    sigma: torch.Tensor
    num_pl_spikes: torch.Tensor  # int64


class MPFit(NamedTuple):
    """Per-matrix results of :func:`mp_fit` (``sigma``, ``bulk_max`` in the mean-1 rescaled units).

    Example: ``fit: MPFit = mp_fit(esd_eigenvalues(torch.linalg.svdvals(w)), tuple(w.shape)); fit.num_spikes``"""

    sigma: torch.Tensor
    bulk_max: torch.Tensor
    num_spikes: torch.Tensor  # int64
    mp_softrank: torch.Tensor


# ---------------------------------------------------------------------------------------------------------------------
# input handling


def _evals(call: str, evals: object, min_k: int = 1) -> torch.Tensor:
    """Validate ``evals [..., k]`` (finite, >= 0, k >= min_k) and return it in float64."""
    evals = as_tensor(call, "evals", evals)
    if evals.dtype.is_complex:
        raise shape_error(call, "evals", "a real tensor", evals.dtype)
    if evals.ndim < 1 or evals.shape[-1] < min_k:
        raise shape_error(call, "evals", f"a tensor of shape [..., k] with k >= {min_k} eigenvalues",
                          f"shape {tuple(evals.shape)}")
    evals = evals.to(torch.float64)
    check_finite(call, "evals", evals)
    if has_values(evals) and bool((evals < 0).any()):
        raise shape_error(call, "evals", "non-negative (eigenvalues of WᵀW)", f"min {float(evals.min()):.6g}")
    return evals


def _shape(call: str, shape: object) -> tuple[int, int]:
    """``(N, M)`` = (larger, smaller) side of the matrix shape."""
    rows, cols = check_list(call, "shape", shape, Int(low=1), length=2,
                            allowed="the matrix shape (rows, cols), two ints >= 1")
    return max(rows, cols), min(rows, cols)


def _rows(x: torch.Tensor, per_row: int) -> list[slice]:
    """Row slices of ``x [B, ...]`` so each chunk's temporaries stay under _CHUNK_ELEMS."""
    step = max(1, _CHUNK_ELEMS // max(1, per_row))
    return [slice(i, i + step) for i in range(0, x.shape[0], step)]


# ---------------------------------------------------------------------------------------------------------------------
# norm metrics


def esd_eigenvalues(s: torch.Tensor) -> torch.Tensor:
    """Eigenvalues λ = σ² of WᵀW from singular values ``s [..., k]`` (WeightWatcher's ESD, no 1/N), float64.

    Example: ``evals = esd_eigenvalues(torch.linalg.svdvals(lm.weight("W_in", 3)))``"""
    return _evals("esd_eigenvalues", s) ** 2


def log_norm(evals: torch.Tensor) -> torch.Tensor:
    """``log10 Σλ`` = log10 ‖W‖_F² (WeightWatcher ``log_norm``); -inf for an all-zero spectrum.

    Example: ``log_norm(esd_eigenvalues(torch.linalg.svdvals(w)))``"""
    return torch.log10(_evals("log_norm", evals).sum(dim=-1))


def log_spectral_norm(evals: torch.Tensor) -> torch.Tensor:
    """``log10 λ_max`` = log10 ‖W‖₂² (WeightWatcher ``log_spectral_norm``).

    Example: ``log_spectral_norm(esd_eigenvalues(torch.linalg.svdvals(w)))``"""
    return torch.log10(_evals("log_spectral_norm", evals).amax(dim=-1))


def alpha_weighted(alpha: torch.Tensor, evals: torch.Tensor) -> torch.Tensor:
    """``alpha · log10 λ_max`` (WeightWatcher ``alpha_weighted``, Martin & Mahoney 2021 Nat. Commun. eq. 6).

    Example: ``alpha_weighted(powerlaw_fit(evals).alpha, evals)``"""
    return torch.as_tensor(alpha, dtype=torch.float64) * log_spectral_norm(evals)


# ---------------------------------------------------------------------------------------------------------------------
# power-law fit


def powerlaw_fit(evals: torch.Tensor, *, thresh: float = EVALS_THRESH) -> PowerLawFit:
    """WeightWatcher's power-law tail fit (``WWFit``) of every row of ``evals [..., k]``, all xmins at once.

    See the module docstring for the estimator. Memory: a float64 [rows, k, k] temporary, chunked to 64 MB.

    Example: ``powerlaw_fit(esd_eigenvalues(torch.linalg.svdvals(w))).alpha``"""
    call = "powerlaw_fit"
    thresh = check_number(call, "thresh", thresh, low=0)
    lam = _evals(call, evals, min_k=2)
    batch, k = lam.shape[:-1], lam.shape[-1]
    x = lam.reshape(-1, k).sort(dim=-1).values
    parts = [_fit_rows(x[sl], float(thresh)) for sl in _rows(x, k * k)]
    return PowerLawFit(*(torch.cat([p[i] for p in parts]).reshape(batch) for i in range(5)))


def _ks(x: torch.Tensor, logx: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """KS distance of each candidate tail [B, i]: max_j≥i |1 − (x_j/x_i)^(1−α_i) − (j−i)/n_i|."""
    k = x.shape[-1]
    idx = torch.arange(k, device=x.device)
    gap = idx[None, :] - idx[:, None]  # j - i
    n = (k - idx).to(x.dtype)
    log_ratio = logx[:, None, :] - logx[:, :, None]  # log(x_j/x_i)
    fit = 1 - torch.exp(log_ratio * (1 - alpha)[:, :, None])
    diff = (fit - gap / n[:, None]).abs()
    return torch.where(gap >= 0, diff.nan_to_num(nan=0.0), torch.zeros_like(diff)).amax(dim=-1)


def _fit_rows(x: torch.Tensor, thresh: float) -> tuple[torch.Tensor, ...]:
    """The fit on sorted rows ``x [B, k]`` (ascending): valid data are the suffix above ``thresh``."""
    b, k = x.shape
    valid = x > thresh
    m = valid.sum(dim=-1)
    logx = torch.where(valid, x, torch.ones_like(x)).log()
    idx = torch.arange(k, device=x.device)
    n = (k - idx).to(x.dtype)
    s = logx.flip(-1).cumsum(-1).flip(-1) - n * logx  # Σ_{j≥i} log(x_j/x_i)
    cand = (idx[None, :] >= (k - m)[:, None]) & (idx[None, :] < k - 1)
    alpha = 1 + n / s
    d = torch.where(alpha > 1, _ks(x, logx, alpha), torch.ones_like(alpha))
    best = torch.where(cand, d, torch.full_like(d, math.inf)).argmin(dim=-1)
    a, dd = alpha.gather(1, best[:, None])[:, 0], d.gather(1, best[:, None])[:, 0]
    small = (m < _SMALL_N) & (m >= 2)
    if not has_values(small) or bool(small.any()):  # on meta: both paths, for their shapes
        best, a, dd = _small_n(x, logx, s, n, cand, small, best, a, dd, k - m)
    xmin = x.gather(1, best[:, None])[:, 0]
    sigma = (a - 1) / n[best].sqrt()
    spikes = (x >= xmin[:, None]).sum(dim=-1)
    failed = m < 2
    nan = torch.full_like(a, math.nan)
    return (torch.where(failed, nan, a), torch.where(failed, nan, xmin), torch.where(failed, nan, dd),
            torch.where(failed, nan, sigma), torch.where(failed, torch.full_like(spikes, -1), spikes))


def _small_n(x, logx, s, n, cand, small, best, a, dd, first):
    """``fit_powerlaw_smallN`` for rows with fewer than 20 data, as ``WWFit.__init__`` then uses it.

    The bias-corrected MLE ``1 + (n−1)/Σ log(x_j/x_i)`` on tails n >= 8; ``WWFit.__init__`` then re-picks xmin by
    argmin D over all candidates (D = 1, alpha = 0 where skipped), so the ``D − 0.868/sqrt(n)`` objective only decides
    the fallback: with no admissible tail, the whole data is the tail.
    """
    alpha = 1 + (n - 1) / s
    fitted = cand & (n >= _SMALL_K_MIN) & (s > 1e-12)
    ok = fitted & (alpha > 1)
    d = _ks(x, logx, alpha)
    ds = torch.where(ok, d, torch.ones_like(d))
    alphas = torch.where(fitted, alpha, torch.zeros_like(alpha))
    at_first = torch.nn.functional.one_hot(first.clamp_max(x.shape[-1] - 1), x.shape[-1]).bool() & ~ok.any(dim=-1, keepdim=True)
    alphas = torch.where(at_first & (s > 1e-12), alpha, alphas)
    ds = torch.where(at_first & (s > 1e-12), d, ds)
    jbest = torch.where(cand, ds, torch.full_like(ds, math.inf)).argmin(dim=-1)
    ja, jd = alphas.gather(1, jbest[:, None])[:, 0], ds.gather(1, jbest[:, None])[:, 0]
    return (torch.where(small, jbest, best), torch.where(small, ja, a), torch.where(small, jd, dd))


# ---------------------------------------------------------------------------------------------------------------------
# Marchenko–Pastur fit


def mp_fit(evals: torch.Tensor, shape: tuple[int, int]) -> MPFit:
    """WeightWatcher's MP bulk fit (``mp_fit``) of every row of ``evals [..., k]`` from matrices of ``shape``.

    σ comes from a grid search over a KDE of the mean-1 rescaled ESD, polished by Nelder–Mead (module docstring); ``num_spikes`` counts the
    eigenvalues above the bulk edge plus the Tracy–Widom margin and ``mp_softrank = λ₊/λ_max``.

    Example: ``mp_fit(esd_eigenvalues(torch.linalg.svdvals(w)), tuple(w.shape)).mp_softrank``"""
    call = "mp_fit"
    big, small = _shape(call, shape)
    lam = _evals(call, evals)
    batch, k = lam.shape[:-1], lam.shape[-1]
    x = lam.reshape(-1, k)
    total = x.sum(dim=-1, keepdim=True)
    x = torch.where(total > 0, x * k / total, x)
    q = big / small
    sig = torch.cat([_mp_sigma(x[sl], q) for sl in _rows(x, _KDE_POINTS * max(k, 200))])
    bulk = (sig * (1 + 1 / math.sqrt(q))) ** 2
    tw = bulk ** (2 / 3) * small ** (-2 / 3) / math.sqrt(q)
    lam_max = x.amax(dim=-1)
    spikes = (x > (bulk + tw.sqrt())[:, None]).sum(dim=-1)
    return MPFit(sig.reshape(batch), bulk.reshape(batch), spikes.reshape(batch), (bulk / lam_max).reshape(batch))


class _KDE(NamedTuple):
    """The linear-kernel KDE of rescaled rows and what the MP residual needs from it (``[B, P]`` each)."""

    grid: torch.Tensor
    kde: torch.Tensor
    good: torch.Tensor
    peak: torch.Tensor  # [B, 1] grid point of the KDE maximum (over good points)
    top: torch.Tensor  # [B, 1] largest good grid point


def _kde(x: torch.Tensor, q: float) -> _KDE:
    data = x.sqrt() if q == 1 else x
    grid = torch.linspace(0, 1, _KDE_POINTS, dtype=x.dtype, device=x.device)[None, :] * (
        data.amax(dim=-1, keepdim=True) + 0.5)  # [B, P]
    kde = (1 - (grid[:, :, None] - data[:, None, :]).abs() / _KDE_BW).clamp_min(0).mean(dim=-1) / _KDE_BW
    good = kde > _KDE_THRESH
    peak = grid.gather(1, torch.where(good, kde, torch.full_like(kde, -1.0)).argmax(dim=-1, keepdim=True))
    top = torch.where(good, grid, torch.full_like(grid, -math.inf)).amax(dim=-1, keepdim=True)
    return _KDE(grid, kde, good, peak, top)


def _mp_ss(k: _KDE, q: float, sigma: torch.Tensor) -> torch.Tensor:
    """WeightWatcher's ``resid_mp`` sum of squares for each candidate ``sigma [B, G]`` → ``[B, G]``."""
    g, sg = k.grid[:, None, :], sigma[:, :, None]
    if q == 1:
        arg = 4 - g * g
        model = torch.where(arg > 0, arg.clamp_min(0).sqrt() / (math.pi * sg * sg), torch.zeros_like(arg * sg))
        penalty = torch.zeros_like(sigma, dtype=torch.bool)
    else:
        inv = 1 / math.sqrt(q)
        b, a = (sg * (1 + inv)) ** 2, (sg * (1 - inv)) ** 2
        prod = (b - g) * (g - a)
        dens = prod.clamp_min(0).sqrt() / (2 * math.pi * sg * sg * g.clamp_min(1e-300) / q)
        model = torch.where((prod > 0) & (g > 0), dens, torch.zeros_like(dens))
        penalty = (b[..., 0] < k.peak) | (b[..., 0] > k.top) | (a[..., 0] > k.peak)
    resid = torch.where(k.good[:, None, :], model - k.kde[:, None, :], torch.zeros_like(model))
    ss = (resid * resid).sum(dim=-1)
    return torch.where(penalty, 1e6 * k.good.sum(dim=-1, keepdim=True).to(ss.dtype), ss)


def _mp_sigma(x: torch.Tensor, q: float, polish: bool = True) -> torch.Tensor:
    """σ for rescaled rows ``x [B, k]``: ``fit_density_with_range``'s grid, then (``polish``) the Nelder–Mead
    finish that ``scipy.optimize.brute`` applies by default (``scipy.optimize.fmin`` from the grid minimum)."""
    inv = 1 / math.sqrt(q)
    s0 = (x.amax(dim=-1) / (1 + inv) ** 2).sqrt()
    steps = torch.arange(0.05, 2.0 - 1e-9, 0.01, dtype=x.dtype, device=x.device)
    sigma = s0[:, None] * steps[None, :]  # [B, G]
    k = _kde(x, q)
    best = sigma.gather(1, _mp_ss(k, q, sigma).argmin(dim=-1, keepdim=True))[:, 0]
    if not polish or not has_values(x):
        return best
    from scipy.optimize import fmin

    # Nelder–Mead is a sequential scalar search: it runs on a CPU copy of the KDE rows (one transfer of [B, 1000]
    # values), not on x's device, where each of its ~100 evaluations per row would wait for a device-to-host read.
    host, start = _KDE(*(t.cpu() for t in k)), best.cpu()
    out = torch.empty_like(start)
    for i in range(x.shape[0]):
        row = _KDE(*(t[i:i + 1] for t in host))

        def f(p, row=row):
            return float(_mp_ss(row, q, torch.tensor([[float(p[0])]], dtype=x.dtype)))

        out[i] = float(fmin(f, [float(start[i])], disp=False)[0])
    return out.to(x.device)
