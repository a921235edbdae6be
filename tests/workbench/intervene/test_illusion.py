"""The distilled example: a 1-D patch along disconnected + dormant flips the output; its parts and the whole site do
not; the diagnostics flag it. DAS finds such a direction by itself."""

from __future__ import annotations

import math

import pytest
import torch

from tests.workbench.intervene.distilled import W_OUT, Distilled, pairs
from workbench.capture.hooks import count_hooks
from workbench.errors import ConfigError, ShapeError
from workbench.intervene import Patch, patched_logits
from workbench.intervene.das import train_das
from workbench.intervene.illusion import diagnose, row_space, split_direction
from workbench.intervene.metrics import logit_diff

SITE = "hook_hidden"


def _ld(model, base, source, answer, cf, patch):
    return logit_diff(patched_logits(model, base, source, [patch]), answer, cf)


def test_sum_direction_flips_while_parts_and_whole_site_do_not():
    model = Distilled()
    base, source, answer, cf = pairs()
    v = torch.tensor([1.0, 1.0]) / math.sqrt(2)
    assert (_ld(model, base, source, answer, cf, Patch(SITE, basis=v)) < 0).all()  # flipped
    for part in (torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])):
        assert (_ld(model, base, source, answer, cf, Patch(SITE, basis=part)) > 0).all()
    assert (_ld(model, base, source, answer, cf, Patch(SITE)) > 0).all()  # whole-site patch: no effect


def test_split_and_null_space_is_invisible_downstream():
    v = torch.tensor([1.0, 1.0]) / math.sqrt(2)
    split = split_direction(v, W_OUT)
    assert torch.allclose(split.v_row, torch.tensor([0.0, 1.0]) / math.sqrt(2))
    assert torch.allclose(split.v_null, torch.tensor([1.0, 0.0]) / math.sqrt(2))
    assert split.null_leak < 1e-12 and split.row_fraction == pytest.approx(0.5)
    # a random wide reader matrix: v_null @ readers is numerically zero, v_row carries everything the readers see
    g = torch.Generator().manual_seed(0)
    readers = torch.randn(50, 20, generator=g, dtype=torch.float64)
    v = torch.randn(50, generator=g, dtype=torch.float64)
    s = split_direction(v, readers)
    assert float((s.v_null @ readers).norm()) < 1e-10 * float(readers.norm())
    assert torch.allclose(s.v_row @ readers, v @ readers)
    assert row_space(readers).shape == (50, 20)


def test_diagnostics_flag_the_illusion():
    model = Distilled()
    base, source, answer, cf = pairs()
    feature = torch.cat([base[:, 0], source[:, 0]]) > 0
    diag = diagnose(model, site=SITE, position=-1, direction=torch.tensor([1.0, 1.0]), readers=W_OUT, base=base,
                    source=source, answer=answer, counterfactual=cf, source_answer=cf, source_alternative=answer,
                    feature=feature)
    assert diag.effects["v"].interchange_accuracy == 1.0 and diag.effects["v"].fldd > 1
    # the reference's fraction recovered: mean(LD_base + LD_patched)/mean(LD_base + LD_whole) = (2 − 4)/(2 + 2)
    assert diag.effects["v"].recovered == pytest.approx(-0.5)
    assert diag.effects["whole site"].interchange_accuracy == 0.0
    assert diag.effects["v_row"].fldd == pytest.approx(0) and diag.effects["v_null"].fldd == pytest.approx(0)
    assert diag.effects["whole site"].fldd == pytest.approx(0)
    assert diag.null_feature_corr == pytest.approx(1.0) and diag.row_std_ratio == pytest.approx(0.0)
    assert diag.likely_illusion and "likely illusion" in diag.reasons[-1]
    assert any("this project's heuristics" in r for r in diag.reasons)


def test_feature_direction_of_a_connected_model_is_not_flagged():
    """Control: when the output reads h_dis directly, patching e1 alone works and nothing is flagged."""
    model = Distilled()
    base, source, answer, cf = pairs()
    readers = torch.tensor([[1.0], [0.0]])  # pretend the readers see h_dis: then v = e1 is all row space
    diag = diagnose(model, site=SITE, position=-1, direction=torch.tensor([1.0, 0.0]), readers=readers, base=base,
                    source=source, answer=answer, counterfactual=cf)
    assert not diag.likely_illusion


def test_das_finds_the_illusory_direction_and_restores_state():
    model = Distilled()
    base, source, answer, cf = pairs(40)
    fit = train_das(model, base, source, cf, site=SITE, epochs=30, batch_size=10, lr=0.1, seed=0)
    v = fit.basis[:, 0]
    assert abs(float(v.norm()) - 1) < 1e-5
    assert abs(float(v[0])) > 0.2 and abs(float(v[1])) > 0.2  # it needs both coordinates
    assert (_ld(model, base, source, answer, cf, Patch(SITE, basis=v)) < 0).float().mean() > 0.9
    assert fit.best_epoch == 29 and len(fit.train_loss) == 30  # the reference: all epochs, the final basis
    early = train_das(model, base, source, cf, site=SITE, epochs=30, batch_size=10, lr=0.1, seed=0, patience=2,
                      val_fraction=0.2)  # the option: early stopping on a validation split, the best basis
    assert early.val_loss[early.best_epoch] == min(early.val_loss)
    assert count_hooks(dict(model.hook_dict)) == 0


def test_das_is_seeded():
    model = Distilled()
    base, source, answer, cf = pairs(20)
    a, b = (train_das(model, base, source, cf, site=SITE, epochs=3, batch_size=5, seed=7) for _ in range(2))
    c = train_das(model, base, source, cf, site=SITE, epochs=3, batch_size=5, seed=8)
    assert torch.equal(a.basis, b.basis) and a.train_loss == b.train_loss
    assert not torch.equal(a.basis, c.basis)


def test_rotated_subspace_depends_only_on_its_generator_and_leaves_the_global_rng_alone():
    from workbench.intervene.das import RotatedSubspace

    bases = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        state = torch.get_rng_state()
        bases.append(RotatedSubspace(16, 3, torch.Generator().manual_seed(5)).basis().detach())
        assert torch.equal(torch.get_rng_state(), state)  # the caller's global RNG is untouched
    assert torch.equal(bases[0], bases[1])  # registering the orthogonal map no longer draws from the global RNG
    assert torch.allclose(bases[0].T @ bases[0], torch.eye(3), atol=1e-5)


def test_das_bad_inputs():
    model = Distilled()
    base, source, answer, cf = pairs()
    with pytest.raises(ConfigError, match="'k'"):
        train_das(model, base, source, cf, site=SITE, k=2)
    with pytest.raises(ShapeError, match="'source'"):
        train_das(model, base, source[:2], cf, site=SITE)
    with pytest.raises(ConfigError, match="'base'"):
        train_das(model, base[:0], source[:0], cf[:0], site=SITE)
    with pytest.raises(ConfigError, match="'lr'"):
        train_das(model, base, source, cf, site=SITE, lr=0)
    fit = train_das(model, base[:2], source[:2], cf[:2], site=SITE, val_fraction=0.8, epochs=1)  # 1 train pair left
    assert len(fit.train_loss) == 1
