"""Device correctness without a GPU: the tensor paths keep their tensors on the input's (or the requested) device and
read nothing back to the host inside their loops.

Two tools, both CPU-only and neither a skip:

* the ``meta`` device: tensors with shapes, dtypes and a device but no data. Every host read (``.item()``,
  ``float()``, ``bool()``, ``.tolist()``, ``.cpu()``, ``.numpy()``) raises on it, so a function that runs on meta
  inputs and returns meta outputs provably never moved its data to the host or to another device (value checks such
  as the NaN guard are skipped on meta: :func:`workbench.spectra.checks.has_values`);
* counting host reads on the CPU (``Tensor.__bool__``/``__float__``/``__int__``/``item``/``tolist``/``cpu``/
  ``numpy`` wrapped): the number of reads of a batched computation must not grow with the number of matrices.
"""

from __future__ import annotations

import functools

import pytest
import torch

import workbench
from workbench.capture import tokens as tok
from workbench.capture.accumulators import Moments, Reservoir, RowStore
from workbench.capture.capture import _place, _Site
from workbench.capture.gradients import _Running, _sample_spectra
from workbench.spectra import (
    batched_singular_values,
    condition_number,
    effective_rank,
    esd_eigenvalues,
    log_norm,
    log_spectral_norm,
    mp_fit,
    nuclear_norm,
    numerical_rank,
    participation_ratio,
    powerlaw_fit,
    rankme,
    singular_values,
    singular_values_from_gram,
    spectral_entropy,
    stable_rank,
)
from workbench.spectra.dynamics import _prefix_eranks, verl_erank
from workbench.spectra.gradients import gradient_spectrum, outer_sum_singular_values
from workbench.tam.core import interfering_tokens, rank_gaussian_filter

META = torch.device("meta")


