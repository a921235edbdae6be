"""The eigenvalue driver of the Gram routes: LAPACK through numpy on CPU (``eig_driver="auto"``/``"lapack"``) and
``torch.linalg.eigvalsh`` (``"torch"``) give the dense SVD's singular values, in float64, on the input's device.

References are numpy's dense SVD of the rows (``np.linalg.svd``, LAPACK ``gesdd``: not an eigenvalue routine).
"""

import numpy as np
import pytest
import torch

from workbench.errors import ConfigError
from workbench.spectra import batched_singular_values, singular_values_from_gram
from workbench.spectra import svd as svd_module

DRIVERS = ["auto", "lapack", "torch"]


def _dense(x: np.ndarray) -> np.ndarray:
    return np.linalg.svd(np.asarray(x, dtype=np.float64), compute_uv=False)


def _rows(seed: int, n: int, d: int, decades: float = 3.0, rank: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    scales = np.logspace(0, -decades, d)
    if rank is not None:
        scales[rank:] = 0.0
    return (rng.standard_normal((n, d)) * scales) @ q.T


def _check(s: torch.Tensor, dense: np.ndarray, rtol_above: float = 1e-6) -> None:
    """rtol 1e-6 on values above 1e-6·σ_max (their σ² is far above the Gram floor d·eps64·λ_max); the rest
    (rank-deficient or below the floor) within 1e-6·σ_max, 0 included."""
    s = s.numpy()
    assert s.shape == dense.shape and s.dtype == np.float64
    big = dense > 1e-6 * dense[0]
    np.testing.assert_allclose(s[big], dense[big], rtol=rtol_above)
    assert np.all(np.abs(s[~big]) <= 1e-6 * dense[0])
    assert np.all(s[:-1] >= s[1:]) and np.all(s >= 0), "descending and non-negative"


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize(("n", "d", "decades", "rank"), [
    (400, 64, 3, None),  # well conditioned
    (400, 64, 5.5, None),  # near-singular: σ_min = 3e-6·σ_max, κ(Gram) = 1e11
    (300, 150, 2, 40),  # rank-deficient: 110 exact zeros
    (20, 64, 2, None),  # n < d: truncated to n values
])
def test_gram_matches_dense_svd(driver, n, d, decades, rank):
    x = _rows(n + d, n, d, decades, rank)
    s = singular_values_from_gram(torch.from_numpy(x.T @ x), n=n, eig_driver=driver)
    _check(s, _dense(x))
    if rank is not None:
        assert bool((s[rank:] == 0).all()), "rank-deficient directions are exact zeros, not rounding noise"


@pytest.mark.parametrize("driver", DRIVERS)
def test_tiny_negative_eigenvalues_are_clipped(driver):
    """A rank-1 Gram has d − 1 eigenvalues that LAPACK returns as ±1e-16·λ_max: they come back as exactly 0.0,
    never NaN (sqrt of a negative)."""
    for seed in range(10):
        v = torch.from_numpy(np.random.default_rng(seed).standard_normal(200))
        s = singular_values_from_gram(torch.outer(v, v), eig_driver=driver)
        assert int((s != 0).sum()) == 1 and not bool(s.isnan().any())
        torch.testing.assert_close(s[0], v.norm())
        raw = svd_module._eigvalsh(torch.outer(v, v), driver)
        assert raw.dtype == torch.float64 and raw.shape == (200,)


@pytest.mark.parametrize("driver", DRIVERS)
def test_batched_shapes_and_center(driver):
    x = np.stack([[_rows(10 * i + j, 90, 140) + 0.01 for j in range(2)] for i in range(3)])  # [3, 2, 90, 140]
    xt = torch.from_numpy(x)
    gram = xt.mT @ xt
    s = singular_values_from_gram(gram, mean=xt.mean(-2), n=90, center=True, eig_driver=driver)
    assert s.shape == (3, 2, 90)
    for i in range(3):
        for j in range(2):
            _check(s[i, j], _dense(x[i, j] - x[i, j].mean(0)), rtol_above=1e-5)  # centring XᵀX − nμμᵀ costs digits


def test_drivers_agree_and_auto_is_lapack_on_cpu(monkeypatch):
    x = _rows(5, 500, 130)
    gram = torch.from_numpy(np.stack([x.T @ x, 2 * x.T @ x]))
    by_driver = {driver: singular_values_from_gram(gram, eig_driver=driver) for driver in DRIVERS}
    torch.testing.assert_close(by_driver["lapack"], by_driver["torch"], rtol=1e-10, atol=1e-10 * float(gram.max()))
    assert torch.equal(by_driver["auto"], by_driver["lapack"])

    def refuse(*args, **kwargs):
        raise AssertionError("torch.linalg.eigvalsh called")

    monkeypatch.setattr(torch.linalg, "eigvalsh", refuse)
    singular_values_from_gram(gram)  # auto on CPU float64: no torch eigvalsh
    batched_singular_values([torch.from_numpy(x).float()], method="gram")
    with pytest.raises(AssertionError, match="torch.linalg.eigvalsh called"):
        singular_values_from_gram(gram, eig_driver="torch")


def test_auto_keeps_autograd_on_torch():
    x = torch.from_numpy(_rows(6, 50, 8)).requires_grad_()
    s = singular_values_from_gram(x.T @ x)
    s.sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())


