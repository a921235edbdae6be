"""TAM on a Hugging Face vision-language model: the map of each generated token over the image-token grid.

Two layouts are recognised from the model's config and the processor's output:

- Qwen2-VL style (``image_grid_thw`` in the inputs): the image tokens are the ``image_token_id`` positions and the
  grid is (t, h / m, w / m) for the patch grid (t, h, w) and the config's ``vision_config.spatial_merge_size`` m.
- LLaVA style (no ``image_grid_thw``): the ``image_token_id`` / ``image_token_index`` positions form a square grid
  of side ``vision_config.image_size // vision_config.patch_size`` (the ``"default"`` feature strategy, CLS dropped).

Any other layout (LLaVA-NeXT any-resolution tiles, several images) is refused unless ``grid`` is given, and a grid
whose size is not the number of image tokens is always refused. Per generated token y_t (as the reference's ``TAM``):
the image map A = relu(logit of y_t) at the image positions; the text scores = relu(logit of y_t) at the earlier text
positions (prompt text and earlier generated tokens; special tokens left out); the interference = those text
tokens' own image maps weighted by the text scores (same-token ones excluded), removed by
:func:`~workbench.tam.core.estimated_causal_inference`; then image and text scores are min–max normalised together
(``joint=True``, the reference) and the rank Gaussian filter (``kernel_size`` × ``kernel_size``) runs on each frame.
One deviation: the reference's first prompt token is explained by its predicted class, here by itself like the rest.

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
from workbench.tam.core import check_kernel_size, explained_token_maps, min_max, rank_gaussian_filter

SEQUENCE_KEYS_ZERO = ("mm_token_type_ids", "token_type_ids")  # per-position keys extended with 0 for generated text


@dataclass(frozen=True)
class ImageLayout:
    """Where the image tokens are (``positions`` into the sequence) and their ``grid`` (frames, height, width)."""

    positions: torch.Tensor
    grid: tuple[int, int, int]
    style: str


def image_token_id(model) -> int:
    cfg = model.config
    for name in ("image_token_id", "image_token_index"):
        value = getattr(cfg, name, None)
        if isinstance(value, int):
            return value
    raise config_error("image_layout", "model", "a VLM whose config names its image token (image_token_id or "
                                                "image_token_index)", type(model).__name__)


def image_layout(model, inputs: Mapping[str, torch.Tensor], grid: tuple[int, ...] | None = None) -> ImageLayout:
    """The image-token positions and grid of one prompt (see the module docstring for the recognised layouts);
    ``grid`` (h, w) or (t, h, w) overrides the inferred one. Raises when the grid's size is not the token count."""
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
                and all(isinstance(g, int) and not isinstance(g, bool) and g >= 1 for g in grid)):
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
    the joint min–max and the filter, as the reference shows it), and ``text`` ``[G, K]`` normalised scores of the
    prompt's text tokens ``text_tokens``."""

    generated_tokens: list[str]
    text_tokens: list[str]
    grid: tuple[int, int, int]
    raw: torch.Tensor
    eci: torch.Tensor
    filtered: torch.Tensor
    text: torch.Tensor

    def figure(self, t: int, image, frame: int = 0):
        """Generated token ``t``'s maps upsampled and overlaid on ``image`` (an RGB array or PIL image)."""
        import numpy as np

        from workbench.tam.plots import image_overlay_figure

        g = len(self.generated_tokens)
        if not isinstance(t, int) or isinstance(t, bool) or not -g <= t < g:
            raise config_error("VLMTokenMaps.figure", "t", f"a generated-token index in [{-g}, {g})", t)
        if not isinstance(frame, int) or not 0 <= frame < self.grid[0]:
            raise config_error("VLMTokenMaps.figure", "frame", f"a frame index in [0, {self.grid[0]})", frame)
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


def vlm_token_maps(model, inputs: Mapping[str, torch.Tensor], *, tokenizer=None, max_new_tokens: int = 16,
                   kernel_size: int = 3, joint: bool = True, grid: tuple[int, ...] | None = None) -> VLMTokenMaps:
    """TAM of a VLM's greedy answer to ``inputs`` (a processor's output for one image and prompt). ``tokenizer``
    decodes tokens and names the special tokens left out of the text scores (None: ids as strings, no exclusion)."""
    call = "vlm_token_maps"
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise config_error(call, "max_new_tokens", "an int >= 1", max_new_tokens)
    check_kernel_size(call, kernel_size)
    layout = image_layout(model, inputs, grid)
    device = next(model.parameters()).device
    inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
    n_prompt = inputs["input_ids"].shape[1]
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        generated = out[0, n_prompt:]
        eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
        if eos is not None and bool((generated == eos).any()):
            generated = generated[:int((generated == eos).nonzero()[0]) + 1]
        if len(generated) == 0:
            raise config_error(call, "max_new_tokens", "a generation of at least one token (the model stopped at "
                                                       "once)", max_new_tokens)
        logits = model(**_extended(inputs, generated)).logits[0].double().cpu()  # [T, V]
    ids = torch.cat([inputs["input_ids"][0].cpu(), generated.cpu()])
    special = set(getattr(tokenizer, "all_special_ids", []) or []) if tokenizer is not None else set()
    special |= {getattr(model.config, k) for k in ("vision_start_token_id", "vision_end_token_id")
                if isinstance(getattr(model.config, k, None), int)}
    is_image = torch.zeros(len(ids), dtype=torch.bool)
    is_image[layout.positions] = True
    text_pos = torch.tensor([p for p in range(n_prompt) if not is_image[p] and int(ids[p]) not in special],
                            dtype=torch.long)
    at_image = logits[layout.positions]  # [N, V]
    raws, ecis, filtered, texts = [], [], [], []
    for p in range(n_prompt, len(ids)):
        y = int(ids[p])
        a, cleaned = explained_token_maps(at_image, logits, ids, torch.cat([text_pos, torch.arange(n_prompt, p)]), y)
        txt = logits[text_pos, y].clamp_min(0)
        img_n, txt_n = min_max(cleaned, txt, joint=joint) if len(txt) else (min_max(cleaned)[0], txt)
        frames = img_n.reshape(layout.grid)
        filtered.append(torch.stack([rank_gaussian_filter(f, kernel_size) for f in frames]))
        raws.append(a.reshape(layout.grid))
        ecis.append(cleaned.reshape(layout.grid))
        texts.append(txt_n)
    decode = (lambda i: tokenizer.decode([int(i)])) if tokenizer is not None else (lambda i: str(int(i)))
    return VLMTokenMaps(generated_tokens=[decode(i) for i in generated], text_tokens=[decode(ids[p]) for p in text_pos],
                        grid=layout.grid, raw=torch.stack(raws), eci=torch.stack(ecis),
                        filtered=torch.stack(filtered), text=torch.stack(texts))
