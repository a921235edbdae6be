"""workbench.spectra.gradients: the spectrum of Σ_t δ_t x_tᵀ from its T × T core equals the dense SVD's."""

from __future__ import annotations

import math

import pytest
import torch

from workbench.errors import ShapeError
from workbench.spectra import effective_rank
from workbench.spectra.gradients import gradient_spectrum, outer_sum_singular_values


def _factors(t, m, n, batch=(), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*batch, t, m, generator=g, dtype=torch.float64), torch.randn(*batch, t, n, generator=g,
                                                                                    dtype=torch.float64)


@pytest.mark.parametrize("t,m,n", [(5, 32, 48), (40, 24, 16), (7, 7, 7), (1, 10, 3), (12, 192, 576)])
def test_equals_dense_svd(t, m, n, device):
    delta, x = (f.to(device) for f in _factors(t, m, n))
    dense = delta.T @ x
    s_dense = torch.linalg.svdvals(dense)
    spec = gradient_spectrum(delta, x)
    assert all(v.device == device for v in (spec.singular_values, spec.nuclear, spec.frobenius, spec.erank))
    r = min(t, m, n)
    assert spec.singular_values.shape == (r,)
    assert torch.allclose(spec.singular_values, s_dense[:r], rtol=1e-10, atol=1e-12 * float(s_dense[0]))
    assert float(spec.nuclear) == pytest.approx(float(s_dense.sum()), rel=1e-10)
    assert float(spec.frobenius) == pytest.approx(float(dense.norm()), rel=1e-12)
    assert float(spec.erank) == pytest.approx(float(effective_rank(s_dense[:r])), rel=1e-10)


def test_batched_over_layers_equals_one_by_one():
    delta, x = _factors(9, 16, 8, batch=(3,))
    both = gradient_spectrum(delta, x)
    for i in range(3):
        one = gradient_spectrum(delta[i], x[i])
        assert torch.allclose(both.singular_values[i], one.singular_values, rtol=1e-12)
        assert float(both.erank[i]) == pytest.approx(float(one.erank), rel=1e-12)


def test_closed_forms():
    """One token: G = δxᵀ has σ = ‖δ‖‖x‖ and erank 1; orthogonal equal-norm tokens: erank T; G = 0: everything 0."""
    delta, x = _factors(1, 6, 4)
    spec = gradient_spectrum(delta, x)
    assert float(spec.nuclear) == pytest.approx(float(delta.norm() * x.norm()), rel=1e-12)
    assert float(spec.erank) == pytest.approx(1.0, rel=1e-12)
    eye = torch.eye(8, dtype=torch.float64)
    assert float(gradient_spectrum(eye[:5], eye[:5]).erank) == pytest.approx(5.0, rel=1e-12)
    zero = gradient_spectrum(torch.zeros(4, 3), torch.ones(4, 5))
    assert float(zero.nuclear) == 0.0 and float(zero.erank) == 0.0 and float(zero.frobenius) == 0.0
    assert outer_sum_singular_values(torch.ones(3, 2), torch.ones(3, 2)).dtype == torch.float64


@pytest.mark.parametrize("delta,x,param", [
    (torch.zeros(4), torch.zeros(4, 3), "'delta'"), (torch.zeros(4, 3), torch.zeros(5, 3), "'x'"),
    (torch.zeros(0, 3), torch.zeros(0, 3), "'x'"), (torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, 3), "'delta'"),
    (torch.zeros(4, 3), torch.full((4, 3), math.nan), "'x'"),
])
def test_bad_input_names_the_parameter(delta, x, param):
    with pytest.raises(ShapeError, match=param):
        gradient_spectrum(delta, x)


def test_a_shared_input_factor_gives_the_same_spectrum():
    """Maps reading the same input (W_Q, W_K, W_V) pass R of that input once: the same numbers as computing it."""
    from workbench.spectra.gradients import factor_r

    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 9, 16, generator=g, dtype=torch.float64)
    for m in (16, 8):
        delta = torch.randn(4, 9, m, generator=g, dtype=torch.float64)
        a, b = gradient_spectrum(delta, x), gradient_spectrum(delta, x, r_x=factor_r(x))
        for field in ("singular_values", "nuclear", "frobenius", "erank"):
            assert torch.equal(getattr(a, field), getattr(b, field))
