"""TAM on a Hugging Face vision-language model: the map of each generated token over the image-token grid.

Two layouts are recognised from the model's config and the processor's output:

- Qwen2-VL style (``image_grid_thw`` in the inputs): the image tokens are the ``image_token_id`` positions and the
  grid is (t, h / m, w / m) for the patch grid (t, h, w) and the config's ``vision_config.spatial_merge_size`` m.
- LLaVA style (no ``image_grid_thw``): the ``image_token_id`` / ``image_token_index`` positions form a square grid
  of side ``vision_config.image_size // vision_config.patch_size`` (the ``"default"`` feature strategy, CLS dropped).

Any other layout (LLaVA-NeXT any-resolution tiles, several images) is refused unless ``grid`` is given, and a grid
whose size is not the number of image tokens is always refused. Per generated token y_t (as the reference's ``TAM``,
xmed-lab/TAM ``tam.py``): the image map A = relu(logit of y_t) at the image positions; the interfering tokens = the
user's prompt text (between the image block and the end of the turn: no system prompt, role words or template
newlines) and the earlier answer tokens, each with its own image map, weighted by y_t's activation at the prompt
token's own position or at the position that *generated* the answer token (same-token ones excluded), removed by
:func:`~workbench.tam.core.estimated_causal_inference`; then image scores and those text weights (the reference's
``txt_scores[:-1]``) are min–max normalised together (``joint=True``) and the rank Gaussian filter
(``kernel_size`` × ``kernel_size``) runs on each frame.

Two round-0 details of the reference are not reproduced (deviations, see the README's Fidelity table): it explains the
first prompt token by its *predicted* class (``logit_list[0][0, prompt_idx[0] + 1].argmax``), and it stores the first
answer token's map under the class of ``tokens[L0 − 1]`` — the template's last token, although its comment says "the
first generated token". Here every token's map is its own class's.

Pointing it at a local VLM folder (no hub access is needed once the files are there)::

    from transformers import AutoModelForImageTextToText, AutoProcessor
    model = AutoModelForImageTextToText.from_pretrained("/path/to/Qwen2-VL-2B-Instruct").eval()
    processor = AutoProcessor.from_pretrained("/path/to/Qwen2-VL-2B-Instruct")
    inputs = processor(images=image, text=chat_text_with_image_placeholder, return_tensors="pt")
    maps = vlm_token_maps(model, inputs, tokenizer=processor.tokenizer, max_new_tokens=16)
    maps.figure(0, image)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from workbench.errors import config_error, shape_error
from workbench.intervene.generation import cut_at_eos
from workbench.tam.core import (
    check_eci_weights,
    check_kernel_size,
    explained_token_maps,
    interfering_tokens,
    min_max,
    rank_gaussian_filter,
)
from workbench.validation import check_int, is_int

SEQUENCE_KEYS_ZERO = ("mm_token_type_ids", "token_type_ids")  # per-position keys extended with 0 for generated text


@dataclass(frozen=True)
class ImageLayout:
    """Where the image tokens are (``positions`` into the sequence) and their ``grid`` (frames, height, width).

    Example: ``layout: ImageLayout = image_layout(model, inputs); layout.grid  # e.g. (1, 16, 16)``"""

    positions: torch.Tensor
    grid: tuple[int, int, int]
    style: str


def image_token_id(model) -> int:
    """The id of the image placeholder token, read from the VLM's config (``image_token_id`` or ``image_token_index``);
    ConfigError when it names none.

    Example: ``image_token_id(model) in inputs["input_ids"][0]  # the id of the image placeholder tokens``"""
    cfg = model.config
    for name in ("image_token_id", "image_token_index"):
        value = getattr(cfg, name, None)
        if isinstance(value, int):
            return value
    raise config_error("image_layout", "model", "a VLM whose config names its image token (image_token_id or "
                                                "image_token_index)", type(model).__name__)


