"""Tests of workbench.capture.hooks: the early stop of a forward and the hook-name helper."""

import pytest
import torch

from workbench.capture import resolve_sites
from workbench.capture.hooks import (
    LINEAR_COMPONENTS,
    REPRESENTATION_KINDS,
    SITE_KINDS,
    StopForward,
    count_hooks,
    hooks_attached,
    site,
    split_site,
    stoppable,
)
from workbench.errors import SiteError
from workbench.intervene.readout import final_residual


def test_stoppable_ends_a_forward_at_the_hook_and_propagates_other_errors(tiny_model):
    points = tiny_model.hook_points()
    reached: list[str] = []

    def stop(x: torch.Tensor, hook=None) -> None:
        reached.append("resid")
        raise StopForward

    def later(x: torch.Tensor, hook=None) -> None:
        reached.append("unembed")

    tokens = tiny_model.model.to_tokens("hello")
    with stoppable(), hooks_attached(points, {"blocks.0.hook_resid_post": stop, "unembed.hook_in": later}):
        tiny_model.model(tokens)
    assert reached == ["resid"] and count_hooks(points) == 0
    with pytest.raises(ValueError), stoppable():
        raise ValueError("not a stop")
    with pytest.raises(StopForward):  # outside stoppable() the stop is an ordinary exception
        with hooks_attached(points, {"blocks.0.hook_resid_post": stop}):
            tiny_model.model(tokens)
    assert count_hooks(points) == 0


def test_final_residual_stops_before_the_unembedding_and_equals_the_full_forward(tiny_model):
    tokens = tiny_model.model.to_tokens(["hello there"])
    x = final_residual(tiny_model, tokens)
    with torch.no_grad():
        logits = tiny_model.model(tokens)
        torch.testing.assert_close(tiny_model.model.unembed(x), logits)
    assert count_hooks(tiny_model.hook_points()) == 0


@pytest.mark.parametrize(("kind", "layer", "name"), [
    ("resid_pre", 0, "blocks.0.hook_resid_pre"),
    ("resid_post", 3, "blocks.3.hook_resid_post"),
    ("attn_out", 11, "blocks.11.hook_attn_out"),
    ("mlp_post", 2, "blocks.2.mlp.hook_post"),
    ("z", 1, "blocks.1.attn.hook_z"),
    ("q", 4, "blocks.4.attn.hook_q"),
    ("pattern", 5, "blocks.5.attn.hook_pattern"),
    ("W_Q_in", 1, "blocks.1.attn.q.hook_in"),
    ("W_out_out", 0, "blocks.0.mlp.out.hook_out"),
    ("resid_post", "*", "blocks.*.hook_resid_post"),
    ("mlp_post", "*", "blocks.*.mlp.hook_post"),
])
def test_site_spells_the_transformerlens_name(kind, layer, name):
    assert site(kind, layer) == name


def test_every_site_kind_is_a_hook_of_a_bridge_model_and_globs_every_layer(tiny_model):
    points = tiny_model.hook_points()
    n = tiny_model.n_layers
    for kind in SITE_KINDS:
        assert all(site(kind, layer) in points for layer in range(n)), kind
        assert resolve_sites(points, site(kind, "*")) == [site(kind, layer) for layer in range(n)]
        assert split_site(site(kind, 1)) == (1, SITE_KINDS[kind].split(".", 2)[2])
    assert set(REPRESENTATION_KINDS) <= set(SITE_KINDS)
    assert all(f"{w}_{end}" in SITE_KINDS for w in LINEAR_COMPONENTS for end in ("in", "out"))


@pytest.mark.parametrize("kind", ["resid", "hook_resid_post", "blocks.0.hook_resid_post", "", None, 3])
def test_site_refuses_an_unknown_kind(kind):
    with pytest.raises(SiteError, match=r"site\(\): parameter 'kind' must be one of \['resid_pre'"):
        site(kind, 0)


@pytest.mark.parametrize("layer", [-1, True, False, 1.0, "3", "**", None, [0]])
def test_site_refuses_a_bad_layer(layer):
    with pytest.raises(SiteError, match=r"site\(\): parameter 'layer' must be an int >= 0 or '\*'"):
        site("resid_post", layer)
