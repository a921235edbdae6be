"""Tests of workbench.capture against independent computations.

The references are unpadded, one-text-at-a-time ``run_with_cache`` forwards and dense numpy / direct-SVD statistics,
so padding, batching, masking and streaming are each checked against something that does none of them. Fast tests use
the tiny random Llama of conftest; tests marked ``slow`` use the real bundled model.
"""

import re

import numpy as np
import pytest
import torch

import workbench
from tests.helpers import tiny_llama
from workbench.capture import accumulators, resolve_sites
from workbench.capture.accumulators import Moments, Reservoir
from workbench.capture.hooks import count_hooks
from workbench.errors import BudgetError, ConfigError, SiteError
from workbench.spectra import effective_rank, singular_values

SITES = "blocks.*.hook_resid_post"
NAMES = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
TEXTS = [  # varied lengths (1 to 66 characters; the tokenizer is character-level), so batches pad a lot
    "The quick brown fox jumps over the lazy dog.",
    "hi",
    "Spectral analysis of a residual stream.",
    "a b c d e f g",
    "Zebra!",
    "Once upon a time there was a tiny model that only knew characters.",
    "x",
    "Padding must never leak into the statistics, whatever the batch.",
    "42 is the answer",
    "tokens, tokens, tokens",
    "end.",
    "The last one is of middling length.",
]


@pytest.fixture(scope="module")
def reference(tiny_model):
    """Per text and site, the unpadded activations [T, d] (BOS first) of a plain ``run_with_cache``, in float64."""
    out = {name: [] for name in NAMES}
    with torch.no_grad():
        for text in TEXTS:
            _, cache = tiny_model.model.run_with_cache(tiny_model.model.to_tokens(text), names_filter=NAMES)
            for name in NAMES:
                out[name].append(cache[name][0].double())
    return out


@pytest.fixture(scope="module")
def two_head_model(tiny_model, tmp_path_factory):
    """Like tiny_model with 2 heads: an attention pattern [batch, heads, q, k] has heads == the probe's 2 tokens."""
    return tiny_llama(tmp_path_factory.mktemp("two-head-llama"), num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1)


def _close(actual, expected, rtol=1e-6):
    """assert_close with an absolute floor scaled to the tensor (entries near zero carry float32 forward noise),
    compared on the CPU (either side may live on the device under test)."""
    expected = torch.as_tensor(expected, dtype=torch.float64).cpu()
    atol = rtol * float(expected.abs().max())
    torch.testing.assert_close(actual.double().cpu(), expected, rtol=rtol, atol=atol)


def _no_hooks(lm) -> bool:
    return count_hooks(lm.hook_points()) == 0


# --------------------------------------------------------------------------------------------------------------------
# sites


def test_glob_resolves_in_layer_order(tiny_model):
    points = tiny_model.hook_points()
    assert resolve_sites(points, SITES) == NAMES
    assert resolve_sites(points, list(reversed(NAMES))) == NAMES
    assert workbench.capture(tiny_model, TEXTS[:2], sites=SITES).sites == NAMES


def test_unknown_site_suggests_closest(tiny_model):
    with pytest.raises(SiteError, match=r"'blocks\.0\.hook_resid_psot'.*Closest: .*blocks\.0\.hook_resid_post"):
        workbench.capture(tiny_model, TEXTS[:2], sites="blocks.0.hook_resid_psot")
    assert _no_hooks(tiny_model)


def test_empty_sites(tiny_model):
    with pytest.raises(SiteError, match="'sites'"):
        workbench.capture(tiny_model, TEXTS[:2], sites=[])


# --------------------------------------------------------------------------------------------------------------------
# statistics against independent computations


@pytest.mark.parametrize("center", [True, False])
def test_streamed_singular_values_equal_direct_svd_of_full_rows(tiny_model, center):
    # the exact path: elementwise rtol 1e-6 is beyond float32 products (their bounds: test_gram_precision.py)
    cap = workbench.capture(tiny_model, TEXTS, sites=SITES, keep="full", batch_size=5, gram_dtype="float64")
    for name in NAMES:
        stats = cap[name]
        assert stats.full.shape == (stats.n, 32)
        direct = singular_values(stats.full.double(), center=center)
        streamed = stats.singular_values(center=center)
        assert streamed.dtype == torch.float64 and streamed.shape == direct.shape
        big = direct > 1e-6 * direct.max()
        torch.testing.assert_close(streamed[big], direct[big], rtol=1e-6, atol=0)
        assert torch.equal(cap.singular_values(center=center)[name], streamed)


