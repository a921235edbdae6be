"""Hook sites: resolve names and glob patterns, and attach hooks that are always removed.

Hooks are attached once per session through each HookPoint's ``add_hook`` (so TransformerLens' own layout
conversions apply) and removed in ``finally`` — only ours, even when a hook or the forward raises. Registering once and
then calling the plain forward avoids ``run_with_hooks``' per-call setup, which costs 35-45 % on the bridge
(measured on TransformerBridge with SmolLM2-135M on a 2-core CPU).
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, suppress
from typing import Any, TypeVar

import torch

from workbench.errors import ConfigError, SiteError
from workbench.validation import is_int

HookFn = Callable[..., object]
F = TypeVar("F", bound=Callable[..., Any])

# Every function or context manager that attaches hooks, by name: (its qualified name, ``exercise(lm)``: one small call
# of it on any loaded model). Filled by :func:`hook_user` where each one is defined; the fault tests run every exercise
# with an exception injected into the forward and check that no hook is left and no weight changed.
HOOK_USERS: dict[str, tuple[str, Callable[[Any], object]]] = {}


def hook_user(name: str, exercise: Callable[[Any], object]) -> Callable[[F], F]:
    """Register the decorated function as a user of hooks, with ``exercise(lm)``: a small call of it on any loaded
    model (the tests give a tiny random one). A second registration of ``name`` by another function raises.

    Example: ``hook_user("readout.final_residual", exercise=lambda lm: final_residual(lm, lm.model.to_tokens("ab")))(final_residual)``"""
    def register(fn: F) -> F:
        owner = f"{fn.__module__}.{fn.__qualname__}"
        if name in HOOK_USERS and HOOK_USERS[name][0] != owner:
            raise ConfigError(f"hook_user(): parameter 'name' must be new; received {name!r}, already registered "
                              f"by {HOOK_USERS[name][0]}")
        HOOK_USERS[name] = (owner, exercise)
        return fn

    return register


class StopForward(Exception):
    """Raised by a hook to end the forward pass there, once everything wanted has been seen (what follows, e.g. a
    49k- or 262k-wide unembedding, is skipped). Run the forward inside :func:`stoppable` so it returns normally.

    Example: ``def stop_here(x, hook): raise StopForward``  (attached as a hook, run the forward in ``stoppable()``)"""


def stoppable() -> AbstractContextManager[None]:
    """``with stoppable(): model(tokens)``: a forward that a hook ended with :class:`StopForward` returns normally
    (any other exception propagates).

    Example: ``with stoppable(): lm.model(tokens)``"""
    return suppress(StopForward)


def _natural_key(name: str) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def resolve_sites(available: Iterable[str], sites: str | Iterable[str]) -> list[str]:
    """Expand hook names and glob patterns (``blocks.*.hook_resid_post``) into hook names, in layer order.

    Each entry must match at least one hook name; a miss raises :class:`SiteError` with the closest names.

    Example: ``resolve_sites(lm.hook_points(), "blocks.*.hook_resid_post")``"""
    names = sorted(set(available), key=_natural_key)
    requested = [sites] if isinstance(sites, str) else list(sites)
    if not requested:
        raise SiteError("capture(): parameter 'sites' must name at least one hook site; received []")
    chosen: list[str] = []
    for pattern in requested:
        if not isinstance(pattern, str):
            raise SiteError(f"capture(): parameter 'sites' must hold hook names (str); received {pattern!r}")
        matches = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not matches:
            close = difflib.get_close_matches(pattern, names, n=5, cutoff=0.5)
            hint = f" Closest: {', '.join(close)}." if close else ""
            raise SiteError(f"capture(): site {pattern!r} matches no hook of this model ({len(names)} hooks, "
                            f"TransformerLens names such as 'blocks.0.hook_resid_post').{hint}")
        chosen.extend(m for m in matches if m not in chosen)
    return sorted(chosen, key=_natural_key)


@contextmanager
def hooks_attached(points: Mapping[str, torch.nn.Module], hooks: Mapping[str, HookFn]) -> Iterator[None]:
    """Attach ``hooks[name]`` (TL signature ``fn(tensor, hook=...)``) to ``points[name]``; remove them on exit.

    Example: ``with hooks_attached(lm.hook_points(), {"blocks.3.hook_resid_post": fn}): lm.model(tokens)``"""
    attached: list[tuple[torch.nn.Module, HookFn]] = []
    try:
        for name, fn in hooks.items():
            points[name].add_hook(fn)
            attached.append((points[name], fn))
        yield
    finally:
        for point, fn in attached:
            _remove(point, fn)


def _remove(point: torch.nn.Module, fn: HookFn) -> None:
    kept = []
    for handle in point.fwd_hooks:
        if handle.user_hook is fn:
            handle.hook.remove()
        else:
            kept.append(handle)
    point.fwd_hooks = kept


def count_hooks(points: Mapping[str, torch.nn.Module]) -> int:
    """Forward hooks currently attached to these points (torch-level, so nothing can hide).

    Example: ``count_hooks(lm.hook_points())  # 0 once every capture has returned``"""
    return sum(len(point._forward_hooks) for point in {id(p): p for p in points.values()}.values())


