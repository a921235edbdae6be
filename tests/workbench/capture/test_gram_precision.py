"""Precision of the streamed co-moment: the fast path (float32 products, what ``gram_dtype="auto"`` uses when a site
keeps more rows than it is wide) and the exact path (float64) against numpy's dense SVD of the same rows, in float64.

The stated bounds of the fast path (see workbench/capture/accumulators.py):

* eigenvalues of the co-moment within ``LAMBDA_BOUND`` = 1e-6·λ_max, whatever the spectrum (4 decades, rank-deficient,
  rotated so that no direction is axis-aligned, a mean 1e4 times the spread as in Gemma's residual);
* singular values within ``SIGMA_BOUND`` = 1e-5·σ_max for every σ_i ≥ 0.01·σ_max of those rows, and for all of them on
  real SmolLM2-135M activations (``slow``; measured ≤ 2e-6·σ_max there).
"""

import re

import numpy as np
import pytest
import torch

import workbench
from workbench.capture.accumulators import Moments, _block_edges
from workbench.errors import ConfigError
from workbench.prompts import default_prompts
from workbench.spectra import singular_values_from_gram

LAMBDA_BOUND = 1e-6  # |Δλ| / λ_max, fast path
SIGMA_BOUND = 1e-5  # |Δσ| / σ_max, fast path (σ_i ≥ 0.01·σ_max on synthetic rows, all σ on real activations)
EXACT = 1e-12  # |Δσ| / σ_max, float64 path (float64 rounding of a Gram, well above 1e-15)


def _dense(rows: np.ndarray) -> np.ndarray:
    x = np.asarray(rows, dtype=np.float64)
    return np.linalg.svd(x - x.mean(0), compute_uv=False)


def _sigma_error(comoment: torch.Tensor, n: int, dense: np.ndarray, above: float = 0.0) -> float:
    """max |σ_streamed − σ_dense| / σ_max over the values with σ_dense ≥ above·σ_max."""
    s = singular_values_from_gram(comoment, n=n).numpy()
    keep = dense[: s.shape[0]] >= above * dense[0]
    return float(np.abs(s - dense[: s.shape[0]])[keep].max() / dense[0])


def _feed(moments: Moments, x: np.ndarray, rng, top: int = 97) -> None:
    start = 0
    while start < len(x):
        step = int(rng.integers(0, top))  # includes empty chunks
        moments.update(torch.from_numpy(x[start:start + step]))
        start += step


