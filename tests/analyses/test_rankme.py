"""The rankme analysis: config, the per-prompt analysis against per-prompt forwards, prompt sets side by side with
embedding files. RankMe itself (closed forms, independent SVDs, files) is tested in
tests/workbench/spectra/test_embeddings.py and tests/workbench/test_matrix_files.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import numpy_rankme
from workbench.errors import ConfigError
from workbench.runner import run_analysis
from workbench_analyses.rankme import RankMeConfig, RankMeResult


def test_config_rejects_bad_sources():
    with pytest.raises(ConfigError, match="'prompt_sets'"):
        RankMeConfig(prompt_sets={"x": "bundled:no-such-category"})
    with pytest.raises(ConfigError, match="'prompt_sets'"):
        RankMeConfig(prompt_sets={})
    with pytest.raises(ConfigError, match="'embedding_files'"):
        RankMeConfig(embedding_files={"e": "emb.csv"})
    with pytest.raises(ConfigError, match="'poolings'"):
        RankMeConfig(poolings=["last", "last"])


TEXTS = ["The cat sat on the mat.", "Rivers run to the sea", "x = 3 + 4 * 2", "Hello there, friend!", "abc"]


def test_last_token_and_mean_pooled_match_per_prompt_forwards(tiny_model):
    config = RankMeConfig(prompt_sets={"mine": "report"}, batch_size=2)
    result = run_analysis(tiny_model, "rankme", config, texts=TEXTS)
    model = tiny_model.model
    for layer in range(tiny_model.n_layers):
        last, mean = [], []
        for text in TEXTS:  # one text at a time: no padding, no batching, no capture code
            _, cache = model.run_with_cache(text, names_filter=f"blocks.{layer}.hook_resid_post")
            h = cache[f"blocks.{layer}.hook_resid_post"][0].double()
            last.append(h[-1])
            mean.append(h[1:].mean(0))  # BOS excluded from the pooled mean, as capture does
        i_last = [i for i in range(len(result.source)) if result.pooling[i] == "last" and result.layer[i] == layer][0]
        i_mean = [i for i in range(len(result.source)) if result.pooling[i] == "mean" and result.layer[i] == layer][0]
        assert result.rankme[i_last] == pytest.approx(numpy_rankme(torch.stack(last).cpu().numpy()), rel=1e-4)
        assert result.rankme[i_mean] == pytest.approx(numpy_rankme(torch.stack(mean).cpu().numpy()), rel=1e-4)
        assert result.bound[i_last] == min(len(TEXTS), tiny_model.d_model)


def test_sets_are_subsampled_to_equal_size_and_side_by_side(tiny_model, tmp_path):
    (tmp_path / "two.txt").write_text("first prompt\nsecond prompt here\n")
    np.save(tmp_path / "emb.npy", np.random.default_rng(0).normal(size=(20, 6)))
    config = RankMeConfig(prompt_sets={"report": "report", "file": str(tmp_path / "two.txt"), "code": "bundled:code"},
                          embedding_files={"enc": str(tmp_path / "emb.npy")}, max_length=64)
    result = run_analysis(tiny_model, "rankme", config, texts=TEXTS)
    assert result.set_sizes == {"report": 2, "file": 2, "code": 2}
    assert set(result.source) == {"report", "file", "code", "enc"}
    assert [result.pooling[i] for i in range(len(result.source)) if result.source[i] == "enc"] == ["file"]
    assert len(result.figures()) == 2
    assert RankMeResult.from_json(result.to_json()) == result
    unequal = run_analysis(tiny_model, "rankme", RankMeConfig(prompt_sets={"r": "report", "f": str(tmp_path / "two.txt")},
                                                              equal_size=False), texts=TEXTS)
    assert unequal.set_sizes == {"r": 5, "f": 2}
    assert "differ in size" in unequal.summary()


def test_metrics_have_one_key_per_row(tiny_model, tmp_path):
    """The table's rows share a matrix across sets and poolings; a sweep's database needs (metric, layer, site)
    unique, so the site carries the set and the pooling (and an embedding file's label)."""
    np.save(tmp_path / "emb.npy", np.random.default_rng(0).normal(size=(20, 6)))
    config = RankMeConfig(prompt_sets={"report": "report", "code": "bundled:code"},
                          embedding_files={"enc": str(tmp_path / "emb.npy")}, max_length=32)
    result = run_analysis(tiny_model, "rankme", config, texts=TEXTS)
    metrics = result.metrics()
    keys = [(metric, layer, site) for metric, layer, site, _ in metrics]
    assert len(keys) == len(set(keys)) == 5 * len(result.source)
    assert all(type(value) is float for *_, value in metrics)
    by_key = {(m, la, si): v for m, la, si, v in metrics}
    for i in range(len(result.source)):
        site = f"{result.matrix[i]}/{result.source[i]}/{result.pooling[i]}"
        assert by_key[("RankMe", result.layer[i], site)] == result.rankme[i]
        assert by_key[("ceiling min(N, d)", result.layer[i], site)] == result.bound[i]
    layers = {layer for _, layer, site, _ in metrics if site.endswith("/code/mean")}
    assert layers == set(range(tiny_model.n_layers))
    assert {layer for _, layer, site, _ in metrics if site.endswith("/enc/file")} == {None}


def test_report_source_needs_texts_and_sets_need_two_prompts(tiny_model, tmp_path):
    with pytest.raises(ConfigError, match="'prompt_sets'"):
        run_analysis(tiny_model, "rankme", RankMeConfig(prompt_sets={"r": "report"}))
    (tmp_path / "one.txt").write_text("only one prompt\n")
    with pytest.raises(ConfigError, match="at least 2 prompts"):
        run_analysis(tiny_model, "rankme", RankMeConfig(prompt_sets={"o": str(tmp_path / "one.txt")}))


@pytest.mark.slow
def test_bundled_model_mixed_topics_have_higher_rankme_than_single_topics(real_model):
    """Meaning check: 32 prompts drawn across ten topics span more directions than 32 prompts of one topic."""
    from workbench.prompts import default_prompts

    result = run_analysis(real_model, "rankme", RankMeConfig(poolings=["mean"]), texts=default_prompts())
    mixed = sum(result.rankme[i] for i in result.rows("report prompts", "mean"))
    for topic in ("prose", "code", "maths", "dialogue"):
        assert mixed > sum(result.rankme[i] for i in result.rows(topic, "mean")), topic


def test_prompts_of_the_run_come_from_its_shared_capture(tiny_model, tmp_path, monkeypatch):
    """Sets whose prompts are among the run's texts read the per-prompt vectors the runner's capture kept at this
    analysis' sites (no second forward over them); the numbers equal the analysis' own capture to round-off."""
    import workbench.runner as runner_module
    import workbench_analyses.rankme as rankme_module

    (tmp_path / "some.txt").write_text("\n".join(TEXTS[:3]) + "\n")
    (tmp_path / "other.txt").write_text("not among the run's texts\nnor this one\nor this\n")
    config = RankMeConfig(prompt_sets={"report": "report", "some": str(tmp_path / "some.txt"),
                                       "other": str(tmp_path / "other.txt")}, equal_size=False, batch_size=2)
    own, shared = [], []
    real_capture, real_runner_capture = rankme_module.capture, runner_module.capture
    monkeypatch.setattr(rankme_module, "capture", lambda lm, texts, **k: own.append(list(texts)) or real_capture(
        lm, texts, **k))
    monkeypatch.setattr(runner_module, "capture", lambda lm, texts, **k: shared.append(k) or real_runner_capture(
        lm, texts, **k))
    result = run_analysis(tiny_model, "rankme", config, texts=TEXTS)
    assert own == [["not among the run's texts", "nor this one", "or this"]]  # only the set the run does not hold
    assert shared[0]["per_prompt_sites"] == [f"blocks.{i}.hook_resid_post" for i in range(tiny_model.n_layers)]
    own.clear()
    monkeypatch.setattr(rankme_module, "_shared_index", lambda *a: None)  # every set captured by the analysis
    alone = run_analysis(tiny_model, "rankme", config, texts=TEXTS)
    assert len(own) == 3
    assert result.source == alone.source and result.pooling == alone.pooling
    assert result.rankme == pytest.approx(alone.rankme, rel=1e-5)
    assert result.erank == pytest.approx(alone.erank, rel=1e-5)


def test_a_capture_cut_by_max_tokens_is_not_shared(tiny_model, monkeypatch):
    import workbench_analyses.rankme as rankme_module

    own = []
    real_capture = rankme_module.capture
    monkeypatch.setattr(rankme_module, "capture", lambda lm, texts, **k: own.append(list(texts)) or real_capture(
        lm, texts, **k))
    from workbench.runner import run_analyses

    run_analyses(tiny_model, {"rankme": RankMeConfig(prompt_sets={"report": "report"})}, texts=TEXTS, max_tokens=30)
    assert own == [TEXTS]  # the run's capture holds cut texts: the analysis captures them whole itself
