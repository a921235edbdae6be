"""Attribution baselines from a library, for comparing token maps against: gradient × input via captum."""

from __future__ import annotations

import torch

from workbench.errors import config_error
from workbench.models.loaded import LoadedModel
from workbench.validation import check_int


def gradient_x_input(lm: LoadedModel, ids: torch.Tensor, target_id: int) -> torch.Tensor:
    """``[T]`` gradient × input of the next-token logit of ``target_id`` at the last position of ``ids`` ``[T]``,
    per input position: Σ_d e_{p,d}·∂logit/∂e_{p,d} over the token embeddings (the output of the model's ``embed``
    module) — Shrikumar et al. 2016, computed by captum's ``LayerGradientXActivation`` on that module. Signed; the
    parameters' ``requires_grad`` flags are left as they were.

    Example: ``gradient_x_input(lm, lm.model.to_tokens("The capital of France is")[0], paris_id).argmax()``"""
    from captum.attr import LayerGradientXActivation

    vocab = lm.model.cfg.d_vocab
    check_int("gradient_x_input", "target_id", target_id, low=0, high=vocab, high_open=True,
              allowed=f"a token id in [0, {vocab})")
    if ids.ndim != 1 or len(ids) == 0:
        raise config_error("gradient_x_input", "ids", "a non-empty 1-D tensor of token ids", tuple(ids.shape))

    def forward(tokens: torch.Tensor) -> torch.Tensor:
        return lm.model(tokens)[:, -1, target_id]

    attr = LayerGradientXActivation(forward, lm.model.embed).attribute(ids[None].to(lm.device))
    return attr[0].sum(-1).detach().double().cpu()
