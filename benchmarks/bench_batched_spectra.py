"""Batched spectra: ``workbench.spectra`` vs a per-matrix scipy loop, on the model's weights and residual Grams.

Target (the issue): ours is faster than scipy, i.e. ours / scipy < 1.0. The RESULT line holds the *worse* of the
two sets (weights, Grams), so PASS means faster on both; each set's own ratio is in the table.

* Weights: every per-layer matrix from ``lm.weights()``, float32. Per-head 3-D tensors are flattened into one 2-D
  matrix per layer, ``[n_heads * d_head, d_model]``: W_Q [9, 576, 64] -> [576, 576], W_K / W_V [3, 576, 64] ->
  [192, 576], W_O [9, 64, 576] -> [576, 576]; W_in / W_gate stay [576, 1536] and W_out [1536, 576] (TL orientation).
  That is 7 matrices x 30 layers = 210 in 4 shapes. Ours: one ``batched_singular_values(list)`` call with its
  default ``method="auto"``, batched per shape (for float32 input that is the float64 Gram of the smaller side and
  a batched ``eigvalsh``); the row ``method="svd"`` times torch's batched ``svdvals`` for comparison. Scipy:
  ``scipy.linalg.svdvals`` on each float32 numpy array, defaults. W_E / W_U (49152 x 576) are timed separately,
  once, without warm-up (they would dominate the sum).
* Grams: the 30 residual co-moments [30, 576, 576] (float64) of a real capture of ``blocks.*.hook_resid_post``.
  Ours: one ``singular_values_from_gram`` call with its default ``eig_driver="auto"`` (on CPU: LAPACK ``syevd``
  through numpy, the stack in one call); the row ``eig_driver="torch"`` times torch's batched ``eigvalsh`` (MKL
  ``syevd``), the route before issue 17. Scipy: ``scipy.linalg.eigvalsh`` per matrix (LAPACK ``syevr``), then sqrt
  of the clipped eigenvalues.
"""

from __future__ import annotations

import time

import common
import numpy as np
import scipy.linalg
import torch

import workbench
from workbench.models.loaded import LoadedModel
from workbench.spectra import batched_singular_values, singular_values_from_gram

TARGET = 1.0


def flatten(kind: str, w: torch.Tensor) -> torch.Tensor:
    """Per-layer 2-D matrix ``[n_heads * d_head, d_model]`` for the per-head kinds; others unchanged."""
    if kind in ("W_Q", "W_K", "W_V"):  # [h, d_model, d_head] -> [h * d_head, d_model]
        return w.permute(0, 2, 1).reshape(-1, w.shape[1])
    if kind == "W_O":  # [h, d_head, d_model] -> [h * d_head, d_model]
        return w.reshape(-1, w.shape[2])
    return w


