"""``feature_stats``: what each SAE feature responds to and what it does, streamed over a prompt set.

Per feature, over every token of ``texts`` (BOS and padding excluded): its density (share of tokens where it fires,
activation > 0), mean activation when firing, maximum, a histogram of its non-zero activations, the ``k`` contexts
where it fired most (the token, ``window`` tokens either side, and the feature's activation on each), and its direct
effect on the logits (the tokens its decoder direction promotes and suppresses through the final norm and ``W_U``,
:func:`workbench.intervene.direct_logits.direction_logits`). This is what Neuronpedia and SAEDashboard show for a
feature; their top-activating examples are likewise the highest activations over a token dataset.

Memory is flat in the number of tokens: each batch's ``[tokens, d_sae]`` activations are folded into running counts
(density, sums, maxima, histogram counts on fixed log-spaced bins) and into a bounded top-k per feature (the union of
the kept ``k`` and the batch's own top ``k``, cut back to ``k`` — a heap of size ``k`` per feature, done for all
features at once with ``topk``), then dropped. The forward stops at the SAE's site (nothing downstream is computed).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from workbench.capture import tokens as tok
from workbench.capture.hooks import StopForward, hook_user, hooks_attached, stoppable
from workbench.errors import config_error
from workbench.intervene.direct_logits import direction_logits
from workbench.models.load import load_model
from workbench.models.loaded import LoadedModel
from workbench.progress import bar as progress_bar
from workbench.sae.feature_result import FeatureStats
from workbench.sae.loading import load_sae, resolve_sae_site
from workbench.sae.training import TrainedSAE
from workbench.validation import check_bool, check_int, check_number

# Histogram bins: log10 of the activation, 10 per decade from 1e-3 to 1e4 (values outside land in the end bins).
HIST_LOW, HIST_HIGH, HIST_PER_DECADE = -3.0, 4.0, 10
_ENCODE_CHUNK = 4096


@dataclass
class _Running:
    """The streamed state: running counts per feature and the bounded top-k contexts."""

    k: int
    window: int
    n_features: int
    device: torch.device

    def __post_init__(self) -> None:
        f, k, w, dev = self.n_features, self.k, 2 * self.window + 1, self.device
        n_bins = int((HIST_HIGH - HIST_LOW) * HIST_PER_DECADE)
        self.edges = torch.linspace(HIST_LOW, HIST_HIGH, n_bins + 1, dtype=torch.float64)
        self.inner = self.edges[1:-1].to(dev, torch.float32)
        self.n_tokens = 0
        self.fired = torch.zeros(f, dtype=torch.long, device=dev)
        self.total = torch.zeros(f, dtype=torch.float64, device=dev)
        self.max = torch.zeros(f, dtype=torch.float32, device=dev)
        self.hist = torch.zeros(f * n_bins, dtype=torch.long, device=dev)
        self.top_value = torch.zeros(f, k, dtype=torch.float32, device=dev)
        self.top_text = torch.full((f, k), -1, dtype=torch.long, device=dev)
        self.top_pos = torch.full((f, k), -1, dtype=torch.long, device=dev)
        self.top_tokens = torch.full((f, k, w), -1, dtype=torch.long, device=dev)
        self.top_acts = torch.zeros(f, k, w, dtype=torch.float32, device=dev)

    @property
    def n_bins(self) -> int:
        return len(self.edges) - 1

    def update(self, acts: torch.Tensor, batch: tok.Batch) -> None:
        """``acts`` ``[B, T, F]`` of one batch (rows outside ``batch.rows`` already zero)."""
        b_size, t_size, f = acts.shape
        keep = batch.rows.to(acts.device)
        self.n_tokens += int(keep.sum())
        flat = acts.reshape(-1, f)
        fired = flat > 0
        self.fired += fired.sum(0)
        self.total += flat.sum(0, dtype=torch.float64)
        self.max = torch.maximum(self.max, flat.max(0).values)
        rows, feats = fired.nonzero(as_tuple=True)
        if len(rows):
            bins = torch.bucketize(flat[rows, feats].log10(), self.inner)
            self.hist.index_add_(0, feats * self.n_bins + bins, torch.ones_like(bins))
        self._merge_top(acts, batch)

    def _merge_top(self, acts: torch.Tensor, batch: tok.Batch) -> None:
        """Fold the batch's top contexts into the kept ``k`` per feature. Only features whose batch maximum beats
        their current ``k``-th value can change, so only those are merged (after the first batches, few are)."""
        b_size, t_size, f = acts.shape
        w, dev = self.window, acts.device
        kk = min(self.k, b_size * t_size)
        values, index = acts.reshape(-1, f).topk(kk, dim=0)  # [kk, F]
        changed = (values[0] > self.top_value[:, -1]).nonzero().flatten()
        if not len(changed):
            return
        values, index = values[:, changed].T, index[:, changed].T  # [C, kk]
        row, pos = index // t_size, index % t_size
        at = pos[..., None] + torch.arange(-w, w + 1, device=dev)  # [C, kk, 2w+1]
        inside = (at >= 0) & (at < batch.lengths.to(dev)[row][..., None])
        clamped = at.clamp(0, t_size - 1)
        tokens = torch.where(inside, batch.tokens.to(dev)[row[..., None], clamped], -1)
        window_acts = torch.where(inside, acts[row[..., None], clamped, changed[:, None, None]], 0.0)
        texts = torch.tensor(batch.text_index, device=dev)[row]
        merged_value = torch.cat([self.top_value[changed], values], 1)
        best = merged_value.topk(self.k, dim=1).indices  # [C, k]

        def pick(kept: torch.Tensor, new: torch.Tensor) -> None:
            both = torch.cat([kept[changed], new], 1)
            index_ = best.reshape(best.shape + (1,) * (both.ndim - 2)).expand(-1, -1, *both.shape[2:])
            kept[changed] = both.gather(1, index_)

        self.top_value[changed] = merged_value.gather(1, best)
        pick(self.top_text, texts)
        pick(self.top_pos, pos)
        pick(self.top_tokens, tokens)
        pick(self.top_acts, window_acts)


def _as_sae(call: str, sae: Any, device: torch.device):
    from sae_lens import SAE

    if isinstance(sae, (str, Path)):
        return load_sae(sae, device=device)
    if isinstance(sae, TrainedSAE):
        return sae.sae
    if isinstance(sae, SAE):
        return sae
    raise config_error(call, "sae", "a TrainedSAE, a sae_lens SAE or the folder of one saved by sae-lens",
                       type(sae).__name__)


def _check(call: str, k: Any, window: Any, n_logits: Any, batch_size: Any, max_length: Any) -> None:
    check_int(call, "k", k, low=1, high=1000)
    check_int(call, "window", window, low=0, high=64)
    check_int(call, "n_logits", n_logits, low=1, high=100)
    check_int(call, "batch_size", batch_size, low=1)
    if max_length is not None:
        check_int(call, "max_length", max_length, low=2)


@torch.inference_mode()
def _encode(sae: Any, x: torch.Tensor) -> torch.Tensor:
    out = [sae.encode(chunk.to(device=sae.device, dtype=sae.dtype)) for chunk in x.split(_ENCODE_CHUNK)]
    return torch.cat(out).float()


@hook_user("sae.feature_stats", exercise=lambda lm: _exercise_feature_stats(lm))
def feature_stats(lm: LoadedModel | str, sae: Any, texts: str | Sequence[str], *, site: str | None = None,
                  k: int = 20, window: int = 8, n_logits: int = 10, batch_size: int = 8, max_length: int | None = 128,
                  max_tokens: int | None = None, exclude_bos: bool = True, min_activation: float = 0.0,
                  progress: bool = False) -> FeatureStats:
    """Stream ``texts`` through ``lm`` up to ``site`` and summarise every feature of ``sae`` there.

    ``sae``: a :class:`~workbench.sae.TrainedSAE`, a sae-lens ``SAE``, or the folder of one saved by sae-lens.
    ``site``: the TransformerLens hook (default: the hook the SAE records); the SAE's ``d_in`` must equal the site's
    width and its recorded hook must equal ``site`` (ConfigError otherwise, before any forward over ``texts``).
    ``k`` contexts per feature are kept, each with ``window`` tokens either side; ``n_logits`` promoted and
    suppressed tokens per feature. ``min_activation``: activations at or below it do not count as firing (default
    0: any positive activation). The activations are computed on the SAE's device; the forward on the model's.

    Example: ``stats = feature_stats(lm, sae, default_prompts(), site="blocks.15.hook_resid_post", k=20)``"""
    call = "feature_stats"
    started = time.perf_counter()
    lm = load_model(lm)
    _check(call, k, window, n_logits, batch_size, max_length)
    threshold = check_number(call, "min_activation", min_activation, low=0)
    check_bool(call, "exclude_bos", exclude_bos)
    model = _as_sae(call, sae, lm.device)
    texts = tok.check_texts(texts)
    site = resolve_sae_site(lm, model, site, call=call)
    tokenized = tok.tokenize(lm, texts, max_length=max_length, max_tokens=max_tokens)
    batches = list(tok.batches(tokenized, batch_size, tok.pad_id(lm), "all", exclude_bos))
    state = _Running(k=k, window=window, n_features=int(model.cfg.d_sae), device=torch.device(model.device))
    _stream(lm, model, site, batches, state, threshold, progress, tokenized.n_tokens)
    logits = _logit_effects(lm, model, site, n_logits)
    return _result(lm, model, site, sae, tokenized, state, logits, time.perf_counter() - started, threshold)


_RESIDUAL = re.compile(r"(blocks\.\d+\.hook_(resid_pre|resid_mid|resid_post|attn_out|mlp_out)|hook_embed|"
                       r"ln_final\.hook_in|unembed\.hook_in)")
_WRITERS = {re.compile(r"blocks\.(\d+)\.mlp\.hook_post"): "W_out", re.compile(r"blocks\.(\d+)\.attn\.hook_z"): "W_O"}


def residual_directions(lm: LoadedModel, site: str, directions: torch.Tensor) -> torch.Tensor | None:
    """``directions`` written at ``site`` as residual-stream directions: as they are at a residual site
    (``hook_resid_*``, ``hook_attn_out``, ``hook_mlp_out``, ``hook_embed``), through ``W_out`` from the MLP neurons
    (``mlp.hook_post``) or ``W_O`` from the heads' outputs (``attn.hook_z``, heads concatenated); None elsewhere
    (e.g. queries or keys write nothing to the residual stream directly).

    Example: ``residual_directions(lm, "blocks.3.mlp.hook_post", sae.W_dec)``"""
    from workbench.models.adapters import as_matrix

    if _RESIDUAL.fullmatch(site):
        return directions
    for pattern, kind in _WRITERS.items():
        match = pattern.fullmatch(site)
        if match:
            w = as_matrix(kind, lm.weight(kind, int(match.group(1)))).detach()
            if w.shape[0] == directions.shape[1]:
                return directions.to(w.device, w.dtype) @ w
    return None


def _logit_effects(lm: LoadedModel, sae: Any, site: str, n_logits: int) -> dict[str, torch.Tensor] | None:
    directions = residual_directions(lm, site, sae.W_dec.detach())
    if directions is None or directions.shape[1] != lm.d_model:
        return None
    return direction_logits(lm, directions, top=n_logits)


def _stream(lm: LoadedModel, sae: Any, site: str, batches: list[tok.Batch], state: _Running, threshold: float,
            progress: bool, n_tokens: int) -> None:
    current: dict[str, tok.Batch] = {}
    d_in = int(sae.cfg.d_in)

    def hook(x: torch.Tensor, hook: object = None) -> None:
        batch = current["batch"]
        b_size, t_size = x.shape[:2]
        acts = _encode(sae, x.reshape(b_size * t_size, d_in)).reshape(b_size, t_size, -1).to(state.device)
        acts = torch.where(acts > threshold, acts, 0.0) * batch.rows.to(acts.device)[..., None]
        state.update(acts, batch)
        raise StopForward

    points = lm.hook_points()
    bar = progress_bar(total=n_tokens, desc="Feature statistics", unit="tok", disable=not progress)
    try:
        with hooks_attached(points, {site: hook}), torch.inference_mode():
            for batch in batches:
                current["batch"] = batch
                with stoppable():
                    lm.model(batch.tokens.to(lm.device))
                bar.update(int(batch.lengths.sum()))
    finally:
        bar.close()


def _result(lm, sae, site, given, tokenized, state: _Running, logits, seconds: float, threshold: float
            ) -> FeatureStats:
    fired = state.fired.cpu()
    n = max(state.n_tokens, 1)
    order = state.top_value.argsort(dim=1, descending=True, stable=True)
    kept = state.top_value.gather(1, order).cpu()
    live = (kept > 0).sum(1).tolist()
    kept, texts = kept.tolist(), state.top_text.gather(1, order).tolist()
    positions = state.top_pos.gather(1, order).tolist()
    windows = state.top_tokens.gather(1, order[..., None].expand_as(state.top_tokens)).tolist()
    window_acts = _rounded(state.top_acts.gather(1, order[..., None].expand_as(state.top_acts))).tolist()
    contexts = [[{"value": _round(kept[f][j]), "text": texts[f][j], "position": positions[f][j],
                  "tokens": windows[f][j], "acts": window_acts[f][j]} for j in range(live[f])]
                for f in range(state.n_features)]
    used = {i for rows in contexts for c in rows for i in c["tokens"] if i >= 0}
    if logits is None:  # a site that writes nothing to the residual stream directly: no logit effect to show
        empty = torch.zeros(state.n_features, 0)
        logits = {"promoted_ids": empty.long(), "promoted": empty, "suppressed_ids": empty.long(), "suppressed": empty}
    for name in ("promoted_ids", "suppressed_ids"):
        used.update(int(i) for i in logits[name].flatten().tolist())
    hist = state.hist.reshape(state.n_features, state.n_bins).cpu()
    return FeatureStats(
        model=lm.name, site=site, sae=_describe(sae, given), n_texts=len(tokenized.ids), n_tokens=state.n_tokens,
        k=state.k, window=state.window, min_activation=threshold,
        density=[int(c) / n for c in fired.tolist()],
        mean_active=[_round(t / c) if c else 0.0 for t, c in zip(state.total.cpu().tolist(), fired.tolist())],
        max_activation=[_round(v) for v in state.max.cpu().tolist()],
        hist_edges=[round(float(e), 6) for e in state.edges.tolist()],
        hist=[_sparse(row) for row in hist.tolist()],
        contexts=contexts,
        promoted=[[[int(i), _round(v)] for i, v in zip(ids, vals)]
                  for ids, vals in zip(logits["promoted_ids"].tolist(), logits["promoted"].tolist())],
        suppressed=[[[int(i), _round(v)] for i, v in zip(ids, vals)]
                    for ids, vals in zip(logits["suppressed_ids"].tolist(), logits["suppressed"].tolist())],
        vocab=_vocab(lm, sorted(used)),
        seconds=round(seconds, 3),
    )


def _round(x: Any) -> float:
    value = float(x)
    return float(f"{value:.5g}") if math.isfinite(value) else value


def _rounded(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to 5 significant digits, in float64 so that each value's ``repr`` is short (JSON size)."""
    x = x.double()
    scale = torch.pow(10.0, 4 - torch.floor(torch.log10(x.abs().clamp_min(1e-30))))
    return torch.where(x == 0, x, torch.round(x * scale) / scale)


