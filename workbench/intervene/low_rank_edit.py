"""Whole weight matrices replaced by low-rank factorisations, in the model's own weights, through a handle that puts
the originals back bit for bit — the same handle as Steer2Edit's rank-1 edits (:class:`~workbench.intervene.edit.
EditHandle`), so applying, reverting and the ``with`` block behave identically.

Used by the ``low_rank`` analysis to measure what truncating every linear map does to perplexity. The factors stay
factored in the edit (``left [d_in, r]``, ``right [r, d_out]``, TransformerLens ``x @ W`` orientation); the dense
product is written into the parameter only while the edit is applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from workbench.errors import config_error, shape_error
from workbench.intervene.edit import EditHandle
from workbench.models.adapters import LAYER_KINDS
from workbench.models.loaded import LoadedModel

_MAX_ROWS = 60


@dataclass(frozen=True)
class LowRankReplacement:
    """Replace matrix ``kind`` of ``layer`` (:func:`~workbench.models.adapters.as_matrix` orientation) by
    ``left @ right``; ``method`` is a label for displays (``"whitened"``, ``"plain"``).

    Example: ``LowRankReplacement("W_in", 3, left, right, method="whitened").rank``"""

    kind: str
    layer: int
    left: torch.Tensor
    right: torch.Tensor
    method: str = ""

    @property
    def rank(self) -> int:
        return int(self.left.shape[1])


class ReplacementHandle(EditHandle):
    """Low-rank replacements applied to a model's weights; :meth:`revert` restores the original matrices bit for bit.

    Example: ``with ReplacementHandle(lm, replacements): lm.model(tokens)  # the truncated model; restored on exit``"""

    def _target(self, edit: LowRankReplacement) -> tuple[torch.Tensor, slice]:
        call = "replace_low_rank"
        if not isinstance(edit, LowRankReplacement):
            raise config_error(call, "replacements", "LowRankReplacement objects", type(edit).__name__)
        if edit.kind not in LAYER_KINDS:
            raise config_error(call, "kind", f"one of {LAYER_KINDS}", edit.kind)
        by_layer = self.__dict__.setdefault("_by_layer", {})  # kind -> {layer: parameter}, fetched once per kind
        if edit.kind not in by_layer:
            by_layer[edit.kind] = {p.layer: p for p in self.lm.parameters([edit.kind])}
        wp = by_layer[edit.kind].get(edit.layer) if isinstance(edit.layer, int) else None
        if wp is None:
            raise config_error(call, "layer", f"an int in [0, {self.lm.n_layers})", edit.layer)
        matrix = wp.matrix(wp.param.data)
        if matrix.untyped_storage().data_ptr() != wp.param.untyped_storage().data_ptr():
            raise config_error(call, "kind", f"a matrix this model stores so that it can be written in place ({edit.kind} "
                               f"is kept in a layout whose 2-D view is a copy)", edit.kind)
        want = (matrix.shape[0], edit.rank), (edit.rank, matrix.shape[1])
        if (tuple(edit.left.shape), tuple(edit.right.shape)) != want:
            raise shape_error(call, "left/right", f"factors of shapes {want[0]} and {want[1]} for {edit.kind} "
                              f"{tuple(matrix.shape)}", (tuple(edit.left.shape), tuple(edit.right.shape)))
        return matrix, slice(None)

    def _updated(self, edit: LowRankReplacement, current: torch.Tensor) -> torch.Tensor:
        left = edit.left.to(current.device, torch.float64)
        return (left @ edit.right.to(current.device, torch.float64)).to(current.dtype)

    def __repr__(self) -> str:
        return (f"ReplacementHandle(model={getattr(self.lm, 'name', '?')!r}, matrices={len(self.edits)}, "
                f"state={self.state!r})")

    def _repr_html_(self) -> str:
        import html

        from workbench.results import table_html

        rows = [[e.kind, e.layer, e.rank, e.method] for e in self.edits[:_MAX_ROWS]]
        more = f"<p>… and {len(self.edits) - _MAX_ROWS} more</p>" if len(self.edits) > _MAX_ROWS else ""
        head = f"{len(self.edits)} low-rank replacements of {getattr(self.lm, 'name', '?')}: {self.state}"
        return f"<h4>{html.escape(head)}</h4>{table_html(['matrix', 'layer', 'rank', 'method'], rows)}{more}"


def replace_low_rank(lm: LoadedModel, replacements: Sequence[LowRankReplacement]) -> ReplacementHandle:
    """Write every replacement into ``lm``'s weights now (all validated first); ``.revert()`` the handle, or use it as
    a context manager, to restore the originals bit for bit.

    Example: ``handle = replace_low_rank(lm, [LowRankReplacement("W_in", 3, left, right)]); handle.revert()``"""
    return ReplacementHandle(lm, list(replacements)).apply()
