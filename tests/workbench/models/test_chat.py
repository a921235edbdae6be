"""Chat layouts (workbench.models.chat); the TAM and gradient-spectra tests exercise them further."""

from __future__ import annotations

import pytest

from workbench.errors import ConfigError


def test_user_turn_refusals(tiny_model, monkeypatch):
    from workbench.models.chat import user_turn

    with pytest.raises(ConfigError, match="'lm'.*chat template"):
        user_turn(tiny_model, "abc")  # the char tokenizer has no template
    monkeypatch.setattr(tiny_model.tokenizer, "chat_template", "{{ 'fixed text' }}", raising=False)
    with pytest.raises(ConfigError, match="'prompt'"):
        user_turn(tiny_model, "abc")  # a template that drops the user's text


CHAT = ("{% for m in messages %}<bos>user: {{ m['content'] }}<eos>{% endfor %}"
        "{% if add_generation_prompt %}<bos>bot: {% endif %}")


def test_prompt_ids_use_the_template_only_when_asked_and_present(tiny_model, monkeypatch):
    from workbench.models.chat import prompt_ids, response_ids

    plain = prompt_ids(tiny_model, "ab")
    assert plain.tolist() == tiny_model.model.to_tokens("ab").tolist()  # no template: BOS + the text
    monkeypatch.setattr(tiny_model.tokenizer, "chat_template", CHAT, raising=False)
    wrapped = prompt_ids(tiny_model, "ab")
    assert tiny_model.tokenizer.decode(wrapped[0]) == "<bos>user: ab<eos><bos>bot: "
    assert prompt_ids(tiny_model, "ab", chat_template=False).tolist() == plain.tolist()
    assert tiny_model.tokenizer.decode(response_ids(tiny_model, "ok")[0]) == "ok"  # no special tokens added


def test_user_turn_span_is_the_user_text(tiny_model, monkeypatch):
    from workbench.models.chat import prompt_ids, user_turn

    monkeypatch.setattr(tiny_model.tokenizer, "chat_template", CHAT, raising=False)
    ids, start, end = user_turn(tiny_model, " hi there ")
    assert ids.tolist() == prompt_ids(tiny_model, " hi there ")[0].tolist()
    assert tiny_model.tokenizer.decode(ids[start:end]) == "hi there"  # stripped; no role words, no specials
