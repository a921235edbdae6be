"""Adapters: the one place that knows how a kind of hooked model stores its weights and hooks.

Analyses ask an adapter for facts (``n_layers``, ``d_model``, ``n_heads`` ...) and for weights in TransformerLens'
orientation, so no analysis ever branches on a model's name. Adapters are chosen by *type* through a registry
(:func:`register_adapter`); the first registered adapter whose ``handles`` accepts the model wins.

Weight orientation (TransformerLens convention, ``x @ W``):

============  ==================================  =============================================
kind          shape                               meaning
============  ==================================  =============================================
``W_Q``       ``[n_heads, d_model, d_head]``      query, per head
``W_K/W_V``   ``[n_kv_heads, d_model, d_head]``   key / value, per key-value head (GQA shares)
``W_O``       ``[n_heads, d_head, d_model]``      attention output, per head
``W_in``      ``[d_model, d_mlp]``                MLP input (the *up* projection when gated)
``W_gate``    ``[d_model, d_mlp]``                MLP gate (gated MLPs only)
``W_out``     ``[d_mlp, d_model]``                MLP output
``W_E``       ``[d_vocab, d_model]``              token embedding (no layer)
``W_U``       ``[d_model, d_vocab]``              unembedding (no layer)
============  ==================================  =============================================
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol

import torch

from workbench.errors import ConfigError, config_error
from workbench.validation import check_int

LAYER_KINDS = ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_gate", "W_out")
GLOBAL_KINDS = ("W_E", "W_U")


@dataclass(frozen=True)
class ModelFacts:
    """Architecture numbers every analysis may rely on.

    Example: ``facts: ModelFacts = lm.facts; facts.n_layers, facts.d_model, facts.to_dict()``"""

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    gated_mlp: bool

    def to_dict(self) -> dict[str, int | bool]:
        """The facts as a plain dict (for JSON reports and result metadata).

        Example: ``lm.facts.to_dict()  # {"n_layers": 30, "d_model": 576, ...}``"""
        return asdict(self)


class ModelAdapter(Protocol):
    """What workbench needs to know about one family of hooked models.

    Example: ``adapter: ModelAdapter = adapter_for(lm.model); adapter.facts(lm.model).n_layers``"""

    name: str

    def handles(self, model: torch.nn.Module) -> bool:
        """Whether this adapter understands ``model``'s type (adapters are asked in registration order).

        Example: ``adapter_for(lm.model).handles(lm.model)  # True``"""
        ...

    def facts(self, model: torch.nn.Module) -> ModelFacts:
        """The architecture numbers of ``model`` (layers, widths, heads, vocabulary, context).

        Example: ``adapter_for(lm.model).facts(lm.model).d_model``"""
        ...

    def weight(self, model: torch.nn.Module, kind: str, layer: int | None) -> torch.Tensor:
        """The ``kind`` weight of ``layer`` (None for W_E/W_U) in TransformerLens orientation (the module docstring's table).

        Example: ``adapter_for(lm.model).weight(lm.model, "W_Q", 3).shape  # [n_heads, d_model, d_head]``"""
        ...

    def hook_points(self, model: torch.nn.Module) -> dict[str, torch.nn.Module]:
        """Every TransformerLens hook name of ``model`` (aliases included) mapped to its HookPoint.

        Example: ``adapter_for(lm.model).hook_points(lm.model)["blocks.3.hook_resid_post"]``"""
        ...


_ADAPTERS: list[ModelAdapter] = []


def register_adapter(adapter: ModelAdapter) -> ModelAdapter:
    """Register an adapter (checked in registration order). Registering the same name twice raises.

    Example: ``register_adapter(MyAdapter())  # a class with name, handles, facts, weight and hook_points``"""
    if any(existing.name == adapter.name for existing in _ADAPTERS):
        raise ValueError(f"an adapter named {adapter.name!r} is already registered")
    _ADAPTERS.append(adapter)
    return adapter


def adapter_for(model: torch.nn.Module) -> ModelAdapter:
    """The registered adapter that handles ``model``'s type, or a ConfigError listing what is supported.

    Example: ``adapter_for(lm.model).name  # "transformer-bridge"``"""
    for adapter in _ADAPTERS:
        if adapter.handles(model):
            return adapter
    names = ", ".join(a.name for a in _ADAPTERS)
    raise config_error("adapter_for", "model", f"a model one of the registered adapters handles ({names})",
                       type(model).__name__)


