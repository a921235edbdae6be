"""WeightWatcher metrics (workbench.spectra.esd) against closed forms and an independent numpy WWFit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from workbench.errors import ConfigError, ShapeError
from workbench.spectra import (
    alpha_weighted,
    esd_eigenvalues,
    log_norm,
    log_spectral_norm,
    mp_fit,
    powerlaw_fit,
    stable_rank,
)


def ww_alpha_reference(evals: np.ndarray) -> tuple[float, float, float]:
    """WeightWatcher 0.7.7 WWFit (pl_package='ww', xmax=None) written out as loops: (alpha, xmin, D)."""
    data = np.sort(evals[evals > 1e-5]).astype(np.float64)
    n_all = len(data)
    alphas, ds = np.zeros(n_all - 1), np.ones(n_all - 1)
    for i in range(n_all - 1):
        tail, n = data[i:], n_all - i
        s = np.sum(np.log(tail / data[i]))
        if n_all < 20:  # fit_powerlaw_smallN
            if n < 8 or s <= 1e-12:
                continue
            alphas[i] = 1 + (n - 1) / s
        else:
            alphas[i] = 1 + n / s
        if alphas[i] > 1:
            ds[i] = np.max(np.abs(1 - (tail / data[i]) ** (1 - alphas[i]) - np.arange(n) / n))
    if n_all < 20 and not np.any((alphas > 1) & (ds < 1)):
        s = np.sum(np.log(data / data[0]))
        alphas[0] = 1 + (n_all - 1) / s
        ds[0] = np.max(np.abs(1 - (data / data[0]) ** (1 - alphas[0]) - np.arange(n_all) / n_all))
    i = int(np.argmin(ds))
    return alphas[i], data[i], ds[i]


def test_pure_power_law_alpha_is_recovered():
    rng = np.random.default_rng(0)
    alpha = 2.5
    x = 1.0 * (1 - rng.random(3000)) ** (-1 / (alpha - 1))  # Pareto with density ∝ x^-alpha on [1, ∞)
    fit = powerlaw_fit(torch.tensor(x))
    assert float(fit.alpha) == pytest.approx(alpha, rel=0.05)
    assert float(fit.sigma) == pytest.approx((float(fit.alpha) - 1) / math.sqrt(int(fit.num_pl_spikes)), rel=1e-9)


@pytest.mark.parametrize("shape", [(120, 40), (64, 64), (50, 12), (30, 16)])
def test_alpha_matches_independent_numpy_wwfit(shape, device):
    rng = np.random.default_rng(sum(shape))
    w = rng.standard_normal(shape) * (rng.pareto(1.5, shape[1]) + 1)  # heavy-tailed column scales
    s = np.linalg.svd(w, compute_uv=False)
    ref_alpha, ref_xmin, ref_d = ww_alpha_reference(s**2)
    fit = powerlaw_fit(esd_eigenvalues(torch.tensor(s, device=device)))
    assert all(t.device == device for t in fit)
    assert float(fit.alpha) == pytest.approx(ref_alpha, rel=1e-9)
    assert float(fit.xmin) == pytest.approx(ref_xmin, rel=1e-12)
    assert float(fit.D) == pytest.approx(ref_d, rel=1e-9, abs=1e-12)
    assert int(fit.num_pl_spikes) == int((s**2 >= ref_xmin).sum())


def test_batched_fit_equals_row_by_row_and_keeps_batch_shape():
    rng = np.random.default_rng(1)
    lam = torch.tensor(rng.pareto(2.0, (2, 3, 40)) + 0.1)
    fit = powerlaw_fit(lam)
    assert fit.alpha.shape == (2, 3) and fit.num_pl_spikes.dtype == torch.int64
    for idx in np.ndindex(2, 3):
        assert float(fit.alpha[idx]) == pytest.approx(ww_alpha_reference(lam[idx].cpu().numpy())[0], rel=1e-9)


def test_norm_metrics_by_hand():
    s = torch.tensor([2.0, 1.0, 1.0, 0.5])
    lam = esd_eigenvalues(s)
    assert lam.tolist() == [4.0, 1.0, 1.0, 0.25]
    assert float(log_norm(lam)) == pytest.approx(math.log10(6.25))
    assert float(log_spectral_norm(lam)) == pytest.approx(math.log10(4.0))
    assert float(stable_rank(s)) == pytest.approx(6.25 / 4.0)
    assert float(alpha_weighted(torch.tensor(3.0), lam)) == pytest.approx(3 * math.log10(4.0))


def test_gaussian_matrix_is_all_bulk():
    torch.manual_seed(0)
    w = torch.randn(1000, 250, dtype=torch.float64)
    lam = esd_eigenvalues(torch.linalg.svdvals(w))
    mp = mp_fit(lam, (1000, 250))
    q = 4.0
    assert int(mp.num_spikes) == 0
    # the fitted edge sits at the top of the bulk, the rescaled MP edge (1 + 1/sqrt(Q))^2 for σ² = 1
    assert float(mp.mp_softrank) == pytest.approx(1.0, abs=0.1)
    assert float(mp.bulk_max) == pytest.approx((1 + 1 / math.sqrt(q)) ** 2, rel=0.1)


def test_gaussian_plus_rank_one_spike_has_exactly_one_spike(device):
    torch.manual_seed(0)
    w = torch.randn(1000, 250, dtype=torch.float64)
    u, v = torch.randn(1000, 1, dtype=torch.float64), torch.randn(1, 250, dtype=torch.float64)
    w = w + 3.0 * u @ v / (u.norm() * v.norm()) * math.sqrt(1000) * 2
    mp = mp_fit(esd_eigenvalues(torch.linalg.svdvals(w.to(device))), (1000, 250))
    assert all(t.device == device for t in mp)
    assert int(mp.num_spikes) == 1
    assert float(mp.mp_softrank) < 0.5


def test_errors_name_the_parameter():
    with pytest.raises(ShapeError, match="'evals'.*finite"):
        powerlaw_fit(torch.tensor([1.0, float("nan"), 2.0]))
    with pytest.raises(ShapeError, match="'evals'.*k >= 2"):
        powerlaw_fit(torch.tensor([1.0]))
    with pytest.raises(ShapeError, match="'evals'.*non-negative"):
        log_norm(torch.tensor([1.0, -1.0]))
    with pytest.raises(ConfigError, match="'shape'"):
        mp_fit(torch.ones(4), (4,))
    with pytest.raises(ConfigError, match="'thresh'"):
        powerlaw_fit(torch.ones(4), thresh=-1.0)


def test_too_few_positive_eigenvalues_give_nan_not_garbage():
    fit = powerlaw_fit(torch.tensor([[0.0, 0.0, 3.0], [1.0, 2.0, 4.0]]))
    assert math.isnan(float(fit.alpha[0])) and int(fit.num_pl_spikes[0]) == -1
    assert math.isfinite(float(fit.alpha[1]))


def test_mp_sigma_polish_never_worsens_the_grid_fit():
    """Nelder–Mead starts from the grid minimum (as scipy.optimize.brute's finish): its residual is no larger."""
    from workbench.spectra.esd import _kde, _mp_sigma, _mp_ss

    g = torch.Generator().manual_seed(3)
    for n, m in ((200, 80), (120, 120)):
        w = torch.randn(n, m, generator=g, dtype=torch.float64)
        w[:, :3] *= 8  # a few spikes above the bulk
        lam = torch.linalg.eigvalsh(w.T @ w / n)
        x = (lam * lam.numel() / lam.sum())[None]
        q = n / m
        grid, polished = _mp_sigma(x, q, polish=False), _mp_sigma(x, q)
        k = _kde(x, q)
        assert float(_mp_ss(k, q, polished[:, None])) <= float(_mp_ss(k, q, grid[:, None])) + 1e-12
        assert abs(float(polished[0] - grid[0])) <= 0.02 * float(grid[0]) + 1e-9  # stays near the grid point
