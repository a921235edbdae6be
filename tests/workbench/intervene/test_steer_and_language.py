"""Steering hooks and the language-neuron formulas against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from workbench.capture.hooks import count_hooks
from workbench.errors import ConfigError, ShapeError, SiteError
from workbench.intervene.language import (
    best_window,
    causal_lift,
    selectivity,
    sparse_shift,
    steering_rank,
    subspace_stability,
    top_mass,
)
from workbench.intervene.steer import Steer, steering

SITE = "blocks.0.hook_resid_post"


def test_selectivity_by_hand():
    tgt = torch.tensor([[1.0, 0.0], [3.0, 0.0]])  # mean 2, population sd 1
    en = torch.tensor([[0.0, 1.0], [0.0, 1.0]])  # mean 0, sd 0
    sel = selectivity(tgt, en)
    assert sel[0] == pytest.approx(2 / (1 + 0 + 1e-6)) and sel[1] == pytest.approx(-1 / 1e-6)
    assert selectivity(tgt, en, ddof=1)[0] == pytest.approx(2 / (math.sqrt(2) + 1e-6))
    with pytest.raises(ShapeError, match="'z_en'"):
        selectivity(tgt, torch.zeros(2, 3))


def test_causal_lift_is_the_numpy_median_of_dm_over_alpha():
    alphas = torch.tensor([0.5, 1, 2, 5, 10, 15])
    dm = torch.tensor([0.1, 0.3, 0.2, 1.0, 3.0, 1.5])  # ratios 0.2, 0.3, 0.1, 0.2, 0.3, 0.1 -> median 0.2
    assert float(causal_lift(dm, alphas)) == pytest.approx(0.2)
    assert float(causal_lift(torch.tensor([1.0, 4.0]), torch.tensor([1.0, 1.0]))) == pytest.approx(2.5)


def test_steering_rank_rules():
    # erank on energies (the reference) of [2, 1] is 1.649 -> ceil 2; gap argmax at i=1 -> r = 1
    assert steering_rank(torch.tensor([2.0, 1.0])) == 1
    # flat spectrum of 20: erank 20, gap argmax 1 (all ratios 1) -> min(20, 12, 1) = 1
    assert steering_rank(torch.ones(20)) == 1
    # three equal then a cliff: erank ~3, gap at 3 -> 3
    assert steering_rank(torch.tensor([5.0, 5.0, 5.0, 0.1, 0.1])) == 3
    # zeros after 4 values: the gap into zero wins
    assert steering_rank(torch.tensor([4.0, 3.0, 2.0, 1.5, 0.0, 0.0])) == 4
    # erank([2,1]**2) = 1.649 -> ceil 2; the gap into the zero is 1e10 -> 2; Roy-Vetterli (a variant) agrees here
    assert steering_rank(torch.tensor([2.0, 1.0, 0.0])) == 2
    assert steering_rank(torch.tensor([2.0, 1.0, 0.0]), energy=False) == 2
    assert steering_rank(torch.ones(30), cap=12) == 1
    with pytest.raises(ConfigError, match="'s'"):
        steering_rank(torch.tensor([1.0, 2.0]))


def test_top_mass_stability_and_window():
    s = torch.tensor([3.0, 1.0])
    assert top_mass(s, 1) == pytest.approx(0.9)
    g = torch.Generator().manual_seed(0)
    one_direction = torch.randn(40, 1, generator=g) * torch.tensor([[1.0, 0, 0, 0]])  # rank 1 along e1
    all4 = [0, 1, 2, 3]
    assert subspace_stability(one_direction + 1e-6 * torch.randn(40, 4, generator=g), all4) == \
        pytest.approx(1, abs=1e-6)
    noise = torch.randn(40, 4, generator=g)
    assert subspace_stability(noise, all4) < 0.9
    assert best_window([0, 0, 1, 5, 5, 5, 0, 0, 0], min_len=3, max_len=3) == (3, 5)
    assert best_window([1, 1, 1, 1, 1, 1, 1, 1]) == (0, 5)
    with pytest.raises(ConfigError, match="'scores'"):
        best_window([1.0, 2.0])
    assert best_window([0, 1, 1, 1, 0], min_len=3, max_len=4) == (0, 3)  # tie: the earlier window wins
    with pytest.raises(ConfigError, match="'neurons'"):
        subspace_stability(torch.randn(3, 10), [4, 10])
    with pytest.raises(ShapeError, match="'delta'"):
        subspace_stability(torch.randn(3), [0])


def test_sparse_shift_by_hand():
    z = torch.tensor([[1.0, 2.0, 3.0]])
    mu_tgt, mu_en = torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0.0, 3.0, 4.0])
    mask = torch.tensor([False, True, True])
    # en_hat = (0, .6, .8); <z, en_hat> on the mask = 1.2 + 2.4 = 3.6
    out = sparse_shift(z, mu_tgt, mu_en, mask, lam=2.0, beta=0.5)
    assert torch.allclose(out, torch.tensor([[0.0, 2 - 0.5 * 3.6 * 0.6, 2 - 0.5 * 3.6 * 0.8]]))
    assert float(sparse_shift(z, mu_tgt, mu_en, mask, lam=0, beta=1)[0] @ torch.tensor([0, 0.6, 0.8])) == \
        pytest.approx(-3.6)
    with pytest.raises(ConfigError, match="'mask'"):
        sparse_shift(z, mu_tgt, mu_en, torch.zeros(3, dtype=torch.bool), lam=1, beta=1)


def test_steering_zero_is_identity_and_vector_moves_the_last_position(tiny_model):
    tokens = tiny_model.model.to_tokens(["hello world"])
    with torch.no_grad():
        plain = tiny_model.model(tokens)
        with steering(tiny_model, [Steer(SITE, torch.randn(32), scale=0.0)]):
            zero = tiny_model.model(tokens)
        with steering(tiny_model, [Steer(SITE, torch.randn(32), scale=5.0)]):
            moved = tiny_model.model(tokens)
    assert torch.equal(plain, zero)
    assert torch.allclose(plain[:, :-1], moved[:, :-1]) and not torch.allclose(plain[:, -1], moved[:, -1])
    assert count_hooks(tiny_model.hook_points()) == 0


def test_steering_generation_and_callable_shift(tiny_model):
    tokens = tiny_model.model.to_tokens(["abc"])
    with torch.no_grad():
        plain = tiny_model.model.generate(tokens, max_new_tokens=5, do_sample=False, verbose=False)
        with steering(tiny_model, [Steer(SITE, lambda x: -x, scale=1.0, positions=None)]):  # zero the stream
            steered = tiny_model.model.generate(tokens, max_new_tokens=5, do_sample=False, verbose=False)
    assert plain.shape == steered.shape and not torch.equal(plain, steered)
    assert count_hooks(tiny_model.hook_points()) == 0


def test_steering_errors_remove_hooks(tiny_model):
    tokens = tiny_model.model.to_tokens(["abc"])
    with pytest.raises(ShapeError, match="'vector'"):
        with steering(tiny_model, [Steer(SITE, torch.zeros(7))]):
            tiny_model.model(tokens)
    assert count_hooks(tiny_model.hook_points()) == 0
    with pytest.raises(SiteError):
        with steering(tiny_model, [Steer("blocks.9.hook_nope", torch.zeros(32))]):
            pass
    with pytest.raises(ConfigError, match="'scale'"):
        with steering(tiny_model, [Steer(SITE, torch.zeros(32), scale="big")]):
            pass


def test_per_example_positions_match_steering_each_prompt_alone(tiny_model):
    texts = ["abcdef", "xy"]
    batch = tiny_model.model.to_tokens(texts)  # right-padded: "last" would hit padding for the short text
    lengths = torch.tensor([len(tiny_model.model.to_tokens(t)[0]) for t in texts])
    v = torch.randn(32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), steering(tiny_model, [Steer(SITE, v, scale=3.0, positions=lengths - 1)]):
        together = tiny_model.model(batch)
    for i, text in enumerate(texts):
        with torch.no_grad(), steering(tiny_model, [Steer(SITE, v, scale=3.0)]):
            alone = tiny_model.model(tiny_model.model.to_tokens(text))
        assert torch.allclose(together[i, lengths[i] - 1], alone[0, -1], atol=1e-4)
    with pytest.raises(ConfigError, match="'positions'"):
        with torch.no_grad(), steering(tiny_model, [Steer(SITE, v, positions=torch.tensor([9, 9]))]):
            tiny_model.model(batch)


def test_mask_positions_steer_exactly_the_marked_rows(tiny_model):
    tokens = tiny_model.model.to_tokens(["abcdef", "xyz"])
    mask = torch.zeros(tokens.shape, dtype=torch.bool)
    mask[0, 3:] = True
    v = torch.randn(32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        with steering(tiny_model, [Steer(SITE, v, scale=2.0, positions=mask)]):
            masked = tiny_model.model(tokens)
        with steering(tiny_model, [Steer(SITE, v, scale=2.0, positions=list(range(3, tokens.shape[1])))]):
            listed = tiny_model.model(tokens)
        plain = tiny_model.model(tokens)
    assert torch.allclose(masked[0], listed[0], atol=1e-5) and torch.equal(masked[1], plain[1])
    assert torch.equal(masked[0, :3], plain[0, :3]) and not torch.allclose(masked[0, 3:], plain[0, 3:])
    with pytest.raises(ConfigError, match="'positions'"):
        with torch.no_grad(), steering(tiny_model, [Steer(SITE, v, positions=mask[:, :2])]):
            tiny_model.model(tokens)
