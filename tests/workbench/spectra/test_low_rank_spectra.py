"""Tests of workbench.spectra.low_rank against explicit truncate-and-multiply computations (numpy/scipy, float64), an
independent transcription of the SVD-LLM reference, optimality checks and the rank-deficient case."""

import numpy as np
import pytest
import scipy.linalg
import torch

from workbench.capture.accumulators import Moments
from workbench.errors import ConfigError, ShapeError
from workbench.spectra.low_rank import (
    TruncationErrors,
    parameter_fraction,
    rank_for_budget,
    second_moment,
    truncate,
    truncation_errors,
)

# (B, d_in, d_out): d_in < d_out, d_in > d_out, square, B = 1 and B > 1
SHAPES = [(1, 6, 4), (3, 4, 9), (2, 12, 12), (4, 9, 3), (2, 16, 10)]
TOL = 1e-9


def _calibration(rng, n, d_in, spread=1.0):
    """Rows x [n, d_in] with unequal feature scales and a mean, like activations."""
    scales = np.exp(spread * rng.standard_normal(d_in))
    return rng.standard_normal((n, d_in)) * scales + 0.5 * rng.standard_normal(d_in)


def _case(seed, b, d_in, d_out, n=None):
    """(W [b, d_in, d_out], X [b, n, d_in], C = XᵀX/n [b, d_in, d_in]) in numpy float64."""
    rng = np.random.default_rng(seed)
    n = 3 * d_in if n is None else n
    w = rng.standard_normal((b, d_in, d_out))
    x = np.stack([_calibration(rng, n, d_in) for _ in range(b)])
    return w, x, np.einsum("bni,bnj->bij", x, x) / n


def _sqrtm(c):
    root = scipy.linalg.sqrtm(c)
    return np.real(root)


def _best_rank(m, r):
    """Eckart–Young: the best rank-r approximation of ``m`` in Frobenius norm, from its SVD."""
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    return (u[:, :r] * s[:r]) @ vt[:r]


def _explicit(w, c, method):
    """Relative errors for r = 0..k by building each W_r and multiplying: ‖C^{1/2}(W − W_r)‖_F / ‖C^{1/2} W‖_F."""
    root = _sqrtm(c)
    k = min(w.shape)
    out = []
    for r in range(k + 1):
        w_r = _best_rank(w, r) if method == "plain" else np.linalg.solve(root, _best_rank(root @ w, r))
        out.append(np.linalg.norm(root @ (w - w_r)) / np.linalg.norm(root @ w))
    return np.array(out)


def _explicit_from_rows(w, x, method):
    """The same from calibration rows X (exact for rank-deficient C = XᵀX/n): ‖X(W − W_r)‖_F / ‖X W‖_F, with the
    whitened W_r = X⁺ (X W)_r (Eckart–Young on X W, mapped back by the pseudo-inverse)."""
    k = min(w.shape)
    xw = x @ w
    out = []
    for r in range(k + 1):
        w_r = _best_rank(w, r) if method == "plain" else np.linalg.pinv(x) @ _best_rank(xw, r)
        out.append(np.linalg.norm(x @ (w - w_r)) / np.linalg.norm(xw))
    return np.array(out)


def _calibration_error(w, x, left, right):
    return np.linalg.norm(x @ (w - left @ right)) / np.linalg.norm(x @ w)


# ---------------------------------------------------------------------------------------------------------------------
# 1. the spectral shortcut equals truncate-and-multiply


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_spectral_errors_equal_explicit_truncation_for_every_rank(shape):
    w, _, c = _case(1, *shape)
    errs = truncation_errors(torch.from_numpy(w), torch.from_numpy(c))
    k = min(shape[1:])
    assert errs.plain.shape == errs.whitened.shape == (shape[0], k + 1) and errs.total.shape == (shape[0],)
    for i in range(shape[0]):
        for method in ("plain", "whitened"):
            np.testing.assert_allclose(getattr(errs, method)[i].numpy(), _explicit(w[i], c[i], method), atol=TOL)
        np.testing.assert_allclose(float(errs.total[i]), np.linalg.norm(_sqrtm(c[i]) @ w[i]), rtol=TOL)
    assert (errs.whitened[:, 0] == 1).all() and (errs.plain[:, 0] == 1).all()
    assert (errs.whitened[:, -1] == 0).all() and (errs.plain[:, -1] == 0).all()