def test_token_count_excludes_pad_and_bos(tiny_model):
    lengths = [tiny_model.model.to_tokens(t).shape[1] for t in TEXTS]
    cap = workbench.capture(tiny_model, TEXTS, sites=SITES, batch_size=4)
    assert cap.has_bos and cap.n_texts == len(TEXTS)
    assert cap.n_tokens == sum(lengths)
    for name in NAMES:
        assert cap[name].n == sum(lengths) - len(TEXTS)


def test_keeping_bos_adds_one_row_per_text(tiny_model):
    without = workbench.capture(tiny_model, TEXTS, sites=SITES)
    with_bos = workbench.capture(tiny_model, TEXTS, sites=SITES, exclude_bos=False)
    for name in NAMES:
        assert with_bos[name].n == without[name].n + len(TEXTS)


def test_stats_match_unpadded_reference(tiny_model, reference):
    cap = workbench.capture(tiny_model, TEXTS, sites=SITES, batch_size=5)
    for name in NAMES:
        rows = torch.cat([acts[1:] for acts in reference[name]])  # BOS excluded
        mean = rows.mean(0)
        centred = rows - mean
        stats = cap[name]
        assert stats.n == rows.shape[0]
        assert stats.mean.dtype == stats.comoment.dtype == torch.float64
        _close(stats.mean, mean)
        _close(stats.comoment, centred.T @ centred)
        _close(stats.gram, rows.T @ rows)
        _close(stats.covariance(), torch.from_numpy(np.cov(rows.cpu().numpy(), rowvar=False)))


def test_results_agree_across_batch_sizes(tiny_model):
    caps = [workbench.capture(tiny_model, TEXTS, sites=SITES, batch_size=b, keep="per_prompt") for b in (1, 7, 64)]
    first = caps[0]
    for other in caps[1:]:
        assert other.n_tokens == first.n_tokens
        for name in NAMES:
            assert other[name].n == first[name].n
            _close(other[name].mean, first[name].mean)
            _close(other[name].comoment, first[name].comoment)
            _close(other[name].last, first[name].last, rtol=1e-5)
            _close(other[name].mean_pooled, first[name].mean_pooled, rtol=1e-5)


def test_mean_pooled_masks_padding(tiny_model, reference):
    cap = workbench.capture(tiny_model, TEXTS, sites=SITES, batch_size=5, keep="per_prompt")
    for name in NAMES:
        expected = torch.stack([acts[1:].mean(0) for acts in reference[name]])  # BOS excluded, no padding
        assert cap[name].mean_pooled.shape == (len(TEXTS), 32)
        _close(cap[name].mean_pooled, expected, rtol=1e-5)


def test_last_position_gives_one_row_per_text_equal_to_per_prompt_last(tiny_model, reference):
    cap = workbench.capture(tiny_model, TEXTS, sites=SITES, positions="last", keep=["full", "per_prompt"],
                            batch_size=5)
    for name in NAMES:
        stats = cap[name]
        assert stats.n == len(TEXTS) and stats.full.shape == (len(TEXTS), 32)
        torch.testing.assert_close(stats.full, stats.last, rtol=0, atol=0)
        _close(stats.last, torch.stack([acts[-1] for acts in reference[name]]), rtol=1e-5)
        _close(stats.mean, stats.full.double().mean(0))


@pytest.mark.parametrize("position", [1, -1, -2, 0])
def test_integer_positions_pick_that_token(tiny_model, reference, position):
    cap = workbench.capture(tiny_model, TEXTS, sites=SITES, positions=position, keep="full", batch_size=5)
    assert cap.positions == position
    for name in NAMES:
        assert cap[name].n == len(TEXTS)
        _close(cap[name].full, torch.stack([acts[position] for acts in reference[name]]), rtol=1e-5)


def test_max_tokens_caps_the_total(tiny_model):
    cap = workbench.capture(tiny_model, TEXTS, sites=SITES, max_tokens=60)
    assert 59 <= cap.n_tokens <= 60  # a leftover budget of 1 token is not worth a text of BOS alone
    assert cap[NAMES[0]].n == cap.n_tokens - cap.n_texts
    assert workbench.capture(tiny_model, TEXTS, sites=SITES, max_length=5).n_tokens <= 5 * len(TEXTS)


# --------------------------------------------------------------------------------------------------------------------
# hooks are always removed, the model is left as it was


