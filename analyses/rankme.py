"""RankMe of per-prompt embeddings across layers, for several prompt sets side by side, and of embedding files.

RankMe: Garrido, Balestriero, Najman & LeCun, "RankMe: Assessing the Downstream Performance of Pretrained
Self-Supervised Representations by Their Rank" (ICML 2023), eq. (1): RankMe(Z) = exp(−Σ_k p_k log p_k),
p_k = σ_k(Z)/‖σ(Z)‖₁ + ε, ε = 1e-7, on the singular values of the ``[N, d]`` embedding matrix Z (one row per sample,
*not* centred in the paper; ``center`` exposes it). For a language model a prompt's embedding at a layer is its
last-token residual (what a next-token head reads) or its mean-pooled residual (a sentence embedding); both are
reported. RankMe ≤ min(N, d): sets of different sizes are not comparable, so by default every set is subsampled
(seeded) to the size of the smallest (``equal_size``).

Embeddings of prompts that are among the run's texts (the report's prompts; the bundled categories are subsets of
the bundled default prompts) come from the run's shared capture, which keeps per-prompt vectors at this analysis'
sites (``Analysis.per_prompt_sites``), instead of a second forward over them; other prompts are captured here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from workbench.analysis import Analysis, Inputs
from workbench.capture import capture
from workbench.capture import tokens as tok
from workbench.capture.hooks import REPRESENTATION_KINDS, site
from workbench.deprecation import moved
from workbench.errors import ConfigError, config_error
from workbench.matrix_files import read_matrices
from workbench.prompts import categories, default_prompts, read_prompts
from workbench.results import PALETTE, Config, Result
from workbench.spectra import effective_rank, rankme
from workbench.spectra.embeddings import embedding_spectra
from workbench.validation import SEED, Bool, Choice, DictOf, Int, ListOf, Number, Optional, Str

POOLINGS = ("last", "mean")
DEFAULT_SETS = {"report prompts": "report", "prose": "bundled:prose", "code": "bundled:code",
                "maths": "bundled:maths", "dialogue": "bundled:dialogue"}


# RankMe of embedding matrices and files is library code now (workbench.spectra.embeddings); the old names still
# import from here for one release, with a DeprecationWarning.
__getattr__ = moved(__name__, {"rankme_of": "workbench.spectra.embeddings",
                               "rankme_of_file": "workbench.spectra.embeddings"})


def _valid_source(source: str) -> bool:
    if source in ("report", "bundled"):
        return True
    if source.startswith("bundled:"):
        return source.removeprefix("bundled:") in categories()
    return source.endswith((".txt", ".jsonl"))


@dataclass(frozen=True)
class RankMeConfig(Config):
    """``prompt_sets``: label → source, where a source is ``"report"`` (the run's prompts), ``"bundled"`` (all
    bundled passages), ``"bundled:<category>"`` (see :func:`workbench.prompts.categories`) or a .txt/.jsonl path.
    ``embedding_files``: label → .npy/.pt/.safetensors path, analysed as they are. ``kind``: the per-layer site
    (see ``workbench.capture.hooks.REPRESENTATION_KINDS``). ``equal_size``: subsample every set to the smallest one's size
    (seeded by ``seed``). ``max_length``: tokens kept per prompt.

    Example: ``run_analysis(lm, "rankme", RankMeConfig(prompt_sets={"code": "bundled:code"}), texts=texts)``"""

    kind = "rankme_config"
    prompt_sets: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_SETS))
    embedding_files: dict[str, str] | None = None
    site_kind: str = "resid_post"
    poolings: list[str] = field(default_factory=lambda: list(POOLINGS))
    eps: float = 1e-7
    center: bool = False
    equal_size: bool = True
    max_length: int = 256
    batch_size: int = 8
    seed: int = 0

    constraints = {
        "prompt_sets": DictOf(Str(nonempty=True), Str().where(_valid_source, "a prompt source"), allowed_text=lambda: (
            'a dict label → "report" | "bundled" | "bundled:<category>" | a .txt/.jsonl path '
            f"(categories: {categories()})")),
        "embedding_files": Optional(DictOf(Str(nonempty=True), Str().where(
            lambda v: v.endswith((".npy", ".pt", ".safetensors")), "a matrix file"),
            allowed_text="a dict label → .npy/.pt/.safetensors path")),
        "site_kind": Choice(REPRESENTATION_KINDS), "poolings": ListOf(Choice(POOLINGS), nonempty=True, distinct=True),
        "eps": Number(low=0), "center": Bool(), "equal_size": Bool(), "max_length": Int(low=1),
        "batch_size": Int(low=1), "seed": SEED}

    def validate(self) -> None:
        super().validate()
        if not self.prompt_sets and not self.embedding_files:
            raise config_error("RankMeConfig", "prompt_sets", "at least one prompt set or embedding file", {})


@dataclass(frozen=True)
class RankMeResult(Result):
    """Column-wise, one row per (source, pooling, matrix). ``pooling`` is ``"last"``/``"mean"`` for prompt sets and
    ``"file"`` for embedding files; ``layer`` is None for files. ``bound`` = min(n_rows, dim), RankMe's ceiling.

    Example: ``rm = run_analysis(lm, "rankme", texts=texts); rm.plot().show()``"""

    kind = "rankme"
    title = "RankMe of per-prompt embeddings across layers"
    model: str
    eps: float
    center: bool
    site_kind: str
    set_sizes: dict[str, int]  # prompts used per set (after equal_size subsampling)
    source: list[str]
    pooling: list[str]
    layer: list[int | None]
    matrix: list[str]
    n_rows: list[int]
    dim: list[int]
    rankme: list[float]
    erank: list[float]
    bound: list[int]

    def rows(self, source: str, pooling: str) -> list[int]:
        """Row indices of one (source, pooling), in matrix order.

        Example: ``idx = rm.rows("report", "last")``"""
        return [i for i in range(len(self.source)) if self.source[i] == source and self.pooling[i] == pooling]

    def sets(self) -> list[str]:
        """Labels of the prompt sets, in config order.

        Example: ``rm.sets()  # the prompt-set labels, e.g. ["report"]``"""
        return list(self.set_sizes)

    def files(self) -> list[str]:
        """Labels of the embedding files analysed (rows with pooling ``"file"``).

        Example: ``rm.files()  # labels of the embedding files analysed``"""
        return list(dict.fromkeys(s for s, p in zip(self.source, self.pooling, strict=True) if p == "file"))

    def plot(self) -> go.Figure:
        poolings = [p for p in POOLINGS if any(q == p for q in self.pooling)]
        titles = {"last": "last token", "mean": "mean-pooled"}
        fig = make_subplots(rows=1, cols=max(len(poolings), 1), subplot_titles=[titles[p] for p in poolings])
        for col, pooling in enumerate(poolings, 1):
            for k, name in enumerate(self.sets()):
                idx = self.rows(name, pooling)
                fig.add_trace(go.Scatter(
                    x=[self.layer[i] for i in idx], y=[self.rankme[i] for i in idx], mode="lines+markers",
                    name=f"{name} (N={self.set_sizes[name]})", legendgroup=name, showlegend=col == 1,
                    line={"color": PALETTE[k % len(PALETTE)]}), row=1, col=col)
        fig.update_xaxes(title_text="layer")
        fig.update_yaxes(title_text="RankMe", col=1)
        bound = min((self.bound[i] for i in range(len(self.bound)) if self.pooling[i] != "file"), default=None)
        fig.update_layout(title=f"{self.model}: RankMe of {self.site_kind} per layer (ε={self.eps:g}, "
                                f"{'centred' if self.center else 'uncentred'}; ceiling min(N, d) = {bound})",
                          height=450)
        return fig

    def plot_files(self) -> go.Figure:
        """RankMe of each embedding file, per matrix in the file.

        Example: ``rm.plot_files().show()``"""
        fig = go.Figure()
        for name in self.files():
            idx = self.rows(name, "file")
            fig.add_trace(go.Scatter(x=[self.matrix[i] for i in idx], y=[self.rankme[i] for i in idx],
                                     mode="lines+markers", name=name))
        fig.update_layout(title="RankMe of embedding files (per matrix in the file)", xaxis_title="matrix",
                          yaxis_title="RankMe", height=400)
        return fig

    def figures(self) -> list[go.Figure]:
        figs = [self.plot()] if self.sets() else []
        return figs + ([self.plot_files()] if self.files() else [])

    def table(self):
        header = ["source", "pooling", "matrix", "N", "dim", "RankMe", "effective rank", "ceiling min(N, d)"]
        return header, [[self.source[i], self.pooling[i], self.matrix[i], self.n_rows[i], self.dim[i], self.rankme[i],
                         self.erank[i], self.bound[i]] for i in range(len(self.source))]

    def metrics(self) -> list[tuple[str, int | None, str | None, float]]:
        """One key per row: the table's rows share a matrix (``blocks.N.hook_resid_post``) across prompt sets and
        poolings, so the site is ``<matrix>/<source>/<pooling>`` (``.../<file label>/file`` for embedding files);
        the metrics are the table's numeric columns, the layer is the row's (None for files)."""
        names = ("N", "dim", "RankMe", "effective rank", "ceiling min(N, d)")
        return [(name, self.layer[i], f"{self.matrix[i]}/{self.source[i]}/{self.pooling[i]}", float(value))
                for i in range(len(self.source))
                for name, value in zip(names, (self.n_rows[i], self.dim[i], self.rankme[i], self.erank[i],
                                               self.bound[i]), strict=True)]

    def summary(self) -> str:
        parts = []
        for pooling in POOLINGS:
            means = {name: sum(self.rankme[i] for i in idx) / len(idx)
                     for name in self.sets() if (idx := self.rows(name, pooling))}
            if not means:
                continue
            order = sorted(means, key=means.get, reverse=True)
            parts.append(f"{pooling} token{'s' if pooling == 'mean' else ''}: mean RankMe over layers "
                         + ", ".join(f"{n} {means[n]:.1f}" for n in order))
        sizes = set(self.set_sizes.values())
        if len(sizes) == 1 and sizes:
            n = sizes.pop()
            parts.append(f"every set has N={n} prompts, so RankMe cannot exceed {n}: compare sets, not absolute values")
        elif sizes:
            parts.append("the sets differ in size (equal_size=False) and RankMe is bounded by N: compare with care")
        for name in self.files():
            idx = self.rows(name, "file")
            parts.append(f"file {name}: RankMe " + ", ".join(f"{self.matrix[i]} {self.rankme[i]:.1f}" for i in idx[:6])
                         + (" ..." if len(idx) > 6 else ""))
        return "; ".join(parts) + "."


