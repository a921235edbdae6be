"""Text token maps (workbench.tam.text) on the tiny Llama against a full forward written out by hand, and
``maps_from_logits`` on synthetic logits."""

from __future__ import annotations

import pytest
import torch

from workbench.errors import ConfigError, ShapeError
from workbench.tam import estimated_causal_inference, rank_gaussian_filter


def test_text_token_maps_equal_a_full_forward(tiny_model):
    from workbench.intervene.readout import greedy_continuations
    from workbench.tam import text_token_maps

    prompt = "abcab c"
    maps = text_token_maps(tiny_model, prompt, max_new_tokens=3)
    prompt_ids = tiny_model.model.to_tokens(prompt)[0]  # BOS first
    generated = greedy_continuations(tiny_model, [prompt], max_new_tokens=3)[0]
    ids = torch.cat([prompt_ids, generated])
    with torch.no_grad():
        logits = tiny_model.model(ids[None])[0].double()
    n = len(prompt_ids)
    assert maps.raw.shape == maps.eci.shape == maps.filtered.shape == (3, n - 1)
    assert len(maps.prompt_tokens) == n - 1 and len(maps.generated_tokens) == 3
    for t in range(3):
        p, y = n + t, int(ids[n + t])
        raw = logits[1:n, y].clamp_min(0)
        assert torch.allclose(maps.raw[t], raw, atol=1e-5)
        # the reference's weights: prompt tokens at their own position, generated ones where they were generated;
        # y's own generating position p - 1 never (for the first token that is the last prompt token: left out)
        earlier = torch.tensor([q for q in range(1, p) if q != p - 1 or p > n])
        weight_at = torch.where(earlier >= n, earlier - 1, earlier)
        expected = estimated_causal_inference(raw, logits[1:n][:, ids[earlier]].T.clamp_min(0),
                                              logits[weight_at, y].clamp_min(0), ids[earlier] != y)
        assert torch.allclose(maps.eci[t], expected, atol=1e-5)
        assert torch.allclose(maps.filtered[t], rank_gaussian_filter(maps.eci[t]), atol=1e-12)


def test_text_token_maps_bad_inputs(tiny_model):
    from workbench.tam import text_token_maps

    with pytest.raises(ConfigError, match="'prompt'"):
        text_token_maps(tiny_model, "  ")
    with pytest.raises(ConfigError, match="'max_new_tokens'"):
        text_token_maps(tiny_model, "abc", max_new_tokens=0)


def test_maps_from_logits_bad_inputs():
    from workbench.tam import maps_from_logits

    logits, ids = torch.randn(5, 7), torch.tensor([1, 2, 3, 4, 5])
    with pytest.raises(ConfigError, match="'ids'"):  # an empty generation: nothing to explain
        maps_from_logits(logits, ids, 5)
    with pytest.raises(ConfigError, match="'n_prompt'"):  # the prompt boundary out of range
        maps_from_logits(logits, ids, 6)
    with pytest.raises(ConfigError, match="'n_prompt'"):
        maps_from_logits(logits, ids, 1, first=1)
    with pytest.raises(ShapeError, match="'logits'"):
        maps_from_logits(logits[:4], ids, 3)
    raw, eci, filtered = maps_from_logits(logits, ids, 3)
    assert raw.shape == (2, 2) and torch.allclose(raw[0], logits[1:3, 4].double().clamp_min(0))


def test_text_maps_figure_and_repr(tiny_model):
    from workbench.tam import text_token_maps

    maps = text_token_maps(tiny_model, "abcab c", max_new_tokens=2)
    fig = maps.figure()
    assert [d.type for d in fig.data] == ["heatmap"] * 3  # raw | ECI | filtered
    assert fig.data[0].z.shape == (2, len(maps.prompt_tokens)) and float(fig.data[0].z.max()) <= 1.0
    assert "plotly" in maps._repr_html_()
    with pytest.raises(ConfigError, match="'name'"):
        maps.stage("smooth")


CHAT = ("{% for m in messages %}<bos>user: {{ m['content'] }}<eos>{% endfor %}"
        "{% if add_generation_prompt %}<bos>bot: {% endif %}")


def test_chat_layout_maps_cover_the_user_text_only(tiny_model, monkeypatch):
    """The reference's layout: the prompt as a user turn; the maps and interferers cover only the user's text, and
    the first answer token is generated at a template position (so no weight is left out for it)."""
    from workbench.intervene.readout import greedy_from_ids
    from workbench.models.chat import user_turn
    from workbench.tam import text_token_maps

    monkeypatch.setattr(tiny_model.tokenizer, "chat_template", CHAT, raising=False)
    ids, first, last = user_turn(tiny_model, "abcab c")
    assert tiny_model.tokenizer.decode(ids[first:last]) == "abcab c" and int(ids[first - 1]) != int(ids[first])
    assert tiny_model.tokenizer.decode(ids[last:]).startswith("<eos>")
    maps = text_token_maps(tiny_model, "abcab c", max_new_tokens=3, chat_template=True)
    assert maps.prompt_tokens == list("abcab c")
    generated = greedy_from_ids(tiny_model, ids, max_new_tokens=3)
    full = torch.cat([ids, generated])
    with torch.no_grad():
        logits = tiny_model.model(full[None])[0].double()
    n = len(ids)
    for t in range(len(generated)):
        p, y = n + t, int(full[n + t])
        raw = logits[first:last, y].clamp_min(0)
        earlier = torch.tensor(list(range(first, last)) + list(range(n, p)))
        weight_at = torch.tensor(list(range(first, last)) + list(range(n - 1, p - 1)))
        expected = estimated_causal_inference(raw, logits[first:last][:, full[earlier]].T.clamp_min(0),
                                              logits[weight_at, y].clamp_min(0), full[earlier] != y)
        assert torch.allclose(maps.eci[t], expected, atol=1e-5)
    with pytest.raises(ConfigError, match="'eci_weights'"):
        text_token_maps(tiny_model, "abc", eci_weights="mine")
    with pytest.raises(ConfigError, match="'chat_template'"):
        text_token_maps(tiny_model, "abc", chat_template="yes")


def test_own_position_weights_keep_the_old_reading():
    """``eci_weights="own_position"``: every earlier token at its own position (the first token's interferers
    include the last prompt token weighted by y's own top logit)."""
    from workbench.tam import maps_from_logits

    torch.manual_seed(0)
    logits, ids = torch.randn(7, 12) + 0.5, torch.tensor([1, 3, 4, 5, 3, 6, 7])
    _, eci, _ = maps_from_logits(logits, ids, 5, eci_weights="own_position")
    for t, p in enumerate((5, 6)):
        y = int(ids[p])
        earlier = torch.arange(1, p)
        expected = estimated_causal_inference(logits[1:5, y].clamp_min(0), logits[1:5][:, ids[earlier]].T.clamp_min(0),
                                              logits[earlier, y].clamp_min(0), ids[earlier] != y)
        assert torch.allclose(eci[t], expected)
    with pytest.raises(ConfigError, match="'last'"):
        maps_from_logits(logits, ids, 5, last=6)
