"""Activation steering: add a vector (or an activation-dependent shift) at hook sites during forward passes and
generation, through a context manager whose hooks are always removed.

``positions="last"`` steers the last position of every forward: the prompt's last token on the first step of
``generate`` and then each newly generated token (with a KV cache every later forward sees only the new token).
``positions=None`` steers every position; a list of ints steers those indices of each forward's input; a ``[B]``
integer tensor steers one position per example (e.g. each prompt's last real token in a right-padded batch, where
``"last"`` would hit padding) and a ``[B, T]`` bool tensor steers where it is True (e.g. from each prompt's last token
onward in a right-padded batch) — both for single forwards, not generation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from workbench.capture import capture
from workbench.capture.hooks import hook_user, hooks_attached, site
from workbench.errors import config_error, shape_error
from workbench.intervene.patch import check_sites, hook_points
from workbench.models.loaded import LoadedModel
from workbench.validation import check_number, is_int

if TYPE_CHECKING:
    from transformer_lens import HookedRootModule

Shift = Callable[[torch.Tensor], torch.Tensor]  # [..., d] activations -> [..., d] shift


@dataclass(frozen=True)
class Steer:
    """Add ``scale · vector`` (a ``[d]`` tensor) or ``scale · shift(x)`` at ``site`` and ``positions``.

    Example: ``Steer("blocks.5.hook_resid_post", v, scale=4.0, positions="last")  # then: with steering(lm, [steer]): ...````"""

    site: str
    vector: torch.Tensor | Shift
    scale: float = 1.0
    positions: str | Sequence[int] | torch.Tensor | None = "last"


def _rows(n_pos: int, positions, call: str) -> list[int] | slice:
    if positions is None:
        return slice(None)
    if positions == "last":
        return [n_pos - 1]
    pos = list(positions) if not isinstance(positions, int) else [positions]
    if not pos or not all(is_int(p) and -n_pos <= p < n_pos for p in pos):
        raise config_error(call, "positions", f"'last', None, or ints in [-{n_pos}, {n_pos})", positions)
    return [p % n_pos for p in pos]


def apply_steer(x: torch.Tensor, steer: Steer) -> torch.Tensor:
    """``x`` ``[B, P, d]`` with the steer added (a new tensor).

    Example: ``apply_steer(torch.zeros(1, 3, 576), Steer("blocks.5.hook_resid_post", v, scale=2.0))``"""
    call = "steering"
    out = x.clone()
    if isinstance(steer.positions, torch.Tensor) and steer.positions.dtype == torch.bool:
        mask = steer.positions.to(x.device)
        if mask.shape != x.shape[:2]:
            raise config_error(call, "positions", f"a [{x.shape[0]}, {x.shape[1]}] bool mask (batch, positions)",
                               tuple(mask.shape))
        return out + steer.scale * _delta(out, steer, x) * mask[..., None].to(x.dtype)
    if isinstance(steer.positions, torch.Tensor):
        pos = steer.positions.to(x.device)
        if pos.shape != (x.shape[0],) or pos.dtype not in (torch.int32, torch.int64) or bool(
                ((pos < 0) | (pos >= x.shape[1])).any()):
            raise config_error(call, "positions", f"a [{x.shape[0]}] integer tensor of indices in [0, {x.shape[1]})",
                               tuple(pos.shape))
        batch = torch.arange(x.shape[0], device=x.device)
        out[batch, pos] = out[batch, pos] + steer.scale * _delta(out[batch, pos][:, None], steer, x)[:, 0]
        return out
    rows = _rows(x.shape[1], steer.positions, call)
    part = out[:, rows]
    out[:, rows] = part + steer.scale * _delta(part, steer, x)
    return out


def _delta(part: torch.Tensor, steer: Steer, x: torch.Tensor) -> torch.Tensor:
    """The shift for the selected activations ``part`` ``[B, p, d]``."""
    call = "steering"
    if callable(steer.vector) and not isinstance(steer.vector, torch.Tensor):
        delta = steer.vector(part)
        if delta.shape != part.shape:
            raise shape_error(call, "vector", f"a shift returning the activations' shape {tuple(part.shape)}",
                              tuple(delta.shape))
    else:
        if steer.vector.shape != (x.shape[-1],):
            raise shape_error(call, "vector", f"a [{x.shape[-1]}] tensor (the site's width)",
                              tuple(steer.vector.shape))
        delta = steer.vector.to(x.device, x.dtype).expand_as(part)
    return delta


@hook_user("steering", exercise=lambda lm: _exercise_steering(lm))
@contextmanager
def steering(lm: LoadedModel | HookedRootModule, steers: Sequence[Steer]) -> Iterator[None]:
    """Within the block every forward (and ``generate``) of ``lm`` is steered; hooks removed on exit.

    Example: ``with steering(lm, vector_steers(vectors, 4.0)): greedy_continuations(lm, ["I think"], max_new_tokens=9)``"""
    points = hook_points(lm)
    for s in steers:
        check_number("steering", "scale", s.scale)
        if not (isinstance(s.vector, torch.Tensor) or callable(s.vector)):
            raise config_error("steering", "vector", "a [d] tensor or a callable shift", type(s.vector).__name__)
    check_sites(points, [s.site for s in steers])
    by_site: dict[str, list[Steer]] = {}
    for s in steers:
        by_site.setdefault(s.site, []).append(s)

    def make(site: str):
        def hook(x: torch.Tensor, hook=None) -> torch.Tensor:
            for s in by_site[site]:
                x = apply_steer(x, s)
            return x
        return hook

    with hooks_attached(points, {site: make(site) for site in by_site}):
        yield