@pytest.mark.parametrize("driver", DRIVERS)
def test_batched_singular_values_gram_route(driver):
    mats = [torch.from_numpy(_rows(7, 200, 130)).float(), torch.from_numpy(_rows(8, 40, 130)).float()]
    for m, s in zip(mats, batched_singular_values(mats, method="gram", eig_driver=driver), strict=True):
        ref = _dense(m.double().numpy())
        assert s.dtype == torch.float32 and s.shape == ref.shape
        np.testing.assert_allclose(s.double().numpy(), ref, rtol=1e-5, atol=1e-6 * ref[0])


def test_lapack_driver_keeps_dtype_of_float32_input():
    g = torch.from_numpy(_rows(9, 60, 10)).float()
    lam = svd_module._eigvalsh(g.T @ g, "lapack")
    assert lam.dtype == torch.float32 and lam.device == g.device


def test_empty_batch():
    for driver in DRIVERS:
        for d in (5, svd_module.STACKED_BELOW):  # both LAPACK paths: stacked call, and one call per matrix
            assert singular_values_from_gram(torch.zeros(0, d, d, dtype=torch.float64),
                                             eig_driver=driver).shape == (0, d)


@pytest.mark.parametrize("d", [svd_module.STACKED_BELOW - 1, svd_module.STACKED_BELOW])
def test_lapack_stacked_below_threshold_and_per_matrix_from_it(monkeypatch, d):
    grams = np.stack([[(x := _rows(20 + 2 * i + j, 2 * d, d)).T @ x for j in range(2)] for i in range(2)])  # [2, 2, d, d]
    calls = []
    eigvalsh = np.linalg.eigvalsh
    monkeypatch.setattr(np.linalg, "eigvalsh", lambda a: calls.append(a.shape) or eigvalsh(a))
    lam = svd_module._eigvalsh(torch.from_numpy(grams), "lapack")
    assert calls == ([(2, 2, d, d)] if d < svd_module.STACKED_BELOW else [(d, d)] * 4)
    assert lam.shape == (2, 2, d)
    np.testing.assert_array_equal(lam.numpy()[1, 0], eigvalsh(grams[1, 0]))  # each matrix's own values, in place


def test_unknown_driver_is_refused():
    with pytest.raises(ConfigError, match="singular_values_from_gram\\(\\): parameter 'eig_driver'"):
        singular_values_from_gram(torch.eye(3, dtype=torch.float64), eig_driver="syevr")
    with pytest.raises(ConfigError, match="batched_singular_values\\(\\): parameter 'eig_driver'"):
        batched_singular_values([torch.eye(3)], eig_driver=None)