def meta(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(*shape, dtype=dtype, device=META)


def on_meta(value: object) -> bool:
    """Every tensor in ``value`` (a tensor, or a tuple/list/namedtuple/dataclass of them) lives on meta."""
    if isinstance(value, torch.Tensor):
        return value.device == META
    if isinstance(value, (tuple, list)):
        return all(on_meta(v) for v in value)
    if hasattr(value, "__dataclass_fields__"):
        return all(on_meta(getattr(value, f)) for f in value.__dataclass_fields__)
    return True


# ---------------------------------------------------------------------------------------------------------------------
# spectra: every public tensor function on meta


SPECTRA_CALLS = {
    "singular_values": lambda: singular_values(meta(3, 20, 8)),
    "singular_values centred": lambda: singular_values(meta(3, 20, 8), center=True),
    "singular_values bf16 upcast": lambda: singular_values(meta(2, 6, 4, dtype=torch.bfloat16)),
    "batched_singular_values auto": lambda: batched_singular_values([meta(20, 8), meta(20, 8), meta(5, 9)]),
    "batched_singular_values svd": lambda: batched_singular_values([meta(20, 8), meta(7, 3)], method="svd"),
    "batched_singular_values gram centred": lambda: batched_singular_values([meta(6, 10)], method="gram",
                                                                            center=True),
    "batched_singular_values chunked": lambda: batched_singular_values([meta(4, 4)] * 5, max_batch_bytes=64),
    "singular_values_from_gram": lambda: singular_values_from_gram(meta(4, 8, 8, dtype=torch.float64)),
    "singular_values_from_gram centred": lambda: singular_values_from_gram(
        meta(4, 8, 8, dtype=torch.float64), mean=meta(4, 8, dtype=torch.float64), n=30, center=True),
    **{f.__name__: functools.partial(lambda f: f(meta(5, 8)), f) for f in (
        effective_rank, rankme, stable_rank, nuclear_norm, participation_ratio, numerical_rank, spectral_entropy,
        condition_number, esd_eigenvalues, log_norm, log_spectral_norm)},
    "effective_rank eps": lambda: effective_rank(meta(5, 8), eps=1e-8),
    "powerlaw_fit": lambda: powerlaw_fit(meta(3, 30, dtype=torch.float64)),
    "powerlaw_fit small n": lambda: powerlaw_fit(meta(2, 12, dtype=torch.float64)),
    "mp_fit": lambda: mp_fit(meta(3, 30, dtype=torch.float64), (60, 30)),
    "mp_fit square": lambda: mp_fit(meta(2, 16, dtype=torch.float64), (16, 16)),
    "gradient_spectrum": lambda: gradient_spectrum(meta(2, 6, 10), meta(2, 6, 12)),
    "outer_sum_singular_values": lambda: outer_sum_singular_values(meta(6, 10), meta(6, 12)),
    "verl_erank": lambda: verl_erank(meta(3, 16, dtype=torch.float64)),
    # erv_era's hot loop (its public wrapper ends with one .tolist() of the results: they are Python lists)
    "erv_era prefixes (L-mode and d-mode)": lambda: _prefix_eranks(meta(2, 40, 12), [5, 10, 20, 30, 40], True),
    "erv_era prefixes uncentred": lambda: _prefix_eranks(meta(2, 40, 12), [5, 20, 40], False),
}


@pytest.mark.parametrize("name", list(SPECTRA_CALLS))
def test_spectra_functions_run_on_meta_and_return_meta(name):
    out = SPECTRA_CALLS[name]()
    assert on_meta(out), f"{name} returned tensors off the input's device"


def test_meta_shapes_match_a_cpu_run():
    """Shape propagation on meta is the real computation's: the same call on CPU data gives the same shapes."""
    torch.manual_seed(0)
    cpu = [torch.randn(20, 8), torch.randn(20, 8), torch.randn(5, 9)]
    got = batched_singular_values([m.to(META) for m in cpu])
    assert [tuple(s.shape) for s in got] == [tuple(s.shape) for s in batched_singular_values(cpu)]
    fit = powerlaw_fit(torch.rand(3, 30, dtype=torch.float64).to(META))
    assert all(t.shape == (3,) for t in fit)


# ---------------------------------------------------------------------------------------------------------------------
# capture: the hooks' accumulation on meta


def _batch(lengths: list[int], positions: str | int = "all") -> tok.Batch:
    ids = [torch.arange(1, n + 1) for n in lengths]
    tokenized = tok.Tokenized(ids=ids, has_bos=False)
    (batch,) = tok.batches(tokenized, len(ids), 0, positions, exclude_bos=False)
    return batch


@pytest.mark.parametrize("positions", ["all", "last", 1])
def test_capture_accumulators_feed_on_meta(positions):
    """``_Site.feed`` — what each hook runs per batch — on meta activations and meta accumulators, every ``keep``:
    gathering rows, the float64 co-moment update, the reservoir, per-prompt and full rows."""
    batch = _batch([5, 3, 4], positions)
    n_rows = int(batch.rows.sum())
    d = 6
    site = _Site(name="s", moments=Moments(d, META), reservoir=Reservoir(4, d, META, torch.float32, 0),
                 last=RowStore(3, d, META, torch.float32), pooled=RowStore(3, d, META, torch.float32),
                 full=RowStore(n_rows, d, META, torch.float32), offsets=[0, 5, 8])
    placed = _place(batch, META)
    for _ in range(3):  # several batches: the reservoir fills, then replaces
        site.feed(meta(3, batch.tokens.shape[1], d), placed)
    stats = site.result()
    assert site.moments.n == 3 * n_rows
    assert on_meta([stats.mean, stats.comoment, stats.reservoir, stats.last, stats.mean_pooled, stats.full])
    assert stats.comoment.shape == (d, d) and stats.comoment.dtype == torch.float64


def test_capture_keeps_its_statistics_on_the_requested_device(tiny_model):
    """``capture(..., device="meta")``: the model runs on its own device and every statistic lives on meta, so the
    streaming loop never reads a statistic back (any read of a meta tensor raises)."""
    cap = workbench.capture(tiny_model, ["hello there", "a b c", "xyz!"], sites="blocks.*.hook_resid_post",
                            keep=["reservoir", "per_prompt", "full"], device="meta", batch_size=2)
    for name in cap.sites:
        s = cap[name]
        assert on_meta([s.mean, s.comoment, s.reservoir, s.last, s.mean_pooled, s.full]), name
        assert s.n > 0 and s.full.shape == (s.n, tiny_model.d_model)


# ---------------------------------------------------------------------------------------------------------------------
# per-sample gradient spectra: the per-sample reduction stays on the gradients' device


@pytest.mark.parametrize("route", ["factor", "dense"])
def test_gradient_sample_spectra_stay_on_meta(route):
    n_proj, n_layers, t = 2, 3, 5
    mats = [meta(8, 12) for _ in range(n_proj * n_layers)]
    factors = [(meta(t, 8), meta(t, 12)) for _ in mats] if route == "factor" else None
    sample = _sample_spectra(mats, factors, n_proj, n_layers, n_top=4)
    assert on_meta(list(sample.values()))
    assert sample["top"].shape == (n_proj, n_layers, 4) and sample["cosine"].shape == (n_proj, n_layers, n_layers)
    running = _Running()
    for _ in range(2):
        running.add(sample["nuclear"], sample["nuclear"] >= 1e-12)
    assert on_meta([running.mean(), running.std()])


# ---------------------------------------------------------------------------------------------------------------------
# token activation maps: the formulas follow their inputs' device


def test_token_map_formulas_run_on_meta():
    assert on_meta(rank_gaussian_filter(meta(9)))
    assert on_meta(rank_gaussian_filter(meta(5, 7), kernel_size=3))
    assert rank_gaussian_filter(meta(5, 7)).shape == (5, 7)
    # "own_position" has no data-dependent selection; "reference" drops one entry by a boolean mask (sized on the
    # host, so not meta-runnable), and its outputs follow prompt_positions' device as well
    assert on_meta(interfering_tokens(torch.arange(1, 4, device=META), 5, 8, "own_position"))


def test_rank_gaussian_filter_vectorised_equals_window_loop():
    """The vectorised filter against a per-window transcription of the reference's loop (xmed-lab/TAM ``tam.py``,
    ``rank_guassian_filter``): sorted window, Gaussian weights over rank offsets with σ = std/mean."""
    import numpy as np

    def reference(img: np.ndarray, k: int) -> np.ndarray:
        pad = k // 2
        padded = np.pad(img, pad, mode="reflect")
        out = np.zeros_like(img, dtype=np.float64)
        for idx in np.ndindex(img.shape):
            window = padded[tuple(slice(i, i + k) for i in idx)].flatten()
            values = np.sort(window)
            mean = values.mean()
            if mean <= 0:
                continue
            if values[-1] == values[0]:
                out[idx] = values[0]
                continue
            sigma = values.std() / mean
            offsets = np.arange(len(values)) - len(values) // 2
            kernel = np.exp(-offsets ** 2 / (2 * sigma ** 2))
            out[idx] = (values * kernel / kernel.sum()).sum()
        return out

    rng = np.random.default_rng(0)
    for shape, k in [((7, 9), 3), ((6, 6), 5), ((11,), 3), ((8,), 5)]:
        img = rng.normal(size=shape).clip(min=-0.3)
        img[0] = 0.5  # a constant row / entry next to varied ones
        got = rank_gaussian_filter(torch.tensor(img), kernel_size=k).numpy()
        np.testing.assert_allclose(got, reference(img, k), rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------------------------------
# host reads of a batched analysis do not grow with the number of matrices


class HostReads:
    """Counts calls that read tensor data to the host (any device; on the CPU they are what would be a sync on a
    GPU)."""

    NAMES = ("__bool__", "__float__", "__int__", "__index__", "item", "tolist", "cpu", "numpy")

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)

            def counted(tensor, *args, _original=original, **kwargs):
                self.count += 1
                return _original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)