def _texts_for(source: str, inputs: Inputs) -> list[str]:
    if source == "report":
        if not inputs.texts:
            raise config_error("rankme", "prompt_sets", 'no "report" source when the run has no texts',
                               "report")
        return list(inputs.texts)
    if source == "bundled":
        return default_prompts()
    if source.startswith("bundled:"):
        return default_prompts(source.removeprefix("bundled:"))
    return read_prompts(source)


def _subsample(sets: dict[str, list[str]], n: int, seed: int) -> dict[str, list[str]]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, texts in sets.items():
        keep = sorted(torch.randperm(len(texts), generator=gen)[:n].tolist())
        out[name] = [texts[i] for i in keep]
    return out


def compute(inputs: Inputs, config: RankMeConfig) -> RankMeResult:
    """RankMe and effective rank of pooled (last-token / mean) representations per layer for each prompt set, and of
    every embedding file.

    Example: ``compute(inputs, RankMeConfig(prompt_sets={"code": "bundled:code"}))  # what run_analysis calls``"""
    lm = inputs.model
    sets = {name: _texts_for(source, inputs) for name, source in config.prompt_sets.items()}
    for name, texts in sets.items():
        if len(texts) < 2:
            raise config_error("rankme", f"prompt_sets[{name!r}]", "a set of at least 2 prompts", f"{len(texts)}")
    if config.equal_size and sets:
        sets = _subsample(sets, min(map(len, sets.values())), config.seed)
    files = {name: read_matrices(path) for name, path in (config.embedding_files or {}).items()}
    cols: dict[str, list] = {k: [] for k in ("source", "pooling", "layer", "matrix", "n_rows", "dim")}
    mats: list[torch.Tensor] = []
    if sets:
        sites = _sites(config, inputs.facts)
        max_length = min(config.max_length, inputs.facts.n_ctx)
        shared = _shared_index(inputs, sites, max_length)
        for name, texts in sets.items():
            if shared is not None and all(t in shared for t in texts):  # the run's capture already holds them
                idx = torch.tensor([shared[t] for t in texts])
                rows = {hook: (inputs.capture[hook].last[idx], inputs.capture[hook].mean_pooled[idx]) for hook in sites}
            else:
                cap = capture(lm, texts, sites=sites, keep="per_prompt", batch_size=config.batch_size,
                              max_length=max_length, progress=inputs.progress)
                rows = {hook: (cap[hook].last, cap[hook].mean_pooled) for hook in sites}
            for pooling in config.poolings:
                for layer, hook in enumerate(sites):
                    _add(cols, mats, name, pooling, layer, hook, rows[hook][0 if pooling == "last" else 1])
    for name, named in files.items():
        for key, z in named.items():
            _add(cols, mats, name, "file", None, key, z)
    svals = embedding_spectra(mats, center=config.center, call="rankme")
    return RankMeResult(
        model=inputs.model_name if sets else "(embedding files)", eps=config.eps, center=config.center,
        site_kind=config.site_kind, set_sizes={n: len(t) for n, t in sets.items()}, **cols,
        rankme=[float(rankme(s, eps=config.eps)) for s in svals],
        erank=[float(effective_rank(s)) for s in svals],
        bound=[min(r, d) for r, d in zip(cols["n_rows"], cols["dim"], strict=True)])


