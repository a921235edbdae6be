"""The contract between the library and an analysis: what it declares (:class:`Analysis`) and what its ``compute``
receives (:class:`Inputs`).

An analysis is a frozen config, a result and a ``compute(inputs, config) -> result`` function, plus what it needs:
token statistics at some hook sites, the model's weights, or the model itself (for analyses that generate,
differentiate or intervene). The runner (:mod:`workbench.runner`) gathers the inputs once for all the analyses of a
run. Analyses reach the registry through the ``workbench.analyses`` entry-point group (see :mod:`workbench.registry`
and CONTRIBUTING.md), the built-in ones exactly as a third-party package's would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from workbench.capture.result import CaptureResult
from workbench.models import LoadedModel, ModelFacts
from workbench.results import Config, Result


@dataclass(frozen=True)
class Analysis:
    """An analysis as the registry, runner, CLI, report and dashboard see it.

    Example: ``a: Analysis = registry.get("weight_spectra"); a.needs_weights, a.config().to_dict()``"""

    name: str
    description: str
    config: type[Config]
    result: type[Result]
    compute: Callable[[Inputs, Config], Result]
    sites: Callable[[Config, Any], list[str]] | None = None  # (config, ModelFacts) -> hook sites to capture
    # (config, ModelFacts) -> hook sites whose per-prompt vectors (last token, mean-pooled) the analysis can read from
    # the run's shared capture of its texts (kept there for these sites only) instead of capturing them itself
    per_prompt_sites: Callable[[Config, Any], list[str]] | None = None
    needs_weights: bool = False
    needs_model: bool = False  # generates, differentiates or captures its own data (Inputs.model is then set)
    in_default_report: bool = True  # False for the causal tools (minutes each): run them by name
    default_model: str | None = None  # the model the CLI loads when no --model is given and all analyses agree


@dataclass(frozen=True)
class Inputs:
    """What an analysis' ``compute`` receives. ``capture``/``weights`` are present when the analysis asked.

    Example: ``compute(Inputs(model_name=lm.name, facts=lm.facts, model=lm), RankMeConfig())``"""

    model_name: str
    facts: ModelFacts
    capture: CaptureResult | None = None
    weights: list[tuple[str, int | None, torch.Tensor]] | None = None
    model: LoadedModel | None = None
    progress: bool = False
    texts: tuple[str, ...] | None = None  # the run's prompts, for analyses that capture on their own (RankMe)
