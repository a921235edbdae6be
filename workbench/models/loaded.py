"""``LoadedModel``: a hooked model, its tokenizer, and the adapter that explains it to analyses."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from workbench.errors import ModelLoadError, config_error
from workbench.models.adapters import GLOBAL_KINDS, LAYER_KINDS, ModelAdapter, ModelFacts, as_matrix

if TYPE_CHECKING:
    from transformer_lens import HookedRootModule


@dataclass(frozen=True)
class WeightParameter:
    """The trainable tensor behind ``LoadedModel.weight(kind, layer)``, and how to read a tensor of its shape (its
    gradient, say) in :func:`~workbench.models.adapters.as_matrix` orientation. ``layout``: ``"tl"`` (the parameter
    is the TL-shaped weight itself), ``"same"`` (already the 2-D matrix) or ``"transposed"`` (a Hugging Face
    ``[out, in]`` Linear weight).

    Example: ``p: WeightParameter = lm.parameters(["W_Q"])[3]; p.matrix(p.param.grad)``"""

    kind: str
    layer: int | None
    param: torch.nn.Parameter
    layout: str

    def matrix(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (a tensor of the parameter's shape, e.g. its gradient) as the 2-D matrix of
        :func:`~workbench.models.adapters.as_matrix`.

        Example: ``p.matrix(p.param.grad)  # the gradient as the 2-D as_matrix of W_Q``"""
        if self.layout == "tl":
            return as_matrix(self.kind, t)
        return t if self.layout == "same" else t.T


@dataclass(frozen=True)
class LoadedModel:
    """What :func:`workbench.load_model` returns.

    ``model`` is a TransformerLens-hookable module (TransformerBridge by default), ``tokenizer`` its tokenizer, and
    ``adapter`` the registered adapter that gives architecture facts and TL-oriented weights. ``name`` identifies the
    source in reports (a bundled name, a folder path, or the class of a model passed in).

    Example: ``lm: LoadedModel = load_model("smollm2-135m"); lm.weight("W_Q", 3).shape``"""

    model: torch.nn.Module
    tokenizer: object
    adapter: ModelAdapter
    name: str
    folder: Path | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def facts(self) -> ModelFacts:
        return self.adapter.facts(self.model)

    @property
    def n_layers(self) -> int:
        return self.facts.n_layers

    @property
    def d_model(self) -> int:
        return self.facts.d_model

    @property
    def n_heads(self) -> int:
        return self.facts.n_heads

    def weight(self, kind: str, layer: int | None = None) -> torch.Tensor:
        """A weight matrix in TransformerLens orientation (see :mod:`workbench.models.adapters`).

        Example: ``lm.weight("W_Q", 3).shape  # torch.Size([9, 576, 64])``"""
        return self.adapter.weight(self.model, kind, layer)

    def weights(self) -> Iterator[tuple[str, int | None, torch.Tensor]]:
        """Every weight matrix as ``(kind, layer, tensor)``: per-layer kinds first, then W_E and W_U.

        Example: ``{(kind, layer): w.shape for kind, layer, w in lm.weights()}``"""
        facts = self.facts
        for layer in range(facts.n_layers):
            for kind in LAYER_KINDS:
                if kind == "W_gate" and not facts.gated_mlp:
                    continue
                yield kind, layer, self.weight(kind, layer)
        for kind in GLOBAL_KINDS:
            yield kind, None, self.weight(kind)

    def parameters(self, kinds: tuple[str, ...] | list[str]) -> list[WeightParameter]:
        """The parameters behind ``weight(kind, layer)`` for every layer (layer-major), found by shared storage and
        checked value by value, so gradients can be taken with respect to what the forward pass really uses.

        Example: ``[p.param.shape for p in lm.parameters(["W_Q", "W_O"])]``"""
        by_storage = {p.untyped_storage().data_ptr(): p for p in self.model.parameters()}
        out = []
        for layer in range(self.facts.n_layers):
            for kind in kinds:
                w = self.weight(kind, layer)
                param = w if isinstance(w, torch.nn.Parameter) else by_storage.get(w.untyped_storage().data_ptr())
                out.append(WeightParameter(kind, layer, param, _layout(kind, w, param)))
        return out

    def hook_points(self) -> dict[str, torch.nn.Module]:
        """Every hook name (TransformerLens naming, aliases included) mapped to its HookPoint.

        Example: ``sorted(lm.hook_points())[:3]``"""
        return self.adapter.hook_points(self.model)

    def __repr__(self) -> str:
        f = self.facts
        return (f"LoadedModel({self.name!r}, {type(self.model).__name__}, n_layers={f.n_layers}, "
                f"d_model={f.d_model}, n_heads={f.n_heads}, device={self.device})")


def as_hooked(lm: LoadedModel | HookedRootModule, *, call: str = "as_hooked") -> torch.nn.Module:
    """The TransformerLens-hookable module of ``lm``: a :class:`LoadedModel`'s ``model``, or ``lm`` itself when it
    is already a TransformerLens ``HookedRootModule`` (``HookedTransformer``) or a ``TransformerBridge`` (which has
    the same hook interface without subclassing it). Anything else is a ConfigError naming ``call``.

    Example: ``as_hooked(lm).run_with_hooks(tokens, fwd_hooks=[("blocks.3.hook_resid_post", fn)])``"""
    if isinstance(lm, LoadedModel):
        return lm.model
    from transformer_lens import HookedRootModule
    from transformer_lens.model_bridge import TransformerBridge

    if isinstance(lm, (HookedRootModule, TransformerBridge)):
        return lm
    raise config_error(call, "lm", "a LoadedModel (workbench.load_model) or a TransformerLens HookedRootModule",
                       type(lm).__name__)


def hook_points(lm: LoadedModel | HookedRootModule, *, call: str = "hook_points") -> dict[str, torch.nn.Module]:
    """Every hook name of ``lm`` (a :class:`LoadedModel` or a ``HookedRootModule``) mapped to its HookPoint.

    Example: ``hook_points(lm)["blocks.3.hook_resid_post"]``"""
    if isinstance(lm, LoadedModel):
        return lm.hook_points()
    return dict(as_hooked(lm, call=call).hook_dict)


def _layout(kind: str, weight: torch.Tensor, param: torch.nn.Parameter | None) -> str:
    if param is weight:
        return "tl"
    mat = as_matrix(kind, weight)
    if param is not None and param.shape == mat.shape and torch.equal(param, mat):
        return "same"
    if param is not None and param.shape == mat.T.shape and torch.equal(param, mat.T):
        return "transposed"
    raise ModelLoadError(f"parameters(): no trainable parameter of this model holds {kind} "
                         f"{tuple(weight.shape)} as a plain or transposed matrix; gradients of it are unsupported")