@dataclass(frozen=True)
class ContrastVectors:
    """Per-layer contrastive statistics of a positive and a negative text set (Steer2Edit §1; reference
    efficient_reasoning/extract_directions.py: ``post`` = o_proj / down_proj outputs, ``pre`` = their inputs).

    ``v_attn`` / ``v_mlp`` / ``v_resid``: mean(pos) − mean(neg) of ``hook_attn_out``, ``hook_mlp_out`` and
    ``hook_resid_post`` (``[d_model]``); ``z_mean``: the mean input of each head to W_O (``attn.hook_z``,
    ``[n_heads, d_head]``) and ``post_mean`` of each MLP neuron to W_out (``mlp.hook_post``, ``[d_mlp]``), both averaged
    over the positive and the negative set (the mean of the two set means). A set's mean is the mean over texts of
    each text's own mean over its tokens (``average="texts"``, the reference) or over all tokens pooled
    (``average="tokens"``, an option).

    Example: ``cv: ContrastVectors = contrast_vectors(lm, pos, neg, layers=[5])[5]; cv.v_resid.shape  # [d_model]``"""

    layer: int
    v_attn: torch.Tensor
    v_mlp: torch.Tensor
    v_resid: torch.Tensor
    z_mean: torch.Tensor
    post_mean: torch.Tensor


SPANS = ("all", "last")
AVERAGES = ("texts", "tokens")


def contrast_vectors(lm: LoadedModel, positive: Sequence[str], negative: Sequence[str], *, layers: Sequence[int],
                     span: str = "all", average: str = "texts", batch_size: int = 8,
                     progress: bool = False) -> dict[int, ContrastVectors]:
    """:class:`ContrastVectors` per layer from one streamed capture of each set. ``span``: average over ``"all"``
    tokens of every text (BOS excluded) or each text's ``"last"`` token. ``average="texts"`` (the reference's
    extract_directions.py: ``span_mean_per_layer`` per text, then the mean over texts, so a long text weighs as much
    as a short one) or ``"tokens"`` (every token of the set pooled, an option). The reference averages a response's
    positions [start − 1, end − 1) — the states that generate its tokens; these texts have no prompt/response split,
    so every token but BOS is used. Float32 means.

    Example: ``vectors = contrast_vectors(lm, ["I love it"], ["I hate it"], layers=[4, 5], span="last")``"""
    call = "contrast_vectors"
    if span not in SPANS:
        raise config_error(call, "span", f"one of {list(SPANS)}", span)
    if average not in AVERAGES:
        raise config_error(call, "average", f"one of {list(AVERAGES)}", average)
    n_layers = lm.facts.n_layers
    if not layers or not all(is_int(l) and 0 <= l < n_layers for l in layers):
        raise config_error(call, "layers", f"a non-empty list of layer indices in [0, {n_layers})", layers)
    kinds = ("attn_out", "mlp_out", "resid_post", "z", "mlp_post")
    sites = [site(k, l) for l in layers for k in kinds]
    means = []
    for texts in (positive, negative):
        per_text = average == "texts" and span == "all"  # with "last" each text has one token: the two agree
        cap = capture(lm, list(texts), sites=sites, positions="all" if span == "all" else "last",
                      keep=("stats", "per_prompt") if per_text else "stats", batch_size=batch_size,
                      progress=progress, device=lm.device)
        means.append({name: (cap[name].mean_pooled.double().mean(0) if per_text else cap[name].mean).float()
                      for name in sites})
    pos, neg = means
    h, dh = lm.facts.n_heads, lm.facts.d_head
    out = {}
    for l in layers:
        at = {k: site(k, l) for k in kinds}
        out[l] = ContrastVectors(
            layer=l, v_attn=pos[at["attn_out"]] - neg[at["attn_out"]],
            v_mlp=pos[at["mlp_out"]] - neg[at["mlp_out"]],
            v_resid=pos[at["resid_post"]] - neg[at["resid_post"]],
            z_mean=((pos[at["z"]] + neg[at["z"]]) / 2).reshape(h, dh),
            post_mean=(pos[at["mlp_post"]] + neg[at["mlp_post"]]) / 2)
    return out


def vector_steers(vectors: dict[int, ContrastVectors], alpha: float, *, where: str = "components",
                  positions="all", unit: bool = False) -> list[Steer]:
    """Uniform activation steering: α·v_attn at ``hook_attn_out`` and α·v_mlp at ``hook_mlp_out`` of every layer
    (``where="components"``, the outputs Steer2Edit edits: o_proj and down_proj) or α·v_resid at
    ``hook_resid_post`` (``where="resid"``); ``positions="all"`` steers every position (None in :class:`Steer`).
    With the raw per-layer v, as the reference's evaluate.py ``LinearInterventionHook`` adds
    ``output + direction * weight`` (weights 0.1–1.5); ``unit=True`` (an option) adds α·v̂ instead, one norm for every
    layer.

    Example: ``vector_steers(vectors, 4.0, where="resid", positions="last", unit=True)``"""
    if where not in ("components", "resid"):
        raise config_error("vector_steers", "where", "'components' or 'resid'", where)
    pos = None if positions == "all" else positions
    out = []
    for l, vec in vectors.items():
        pairs = ([(site("attn_out", l), vec.v_attn), (site("mlp_out", l), vec.v_mlp)]
                 if where == "components" else [(site("resid_post", l), vec.v_resid)])
        for name, v in pairs:
            out.append(Steer(name, v / v.norm().clamp_min(1e-12) if unit else v, scale=float(alpha), positions=pos))
    return out


def _exercise_steering(lm: LoadedModel) -> None:
    """One steered forward (the hook-fault tests' call of :func:`steering`)."""
    from workbench.intervene.patch import forward

    with steering(lm, [Steer("blocks.0.hook_resid_post", torch.ones(lm.model.cfg.d_model))]):
        forward(lm, lm.model.to_tokens("abc"))