def test_unbatched_input_gives_unbatched_errors_and_float32_is_computed_in_float64():
    w, _, c = _case(2, 1, 7, 5)
    errs = truncation_errors(torch.from_numpy(w[0]).float(), torch.from_numpy(c[0]).float())
    assert errs.plain.shape == (6,) and errs.total.shape == () and errs.whitened.dtype == torch.float64
    batched = truncation_errors(torch.from_numpy(w[0]).float()[None], torch.from_numpy(c[0]).float()[None])
    torch.testing.assert_close(errs.whitened, batched.whitened[0], rtol=0, atol=1e-14)


def test_errors_are_non_increasing_in_rank_and_whitened_never_above_plain():
    for seed, shape in enumerate(SHAPES):
        w, _, c = _case(10 + seed, *shape)
        errs = truncation_errors(torch.from_numpy(w), torch.from_numpy(c))
        assert (errs.plain.diff(dim=-1) <= 0).all() and (errs.whitened.diff(dim=-1) <= 0).all()
        assert (errs.whitened <= errs.plain + 1e-12).all()


# ---------------------------------------------------------------------------------------------------------------------
# 2. truncate achieves the predicted error


@pytest.mark.parametrize("method", ["plain", "whitened"])
@pytest.mark.parametrize("shape", SHAPES[:4], ids=str)
def test_truncate_factors_achieve_the_predicted_error(shape, method):
    w, x, c = _case(3, *shape)
    errs = getattr(truncation_errors(torch.from_numpy(w), torch.from_numpy(c)), method)
    k = min(shape[1:])
    for r in range(k + 1):
        left, right = truncate(torch.from_numpy(w), torch.from_numpy(c), r, method)
        assert left.shape == (shape[0], shape[1], r) and right.shape == (shape[0], r, shape[2])
        assert left.dtype == right.dtype == torch.float64
        for i in range(shape[0]):
            got = _calibration_error(w[i], x[i], left[i].numpy(), right[i].numpy())
            assert abs(got - float(errs[i, r])) < TOL, (r, i, got, float(errs[i, r]))