def test_hooks_removed_after_normal_run(tiny_model):
    workbench.capture(tiny_model, TEXTS, sites=[SITES, "blocks.0.attn.hook_z"], keep=["per_prompt", "reservoir"])
    assert _no_hooks(tiny_model)


def test_hooks_removed_after_site_with_wrong_shape(tiny_model):
    with pytest.raises(SiteError, match="hook_pattern"):
        workbench.capture(tiny_model, TEXTS, sites=["blocks.0.hook_resid_post", "blocks.0.attn.hook_pattern"])
    assert _no_hooks(tiny_model)


def test_attention_pattern_refused_when_heads_equal_probe_length(two_head_model):
    with pytest.raises(SiteError, match="hook_pattern"):
        workbench.capture(two_head_model, TEXTS[:3], sites="blocks.0.attn.hook_pattern")


def test_hooks_removed_when_a_hook_raises(tiny_model, monkeypatch):
    def broken(self, rows):
        raise RuntimeError("accumulator exploded")

    monkeypatch.setattr(accumulators.Moments, "update", broken)
    with pytest.raises(RuntimeError, match="accumulator exploded"):
        workbench.capture(tiny_model, TEXTS, sites=SITES)
    assert _no_hooks(tiny_model)


def test_stopping_the_forward_early_leaves_model_unchanged(tiny_model):
    tokens = tiny_model.model.to_tokens(TEXTS[0])
    with torch.no_grad():
        before = tiny_model.model(tokens)
    calls = []
    handle = tiny_model.model.blocks[1].register_forward_hook(lambda *args: calls.append(1))
    try:
        workbench.capture(tiny_model, TEXTS, sites="blocks.0.hook_resid_post", batch_size=4)
    finally:
        handle.remove()
    assert len(calls) <= 2, "layer 1 ran on the batches: the forward did not stop after the last site (the " \
                            "two tiny shape probes, 2 and 3 tokens, may run the whole model)"
    with torch.no_grad():
        after = tiny_model.model(tokens)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert _no_hooks(tiny_model)


def test_full_over_budget_raises_before_the_batches_run(tiny_model):
    shapes = []
    handle = tiny_model.model.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    try:
        with pytest.raises(BudgetError, match="memory_budget"):
            workbench.capture(tiny_model, TEXTS, sites=SITES, keep="full", memory_budget=1000)
    finally:
        handle.remove()
    # only the shape probes (one text, 2 and 3 tokens) may have run; no batch of texts was fed to the model
    assert all(shape in ((1, 2), (1, 3)) for shape in shapes), shapes
    assert _no_hooks(tiny_model)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"texts": []}, "'texts'"),
        ({"texts": [""]}, "'texts[0]'"),
        ({"texts": ["ok", "   "]}, "'texts[1]'"),
        ({"texts": [3]}, "'texts[0]'"),
        ({"batch_size": 0}, "'batch_size'"),
        ({"batch_size": True}, "'batch_size'"),
        ({"positions": "middle"}, "'positions'"),
        ({"positions": 10**6}, "'positions'"),
        ({"positions": -(10**6)}, "'positions'"),
        ({"keep": "everything"}, "'keep'"),
        ({"keep": []}, "'keep'"),
        ({"max_tokens": 1}, "'max_tokens'"),
        ({"max_length": 1}, "'max_length'"),
        ({"reservoir_size": 0}, "'reservoir_size'"),
    ],
)
def test_bad_inputs_name_their_parameter(tiny_model, kwargs, param):
    call = {"texts": TEXTS[:3], "sites": SITES, **kwargs}
    with pytest.raises(ConfigError, match=re.escape(f"capture(): parameter {param} must be")):
        workbench.capture(tiny_model, **call)
    assert _no_hooks(tiny_model)


# --------------------------------------------------------------------------------------------------------------------
# reservoir


def test_reservoir_rows_are_rows_of_the_full_matrix_and_seeded(tiny_model):
    def run(seed):
        return workbench.capture(tiny_model, TEXTS, sites=SITES, keep=["full", "reservoir"], reservoir_size=16,
                                 seed=seed, batch_size=3)

    cap = run(seed=7)
    for name in NAMES:
        sample, full = cap[name].reservoir, cap[name].full
        assert sample.shape == (16, 32) and cap[name].n > 16
        matches = (sample[:, None, :] == full[None, :, :]).all(-1)  # [16, n]
        assert bool(matches.any(1).all()), "a reservoir row is not a captured row"
        assert len(set(matches.float().argmax(1).tolist())) == 16, "a captured row was sampled twice"
    again, other = run(seed=7), run(seed=8)
    for name in NAMES:
        assert torch.equal(again[name].reservoir, cap[name].reservoir)
    assert not all(torch.equal(other[n].reservoir, cap[n].reservoir) for n in NAMES)


