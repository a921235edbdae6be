"""Tests of workbench.spectra.svd against numpy's dense SVD (an independent LAPACK path) and closed forms."""

import warnings

import numpy as np
import pytest
import torch

from workbench.errors import ConfigError, ShapeError
from workbench.spectra import (
    PrecisionWarning,
    batched_singular_values,
    singular_values,
    singular_values_from_gram,
)


def _np_svals(x: np.ndarray, center: bool = False) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if center:
        x = x - x.mean(axis=-2, keepdims=True)
    return np.linalg.svd(x, compute_uv=False)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------------------------------
# singular_values


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("shape", [(5, 7), (3, 4, 9, 6), (2, 12, 12), (1, 1)])
def test_singular_values_match_numpy(shape, center, device):
    x = torch.randn(*shape, dtype=torch.float64, generator=_gen(1)) + 0.5
    s = singular_values(x.to(device), center=center)
    assert s.shape == (*shape[:-2], min(shape[-2:]))
    assert s.dtype == torch.float64 and s.device == device
    np.testing.assert_allclose(s.cpu().numpy(), _np_svals(x.numpy(), center), rtol=1e-10, atol=1e-12)
    assert bool((s[..., :-1] >= s[..., 1:]).all()), "not descending"


def test_singular_values_center_removes_row_mean():
    x = torch.randn(40, 6, dtype=torch.float64, generator=_gen(2))
    offset = torch.randn(1, 6, dtype=torch.float64, generator=_gen(3)) * 100
    torch.testing.assert_close(singular_values(x + offset, center=True), singular_values(x, center=True))
    assert not torch.allclose(singular_values(x + offset), singular_values(x))


def test_singular_values_accepts_numpy_and_identity_closed_form():
    s = singular_values(np.eye(6) * 3.0)
    assert isinstance(s, torch.Tensor)
    torch.testing.assert_close(s, torch.full((6,), 3.0, dtype=torch.float64))


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
        (torch.int64, torch.float64),
        (torch.int32, torch.float64),
    ],
)
def test_singular_values_dtype_rule(dtype, expected):
    x = (torch.arange(12).reshape(4, 3) % 5).to(dtype)
    s = singular_values(x)
    assert s.dtype == expected
    np.testing.assert_allclose(s.double().numpy(), _np_svals(x.double().numpy()), rtol=1e-5)


@pytest.mark.parametrize("shape", [(5,), (), (0, 3), (3, 0), (2, 0, 4)])
def test_singular_values_rejects_bad_shapes(shape):
    with pytest.raises(ShapeError, match=r"singular_values\(\): parameter 'x'"):
        singular_values(torch.zeros(shape))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_singular_values_rejects_non_finite(bad):
    x = torch.ones(2, 3, 4)
    x[1, 2, 3] = bad
    with pytest.raises(ShapeError, match="'x'.*finite"):
        singular_values(x)


def test_singular_values_rejects_complex():
    with pytest.raises(ShapeError, match="'x'"):
        singular_values(torch.ones(3, 3, dtype=torch.complex64))


# --------------------------------------------------------------------------------------------------------------------
# singular_values_from_gram


def _assert_matches_dense(s_gram: torch.Tensor, s_dense: np.ndarray) -> None:
    """rtol 1e-6 on values above 1e-6·σ_max; the rest must be tiny (or exactly zero)."""
    s_gram = s_gram.cpu().numpy()
    assert s_gram.shape == s_dense.shape
    big = s_dense > 1e-6 * s_dense.max()
    np.testing.assert_allclose(s_gram[big], s_dense[big], rtol=1e-6)
    assert np.all(s_gram[~big] <= 1e-5 * s_dense.max())


