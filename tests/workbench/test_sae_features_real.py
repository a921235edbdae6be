"""The SAE feature browser on the real bundled SmolLM2 (slow): an SAE trained at the middle layer fits, its features
are far more token-selective than chance, the direct logit effects agree with the model's own unembedding, and the
browser's views render. Small sizes (the README describes the full-size run: 2304 features on every bundled prompt).
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from workbench.intervene.direct_logits import direction_logits
from workbench.prompts import default_prompts
from workbench.sae import feature_stats, train_site_sae

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browsed(real_model, tmp_path_factory):
    import os

    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)  # every core (the tiny-model fixtures set one thread per session)
    try:
        return _browse(real_model, tmp_path_factory)
    finally:
        torch.set_num_threads(threads)


def _browse(real_model, tmp_path_factory):
    site = f"blocks.{real_model.n_layers // 2}.hook_resid_post"
    texts = default_prompts()
    sae = train_site_sae(real_model, texts, site=site, d_sae=1152, k=16, epochs=15, max_tokens=None,
                         cache_dir=tmp_path_factory.mktemp("sae"))
    return sae, feature_stats(real_model, sae, texts, k=20, window=6), texts


def test_the_sae_fits_the_middle_layer(browsed, real_model):
    sae, stats, _ = browsed
    assert stats.site == "blocks.15.hook_resid_post" and stats.n_features == 1152
    assert sae.fvu < 0.3 and sae.l0 == 16
    assert sum(d > 0 for d in stats.density) > 0.8 * stats.n_features  # most features are alive


def test_features_are_token_selective_beyond_chance(browsed, real_model):
    """The share of a feature's top contexts that sit on its most common token, against the same share for random
    token positions: the corpus' most frequent token (about 5 % of tokens)."""
    _, stats, texts = browsed
    ids = [t for text in texts for t in real_model.model.to_tokens(text)[0, 1:].tolist()]
    chance = Counter(ids).most_common(1)[0][1] / len(ids)
    shares = [Counter(c["tokens"][stats.window] for c in rows).most_common(1)[0][1] / len(rows)
              for rows in stats.contexts if len(rows) == stats.k]
    assert len(shares) > 300
    mean_share = sum(shares) / len(shares)
    assert mean_share > 3 * chance, (mean_share, chance)
    assert sum(s == 1.0 for s in shares) > 20  # many features fire on one token only, in all their top contexts


def test_direct_logit_effects_rank_tokens_as_the_model_does(real_model):
    """Independent of the SAE: a real final residual (the input of the final norm) written as a direction gets the
    same top tokens from direction_logits as the model's own next-token logits at that position (the norm's frozen
    per-token scale is one positive number, which changes no ranking), and values proportional to them."""
    site = f"blocks.{real_model.n_layers - 1}.hook_resid_post"
    tokens = real_model.model.to_tokens("The capital of France is")
    _, cache = real_model.model.run_with_cache(tokens, names_filter=[site])
    with torch.no_grad():
        logits = real_model.model(tokens)[0, -1].float()
    residual = cache[site][0, -1:].float()
    got = direction_logits(real_model, residual, top=10)
    assert got["promoted_ids"][0].tolist() == logits.topk(10).indices.tolist()
    ratio = got["promoted"][0] / logits.topk(10).values
    assert float(ratio.std() / ratio.mean()) < 1e-3  # one positive factor: the RMS the norm divided by


def test_views_on_the_real_result(browsed):
    _, stats, _ = browsed
    f = stats.densest(1)[0]
    assert len(stats.contexts_frame(f)) == stats.k
    assert len(stats.feature_figure(f).data) == 2 and stats.search(stats.top_token(f))
    assert len(stats.to_pandas()) == stats.n_features
    assert torch.tensor(stats.density).max() <= 1.0