def test_truncate_at_full_rank_reproduces_the_weight():
    w, _, c = _case(4, 1, 6, 8)
    for method in ("plain", "whitened"):
        left, right = truncate(torch.from_numpy(w[0]), torch.from_numpy(c[0]), 6, method=method)
        np.testing.assert_allclose((left @ right).numpy(), w[0], atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# 3. whitened truncation is optimal


def test_no_random_or_descended_rank_r_matrix_beats_whitened_truncation():
    rng = np.random.default_rng(5)
    w, x, c = _case(5, 1, 6, 5)
    w, x, c = w[0], x[0], c[0]
    r = 2
    best = float(truncation_errors(torch.from_numpy(w), torch.from_numpy(c)).whitened[r])
    left, right = (t.numpy() for t in truncate(torch.from_numpy(w), torch.from_numpy(c), r))
    assert abs(_calibration_error(w, x, left, right) - best) < TOL

    # a few thousand random rank-2 matrices, at a least-squares scale so they are not hopeless
    for _ in range(3000):
        a, b = rng.standard_normal((6, r)), rng.standard_normal((r, 5))
        m = a @ b
        scale = np.sum((x @ m) * (x @ w)) / np.sum((x @ m) ** 2)
        assert _calibration_error(w, x, scale * a, b) >= best - TOL
    # random perturbations of the optimum's factors
    for eps in (1e-1, 1e-3, 1e-5):
        for _ in range(300):
            la = left + eps * rng.standard_normal(left.shape)
            rb = right + eps * rng.standard_normal(right.shape)
            assert _calibration_error(w, x, la, rb) >= best - TOL
    # L-BFGS on the factors from random starts reaches the optimum but never goes below it
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    reached = []
    for seed in range(4):
        gen = torch.Generator().manual_seed(seed)
        a = torch.randn(6, r, dtype=torch.float64, generator=gen, requires_grad=True)
        b = torch.randn(r, 5, dtype=torch.float64, generator=gen, requires_grad=True)
        opt = torch.optim.LBFGS([a, b], max_iter=300, tolerance_grad=1e-12, tolerance_change=0)

        def closure():
            opt.zero_grad()
            loss = (xt @ (wt - a @ b)).square().sum()
            loss.backward()
            return loss

        opt.step(closure)
        reached.append(_calibration_error(w, x, a.detach().numpy(), b.detach().numpy()))
    assert min(reached) >= best - TOL
    assert max(reached) < best + 1e-6  # a real competitor: every start descends to the same optimum


# ---------------------------------------------------------------------------------------------------------------------
# 4. C = c·I: plain and whitened coincide


@pytest.mark.parametrize("scale", [1e-4, 1.0, 7.5, 1e5])
def test_plain_and_whitened_coincide_for_isotropic_inputs(scale):
    rng = np.random.default_rng(6)
    w = torch.from_numpy(rng.standard_normal((3, 8, 5)))
    c = scale * torch.eye(8, dtype=torch.float64).expand(3, 8, 8)
    errs = truncation_errors(w, c)
    torch.testing.assert_close(errs.plain, errs.whitened, rtol=0, atol=1e-12)
    torch.testing.assert_close(errs.total, scale ** 0.5 * torch.linalg.matrix_norm(w), rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------------------------------------------------
# 5. parity with the SVD-LLM reference


def _svdllm_reference(w_hf, x, r):
    """Independent numpy transcription of AIoT-MLSys-Lab/SVD-LLM (commit 1c1009a), SVDLLM.py: ``profle_svdllm`` (the
    raw sum XᵀX over calibration rows, Cholesky in float64, on failure ``+= (−λ_min + 1e-6)·I`` and again) and
    ``whitening`` (``inv`` of the Cholesky factor, ``svd(W @ S)``, ``svd_u = U_r Σ_r^{1/2}``, ``svd_v = Σ_r^{1/2} V_rᵀ
    S⁻¹``). HF orientation: ``w_hf`` is ``[out, in]``, ``y = x w_hfᵀ``. Returns W' = svd_u @ svd_v."""
    raw = x.T @ x
    try:
        scaling = np.linalg.cholesky(raw)
    except np.linalg.LinAlgError:
        raw = raw + (-np.linalg.eigvalsh(raw)[0] + 1e-6) * np.eye(raw.shape[0])
        scaling = np.linalg.cholesky(raw)
    scaling_inv = np.linalg.inv(scaling)
    u, s, vt = np.linalg.svd(w_hf @ scaling, full_matrices=False)
    sqrt_sigma = np.diag(np.sqrt(s[:r]))
    svd_u = u[:, :r] @ sqrt_sigma
    svd_v = sqrt_sigma @ (vt[:r] @ scaling_inv)
    return svd_u @ svd_v


@pytest.mark.parametrize("d_in,d_out", [(10, 6), (6, 10), (12, 12)])
def test_whitened_truncation_matches_the_svd_llm_reference(d_in, d_out):
    w, x, c = _case(7, 1, d_in, d_out, n=4 * d_in)
    w, x, c = w[0], x[0], c[0]
    errs = truncation_errors(torch.from_numpy(w), torch.from_numpy(c)).whitened
    for ratio in (0.2, 0.4, 0.6, 0.8):
        r = int(d_out * d_in * ratio / (d_out + d_in))  # the reference's num_s_after_trunc
        assert r == max(q for q in range(min(d_in, d_out) + 1) if parameter_fraction(q, d_in, d_out) <= ratio)
        ref = _svdllm_reference(w.T, x, r).T  # back to TransformerLens orientation
        left, right = truncate(torch.from_numpy(w), torch.from_numpy(c), r, "whitened")
        np.testing.assert_allclose((left @ right).numpy(), ref, atol=1e-8 * np.abs(w).max())
        assert abs(_calibration_error(w, x, ref, np.eye(d_out)) - float(errs[r])) < 1e-8


# ---------------------------------------------------------------------------------------------------------------------
# 6. rank-deficient moments (fewer calibration rows than d_in)


@pytest.mark.parametrize("n,d_in,d_out", [(4, 10, 7), (3, 6, 9), (5, 12, 12)])
def test_rank_deficient_moment_errors_are_exact_and_truncation_meets_them(n, d_in, d_out):
    rng = np.random.default_rng(8)
    x = _calibration(rng, n, d_in)
    w = rng.standard_normal((d_in, d_out))
    c = x.T @ x / n
    errs = truncation_errors(torch.from_numpy(w), torch.from_numpy(c))
    for method in ("plain", "whitened"):
        np.testing.assert_allclose(getattr(errs, method).numpy(), _explicit_from_rows(w, x, method), atol=TOL)
    assert (errs.whitened[n:] < 1e-12).all()  # rank(C) = n suffices on the calibration data
    for method in ("plain", "whitened"):
        for r in range(min(d_in, d_out) + 1):
            left, right = (t.numpy() for t in truncate(torch.from_numpy(w), torch.from_numpy(c), r, method))
            assert np.isfinite(left).all() and np.isfinite(right).all()
            assert abs(_calibration_error(w, x, left, right) - float(getattr(errs, method)[r])) < TOL


def test_inputs_outside_the_calibration_span_keep_their_output_projected_on_the_kept_subspace():
    """Documents the null-space behaviour: an input C never excites is mapped to x W V_r V_rᵀ (not to 0, as the
    pseudo-inverse solution X⁺(XW)_r would); floor = 1 gives plain truncation; a floor below C's smallest relative
    eigenvalue changes nothing."""
    rng = np.random.default_rng(9)
    n, d_in, d_out, r = 4, 10, 7, 2
    x = _calibration(rng, n, d_in)
    w = rng.standard_normal((d_in, d_out))
    c = x.T @ x / n
    left, right = (t.numpy() for t in truncate(torch.from_numpy(w), torch.from_numpy(c), r))
    null = rng.standard_normal((5, d_in)) @ (np.eye(d_in) - np.linalg.pinv(x) @ x)  # rows in the null space of C
    np.testing.assert_allclose(null @ c, 0, atol=1e-10)
    np.testing.assert_allclose(null @ left @ right, (null @ w) @ right.T @ right, atol=1e-10)
    assert np.linalg.norm(null @ left @ right) > 0.1 * np.linalg.norm(null @ w)
    p, s, qt = np.linalg.svd(x @ w)
    pinv_solution = np.linalg.pinv(x) @ ((p[:, :r] * s[:r]) @ qt[:r])
    np.testing.assert_allclose(null @ pinv_solution, 0, atol=1e-10)

    plain = truncate(torch.from_numpy(w), torch.from_numpy(c), r, "plain")
    lifted = truncate(torch.from_numpy(w), torch.from_numpy(c), r, "whitened", floor=1.0)
    np.testing.assert_allclose((lifted[0] @ lifted[1]).numpy(), (plain[0] @ plain[1]).numpy(), atol=1e-10)
    tiny = truncate(torch.from_numpy(w), torch.from_numpy(c), r, floor=1e-12)
    np.testing.assert_allclose((tiny[0] @ tiny[1]).numpy(), left @ right, atol=1e-6)

    w_full, _, c_full = _case(10, 1, 6, 5)
    lam = np.linalg.eigvalsh(c_full[0])
    below = 0.5 * lam[0] / lam[-1]
    a = truncate(torch.from_numpy(w_full[0]), torch.from_numpy(c_full[0]), 2, floor=below)
    b = truncate(torch.from_numpy(w_full[0]), torch.from_numpy(c_full[0]), 2)
    torch.testing.assert_close(a[0] @ a[1], b[0] @ b[1], rtol=0, atol=1e-12)


def test_moment_psd_only_to_rounding_is_accepted():
    rng = np.random.default_rng(11)
    x = _calibration(rng, 3, 8)
    c = x.T @ x / 3
    v = np.linalg.eigh(c)[1][:, 0]
    c = c - 1e-8 * np.linalg.eigvalsh(c)[-1] * np.outer(v, v)  # a null eigenvalue pushed slightly negative
    errs = truncation_errors(torch.from_numpy(rng.standard_normal((8, 5))), torch.from_numpy(c))
    assert torch.isfinite(errs.whitened).all() and errs.whitened[0] == 1


# ---------------------------------------------------------------------------------------------------------------------
# second_moment, rank_for_budget, parameter_fraction


def test_second_moment_from_streamed_moments_equals_the_uncentred_gram():
    rng = np.random.default_rng(12)
    rows = torch.from_numpy(_calibration(rng, 300, 9) + 3.0)
    m = Moments(9, torch.device("cpu"))
    for chunk in rows.split(64):
        m.update(chunk)
    got = second_moment(m.mean, m.comoment, m.n)
    torch.testing.assert_close(got, rows.T @ rows / 300, rtol=1e-12, atol=1e-12)
    batched = second_moment(m.mean.expand(2, 9), m.comoment.expand(2, 9, 9), m.n)
    assert batched.shape == (2, 9, 9) and batched.dtype == torch.float64


def test_rank_for_budget_is_the_first_rank_within_budget():
    w, _, c = _case(13, 3, 10, 8)
    errs = truncation_errors(torch.from_numpy(w), torch.from_numpy(c)).whitened
    for budget in (0.0, 0.05, 0.3, 0.7, 1.0):
        got = rank_for_budget(errs, budget)
        assert got.dtype == torch.int64 and got.shape == (3,)
        for i in range(3):
            assert int(got[i]) == min(r for r in range(9) if float(errs[i, r]) <= budget)
    assert (rank_for_budget(errs, 1.0) == 0).all() and (rank_for_budget(errs, 0.0) == 8).all()
    assert rank_for_budget(errs[0], 0.3).shape == ()


def test_parameter_fraction():
    assert parameter_fraction(0, 4, 6) == 0
    assert parameter_fraction(4, 4, 6) == pytest.approx(4 * 10 / 24)
    assert parameter_fraction(64, 576, 1536) == pytest.approx(64 * 2112 / (576 * 1536))


def test_zero_weight_has_zero_errors_and_runs_on_meta():
    errs = truncation_errors(torch.zeros(5, 3, dtype=torch.float64), torch.eye(5, dtype=torch.float64))
    assert (errs.plain == 0).all() and (errs.whitened == 0).all() and errs.total == 0
    meta = truncation_errors(torch.empty(2, 8, 4, device="meta"), torch.empty(2, 8, 8, device="meta"))
    assert isinstance(meta, TruncationErrors) and meta.whitened.shape == (2, 5) and meta.total.device.type == "meta"


# ---------------------------------------------------------------------------------------------------------------------
# 7. bad inputs


def _w_c(d_in=6, d_out=4):
    w, _, c = _case(14, 1, d_in, d_out)
    return torch.from_numpy(w[0]), torch.from_numpy(c[0])


def test_bad_shapes_and_values_raise_shape_errors():
    w, c = _w_c()
    bad = [
        (w, c[:5, :5], "moments"),  # d_in disagrees
        (w, c[:, :5], "moments"),  # not square
        (w[None].expand(2, 6, 4), c[None].expand(3, 6, 6), "moments"),  # leading dims disagree
        (w[0], c, "weights"),  # 1-D weight
        (w, c + torch.triu(torch.ones(6, 6, dtype=torch.float64), 1), "moments"),  # not symmetric
        (w, c - 2 * torch.linalg.eigvalsh(c)[-1] * torch.eye(6, dtype=torch.float64), "moments"),  # indefinite
        (w.masked_fill(torch.eye(6, 4, dtype=torch.bool), float("nan")), c, "weights"),
        (w, c.to(torch.complex128), "moments"),
        (torch.empty(6, 0, dtype=torch.float64), c, "weights"),
    ]
    for weights, moments, name in bad:
        with pytest.raises(ShapeError, match=f"truncation_errors\\(\\): parameter '{name}'"):
            truncation_errors(weights, moments)
    with pytest.raises(ShapeError, match="parameter 'moment'"):
        truncate(w, c[:5, :5], 2)
    with pytest.raises(ShapeError, match="parameter 'comoment'"):
        second_moment(torch.zeros(4), torch.zeros(5, 5), 10)
    with pytest.raises(ShapeError, match="parameter 'errors'"):
        rank_for_budget(torch.zeros(3, 0), 0.1)


def test_bad_parameters_raise_config_errors():
    w, c = _w_c()
    cases = [
        (lambda: truncate(w, c, 2, method="svd"), "method"),
        (lambda: truncate(w, c, -1), "rank"),
        (lambda: truncate(w, c, 5), "rank"),
        (lambda: truncate(w, c, 2.0), "rank"),
        (lambda: truncate(w, c, 2, floor=1.5), "floor"),
        (lambda: truncate(w, c, 2, floor=float("nan")), "floor"),
        (lambda: truncate(w, c, 2, "plain", floor=0.1), "floor"),
        (lambda: rank_for_budget(torch.tensor([1.0, 0.5, 0.0]), 1.5), "budget"),
        (lambda: rank_for_budget(torch.tensor([1.0, 0.5, 0.0]), -0.1), "budget"),
        (lambda: rank_for_budget(torch.tensor([1.0, 0.5, 0.2]), 0.1), "budget"),  # never reached
        (lambda: second_moment(torch.zeros(4), torch.zeros(4, 4), 0), "n"),
        (lambda: parameter_fraction(5, 4, 6), "rank"),
    ]
    for fn, name in cases:
        with pytest.raises(ConfigError, match=f"parameter '{name}'"):
            fn()


def test_a_precomputed_whitening_factor_gives_the_same_errors_and_factors():
    """One factor per site, shared by the matrices that read it (W_Q/W_K/W_V), changes nothing but the cost."""
    from workbench.spectra.low_rank import whitening_factor

    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 12, generator=g, dtype=torch.float64)
    c = (x.T @ x / 40).expand(2, 12, 12)
    w = torch.randn(2, 12, 7, generator=g, dtype=torch.float64)
    f = whitening_factor(c)
    torch.testing.assert_close(f.mT @ f, c, rtol=1e-10, atol=1e-12)
    plain, shared = truncation_errors(w, c), truncation_errors(w, c, factor=f)
    torch.testing.assert_close(shared.whitened, plain.whitened, rtol=0, atol=1e-12)
    torch.testing.assert_close(shared.plain, plain.plain, rtol=0, atol=1e-12)
    for a, b in zip(truncate(w, c, 3, "whitened", factor=f), truncate(w, c, 3, "whitened"), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    with pytest.raises(ShapeError, match="'factor'"):
        truncation_errors(w, c, factor=f[0])
    deficient = whitening_factor(x[:5].T @ x[:5] / 5)
    assert int((deficient.abs().sum(-1) > 0).sum()) == 5  # non-zero rows = the numerical rank of C
