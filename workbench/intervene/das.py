"""Distributed Alignment Search (Geiger et al. 2023), as Makelov, Lange & Nanda (2024) train it for 1-D subspaces.

An orthogonal map R (``torch.nn.utils.parametrizations.orthogonal``) rotates the site's activation; its first k
coordinates are taken from the source run and the result is rotated back. Only the first k rows of R matter for that
intervention (base + (source − base)·R_kᵀR_k), so R is parametrised as a ``[k, d]`` matrix with orthonormal rows
(torch's orthogonal parametrisation, Householder map) — the same family of interventions as the paper's full
``d × d`` rotation, at O(k·d) instead of O(d²) cost per step.
Objective: cross-entropy of the patched base run's last-position logits toward the counterfactual token (the source's
answer in the base's terms; the reference's CE against a one-hot target is the same number).

Defaults are what the reference's training notebook ran (amakelov/activation-patching-illusion,
``ioi_interventions.ipynb`` calling ``model_utils.py`` ``patch_training``): Adam with ``initial_lr=0.01`` (0.1 is
only that function's default), ``LinearLR(optimizer, end_factor=0.1, total_iters=n_epochs)`` stepped once per epoch —
with torch's default ``start_factor=1/3``, which the reference does not override, so epoch e trains at
0.01·(1/3 − (1/3 − 0.1)·e/30): 0.00333 falling to 0.00108, not 0.01 → 0.001 — all 30 epochs, batch 20, every
training pair used for training, the final rotation kept. ``start_factor=1.0`` gives the 0.01 → 0.001 schedule as an
option.
Named options, not the reference: ``patience`` > 0 early-stops on a validation split (``val_fraction``) and returns
the best epoch's basis. Deviations kept: the ``[k, d]`` Householder parametrisation above (the reference: a full
``d × d`` ``orthogonal(nn.Linear(n, n))``, matrix-exp map) and its seeded random start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.nn.utils.parametrizations import orthogonal

from workbench.errors import config_error, shape_error
from workbench.intervene.patch import Patch, Prefix, Start, last_logits, patching, prefix_state, record, resume_point
from workbench.models.loaded import LoadedModel, as_hooked
from workbench.progress import bar as progress_bar
from workbench.validation import check_int, check_number

if TYPE_CHECKING:
    from transformer_lens import HookedRootModule


class RotatedSubspace(torch.nn.Module):
    """k orthonormal directions in R^d (rows of an orthogonally parametrised ``[k, d]`` matrix).

    Example: ``RotatedSubspace(576, 1, generator=torch.Generator().manual_seed(0)).basis().shape  # [576, 1]``"""

    def __init__(self, d: int, k: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        # Householder map: O(k·d) per step; the default matrix_exp map forms a d × d exponential (12 s per step at
        # d = 1536 on 2 CPU cores), Cayley a d × d solve. Building the layer and registering the map draw from
        # torch's global RNG (default init; completing the k × d matrix to a square one), so those draws are seeded
        # from ``generator`` inside a forked RNG: the same seed gives the same fit, and the caller's global RNG
        # state is left alone.
        seed = int(torch.randint(2**62, (1,), generator=generator)) if generator is not None else None
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            linear = torch.nn.Linear(d, k, bias=False)
            with torch.no_grad():
                linear.weight.copy_(torch.randn(k, d, generator=generator) / d ** 0.5)
            self.map = orthogonal(linear, orthogonal_map="householder")

    def basis(self) -> torch.Tensor:
        """``[d, k]`` orthonormal columns.

        Example: ``RotatedSubspace(576, 2).basis().shape  # [576, 2]``"""
        return self.map.weight.T


@dataclass(frozen=True)
class DASFit:
    """The learned basis ``[d, k]`` (the final epoch's; with early stopping the best validation epoch's), the loss
    history and the learning rate of each epoch; ``site`` the hook site it was fitted at (``None`` if not recorded).

    Example: ``fit: DASFit = train_das(lm, base, source, target, site="blocks.5.hook_resid_post"); fit.basis``"""

    basis: torch.Tensor
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    lrs: list[float] = field(default_factory=list)
    site: str | None = None

    def __repr__(self) -> str:
        d, k = self.basis.shape
        final = f"{self.train_loss[-1]:.4g}" if self.train_loss else "-"
        return (f"DASFit(site={self.site!r}, d={d}, k={k}, epochs={len(self.train_loss)}, "
                f"best_epoch={self.best_epoch}, final_train_loss={final})")

    def _repr_html_(self) -> str:
        """Notebook summary of the stored fit: the basis' shape and the loss and learning-rate history (no forward)."""
        import html

        from workbench.results import fmt, table_html

        d, k = self.basis.shape

        def at(values: list[float], i: int) -> float | str:
            return values[i] if -len(values) <= i < len(values) else "-"

        rows = [["site", "-" if self.site is None else self.site], ["basis", f"[{d}, {k}] (d × k, orthonormal columns)"],
                ["epochs run", len(self.train_loss)], ["best epoch (0-based; its basis is kept)", self.best_epoch],
                ["stopped early", self.stopped_early],
                ["train loss: first → final", f"{fmt(at(self.train_loss, 0))} → {fmt(at(self.train_loss, -1))}"],
                ["val loss at best epoch", at(self.val_loss, self.best_epoch)],
                ["lr: first → last", f"{fmt(at(self.lrs, 0))} → {fmt(at(self.lrs, -1))}"]]
        title = f"DAS fit: {k}-dim subspace" + ("" if self.site is None else f" at {self.site}")
        return f"<h4>{html.escape(title)}</h4>{table_html(['', 'value'], rows)}"


def train_das(lm: LoadedModel | HookedRootModule, base: torch.Tensor, source: torch.Tensor, target: torch.Tensor, *, site: str,
              position: int = -1, k: int = 1, epochs: int = 30, lr: float = 0.01, start_factor: float = 1 / 3,
              end_factor: float = 0.1,
              batch_size: int = 20, val_fraction: float = 0.0, patience: int = 0, seed: int = 0,
              progress: bool = False) -> DASFit:
    """Learn a k-dim subspace at ``site``/``position`` whose patch from ``source`` makes ``base`` output ``target``.

    ``base``/``source``: ``[N, P]`` token ids (or any model inputs with a leading batch dim) of equal shape;
    ``target``: ``[N]`` token ids. Defaults: the reference notebook's run (module docstring) — all ``epochs``, the
    final basis. ``patience`` > 0 (an option): early stop after ``patience`` epochs without a better loss on the
    ``val_fraction`` held out (the training loss when it is 0) and return the best basis. ``val_loss`` is the
    training loss when nothing is held out. Model weights are frozen (and restored) throughout.

    Example: ``fit = train_das(lm, base, source, target, site="blocks.5.hook_resid_post", k=1, epochs=10)``"""
    call = "train_das"
    n = base.shape[0]
    if n == 0:
        raise config_error(call, "base", "a non-empty dataset", "0 pairs")
    if source.shape != base.shape:
        raise shape_error(call, "source", f"the base inputs' shape {tuple(base.shape)}", tuple(source.shape))
    if target.shape != (n,):
        raise shape_error(call, "target", f"[{n}] token ids", tuple(target.shape))
    check_int(call, "k", k, low=1)
    check_int(call, "epochs", epochs, low=1)
    check_number(call, "lr", lr, low=0, low_open=True)
    check_number(call, "start_factor", start_factor, low=0, high=1, low_open=True)
    check_number(call, "end_factor", end_factor, low=0, high=1, low_open=True)
    check_int(call, "batch_size", batch_size, low=1)
    check_number(call, "val_fraction", val_fraction, low=0, high=1, high_open=True)
    check_int(call, "patience", patience, low=0)
    gen = torch.Generator().manual_seed(seed)
    acts = record(lm, source, [site])[site]
    d = acts.shape[-1]
    if k >= d:
        raise config_error(call, "k", f"an int in [1, {d - 1}] (the site is {d}-wide)", k)
    # What does not depend on the basis is computed once: the base run up to the site's block and, for a patch at
    # the last position (the default), its keys and values before that position; each step then runs only the last
    # position from the site's block on (last_logits), with the same loss and gradient as the full forward.
    at_last = base.ndim == 2 and position in (-1, base.shape[1] - 1)  # token ids [N, P], the last position
    start = prefix_state(lm, base, [site]) if at_last else None
    if start is not None:
        acts, position = acts[:, -1:], -1
    else:
        start = resume_point(lm, base, [site])
    order = torch.randperm(n, generator=gen)
    n_val = min(int(round(val_fraction * n)), n - 1) if n > 1 else 0  # at least one training pair
    val_idx, train_idx = order[:n_val], order[n_val:]
    subspace = RotatedSubspace(d, k, gen).to(acts.device)
    opt = torch.optim.Adam(subspace.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=start_factor, end_factor=end_factor,
                                              total_iters=epochs)
    patch = Patch(site, positions=[position])
    frozen = [(p, p.requires_grad) for p in _parameters(lm)]
    fit_train, fit_val, lrs, best, best_epoch, since, stopped = [], [], [], None, 0, 0, False
    try:
        for p, _ in frozen:
            p.requires_grad_(False)
        for epoch in progress_bar(range(epochs), desc=f"DAS {site}", disable=not progress, leave=False):
            perm = train_idx[torch.randperm(len(train_idx), generator=gen)]
            lrs.append(float(opt.param_groups[0]["lr"]))
            total = 0.0
            for chunk in perm.split(batch_size):
                with torch.enable_grad():
                    loss = _loss(lm, patch, subspace.basis(), base[chunk], acts[chunk], target[chunk],
                                 _rows(start, chunk))
                    opt.zero_grad()
                    loss.backward()
                opt.step()
                total += float(loss.detach()) * len(chunk)
            sched.step()  # once per epoch, as patch_training does
            fit_train.append(total / len(train_idx))
            with torch.no_grad():
                basis = subspace.basis().detach().clone()
                val = _mean_loss(lm, patch, basis, base[val_idx], acts[val_idx], target[val_idx], batch_size,
                                 _rows(start, val_idx)) if n_val else fit_train[-1]
            fit_val.append(val)
            if not patience:  # the reference: every epoch runs and the final rotation is kept
                best, best_epoch = basis, epoch
            elif best is None or val < min(fit_val[:-1], default=float("inf")):
                best, best_epoch, since = basis, epoch, 0
            else:
                since += 1
                if since >= patience:
                    stopped = True
                    break
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
    return DASFit(basis=best, train_loss=fit_train, val_loss=fit_val, best_epoch=best_epoch, stopped_early=stopped,
                  lrs=lrs, site=site)


def _parameters(lm: LoadedModel | HookedRootModule) -> list[torch.nn.Parameter]:
    return list(as_hooked(lm, call="das").parameters())


def _rows(start: Start | Prefix | None, idx: torch.Tensor) -> Start | Prefix | None:
    if start is None or isinstance(start, Prefix):
        return None if start is None else start.rows(idx)
    return start[0], start[1][idx.to(start[1].device)]


def _loss(lm: LoadedModel | HookedRootModule, patch: Patch, basis: torch.Tensor, base: torch.Tensor, acts: torch.Tensor,
          target: torch.Tensor, start: Start | Prefix | None = None) -> torch.Tensor:
    """Cross-entropy of the patched base run's last-position logits toward ``target``; the forward starts at the
    patched block from the base run's residual when ``start`` is given and unembeds the last position only
    (:func:`~workbench.intervene.patch.last_logits`: the same loss as the full forward)."""
    with patching(lm, [patch], {patch.site: acts}, bases={patch.site: basis}):
        last = last_logits(lm, base, start=start)
    return F.cross_entropy(last.float(), target.to(last.device))


def _mean_loss(lm: LoadedModel | HookedRootModule, patch, basis, base, acts, target, batch_size,
               start: Start | Prefix | None = None) -> float:
    total = 0.0
    for idx in torch.arange(base.shape[0]).split(batch_size):
        total += float(_loss(lm, patch, basis, base[idx], acts[idx], target[idx], _rows(start, idx))) * len(idx)
    return total / base.shape[0]
