"""One registry of analyses by name: the CLI, the report and the dashboard all enumerate it.

An analysis declares what it needs (token statistics at some hook sites, the model's weights, or the model itself for
analyses that generate or intervene) and a ``compute`` function of those inputs and a frozen config. The runner
(:mod:`workbench.runner`) gathers the inputs once for all requested analyses. The built-in analyses live in the
``analyses`` package, which registers them on import; the lookups below import it on first use, so
``run_analysis(lm, "rankme")`` works in a fresh notebook without ``import analyses``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workbench.errors import config_error
from workbench.results import Config, Result


@dataclass(frozen=True)
class Analysis:
    name: str
    description: str
    config: type[Config]
    result: type[Result]
    compute: Callable[..., Result]
    sites: Callable[[Config, Any], list[str]] | None = None  # (config, ModelFacts) -> hook sites to capture
    needs_weights: bool = False
    needs_model: bool = False  # generates, differentiates or captures its own data (Inputs.model is then set)
    in_default_report: bool = True  # False for the causal tools (minutes each): run them by name
    default_model: str | None = None  # the model the CLI loads when no --model is given and all analyses agree


_REGISTRY: dict[str, Analysis] = {}


def register(analysis: Analysis) -> Analysis:
    """Register an analysis; a name (or a result kind) registered twice raises."""
    if analysis.name in _REGISTRY:
        raise ValueError(f"analysis {analysis.name!r} is already registered")
    if any(a.result.kind == analysis.result.kind for a in _REGISTRY.values()):
        raise ValueError(f"result kind {analysis.result.kind!r} is already registered")
    _REGISTRY[analysis.name] = analysis
    return analysis


def _builtins() -> None:
    """Register the built-in analyses (importing ``analyses`` once; a no-op after that)."""
    importlib.import_module("analyses")


def names(*, default_only: bool = False) -> list[str]:
    """Registered analysis names; ``default_only``: those the report runs when none are named."""
    _builtins()
    return [n for n, a in _REGISTRY.items() if a.in_default_report or not default_only]


def get(name: str) -> Analysis:
    _builtins()
    if name not in _REGISTRY:
        raise config_error("get_analysis", "name", f"one of {list(_REGISTRY)}", name)
    return _REGISTRY[name]


def default_model(analyses: list[str], fallback: str) -> str:
    """The model for a run of ``analyses`` when the user named none: the analyses' shared ``default_model`` (e.g.
    Gemma 3 for language steering, which needs a multilingual model), else ``fallback``."""
    wanted = {get(name).default_model for name in analyses}
    return wanted.pop() if len(wanted) == 1 and None not in wanted else fallback


def result_from_dict(data: dict[str, Any]) -> Result:
    """Rebuild any registered result from its ``to_dict`` form (dispatch on its ``kind``)."""
    _builtins()
    for analysis in _REGISTRY.values():
        if analysis.result.kind == data.get("kind"):
            return analysis.result.from_dict(data)
    kinds = [a.result.kind for a in _REGISTRY.values()]
    raise config_error("result_from_dict", "data['kind']", f"one of {kinds}", data.get("kind"))

