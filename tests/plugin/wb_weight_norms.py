"""weight_norms: the Frobenius norm and effective rank of every weight matrix — a third-party analysis."""

from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go

from workbench.analysis import Analysis, Inputs
from workbench.models.adapters import as_matrix
from workbench.results import Config, Result
from workbench.spectra import batched_singular_values, effective_rank
from workbench.validation import Bool


@dataclass(frozen=True)
class WeightNormsConfig(Config):
    kind = "weight_norms_config"
    layer_only: bool = True  # skip W_E / W_U (the two big vocabulary matrices)

    constraints = {"layer_only": Bool()}  # one entry per field: Config.validate checks them all


@dataclass(frozen=True)
class WeightNormsResult(Result):
    kind = "weight_norms"
    title = "Weight norms"
    matrix: list[str]
    frobenius: list[float]
    erank: list[float]

    def plot(self) -> go.Figure:
        return go.Figure(go.Bar(x=self.matrix, y=self.erank, name="effective rank"))

    def table(self):
        return ["matrix", "‖W‖_F", "erank"], [list(row) for row in zip(self.matrix, self.frobenius, self.erank)]

    def summary(self) -> str:
        return f"{len(self.matrix)} matrices; effective rank {min(self.erank):.1f}–{max(self.erank):.1f}."


def compute(inputs: Inputs, config: WeightNormsConfig) -> WeightNormsResult:
    kept = [(f"{kind}.{layer}", as_matrix(kind, w.detach())) for kind, layer, w in inputs.weights  # heads concatenated
            if layer is not None or not config.layer_only]
    spectra = batched_singular_values([w for _, w in kept])
    return WeightNormsResult(matrix=[name for name, _ in kept],
                             frobenius=[float(s.square().sum().sqrt()) for s in spectra],
                             erank=[float(effective_rank(s)) for s in spectra])


ANALYSIS = Analysis(name="weight_norms", description="Frobenius norm and effective rank of every weight matrix",
                    config=WeightNormsConfig, result=WeightNormsResult, compute=compute, needs_weights=True)
