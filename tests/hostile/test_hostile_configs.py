"""Hostile configs for every registered analysis: each generated value either builds a valid config (which then
survives its own JSON round trip) or raises ConfigError naming a field of that config — never another exception.
``from_dict``/``from_json`` take junk data and junk text the same way."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.hostile.strategies import NASTY_NUMBERS, NASTY_TEXT, json_text, json_values, junk
from workbench import registry
from workbench.errors import ConfigError

NAMES = registry.names()
PARAM = re.compile(r"parameter '([^']+)'")


def _fields(name: str) -> list[str]:
    return [f.name for f in dataclasses.fields(registry.get(name).config)]


def _named_field(exc: ConfigError, fields: list[str]) -> bool:
    """The message names a field of the config (``parameter 'field'`` or ``parameter 'field[...]'``)."""
    match = PARAM.search(str(exc))
    return bool(match) and match.group(1).split("[")[0] in fields


def _build(config, fields: list[str], values: dict):
    """The config built from ``values``, or None after a ConfigError that names one of its fields."""
    try:
        made = config(**values)
    except ConfigError as exc:
        assert _named_field(exc, fields), f"{exc} names no field of {config.__name__}"
        return None
    again = config.from_json(made.to_json())  # an accepted config is a valid one: it round-trips
    assert again.to_json() == made.to_json()
    for field in (f for f in fields if f.endswith("seed")):  # and its seeds seed torch (analyses add small offsets)
        for offset in (-1000, 1000):
            torch.Generator().manual_seed(getattr(made, field) + offset)
    return made


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_config_fields_take_junk(name, data):
    config, fields = registry.get(name).config, _fields(name)
    _build(config, fields, data.draw(st.dictionaries(st.sampled_from(fields), junk, min_size=1, max_size=3)))


@pytest.mark.parametrize("name", NAMES)
def test_every_field_takes_every_nasty_atom(name):
    """Not sampled: every field of the config gets each of the nasty numbers and strings in turn."""
    config, fields = registry.get(name).config, _fields(name)
    for field in fields:
        for value in NASTY_NUMBERS + NASTY_TEXT + [[], {}, [float("nan")], [2**70], [""], None, True, b"\x00"]:
            _build(config, fields, {field: value})


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_config_from_dict_takes_junk(name, data):
    config, fields = registry.get(name).config, _fields(name)
    keys = st.one_of(st.sampled_from(fields + ["kind"]), st.text(max_size=8), st.integers(), st.none())
    value = data.draw(st.one_of(junk, st.dictionaries(keys, junk, max_size=4)), label="data")
    try:
        config.from_dict(value)
    except ConfigError as exc:
        assert "from_dict" in str(exc) or _named_field(exc, fields)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", NAMES)
@given(text=st.one_of(st.text(max_size=40), st.binary(max_size=40), json_values.map(json_text),
                      st.integers(1, 50_000).map(lambda n: "[" * n + "]" * n), st.just("{" * 100_000), junk))
def test_config_from_json_takes_junk(name, text):
    config = registry.get(name).config
    try:
        config.from_json(text)
    except ConfigError:
        pass


def test_from_json_names_the_problem():
    config = registry.get("rankme").config
    with pytest.raises(ConfigError, match=r"from_json\(\): parameter 'text'"):
        config.from_json("{not json")
    with pytest.raises(ConfigError, match=r"from_dict\(\): parameter 'data'"):
        config.from_json(json.dumps([1, 2]))
    with pytest.raises(ConfigError, match=r"from_dict\(\): parameter 'data'"):
        config.from_dict({1: 2, "a": 3})  # mixed key types: named, not a TypeError from sorting them