def test_reservoir_larger_than_stream_keeps_every_row_in_order(device):
    reservoir = Reservoir(10, 2, device, torch.float32, seed=0)
    rows = torch.arange(14, dtype=torch.float32, device=device).reshape(7, 2)
    reservoir.update(rows[:3])
    reservoir.update(rows[3:])
    assert torch.equal(reservoir.sample(), rows)


def test_reservoir_sampling_is_uniform():
    """Every item of a 40-row stream, fed in random chunks, is kept with probability k/N = 1/5.

    Over 2000 seeded runs the chi-square-like statistic Σ (count − E)² / E has mean ≈ (1 − k/N)·(N − 1) ≈ 31
    and standard deviation ≈ 7 when sampling is uniform; 80 is a generous bound (keeping the first of two rows that draw
    the same slot, instead of the last, scores ≈ 110).
    """
    n_items, size, trials = 40, 8, 2000
    stream = torch.arange(n_items, dtype=torch.float32)[:, None]
    rng = np.random.default_rng(0)
    counts = np.zeros(n_items)
    for trial in range(trials):
        reservoir = Reservoir(size, 1, torch.device("cpu"), torch.float32, seed=trial)
        start = 0
        while start < n_items:
            step = int(rng.integers(1, 13))
            reservoir.update(stream[start:start + step])
            start += step
        kept = reservoir.sample()[:, 0].long().cpu().numpy()
        assert len(set(kept.tolist())) == size
        counts[kept] += 1
    expected = trials * size / n_items
    statistic = float(((counts - expected) ** 2 / expected).sum())
    assert statistic < 80, (statistic, counts)


# --------------------------------------------------------------------------------------------------------------------
# moments


def _feed_in_chunks(moments: Moments, x: np.ndarray, rng) -> None:
    start = 0
    while start < len(x):
        step = int(rng.integers(0, 97))  # includes empty chunks
        moments.update(torch.from_numpy(x[start:start + step]).to(moments.mean.device))
        start += step


def test_moments_in_random_chunks_equal_numpy(device):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((700, 6)) @ rng.standard_normal((6, 6)) + rng.standard_normal(6)
    moments = Moments(6, device)
    _feed_in_chunks(moments, x.astype(np.float32), rng)
    x32 = x.astype(np.float32).astype(np.float64)
    centred = x32 - x32.mean(0)
    assert moments.n == 700
    np.testing.assert_allclose(moments.mean.cpu().numpy(), x32.mean(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(moments.comoment.cpu().numpy(), centred.T @ centred, rtol=1e-10, atol=1e-9)


def test_moments_survive_a_large_mean(device):
    """Mean 1e4, spread 1: XᵀX − nμμᵀ cancels ~8 digits in float64, the pairwise centred update does not."""
    rng = np.random.default_rng(2)
    x = 1e4 + rng.standard_normal((2000, 8))
    mean = x.mean(0)
    two_pass = (x - mean).T @ (x - mean)
    naive = x.T @ x - len(x) * np.outer(mean, mean)
    scale = np.abs(two_pass).max()
    assert np.abs(naive - two_pass).max() / scale > 1e-8, "the case is not hard enough to tell the methods apart"
    moments = Moments(8, device)
    _feed_in_chunks(moments, x, rng)
    np.testing.assert_allclose(moments.mean.cpu().numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(moments.comoment.cpu().numpy(), two_pass, rtol=1e-8, atol=1e-8 * scale)


# --------------------------------------------------------------------------------------------------------------------
# the real bundled model


@pytest.mark.slow
def test_real_model_capture_of_two_prompts(real_model):
    prompts = ["The capital of France is Paris.", "Singular values measure how spread out a representation is."]
    n_expected = sum(real_model.model.to_tokens(p).shape[1] - 1 for p in prompts)
    cap = workbench.capture(real_model, prompts, sites=SITES)
    assert len(cap.sites) == 30 and cap.sites[-1] == "blocks.29.hook_resid_post"
    for name, values in cap.singular_values().items():
        assert cap[name].n == n_expected and cap[name].d == 576
        rank = float(effective_rank(values))
        assert np.isfinite(rank) and 0 < rank <= n_expected, (name, rank)
    assert count_hooks(real_model.hook_points()) == 0
