"""Per-sample gradients of a model's linear maps and their spectra, accumulated over a (prompt, response) dataset —
the library half of the ``gradient_spectra`` analysis (Li et al. 2025, as MingLiiii/Gradient_Unified
``get_grad_vector_initial_try.py`` computes it; see :mod:`analyses.gradient_spectra` for the method and its options).

One sample per backward pass; the loss is the mean next-token cross-entropy over the response tokens; each
projection's gradient G is reduced to its nuclear norm, effective rank, Frobenius norm and leading singular values
before the next sample (``route="factor"``: from the T × T core of the hooked per-token factors,
:func:`workbench.spectra.gradients.gradient_spectrum`; ``"dense"``: the d × d gradient itself).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from workbench.capture.hooks import LINEAR_COMPONENTS, hook_user, hooks_attached, site
from workbench.errors import config_error, shape_error
from workbench.models.chat import DEFAULT_SYSTEM, sft_ids
from workbench.models.loaded import LoadedModel
from workbench.progress import bar as progress_bar
from workbench.spectra import batched_singular_values, effective_rank
from workbench.spectra.gradients import factor_r, gradient_spectrum

ATTENTION = ("W_Q", "W_K", "W_V", "W_O")
METRICS = ("nuclear", "erank", "frobenius")
ROUTES = ("factor", "dense")
NUCLEAR_FLOOR = 1e-12  # the reference's plotting scripts skip an S_list whose sum is below this (erank only)
COSINE_EPS = 1e-9  # compute_cosine_similarity_chunked: dot / (norm_i * norm_j + 1e-9)
# the TransformerBridge component (with hook_in / hook_out) of each weight kind, for the factor route (the table
# lives with the site names; this name stays for analyses.gradient_spectra's deprecated re-export)
COMPONENT = LINEAR_COMPONENTS



# ---------------------------------------------------------------------------------------------------------------
# Per-sample gradients and their spectra, per dataset
# ---------------------------------------------------------------------------------------------------------------

class _Running:
    """Float64 running sums of a tensor-valued statistic, element by element over the samples it was kept for: mean
    (0 where never kept, as the reference's plot) and sample standard deviation (ddof 1; 0 below two samples). The
    sums stay on the statistic's device: adding a sample reads nothing back to the host."""

    def __init__(self) -> None:
        self.n = self.total = self.squares = None

    def add(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> None:
        x = x.detach().to(torch.float64)
        w = torch.ones_like(x) if keep is None else keep.to(x.device, torch.float64)
        x = x * w
        if self.n is None:
            self.n, self.total, self.squares = w.clone(), x.clone(), x * x
        else:
            self.n, self.total, self.squares = self.n + w, self.total + x, self.squares + x * x

    def mean(self) -> torch.Tensor:
        return torch.where(self.n > 0, self.total / self.n.clamp_min(1), 0.0)

    def std(self) -> torch.Tensor:
        var = (self.squares - self.total * self.total / self.n.clamp_min(1)) / (self.n - 1).clamp_min(1)
        return torch.where(self.n > 1, var.clamp_min(0).sqrt(), 0.0)


@dataclass(frozen=True)
class DatasetGradients:
    """One dataset's averages. Tensors are ``[P, L]`` (projection × layer), ``top`` is ``[P, L, n_top]`` and
    ``cosine`` ``[P, L, L]``; ``*_std`` are standard deviations over samples; ``erank_n`` [P, L] how many samples
    the effective-rank average holds (the others had Σσ < 1e-12).

    Example: ``g: DatasetGradients = dataset_gradients(lm, [("What is 3 + 4?", "3 + 4 = 7.")]); g.n_samples, g.loss``"""

    projections: list[str]
    n_samples: int
    mean: dict[str, torch.Tensor]
    std: dict[str, torch.Tensor]
    top: torch.Tensor
    cosine: torch.Tensor
    loss: tuple[float, float]
    prompt_tokens: float
    response_tokens: float
    seconds: float
    erank_n: torch.Tensor
    route: str = "factor"


def sample_ids(lm: LoadedModel, prompt: str, response: str, *, max_length: int, chat_template: bool,
               system_prompt: str | None = DEFAULT_SYSTEM, where: str = "pairs[0]") -> tuple[torch.Tensor, int]:
    """``([1, T] ids, n_prompt)`` as the reference lays a sample out (:func:`~workbench.models.chat.sft_ids`).
    Raises a ShapeError naming ``where`` when no response token survives the cut to ``max_length``.

    Example: ``ids, n_prompt = sample_ids(lm, "What is 3 + 4?", "3 + 4 = 7.", max_length=2048, chat_template=True)``"""
    ids, n_prompt = sft_ids(lm, prompt, response, max_length=max_length, chat_template=chat_template,
                            system_prompt=system_prompt)
    if ids.shape[1] <= n_prompt or n_prompt < 1:
        raise shape_error("gradient_spectra", where, f"at least one response token within max_length={max_length} "
                          "after the prompt (the loss is on response tokens only)",
                          f"{n_prompt} prompt tokens, {ids.shape[1]} tokens in all")
    return ids, n_prompt


def response_loss(lm: LoadedModel, ids: torch.Tensor, n_prompt: int) -> torch.Tensor:
    """Mean next-token cross-entropy over the response positions (the prompt's labels masked, as -100 does).

    Only the positions that predict a response token are unembedded: Hugging Face's ``logits_to_keep`` (passed
    through the bridge) keeps the last T - n_prompt + 1 rows, so the prompt's rows of the 49k- or 262k-wide logits
    are neither computed nor back-propagated through (the same loss as slicing the full logits; a model that ignores
    the argument returns every row and the slice below still picks the right ones).

    Example: ``response_loss(lm, ids, n_prompt).backward()``"""
    keep = ids.shape[1] - n_prompt + 1
    logits = lm.model(ids, logits_to_keep=keep) if hasattr(lm.model, "original_model") else lm.model(ids)
    return F.cross_entropy(logits[0, -keep:-1].float(), ids[0, n_prompt:])


def factor_sites(lm: LoadedModel, projections: Sequence[str]) -> list[tuple[str, str]]:
    """``(input hook, output hook)`` of every (layer, projection), layer-major: the bridge component's
    ``hook_in``/``hook_out`` (the Linear's x_t and y_t). ConfigError when the model has no such hooks.

    Example: ``factor_sites(lm, ["W_Q", "W_V"])[0]  # (input hook, output hook) of layer 0's W_Q``"""
    points = lm.hook_points()
    sites = [(site(f"{kind}_in", layer), site(f"{kind}_out", layer))
             for layer in range(lm.facts.n_layers) for kind in projections]
    missing = [name for pair in sites for name in pair if name not in points]
    if missing:
        raise config_error("gradient_spectra", "route", "'dense' for a model without per-projection hook_in/hook_out "
                           f"(TransformerBridge names; missing e.g. {missing[0]!r})", "factor")
    return sites


@hook_user("gradients", exercise=lambda lm: dataset_gradients(lm, [("ab", "cd")], chat_template=False, max_length=16))
def dataset_gradients(lm: LoadedModel, pairs: Sequence[tuple[str, str]], *, projections: Sequence[str] = ATTENTION,
                      max_length: int = 2048, chat_template: bool = True, system_prompt: str | None = DEFAULT_SYSTEM,
                      n_top: int = 8, route: str = "factor", name: str = "dataset",
                      progress: bool = False) -> DatasetGradients:
    """Per-sample gradient spectra of ``projections`` at every layer over ``pairs``, averaged (see module doc).

    Example: ``dataset_gradients(lm, [("What is 3 + 4?", "3 + 4 = 7.")], projections=["W_Q"], max_length=256)``"""
    if not pairs:
        raise config_error("gradient_spectra", f"datasets[{name!r}]", "at least one (prompt, response) pair", [])
    if route not in ROUTES:
        raise config_error("gradient_spectra", "route", f"one of {list(ROUTES)}", route)
    started = time.perf_counter()
    params = lm.parameters(list(projections))
    sites = factor_sites(lm, projections) if route == "factor" else []
    n_layers = lm.facts.n_layers
    stats = {m: _Running() for m in METRICS}
    top, cosine, losses = _Running(), _Running(), []
    n_prompt_total = n_resp_total = 0
    encoded = [sample_ids(lm, p, r, max_length=max_length, chat_template=chat_template, system_prompt=system_prompt,
                          where=f"{name}[{i}]") for i, (p, r) in enumerate(pairs)]  # all checked before any backward
    saved = [(p, p.requires_grad) for p in lm.model.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        for wp in params:
            wp.param.requires_grad_(True)
        for ids, n_prompt in progress_bar(encoded, desc=f"gradients: {name}", disable=not progress, leave=False):
            loss, mats, factors = _sample_gradients(lm, params, sites, ids, n_prompt)
            sample = _sample_spectra(mats, factors, len(projections), n_layers, n_top)
            keep = sample["nuclear"] >= NUCLEAR_FLOOR
            for m in METRICS:
                stats[m].add(sample[m], keep if m == "erank" else None)
            top.add(sample["top"])
            cosine.add(sample["cosine"])
            losses.append(loss.detach().double())  # read back once, after the loop
            n_prompt_total += n_prompt
            n_resp_total += ids.shape[1] - n_prompt
            del mats, factors
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
    n = len(encoded)
    losses = torch.stack(losses).tolist()
    mean_loss = sum(losses) / n
    sd_loss = math.sqrt(sum((x - mean_loss) ** 2 for x in losses) / (n - 1)) if n > 1 else 0.0
    return DatasetGradients(  # the averages are results: they come back to the CPU once, here
        projections=list(projections), n_samples=n, mean={m: s.mean().cpu() for m, s in stats.items()},
        std={m: s.std().cpu() for m, s in stats.items()}, top=top.mean().cpu(), cosine=cosine.mean().cpu(),
        loss=(mean_loss, sd_loss), prompt_tokens=n_prompt_total / n, response_tokens=n_resp_total / n,
        seconds=time.perf_counter() - started, erank_n=stats["erank"].n.round().long().cpu(), route=route)


def _sample_gradients(lm: LoadedModel, params, sites, ids, n_prompt):
    """One forward and backward: ``(loss, gradient matrices (layer-major), factors)``; ``factors`` is None for the
    dense route, else a list of ``(delta [T, m], x [T, n])`` per matrix (the hooks live for the forward only)."""
    captured: dict[str, torch.Tensor] = {}

    def keep(site: str):
        def hook(tensor, hook=None):
            captured[site] = tensor
            return tensor  # returned, so what flows on is this tensor (the bridge shows hooks a per-head view)
        return hook

    hooks = {site: keep(site) for pair in sites for site in pair}
    with hooks_attached(lm.hook_points(), hooks), torch.enable_grad():
        loss = response_loss(lm, ids, n_prompt)
    outs = [captured[out] for _, out in sites]
    grads = torch.autograd.grad(loss, [wp.param for wp in params] + outs)
    mats = [wp.matrix(g) for wp, g in zip(params, grads, strict=False)]
    if not sites:
        return loss, mats, None
    flat = lambda t: t.detach()[0].reshape(t.shape[1], -1)  # noqa: E731  [1, T, (heads, d_head)] -> [T, m]
    factors = [(flat(g), flat(captured[inp])) for g, (inp, _) in zip(grads[len(params):], sites, strict=True)]
    return loss, mats, factors


def _sample_spectra(mats: list[torch.Tensor], factors: list | None, n_proj: int, n_layers: int,
                    n_top: int) -> dict[str, torch.Tensor]:
    """Spectra of one sample's gradients (layer-major lists) → ``[P, L]`` metrics, ``[P, L, k]`` top σ, ``[P, L, L]``
    cosines. Factor route: one batched QR + core SVD per projection (all layers at once); dense: one batched SVD per
    matrix shape. Everything stays on the gradients' device."""
    device = mats[0].device
    out = {m: torch.zeros(n_proj, n_layers, dtype=torch.float64, device=device) for m in METRICS}
    out["top"] = torch.zeros(n_proj, n_layers, n_top, dtype=torch.float64, device=device)
    if factors is not None:
        shared: dict[tuple, torch.Tensor] = {}  # R of the inputs, by identity: W_Q, W_K and W_V read the same x
        for p in range(n_proj):
            pick = [factors[layer * n_proj + p] for layer in range(n_layers)]
            xs = torch.stack([x for _, x in pick])
            key = tuple((x.data_ptr(), x.shape, x.stride()) for _, x in pick)
            if key not in shared:
                shared[key] = factor_r(xs)
            spec = gradient_spectrum(torch.stack([d for d, _ in pick]), xs, r_x=shared[key])
            out["nuclear"][p], out["erank"][p], out["frobenius"][p] = spec.nuclear, spec.erank, spec.frobenius
            k = min(n_top, spec.singular_values.shape[-1])
            out["top"][p, :, :k] = spec.singular_values[:, :k]
    else:
        for i, (g, s) in enumerate(zip(mats, batched_singular_values(mats), strict=True)):
            layer, p = divmod(i, n_proj)
            s = s.double()
            out["nuclear"][p, layer] = s.sum()
            out["erank"][p, layer] = effective_rank(s)
            out["frobenius"][p, layer] = g.double().norm()
            k = min(n_top, s.numel())
            out["top"][p, layer, :k] = s[:k]
    cos = []
    for p in range(n_proj):
        flat = torch.stack([mats[layer * n_proj + p].reshape(-1) for layer in range(n_layers)]).double()
        norms = flat.norm(dim=1)
        cos.append(flat @ flat.T / (norms[:, None] * norms[None, :] + COSINE_EPS))
    out["cosine"] = torch.stack(cos)
    return out