# The TransformerBridge Linear behind each weight kind, per layer: its ``hook_in`` / ``hook_out`` are that matmul's
# input x and output y (the per-token factors of a weight gradient).
LINEAR_COMPONENTS = {"W_Q": "attn.q", "W_K": "attn.k", "W_V": "attn.v", "W_O": "attn.o", "W_in": "mlp.in",
                     "W_gate": "mlp.gate", "W_out": "mlp.out"}

# TransformerLens hook names of the per-layer sites, by short name: every hook name of a block that the library or an
# analysis uses is spelled here, once (TransformerLens' ``get_act_name`` spells the same names). ``"<weight>_in"`` /
# ``"<weight>_out"`` (``"W_Q_in"``, ...) are the bridge-only hooks around each weight's matmul (LINEAR_COMPONENTS).
# Hooks outside the blocks (``unembed.hook_in``, ``ln_final.hook_out``) are named constants where they are used.
SITE_KINDS = {
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_mid": "blocks.{layer}.hook_resid_mid",
    "resid_post": "blocks.{layer}.hook_resid_post",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    "mlp_post": "blocks.{layer}.mlp.hook_post",
    "mlp_pre": "blocks.{layer}.mlp.hook_pre",
    "q": "blocks.{layer}.attn.hook_q",
    "k": "blocks.{layer}.attn.hook_k",
    "v": "blocks.{layer}.attn.hook_v",
    "z": "blocks.{layer}.attn.hook_z",
    "pattern": "blocks.{layer}.attn.hook_pattern",
    **{f"{kind}_{end}": f"blocks.{{layer}}.{path}.hook_{end}"
       for kind, path in LINEAR_COMPONENTS.items() for end in ("in", "out")},
}

# The per-token representations (one d-dimensional row per token) the spectral analyses offer, in report order.
REPRESENTATION_KINDS = ("resid_pre", "resid_post", "attn_out", "mlp_out", "mlp_post")


def site(kind: str, layer: int | str) -> str:
    """The hook name of ``kind`` at ``layer``: ``site("resid_post", 3)`` -> ``"blocks.3.hook_resid_post"``;
    ``layer="*"`` gives the glob over every layer.

    Example: ``site("resid_post", 3)  # "blocks.3.hook_resid_post"``"""
    if kind not in SITE_KINDS:
        raise SiteError(f"site(): parameter 'kind' must be one of {list(SITE_KINDS)}; received {kind!r}")
    if not (layer == "*" or (is_int(layer) and layer >= 0)):
        raise SiteError(f"site(): parameter 'layer' must be an int >= 0 or '*'; received {layer!r}")
    return SITE_KINDS[kind].format(layer=layer)


def split_site(site: str) -> tuple[int | None, str]:
    """``"blocks.12.hook_resid_post"`` -> ``(12, "hook_resid_post")``; sites outside blocks get layer ``None``.

    Example: ``split_site("blocks.12.hook_resid_post")  # (12, "hook_resid_post")``"""
    match = re.match(r"^blocks\.(\d+)\.(.+)$", site)
    return (int(match.group(1)), match.group(2)) if match else (None, site)
