"""Steer2Edit: turn a steering vector into sparse rank-1 edits of attention heads' W_O and MLP neurons' W_out, applied
to the model's own weights through a handle that reverts them bit for bit.

Reference: "Steer2Edit: From Activation Steering to Component-Level Editing" (reference code
github.com/Trustworthy-ML-Lab/Steer2Edit, ``efficient_reasoning/edit.py``). With v̂ the unit steering
vector of a layer's attention (or MLP) output and x̄ the mean input of a component over the positive and negative
prompts:

- attribution, head j: g_j = cos(v̂, x̄_j·W_O[j]); MLP neuron i: g_i = cos(v̂, x̄_i·W_out[i]);
- elastic-net magnitude: λ = sign(g)·max(|g| − ρα, 0)/(ρ(1 − α)), α ∈ [0, 1) (default 0.95); λ = 0 leaves the
  component untouched; ρ ≤ 0 gives λ = 0 for every component of that type (the reference's ``elastic_net_lambda``;
  its published grids pass ρ_attn = −1 to edit neurons only, ρ_mlp = −1 to edit heads only);
- rank-1 edit, head j: W_O[j] += λ·k̂·v̂ᵀ with k̂ = normalise(W_O[j]·v̂) (TransformerLens orientation
  ``[d_head, d_model]``; the paper's ΔW = λ·v̂·k̂ᵀ on the ``[d_model, d_head]`` block); neuron i:
  W_out[i] += λ·sign(⟨W_out[i], v̂⟩)·v̂. As in edit.py ``compute_edits``, a head whose W_O[j]·v̂ is 0 and a neuron
  whose ⟨W_out[i], v̂⟩ is 0 are not edited.

An edited model needs no hooks at inference: the edit is in the weights (test: edited forward with no hooks attached
equals the hook-free reference computation).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from workbench.errors import config_error, shape_error
from workbench.models.loaded import LoadedModel
from workbench.validation import check_number

KINDS = {"head": "W_O", "neuron": "W_out"}
_MAX_ROWS = 60  # edits listed in a notebook repr; the rest are counted
EDIT_FORMAT = 1


def elastic_net_lambda(g: torch.Tensor, *, rho: float, alpha: float = 0.95) -> torch.Tensor:
    """λ = sign(g)·max(|g| − ρα, 0)/(ρ(1 − α)) elementwise (Steer2Edit's elastic-net solution); all zeros when
    ρ ≤ 0 (the reference's "this component type is not edited"). Float64.

    Example: ``elastic_net_lambda(torch.tensor([0.9, -0.2, 0.05]), rho=0.5)``"""
    call = "elastic_net_lambda"
    rho = check_number(call, "rho", rho, allowed="a finite number (<= 0: edit nothing of this type)")
    alpha = check_number(call, "alpha", alpha, low=0, high=1, high_open=True)
    g = g.double()
    if rho <= 0:
        return torch.zeros_like(g)
    return torch.sign(g) * torch.clamp(g.abs() - rho * alpha, min=0) / (rho * (1 - alpha))


def head_attribution(v: torch.Tensor, w_o: torch.Tensor, z_mean: torch.Tensor) -> torch.Tensor:
    """``[H]`` g_j = cos(v̂, z̄_j·W_O[j]) for ``w_o`` ``[H, d_head, d_model]`` and mean head inputs ``z_mean``
    ``[H, d_head]`` (the ``hook_z`` activations averaged over the positive and negative prompts).

    Example: ``head_attribution(vectors[5].v_attn, lm.weight("W_O", 5), vectors[5].z_mean)``"""
    if w_o.ndim != 3 or z_mean.shape != w_o.shape[:2] or v.shape != (w_o.shape[2],):
        raise shape_error("head_attribution", "z_mean", f"[{w_o.shape[0]}, {w_o.shape[1]}] with v [{w_o.shape[-1]}]",
                          (tuple(z_mean.shape), tuple(v.shape)))
    out = torch.einsum("hd,hdm->hm", z_mean.double(), w_o.double())
    return torch.nn.functional.cosine_similarity(out, v.double()[None], dim=-1)


def neuron_attribution(v: torch.Tensor, w_out: torch.Tensor, post_mean: torch.Tensor) -> torch.Tensor:
    """``[d_mlp]`` g_i = cos(v̂, x̄_i·W_out[i]) for ``w_out`` ``[d_mlp, d_model]`` and the mean neuron activations
    ``post_mean`` ``[d_mlp]`` (``mlp.hook_post``, averaged over the positive and negative prompts).

    Example: ``neuron_attribution(vectors[5].v_mlp, lm.weight("W_out", 5), vectors[5].post_mean)``"""
    if w_out.ndim != 2 or post_mean.shape != (w_out.shape[0],) or v.shape != (w_out.shape[1],):
        raise shape_error("neuron_attribution", "post_mean", f"[{w_out.shape[0]}] with v [{w_out.shape[1]}]",
                          (tuple(post_mean.shape), tuple(v.shape)))
    out = post_mean.double()[:, None] * w_out.double()
    return torch.nn.functional.cosine_similarity(out, v.double()[None], dim=-1)


@dataclass(frozen=True)
class ComponentEdit:
    """One rank-1 edit: ``kind`` ``"head"`` (row block ``index`` of W_O) or ``"neuron"`` (row ``index`` of W_out) of
    ``layer``; ``lam`` its signed magnitude, ``g`` the attribution it came from, ``v`` the unit direction written
    (``[d_model]``) and ``k`` the unit read-out direction of a head (``[d_head]``; None for a neuron, whose sign is
    folded into ``lam``).

    Example: ``e: ComponentEdit = steer2edit(lm, vectors, rho=0.5)[0]; e.kind, e.layer, e.index, e.delta().shape``"""

    kind: str
    layer: int
    index: int
    lam: float
    g: float
    v: torch.Tensor
    k: torch.Tensor | None = None

    def delta(self) -> torch.Tensor:
        """The change of the edited rows (``[d_head, d_model]`` for a head, ``[d_model]`` for a neuron).

        Example: ``steer2edit(lm, vectors, rho=0.5)[0].delta()``"""
        if self.kind == "head":
            return self.lam * torch.outer(self.k.double(), self.v.double())
        return self.lam * self.v.double()


def head_edit(layer: int, head: int, lam: float, g: float, v: torch.Tensor, w_o_head: torch.Tensor) -> ComponentEdit:
    """The edit of head ``head``: k̂ = normalise(W_O[head]·v̂) (``w_o_head`` ``[d_head, d_model]``).

    Example: ``head_edit(5, 3, lam=2.0, g=0.8, v=vectors[5].v_attn, w_o_head=lm.weight("W_O", 5)[3])``"""
    v_hat = v.double() / v.double().norm()
    k = w_o_head.double() @ v_hat
    norm = k.norm()
    k_hat = k / norm if float(norm) > 0 else k
    return ComponentEdit("head", layer, head, float(lam), float(g), v_hat, k_hat)


def neuron_edit(layer: int, neuron: int, lam: float, g: float, v: torch.Tensor,
                w_out_row: torch.Tensor) -> ComponentEdit:
    """The edit of neuron ``neuron``: W_out[i] += λ·sign(⟨W_out[i], v̂⟩)·v̂ (the sign is folded into ``lam``).

    Example: ``neuron_edit(5, 100, lam=1.5, g=0.6, v=vectors[5].v_mlp, w_out_row=lm.weight("W_out", 5)[100])``"""
    v_hat = v.double() / v.double().norm()
    sign = 1.0 if float(w_out_row.double() @ v_hat) > 0 else -1.0  # edit.py: k_sign = 1 if k > 0 else -1
    return ComponentEdit("neuron", layer, neuron, float(lam) * sign, float(g), v_hat, None)


def steer2edit(lm: LoadedModel, vectors: dict, *, rho: float, rho_mlp: float | None = None,
               alpha: float = 0.95) -> list[ComponentEdit]:
    """The Steer2Edit edits of every layer in ``vectors`` (:func:`workbench.intervene.steer.contrast_vectors`):
    attributions of every head (against v̂_attn) and neuron (against v̂_mlp), elastic-net λ with ``rho`` for heads and
    ``rho_mlp`` (default ``rho``) for neurons, and a rank-1 edit for each component with λ ≠ 0 (λ = 0 components are
    left out: sparsity is the point). ``rho`` ≤ 0 edits no head, ``rho_mlp`` ≤ 0 no neuron (edit.py's grids use −1).

    Example: ``edits = steer2edit(lm, contrast_vectors(lm, pos, neg, layers=[4, 5]), rho=0.5, alpha=0.95)``"""
    rho_mlp = rho if rho_mlp is None else rho_mlp
    edits = []
    for layer, vec in vectors.items():
        w_o, w_out = lm.weight("W_O", layer).detach(), lm.weight("W_out", layer).detach()
        g_h = head_attribution(vec.v_attn.to(w_o.device), w_o, vec.z_mean.to(w_o.device))
        g_n = neuron_attribution(vec.v_mlp.to(w_out.device), w_out, vec.post_mean.to(w_out.device))
        lam_h = elastic_net_lambda(g_h, rho=rho, alpha=alpha)
        lam_n = elastic_net_lambda(g_n, rho=rho_mlp, alpha=alpha)
        v_mlp = vec.v_mlp.to(w_out.device).double()
        lam_n = torch.where(w_out.double() @ (v_mlp / v_mlp.norm()) != 0, lam_n, torch.zeros_like(lam_n))
        heads = [head_edit(layer, j, float(lam_h[j]), float(g_h[j]), vec.v_attn, w_o[j])
                 for j in lam_h.nonzero()[:, 0].tolist()]
        edits += [e for e in heads if float(e.k.norm()) > 0]  # edit.py skips a head with W_O[j]·v̂ = 0
        edits += [neuron_edit(layer, i, float(lam_n[i]), float(g_n[i]), vec.v_mlp, w_out[i])
                  for i in lam_n.nonzero()[:, 0].tolist()]
    return edits


def _rows(lm: LoadedModel, edit: ComponentEdit) -> tuple[torch.Tensor, slice | int]:
    """The live weight matrix (as_matrix orientation, a view of the parameter) and the rows ``edit`` changes."""
    kind = KINDS.get(edit.kind)
    if kind is None:
        raise config_error("apply_edits", "kind", f"one of {list(KINDS)}", edit.kind)
    n_layers = lm.facts.n_layers
    if not 0 <= edit.layer < n_layers:
        raise config_error("apply_edits", "layer", f"an int in [0, {n_layers})", edit.layer)
    (wp,) = [p for p in lm.parameters([kind]) if p.layer == edit.layer]
    matrix = wp.matrix(wp.param.data)
    if edit.kind == "head":
        d_head = lm.facts.d_head
        if not 0 <= edit.index < lm.facts.n_heads:
            raise config_error("apply_edits", "index", f"a head in [0, {lm.facts.n_heads})", edit.index)
        return matrix, slice(edit.index * d_head, (edit.index + 1) * d_head)
    if not 0 <= edit.index < matrix.shape[0]:
        raise config_error("apply_edits", "index", f"a neuron in [0, {matrix.shape[0]})", edit.index)
    return matrix, edit.index


class EditHandle:
    """Edits applied to a model's weights; :meth:`revert` puts back the original rows bit for bit (they are saved
    before the first change). Usable as a context manager.

    Example: ``with EditHandle(lm, edits) as handle: handle.state  # "applied"; reverted on exit``"""

    def __init__(self, lm: LoadedModel, edits: Sequence[ComponentEdit]) -> None:
        self.lm = lm
        self.edits = list(edits)
        self._saved: list[tuple[torch.Tensor, slice | int, torch.Tensor]] = []
        self.active = False
        self.reverted = False  # True once edits that were in the weights have been taken out again

    def apply(self) -> EditHandle:
        """Write the edits into the weights (every edit validated before any weight changes; the original rows saved
        first); a no-op when already applied. Returns the handle.

        Example: ``handle = EditHandle(lm, edits).apply()``"""
        if self.active:
            return self
        self.reverted = False
        targets = [self._target(e) for e in self.edits]  # validate everything before touching any weight
        try:
            with torch.no_grad():
                for (matrix, rows), edit in zip(targets, self.edits):
                    self._saved.append((matrix, rows, matrix[rows].clone()))
                    matrix[rows] = self._updated(edit, matrix[rows])
        except BaseException:
            self.active = True
            self.revert()
            raise
        self.active = True
        return self

    def _target(self, edit: ComponentEdit) -> tuple[torch.Tensor, slice | int]:
        """The live matrix (a view of the parameter) and the rows ``edit`` changes; raises before any change."""
        return _rows(self.lm, edit)

    def _updated(self, edit: ComponentEdit, current: torch.Tensor) -> torch.Tensor:
        """The new value of the rows ``edit`` changes, from their ``current`` value."""
        change = edit.delta().to(current.device, current.dtype)
        if change.shape != current.shape:
            raise shape_error("apply_edits", "edit", f"a change of shape {tuple(current.shape)}", tuple(change.shape))
        return current + change

    def revert(self) -> None:
        """Restore every edited row to its saved original (in reverse order, so overlapping edits unwind).

        Example: ``handle.revert()``"""
        with torch.no_grad():
            for matrix, rows, original in reversed(self._saved):
                matrix[rows] = original
        self._saved.clear()
        self.reverted = self.reverted or self.active
        self.active = False

    @property
    def state(self) -> str:
        """``"applied"`` (the edits are in the weights), ``"reverted"`` or ``"not applied"``."""
        return "applied" if self.active else "reverted" if self.reverted else "not applied"

    def __repr__(self) -> str:
        return f"EditHandle(model={getattr(self.lm, 'name', '?')!r}, edits={len(self.edits)}, state={self.state!r})"

    def _repr_html_(self) -> str:
        """Notebook summary: the model, whether the edits are in its weights, and one row per edit (no tensors)."""
        import html

        from workbench.results import table_html

        kinds = {kind: sum(e.kind == kind for e in self.edits) for kind in KINDS}
        rows = [[e.kind, e.layer, e.index, KINDS.get(e.kind, "?"), e.lam, e.g] for e in self.edits[:_MAX_ROWS]]
        more = f"<p>… and {len(self.edits) - _MAX_ROWS} more edits</p>" if len(self.edits) > _MAX_ROWS else ""
        head = (f"{len(self.edits)} rank-1 edits ({kinds['head']} heads, {kinds['neuron']} neurons) of "
                f"{getattr(self.lm, 'name', '?')}: {self.state}")
        return (f"<h4>{html.escape(head)}</h4>"
                f"{table_html(['kind', 'layer', 'index', 'matrix', 'λ', 'g'], rows)}{more}")

    def __enter__(self) -> EditHandle:
        return self.apply()

    def __exit__(self, *exc) -> None:
        self.revert()


def apply_edits(lm: LoadedModel, edits: Sequence[ComponentEdit]) -> EditHandle:
    """Apply ``edits`` to ``lm``'s weights now; call ``.revert()`` on the handle (or use ``with edited(...)``).

    Example: ``handle = apply_edits(lm, edits); handle.revert()``"""
    return EditHandle(lm, edits).apply()


@contextmanager
def edited(lm: LoadedModel, edits: Sequence[ComponentEdit]) -> Iterator[EditHandle]:
    """Within the block ``lm`` runs with ``edits`` in its weights; reverted exactly on exit, even on error.

    Example: ``with edited(lm, edits): greedy_continuations(lm, ["I think that"], max_new_tokens=20)``"""
    handle = EditHandle(lm, edits).apply()
    try:
        yield handle
    finally:
        handle.revert()


def save_edits(edits: Sequence[ComponentEdit], path: str | Path) -> Path:
    """Write ``edits`` to ``path`` (a folder): ``edits.json`` (kind, layer, index, λ, g) and ``factors.safetensors``
    (v and k of each edit, float64), atomically.

    Example: ``save_edits(edits, "runs/sentiment-edits")``"""
    from safetensors.torch import save_file

    from workbench.atomic import replace_folder

    path = Path(path)
    meta = {"format": EDIT_FORMAT, "edits": [{"kind": e.kind, "layer": e.layer, "index": e.index, "lam": e.lam,
                                              "g": e.g} for e in edits]}
    tensors = {}
    for i, e in enumerate(edits):
        tensors[f"{i}.v"] = e.v.double().contiguous().cpu()
        if e.k is not None:
            tensors[f"{i}.k"] = e.k.double().contiguous().cpu()

    def fill(tmp: Path) -> None:
        save_file(tensors, str(tmp / "factors.safetensors"))
        (tmp / "edits.json").write_text(json.dumps(meta, indent=1))

    replace_folder(path, fill)
    return path


def load_edits(path: str | Path) -> list[ComponentEdit]:
    """The edits saved by :func:`save_edits` (identical factors, bit for bit).

    Example: ``apply_edits(lm, load_edits("runs/sentiment-edits"))``"""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        meta = json.loads((path / "edits.json").read_text())
        tensors = load_file(str(path / "factors.safetensors"))
    except (OSError, ValueError) as exc:
        raise config_error("load_edits", "path", "a folder written by save_edits", str(path)) from exc
    if meta.get("format") != EDIT_FORMAT:
        raise config_error("load_edits", "path", f"edits of format {EDIT_FORMAT}", meta.get("format"))
    return [ComponentEdit(m["kind"], m["layer"], m["index"], m["lam"], m["g"], tensors[f"{i}.v"],
                          tensors.get(f"{i}.k")) for i, m in enumerate(meta["edits"])]
