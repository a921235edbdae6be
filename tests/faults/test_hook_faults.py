"""An exception in the middle of every hook user leaves no hook and no changed weight (issue 21 point 1).

Parametrised over ``workbench.capture.hooks.HOOK_USERS``: every function that attaches hooks registers itself there
with a small call on any model (``@hook_user``), so a new hook user is tested here by registering. Each is run on the
tiny model with a fault injected in two places — raised from a hook on the first HookPoint of the forward (an
exception inside hook dispatch, as a user's hook would raise) and raised as the first block's forward starts — and must
propagate the fault; then every module has the hooks it had before (every HookPoint none) and every parameter and
buffer is bit-identical.
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest
import torch

import workbench
from workbench.capture.hooks import HOOK_USERS


def _import_all() -> None:
    """Import every workbench module, so that every ``@hook_user`` has registered."""
    for info in pkgutil.walk_packages(workbench.__path__, "workbench."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)


_import_all()
USERS = sorted(HOOK_USERS)


class InjectedFault(Exception):
    """The exception the test injects."""


def _raise(*args, **kwargs):
    raise InjectedFault("injected")


def _hook_counts(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                   len(getattr(m, "fwd_hooks", ())), len(getattr(m, "bwd_hooks", ())))
            for name, m in model.named_modules()}


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}


@pytest.fixture(scope="module")
def warm_model(tiny_model):
    """The tiny model after one plain forward: TransformerBridge wires its own permanent pre-hooks on the layer norms
    at its first forward (``BlockBridge._maybe_wire_capture_hooks``), which are not ours to count."""
    with torch.no_grad():
        tiny_model.model(tiny_model.model.to_tokens("abc"))
    return tiny_model


def test_every_hook_user_is_registered():
    """The registry holds every family the issue names (capture, patching, steering, readout, TAM) and more."""
    assert {"capture", "patch.patching", "steering", "readout.final_residual", "readout.position_logits",
            "tam.text_token_maps", "generation", "sae.feature_stats"} <= set(USERS)


@pytest.mark.parametrize("where", ["hook", "forward"])
@pytest.mark.parametrize("user", USERS)
def test_fault_in_hook_user_releases_hooks_and_keeps_weights(warm_model, user, where):
    tiny_model = warm_model
    model = tiny_model.model
    before_hooks, before_weights = _hook_counts(model), _snapshot(model)
    if where == "hook":  # raised inside the hook dispatch of the forward's first HookPoint
        injected = tiny_model.hook_points()["hook_embed"].register_forward_hook(_raise, prepend=True)
    else:  # raised as the first block's forward starts (the bridge forwards attribute writes to the HF module)
        injected = model.blocks[0].register_forward_pre_hook(_raise)
    try:
        with pytest.raises(InjectedFault):
            HOOK_USERS[user][1](tiny_model)
    finally:
        injected.remove()
    assert _hook_counts(model) == before_hooks, f"{user} left hooks after a fault in the {where}"
    for name, point in tiny_model.hook_points().items():
        assert not point._forward_hooks and not getattr(point, "fwd_hooks", []), f"{user} left a hook on {name}"
    after = _snapshot(model)
    assert after.keys() == before_weights.keys()
    changed = [k for k in after if not torch.equal(after[k], before_weights[k])]
    assert not changed, f"{user} changed {changed} after a fault in the {where}"


@pytest.mark.parametrize("user", USERS)
def test_hook_user_runs_cleanly(warm_model, user):
    """Without a fault each exercise runs and leaves no hook either (so the fault test above tests a working call)."""
    tiny_model = warm_model
    before = _hook_counts(tiny_model.model)
    HOOK_USERS[user][1](tiny_model)
    assert _hook_counts(tiny_model.model) == before
