"""Tests of workbench.capture.hooks: the early stop of a forward and the hook-name helper."""

import pytest
import torch

from workbench.capture.hooks import StopForward, count_hooks, hooks_attached, stoppable
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
