"""Steer2Edit formulas against hand computations, and rank-1 weight edits: exact revert, hook-free inference, save and
reload."""

from __future__ import annotations

import pytest
import torch

from workbench.capture.hooks import count_hooks
from workbench.errors import ConfigError
from workbench.intervene.edit import (
    ComponentEdit,
    apply_edits,
    edited,
    elastic_net_lambda,
    head_attribution,
    head_edit,
    load_edits,
    neuron_attribution,
    neuron_edit,
    save_edits,
)


def test_elastic_net_lambda_by_hand():
    g = torch.tensor([0.9, -0.5, 0.2, 0.0])
    lam = elastic_net_lambda(g, rho=0.5, alpha=0.8)  # threshold ρα = 0.4, scale ρ(1 − α) = 0.1
    assert lam.tolist() == pytest.approx([(0.9 - 0.4) / 0.1, -(0.5 - 0.4) / 0.1, 0.0, 0.0])


def test_elastic_net_is_zero_when_every_attribution_is_below_the_threshold():
    g = torch.tensor([0.3, -0.3, 0.1])
    assert torch.equal(elastic_net_lambda(g, rho=1.0), torch.zeros(3, dtype=torch.float64))  # ρα = 0.95


@pytest.mark.parametrize("kwargs, param", [({"rho": float("inf")}, "rho"), ({"rho": "0.5"}, "rho"),
                                           ({"rho": 1.0, "alpha": 1.0}, "alpha"),
                                           ({"rho": 1.0, "alpha": -0.1}, "alpha"), ({"rho": float("nan")}, "rho")])
def test_elastic_net_rejects_bad_rho_and_alpha(kwargs, param):
    with pytest.raises(ConfigError, match=repr(param)):
        elastic_net_lambda(torch.ones(2), **kwargs)


def test_attributions_by_hand():
    v = torch.tensor([1.0, 0.0])
    w_o = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]], [[-1.0, 1.0]]])  # 3 heads, d_head 1, d_model 2
    z = torch.tensor([[2.0], [1.0], [1.0]])
    assert head_attribution(v, w_o, z).tolist() == pytest.approx([1.0, 0.0, -1 / 2 ** 0.5])
    w_out = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    assert neuron_attribution(v, w_out, torch.tensor([-1.0, 5.0])).tolist() == pytest.approx([-0.6, 0.0])


def _edits(lm):
    v = torch.randn(lm.facts.d_model, generator=torch.Generator().manual_seed(0))
    w_o = lm.weight("W_O", 1).detach()
    w_out = lm.weight("W_out", 0).detach()
    return [head_edit(1, 2, 0.7, 0.9, v, w_o[2]), neuron_edit(0, 5, -1.3, -0.8, v, w_out[5]),
            neuron_edit(0, 5, 0.4, 0.5, v, w_out[5])]  # the same row twice: revert must unwind both


def test_edit_changes_exactly_the_rows_and_reverts_bit_for_bit(tiny_model):
    before = {k: p.detach().clone() for k, p in tiny_model.model.state_dict().items()}
    tokens = tiny_model.model.to_tokens(["abc de"])
    plain = tiny_model.model(tokens)
    edits = _edits(tiny_model)
    w_o_before = tiny_model.weight("W_O", 1).detach().clone()
    w_out_before = tiny_model.weight("W_out", 0).detach().clone()
    with edited(tiny_model, edits):
        w_o = tiny_model.weight("W_O", 1).detach()
        assert torch.allclose(w_o[2] - w_o_before[2], edits[0].delta().float(), atol=1e-6)
        assert torch.equal(w_o[:2], w_o_before[:2]) and torch.equal(w_o[3:], w_o_before[3:])
        w_out = tiny_model.weight("W_out", 0).detach()
        assert torch.allclose(w_out[5] - w_out_before[5], (edits[1].delta() + edits[2].delta()).float(), atol=1e-6)
        changed = tiny_model.model(tokens)
        assert count_hooks(tiny_model.hook_points()) == 0  # the edit is in the weights: no hooks at inference
    assert not torch.allclose(plain, changed)
    after = tiny_model.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(tiny_model.model(tokens), plain)


def test_head_edit_formula_in_tl_orientation(tiny_model):
    v = torch.randn(tiny_model.facts.d_model, generator=torch.Generator().manual_seed(1)).to(tiny_model.device)
    w_o = tiny_model.weight("W_O", 0).detach().clone()
    edit = head_edit(0, 1, 2.0, 0.5, v, w_o[1])
    v_hat = v.double() / v.double().norm()
    k = w_o[1].double() @ v_hat
    with edited(tiny_model, [edit]):
        new = tiny_model.weight("W_O", 0).detach()
        expected = w_o[1].double() + 2.0 * torch.outer(k / k.norm(), v_hat)
        assert torch.allclose(new[1].double(), expected, atol=1e-6)
        assert torch.equal(new[0], w_o[0]) and torch.equal(new[2:], w_o[2:])
    assert torch.equal(tiny_model.weight("W_O", 0).detach(), w_o)


def test_neuron_edit_sign_follows_the_row(tiny_model):
    v = torch.zeros(tiny_model.facts.d_model)
    v[0] = 2.0
    row = torch.zeros(tiny_model.facts.d_model)
    row[0] = -3.0
    e = neuron_edit(0, 0, 0.5, 0.7, v, row)
    assert e.lam == -0.5 and e.delta()[0] == pytest.approx(-0.5) and e.v[0] == 1.0


def test_revert_after_an_error_inside_the_block(tiny_model):
    before = tiny_model.weight("W_out", 0).detach().clone()
    with pytest.raises(RuntimeError, match="boom"):
        with edited(tiny_model, _edits(tiny_model)):
            raise RuntimeError("boom")
    assert torch.equal(tiny_model.weight("W_out", 0).detach(), before)


def test_a_bad_edit_changes_nothing(tiny_model):
    before = {k: p.detach().clone() for k, p in tiny_model.model.state_dict().items()}
    bad = _edits(tiny_model)[:1] + [ComponentEdit("neuron", 9, 0, 1.0, 1.0, torch.ones(32))]
    with pytest.raises(ConfigError, match="'layer'"):
        apply_edits(tiny_model, bad)
    after = tiny_model.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_saved_edits_reload_identically(tiny_model, tmp_path):
    edits = _edits(tiny_model)
    save_edits(edits, tmp_path / "edit")
    again = load_edits(tmp_path / "edit")
    assert [(e.kind, e.layer, e.index, e.lam, e.g) for e in again] == [(e.kind, e.layer, e.index, e.lam, e.g)
                                                                       for e in edits]
    assert all(torch.equal(a.v, b.v.double()) and (a.k is None) == (b.k is None) for a, b in zip(again, edits))
    tokens = tiny_model.model.to_tokens(["abc de"])
    with edited(tiny_model, edits):
        one = tiny_model.model(tokens)
    with edited(tiny_model, again):
        two = tiny_model.model(tokens)
    assert torch.equal(one, two)
    with pytest.raises(ConfigError, match="'path'"):
        load_edits(tmp_path / "nothing")