def test_weight_spectra_host_reads_do_not_grow_with_the_number_of_matrices(tiny_model, monkeypatch):
    """weight_spectra reads its columns back once per column and matrix shape (not once per matrix): twice the
    matrices of the same shapes cost the same number of host reads. (The MP fit's Nelder–Mead polish is a host
    search by design, on one CPU copy per shape; it is switched off here to count the rest.)"""
    from workbench.analysis import Inputs
    from workbench.spectra import esd
    from workbench_analyses.weight_spectra import WeightSpectraConfig, compute

    monkeypatch.setattr(esd, "_mp_sigma", functools.partial(esd._mp_sigma, polish=False))
    weights = [(k, layer, w.detach()) for k, layer, w in tiny_model.weights() if layer is not None]
    config = WeightSpectraConfig(include_embeddings=False)
    counts = []
    for copies in (1, 2):
        inputs = Inputs(model_name="tiny", facts=tiny_model.facts, weights=weights * copies)
        reads = HostReads(monkeypatch)
        result = compute(inputs, config)
        counts.append(reads.count)
        monkeypatch.undo()
        monkeypatch.setattr(esd, "_mp_sigma", functools.partial(esd._mp_sigma, polish=False))
        assert len(result.matrix) == len(weights) * copies
    assert counts[0] == counts[1], f"host reads grew with the matrices: {counts}"
