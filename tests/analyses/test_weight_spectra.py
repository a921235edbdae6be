"""weight_spectra against numpy on the tiny model's weights."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.runner import run_analysis


def test_every_matrix_matches_numpy(tiny_model):
    result = run_analysis(tiny_model, "weight_spectra")
    facts = tiny_model.facts
    assert len(result.matrix) == facts.n_layers * (7 if facts.gated_mlp else 6) + 2
    hf = tiny_model.model.original_model.model
    q = hf.layers[1].self_attn.q_proj.weight.detach().double().numpy()  # [h*d_head, d_model] = W_Q^T
    i = next(k for k, (m, layer) in enumerate(zip(result.matrix, result.layer)) if m == "W_Q" and layer == 1)
    s = np.linalg.svd(q, compute_uv=False)
    assert result.shape[i] == [facts.d_model, facts.n_heads * facts.d_head]
    assert result.sigma_max[i] == pytest.approx(s[0], rel=1e-5)
    assert result.nuclear_norm[i] == pytest.approx(s.sum(), rel=1e-5)
    assert result.stable_rank[i] == pytest.approx((s**2).sum() / s[0] ** 2, rel=1e-5)
    p = s / s.sum()
    assert result.erank[i] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-5)


def test_embeddings_can_be_left_out(tiny_model):
    from analyses.weight_spectra import WeightSpectraConfig

    result = run_analysis(tiny_model, "weight_spectra", WeightSpectraConfig(include_embeddings=False))
    assert None not in result.layer
