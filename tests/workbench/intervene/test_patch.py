"""Patching primitives: the formula by hand, positions/heads, hooks removed after errors, bad inputs."""

from __future__ import annotations

import pytest
import torch

from workbench.capture.hooks import count_hooks
from workbench.errors import ConfigError, ShapeError, SiteError
from workbench.intervene import Patch, apply_patch, orthonormal, patched_logits, patching, record, subspace_patch
from workbench.intervene.metrics import logit_diff, patch_effect


def test_one_dimensional_formula_by_hand():
    w, u, v = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([-1.0, 0.5, 4.0]), torch.tensor([2.0, 0.0, 1.0])
    # w' = w + ((<u,v> - <w,v>)/|v|^2) v = w + ((2 - 5)/5) v
    expected = torch.tensor([1.0 - 1.2, 2.0, 3.0 - 0.6])
    got = subspace_patch(w[None], u[None], orthonormal(v, 3))[0]
    assert torch.allclose(got, expected, atol=1e-6)


def test_subspace_patch_takes_the_source_inside_and_keeps_the_base_outside():
    g = torch.Generator().manual_seed(0)
    base, source = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    basis = orthonormal(torch.randn(8, 3, generator=g), 8)
    out = subspace_patch(base, source, basis)
    assert torch.allclose(out @ basis, source @ basis, atol=1e-6)
    complement = torch.eye(8) - basis @ basis.T
    assert torch.allclose(out @ complement, base @ complement, atol=1e-6)


def test_positions_and_heads():
    base, source = torch.zeros(2, 4, 3, 5), torch.ones(2, 4, 3, 5)
    out = apply_patch(base, source, Patch("s", positions=[1, -1], heads=[2]))
    assert out[:, [1, 3]][:, :, 2].eq(1).all() and out.sum() == 2 * 2 * 5
    whole = apply_patch(base, source, Patch("s", positions=0))
    assert whole[:, 0].eq(1).all() and whole[:, 1:].eq(0).all()


@pytest.mark.parametrize("basis,match", [(torch.randn(4, 4), "k < d"), (torch.randn(3, 1), "4 rows"),
                                         (torch.zeros(4, 1), "rank-deficient")])
def test_bad_bases(basis, match):
    with pytest.raises(ShapeError, match=match):
        orthonormal(basis, 4)


def test_bad_positions_and_heads():
    base = torch.zeros(1, 3, 4)
    with pytest.raises(ConfigError, match="'positions'"):
        apply_patch(base, base, Patch("s", positions=[5]))
    with pytest.raises(ConfigError, match="'heads'"):
        apply_patch(base, base, Patch("s", heads=[0]))


def test_whole_site_patch_on_the_tiny_model_equals_the_source_run_downstream(tiny_model):
    base = tiny_model.model.to_tokens(["abcdef", "ghijkl"])
    source = tiny_model.model.to_tokens(["mnopqr", "stuvwx"])
    site = "blocks.0.hook_resid_post"
    with torch.no_grad():
        source_logits = tiny_model.model(source)
    # patching the whole residual stream after block 0 at every position = running the source from there on
    assert torch.allclose(patched_logits(tiny_model, base, source, [Patch(site)]), source_logits, atol=1e-5)
    # patching one position changes only that position and later ones (causal attention)
    patched = patched_logits(tiny_model, base, source, [Patch(site, positions=[3])])
    with torch.no_grad():
        base_logits = tiny_model.model(base)
    assert torch.allclose(patched[:, :3], base_logits[:, :3], atol=1e-6)
    assert not torch.allclose(patched[:, 3], base_logits[:, 3], atol=1e-4)
    heads = patched_logits(tiny_model, base, source, [Patch("blocks.1.attn.hook_z", heads=[1])])
    assert not torch.allclose(heads, base_logits, atol=1e-4)


def test_hooks_are_removed_after_errors(tiny_model):
    points = tiny_model.hook_points()
    base = tiny_model.model.to_tokens(["abcdef"])
    acts = record(tiny_model, base, ["blocks.0.hook_resid_post"])
    with pytest.raises(RuntimeError, match="boom"):
        with patching(tiny_model, [Patch("blocks.0.hook_resid_post")], acts):
            raise RuntimeError("boom")
    assert count_hooks(points) == 0
    bad = {"blocks.0.hook_resid_post": torch.zeros(1, 2, 32)}  # wrong length: the hook raises mid-forward
    with pytest.raises(ShapeError, match="same token length"):
        with patching(tiny_model, [Patch("blocks.0.hook_resid_post")], bad):
            tiny_model.model(base)
    assert count_hooks(points) == 0


def test_bad_inputs_on_the_model(tiny_model):
    a, b = tiny_model.model.to_tokens(["abcdef"]), tiny_model.model.to_tokens(["abc"])
    with pytest.raises(ShapeError, match="equal token lengths"):
        patched_logits(tiny_model, a, b, [Patch("blocks.0.hook_resid_post")])
    with pytest.raises(SiteError, match="matches no hook"):
        patched_logits(tiny_model, a, a, [Patch("blocks.0.hook_nothing")])
    with pytest.raises(ShapeError, match="k < d"):
        patched_logits(tiny_model, a, a, [Patch("blocks.0.hook_resid_post", basis=torch.randn(32, 32))])


def test_metrics_by_hand():
    logits = torch.tensor([[[0.0, 3.0, 1.0]], [[2.0, 0.0, 0.0]]])
    assert logit_diff(logits, torch.tensor([1, 0]), torch.tensor([2, 1])).tolist() == [2.0, 2.0]
    eff = patch_effect(torch.tensor([2.0, 2.0]), torch.tensor([-1.0, 1.0]), hits=torch.tensor([False, False]),
                       ld_whole=torch.tensor([-2.0, -1.0]), ld_source=torch.tensor([2.0, 2.0]))
    assert eff.fldd == pytest.approx((2 - 0) / 2) and eff.recovered_source == pytest.approx(2 / 4)
    assert eff.recovered == pytest.approx((2 + 0) / (2 - 1.5)) and eff.fldd_vs_whole == pytest.approx(2 / 3.5)
    assert eff.interchange_accuracy == 0.0 and eff.sign_rate == 0.5  # LD < 0 is not an argmax hit
    with pytest.raises(ShapeError, match="'hits'"):
        patch_effect(torch.zeros(2), torch.zeros(2), hits=torch.zeros(3, dtype=torch.bool))
