"""Run registered analyses: gather what they need once (one capture for all sites, the weights), then compute."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

import torch

from workbench import registry
from workbench.analysis import Inputs
from workbench.capture import capture
from workbench.errors import config_error
from workbench.models import LoadedModel, load_model
from workbench.results import Config, Result

__all__ = ["Inputs", "resolve_configs", "run_analyses", "run_analysis"]

log = logging.getLogger(__name__)


def resolve_configs(analyses: Sequence[str] | Mapping[str, Config | None]) -> dict[str, Config]:
    """Names (or name → config) to name → validated config (defaults where None).

    Example: ``resolve_configs({"rankme": None, "weight_spectra": WeightSpectraConfig(per_head=True)})``"""
    items = analyses.items() if isinstance(analyses, Mapping) else ((name, None) for name in analyses)
    out: dict[str, Config] = {}
    for name, config in items:
        spec = registry.get(name)
        config = spec.config() if config is None else config
        if not isinstance(config, spec.config):
            raise config_error("run_analyses", f"analyses[{name!r}]", f"a {spec.config.__name__}", config)
        out[name] = config
    if not out:
        raise config_error("run_analyses", "analyses", f"at least one of {registry.names()}", list(out))
    return out


def run_analyses(
    lm: LoadedModel | str,
    analyses: Sequence[str] | Mapping[str, Config | None],
    *,
    texts: Sequence[str] | None = None,
    batch_size: int = 8,
    max_tokens: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    timings: dict[str, float] | None = None,
) -> dict[str, Result]:
    """Run several analyses on one model, sharing one capture over the union of the sites they need (and keeping
    per-prompt vectors at the sites an analysis reads them from, ``Analysis.per_prompt_sites``, when texts are given).

    ``timings``: a dict to fill with wall-clock seconds per step — ``"capture"`` (the shared capture; absent when no
    analysis needs one), ``"weights"`` (gathering them, when asked) and each analysis by name (its ``compute``,
    including any capture or generation of its own).

    Example: ``run_analyses(lm, ["activation_spectra", "weight_spectra"], texts=default_prompts()[:32])``"""
    timings = {} if timings is None else timings
    lm = load_model(lm, device=device)
    configs = resolve_configs(analyses)
    facts = lm.facts
    sites = [s for name, c in configs.items() if (f := registry.get(name).sites) for s in f(c, facts)]
    per_prompt = [s for name, c in configs.items() if (f := registry.get(name).per_prompt_sites) for s in f(c, facts)]
    if per_prompt and not texts:
        per_prompt = []  # nothing to share: the analysis captures on its own
    sites += per_prompt
    captured = None
    if sites:
        if not texts:
            raise config_error("run_analyses", "texts", "a non-empty list of texts (activation analyses need them)",
                               texts)
        started = time.perf_counter()
        captured = capture(lm, texts, sites=list(dict.fromkeys(sites)), batch_size=batch_size,
                           max_tokens=max_tokens, progress=progress,
                           per_prompt_sites=list(dict.fromkeys(per_prompt)) or None)
        timings["capture"] = time.perf_counter() - started
    weights = None
    if any(registry.get(n).needs_weights for n in configs):
        started = time.perf_counter()
        weights = list(lm.weights())
        timings["weights"] = time.perf_counter() - started
    needs_model = any(registry.get(n).needs_model for n in configs)
    inputs = Inputs(model_name=lm.name, facts=facts, capture=captured, weights=weights,
                    model=lm if needs_model else None, progress=progress,
                    texts=None if texts is None else tuple(texts))
    results = {}
    for name, config in configs.items():
        log.info("computing %s", name)
        started = time.perf_counter()
        results[name] = registry.get(name).compute(inputs, config)
        timings[name] = time.perf_counter() - started
        log.info("%s took %.1f s", name, timings[name])
    return results


def run_analysis(lm: LoadedModel | str, name: str, config: Config | None = None, **kwargs) -> Result:
    """One analysis by name (see :func:`run_analyses` for the keyword arguments).

    Example: ``run_analysis(lm, "weight_spectra", WeightSpectraConfig(per_head=True)).plot()``"""
    return run_analyses(lm, {name: config}, **kwargs)[name]
