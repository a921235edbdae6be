"""low_rank on the bundled SmolLM2 (slow): a small run truncates the real model and restores it bit for bit, whitened
truncation is no worse than plain at the same size where it matters, and on real activations the spectral prediction
equals the truncated matrix's error on the captured rows."""

from __future__ import annotations

import pytest
import torch

from workbench.capture import capture
from workbench.prompts import default_prompts
from workbench.runner import run_analysis
from workbench.spectra.low_rank import second_moment, truncate, truncation_errors
from workbench_analyses.low_rank import LowRankConfig

pytestmark = pytest.mark.slow


def test_a_small_run_on_smollm2_restores_the_model(real_model, all_threads):
    before = {n: p.detach().clone() for n, p in real_model.model.named_parameters() if ".blocks." in f".{n}"}
    result = run_analysis(real_model, "low_rank", LowRankConfig(kinds=["W_Q", "W_O"], max_tokens=1500,
                                                                heldout_texts=12, verify_budgets=[0.25]))
    after = dict(real_model.model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)
    white, plain = result.verification
    assert white["replaced"] > 30 and abs(white["fraction"] - plain["fraction"]) < 0.01
    assert white["ppl_ratio"] < plain["ppl_ratio"]  # 20-30 % per-matrix error: whitening is far better (README)
    assert result.base_ppl < white["ppl"]


def test_prediction_equals_the_error_on_real_activations(real_model, all_threads):
    site = "blocks.10.mlp.out.hook_in"  # the input of W_out: 1536 wide
    st = capture(real_model, default_prompts()[:40], sites=site, keep="full", gram_dtype="float64")[site]
    c = second_moment(st.mean, st.comoment, st.n)
    w = real_model.weight("W_out", 10).detach().double()
    curves = truncation_errors(w, c)
    rows = st.full.double()
    for method in ("plain", "whitened"):
        left, right = truncate(w, c, 200, method)
        measured = (rows @ (w - left @ right)).norm() / (rows @ w).norm()
        assert float(measured) == pytest.approx(float(getattr(curves, method)[200]), rel=1e-6)
    assert float(curves.whitened[200]) < float(curves.plain[200])
