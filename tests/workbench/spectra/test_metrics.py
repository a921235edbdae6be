"""Tests of workbench.spectra.metrics against closed forms and independent numpy implementations."""

import math

import numpy as np
import pytest
import torch

from workbench.errors import ConfigError, ShapeError
from workbench.spectra import (
    condition_number,
    effective_rank,
    nuclear_norm,
    numerical_rank,
    participation_ratio,
    rankme,
    singular_values,
    spectral_entropy,
    stable_rank,
)

ALL = [
    effective_rank,
    rankme,
    stable_rank,
    nuclear_norm,
    participation_ratio,
    numerical_rank,
    spectral_entropy,
    condition_number,
]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _orthogonal(n: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=_gen(seed)))
    return q * torch.sign(torch.diagonal(r))


def _low_rank(n: int, d: int, rank: int, seed: int) -> torch.Tensor:
    g = _gen(seed)
    return torch.randn(n, rank, dtype=torch.float64, generator=g) @ torch.randn(rank, d, dtype=torch.float64,
                                                                                   generator=g)


# --------------------------------------------------------------------------------------------------------------------
# effective rank and friends: closed forms


@pytest.mark.parametrize("n", [1, 2, 7, 64, 300])
def test_effective_rank_of_identity_is_n(n):
    e = effective_rank(singular_values(torch.eye(n, dtype=torch.float64)))
    assert e.ndim == 0
    assert e.item() == pytest.approx(n, rel=1e-12)


def test_effective_rank_of_rank_one_is_one():
    x = _low_rank(30, 20, 1, seed=1)
    assert effective_rank(singular_values(x)).item() == pytest.approx(1.0, abs=1e-6)
    assert effective_rank(torch.tensor([5.0, 0.0, 0.0])).item() == 1.0


def test_effective_rank_scale_and_rotation_invariant():
    x = torch.randn(40, 25, dtype=torch.float64, generator=_gen(2)) * torch.linspace(0.1, 5, 25, dtype=torch.float64)
    base = effective_rank(singular_values(x)).item()
    for scale in (1e-3, 1e3):
        assert effective_rank(singular_values(x * scale)).item() == pytest.approx(base, rel=1e-10)
    rotated = _orthogonal(40, 3) @ x @ _orthogonal(25, 4)
    assert effective_rank(singular_values(rotated)).item() == pytest.approx(base, rel=1e-10)
    assert not math.isclose(base, 25.0, rel_tol=1e-3)  # non-trivial spectrum, so invariance is a real check


@pytest.mark.parametrize(("rank", "seed"), [(1, 5), (3, 6), (10, 7), (20, 8)])
def test_effective_rank_between_one_and_rank(rank, seed):
    s = singular_values(_low_rank(50, 20, rank, seed))
    e = effective_rank(s).item()
    assert 1.0 - 1e-9 <= e <= rank + 1e-6


def _verl_numpy(s: np.ndarray, eps: float) -> float:
    """VERL's reference computation, written out independently in numpy."""
    p = s / (np.sum(s) + eps)
    return float(np.exp(-np.sum(p * np.log(p + eps))))


def test_effective_rank_verl_eps_matches_numpy(device):
    s = singular_values(torch.randn(30, 12, dtype=torch.float64, generator=_gen(9)).to(device), center=True)
    assert effective_rank(s, eps=1e-8).device == device
    got = effective_rank(s, eps=1e-8).item()
    assert got == pytest.approx(_verl_numpy(s.cpu().numpy(), 1e-8), rel=1e-13)
    s_tiny = torch.tensor([1e-7, 3e-8, 1e-9], dtype=torch.float64)  # where eps visibly matters
    got_tiny = effective_rank(s_tiny, eps=1e-8).item()
    assert got_tiny == pytest.approx(_verl_numpy(s_tiny.cpu().numpy(), 1e-8), rel=1e-13)
    assert not math.isclose(got_tiny, effective_rank(s_tiny).item(), rel_tol=1e-3)


