"""Direct logit effects of residual-stream directions: what a direction written into the last residual stream does to
the logits, through the final norm and the unembedding.

TransformerLens's convention (``HookedTransformer`` with ``fold_ln=True``: ``fold_layer_norm`` in
``transformer_lens/weight_processing.py`` multiplies ``W_U`` by the final norm's weight, and with LayerNorm the
residual is centred because ``center_writing_weights`` makes every writer mean-free) is the effect with the norm's
per-token scale frozen at 1: ``effect(d) = (g ⊙ P d) @ W_U``, where ``g`` is the final norm's gain and ``P`` centres
``d`` (LayerNorm) or is the identity (RMSNorm). SAE dashboards (Neuronpedia, SAEDashboard's ``logit effects``) show
the top and bottom entries of ``W_dec[f] @ W_U`` on such a folded model.

Here the bridge keeps the Hugging Face norm unfolded, so ``g ⊙ P d`` is read from the norm module itself rather than
from its parameters (Gemma's norm multiplies by ``1 + weight``, Llama's by ``weight``; a ``HookedTransformer`` with
folded norms has ``g = 1`` and ``W_U`` already scaled): the norm is scale-invariant, so for a direction ``d`` scaled to
a large norm (where the norm's epsilon is negligible), ``norm(d) − norm(0)`` times the direction's RMS (RMSNorm) or
standard deviation (LayerNorm) is exactly ``g ⊙ P d``. Which of the two it is is measured too: a constant vector is
erased by a centring norm and kept by an RMS norm. The per-token scale (1/RMS of the real residual) is a positive
number per token, so it changes no ranking of tokens; it is left out, as the folded convention does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from workbench.errors import config_error, shape_error
from workbench.models.loaded import LoadedModel
from workbench.validation import check_int

_PROBE_RMS = 1e3  # directions are scaled to this RMS before the norm sees them: the epsilon (~1e-5) becomes ~1e-11
_CHUNK = 256  # directions unembedded at once ([256, 262k] float32 = 268 MB for Gemma's vocabulary)


def final_norm(lm: LoadedModel) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's final normalisation module as a function of ``[n, d]`` rows (identity when the model has none).

    Example: ``final_norm(lm)(torch.randn(4, lm.d_model))``"""
    module = getattr(lm.model, "ln_final", None)
    if module is None:
        return lambda x: x
    return lambda x: module(x[None])[0]


def folded_norm(lm: LoadedModel, directions: torch.Tensor) -> torch.Tensor:
    """``g ⊙ P d`` for every row ``d`` of ``directions`` ``[n, d_model]``: each direction through the final norm with
    the per-token scale frozen at 1 (see the module docstring), in float32 on the model's device.

    Example: ``folded_norm(lm, sae.W_dec)``"""
    call = "folded_norm"
    d_model = lm.d_model
    if not isinstance(directions, torch.Tensor) or directions.ndim != 2 or directions.shape[1] != d_model:
        got = f"shape {tuple(directions.shape)}" if isinstance(directions, torch.Tensor) else type(directions).__name__
        raise shape_error(call, "directions", f"a 2-D tensor [n, {d_model}]", got)
    norm = final_norm(lm)
    dtype = next(lm.model.parameters()).dtype
    with torch.no_grad():
        zero = torch.zeros(1, d_model, device=lm.device, dtype=dtype)
        base = norm(zero).float()
        ones = torch.full((1, d_model), _PROBE_RMS, device=lm.device, dtype=dtype)
        centring = bool((norm(ones).float() - base).abs().max() <= 1e-6)  # LayerNorm erases it exactly
        d = directions.detach().to(lm.device, torch.float32)
        spread = (d - d.mean(1, keepdim=True)) if centring else d
        rms = spread.pow(2).mean(1, keepdim=True).sqrt()
        live = rms[:, 0] > 0
        out = torch.zeros_like(d)
        if bool(live.any()):
            factor = _PROBE_RMS / rms[live]
            normed = norm((d[live] * factor).to(dtype)).float() - base
            out[live] = normed * rms[live]  # the norm removed the RMS (or std); put it back
    return out


def direction_logits(lm: LoadedModel, directions: torch.Tensor, *, top: int = 10) -> dict[str, torch.Tensor]:
    """The ``top`` most promoted and most suppressed tokens of each direction ``[n, d_model]`` (an SAE's ``W_dec``
    rows, a steering vector, ...): ``(g ⊙ P d) @ W_U`` as TransformerLens computes it on a folded model (module
    docstring). Streams over chunks of directions, so ``[n, d_vocab]`` never exists at once.

    Returns ``promoted_ids``/``promoted`` and ``suppressed_ids``/``suppressed``, each ``[n, top]`` (values in
    float32, promoted descending, suppressed ascending), on the CPU.

    Example: ``direction_logits(lm, sae.W_dec, top=10)["promoted_ids"][7]``"""
    call = "direction_logits"
    w_u = lm.weight("W_U")
    top = check_int(call, "top", top, low=1, high=int(w_u.shape[1]))
    if not isinstance(directions, torch.Tensor) or directions.ndim != 2:
        raise shape_error(call, "directions", f"a 2-D tensor [n, {lm.d_model}]",
                          getattr(directions, "shape", type(directions).__name__))
    if directions.shape[0] == 0:
        raise config_error(call, "directions", "at least one direction", "0 rows")
    w_u = w_u.detach().to(lm.device, torch.float32)
    parts: dict[str, list[torch.Tensor]] = {"promoted_ids": [], "promoted": [], "suppressed_ids": [], "suppressed": []}
    for chunk in directions.split(_CHUNK):
        logits = folded_norm(lm, chunk) @ w_u
        high = logits.topk(top, dim=1)
        low = logits.topk(top, dim=1, largest=False)
        parts["promoted"].append(high.values.cpu())
        parts["promoted_ids"].append(high.indices.cpu())
        parts["suppressed"].append(low.values.cpu())
        parts["suppressed_ids"].append(low.indices.cpu())
    return {name: torch.cat(chunks) for name, chunks in parts.items()}
