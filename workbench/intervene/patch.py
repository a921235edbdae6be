"""Activation patching: whole site, per position, per head, and along a subspace, with hooks that are always removed.

A *patch* replaces (part of) a base run's activation at a TransformerLens hook site by the source run's activation
at the same site. Subspace patching (Geiger et al.'s interchange intervention; Makelov, Lange & Nanda 2024, §2, eq. 1)
replaces only the component in span(V) of any basis V [d, k] of linearly independent directions:
w' = w + (u − w) V (VᵀV)⁻¹ Vᵀ (the orthogonal projection onto span(V); = w + (u − w) V Vᵀ when V is orthonormal), which
for k = 1 is the reference's w' = w + ((⟨u,v⟩ − ⟨w,v⟩)/‖v‖²)·v for any non-zero v
(amakelov/activation-patching-illusion, model_utils.py ``DirectionPatch``; the DAS ``Rotation`` patch is the same map
with V = the rotation's first k columns).

Works on any model that exposes TransformerLens HookPoints: a :class:`~workbench.models.LoadedModel` or a
``HookedRootModule`` (e.g. the distilled example in the tests).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from workbench.capture.hooks import StopForward, hook_user, hooks_attached, resolve_sites, split_site, stoppable
from workbench.errors import SiteError, config_error, shape_error
from workbench.intervene.generation import hf_causal_lm
from workbench.intervene.readout import UNEMBED_INPUT
from workbench.models.loaded import LoadedModel, as_hooked, hook_points
from workbench.validation import check_int, is_int

if TYPE_CHECKING:
    from transformer_lens import HookedRootModule

Positions = int | Sequence[int] | None


@dataclass(frozen=True)
class Patch:
    """Where and what to patch. ``positions``: None (all), an int or a list of ints (negative from the end).
    ``heads``: head indices for per-head sites (``attn.hook_z``/``hook_q``/... shaped ``[B, P, H, d_head]``).
    ``basis``: ``[d, k]`` (or ``[d]``) linearly independent directions, any norms, to patch only span(basis) (an
    orthonormal basis of the span is computed once per :func:`patching`); None patches everything.

    Example: ``Patch("blocks.5.hook_resid_post", positions=-1, basis=fit.basis)``"""

    site: str
    positions: Positions = None
    heads: Sequence[int] | None = None
    basis: torch.Tensor | None = None


def forward(lm: LoadedModel | HookedRootModule, inputs: torch.Tensor) -> torch.Tensor:
    """The model's output (logits) for ``inputs``, moved to the model's device first (callers build token ids on
    the CPU; the bridge's forward does not move them, and an embedding lookup across devices fails).

    Example: ``logits = forward(lm, lm.model.to_tokens(["The cat sat on the"]))``"""
    model = as_hooked(lm, call="patch")
    param = next(model.parameters(), None)
    if isinstance(inputs, torch.Tensor) and param is not None and inputs.device != param.device:
        inputs = inputs.to(param.device)
    return model(inputs)


def orthonormal(basis: torch.Tensor, d: int, call: str = "subspace_patch") -> torch.Tensor:
    """``[d, k]`` (or ``[d]``) directions → an orthonormal ``[d, k]`` basis of their span (reduced QR).

    Raises when k ≥ d (patching all of span(R^d) is a whole-site patch: use ``basis=None``) or a direction is zero.

    Example: ``orthonormal(torch.randn(576, 3), 576).T @ orthonormal(torch.randn(576, 3), 576)``"""
    if not isinstance(basis, torch.Tensor) or basis.ndim not in (1, 2):
        raise config_error(call, "basis", "a [d] or [d, k] tensor", getattr(basis, "shape", type(basis).__name__))
    b = basis[:, None] if basis.ndim == 1 else basis
    if b.shape[0] != d:
        raise shape_error(call, "basis", f"{d} rows (the site's width)", tuple(b.shape))
    if not 1 <= b.shape[1] < d:
        raise shape_error(call, "basis", f"k in [1, {d - 1}] directions (k < d; k = d is a whole-site patch)",
                          f"k = {b.shape[1]}")
    if not torch.isfinite(b).all():
        raise shape_error(call, "basis", "finite values", "NaN or Inf")
    q, r = torch.linalg.qr(b.double())
    if bool((r.diagonal().abs() <= 1e-12 * max(float(r.diagonal().abs().max()), 1e-300)).any()):
        raise shape_error(call, "basis", "linearly independent, non-zero directions", "a rank-deficient basis")
    return q.to(basis.dtype)


def subspace_patch(base: torch.Tensor, source: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``base + (source − base)·P`` with P the orthogonal projection onto span(``basis``) (last dim of the tensors).

    ``basis``: ``[d]`` or ``[d, k]`` linearly independent directions of any norm — P = V (VᵀV)⁻¹ Vᵀ, so a non-unit
    ``v`` patches exactly along span(v), as the reference's ``DirectionPatch`` does (for an orthonormal V, VᵀV = I
    and this is ``base + (source − base) V Vᵀ``). A zero, non-finite or rank-deficient basis raises
    :class:`ShapeError`. Computes in the tensors' dtype; differentiable in ``basis`` (DAS trains through it).

    Example: ``subspace_patch(base_acts, source_acts, torch.randn(576, 2))``"""
    call = "subspace_patch"
    if base.shape != source.shape:
        raise shape_error(call, "source", f"the base's shape {tuple(base.shape)}", tuple(source.shape))
    if not isinstance(basis, torch.Tensor) or basis.ndim not in (1, 2):
        raise shape_error(call, "basis", "a [d] or [d, k] tensor", getattr(basis, "shape", type(basis).__name__))
    v = (basis[:, None] if basis.ndim == 1 else basis).to(base.device, base.dtype)
    if v.shape[0] != base.shape[-1]:
        raise shape_error(call, "basis", f"{base.shape[-1]} rows (the activations' width)", tuple(v.shape))
    gram = v.T @ v
    _check_gram(gram.detach(), call)
    coeff = torch.linalg.solve(gram, ((source - base) @ v).reshape(-1, v.shape[1]).T).T
    return base + (coeff @ v.T).reshape(base.shape)


def _check_gram(gram: torch.Tensor, call: str) -> None:
    """Refuse a basis whose Gram matrix VᵀV is not finite or not positive definite (a zero or dependent direction)."""
    g = gram.double()
    if not bool(torch.isfinite(g).all()):
        raise shape_error(call, "basis", "finite values", "NaN or Inf")
    diag = g.diagonal()
    scale = float(diag.max()) if diag.numel() else 0.0
    if scale <= 0 or not bool((diag > 1e-24 * scale).all()):
        raise shape_error(call, "basis", "linearly independent, non-zero directions", "a zero direction")
    eig = torch.linalg.eigvalsh(g / diag.sqrt()[:, None] / diag.sqrt()[None])  # correlation matrix of the directions
    if float(eig[0]) <= 1e-10:
        raise shape_error(call, "basis", "linearly independent, non-zero directions", "a rank-deficient basis")


def _mask(shape: torch.Size, patch: Patch, device: torch.device, call: str) -> torch.Tensor | None:
    """A boolean mask broadcastable to ``[B, P, ...]`` selecting the patched positions (and heads); None = all."""
    if patch.positions is None and patch.heads is None:
        return None
    n_pos = shape[1]
    mask_shape = [1] * len(shape)
    mask_shape[1] = n_pos
    pos_ok = torch.ones(n_pos, dtype=torch.bool, device=device)
    if patch.positions is not None:
        pos = [patch.positions] if isinstance(patch.positions, int) else list(patch.positions)
        if not pos or not all(is_int(p) and -n_pos <= p < n_pos for p in pos):
            raise config_error(call, "positions", f"None, or ints in [-{n_pos}, {n_pos})", patch.positions)
        pos_ok = torch.zeros(n_pos, dtype=torch.bool, device=device)
        pos_ok[[p % n_pos for p in pos]] = True
    mask = pos_ok.reshape(mask_shape)
    if patch.heads is not None:
        heads = list(patch.heads)
        if len(shape) != 4:
            raise config_error(call, "heads", "None for a site without a head dimension [B, P, H, d_head]", heads)
        if not heads or not all(is_int(h) and 0 <= h < shape[2] for h in heads):
            raise config_error(call, "heads", f"head indices in [0, {shape[2]})", heads)
        head_ok = torch.zeros(shape[2], dtype=torch.bool, device=device)
        head_ok[heads] = True
        mask = mask & head_ok.reshape(1, 1, shape[2], 1)
    return mask


def apply_patch(base: torch.Tensor, source: torch.Tensor, patch: Patch, basis: torch.Tensor | None = None
                ) -> torch.Tensor:
    """The patched activation for one site (``base``/``source`` shaped ``[B, P, ...]``); a new tensor,
    differentiable in ``basis`` (any linearly independent directions: see :func:`subspace_patch`).

    Example: ``apply_patch(base_acts, source_acts, Patch("blocks.5.hook_resid_post", positions=-1))``"""
    call = "apply_patch"
    if base.shape != source.shape:
        raise shape_error(call, "source", f"the base activation's shape {tuple(base.shape)} (same token length)",
                          tuple(source.shape))
    mixed = _mix(base, source, basis)
    mask = _mask(base.shape, patch, base.device, call)
    return mixed if mask is None else torch.where(mask, mixed, base)


def _mix(base: torch.Tensor, source: torch.Tensor, basis: torch.Tensor | None) -> torch.Tensor:
    return source if basis is None else subspace_patch(base, source, basis)


@hook_user("patch.record", exercise=lambda lm: record(lm, lm.model.to_tokens("abc"), ["blocks.0.hook_resid_post"]))
def record(lm: LoadedModel | HookedRootModule, inputs: torch.Tensor, sites: Sequence[str]) -> dict[str, torch.Tensor]:
    """Activations at ``sites`` for ``inputs`` (no grad), from one forward pass; hooks removed afterwards. The
    forward stops as soon as every site has been recorded (what follows, unembedding included, is not computed).

    Example: ``acts = record(lm, tokens, ["blocks.5.hook_resid_post", "blocks.6.attn.hook_z"])``"""
    points = hook_points(lm)
    names = check_sites(points, sites)
    store: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable:
        def hook(x: torch.Tensor, hook=None) -> None:
            store[name] = x.detach().clone()
            if len(store) == len(names):
                raise StopForward
        return hook

    with stoppable(), hooks_attached(points, {n: keep(n) for n in names}), torch.no_grad():
        forward(lm, inputs)
    return store


def check_sites(points: Mapping[str, torch.nn.Module], sites: Sequence[str]) -> list[str]:
    """``sites`` without duplicates, each an exact hook name of ``points``; SiteError naming the closest hooks for an
    unknown one, or saying a pattern is not allowed.

    Example: ``check_sites(lm.hook_points(), ["blocks.5.hook_resid_post"])``"""
    for site in sites:
        if site not in points:
            resolve_sites(points, [site])  # raises SiteError with the closest names
            raise SiteError(f"patch(): {site!r} is a pattern; name one hook site exactly")
    return list(dict.fromkeys(sites))


@hook_user("patch.patching", exercise=lambda lm: _exercise_patching(lm))
@contextmanager
def patching(lm: LoadedModel | HookedRootModule, patches: Sequence[Patch], source_acts: Mapping[str, torch.Tensor],
             bases: Mapping[str, torch.Tensor] | None = None) -> Iterator[None]:
    """Within the block, every forward of ``lm`` has ``patches`` applied, with the source activations given.

    ``bases`` optionally overrides a patch's basis by site (e.g. a trainable DAS basis). Hooks are removed on exit,
    also when the forward or a hook raises.

    Example: ``with patching(lm, [Patch(site, positions=-1)], record(lm, source, [site])): forward(lm, base)``"""
    points = hook_points(lm)
    check_sites(points, [p.site for p in patches])
    by_site: dict[str, list[Patch]] = {}
    for p in patches:
        if p.site not in source_acts:
            raise config_error("patching", "source_acts", f"an activation for every patched site ({p.site!r})",
                               sorted(source_acts))
        by_site.setdefault(p.site, []).append(p)
    prepared = {id(p): (None if p.basis is None else orthonormal(p.basis, source_acts[p.site].shape[-1]))
                for p in patches}

    def make(site: str) -> Callable:
        def hook(x: torch.Tensor, hook=None) -> torch.Tensor:
            src = source_acts[site].to(x.device, x.dtype)
            for p in by_site[site]:
                basis = bases[site] if bases is not None and site in bases else prepared[id(p)]
                x = apply_patch(x, src, p, basis)
            return x
        return hook

    with hooks_attached(points, {site: make(site) for site in by_site}):
        yield


def patched_logits(lm: LoadedModel | HookedRootModule, base: torch.Tensor, source: torch.Tensor, patches: Sequence[Patch]) -> torch.Tensor:
    """Run ``source`` (recording the patched sites), then ``base`` with the patches applied; returns the output.

    Example: ``patched_logits(lm, base, source, [Patch("blocks.5.hook_resid_post", positions=-1)])``"""
    if base.shape != source.shape:
        raise shape_error("patched_logits", "source", f"the base inputs' shape {tuple(base.shape)} (equal token "
                          "lengths: patching is position-aligned)", tuple(source.shape))
    acts = record(lm, source, [p.site for p in patches])
    with patching(lm, patches, acts), torch.no_grad():
        return forward(lm, base)


# ---------------------------------------------------------------------------------------------------------------
# Cheaper forwards for patching experiments that read only the last position's logits
# ---------------------------------------------------------------------------------------------------------------

Start = tuple[int, torch.Tensor]


@dataclass(frozen=True)
class Prefix:
    """The unpatched run of ``[B, P]`` inputs before position ``c``, for forwards that compute only positions c..P-1
    from block ``layer`` on (:func:`last_logits`; :func:`prefix_state` makes one for c = P-1): ``entries``, every
    layer's keys and values at positions 0..c-1 as Hugging Face's cache holds them (:func:`cached_prefix`), and
    ``resid`` ``[B, P - c, d]``, the ``hook_resid_pre`` of ``layer`` at positions c..P-1. Exact only while every patch
    acts at positions >= c (the recomputed ones; the earlier ones cannot change).

    Example: ``prefix: Prefix = prefix_state(lm, base, ["blocks.5.hook_resid_post"]); last_logits(lm, base, start=prefix)``"""

    layer: int
    resid: torch.Tensor
    entries: tuple[tuple[torch.Tensor | None, torch.Tensor | None], ...]

    def rows(self, idx: torch.Tensor) -> Prefix:
        """The same state for the inputs ``idx`` (a batch's rows).

        Example: ``last_logits(lm, base[:8], start=prefix.rows(torch.arange(8)))``"""
        pick = lambda t: None if t is None else t[idx.to(t.device)]  # noqa: E731
        return replace(self, resid=pick(self.resid), entries=tuple((pick(k), pick(v)) for k, v in self.entries))


@hook_user("patch.cached_prefix", exercise=lambda lm: cached_prefix(lm, lm.model.to_tokens("abc"), 1))
def cached_prefix(lm: LoadedModel, inputs: torch.Tensor, at: int) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """Every layer's (keys, values) at positions 0..``at``-1 of ``inputs`` ``[B, P]``: one cached forward of those
    positions (no grad, nothing unembedded but one row), for :class:`Prefix`. The model must be a TransformerBridge
    over a Hugging Face causal LM (see :func:`workbench.intervene.generation.hf_causal_lm`).

    Example: ``entries = cached_prefix(lm, tokens, tokens.shape[1] - 1)``"""
    check_int("cached_prefix", "at", at, low=1, high=inputs.shape[1] - 1)
    return _cached(lm, inputs[:, :at], at, {})


def _cached(lm: LoadedModel, inputs: torch.Tensor, at: int, hooks: Mapping[str, Callable]
            ) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """One cached forward of ``inputs`` with ``hooks`` attached; every layer's keys and values at positions < ``at``."""
    hf = hf_causal_lm(lm)
    if hf is None:
        raise config_error("cached_prefix", "lm", "a TransformerBridge over a Hugging Face causal LM",
                           type(lm).__name__)
    with hooks_attached(lm.hook_points(), hooks), torch.no_grad():
        cache = hf(input_ids=inputs, use_cache=True, logits_to_keep=1).past_key_values
    crop = lambda t: None if t is None else t[..., :at, :]  # noqa: E731  [B, heads, positions, d_head]
    return tuple((crop(entry[0]), crop(entry[1])) for entry in cache)


def prefix_state(lm: LoadedModel | HookedRootModule, inputs: torch.Tensor, sites: Sequence[str]) -> Prefix | None:
    """The :class:`Prefix` of ``inputs`` for patches at ``sites`` at the last position only, starting at the
    earliest block holding one of them, from one cached forward without grad. None when the model is not a
    TransformerBridge over a Hugging Face causal LM (or a site is outside the blocks, or the inputs have one
    position).

    Example: ``last_logits(lm, base, start=prefix_state(lm, base, ["blocks.5.hook_resid_post"]))``"""
    model = as_hooked(lm, call="prefix_state")
    layers = [split_site(s)[0] for s in sites]
    if not isinstance(lm, LoadedModel) or hf_causal_lm(lm) is None or _bridge_blocks(model) is None or not layers \
            or None in layers or inputs.shape[1] < 2:
        return None
    layer = min(layers)
    name = f"blocks.{layer}.hook_resid_pre"
    if name not in hook_points(lm):
        return None
    box: dict[str, torch.Tensor] = {}

    def keep(x: torch.Tensor, hook=None) -> None:
        box["resid"] = x[:, -1:].detach().clone()

    entries = _cached(lm, inputs, inputs.shape[1] - 1, {name: keep})
    return Prefix(layer=layer, resid=box["resid"], entries=entries)


@hook_user("patch.last_logits", exercise=lambda lm: last_logits(lm, lm.model.to_tokens("abc")))
def last_logits(lm: LoadedModel | HookedRootModule, inputs: torch.Tensor, *, start: Start | Prefix | None = None
                ) -> torch.Tensor:
    """``[B, V]``: the last position's logits of ``inputs`` — ``forward(lm, inputs)[:, -1]`` to float round-off,
    computed with less on a TransformerBridge (a :class:`LoadedModel`):

    - the forward stops at the unembedding's input (``unembed.hook_in``) and only the last row is unembedded, with the
      model's own ``unembed`` and the architecture's post-unembedding transform (e.g. Gemma's soft cap);
    - ``start=(layer, resid_pre)`` (see :func:`resume_point`) starts the forward at block ``layer``: the blocks before
      it are not run and block ``layer`` reads ``resid_pre`` ``[B, P, d]``, which must be the ``hook_resid_pre`` of
      ``layer`` that the blocks before compute for these ``inputs`` (recorded once from the unpatched run; patches
      must all act at ``layer`` or later). TransformerLens' own ``start_at_layer`` raises NotImplementedError on a
      bridge, whose layer loop is Hugging Face's, so the skipped blocks' forwards are replaced by one that returns
      ``resid_pre`` for the duration of the call (layer 0: block 0 reads ``resid_pre`` instead of the embedding).
      Hooks at block ``layer`` and after fire as in the full forward (a patch at ``hook_resid_pre`` of ``layer``
      included); a hook attached inside a skipped block would never fire, so one is refused (ConfigError).
    - ``start=`` a :class:`Prefix` (e.g. :func:`prefix_state`'s, for patches at the last position) also leaves out
      positions before c: only positions c..P-1 go through blocks ``layer`` and after, attending to the prefix's
      cached keys and values (the Hugging Face model inside the bridge is called with them; its components are the
      bridge's, so the hooks fire, on ``[B, P - c, ...]`` activations: a patch of position P-1 is position -1).

    Differentiable (DAS trains through it). Any other model (a ``HookedRootModule``) runs the full forward and
    takes no ``start``.

    Example: ``last_logits(lm, tokens).argmax(-1)``"""
    model = as_hooked(lm, call="last_logits")
    blocks = _bridge_blocks(model)
    if isinstance(start, Prefix):
        if blocks is None or (hf := hf_causal_lm(lm) if isinstance(lm, LoadedModel) else None) is None:
            raise config_error("last_logits", "start", "a Prefix only for a TransformerBridge over a Hugging Face "
                               "causal LM (prefix_state returns None otherwise)", type(model).__name__)
        from transformers import DynamicCache

        cache = DynamicCache(ddp_cache_data=start.entries, config=hf.config)
        tail = inputs[:, inputs.shape[1] - start.resid.shape[1]:]
        if cache.get_seq_length() + tail.shape[1] != inputs.shape[1]:
            raise shape_error("last_logits", "start", f"a Prefix of {inputs.shape[1]} positions (cached + resid)",
                              f"{cache.get_seq_length()} + {start.resid.shape[1]}")
        with _skipping(hook_points(lm), blocks, (start.layer, start.resid), tail.shape):
            return hf(input_ids=tail, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
    if blocks is None:
        if start is not None:
            raise config_error("last_logits", "start", "None for a model that is not a TransformerBridge (resume_point "
                               "returns None there)", type(start).__name__)
        out = model(inputs)
        return out[:, -1] if out.ndim == 3 else out
    points = hook_points(lm)
    box: dict[str, torch.Tensor] = {}

    def stop(x: torch.Tensor, hook=None) -> None:
        box["x"] = x[:, -1:]
        raise StopForward

    with stoppable(), _skipping(points, blocks, start, inputs.shape), hooks_attached(points, {UNEMBED_INPUT: stop}):
        model(inputs)
    if "x" not in box:  # pragma: no cover - the unembedding's input is reached on every forward
        raise RuntimeError("last_logits(): the unembedding input was never reached")
    return model.adapter.apply_output_logits_transform(model.unembed(box["x"]))[:, 0]


def resume_point(lm: LoadedModel | HookedRootModule, inputs: torch.Tensor, sites: Sequence[str]) -> Start | None:
    """``(layer, resid_pre)`` for :func:`last_logits`' ``start``: the earliest block ``layer`` holding one of
    ``sites`` and its ``hook_resid_pre`` for ``inputs`` (recorded without grad, the forward stopped there); None
    when nothing can be skipped (not a TransformerBridge, a site outside the blocks, or layer 0).

    Example: ``last_logits(lm, base, start=resume_point(lm, base, ["blocks.5.hook_resid_post"]))``"""
    model = as_hooked(lm, call="resume_point")
    layers = [split_site(s)[0] for s in sites]
    if _bridge_blocks(model) is None or not layers or None in layers or min(layers) == 0:
        return None
    layer = min(layers)
    name = f"blocks.{layer}.hook_resid_pre"
    if name not in hook_points(lm):
        return None
    return layer, record(lm, inputs, [name])[name]


def _bridge_blocks(model: torch.nn.Module) -> Sequence[torch.nn.Module] | None:
    """The bridge's blocks, or None for a model without the bridge's unembedding hook (run in full there)."""
    from transformer_lens.hook_points import HookPoint
    from transformer_lens.model_bridge import TransformerBridge

    if not isinstance(model, TransformerBridge) or not hasattr(model, "blocks"):
        return None
    return model.blocks if isinstance(getattr(getattr(model, "unembed", None), "hook_in", None), HookPoint) else None


@contextmanager
def _skipping(points: Mapping[str, torch.nn.Module], blocks: Sequence[torch.nn.Module], start: Start | None,
              shape: torch.Size) -> Iterator[None]:
    if start is None:
        yield
        return
    layer, resid = start
    check_int("last_logits", "start[0]", layer, low=0, high=len(blocks) - 1)
    if not isinstance(resid, torch.Tensor) or resid.ndim != 3 or tuple(resid.shape[:2]) != tuple(shape[:2]):
        raise shape_error("last_logits", "start[1]", f"a [{shape[0]}, {shape[1]}, d] hook_resid_pre of the inputs",
                          tuple(getattr(resid, "shape", ())))
    busy = sorted(name for name, point in points.items() if (split_site(name)[0] or 0) < layer
                  and name.startswith("blocks.") and len(point._forward_hooks))
    if busy:
        raise config_error("last_logits", "start", f"a layer at or before every attached hook (block {layer} starts; "
                           f"hooks at {busy[:3]} would not fire)", layer)

    def skipped(hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        # the residual stream entering block `layer`, as the skipped blocks computed it
        return resid.to(hidden_states.device, hidden_states.dtype)

    def fed(hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        # block 0 (nothing to skip) runs on ``resid`` instead of the embedding
        return type(blocks[0]).forward(blocks[0], resid.to(hidden_states.device, hidden_states.dtype), *args,
                                       **kwargs)

    replaced = list(blocks[:layer]) if layer else [blocks[0]]
    try:
        for block in replaced:  # on the instance itself: the bridge's __setattr__ would set the HF layer's
            object.__setattr__(block, "forward", skipped if layer else fed)
        yield
    finally:
        for block in replaced:
            block.__dict__.pop("forward", None)


def _exercise_patching(lm: LoadedModel) -> None:
    """One patched forward (the hook-fault tests' call of :func:`patching`)."""
    tokens, where = lm.model.to_tokens("abc"), "blocks.0.hook_resid_post"
    with patching(lm, [Patch(where, positions=-1)], record(lm, tokens, [where])):
        forward(lm, tokens)