def compare(ours: list[np.ndarray], ref: list[np.ndarray]) -> tuple[float, float]:
    """(max |Δσ| / σ_max over all matrices, max elementwise |Δσ| / σ over values with σ ≥ 1e-3 σ_max)."""
    normwise, elementwise = 0.0, 0.0
    for a, b in zip(ours, ref, strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        top = max(b[0], 1e-300)
        normwise = max(normwise, float(np.abs(a - b).max() / top))
        keep = b >= 1e-3 * top
        elementwise = max(elementwise, float((np.abs(a - b)[keep] / b[keep]).max()))
    return normwise, elementwise


def main() -> None:
    args = common.parse_args(__doc__.splitlines()[0])
    repeats = args.repeats
    lm = common.load_model()
    n_layers = 6 if args.quick else lm.n_layers

    mats, shapes = [], {}
    with torch.no_grad():
        for kind, layer, w in lm.weights():
            if layer is None or layer >= n_layers:
                continue
            m = flatten(kind, w.detach()).to(torch.float32).contiguous().clone()
            mats.append(m)
            shapes[tuple(m.shape)] = shapes.get(tuple(m.shape), 0) + 1
    arrays = [m.numpy() for m in mats]
    print(f"{len(mats)} weight matrices of {n_layers} layers, shapes {shapes}; torch threads "
          f"{torch.get_num_threads()}; best of {repeats} after 1 warm-up, round-robin")

    # Real residual Grams (float64 centred co-moments) from a small capture.
    cap = workbench.capture(lm, common.default_prompts(16), sites="blocks.*.hook_resid_post", batch_size=8)
    grams = torch.stack([cap[s].comoment for s in cap.sites[:n_layers]])
    gram_arrays = [g.numpy() for g in grams]
    print(f"{grams.shape[0]} residual Grams {tuple(grams.shape[1:])} float64 from {cap.n_tokens} tokens\n")

    out: dict[str, object] = {}

    def ours_weights() -> None:
        out["w_ours"] = batched_singular_values(mats)

    def ours_weights_svd() -> None:
        batched_singular_values(mats, method="svd")

    def scipy_weights() -> None:
        out["w_scipy"] = [scipy.linalg.svdvals(a) for a in arrays]

    def ours_grams() -> None:
        out["g_ours"] = singular_values_from_gram(grams)

    def ours_grams_torch() -> None:
        singular_values_from_gram(grams, eig_driver="torch")

    def scipy_grams() -> None:
        out["g_scipy"] = [np.sqrt(np.clip(scipy.linalg.eigvalsh(g), 0, None))[::-1] for g in gram_arrays]

    variants = {"w_ours": ours_weights, "w_scipy": scipy_weights, "w_svd": ours_weights_svd, "g_ours": ours_grams,
                "g_scipy": scipy_grams, "g_torch": ours_grams_torch}
    groups: dict[tuple[int, int], list[int]] = {}
    for i, m in enumerate(mats):
        groups.setdefault(tuple(m.shape), []).append(i)
    for shape, idx in groups.items():  # per-shape breakdown of the weights row
        variants[f"{shape}_ours"] = lambda idx=idx: batched_singular_values([mats[i] for i in idx])
        variants[f"{shape}_scipy"] = lambda idx=idx: [scipy.linalg.svdvals(arrays[i]) for i in idx]
    best = common.best_of_interleaved(variants, repeats=repeats, warmup=1)
    w_norm, w_elem = compare([s.numpy() for s in out["w_ours"]], out["w_scipy"])
    # σ below the Gram floor are returned as exactly 0 by ours: compare values above 1e-3 σ_max elementwise.
    g_norm, g_elem = compare(list(out["g_ours"].numpy()), out["g_scipy"])

    # Float64 reference for the weights: which float32 result is closer to the truth?
    ref = [torch.linalg.svdvals(m.double()).numpy() for m in mats]
    ours_err, _ = compare([s.numpy() for s in out["w_ours"]], ref)
    scipy_err, _ = compare(out["w_scipy"], ref)

    rows = [[f"weights: {len(mats)} matrices, float32", best["w_ours"], best["w_scipy"],
             best["w_ours"] / best["w_scipy"], f"{w_norm:.1e}", f"{w_elem:.1e}"]]
    for shape, idx in groups.items():
        o, sc = best[f"{shape}_ours"], best[f"{shape}_scipy"]
        rows.append([f"  of which {len(idx)} x {shape[0]}x{shape[1]} (timed alone)", o, sc, o / sc, "", ""])
    rows.append(['  same set, ours with method="svd"', best["w_svd"], best["w_scipy"], best["w_svd"] / best["w_scipy"],
                 "", ""])
    rows.append([f"Grams: [{grams.shape[0]}, 576, 576] float64", best["g_ours"], best["g_scipy"],
                 best["g_ours"] / best["g_scipy"], f"{g_norm:.1e}", f"{g_elem:.1e}"])
    rows.append(['  same Grams, ours with eig_driver="torch"', best["g_torch"], best["g_scipy"],
                 best["g_torch"] / best["g_scipy"], "", ""])
    if not args.quick:
        rows.append(embedding_row(lm))
    headers = ["set", "ours s", "scipy s", "ours/scipy", "max|Δ|/σmax", "max rel Δ (σ≥1e-3σmax)"]
    print(common.table(headers, rows))
    print(f"\nweights vs a float64 reference, max |Δ|/σ_max: ours {ours_err:.1e}, scipy {scipy_err:.1e}")
    print(f"({common.load_note()})")
    worst = max(best["w_ours"] / best["w_scipy"], best["g_ours"] / best["g_scipy"])
    common.result("batched_spectra", worst, TARGET, below=True)


def embedding_row(lm: LoadedModel) -> list[object]:
    """W_E (and W_U when it is not W_E transposed), one timed call each, no warm-up."""

    w_e = lm.weight("W_E").detach().float().contiguous()
    w_u = lm.weight("W_U").detach().float()
    tied = w_u.shape == w_e.T.shape and bool(torch.equal(w_u, w_e.T))
    todo = [w_e] if tied else [w_e, w_u.contiguous()]
    ours = scipy_s = 0.0
    ours_vals, scipy_vals = [], []
    for m in todo:
        started = time.perf_counter()
        ours_vals += batched_singular_values([m])
        ours += time.perf_counter() - started
        a = m.numpy()
        started = time.perf_counter()
        scipy_vals.append(scipy.linalg.svdvals(a))
        scipy_s += time.perf_counter() - started
    norm, elem = compare([v.numpy() for v in ours_vals], scipy_vals)
    label = "W_E (= W_U transposed, tied)" if tied else "W_E + W_U"
    return [f"{label}, 1 call, separate", ours, scipy_s, ours / scipy_s, f"{norm:.1e}", f"{elem:.1e}"]


if __name__ == "__main__":
    main()