def _sparse(counts: list[int]) -> dict[str, int]:
    """Histogram counts as ``{bin: count}`` for the non-empty bins (most bins of most features are empty)."""
    return {str(i): c for i, c in enumerate(counts) if c}


def _vocab(lm: LoadedModel, ids: list[int]) -> dict[str, str]:
    """Each token id's own text (decoded alone, as a context shows it)."""
    return dict(zip(map(str, ids), lm.tokenizer.batch_decode([[i] for i in ids]), strict=True))


def _describe(sae: Any, given: Any) -> dict[str, Any]:
    cfg = sae.cfg
    out: dict[str, Any] = {"architecture": cfg.architecture(), "d_in": int(cfg.d_in), "d_sae": int(cfg.d_sae)}
    if isinstance(given, (str, Path)):
        out["path"] = str(given)
    elif isinstance(given, TrainedSAE):
        out |= {"fvu": given.fvu, "l0": given.l0, "path": None if given.path is None else str(given.path)}
    return out


def _exercise_feature_stats(lm: LoadedModel) -> None:
    """Feature statistics of a briefly trained SAE (the hook-fault tests' call of :func:`feature_stats`)."""
    from workbench.sae.training import train_sae

    where = "blocks.0.hook_resid_post"
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(64, lm.model.cfg.d_model, generator=generator)
    sae = train_sae(z, d_sae=8, k=2, epochs=1, hook_name=where)
    feature_stats(lm, sae, ["ab cd"], site=where, k=2, window=2, n_logits=2)
