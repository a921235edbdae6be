"""Token Activation Map (TAM) building blocks: class activations, estimated causal inference, the rank Gaussian filter
and the min–max normalisation.

Reference: "Token Activation Map to Visually Explain Multimodal LLMs" (Li et al., ICCV 2025; reference code
github.com/xmed-lab/TAM, ``tam.py``). For a generated token y_t the map over earlier positions is the logit of y_t at each
position's final hidden state, clipped at 0 (:func:`class_activation`). Earlier tokens' maps interfere with it; the
interference is estimated as their score-weighted sum and removed with the least-squares scale
(:func:`estimated_causal_inference`). A rank Gaussian filter denoises the map (:func:`rank_gaussian_filter`, 2-D on
image grids, 1-D on token sequences). Pure tensor functions (float64 internally, on their inputs' device);
:mod:`workbench.tam.text` and :mod:`workbench.tam.vlm` run them on text and vision-language models.
"""

from __future__ import annotations

import torch

from workbench.errors import config_error, shape_error
from workbench.validation import Int

ECI_EPS = 1e-8  # the reference's w = s / (Σ s + 1e-8)


def class_activation(hidden: torch.Tensor, unembed_column: torch.Tensor, bias: float = 0.0) -> torch.Tensor:
    """``[P]`` relu(h_p · W_U[:, c] + b_c): the logit of class ``c`` read at every position's final (normed) hidden
    state ``hidden`` ``[P, d]``, clipped at 0 — the reference's ``logits[:, cls_id].clip(min=0)``.

    Example: ``raw = class_activation(final_residual(lm, tokens)[0], lm.weight("W_U")[:, token_id])``"""
    if hidden.ndim != 2 or unembed_column.shape != (hidden.shape[1],):
        raise shape_error("class_activation", "unembed_column", f"[{hidden.shape[-1]}] with hidden [P, d]",
                          (tuple(hidden.shape), tuple(unembed_column.shape)))
    return (hidden.double() @ unembed_column.double() + bias).clamp_min(0)