@pytest.mark.parametrize("center", [False, True])
def test_gram_matches_dense_svd(center, device):
    x = torch.randn(1000, 64, generator=_gen(4)).float() * torch.linspace(0.01, 3, 64)
    xd = x.double()
    mean = xd.mean(dim=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a float64 Gram of zero-mean data must not warn
        s = singular_values_from_gram((xd.T @ xd).to(device), mean=mean.to(device) if center else None, n=1000,
                                      center=center)
    assert s.dtype == torch.float64 and s.shape == (64,) and s.device == device
    _assert_matches_dense(s, _np_svals(xd.numpy(), center))


def test_gram_large_mean_offset_centred_stable_formula():
    # mean 1e3, spread 1: the Gram is built from the centred co-moment (what a streaming accumulator should keep).
    x = (1e3 + torch.randn(1000, 64, generator=_gen(5))).float()
    xd = x.double()
    n, mean = xd.shape[0], xd.mean(dim=0)
    comoment = (xd - mean).T @ (xd - mean)
    gram = comoment + n * torch.outer(mean, mean)
    dense = _np_svals(xd.numpy(), center=True)
    with pytest.warns(PrecisionWarning, match="cancelled catastrophically"):
        s = singular_values_from_gram(gram, mean=mean, n=n, center=True)
    _assert_matches_dense(s, dense)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the co-moment itself, uncentred route: no cancellation, no warning
        _assert_matches_dense(singular_values_from_gram(comoment, n=n), dense)


def test_gram_batched_matches_dense(device):
    x = torch.randn(3, 50, 8, dtype=torch.float64, generator=_gen(6)) + 2.0
    gram = x.transpose(-1, -2) @ x
    s = singular_values_from_gram(gram.to(device), mean=x.mean(dim=-2).to(device), n=50, center=True)
    assert s.shape == (3, 8) and s.device == device
    _assert_matches_dense(s, _np_svals(x.numpy(), center=True))


@pytest.mark.parametrize("center", [False, True])
def test_gram_n_less_than_d_truncates(center):
    x = torch.randn(10, 64, dtype=torch.float64, generator=_gen(7))
    s = singular_values_from_gram(x.T @ x, mean=x.mean(dim=0) if center else None, n=10, center=center)
    assert s.shape == (10,)
    dense = _np_svals(x.numpy(), center)
    _assert_matches_dense(s, dense)
    if center:
        assert s[-1] == 0.0  # rank n - 1 after centring; the last value is below the floor


def test_gram_without_n_returns_d_values_and_zeros_below_floor():
    x = torch.randn(10, 64, dtype=torch.float64, generator=_gen(8))
    s = singular_values_from_gram(x.T @ x)
    assert s.shape == (64,)
    assert int((s > 0).sum()) == 10
    assert bool((s[10:] == 0.0).all())


@pytest.mark.parametrize("d", [2, 3, 16, 64])
def test_gram_rank_one_has_exactly_one_nonzero(d):
    for seed in range(20):
        v = torch.randn(d, dtype=torch.float64, generator=_gen(100 + seed))
        s = singular_values_from_gram(torch.outer(v, v))
        assert int((s != 0).sum()) == 1
        torch.testing.assert_close(s[0], v.norm())


def test_gram_float32_warns():
    x = torch.randn(100, 8, generator=_gen(9))
    with pytest.warns(PrecisionWarning, match="float64"):
        s = singular_values_from_gram(x.T @ x)
    assert s.dtype == torch.float64


def test_gram_float32_mean_warns():
    x = torch.randn(100, 8, dtype=torch.float64, generator=_gen(10))
    with pytest.warns(PrecisionWarning, match="mean"):
        singular_values_from_gram(x.T @ x, mean=x.mean(0).float(), n=100, center=True)


def test_gram_all_zero_gives_zeros_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = singular_values_from_gram(torch.zeros(4, 4, dtype=torch.float64), mean=torch.zeros(4, dtype=torch.float64),
                                      n=3, center=True)
    assert s.tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("shape", [(4,), (3, 4), (2, 5, 4), (0, 0)])
def test_gram_rejects_non_square(shape):
    with pytest.raises(ShapeError, match="'gram'"):
        singular_values_from_gram(torch.zeros(shape, dtype=torch.float64))


def test_gram_rejects_non_finite():
    g = torch.eye(3, dtype=torch.float64)
    g[0, 1] = float("nan")
    with pytest.raises(ShapeError, match="'gram'.*finite"):
        singular_values_from_gram(g)


@pytest.mark.parametrize(("kwargs", "missing"), [({"n": 5}, "'mean'"), ({"mean": torch.zeros(3)}, "'n'")])
def test_gram_center_needs_mean_and_n(kwargs, missing):
    with pytest.raises(ConfigError, match=missing):
        singular_values_from_gram(torch.eye(3, dtype=torch.float64), center=True, **kwargs)


def test_gram_rejects_mean_shape_mismatch():
    with pytest.raises(ShapeError, match="'mean'"):
        singular_values_from_gram(torch.eye(3, dtype=torch.float64), mean=torch.zeros(4), n=5, center=True)
    with pytest.raises(ShapeError, match="'mean'"):
        singular_values_from_gram(torch.eye(3, dtype=torch.float64).expand(2, 3, 3), mean=torch.zeros(3), n=5,
                                  center=True)


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_gram_rejects_bad_n(n):
    with pytest.raises(ConfigError, match="'n'"):
        singular_values_from_gram(torch.eye(3, dtype=torch.float64), n=n)


def test_gram_rejects_mean_without_center():
    with pytest.raises(ConfigError, match="'mean'"):
        singular_values_from_gram(torch.eye(3, dtype=torch.float64), mean=torch.zeros(3), n=5)


# --------------------------------------------------------------------------------------------------------------------
# batched_singular_values


def _mixed_list():
    g = _gen(11)
    shapes = [(5, 3), (8, 8), (5, 3), (2, 9), (8, 8), (5, 3), (1, 4)]
    mats = [torch.randn(*sh, dtype=torch.float64, generator=g) + 1.0 for sh in shapes]
    mats.append(torch.randn(5, 3, generator=g))  # same shape, other dtype: its own group
    mats.append(np.arange(6.0).reshape(3, 2))  # numpy accepted
    return mats


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("max_batch_bytes", [1 << 30, 1])
def test_batched_matches_per_matrix_numpy(center, max_batch_bytes, device):
    mats = _mixed_list()
    out = batched_singular_values([m.to(device) if isinstance(m, torch.Tensor) else m for m in mats], center=center,
                                  max_batch_bytes=max_batch_bytes)
    assert len(out) == len(mats)
    for m, s in zip(mats, out):
        m_np = m.numpy() if isinstance(m, torch.Tensor) else m
        assert s.ndim == 1 and s.shape[0] == min(m_np.shape)
        assert s.device == (device if isinstance(m, torch.Tensor) else torch.device("cpu"))  # numpy stays on the CPU
        np.testing.assert_allclose(s.double().cpu().numpy(), _np_svals(m_np.astype(np.float64), center), rtol=1e-5,
                                   atol=1e-6)
    assert out[-2].dtype == torch.float32 and out[0].dtype == torch.float64


def test_batched_empty():
    assert batched_singular_values([]) == []


def test_batched_errors_name_the_matrix():
    mats = [torch.ones(3, 3), torch.ones(3, 3), torch.ones(2, 2, 2)]
    with pytest.raises(ShapeError, match=r"'matrices\[2\]'"):
        batched_singular_values(mats)
    mats = [torch.ones(3, 3), torch.ones(3, 3)]
    mats[1][0, 0] = float("nan")
    with pytest.raises(ShapeError, match=r"'matrices\[1\]'.*finite"):
        batched_singular_values(mats)
    with pytest.raises(ShapeError, match=r"'matrices\[0\]'"):
        batched_singular_values([torch.ones(0, 3)])


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_batched_rejects_bad_max_batch_bytes(bad):
    with pytest.raises(ConfigError, match="'max_batch_bytes'"):
        batched_singular_values([torch.ones(2, 2)], max_batch_bytes=bad)