def test_rankme_closed_form_and_differs_from_effective_rank():
    s = torch.ones(100, dtype=torch.float64)
    assert rankme(s).item() == pytest.approx(100.0036, abs=1e-3)
    assert effective_rank(s).item() == pytest.approx(100.0, abs=1e-10)
    assert rankme(s).item() - effective_rank(s).item() > 3e-3
    p = np.full(100, 0.01) + 1e-7
    assert rankme(s).item() == pytest.approx(float(np.exp(-np.sum(p * np.log(p)))), rel=1e-13)
    assert rankme(s, eps=0.0).item() == pytest.approx(100.0, abs=1e-10)


def test_small_vector_closed_forms(device):
    s = torch.tensor([3.0, 4.0], dtype=torch.float64, device=device)
    assert stable_rank(s).item() == pytest.approx(25.0 / 16.0)
    assert nuclear_norm(s).item() == 7.0
    assert participation_ratio(s).item() == pytest.approx(25.0**2 / (81.0 + 256.0))
    assert condition_number(s).item() == pytest.approx(4.0 / 3.0)
    h = -(3 / 7 * math.log(3 / 7) + 4 / 7 * math.log(4 / 7))
    assert spectral_entropy(s).item() == pytest.approx(h)
    assert effective_rank(s).item() == pytest.approx(math.exp(h))
    s3 = torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64, device=device)
    assert stable_rank(s3).item() == pytest.approx(9.0 / 4.0)
    assert participation_ratio(s3).item() == pytest.approx(81.0 / 33.0)
    assert condition_number(torch.tensor([0.0, 2.0], device=device)).item() == math.inf


def test_participation_ratio_is_eigenvalue_pr_of_gram(device):
    x = torch.randn(60, 10, dtype=torch.float64, generator=_gen(10)).to(device)
    lam = np.linalg.eigvalsh((x.T @ x).cpu().numpy())
    assert participation_ratio(singular_values(x)).item() == pytest.approx(lam.sum() ** 2 / (lam**2).sum(), rel=1e-10)


def test_order_does_not_matter():
    s = torch.tensor([0.5, 3.0, 0.0, 1.0, 2.0], dtype=torch.float64)
    perm = s[torch.tensor([3, 0, 4, 2, 1])]
    for fn in ALL:
        torch.testing.assert_close(fn(perm), fn(s), msg=fn.__name__)


def test_no_overflow_for_large_values():
    s = torch.tensor([3e30, 4e30], dtype=torch.float32)
    assert stable_rank(s).item() == pytest.approx(25.0 / 16.0, rel=1e-5)
    assert participation_ratio(s).item() == pytest.approx(625.0 / 337.0, rel=1e-5)


# --------------------------------------------------------------------------------------------------------------------
# numerical rank


def test_numerical_rank_matches_numpy_matrix_rank():
    x = _low_rank(50, 20, 3, seed=11)
    s = singular_values(x)
    r = numerical_rank(s, n_rows=50)
    assert r.dtype == torch.int64 and r.ndim == 0
    assert r.item() == 3 == np.linalg.matrix_rank(x.cpu().numpy())
    assert numerical_rank(s).item() == 3
    assert numerical_rank(s, tol=0.0).item() == 20  # rounding noise is positive


def test_numerical_rank_n_rows_sets_default_tol():
    # a 1000 x 2 matrix with singular values 1 and 1e-14: numpy's tol is 1 * 1000 * eps = 2.2e-13, so rank 1
    x = np.zeros((1000, 2))
    x[0, 0], x[1, 1] = 1.0, 1e-14
    s = singular_values(x)
    assert numerical_rank(s, n_rows=1000).item() == 1 == np.linalg.matrix_rank(x)
    assert numerical_rank(s).item() == 2  # tol = 1 * k * eps = 4.4e-16


def test_numerical_rank_explicit_tol_and_batch():
    s = torch.tensor([[5.0, 1.0, 0.1], [0.2, 0.3, 0.0]], dtype=torch.float64)
    assert numerical_rank(s, tol=0.5).tolist() == [2, 0]
    assert numerical_rank(s).tolist() == [3, 2]


