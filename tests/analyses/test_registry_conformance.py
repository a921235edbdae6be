"""Every registered analysis: config validation, JSON round-trip, rendering, and a run on the tiny model."""

from __future__ import annotations

import dataclasses

import plotly.graph_objects as go
import pytest

from workbench import registry
from workbench.errors import ConfigError
from workbench.runner import run_analysis

NAMES = registry.names()
TEXTS = ["The cat sat on the mat.", "A short second text about rivers and hills.", "x = 3 + 4"]


def test_builtin_analyses_are_registered():
    assert {"activation_spectra", "weight_spectra"} <= set(NAMES)


def test_registering_a_name_twice_raises():
    spec = registry.get(NAMES[0])
    with pytest.raises(ValueError, match="already registered"):
        registry.register(spec)


def test_unknown_analysis_is_a_config_error():
    with pytest.raises(ConfigError, match="'name'"):
        registry.get("no_such_analysis")


@pytest.mark.parametrize("name", NAMES)
def test_config_round_trips_and_rejects_bad_fields(name):
    spec = registry.get(name)
    config = spec.config()
    assert spec.config.from_json(config.to_json()) == config
    for field in dataclasses.fields(spec.config):
        with pytest.raises(ConfigError, match=repr(field.name)):
            spec.config(**{field.name: object()})


# Analyses that need whole words as tokens run on tiny models with word-level tokenizers: IOI needs single-token
# names, language steering needs tokens that mark English or Spanish, sentiment needs its lexicon words.
WORD_LEVEL = {"subspace_patching": "tiny_ioi_model", "language_neurons": "tiny_lang_model",
              "steer2edit": "tiny_sentiment_model", "token_maps": "tiny_recall_model"}


@pytest.fixture(scope="module")
def results(request, tiny_model):
    return {name: run_analysis(request.getfixturevalue(WORD_LEVEL[name]) if name in WORD_LEVEL else tiny_model, name,
                               texts=TEXTS) for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_result_round_trips_and_renders(results, name):
    result = results[name]
    assert type(result).from_json(result.to_json()) == result
    assert registry.result_from_dict(result.to_dict()) == result
    figures = result.figures()
    assert figures and all(isinstance(f, go.Figure) and f.data for f in figures)
    header, rows = result.table()
    assert header and rows and all(len(row) == len(header) for row in rows)
    assert isinstance(result.summary(), str) and result.summary()
    assert "<table" in result._repr_html_()


@pytest.mark.parametrize("name", NAMES)
def test_metrics_keys_are_unique_and_values_floats(results, name):
    """A sweep stores metrics() as rows keyed by (cell, metric, layer, site): a repeated key would be two values for
    one point of a figure."""
    metrics = results[name].metrics()
    keys = [(metric, layer, site) for metric, layer, site, _ in metrics]
    assert len(keys) == len(set(keys)), sorted(k for k in set(keys) if keys.count(k) > 1)[:5]
    assert all(isinstance(metric, str) and (layer is None or type(layer) is int)
               and (site is None or isinstance(site, str)) and type(value) is float
               for metric, layer, site, value in metrics)


def test_result_from_dict_rejects_unknown_kind():
    with pytest.raises(ConfigError, match="kind"):
        registry.result_from_dict({"kind": "nope"})


def test_builtins_register_without_importing_analyses():
    """A fresh notebook calls run_analysis(lm, "rankme") without importing any analysis module (the README's example)."""
    import subprocess
    import sys

    code = "from workbench import registry; print(','.join(registry.names()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert set(NAMES) <= set(out.stdout.strip().split(","))


def test_default_model_is_the_analyses_own_when_they_agree():
    assert registry.default_model(["language_neurons"], "smollm2-135m") == "gemma3-270m"
    assert registry.default_model(["language_neurons", "rankme"], "smollm2-135m") == "smollm2-135m"
    assert registry.default_model(["rankme", "activation_spectra"], "smollm2-135m") == "smollm2-135m"