def check_kind(kind: str, layer: int | None, n_layers: int) -> None:
    """Validate a (kind, layer) request against the table above.

    Example: ``check_kind("W_Q", 3, lm.facts.n_layers)  # None; W_E with a layer, or a layer out of range, raise``"""
    if kind in GLOBAL_KINDS:
        if layer is not None:
            raise config_error("weight", "layer", f"None for the global matrix {kind}", layer)
        return
    if kind not in LAYER_KINDS:
        raise config_error("weight", "kind", f"one of {LAYER_KINDS + GLOBAL_KINDS}", kind)
    check_int("weight", "layer", layer, low=0, high=n_layers, high_open=True)


class _TransformerLensAdapter:
    """Shared by TransformerBridge and HookedTransformer: both expose TL-oriented ``blocks[i].attn.W_Q`` etc."""

    name = "transformer-lens"
    model_type: type = torch.nn.Module

    def handles(self, model: torch.nn.Module) -> bool:
        return isinstance(model, self.model_type)

    def facts(self, model: torch.nn.Module) -> ModelFacts:
        cfg = model.cfg
        n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
        return ModelFacts(
            n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads, n_kv_heads=n_kv, d_head=cfg.d_head,
            d_mlp=cfg.d_mlp or 0, d_vocab=cfg.d_vocab, n_ctx=cfg.n_ctx, gated_mlp=bool(getattr(cfg, "gated_mlp", False)),
        )

    def weight(self, model: torch.nn.Module, kind: str, layer: int | None) -> torch.Tensor:
        check_kind(kind, layer, model.cfg.n_layers)
        if kind in GLOBAL_KINDS:
            return getattr(model, kind)
        owner = model.blocks[layer].mlp if kind in ("W_in", "W_gate", "W_out") else model.blocks[layer].attn
        value = getattr(owner, kind, None)
        if value is None:
            raise ConfigError(f"weight(): this model has no {kind} (gated_mlp={self.facts(model).gated_mlp})")
        return value

    def hook_points(self, model: torch.nn.Module) -> dict[str, torch.nn.Module]:
        return dict(model.hook_dict)


class BridgeAdapter(_TransformerLensAdapter):
    """TransformerLens' TransformerBridge around a Hugging Face causal LM (the recommended path).

    Example: ``BridgeAdapter().handles(lm.model)  # True for load_model's default TransformerBridge``"""

    name = "transformer-bridge"

    def __init__(self) -> None:
        from transformer_lens.model_bridge import TransformerBridge

        self.model_type = TransformerBridge


class HookedTransformerAdapter(_TransformerLensAdapter):
    """A classic ``HookedTransformer`` (GQA models keep their key/value weights in ``_W_K``/``_W_V``).

    Example: ``HookedTransformerAdapter().weight(hooked, "W_K", 0)  # hooked: a transformer_lens HookedTransformer``"""

    name = "hooked-transformer"

    def __init__(self) -> None:
        from transformer_lens import HookedTransformer

        self.model_type = HookedTransformer

    def weight(self, model: torch.nn.Module, kind: str, layer: int | None) -> torch.Tensor:
        attn = model.blocks[layer].attn if layer is not None and kind in ("W_K", "W_V") else None
        if attn is not None and hasattr(attn, f"_{kind}"):
            check_kind(kind, layer, model.cfg.n_layers)
            return getattr(attn, f"_{kind}")
        return super().weight(model, kind, layer)


register_adapter(BridgeAdapter())
register_adapter(HookedTransformerAdapter())


def as_matrix(kind: str, weight: torch.Tensor) -> torch.Tensor:
    """One 2-D matrix per (kind, layer) with heads concatenated, in ``x @ W`` orientation.

    ``W_Q/W_K/W_V [h, d_model, d_head] -> [d_model, h·d_head]``; ``W_O [h, d_head, d_model] -> [h·d_head, d_model]``
    (the same matrices as the HF q/k/v/o projections, transposed); 2-D kinds are returned as they are.

    Example: ``as_matrix("W_Q", lm.weight("W_Q", 3)).shape  # [d_model, n_heads * d_head]``"""
    if weight.ndim == 2:
        return weight
    if kind == "W_O":
        return weight.reshape(-1, weight.shape[-1])
    return weight.permute(1, 0, 2).reshape(weight.shape[1], -1)