@pytest.mark.parametrize(("kwargs", "name"), [({"tol": -1.0}, "'tol'"), ({"tol": math.nan}, "'tol'"),
                                              ({"n_rows": 0}, "'n_rows'"), ({"n_rows": 2.0}, "'n_rows'")])
def test_numerical_rank_rejects_bad_keywords(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        numerical_rank(torch.ones(3), **kwargs)


@pytest.mark.parametrize("fn", [effective_rank, rankme])
@pytest.mark.parametrize("eps", [-1e-8, math.inf, "1e-8"])
def test_eps_rejected(fn, eps):
    with pytest.raises(ConfigError, match="'eps'"):
        fn(torch.ones(3), eps=eps)


# --------------------------------------------------------------------------------------------------------------------
# batching and edge rows


@pytest.mark.parametrize("fn", ALL)
def test_batched_equals_loop(fn):
    s = torch.rand(5, 7, 6, dtype=torch.float64, generator=_gen(12)) * 10
    out = fn(s)
    assert out.shape == (5, 7)
    for i in range(5):
        for j in range(7):
            assert torch.equal(out[i, j], fn(s[i, j])) or torch.allclose(out[i, j], fn(s[i, j]), rtol=1e-14), (i, j)


EXPECTED_ZERO = {
    effective_rank: 0.0,
    rankme: 0.0,
    stable_rank: 0.0,
    participation_ratio: 0.0,
    numerical_rank: 0,
    nuclear_norm: 0.0,
    spectral_entropy: math.nan,
    condition_number: math.nan,
}


@pytest.mark.parametrize("fn", ALL)
def test_all_zero_row_in_batch(fn):
    s = torch.rand(4, 5, dtype=torch.float64, generator=_gen(13)) + 0.1
    clean = fn(s)
    s_with_zero = s.clone()
    s_with_zero[2] = 0.0
    out = fn(s_with_zero)
    expected = EXPECTED_ZERO[fn]
    if math.isnan(expected):
        assert math.isnan(out[2].item())
    else:
        assert out[2].item() == expected
    keep = torch.tensor([0, 1, 3])
    assert torch.equal(out[keep], clean[keep])
    alone = fn(torch.zeros(5))
    assert alone.ndim == 0
    assert (math.isnan(alone.item()) if math.isnan(expected) else alone.item() == expected)


@pytest.mark.parametrize("fn", [effective_rank])
def test_verl_eps_all_zero_is_zero(fn):
    assert fn(torch.zeros(3), eps=1e-8).item() == 0.0


# --------------------------------------------------------------------------------------------------------------------
# dtypes and errors


@pytest.mark.parametrize("fn", ALL)
def test_dtypes(fn):
    s32 = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float32)
    expected = torch.int64 if fn is numerical_rank else torch.float32
    assert fn(s32).dtype == expected
    out_int = fn(torch.tensor([1, 2, 3]))
    assert out_int.dtype == (torch.int64 if fn is numerical_rank else torch.float64)
    torch.testing.assert_close(out_int, fn(np.array([1.0, 2.0, 3.0])))  # numpy accepted, float64


@pytest.mark.parametrize("fn", ALL)
@pytest.mark.parametrize(
    "bad",
    [
        torch.tensor(1.0),
        torch.zeros(0),
        torch.zeros(3, 0),
        torch.tensor([1.0, math.nan]),
        torch.tensor([[1.0, 2.0], [math.inf, 1.0]]),
        torch.tensor([1.0, -0.5]),
        torch.ones(2, dtype=torch.complex64),
    ],
    ids=["0-d", "empty", "empty-last-dim", "nan", "inf", "negative", "complex"],
)
def test_rejects_bad_spectra(fn, bad):
    with pytest.raises(ShapeError, match=rf"{fn.__name__}\(\): parameter 's'"):
        fn(bad)
