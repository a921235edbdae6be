"""workbench.sae: sae-lens SAEs trained on an in-memory matrix, their use, the disk cache and argument checking.

Tiny sizes only (N=512, d=16, d_sae=32, a few epochs): each training takes well under a second on a CPU.
"""

from __future__ import annotations

import json

import pytest
import torch

import workbench.sae.training as wsae
from workbench.errors import ConfigError, ShapeError
from workbench.sae import INFO_FILE, TrainedSAE, cached_sae, decoder_directions, encode, train_sae

N, D, D_SAE, K, N_TRUE = 512, 16, 32, 4, 8
FAST = dict(d_sae=D_SAE, k=K, epochs=10, lr=5e-3, batch_size=64)


def _sparse_data(seed: int = 0, n: int = N) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows that are non-negative sparse combinations (about 2 of 8) of known unit directions in R^16."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(N_TRUE, D, generator=g), dim=1)
    coefficients = torch.rand(n, N_TRUE, generator=g) * 2 * (torch.rand(n, N_TRUE, generator=g) < 0.25)
    return coefficients @ directions, directions


@pytest.fixture(scope="module")
def data() -> torch.Tensor:
    return _sparse_data()[0]


@pytest.fixture(scope="module")
def topk(data) -> TrainedSAE:
    return train_sae(data, **FAST)


@pytest.fixture(scope="module")
def standard(data) -> TrainedSAE:
    return train_sae(data, architecture="standard", **FAST)


# ---------------------------------------------------------------------------------------------------------------------
# training


def test_topk_learns_sparse_data(topk):
    from sae_lens import TopKSAE

    assert isinstance(topk.sae, TopKSAE) and not topk.sae.training
    assert topk.architecture == "topk" and (topk.d_in, topk.d_sae) == (D, D_SAE)
    assert len(topk.history) == FAST["epochs"]
    assert topk.history[-1] < 0.5 * topk.history[0]
    assert topk.fvu < 0.5
    assert topk.l0 == K


def test_standard_learns_sparse_data(standard):
    from sae_lens import StandardSAE

    assert isinstance(standard.sae, StandardSAE)
    assert standard.sae.cfg.metadata.training_architecture_details["l1_coefficient"] == 5e-3
    assert standard.history[-1] < 0.5 * standard.history[0]
    assert standard.fvu < 0.5
    assert 0 < standard.l0 <= D_SAE


def test_fvu_and_l0_match_a_direct_measurement(topk, data):
    acts = encode(topk, data)
    recon = topk.sae.decode(acts).detach()
    fvu = ((data - recon) ** 2).sum() / ((data - data.mean(0)) ** 2).sum()
    assert topk.fvu == pytest.approx(float(fvu), rel=1e-4)
    assert topk.l0 == pytest.approx(float((acts != 0).sum(1).float().mean()))


@pytest.mark.parametrize("which", ["topk", "standard"])
def test_encode_and_decoder_shapes_and_unit_rows(which, request, data):
    trained = request.getfixturevalue(which)
    acts = encode(trained, data)
    assert acts.shape == (N, D_SAE) and acts.dtype == torch.float32 and bool((acts >= 0).all())
    assert torch.equal(acts, encode(trained.sae, data))  # the bare sae-lens SAE works too
    if which == "topk":
        assert bool(((acts != 0).sum(1) <= K).all())
    w = decoder_directions(trained)
    assert w.shape == (D_SAE, D)
    torch.testing.assert_close(w.norm(dim=1), torch.ones(D_SAE), rtol=0, atol=1e-5)
    w.zero_()  # a copy: the SAE is untouched
    assert float(trained.sae.W_dec.detach().abs().sum()) > 0


def test_encode_accepts_other_dtypes_and_rejects_wrong_width(topk, data):
    assert encode(topk, data.double()).shape == (N, D_SAE)
    with pytest.raises(ShapeError, match="'x'"):
        encode(topk, data[:, :-1])
    with pytest.raises(ShapeError, match="'x'"):
        encode(topk, data[0])
    with pytest.raises(ConfigError, match="'sae'"):
        encode("not an sae", data)


def test_same_seed_same_sae_and_caller_rng_untouched(data):
    state = torch.get_rng_state()
    a = train_sae(data, **{**FAST, "epochs": 3})
    assert torch.equal(torch.get_rng_state(), state)
    b = train_sae(data, **{**FAST, "epochs": 3})
    c = train_sae(data, **{**FAST, "epochs": 3, "seed": 1})
    assert torch.equal(decoder_directions(a), decoder_directions(b)) and a.history == b.history
    assert not torch.equal(decoder_directions(a), decoder_directions(c))


def test_batch_larger_than_data_is_clamped():
    x, _ = _sparse_data(n=40)
    trained = train_sae(x, d_sae=8, k=2, epochs=2, batch_size=256)
    assert len(trained.history) == 2 and trained.l0 <= 2


# ---------------------------------------------------------------------------------------------------------------------
# cache


@pytest.fixture
def counted(monkeypatch):
    """Count calls of the training function behind cached_sae."""
    calls = []
    real = wsae._train

    def wrapper(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(wsae, "_train", wrapper)
    return calls


def test_cache_hit_does_not_retrain_and_returns_identical_weights(tmp_path, data, counted, monkeypatch):
    key = {"model": "tiny", "layer": 3, "data": "synthetic"}
    first = cached_sae(data, key=key, cache_dir=tmp_path, **FAST)
    assert len(counted) == 1 and first.path is not None and first.path.parent == tmp_path
    assert {p.name for p in first.path.iterdir()} >= {"cfg.json", "sae_weights.safetensors", INFO_FILE}
    info = json.loads((first.path / INFO_FILE).read_text())
    assert info["identity"]["key"] == key and info["l0"] == first.l0

    def refuse(*args, **kwargs):
        raise AssertionError("retrained on a cache hit")

    monkeypatch.setattr(wsae, "_train", refuse)
    second = cached_sae(data.clone(), key=dict(reversed(key.items())), cache_dir=tmp_path, progress=True, **FAST)
    assert second.path == first.path
    assert torch.equal(decoder_directions(second), decoder_directions(first))
    assert torch.equal(encode(second, data), encode(first, data))
    assert (second.fvu, second.l0, second.history) == (first.fvu, first.l0, first.history)
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]  # no temporary leftovers


