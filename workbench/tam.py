"""Token Activation Map (TAM) building blocks: class activations, estimated causal inference, the rank Gaussian filter
and the min–max normalisation.

Reference: "Token Activation Map to Visually Explain Multimodal LLMs" (reference code xmed-lab/TAM, ``tam.py``;
shared/PAPERS.md (g)). For a generated token y_t the map over earlier positions is the logit of y_t at each
position's final hidden state, clipped at 0 (:func:`class_activation`). Earlier tokens' maps interfere with it; the
interference is estimated as their score-weighted sum and removed with the least-squares scale
(:func:`estimated_causal_inference`). A rank Gaussian filter denoises the map (:func:`rank_gaussian_filter`, 2-D on
image grids, 1-D on token sequences). Pure tensor functions (float64 internally); the analysis that runs them on a
model is built on top.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.errors import config_error, shape_error

ECI_EPS = 1e-8  # the reference's w = s / (Σ s + 1e-8)


def class_activation(hidden: torch.Tensor, unembed_column: torch.Tensor, bias: float = 0.0) -> torch.Tensor:
    """``[P]`` relu(h_p · W_U[:, c] + b_c): the logit of class ``c`` read at every position's final (normed) hidden
    state ``hidden`` ``[P, d]``, clipped at 0 — the reference's ``logits[:, cls_id].clip(min=0)``."""
    if hidden.ndim != 2 or unembed_column.shape != (hidden.shape[1],):
        raise shape_error("class_activation", "unembed_column", f"[{hidden.shape[-1]}] with hidden [P, d]",
                          (tuple(hidden.shape), tuple(unembed_column.shape)))
    return (hidden.double() @ unembed_column.double() + bias).clamp_min(0)


def estimated_causal_inference(activation: torch.Tensor, earlier_maps: torch.Tensor, earlier_scores: torch.Tensor,
                               keep: torch.Tensor | None = None) -> torch.Tensor:
    """relu(A − s*·I) with I = Σ_i w_i·map_i, w_i = score_i/(Σ score + 1e-8) over the earlier tokens kept (``keep``:
    False for tokens identical to the explained one, which the reference excludes), and s* = ⟨A, I⟩/⟨I, I⟩ (the
    closed form of the reference's least-squares ``minimize_scalar``). ``activation`` ``[P]``, ``earlier_maps``
    ``[K, P]``, ``earlier_scores`` ``[K]`` (each earlier token's own activation score). With no earlier token kept,
    or an all-zero interference map, ``A`` is returned unchanged (clipped at 0)."""
    call = "estimated_causal_inference"
    a = activation.double()
    if earlier_maps.ndim != 2 or earlier_maps.shape[1:] != a.shape or earlier_scores.shape != earlier_maps.shape[:1]:
        raise shape_error(call, "earlier_maps", f"[K, {a.shape[0]}] maps with [K] scores",
                          (tuple(earlier_maps.shape), tuple(earlier_scores.shape)))
    if keep is not None:
        if keep.shape != earlier_scores.shape or keep.dtype != torch.bool:
            raise shape_error(call, "keep", f"a [{earlier_scores.shape[0]}] bool mask", tuple(keep.shape))
        earlier_maps, earlier_scores = earlier_maps[keep], earlier_scores[keep]
    if earlier_maps.shape[0] == 0:
        return a.clamp_min(0)
    w = earlier_scores.double() / (earlier_scores.double().sum() + ECI_EPS)
    interference = (earlier_maps.double() * w[:, None]).sum(0)
    denom = float(interference @ interference)
    if denom == 0.0:
        return a.clamp_min(0)
    scale = float(a @ interference) / denom
    return (a - scale * interference).clamp_min(0)


def _filter_window(window: torch.Tensor) -> torch.Tensor:
    """The rank Gaussian value of one window (sorted values, Gaussian weights over rank offsets, σ = std/mean)."""
    values = torch.sort(window.flatten()).values
    mean = values.mean()
    if float(mean) <= 0:
        return torch.zeros((), dtype=values.dtype)
    if float(values[-1]) == float(values[0]):  # constant and positive: the reference divides by σ = 0 (NaN)
        return values[0]
    sigma = values.std(correction=0) / mean
    offsets = torch.arange(values.numel(), dtype=values.dtype) - values.numel() // 2
    kernel = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    return (values * kernel / kernel.sum()).sum()