def _rows(rng, n: int, d: int, decades: float, offset: float, rank: int | None = None) -> np.ndarray:
    """float32 rows: spread over ``decades`` (zero beyond ``rank``) in randomly rotated directions, and a mean of
    ``offset`` in a few dimensions (Gemma's residual carries a mean of ~7,000 in one dimension)."""
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    scales = np.logspace(0, -decades, d)
    if rank is not None:
        scales[rank:] = 0.0
    mean = np.zeros(d)
    mean[: max(1, d // 50)] = offset
    return (mean + (rng.standard_normal((n, d)) * scales) @ q.T).astype(np.float32)


@pytest.mark.parametrize("offset", [0.0, 1e4])
@pytest.mark.parametrize(("d", "decades", "rank"), [(8, 2, None), (8, 4, None), (301, 3, None), (577, 4, None),
                                                     (301, 2, 60)])  # 301, 577: 2 and 5 uneven column blocks
def test_fast_path_within_bounds_of_dense_svd(d, decades, rank, offset):
    rng = np.random.default_rng(d + decades)
    x = _rows(rng, 2000, d, decades, offset, rank)
    fast = Moments(d, torch.device("cpu"), torch.float32)
    _feed(fast, x, rng, top=700)
    dense = _dense(x)
    assert fast.n == 2000 and fast.comoment.dtype == fast.mean.dtype == torch.float64
    np.testing.assert_allclose(fast.mean.numpy(), x.astype(np.float64).mean(0), rtol=1e-9, atol=1e-9 * dense[0])
    lam = torch.linalg.eigvalsh(fast.comoment).flip(0).numpy()
    assert float(np.abs(lam - dense**2).max() / dense[0] ** 2) <= LAMBDA_BOUND
    assert _sigma_error(fast.comoment, fast.n, dense, above=0.01) <= SIGMA_BOUND


@pytest.mark.parametrize("d", [301, 577])
def test_exact_path_blocked_product_equals_dense(d):
    """The float64 path computes the lower triangle by column blocks: symmetric, and float64-exact."""
    assert len(_block_edges(d, torch.device("cpu"))) > 2
    rng = np.random.default_rng(7)
    x = _rows(rng, 1200, d, 4, 3.0).astype(np.float64)
    exact = Moments(d, torch.device("cpu"))
    _feed(exact, x, rng, top=600)
    centred = x - x.mean(0)
    assert torch.equal(exact.comoment, exact.comoment.mT)
    np.testing.assert_allclose(exact.comoment.numpy(), centred.T @ centred, rtol=1e-9, atol=1e-10)
    assert _sigma_error(exact.comoment, exact.n, _dense(x)) <= EXACT


def test_fast_path_comoment_is_symmetric_and_stable_under_reads():
    rng = np.random.default_rng(3)
    x = _rows(rng, 400, 300, 2, 0.0)
    fast = Moments(300, torch.device("cpu"), torch.float32)
    fast.update(torch.from_numpy(x[:200]))
    first = fast.comoment.clone()
    assert torch.equal(fast.comoment, first)  # reading twice gives the same tensor values
    fast.update(torch.from_numpy(x[200:]))
    assert not torch.equal(fast.comoment, first)  # an update invalidates what was read
    assert torch.equal(fast.comoment, fast.comoment.mT)


TEXTS = ["The quick brown fox jumps over the lazy dog.", "hi", "Spectral analysis of a residual stream.",
         "Once upon a time there was a tiny model that only knew characters.", "42 is the answer"]


@pytest.mark.parametrize("center", [True, False])
def test_tiny_model_fast_capture_within_bound(tiny_model, center):
    cap = workbench.capture(tiny_model, TEXTS, sites="blocks.*.hook_resid_post", keep="full", batch_size=2,
                            gram_dtype="float32")
    for name in cap.sites:
        x = cap[name].full.double().numpy()
        assert x.shape[0] > 4 * x.shape[1]
        dense = _dense(x) if center else np.linalg.svd(x, compute_uv=False)
        s = cap[name].singular_values(center=center).numpy()
        assert float(np.abs(s - dense).max() / dense[0]) <= SIGMA_BOUND, name


def test_auto_is_float32_when_rows_outnumber_the_width_and_float64_otherwise(tiny_model):
    def run(texts, gram_dtype):
        return workbench.capture(tiny_model, texts, sites="blocks.0.hook_resid_post", gram_dtype=gram_dtype,
                                 batch_size=2)

    name = "blocks.0.hook_resid_post"
    many = {g: run(TEXTS, g) for g in ("auto", "float32", "float64")}
    assert many["auto"][name].n > tiny_model.d_model and many["auto"].meta["gram_dtype"] == "auto"
    assert torch.equal(many["auto"][name].comoment, many["float32"][name].comoment)
    assert not torch.equal(many["auto"][name].comoment, many["float64"][name].comoment)
    few = {g: run(["hello there", "a b c"], g) for g in ("auto", "float64")}  # 16 rows <= d = 32: rank-deficient
    assert few["auto"][name].n <= tiny_model.d_model
    assert torch.equal(few["auto"][name].comoment, few["float64"][name].comoment)
    assert few["auto"].singular_values()[name][-1] == 0.0  # rank n − 1 after centring: an exact zero, not noise


def test_gram_dtype_is_validated(tiny_model):
    with pytest.raises(ConfigError, match=re.escape("capture(): parameter 'gram_dtype' must be")):
        workbench.capture(tiny_model, ["hello"], sites="blocks.0.hook_resid_post", gram_dtype="float16")
    with pytest.raises(ConfigError, match="'product_dtype'"):
        Moments(4, torch.device("cpu"), torch.float16)


@pytest.mark.slow
def test_real_model_fast_and_exact_paths_against_dense_svd(real_model, all_threads):
    """SmolLM2-135M, 64 prompts, residual/attention/MLP outputs at several depths: the fast path within SIGMA_BOUND
    (all values), the float64 path within EXACT, of a dense float64 SVD of the very rows captured (keep="full")."""
    sites = ["blocks.0.hook_resid_post", "blocks.15.hook_resid_post", "blocks.29.hook_resid_post",
             "blocks.3.hook_attn_out", "blocks.29.hook_mlp_out"]
    texts = default_prompts()[:64]
    errors = {}
    for gram_dtype, bound in (("float32", SIGMA_BOUND), ("float64", EXACT)):
        cap = workbench.capture(real_model, texts, sites=sites, keep="full", gram_dtype=gram_dtype)
        for name in sites:
            dense = _dense(cap[name].full.numpy())
            errors[gram_dtype, name] = _sigma_error(cap[name].comoment, cap[name].n, dense)
            assert errors[gram_dtype, name] <= bound, (gram_dtype, name, errors[gram_dtype, name])
