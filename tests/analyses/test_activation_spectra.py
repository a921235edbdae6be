"""activation_spectra against independent computations on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.errors import ConfigError
from workbench.runner import run_analysis
from workbench_analyses.activation_spectra import ActivationSpectraConfig

TEXTS = ["One fish two fish red fish blue fish.", "Numbers: 1 2 3 4 5 6 7 8 9 10.", "Hello there, general reader."]


def _erank(s: np.ndarray) -> float:
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def test_values_match_dense_numpy_on_the_captured_rows(tiny_model):
    config = ActivationSpectraConfig(sites=["blocks.1.hook_resid_post"])
    result = run_analysis(tiny_model, "activation_spectra", config, texts=TEXTS)
    rows = []
    for text in TEXTS:
        tokens = tiny_model.model.to_tokens(text)
        _, cache = tiny_model.model.run_with_cache(tokens, names_filter="blocks.1.hook_resid_post")
        rows.append(cache["blocks.1.hook_resid_post"][0, 1:].double().cpu().numpy())  # BOS excluded
    x = np.concatenate(rows)
    centred = np.linalg.svd(x - x.mean(0), compute_uv=False)
    raw = np.linalg.svd(x, compute_uv=False)
    assert result.n_rows == [x.shape[0]]
    assert result.erank_centred[0] == pytest.approx(_erank(centred), rel=1e-6)
    assert result.erank_uncentred[0] == pytest.approx(_erank(raw), rel=1e-6)
    p = raw / raw.sum() + 1e-7
    assert result.rankme_uncentred[0] == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-6)


def test_default_kinds_cover_every_layer(tiny_model):
    result = run_analysis(tiny_model, "activation_spectra", texts=TEXTS)
    assert result.components() == ["resid_post", "attn_out", "mlp_out"]
    assert result.layer == [0, 1] * 3
    assert all(1.0 <= e <= n for e, n in zip(result.erank_centred, result.n_rows, strict=True))


@pytest.mark.parametrize("field,value", [("kinds", []), ("kinds", ["resid"]), ("sites", []), ("rankme_eps", -1.0),
                                         ("n_values", 0)])
def test_bad_config(field, value):
    with pytest.raises(ConfigError, match=repr(field)):
        ActivationSpectraConfig(**{field: value})


def test_needs_texts(tiny_model):
    with pytest.raises(ConfigError, match="'texts'"):
        run_analysis(tiny_model, "activation_spectra")


def test_both_panels_are_drawn(tiny_model):
    fig = run_analysis(tiny_model, "activation_spectra", texts=TEXTS).plot()
    axes = {trace.xaxis for trace in fig.data}
    assert axes == {"x", "x2"}  # effective rank and RankMe panels each hold their lines