def rank_gaussian_filter(x: torch.Tensor, kernel_size: int = 3) -> torch.Tensor:
    """The reference's rank Gaussian filter on a 2-D map (``kernel_size`` × ``kernel_size`` windows) or its 1-D
    variant on a token sequence (windows of ``kernel_size``), with reflect padding as ``np.pad(mode="reflect")``.
    Each output = Σ sorted(window)·g / Σ g, g = exp(−k²/(2σ²)) over the rank offsets k (centred), σ = std/mean of the
    window (population std); 0 where the window mean ≤ 0; the constant where the window is constant and positive."""
    call = "rank_gaussian_filter"
    if not isinstance(kernel_size, int) or isinstance(kernel_size, bool) or kernel_size < 1 or kernel_size % 2 == 0:
        raise config_error(call, "kernel_size", "an odd int >= 1", kernel_size)
    if x.ndim not in (1, 2):
        raise shape_error(call, "x", "a 1-D token map or a 2-D image grid", tuple(x.shape))
    pad = kernel_size // 2
    if min(x.shape) <= pad:
        raise shape_error(call, "x", f"at least {pad + 1} entries per axis for kernel_size {kernel_size} (reflect "
                                     "padding)", tuple(x.shape))
    x = x.double()
    if x.ndim == 1:
        padded = torch.nn.functional.pad(x[None, None], (pad, pad), mode="reflect")[0, 0]
        return torch.stack([_filter_window(padded[i:i + kernel_size]) for i in range(x.shape[0])])
    padded = torch.nn.functional.pad(x[None, None], (pad, pad, pad, pad), mode="reflect")[0, 0]
    return torch.stack([torch.stack([_filter_window(padded[i:i + kernel_size, j:j + kernel_size])
                                     for j in range(x.shape[1])]) for i in range(x.shape[0])])


def min_max(*maps: torch.Tensor, joint: bool = True) -> list[torch.Tensor]:
    """Min–max normalise ``maps`` to [0, 1]: ``joint=True`` over all of them together (the reference normalises image
    and text scores together), else each on its own. A constant input maps to zeros."""
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


@dataclass(frozen=True)
class TextTokenMaps:
    """Maps of a text model's generated tokens over its prompt tokens (BOS excluded): ``raw`` (class activations),
    ``eci`` (after estimated causal inference) and ``filtered`` (1-D rank Gaussian filter of ``eci``), each
    ``[G, P]`` for G generated and P prompt tokens, not normalised (see :func:`min_max`)."""

    prompt_tokens: list[str]
    generated_tokens: list[str]
    raw: torch.Tensor
    eci: torch.Tensor
    filtered: torch.Tensor


def text_token_maps(lm, prompt: str, *, max_new_tokens: int = 16, kernel_size: int = 3) -> TextTokenMaps:
    """TAM on a text model: greedy-generate from ``prompt``, then for each generated token y_t at position p_t

    - raw map A = relu(logit of y_t) at every prompt position's final hidden state;
    - interference from every earlier token j (prompt tokens after BOS and earlier generated tokens) that is not the
      same token: its own map M_j (relu(logit of token j) over the prompt positions) weighted by y_t's activation at
      position j, removed by :func:`estimated_causal_inference`;
    - the 1-D :func:`rank_gaussian_filter` (width ``kernel_size``) of the result.

    One forward over prompt + continuation gives every hidden state (causal: equal to the generation-time ones)."""
    from workbench.intervene.readout import final_residual, greedy_continuations, unembed

    call = "text_token_maps"
    if not isinstance(prompt, str) or not prompt.strip():
        raise config_error(call, "prompt", "a non-empty string", prompt)
    prompt_ids = lm.model.to_tokens(prompt)[0].cpu()
    bos = getattr(lm.tokenizer, "bos_token_id", None)
    first = 1 if bos is not None and int(prompt_ids[0]) == bos else 0
    n_prompt = len(prompt_ids)
    if n_prompt - first < 1:
        raise config_error(call, "prompt", "at least one token besides BOS", prompt)
    generated = greedy_continuations(lm, [prompt], max_new_tokens=max_new_tokens)[0]
    if len(generated) == 0:
        raise config_error(call, "max_new_tokens", "a generation of at least one token (the model stopped at once)",
                           max_new_tokens)
    ids = torch.cat([prompt_ids, generated.long()])
    x = final_residual(lm, ids[None])[0]
    logits = unembed(lm, x).double().cpu()  # [T, V]: logits[j] read at position j
    prompt_pos = torch.arange(first, n_prompt)
    raws, ecis, filtered = [], [], []
    for p in range(n_prompt, len(ids)):
        y = int(ids[p])
        a = logits[prompt_pos, y].clamp_min(0)
        earlier = torch.arange(first, p)
        maps = logits[prompt_pos][:, ids[earlier]].T.clamp_min(0)  # [K, P]: each earlier token's own map
        scores = logits[earlier, y].clamp_min(0)  # y_t's activation at each earlier position
        keep = ids[earlier] != y
        cleaned = estimated_causal_inference(a, maps, scores, keep)
        raws.append(a)
        ecis.append(cleaned)
        filtered.append(rank_gaussian_filter(cleaned, kernel_size) if len(cleaned) > kernel_size // 2 else cleaned)
    decode = lambda i: lm.tokenizer.decode([int(i)])  # noqa: E731
    return TextTokenMaps(prompt_tokens=[decode(i) for i in prompt_ids[first:]],
                         generated_tokens=[decode(i) for i in generated], raw=torch.stack(raws),
                         eci=torch.stack(ecis), filtered=torch.stack(filtered))
