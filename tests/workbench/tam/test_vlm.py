"""The VLM path of TAM on tiny randomly initialised Qwen2-VL and LLaVA models built from configs (no weights needed):
image-token positions and grids, maps equal to a separate full forward, and the refusals."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from workbench.errors import ConfigError, ShapeError
from workbench.tam import estimated_causal_inference, min_max, rank_gaussian_filter
from workbench.tam.vlm import image_layout, vlm_token_maps

IMAGE, START, END = 250, 252, 253
TEXT = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2)


@pytest.fixture(scope="module")
def qwen():
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    torch.manual_seed(0)
    cfg = Qwen2VLConfig(text_config=TEXT | {"rope_scaling": {"type": "mrope", "mrope_section": [2, 1, 1]}},
                        vision_config=dict(depth=1, embed_dim=16, hidden_size=32, num_heads=2, mlp_ratio=2,
                                           patch_size=4, spatial_merge_size=2, temporal_patch_size=2, in_chans=3),
                        image_token_id=IMAGE, video_token_id=251, vision_start_token_id=START,
                        vision_end_token_id=END)
    model = Qwen2VLForConditionalGeneration(cfg).eval()
    ids = torch.tensor([[1, 5, 6, START] + [IMAGE] * 6 + [END, 7, 8, 9, 7]])  # a 4x6-patch image, merged 2x2 -> 2x3
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": (ids == IMAGE).int(),
              "pixel_values": torch.randn(4 * 6, 3 * 2 * 4 * 4), "image_grid_thw": torch.tensor([[1, 4, 6]])}
    return model, inputs


@pytest.fixture(scope="module")
def llava():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(0)
    cfg = LlavaConfig(vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                     num_attention_heads=2, image_size=16, patch_size=4),
                      text_config=LlamaConfig(**TEXT), image_token_id=IMAGE, vision_feature_layer=-1)
    model = LlavaForConditionalGeneration(cfg).eval()
    ids = torch.tensor([[1, 5, 6] + [IMAGE] * 16 + [7, 8, 9]])
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": torch.randn(1, 3, 16, 16)}


def test_layouts(qwen, llava):
    q = image_layout(*qwen)
    assert q.style == "qwen2-vl" and q.grid == (1, 2, 3) and q.positions.tolist() == list(range(4, 10))
    la = image_layout(*llava)
    assert la.style == "llava" and la.grid == (1, 4, 4) and la.positions.tolist() == list(range(3, 19))
    assert image_layout(*llava, grid=(2, 8)).grid == (1, 2, 8)


def test_grid_not_matching_the_token_count_is_refused(qwen, llava):
    with pytest.raises(ShapeError, match="'grid'.*16 cells"):
        image_layout(*llava, grid=(3, 5))
    model, inputs = qwen
    with pytest.raises(ShapeError, match="'grid'.*6 cells"):
        image_layout(model, inputs | {"image_grid_thw": torch.tensor([[1, 4, 4]])})
    with pytest.raises(ConfigError, match="'grid'"):
        image_layout(model, inputs, grid=(0, 6))
    with pytest.raises(ConfigError, match="'inputs'"):
        image_layout(model, {"input_ids": torch.tensor([[1, 5, 6]])})


@pytest.mark.parametrize("name", ["qwen", "llava"])
def test_maps_equal_a_separate_forward(name, request):
    model, inputs = request.getfixturevalue(name)
    maps = vlm_token_maps(model, inputs, max_new_tokens=3)
    layout = image_layout(model, inputs)
    n = inputs["input_ids"].shape[1]
    ids = torch.cat([inputs["input_ids"][0], torch.tensor([int(t) for t in maps.generated_tokens])])
    extra = {"attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
    if "mm_token_type_ids" in inputs:
        extra["mm_token_type_ids"] = (ids[None] == IMAGE).int()
    with torch.no_grad():
        logits = model(**(inputs | extra | {"input_ids": ids[None]})).logits[0].double()
    assert maps.raw.shape == maps.eci.shape == maps.filtered.shape == (3, *layout.grid)
    text_pos = list(range(int(layout.positions.max()) + 1 + (name == "qwen"), n))  # the user's text after the image
    assert maps.text.shape == (3, len(text_pos) + 2)
    assert len(text_pos) == (4 if name == "qwen" else 3)
    for t in range(3):
        p, y = n + t, int(ids[n + t])
        assert int(logits[p - 1].argmax()) == y  # the forward over prompt + answer reproduces the greedy choices
        a = logits[layout.positions, y].clamp_min(0)
        assert torch.allclose(maps.raw[t].flatten(), a, atol=1e-5)
        earlier = torch.tensor(text_pos + list(range(n, p)))
        weight_at = torch.tensor(text_pos + list(range(n - 1, p - 1)))  # answer tokens where they were generated
        # no template after the text here: for the first token the last text position generated it, never a weight
        earlier, weight_at = earlier[weight_at != p - 1], weight_at[weight_at != p - 1]
        eci = estimated_causal_inference(a, logits[layout.positions][:, ids[earlier]].T.clamp_min(0),
                                         logits[weight_at, y].clamp_min(0), ids[earlier] != y)
        assert torch.allclose(maps.eci[t].flatten(), eci, atol=1e-5)
        img, txt = min_max(eci, logits[weight_at, y].clamp_min(0))
        assert torch.allclose(maps.text[t, :len(txt)], txt, atol=1e-5) and torch.isnan(maps.text[t, len(txt):]).all()
        assert torch.allclose(maps.filtered[t, 0], rank_gaussian_filter(img.reshape(layout.grid[1:])), atol=1e-5)


def test_interfering_text_options(qwen):
    model, inputs = qwen
    ref = vlm_token_maps(model, inputs, max_new_tokens=2)
    assert ref.text_tokens == ["7", "8", "9", "7"]  # the user's text only: not the tokens before the image
    wide = vlm_token_maps(model, inputs, max_new_tokens=2, text_positions="all_text")
    assert wide.text_tokens == ["1", "5", "6", "7", "8", "9", "7"]
    span = vlm_token_maps(model, inputs, max_new_tokens=2, prompt_span=(11, 13))
    assert span.text_tokens == ["7", "8"]
    own = vlm_token_maps(model, inputs, max_new_tokens=2, eci_weights="own_position")
    assert torch.equal(own.raw, ref.raw) and not torch.equal(own.text[1], ref.text[1])
    with pytest.raises(ConfigError, match="'prompt_span'"):
        vlm_token_maps(model, inputs, prompt_span=(5, 99))
    with pytest.raises(ConfigError, match="'text_positions'"):
        vlm_token_maps(model, inputs, text_positions="everything")
    with pytest.raises(ConfigError, match="'eci_weights'"):
        vlm_token_maps(model, inputs, eci_weights="mine")


def test_overlay_figure_and_bad_indices(llava):
    model, inputs = llava
    maps = vlm_token_maps(model, inputs, max_new_tokens=2)
    fig = maps.figure(0, np.zeros((32, 32, 3), dtype=np.uint8))
    assert isinstance(fig, go.Figure) and len(fig.data) == 6  # image + overlay for raw, ECI, filtered
    assert fig.data[1].z.shape == (32, 32)  # the map upsampled to the image
    with pytest.raises(ConfigError, match="'t'"):
        maps.figure(2, np.zeros((32, 32, 3), dtype=np.uint8))
    with pytest.raises(ShapeError, match="'image'"):
        maps.figure(0, np.zeros((32, 32), dtype=np.uint8))
    with pytest.raises(ConfigError, match="'max_new_tokens'"):
        vlm_token_maps(model, inputs, max_new_tokens=0)
    alone = vlm_token_maps(model, inputs, max_new_tokens=2, joint=False)  # text scores normalised on their own
    assert torch.equal(alone.raw, maps.raw)
    assert all(float(row.max()) == 1.0 for row in alone.text if float(row.max()) > 0)
    assert not (torch.equal(alone.text, maps.text) and torch.equal(alone.filtered, maps.filtered))  # joint mattered
