"""Low-rank replacements through the edit handle (named refusals before any weight changes, bit-exact revert) and
token_predictions (equal to a full forward's log-softmax, independent of batching)."""

from __future__ import annotations

import pytest
import torch

from workbench.errors import ConfigError, ShapeError
from workbench.intervene.low_rank_edit import LowRankReplacement, ReplacementHandle, replace_low_rank
from workbench.intervene.readout import token_predictions
from workbench.models.adapters import as_matrix

TEXTS = ["hello there", "a somewhat longer text for padding", "x"]


def _params(lm):
    return {name: p.detach().clone() for name, p in lm.model.named_parameters()}


def _same(lm, saved) -> bool:
    return all(torch.equal(saved[name], p) for name, p in lm.model.named_parameters())


@pytest.mark.parametrize("kind", ["W_Q", "W_K", "W_V", "W_O", "W_in", "W_gate", "W_out"])
def test_every_kind_is_written_in_place_and_reverted_bit_for_bit(tiny_model, kind):
    saved = _params(tiny_model)
    w = as_matrix(kind, tiny_model.weight(kind, 1)).detach().double()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    handle = replace_low_rank(tiny_model, [LowRankReplacement(kind, 1, u[:, :3] * s[:3], vh[:3])])
    now = as_matrix(kind, tiny_model.weight(kind, 1)).detach().double()
    torch.testing.assert_close(now, (u[:, :3] * s[:3]) @ vh[:3], rtol=1e-5, atol=1e-6)
    assert handle.state == "applied" and "low-rank" in handle._repr_html_()
    handle.revert()
    assert handle.state == "reverted" and _same(tiny_model, saved)


def test_bad_replacements_are_refused_before_any_change(tiny_model):
    saved = _params(tiny_model)
    good = LowRankReplacement("W_in", 0, torch.zeros(32, 2), torch.zeros(2, 64))
    with pytest.raises(ShapeError, match="left/right"):
        replace_low_rank(tiny_model, [good, LowRankReplacement("W_in", 1, torch.zeros(32, 2), torch.zeros(3, 64))])
    with pytest.raises(ConfigError, match="'kind'"):
        replace_low_rank(tiny_model, [good, LowRankReplacement("W_E", 0, torch.zeros(32, 2), torch.zeros(2, 64))])
    with pytest.raises(ConfigError, match="'layer'"):
        replace_low_rank(tiny_model, [good, LowRankReplacement("W_in", 9, torch.zeros(32, 2), torch.zeros(2, 64))])
    assert _same(tiny_model, saved)


def test_an_exception_inside_the_block_still_reverts(tiny_model):
    saved = _params(tiny_model)
    with pytest.raises(RuntimeError, match="boom"):
        with ReplacementHandle(tiny_model, [LowRankReplacement("W_out", 0, torch.ones(64, 1), torch.ones(1, 32))]):
            assert not _same(tiny_model, saved)
            raise RuntimeError("boom")
    assert _same(tiny_model, saved)


def test_token_predictions_equal_a_full_forward(tiny_model):
    nll, top1 = token_predictions(tiny_model, TEXTS, batch_size=2)
    expected_nll, expected_top = [], []
    for text in TEXTS:
        ids = tiny_model.model.to_tokens(text)
        with torch.no_grad():
            logp = torch.log_softmax(tiny_model.model(ids)[0, :-1].double(), -1)
        expected_nll.append(-logp.gather(-1, ids[0, 1:, None])[:, 0])
        expected_top.append(logp.argmax(-1))
    torch.testing.assert_close(nll, torch.cat(expected_nll).cpu(), rtol=1e-4, atol=1e-5)
    assert torch.equal(top1, torch.cat(expected_top).cpu())
    again, _ = token_predictions(tiny_model, TEXTS, batch_size=1)
    torch.testing.assert_close(again, nll, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="'max_length'"):
        token_predictions(tiny_model, TEXTS, max_length=1)
