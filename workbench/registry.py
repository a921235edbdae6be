"""One registry of analyses by name: the CLI, the report and the dashboard all enumerate it.

Analyses arrive through the ``workbench.analyses`` entry-point group, loaded on the first lookup: each entry point
names an :class:`~workbench.analysis.Analysis` object (``name = "package.module:ANALYSIS"``). The built-in analyses
register that way from this distribution's own ``pyproject.toml``, so a third-party package adds one exactly the same
way, and ``import workbench`` imports no analysis module. :func:`register` adds one by hand (a notebook, a test).
"""

from __future__ import annotations

import logging
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from workbench.analysis import Analysis
from workbench.errors import config_error
from workbench.results import Result

GROUP = "workbench.analyses"
DISTRIBUTION = "spectral-workbench"  # the built-in analyses' distribution: their failures raise
log = logging.getLogger(__name__)

_REGISTRY: dict[str, Analysis] = {}
_loaded = False

__all__ = ["GROUP", "Analysis", "default_model", "get", "names", "register", "result_from_dict"]


def register(analysis: Analysis) -> Analysis:
    """Register an analysis by hand (a notebook, a test); a name (or a result kind) registered twice raises, the
    entry points' included.

    Example: ``register(Analysis(name="my_rank", description="...", config=MyConfig, result=MyResult, compute=fn))``"""
    _load()
    if not isinstance(analysis, Analysis):
        raise config_error("register", "analysis", "a workbench.analysis.Analysis", analysis)
    _add(analysis)
    return analysis


def _add(analysis: Analysis) -> None:
    if analysis.name in _REGISTRY:
        raise ValueError(f"analysis {analysis.name!r} is already registered")
    if any(a.result.kind == analysis.result.kind for a in _REGISTRY.values()):
        raise ValueError(f"result kind {analysis.result.kind!r} is already registered")
    _REGISTRY[analysis.name] = analysis


def _from_entry_point(entry: EntryPoint) -> Analysis:
    analysis = entry.load()
    if not isinstance(analysis, Analysis):
        raise TypeError(f"entry point {entry.name} = {entry.value!r} in group {GROUP!r} must name a "
                        f"workbench.analysis.Analysis; it names a {type(analysis).__name__}")
    if analysis.name != entry.name:
        raise ValueError(f"entry point {entry.name!r} = {entry.value!r} names the analysis {analysis.name!r}; "
                         f"the entry point's name must be the analysis' name")
    return analysis


def _load() -> None:
    """Register every analysis of the entry-point group, once. A third-party one that fails to load is logged and
    skipped, so a broken plugin cannot take the others down with it; a built-in one (this distribution's) raises."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for entry in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        if entry.name in _REGISTRY:
            continue
        try:
            _add(_from_entry_point(entry))
        except Exception as exc:  # noqa: BLE001 - a plugin's failure of any kind is reported, not raised
            if entry.dist is not None and entry.dist.name == DISTRIBUTION:
                _loaded = False
                raise
            log.warning("analysis entry point %s = %s could not be registered: %s: %s", entry.name, entry.value,
                        type(exc).__name__, exc)


def names(*, default_only: bool = False) -> list[str]:
    """Registered analysis names; ``default_only``: those the report runs when none are named.

    Example: ``names(default_only=True)  # what `workbench report` runs by default``"""
    _load()
    return [n for n, a in _REGISTRY.items() if a.in_default_report or not default_only]


def get(name: str) -> Analysis:
    """The registered analysis called ``name`` (loading the entry points first); ConfigError listing the names
    otherwise.

    Example: ``get("rankme").config()``"""
    _load()
    if name not in _REGISTRY:
        raise config_error("get_analysis", "name", f"one of {list(_REGISTRY)}", name)
    return _REGISTRY[name]


def default_model(analyses: list[str], fallback: str) -> str:
    """The model for a run of ``analyses`` when the user named none: the analyses' shared ``default_model`` (e.g.
    Gemma 3 for language steering, which needs a multilingual model), else ``fallback``.

    Example: ``default_model(["language_neurons"], "smollm2-135m")  # "gemma3-270m"``"""
    wanted = {get(name).default_model for name in analyses}
    return wanted.pop() if len(wanted) == 1 and None not in wanted else fallback


def result_from_dict(data: dict[str, Any]) -> Result:
    """Rebuild any registered result from its ``to_dict`` form (dispatch on its ``kind``).

    Example: ``result_from_dict(result.to_dict()) == result``"""
    _load()
    for analysis in _REGISTRY.values():
        if analysis.result.kind == data.get("kind"):
            return analysis.result.from_dict(data)
    kinds = [a.result.kind for a in _REGISTRY.values()]
    raise config_error("result_from_dict", "data['kind']", f"one of {kinds}", data.get("kind"))


def _reset() -> None:
    """Forget every registration (tests: the next lookup reloads the entry points)."""
    global _loaded
    _REGISTRY.clear()
    _loaded = False
