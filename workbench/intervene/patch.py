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
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from workbench.capture.hooks import hooks_attached, resolve_sites
from workbench.errors import SiteError, config_error, shape_error
from workbench.models.loaded import LoadedModel, as_hooked, hook_points
from workbench.validation import is_int

if TYPE_CHECKING:
    from transformer_lens import HookedRootModule

Positions = int | Sequence[int] | None


@dataclass(frozen=True)
class Patch:
    """Where and what to patch. ``positions``: None (all), an int or a list of ints (negative from the end).
    ``heads``: head indices for per-head sites (``attn.hook_z``/``hook_q``/... shaped ``[B, P, H, d_head]``).
    ``basis``: ``[d, k]`` (or ``[d]``) linearly independent directions, any norms, to patch only span(basis) (an
    orthonormal basis of the span is computed once per :func:`patching`); None patches everything."""

    site: str
    positions: Positions = None
    heads: Sequence[int] | None = None
    basis: torch.Tensor | None = None


def forward(lm: LoadedModel | HookedRootModule, inputs: torch.Tensor) -> torch.Tensor:
    """The model's output (logits) for ``inputs``, moved to the model's device first (callers build token ids on
    the CPU; the bridge's forward does not move them, and an embedding lookup across devices fails)."""
    model = as_hooked(lm, call="patch")
    param = next(model.parameters(), None)
    if isinstance(inputs, torch.Tensor) and param is not None and inputs.device != param.device:
        inputs = inputs.to(param.device)
    return model(inputs)


def orthonormal(basis: torch.Tensor, d: int, call: str = "subspace_patch") -> torch.Tensor:
    """``[d, k]`` (or ``[d]``) directions → an orthonormal ``[d, k]`` basis of their span (reduced QR).

    Raises when k ≥ d (patching all of span(R^d) is a whole-site patch: use ``basis=None``) or a direction is zero.
    """
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
    :class:`ShapeError`. Computes in the tensors' dtype; differentiable in ``basis`` (DAS trains through it)."""
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
    differentiable in ``basis`` (any linearly independent directions: see :func:`subspace_patch`)."""
    call = "apply_patch"
    if base.shape != source.shape:
        raise shape_error(call, "source", f"the base activation's shape {tuple(base.shape)} (same token length)",
                          tuple(source.shape))
    mixed = _mix(base, source, basis)
    mask = _mask(base.shape, patch, base.device, call)
    return mixed if mask is None else torch.where(mask, mixed, base)


def _mix(base: torch.Tensor, source: torch.Tensor, basis: torch.Tensor | None) -> torch.Tensor:
    return source if basis is None else subspace_patch(base, source, basis)


def record(lm: LoadedModel | HookedRootModule, inputs: torch.Tensor, sites: Sequence[str]) -> dict[str, torch.Tensor]:
    """Activations at ``sites`` for ``inputs`` (no grad), from one forward pass; hooks removed afterwards."""
    points = hook_points(lm)
    names = check_sites(points, sites)
    store: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable:
        def hook(x: torch.Tensor, hook=None) -> None:
            store[name] = x.detach().clone()
        return hook

    with hooks_attached(points, {n: keep(n) for n in names}), torch.no_grad():
        forward(lm, inputs)
    return store


def check_sites(points: Mapping[str, torch.nn.Module], sites: Sequence[str]) -> list[str]:
    for site in sites:
        if site not in points:
            resolve_sites(points, [site])  # raises SiteError with the closest names
            raise SiteError(f"patch(): {site!r} is a pattern; name one hook site exactly")
    return list(dict.fromkeys(sites))


@contextmanager
def patching(lm: LoadedModel | HookedRootModule, patches: Sequence[Patch], source_acts: Mapping[str, torch.Tensor],
             bases: Mapping[str, torch.Tensor] | None = None) -> Iterator[None]:
    """Within the block, every forward of ``lm`` has ``patches`` applied, with the source activations given.

    ``bases`` optionally overrides a patch's basis by site (e.g. a trainable DAS basis). Hooks are removed on exit,
    also when the forward or a hook raises."""
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
    """Run ``source`` (recording the patched sites), then ``base`` with the patches applied; returns the output."""
    if base.shape != source.shape:
        raise shape_error("patched_logits", "source", f"the base inputs' shape {tuple(base.shape)} (equal token "
                          "lengths: patching is position-aligned)", tuple(source.shape))
    acts = record(lm, source, [p.site for p in patches])
    with patching(lm, patches, acts), torch.no_grad():
        return forward(lm, base)
