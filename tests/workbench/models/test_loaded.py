"""as_hooked / hook_points: the one place that turns ``lm`` (a LoadedModel or a TransformerLens HookedRootModule) into
a hookable module, by type rather than by probing attributes."""

import pytest
import torch

from tests.workbench.intervene.distilled import Distilled
from workbench.errors import ConfigError
from workbench.intervene import Patch, patched_logits
from workbench.models import as_hooked, hook_points


def test_a_loaded_model_gives_its_module_and_its_hook_points(tiny_model):
    assert as_hooked(tiny_model) is tiny_model.model
    assert hook_points(tiny_model) == tiny_model.hook_points()


def test_a_raw_hooked_root_module_or_bridge_is_used_as_it_is(tiny_model):
    distilled = Distilled()
    assert as_hooked(distilled) is distilled
    assert set(hook_points(distilled)) == {"hook_hidden"}
    bridge = tiny_model.model  # a TransformerBridge has the hook interface without subclassing HookedRootModule
    assert as_hooked(bridge) is bridge
    assert set(hook_points(bridge)) >= {"blocks.0.hook_resid_post", "unembed.hook_in"}


class _LooksHooked(torch.nn.Module):
    hook_dict: dict = {}  # the attribute alone does not make a TransformerLens model


@pytest.mark.parametrize("thing", [_LooksHooked(), torch.nn.Linear(2, 2), "smollm2-135m", None])
def test_anything_else_is_refused_naming_lm_and_the_call(thing):
    with pytest.raises(ConfigError, match=r"patch\(\): parameter 'lm' must be a LoadedModel"):
        as_hooked(thing, call="patch")
    with pytest.raises(ConfigError, match=r"hook_points\(\): parameter 'lm'"):
        hook_points(thing)
    x = torch.ones(2, 1)
    with pytest.raises(ConfigError, match=r"parameter 'lm'"):
        patched_logits(thing, x, x, [Patch("hook_hidden")])