def interference(activation: torch.Tensor, earlier_maps: torch.Tensor, earlier_scores: torch.Tensor,
                 keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(weights [K'], I [P], s*)``: the parts of :func:`estimated_causal_inference` — the normalised weights of the
    earlier tokens kept, the interference map I = Σ_i w_i·map_i and the least-squares scale s* = ⟨A, I⟩/⟨I, I⟩ (0
    when I is all zero or no token is kept). Exposed so an evaluation can say *what* ECI removed.

    Example: ``weights, i_map, scale = interference(activation, earlier_maps, earlier_scores)``"""
    call = "estimated_causal_inference"
    a = activation.double()
    if earlier_maps.ndim != 2 or earlier_maps.shape[1:] != a.shape or earlier_scores.shape != earlier_maps.shape[:1]:
        raise shape_error(call, "earlier_maps", f"[K, {a.shape[0]}] maps with [K] scores",
                          (tuple(earlier_maps.shape), tuple(earlier_scores.shape)))
    if keep is not None:
        if keep.shape != earlier_scores.shape or keep.dtype != torch.bool:
            raise shape_error(call, "keep", f"a [{earlier_scores.shape[0]}] bool mask", tuple(keep.shape))
        earlier_maps, earlier_scores = earlier_maps[keep], earlier_scores[keep]
    w = earlier_scores.double() / (earlier_scores.double().sum() + ECI_EPS)
    inter = (earlier_maps.double() * w[:, None]).sum(0) if len(w) else torch.zeros_like(a)
    denom = float(inter @ inter)
    return w, inter, (float(a @ inter) / denom if denom > 0 else 0.0)


def estimated_causal_inference(activation: torch.Tensor, earlier_maps: torch.Tensor, earlier_scores: torch.Tensor,
                               keep: torch.Tensor | None = None) -> torch.Tensor:
    """relu(A − s*·I) with I = Σ_i w_i·map_i, w_i = score_i/(Σ score + 1e-8) over the earlier tokens kept (``keep``:
    False for tokens identical to the explained one, which the reference excludes), and s* = ⟨A, I⟩/⟨I, I⟩ (the
    closed form of the reference's least-squares ``minimize_scalar``; xmed-lab/TAM ``tam.py``, ``TAM`` and
    ``least_squares``). ``activation`` ``[P]``, ``earlier_maps`` ``[K, P]``, ``earlier_scores`` ``[K]`` (y's
    activation where each earlier token is weighted). With no earlier token kept, or an all-zero interference map,
    ``A`` is returned unchanged (clipped at 0).

    Example: ``eci = estimated_causal_inference(activation, earlier_maps, earlier_scores, keep=keep)``"""
    _, inter, scale = interference(activation, earlier_maps, earlier_scores, keep)
    return (activation.double() - scale * inter).clamp_min(0)


def _filter_windows(windows: torch.Tensor) -> torch.Tensor:
    """The rank Gaussian value of every window ``[..., K]`` at once (sorted values, Gaussian weights over rank
    offsets, σ = std/mean): 0 where the mean is ≤ 0, the value itself where the window is constant and positive (the
    reference divides by σ = 0 there). Vectorised, so a map on a GPU costs a few kernels and no host reads."""
    values = torch.sort(windows, dim=-1).values
    n = values.shape[-1]
    mean = values.mean(dim=-1)
    sigma = values.std(dim=-1, correction=0) / mean
    offsets = torch.arange(n, dtype=values.dtype, device=values.device) - n // 2
    kernel = torch.exp(-offsets ** 2 / (2 * sigma[..., None] ** 2))
    smoothed = (values * kernel / kernel.sum(dim=-1, keepdim=True)).sum(dim=-1)
    out = torch.where(values[..., -1] == values[..., 0], values[..., 0], smoothed)
    return torch.where(mean <= 0, torch.zeros_like(out), out)


# The filter's window (also the token-maps analysis' config constraint).
KERNEL_SIZE = Int(low=1, odd=True)


def check_kernel_size(call: str, kernel_size: object) -> None:
    """The filter's window must be an odd int >= 1 (checked before any generation by the callers).

    Example: ``check_kernel_size("text_token_maps", 3)  # None; 2 or 0 raise a ConfigError``"""
    KERNEL_SIZE.check(call, "kernel_size", kernel_size)


ECI_WEIGHTS = ("reference", "own_position")


def check_eci_weights(call: str, eci_weights: object) -> None:
    """ConfigError unless ``eci_weights`` is one of :data:`ECI_WEIGHTS` (checked before any generation by the callers).

    Example: ``check_eci_weights("text_token_maps", "own_position")  # None; anything else is a ConfigError``"""
    if eci_weights not in ECI_WEIGHTS:
        raise config_error(call, "eci_weights", f"one of {list(ECI_WEIGHTS)}", eci_weights)


def interfering_tokens(prompt_positions: torch.Tensor, n_prompt: int, p: int,
                       eci_weights: str = "reference") -> tuple[torch.Tensor, torch.Tensor]:
    """``(earlier, weight_at)``: the positions of the tokens that interfere with the token at position ``p`` (the
    prompt tokens at ``prompt_positions``, then every generated token before ``p``; generation starts at
    ``n_prompt``) and, for each, the position whose logit of the explained token weights its map.

    ``"reference"`` (xmed-lab/TAM ``tam.py``, ``TAM``: ``txt_scores = [prompt_scores, last_prompt, answer_scores]``
    indexed by ``range(vis_token_idx)``): a prompt token is weighted at its own position, a generated token at the
    position that *generated* it (``q − 1``; for the first one the last prompt position), and the explained token's
    own generating position ``p − 1`` is never a weight — an entry weighted there is left out. The reference never
    meets that case (its generating position is a chat-template token outside the user's text); a plain text prompt
    does: for the first generated token the last prompt token's own position *is* ``p − 1``.

    ``"own_position"`` (this project's earlier reading, a deviation kept as an option): every earlier token is
    weighted at its own position, so the last entry is ``p − 1`` — the explained token's top logit.

    Example: ``earlier, weight_at = interfering_tokens(torch.arange(1, 6), 6, 8)``"""
    check_eci_weights("interfering_tokens", eci_weights)
    generated = torch.arange(n_prompt, p, device=prompt_positions.device)  # on prompt_positions' device
    earlier = torch.cat([prompt_positions.long(), generated])
    if eci_weights == "own_position":
        return earlier, earlier
    weight_at = torch.cat([prompt_positions.long(), generated - 1])
    keep = weight_at != p - 1
    return earlier[keep], weight_at[keep]


def explained_token_maps(region_logits: torch.Tensor, logits: torch.Tensor, ids: torch.Tensor, earlier: torch.Tensor,
                         y: int, weight_at: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(raw, eci)`` maps of token ``y`` over a region (prompt tokens or image tokens) whose positions' logits are
    ``region_logits`` ``[N, V]``: raw = relu(logit of y) per region position; ECI removes the interference of the
    ``earlier`` positions' tokens (``ids[earlier]``): each one's own map over the region, weighted by y's activation at
    ``weight_at`` (default: each token's own position; :func:`interfering_tokens` gives the reference's), tokens equal
    to y excluded (:func:`estimated_causal_inference`).

    Example: ``raw, eci = explained_token_maps(logits[1:6], logits, ids, earlier, int(ids[8]), weight_at)``"""
    weight_at = earlier if weight_at is None else weight_at
    raw = region_logits[:, y].clamp_min(0)
    maps = region_logits[:, ids[earlier]].T.clamp_min(0)  # [K, N]: each earlier token's own map
    eci = estimated_causal_inference(raw, maps, logits[weight_at, y].clamp_min(0), ids[earlier] != y)
    return raw, eci


def rank_gaussian_filter(x: torch.Tensor, kernel_size: int = 3) -> torch.Tensor:
    """The reference's rank Gaussian filter on a 2-D map (``kernel_size`` × ``kernel_size`` windows) or its 1-D
    variant on a token sequence (windows of ``kernel_size``), with reflect padding as ``np.pad(mode="reflect")``.
    Each output = Σ sorted(window)·g / Σ g, g = exp(−k²/(2σ²)) over the rank offsets k (centred), σ = std/mean of the
    window (population std); 0 where the window mean ≤ 0; the constant where the window is constant and positive.

    Example: ``rank_gaussian_filter(torch.rand(5, 12), kernel_size=3)``"""
    call = "rank_gaussian_filter"
    check_kernel_size(call, kernel_size)
    if x.ndim not in (1, 2):
        raise shape_error(call, "x", "a 1-D token map or a 2-D image grid", tuple(x.shape))
    pad = kernel_size // 2
    if min(x.shape) <= pad:
        raise shape_error(call, "x", f"at least {pad + 1} entries per axis for kernel_size {kernel_size} (reflect "
                                     "padding)", tuple(x.shape))
    x = x.double()
    if x.ndim == 1:
        padded = torch.nn.functional.pad(x[None, None], (pad, pad), mode="reflect")[0, 0]
        return _filter_windows(padded.unfold(0, kernel_size, 1))  # [n, K]
    padded = torch.nn.functional.pad(x[None, None], (pad, pad, pad, pad), mode="reflect")[0, 0]
    windows = padded.unfold(0, kernel_size, 1).unfold(1, kernel_size, 1)  # [H, W, K, K]
    return _filter_windows(windows.reshape(*x.shape, kernel_size * kernel_size))


def min_max(*maps: torch.Tensor, joint: bool = True) -> list[torch.Tensor]:
    """Min–max normalise ``maps`` to [0, 1]: ``joint=True`` over all of them together (the reference normalises image
    and text scores together), else each on its own. A constant input maps to zeros.

    Example: ``image_map, text_map = min_max(image_scores, text_scores, joint=True)``"""
    if not maps:
        raise config_error("min_max", "maps", "at least one tensor", maps)
    groups = [torch.cat([m.double().flatten() for m in maps])] if joint else [m.double().flatten() for m in maps]
    out = []
    for i, m in enumerate(maps):
        ref = groups[0] if joint else groups[i]
        lo, hi = ref.min(), ref.max()
        span = hi - lo
        out.append((m.double() - lo) / span if float(span) > 0 else torch.zeros_like(m, dtype=torch.float64))
    return out
