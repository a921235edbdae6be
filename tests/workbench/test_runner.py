"""The runner (workbench.runner): configs resolved by name, and the inputs gathered once for every analysis of a run.

Stand-in analyses record what their ``compute`` receives; the capture is the real one, wrapped to count its calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest

from workbench import registry, runner
from workbench.analysis import Analysis
from workbench.errors import ConfigError
from workbench.results import Config, Result
from workbench.runner import resolve_configs, run_analyses, run_analysis

TEXTS = ["One small text.", "And another, a little longer."]


@dataclass(frozen=True)
class ResidConfig(Config):
    kind: ClassVar[str] = "test_runner_resid_config"


@dataclass(frozen=True)
class PlainConfig(Config):
    kind: ClassVar[str] = "test_runner_plain_config"


def _result(kind: str) -> type[Result]:
    return dataclass(frozen=True)(type(f"Result_{kind}", (Result,), {"kind": kind, "__annotations__": {}}))


SEEN: dict[str, object] = {}  # analysis name -> the Inputs its compute received


def _stand_in(name: str, config: type[Config], *, sites=None, needs_weights=False, needs_model=False) -> Analysis:
    result = _result(f"test_runner_{name}")

    def compute(inputs, cfg):
        SEEN[name] = inputs
        return result()

    return Analysis(name=name, description="a stand-in", config=config, result=result, compute=compute, sites=sites,
                    needs_weights=needs_weights, needs_model=needs_model)


STAND_INS = {
    "t_early": dict(config=ResidConfig, sites=lambda c, facts: ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]),
    "t_late": dict(config=PlainConfig, sites=lambda c, facts: [f"blocks.{facts.n_layers - 1}.hook_resid_post"]),
    "t_weights": dict(config=PlainConfig, needs_weights=True),
    "t_model": dict(config=PlainConfig, needs_model=True),
}


@pytest.fixture
def stand_ins():
    """The stand-in analyses registered for one test (next to the built-in ones), removed afterwards."""
    SEEN.clear()
    for name, spec in STAND_INS.items():
        registry.register(_stand_in(name, **spec))
    yield
    for name in STAND_INS:
        registry._REGISTRY.pop(name, None)
    SEEN.clear()


@pytest.fixture
def captures(monkeypatch):
    """Every call of the runner's capture, as the list of sites it was asked for (the real capture still runs)."""
    calls: list[list[str]] = []
    real = runner.capture

    def counting(lm, texts, *, sites, **kwargs):
        calls.append(list(sites))
        return real(lm, texts, sites=sites, **kwargs)

    monkeypatch.setattr(runner, "capture", counting)
    return calls


def test_resolve_configs_fills_defaults_and_keeps_given_configs(stand_ins):
    assert resolve_configs(["t_early", "t_late"]) == {"t_early": ResidConfig(), "t_late": PlainConfig()}
    mine = PlainConfig()
    resolved = resolve_configs({"t_early": None, "t_late": mine})
    assert resolved == {"t_early": ResidConfig(), "t_late": mine} and resolved["t_late"] is mine
    assert list(resolve_configs({"t_late": None, "t_early": None})) == ["t_late", "t_early"]  # the caller's order


def test_resolve_configs_wrong_config_type_names_the_analysis(stand_ins):
    with pytest.raises(ConfigError, match=r"parameter \"analyses\['t_early'\]\" must be a ResidConfig"):
        resolve_configs({"t_early": PlainConfig()})


def test_resolve_configs_refuses_an_empty_list_and_unknown_names(stand_ins):
    with pytest.raises(ConfigError, match=r"run_analyses\(\): parameter 'analyses' must be at least one of \["):
        resolve_configs([])
    with pytest.raises(ConfigError, match="'name'.*'no_such_analysis'"):
        resolve_configs(["no_such_analysis"])


def test_one_capture_for_the_union_of_the_sites(tiny_model, stand_ins, captures):
    results = run_analyses(tiny_model, ["t_early", "t_late"], texts=TEXTS)
    assert list(results) == ["t_early", "t_late"]
    assert captures == [["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]]  # once, the shared site once
    early, late = SEEN["t_early"], SEEN["t_late"]
    assert early is late, "every analysis of a run receives the same inputs"
    assert early.capture is not None and early.texts == tuple(TEXTS) and early.model_name == tiny_model.name
    assert early.weights is None and early.model is None  # nobody asked


def test_texts_are_required_only_when_sites_are(tiny_model, stand_ins, captures):
    for texts in (None, []):
        with pytest.raises(ConfigError, match="run_analyses\\(\\): parameter 'texts' must be a non-empty list"):
            run_analyses(tiny_model, ["t_weights", "t_early"], texts=texts)
    assert captures == [] and SEEN == {}  # refused before any capture or compute
    run_analyses(tiny_model, ["t_weights", "t_model"])  # no sites: no texts needed, nothing captured
    assert captures == [] and SEEN["t_weights"].capture is None and SEEN["t_weights"].texts is None


def test_weights_are_gathered_only_when_an_analysis_asks(tiny_model, stand_ins, monkeypatch):
    calls = []
    real = type(tiny_model).weights

    def counting(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(tiny_model), "weights", counting)
    run_analysis(tiny_model, "t_model")
    assert calls == [] and SEEN["t_model"].weights is None
    run_analyses(tiny_model, ["t_weights", "t_model"])
    assert len(calls) == 1
    weights = SEEN["t_weights"].weights
    assert [(kind, layer) for kind, layer, _ in weights] == [(k, layer) for k, layer, _ in tiny_model.weights()]
    assert SEEN["t_model"].weights is weights  # gathered for the run, shared by all its analyses


def test_the_model_is_passed_only_when_an_analysis_needs_it(tiny_model, stand_ins):
    run_analysis(tiny_model, "t_weights")
    assert SEEN["t_weights"].model is None
    run_analysis(tiny_model, "t_model")
    assert SEEN["t_model"].model is tiny_model


def test_timings_give_seconds_per_step(tiny_model, stand_ins):
    timings: dict[str, float] = {}
    run_analyses(tiny_model, ["t_early", "t_weights", "t_model"], texts=TEXTS, timings=timings)
    assert list(timings) == ["capture", "weights", "t_early", "t_weights", "t_model"]
    assert all(isinstance(s, float) and s >= 0 for s in timings.values())
    timings.clear()
    run_analyses(tiny_model, ["t_model"], timings=timings)
    assert list(timings) == ["t_model"]  # no capture, no weights: no entries for them