def test_cache_misses_on_other_key_data_or_arguments(tmp_path, data, counted):
    cached_sae(data, key={"layer": 3}, cache_dir=tmp_path, **FAST)
    cached_sae(data, key={"layer": 4}, cache_dir=tmp_path, **FAST)
    other = data.clone()
    other[0, 0] += 1e-3
    cached_sae(other, key={"layer": 3}, cache_dir=tmp_path, **FAST)
    cached_sae(data, key={"layer": 3}, cache_dir=tmp_path, **{**FAST, "k": 2})
    cached_sae(data, key={"layer": 3}, cache_dir=tmp_path, **FAST)  # the first again: a hit
    assert len(counted) == 4
    assert len([p for p in tmp_path.iterdir()]) == 4


def test_cache_default_folder_follows_workbench_cache(tmp_path, data, counted, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    trained = cached_sae(data, key={"m": 1}, **{**FAST, "epochs": 1})
    assert trained.path.parent == tmp_path / "sae"


def test_interrupted_save_leaves_nothing_and_a_damaged_folder_is_rebuilt(tmp_path, data, counted, monkeypatch):
    from sae_lens import SAE

    real_save = SAE.save_model

    def crash(self, path):
        real_save(self, path)
        raise KeyboardInterrupt

    monkeypatch.setattr(SAE, "save_model", crash)
    with pytest.raises(KeyboardInterrupt):
        cached_sae(data, key={"m": 1}, cache_dir=tmp_path, **{**FAST, "epochs": 1})
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(SAE, "save_model", real_save)

    good = cached_sae(data, key={"m": 1}, cache_dir=tmp_path, **{**FAST, "epochs": 1})
    (good.path / "sae_weights.safetensors").unlink()
    again = cached_sae(data, key={"m": 1}, cache_dir=tmp_path, **{**FAST, "epochs": 1})
    assert len(counted) == 3 and again.path == good.path
    assert (again.path / "sae_weights.safetensors").is_file()


# ---------------------------------------------------------------------------------------------------------------------
# argument checking


@pytest.mark.parametrize(("kwargs", "error", "param"), [
    ({"d_sae": 0}, ConfigError, "d_sae"),
    ({"d_sae": 8.0}, ConfigError, "d_sae"),
    ({"k": 0}, ConfigError, "k"),
    ({"k": D_SAE + 1}, ConfigError, "k"),
    ({"architecture": "jumprelu"}, ConfigError, "architecture"),
    ({"epochs": 0}, ConfigError, "epochs"),
    ({"lr": 0.0}, ConfigError, "lr"),
    ({"lr": float("nan")}, ConfigError, "lr"),
    ({"batch_size": 0}, ConfigError, "batch_size"),
    ({"seed": 1.5}, ConfigError, "seed"),
    ({"l1_coefficient": -1.0}, ConfigError, "l1_coefficient"),
    ({"device": "nonsense"}, ConfigError, "device"),
    ({"device": "cuda:99"}, ConfigError, "device"),  # parsed by torch, but not on this machine (issue 21 point 3)
    ({"progress": "yes"}, ConfigError, "progress"),
])
def test_bad_arguments_name_the_parameter(kwargs, error, param, data):
    with pytest.raises(error, match=f"train_sae\\(\\): parameter '{param}'"):
        train_sae(data, **{**FAST, **kwargs})


def test_k_is_not_bounded_for_the_standard_architecture(data):
    trained = train_sae(data, architecture="standard", d_sae=4, k=32, epochs=1)
    assert trained.d_sae == 4


@pytest.mark.parametrize("bad", [
    torch.zeros(10),
    torch.zeros(2, 3, 4),
    torch.zeros(1, 16),
    torch.zeros(5, 0),
    torch.tensor([[1.0, float("nan")], [0.0, 1.0]]),
    torch.tensor([[1.0, float("inf")], [0.0, 1.0]]),
    torch.zeros(4, 2, dtype=torch.complex64),
    "text",
])
def test_bad_activations_raise_shape_error(bad):
    with pytest.raises(ShapeError, match="parameter 'activations'"):
        train_sae(bad, d_sae=4, k=1)


def test_cached_sae_checks_its_own_arguments(tmp_path, data):
    with pytest.raises(ConfigError, match="cached_sae\\(\\): parameter 'key'"):
        cached_sae(data, key=["not", "a", "dict"], cache_dir=tmp_path, **FAST)
    with pytest.raises(ConfigError, match="parameter 'key'"):
        cached_sae(data, key={"obj": object()}, cache_dir=tmp_path, **FAST)
    with pytest.raises(ConfigError, match="parameter 'n_features'"):
        cached_sae(data, key={}, cache_dir=tmp_path, n_features=3, **FAST)
    with pytest.raises(ConfigError, match="cached_sae\\(\\): parameter 'k'"):
        cached_sae(data, key={}, cache_dir=tmp_path, **{**FAST, "k": 0})
    with pytest.raises(ShapeError, match="cached_sae\\(\\): parameter 'activations'"):
        cached_sae(data[0], key={}, cache_dir=tmp_path, **FAST)
    assert list(tmp_path.iterdir()) == []