def image_layout(model, inputs: Mapping[str, torch.Tensor], grid: tuple[int, ...] | None = None) -> ImageLayout:
    """The image-token positions and grid of one prompt (see the module docstring for the recognised layouts);
    ``grid`` (h, w) or (t, h, w) overrides the inferred one. Raises when the grid's size is not the token count.

    Example: ``image_layout(model, inputs, grid=(16, 16)).positions``"""
    call = "image_layout"
    ids = inputs["input_ids"]
    if ids.ndim != 2 or ids.shape[0] != 1:
        raise shape_error(call, "inputs['input_ids']", "one prompt, [1, T]", tuple(ids.shape))
    image_id = image_token_id(model)
    positions = (ids[0] == image_id).nonzero().flatten().cpu()
    if len(positions) == 0:
        raise config_error(call, "inputs", f"input_ids containing the image token {image_id} (processor output with "
                                           f"an image)", "no image token")
    thw = inputs.get("image_grid_thw")
    if grid is not None:
        if not (isinstance(grid, (tuple, list)) and len(grid) in (2, 3)
                and all(is_int(g) and g >= 1 for g in grid)):
            raise config_error(call, "grid", "(height, width) or (frames, height, width) of ints >= 1", grid)
        shape, style = (tuple(grid) if len(grid) == 3 else (1, *grid)), "given"
    elif thw is not None:
        if thw.shape[0] != 1:
            raise config_error(call, "inputs['image_grid_thw']", "one image (pass grid= for other layouts)",
                               tuple(thw.shape))
        merge = int(getattr(model.config.vision_config, "spatial_merge_size", 1))
        t, h, w = (int(v) for v in thw[0])
        shape, style = (t, h // merge, w // merge), "qwen2-vl"
    else:
        vision = model.config.vision_config
        side = int(vision.image_size) // int(vision.patch_size)
        shape, style = (1, side, side), "llava"
    if math.prod(shape) != len(positions):
        raise shape_error(call, "grid", f"a grid of {len(positions)} cells (one per image token)", shape)
    return ImageLayout(positions=positions, grid=shape, style=style)


@dataclass(frozen=True)
class VLMTokenMaps:
    """Per generated token: ``raw`` and ``eci`` image maps ``[G, t, h, w]`` (unnormalised), ``filtered`` (after
    the joint min–max and the filter, as the reference shows it), and ``text`` ``[G, K + G − 1]``: the normalised
    weights of the ``K`` user-text tokens ``text_tokens`` followed by the earlier generated tokens (NaN from the
    explained token on).

    Example: ``maps: VLMTokenMaps = vlm_token_maps(model, inputs, tokenizer=processor.tokenizer)``"""

    generated_tokens: list[str]
    text_tokens: list[str]
    grid: tuple[int, int, int]
    raw: torch.Tensor
    eci: torch.Tensor
    filtered: torch.Tensor
    text: torch.Tensor

    def figure(self, t: int, image, frame: int = 0):
        """Generated token ``t``'s maps upsampled and overlaid on ``image`` (an RGB array or PIL image).

        Example: ``vlm_token_maps(model, inputs, tokenizer=processor.tokenizer).figure(0, image).show()``"""
        import numpy as np

        from workbench.tam.plots import image_overlay_figure

        g = len(self.generated_tokens)
        check_int("VLMTokenMaps.figure", "t", t, low=-g, high=g, high_open=True,
                  allowed=f"a generated-token index in [{-g}, {g})")
        check_int("VLMTokenMaps.figure", "frame", frame, low=0, high=self.grid[0], high_open=True,
                  allowed=f"a frame index in [0, {self.grid[0]})")
        stages = {"raw": min_max(self.raw[t, frame])[0], "eci": min_max(self.eci[t, frame])[0],
                  "filtered": self.filtered[t, frame]}
        return image_overlay_figure(np.asarray(image), stages, f"token {t}: {self.generated_tokens[t]!r}")


def _extended(inputs: Mapping[str, torch.Tensor], generated: torch.Tensor) -> dict[str, torch.Tensor]:
    """The processor inputs for prompt + ``generated``: ids appended, attention 1, modality/type ids 0."""
    out = dict(inputs)
    n = len(generated)
    out["input_ids"] = torch.cat([inputs["input_ids"], generated[None].to(inputs["input_ids"])], 1)
    if inputs.get("attention_mask") is not None:
        out["attention_mask"] = torch.cat([inputs["attention_mask"], inputs["attention_mask"].new_ones(1, n)], 1)
    for key in SEQUENCE_KEYS_ZERO:
        if inputs.get(key) is not None:
            out[key] = torch.cat([inputs[key], inputs[key].new_zeros(1, n)], 1)
    return out


TEXT_POSITIONS = ("user_text", "all_text")


def user_text_span(model, ids: torch.Tensor, layout: ImageLayout, special: set[int]) -> tuple[int, int]:
    """``[start, end)`` of the user's prompt text in ``ids``: from after the image block (and its vision-end token,
    when the model has one) to the first special token after it (the end of the turn) — the reference's
    ``prompt_id`` span, found without per-model ids. A template whose turn ends in plain text (LLaVA-1.5's
    "ASSISTANT:") keeps those words: pass ``prompt_span`` to :func:`vlm_token_maps` there.

    Example: ``start, end = user_text_span(model, ids, image_layout(model, inputs), special)``"""
    start = int(layout.positions.max()) + 1
    end_id = getattr(model.config, "vision_end_token_id", None)
    if start < len(ids) and isinstance(end_id, int) and int(ids[start]) == end_id:
        start += 1
    end = next((q for q in range(start, len(ids)) if int(ids[q]) in special), len(ids))
    return start, end


def _text_positions(model, ids, layout, special, text_positions, prompt_span) -> torch.Tensor:
    call = "vlm_token_maps"
    n = len(ids)
    if prompt_span is not None:
        if not (isinstance(prompt_span, (tuple, list)) and len(prompt_span) == 2
                and all(is_int(v) for v in prompt_span)
                and 0 <= prompt_span[0] < prompt_span[1] <= n):
            raise config_error(call, "prompt_span", f"(start, end) with 0 <= start < end <= {n}", prompt_span)
        return torch.arange(*prompt_span)
    if text_positions not in TEXT_POSITIONS:
        raise config_error(call, "text_positions", f"one of {list(TEXT_POSITIONS)}", text_positions)
    is_image = torch.zeros(n, dtype=torch.bool)
    is_image[layout.positions] = True
    if text_positions == "all_text":
        return torch.tensor([q for q in range(n) if not is_image[q] and int(ids[q]) not in special], dtype=torch.long)
    start, end = user_text_span(model, ids, layout, special)
    if start >= end:
        raise config_error(call, "inputs", "a user prompt text after the image (or pass prompt_span)", (start, end))
    return torch.arange(start, end)


def image_maps_from_logits(logits: torch.Tensor, ids: torch.Tensor, n_prompt: int, layout: ImageLayout,
                           text_pos: torch.Tensor, *, kernel_size: int = 3, joint: bool = True,
                           eci_weights: str = "reference") -> tuple[torch.Tensor, ...]:
    """``(raw, eci, filtered, text)`` of the tokens ``ids[n_prompt:]`` over the image grid, from the logits ``[T, V]``
    of one forward over prompt + answer (see :func:`vlm_token_maps`; a pure function, so it is checked against a
    transcription of the reference on synthetic logits).

    Example: ``raw, eci, filtered, text = image_maps_from_logits(logits, ids, n_prompt, layout, text_pos)``"""
    logits, ids = logits.double().cpu(), ids.long().cpu()
    at_image = logits[layout.positions]  # [N, V]
    width = len(text_pos) + len(ids) - n_prompt - 1
    raws, ecis, filtered, texts = [], [], [], []
    for p in range(n_prompt, len(ids)):
        y = int(ids[p])
        earlier, weight_at = interfering_tokens(text_pos, n_prompt, p, eci_weights)
        a, cleaned = explained_token_maps(at_image, logits, ids, earlier, y, weight_at)
        txt = logits[weight_at, y].clamp_min(0)
        img_n, txt_n = min_max(cleaned, txt, joint=joint)
        filtered.append(torch.stack([rank_gaussian_filter(f, kernel_size) for f in img_n.reshape(layout.grid)]))
        raws.append(a.reshape(layout.grid))
        ecis.append(cleaned.reshape(layout.grid))
        texts.append(torch.cat([txt_n, txt_n.new_full((width - len(txt_n),), float("nan"))]))
    return torch.stack(raws), torch.stack(ecis), torch.stack(filtered), torch.stack(texts)


def vlm_token_maps(model, inputs: Mapping[str, torch.Tensor], *, tokenizer=None, max_new_tokens: int = 16,
                   kernel_size: int = 3, joint: bool = True, grid: tuple[int, ...] | None = None,
                   eci_weights: str = "reference", text_positions: str = "user_text",
                   prompt_span: tuple[int, int] | None = None) -> VLMTokenMaps:
    """TAM of a VLM's greedy answer to ``inputs`` (a processor's output for one image and prompt). ``tokenizer``
    decodes tokens and names the special tokens (None: ids as strings; only the config's vision start/end are
    special).

    The interfering text tokens, as the reference (xmed-lab/TAM ``tam.py``, ``TAM``): the user's prompt text
    (``text_positions="user_text"``: :func:`user_text_span`, or ``prompt_span`` given) and the earlier answer tokens,
    weighted as :func:`~workbench.tam.core.interfering_tokens` says (``eci_weights``). ``text_positions="all_text"``
    (every non-special, non-image prompt position) and ``eci_weights="own_position"`` are this project's earlier
    choices, kept as options. The text scores shown (``VLMTokenMaps.text``) are those weights (the reference's
    ``txt_scores[:-1]``), min–max normalised together with the ECI image map when ``joint``.

    Example: ``vlm_token_maps(model, inputs, tokenizer=processor.tokenizer, max_new_tokens=16).figure(0, image)``"""
    call = "vlm_token_maps"
    check_int(call, "max_new_tokens", max_new_tokens, low=1)
    check_kernel_size(call, kernel_size)
    check_eci_weights(call, eci_weights)
    layout = image_layout(model, inputs, grid)
    device = next(model.parameters()).device
    inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
    n_prompt = inputs["input_ids"].shape[1]
    special = set(getattr(tokenizer, "all_special_ids", []) or []) if tokenizer is not None else set()
    special |= {getattr(model.config, k) for k in ("vision_start_token_id", "vision_end_token_id")
                if isinstance(getattr(model.config, k, None), int)}
    text_pos = _text_positions(model, inputs["input_ids"][0].cpu(), layout, special, text_positions, prompt_span)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        generated = out[0, n_prompt:]
        generated = cut_at_eos(generated, getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None)
        if len(generated) == 0:
            raise config_error(call, "max_new_tokens", "a generation of at least one token (the model stopped at "
                                                       "once)", max_new_tokens)
        logits = model(**_extended(inputs, generated)).logits[0].double().cpu()  # [T, V]
    ids = torch.cat([inputs["input_ids"][0].cpu(), generated.cpu()])
    raw, eci, filtered, text = image_maps_from_logits(logits, ids, n_prompt, layout, text_pos, kernel_size=kernel_size,
                                                      joint=joint, eci_weights=eci_weights)
    decode = (lambda i: tokenizer.decode([int(i)])) if tokenizer is not None else (lambda i: str(int(i)))
    return VLMTokenMaps(generated_tokens=[decode(i) for i in generated], text_tokens=[decode(ids[p]) for p in text_pos],
                        grid=layout.grid, raw=raw, eci=eci, filtered=filtered, text=text)