def _sites(config: RankMeConfig, facts) -> list[str]:
    return [site(config.site_kind, layer) for layer in range(facts.n_layers)] if config.prompt_sets else []


def _shared_index(inputs: Inputs, sites: list[str], max_length: int) -> dict[str, int] | None:
    """Where each of the run's texts sits in the run's shared capture, for the texts whose per-prompt vectors there
    are what this analysis' own capture would give (kept at every site, every text captured whole, at most
    ``max_length`` tokens, the same BOS handling); None when the shared capture cannot serve any. The vectors then
    differ from an own capture's only by float round-off (other batch neighbours, other padding)."""
    cap, lm = inputs.capture, inputs.model
    if cap is None or not inputs.texts or cap.positions != "all" or not cap.exclude_bos or \
            any(s not in cap.stats or cap[s].last is None for s in sites):
        return None
    whole = tok.tokenize(lm, list(inputs.texts), max_length=None, max_tokens=None)
    if len(whole.ids) != cap.n_texts or whole.n_tokens != cap.n_tokens or whole.has_bos != cap.has_bos:
        return None  # cut by max_tokens: the capture's rows are not the texts' own
    bos = getattr(lm.tokenizer, "bos_token_id", None)
    # without a BOS on every text, one that starts with the BOS token would make a set of such texts skip its first
    # token in the mean (capture's has_bos is decided per run): those texts are captured on their own
    fits = [len(row) <= max_length and (whole.has_bos or bos is None or int(row[0]) != bos) for row in whole.ids]
    return {text: i for i, text in reversed(list(enumerate(inputs.texts))) if fits[i]}


def _add(cols: dict[str, list], mats: list[torch.Tensor], source: str, pooling: str, layer: int | None, matrix: str,
         z: torch.Tensor) -> None:
    if z is None:
        raise ConfigError(f"rankme: no per-prompt rows for {matrix}")
    cols["source"].append(source)
    cols["pooling"].append(pooling)
    cols["layer"].append(layer)
    cols["matrix"].append(matrix)
    cols["n_rows"].append(int(z.shape[0]))
    cols["dim"].append(int(z.shape[1]))
    mats.append(z.float() if z.dtype in (torch.int32, torch.int64) else z)


ANALYSIS = Analysis(
    name="rankme",
    description="RankMe of per-prompt embeddings (last token, mean-pooled) per layer for several prompt sets",
    config=RankMeConfig, result=RankMeResult, compute=compute, needs_model=True, per_prompt_sites=_sites,
)
