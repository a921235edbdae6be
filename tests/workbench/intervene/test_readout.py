"""Cheap readouts (logits at chosen positions, batched greedy generation, continuation likelihoods) against the plain
full forward and one-prompt-at-a-time generation, with and without steering."""

from __future__ import annotations

import pytest
import torch

from workbench.capture.hooks import count_hooks
from workbench.errors import ConfigError, ShapeError
from workbench.intervene.readout import (
    continuation_nll,
    final_residual,
    greedy_continuations,
    position_logits,
    right_padded,
)
from workbench.intervene.steer import Steer, steering

SITE = "blocks.0.hook_resid_post"
TEXTS = ["abcdef", "xy", "hello there"]


def test_position_logits_equal_the_full_forward(tiny_model):
    tokens, last = right_padded(tiny_model, TEXTS)
    assert last.tolist() == [len(tiny_model.model.to_tokens(t)[0]) - 1 for t in TEXTS]
    with torch.no_grad():
        full = tiny_model.model(tokens.to(tiny_model.device))
    got = position_logits(tiny_model, tokens, last, batch_size=2)
    assert torch.allclose(got, full[torch.arange(3), last].float(), atol=1e-5)
    assert final_residual(tiny_model, tokens).shape == (*tokens.shape, 32)
    assert count_hooks(tiny_model.hook_points()) == 0
    with pytest.raises(ShapeError, match="'positions'"):
        position_logits(tiny_model, tokens, torch.tensor([0, 99, 0]))


def test_position_logits_see_steering(tiny_model):
    tokens, last = right_padded(tiny_model, TEXTS)
    v = torch.randn(32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), steering(tiny_model, [Steer(SITE, v, scale=4.0, positions=last)]):
        full = tiny_model.model(tokens.to(tiny_model.device))
        got = position_logits(tiny_model, tokens, last, batch_size=3)
    assert torch.allclose(got, full[torch.arange(3), last].float(), atol=1e-5)
    assert not torch.allclose(got, position_logits(tiny_model, tokens, last), atol=1e-3)


def test_batched_greedy_equals_one_prompt_at_a_time(tiny_model):
    batched = greedy_continuations(tiny_model, TEXTS, max_new_tokens=5, batch_size=2)
    for text, cont in zip(TEXTS, batched):
        with torch.no_grad():
            alone = tiny_model.model.generate(text, max_new_tokens=5, do_sample=False, verbose=False,
                                              return_type="tokens")
        assert cont.tolist() == alone[0, len(tiny_model.model.to_tokens(text)[0]):].tolist()
    with pytest.raises(ConfigError, match="'max_new_tokens'"):
        greedy_continuations(tiny_model, TEXTS, max_new_tokens=0)


def test_batched_greedy_under_last_position_steering_equals_one_at_a_time(tiny_model):
    v = torch.randn(32, generator=torch.Generator().manual_seed(2))
    with steering(tiny_model, [Steer(SITE, v, scale=3.0)]):
        batched = greedy_continuations(tiny_model, TEXTS, max_new_tokens=4, batch_size=3)
        alone = [greedy_continuations(tiny_model, [t], max_new_tokens=4)[0] for t in TEXTS]
    assert [b.tolist() for b in batched] == [a.tolist() for a in alone]
    plain = greedy_continuations(tiny_model, TEXTS, max_new_tokens=4)
    assert [b.tolist() for b in batched] != [c.tolist() for c in plain]


def test_continuation_nll_equals_a_direct_computation(tiny_model):
    conts = greedy_continuations(tiny_model, TEXTS, max_new_tokens=4)
    v = torch.randn(32, generator=torch.Generator().manual_seed(3))
    for steers in (None, lambda positions: [Steer(SITE, v, scale=2.0, positions=positions)]):
        got = continuation_nll(tiny_model, TEXTS, conts, steers=steers, batch_size=2)
        for i, (text, cont) in enumerate(zip(TEXTS, conts)):
            prompt = tiny_model.model.to_tokens(text)[0]
            ids = torch.cat([prompt, cont.to(prompt.device)])[None]
            start = len(prompt)
            hooks = [Steer(SITE, v, scale=2.0, positions=list(range(start - 1, ids.shape[1])))] if steers else []
            with torch.no_grad(), steering(tiny_model, hooks):
                logp = torch.log_softmax(tiny_model.model(ids)[0].double(), -1)
            expected = -logp[torch.arange(start - 1, ids.shape[1] - 1), ids[0, start:]].mean()
            assert float(got[i]) == pytest.approx(float(expected), abs=1e-4)
    assert count_hooks(tiny_model.hook_points()) == 0
    with pytest.raises(ConfigError, match="'continuations'"):
        continuation_nll(tiny_model, TEXTS, conts[:1])
