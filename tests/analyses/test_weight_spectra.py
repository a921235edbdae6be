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
    q = hf.layers[1].self_attn.q_proj.weight.detach().double().cpu().numpy()  # [h*d_head, d_model] = W_Q^T
    i = next(k for k, (m, layer) in enumerate(zip(result.matrix, result.layer)) if m == "W_Q" and layer == 1)
    s = np.linalg.svd(q, compute_uv=False)
    assert result.shape[i] == [facts.d_model, facts.n_heads * facts.d_head]
    assert result.sigma_max[i] == pytest.approx(s[0], rel=1e-5)
    assert result.nuclear_norm[i] == pytest.approx(s.sum(), rel=1e-5)
    assert result.stable_rank[i] == pytest.approx((s**2).sum() / s[0] ** 2, rel=1e-5)
    p = s / s.sum()
    assert result.erank[i] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-5)


def test_embeddings_can_be_left_out(tiny_model):
    from workbench_analyses.weight_spectra import WeightSpectraConfig

    result = run_analysis(tiny_model, "weight_spectra", WeightSpectraConfig(include_embeddings=False))
    assert None not in result.layer


def test_weightwatcher_columns_match_esd_functions(tiny_model):
    import torch

    from workbench.spectra import esd_eigenvalues, mp_fit, powerlaw_fit

    result = run_analysis(tiny_model, "weight_spectra")
    hf = tiny_model.model.original_model.model
    w = hf.layers[1].mlp.down_proj.weight.detach().double()
    i = next(k for k, (m, layer) in enumerate(zip(result.matrix, result.layer)) if m == "W_out" and layer == 1)
    s = np.linalg.svd(w.cpu().numpy(), compute_uv=False)
    lam = s**2
    assert result.log_norm[i] == pytest.approx(np.log10(lam.sum()), rel=1e-5)
    assert result.log_spectral_norm[i] == pytest.approx(np.log10(lam.max()), rel=1e-5)
    fit = powerlaw_fit(esd_eigenvalues(torch.tensor(s)))
    assert result.alpha[i] == pytest.approx(float(fit.alpha), rel=1e-3)
    assert result.alpha_weighted[i] == pytest.approx(float(fit.alpha) * np.log10(lam.max()), rel=1e-3)
    assert result.num_spikes[i] == int(mp_fit(torch.tensor(lam), tuple(w.shape)).num_spikes)
    assert result.esd_label == "W_out layer 1" and len(result.esd_eigenvalues) == min(w.shape)
    assert set(result.head) == {-1}


def test_per_head_rows(tiny_model):
    from workbench_analyses.weight_spectra import WeightSpectraConfig

    facts = tiny_model.facts
    result = run_analysis(tiny_model, "weight_spectra", WeightSpectraConfig(per_head=True, esd_matrix="W_Q",
                                                                            esd_layer=0))
    heads = [(m, layer, h) for m, layer, h in zip(result.matrix, result.layer, result.head) if h >= 0]
    per_layer = 2 * facts.n_heads + 2 * facts.n_kv_heads
    assert len(heads) == facts.n_layers * per_layer
    i = heads.index(("W_Q", 0, 1))
    row = [k for k, (m, layer, h) in enumerate(zip(result.matrix, result.layer, result.head)) if h >= 0][i]
    assert result.shape[row] == [facts.d_model, facts.d_head]
    assert result.esd_label == "W_Q layer 0"
    assert type(result).from_json(result.to_json()) == result
    assert len(result.figures()) == 4


def test_esd_layer_out_of_range_is_a_config_error(tiny_model):
    from workbench.errors import ConfigError
    from workbench_analyses.weight_spectra import WeightSpectraConfig

    with pytest.raises(ConfigError, match="'esd_layer'"):
        run_analysis(tiny_model, "weight_spectra", WeightSpectraConfig(esd_layer=99))
