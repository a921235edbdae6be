"""rankme: closed forms, independent SVDs, embedding files, the per-prompt analysis against per-prompt forwards."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from workbench.errors import ConfigError, ShapeError
from workbench.matrix_files import read_matrices
from workbench.runner import run_analysis
from workbench.spectra.embeddings import rankme_of, rankme_of_file
from workbench_analyses.rankme import RankMeConfig, RankMeResult

EPS = 1e-7


def _reference(z: np.ndarray, eps: float = EPS) -> float:
    """Garrido et al. eq. (1) written out with numpy's SVD in float64."""
    s = np.linalg.svd(z.astype(np.float64), compute_uv=False)
    p = s / s.sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def test_identity_and_rank_one_closed_forms():
    n = 50
    ident = float(n * (1 / n + EPS) * -math.log(1 / n + EPS))
    assert rankme_of([torch.eye(n, dtype=torch.float64)])[0] == pytest.approx(math.exp(ident), rel=1e-12)
    u, v = torch.randn(n, 1, dtype=torch.float64), torch.randn(1, 30, dtype=torch.float64)
    # σ = (s, 0, ..., 0): p = (1 + ε, ε, ..., ε) over min(n, d) = 30 values
    h = -((1 + EPS) * math.log(1 + EPS) + 29 * EPS * math.log(EPS))
    assert rankme_of([u @ v])[0] == pytest.approx(math.exp(h), rel=1e-6)
    assert 1.0 < rankme_of([u @ v])[0] < 1.0001


def test_matches_numpy_and_is_scale_and_rotation_invariant():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(80, 40, generator=g, dtype=torch.float64) * torch.linspace(0.01, 1, 40, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(40, 40, generator=g, dtype=torch.float64))
    a, b, c = rankme_of([z, 3.5 * z @ q, z[:, :20]])  # two shapes: one batched call per shape
    assert a == pytest.approx(_reference(z.numpy()), rel=1e-10)
    assert b == pytest.approx(a, rel=1e-10)
    assert c == pytest.approx(_reference(z[:, :20].numpy()), rel=1e-10)


def test_centring_equals_rankme_of_centred_rows():
    z = torch.randn(60, 16, dtype=torch.float64) + 10.0
    assert rankme_of([z], center=True)[0] == pytest.approx(_reference((z - z.mean(0)).numpy()), rel=1e-9)
    assert rankme_of([z])[0] < rankme_of([z], center=True)[0]  # the mean direction dominates the uncentred spectrum


@pytest.mark.parametrize("bad", [torch.randn(1, 8), torch.randn(8)])
def test_one_row_or_1d_embeddings_are_rejected(bad):
    with pytest.raises(ConfigError, match=r"matrices\[0\]"):
        rankme_of([bad])


def test_nan_is_rejected():
    z = torch.randn(10, 4)
    z[3, 2] = float("nan")
    with pytest.raises(ShapeError, match=r"'matrices\[0\]' must be finite"):
        rankme_of([z])


def test_embedding_files_in_three_formats(tmp_path):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(30, 12, generator=g), torch.randn(30, 12, generator=g) @ torch.diag(torch.logspace(0, -3, 12))
    np.save(tmp_path / "one.npy", a.numpy())
    np.save(tmp_path / "stack.npy", torch.stack([a, b]).numpy())
    torch.save({"layer10": b, "layer2": a}, tmp_path / "named.pt")
    save_file({"x": a.contiguous(), "y": b.contiguous()}, tmp_path / "st.safetensors")
    ra, rb = _reference(a.numpy()), _reference(b.numpy())
    assert rankme_of_file(tmp_path / "one.npy") == {"one": pytest.approx(ra, rel=1e-5)}
    assert rankme_of_file(tmp_path / "stack.npy") == {"0": pytest.approx(ra, rel=1e-5), "1": pytest.approx(rb, rel=1e-4)}
    assert list(rankme_of_file(tmp_path / "named.pt")) == ["layer2", "layer10"]  # natural order
    assert rankme_of_file(tmp_path / "st.safetensors")["y"] == pytest.approx(rb, rel=1e-4)


def test_embedding_file_errors(tmp_path):
    np.save(tmp_path / "row.npy", np.ones((1, 5)))
    np.save(tmp_path / "vec.npy", np.ones(5))
    bad = np.random.rand(4, 3)
    bad[0, 0] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    for name, match in [("row.npy", "at least 2 rows"), ("vec.npy", "must be 2-D"), ("nan.npy", "NaN"),
                        ("junk.pt", "could not read"), ("missing.npy", "existing file"), ("x.csv", "end in one of")]:
        with pytest.raises(ConfigError, match=match):
            read_matrices(tmp_path / name)


def test_embedding_file_name_clash_and_foreign_byte_order(tmp_path):
    torch.save({"a": torch.randn(2, 4, 3), "a.0": torch.zeros(4, 3)}, tmp_path / "clash.pt")
    with pytest.raises(ConfigError, match="already exist"):
        read_matrices(tmp_path / "clash.pt")
    np.save(tmp_path / "big.npy", np.random.rand(4, 3).astype(">f8"))
    try:
        mats = read_matrices(tmp_path / "big.npy")  # either read correctly or refused with a named error
        assert mats["big"].shape == (4, 3)
    except ConfigError as exc:
        assert "big.npy" in str(exc)


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
        assert result.rankme[i_last] == pytest.approx(_reference(torch.stack(last).numpy()), rel=1e-4)
        assert result.rankme[i_mean] == pytest.approx(_reference(torch.stack(mean).numpy()), rel=1e-4)
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
