"""Parity of subspace patching, DAS and the patching metrics with the reference code amakelov/activation-patching-
illusion. Each ``ref_*`` below is an independent numpy transcription of a reference function, written from the
reference source (model_utils.py, data_utils.py, ioi_analysis.ipynb, ioi_interventions.ipynb; not from our code), run
on small synthetic float64 inputs; agreement to 1e-8 (the reference runs in float32 on GPU; these tests feed both
sides the same float64 numbers, so no float32 tolerance is needed)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from tests.workbench.intervene.distilled import Distilled, pairs
from workbench.errors import ConfigError, ShapeError
from workbench.intervene import subspace_patch
from workbench.intervene.das import train_das
from workbench.intervene.illusion import split_direction
from workbench.intervene.metrics import argmax_hits, fldd, logit_diff, patch_effect
from workbench.tasks import ioi

TOL = 1e-8


# ---------------------------------------------------------------------------------------------------------------------
# transcriptions of the reference (numpy)


def ref_direction_patch(base, source, v):  # model_utils.py, DirectionPatch.__call__
    base_proj = np.tensordot(base, v, axes=v.ndim)  # einsum("batch ..., ... -> batch")
    source_proj = np.tensordot(source, v, axes=v.ndim)
    norm = np.linalg.norm(v)
    return base + np.multiply.outer((source_proj - base_proj) / norm ** 2, v)  # einsum("batch, ... -> batch ...")


def ref_rotation_patch(base, source, weight, dim):  # model_utils.py, Rotation.__call__ with RotationMatrix
    base_rot = np.einsum("ba,ar->br", base, weight)  # RotationMatrix.forward
    source_rot = np.einsum("ba,ar->br", source, weight)
    patched_rot = np.concatenate([source_rot[:, :dim], base_rot[:, dim:]], axis=1)
    return np.einsum("br,ra->ba", patched_rot, weight.T)  # RotationMatrix.inverse


def ref_eval_patch_logitdiffs(logits_base, logits_patched, answer_tokens_base, patched_answer_tokens):
    # model_utils.py, Patcher.run_patching (gathers) + eval_patch_logitdiffs
    answer_logits_base = np.take_along_axis(logits_base, answer_tokens_base, axis=1)
    answer_logits_patched = np.take_along_axis(logits_patched, patched_answer_tokens, axis=1)
    ld_base = answer_logits_base[:, 0] - answer_logits_base[:, 1]
    ld_patched = answer_logits_patched[:, 0] - answer_logits_patched[:, 1]
    return ld_base, ld_patched


def ref_fraction_recovered(logits_base, logits_patched, logits_full, answer_tokens_base, patched_answer_tokens):
    # model_utils.py, patch_training: ld_lost_*_baseline (Full() patcher) and ld_fraction_recovered_*
    ld_base_bl, ld_patched_bl = ref_eval_patch_logitdiffs(logits_base, logits_full, answer_tokens_base,
                                                          patched_answer_tokens)
    ld_lost_baseline = (ld_base_bl - ld_patched_bl).mean()
    ld_base, ld_patched = ref_eval_patch_logitdiffs(logits_base, logits_patched, answer_tokens_base,
                                                    patched_answer_tokens)
    return (ld_base - ld_patched).mean() / ld_lost_baseline


def ref_get_patching_acc_and_ld(logits_patched, patched_answer_tokens, base_answer_tokens):
    # ioi_analysis.ipynb, get_patching_acc_and_ld
    patched_predictions = logits_patched.argmax(axis=-1)
    interchange_accuracy = (patched_predictions == patched_answer_tokens[:, 0]).astype(float).mean()
    base_answer_logits_patched = np.take_along_axis(logits_patched, base_answer_tokens, axis=1)
    logit_diff_ = (base_answer_logits_patched[:, 0] - base_answer_logits_patched[:, 1]).mean()
    return interchange_accuracy, logit_diff_


def ref_include_fractional_ld(logit_diff_, clean_ld):  # ioi_analysis.ipynb, include_fractional_ld (× 100 there)
    return 1 - logit_diff_ / clean_ld


def ref_decompose(v, W):  # ioi_analysis.ipynb, cell 3 / decompose_resid_along_namemovers
    Q, _ = np.linalg.qr(W)
    row = v @ Q @ Q.T
    return row, v - row


def ref_linear_lr(initial_lr, n_epochs):  # model_utils.py, patch_training: Adam + LinearLR, scheduler.step() per epoch
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=initial_lr)
    scheduler = torch.optim.lr_scheduler.LinearLR(opt, end_factor=0.1, total_iters=n_epochs)
    lrs = []
    for _ in range(n_epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return lrs


def ref_split(names, objects, places, templates):  # data_utils.py, train_distribution / test_distribution
    train = dict(names=names[:len(names) // 2], objects=objects[:len(objects) // 2],
                 places=places[:len(places) // 2], templates=templates[:2])
    test = dict(names=names[len(names) // 2:], objects=objects[len(objects) // 2:],
                places=places[len(places) // 2:], templates=templates[2:])
    return train, test


# ---------------------------------------------------------------------------------------------------------------------


def _rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("scale", [1.0, 0.01, 37.0])
def test_subspace_patch_equals_direction_patch_for_any_nonzero_v(scale):
    """model_utils.py DirectionPatch: a non-unit v patches along span(v), not ‖v‖² times it."""
    r = _rng(1)
    base, source, v = r.normal(size=(6, 9)), r.normal(size=(6, 9)), scale * r.normal(size=9)
    expected = ref_direction_patch(base.copy(), source, v)
    got = subspace_patch(torch.from_numpy(base), torch.from_numpy(source), torch.from_numpy(v)).cpu().numpy()
    assert np.abs(got - expected).max() < TOL
    both = subspace_patch(torch.from_numpy(base), torch.from_numpy(source), torch.from_numpy(v)[:, None]).cpu().numpy()
    assert np.abs(both - expected).max() < TOL


@pytest.mark.parametrize("dim", [1, 3])
def test_subspace_patch_equals_the_das_rotation_patch(dim):
    """model_utils.py Rotation(RotationMatrix, dim): rotate, take the first ``dim`` coordinates from the source,
    rotate back — the same as patching span(R[:, :dim])."""
    r = _rng(2)
    weight, _ = np.linalg.qr(r.normal(size=(8, 8)))
    base, source = r.normal(size=(5, 8)), r.normal(size=(5, 8))
    expected = ref_rotation_patch(base, source, weight, dim)
    got = subspace_patch(torch.from_numpy(base), torch.from_numpy(source), torch.from_numpy(weight[:, :dim])).cpu().numpy()
    assert np.abs(got - expected).max() < TOL
    # a non-orthonormal basis of the same span gives the same patch
    mixed = weight[:, :dim] @ (r.normal(size=(dim, dim)) + 3 * np.eye(dim))
    got = subspace_patch(torch.from_numpy(base), torch.from_numpy(source), torch.from_numpy(mixed)).cpu().numpy()
    assert np.abs(got - expected).max() < 1e-7 * max(1.0, np.abs(expected).max())


@pytest.mark.parametrize("basis, match", [(torch.zeros(4), "zero direction"),
                                          (torch.tensor([[1.0, 2.0], [2.0, 4.0], [0.0, 0.0], [1.0, 2.0]]),
                                           "rank-deficient"),
                                          (torch.full((4,), float("nan")), "NaN"), (torch.ones(3), "4 rows"),
                                          (torch.ones(4, 1, 1), "\\[d\\] or \\[d, k\\]")])
def test_subspace_patch_refuses_bad_bases(basis, match):
    x = torch.zeros(2, 4)
    with pytest.raises(ShapeError, match=match):
        subspace_patch(x, x, basis)


def _logits(r, n, vocab):
    return r.normal(size=(n, vocab)) * 3


def test_metrics_equal_the_reference_metrics():
    """get_patching_acc_and_ld (interchange accuracy: argmax over the vocabulary), include_fractional_ld (FLDD) and
    patch_training's ld_fraction_recovered against the whole-site baseline."""
    r = _rng(3)
    n, vocab = 40, 11
    io, s = r.integers(0, vocab, n), r.integers(0, vocab, n)
    s = np.where(s == io, (s + 1) % vocab, s)
    base_answers = np.stack([io, s], 1)  # PromptDataset.answer_tokens: (io, s)
    patched_answers = np.stack([s, io], 1)  # sample_das, labels="position", flip pairs: (s, io)
    clean, patched, full = _logits(r, n, vocab), _logits(r, n, vocab), _logits(r, n, vocab)
    patched[np.arange(0, n, 3), s[np.arange(0, n, 3)]] += 20  # some interchange hits
    clean[np.arange(n), io] += 4
    acc, ld_patched_mean = ref_get_patching_acc_and_ld(patched, patched_answers, base_answers)
    clean_ld = (np.take_along_axis(clean, base_answers, 1) @ np.array([1.0, -1.0])).mean()
    frac = ref_fraction_recovered(clean, patched, full, base_answers, patched_answers)

    t = lambda a: torch.from_numpy(a)  # noqa: E731
    ld_base = torch.from_numpy(clean[np.arange(n), io] - clean[np.arange(n), s])  # float64 (logit_diff is float32)
    assert torch.allclose(logit_diff(t(clean), t(io), t(s)).double(), ld_base, atol=1e-5)
    ld_p = torch.from_numpy(patched[np.arange(n), io] - patched[np.arange(n), s])
    ld_w = torch.from_numpy(full[np.arange(n), io] - full[np.arange(n), s])
    eff = patch_effect(ld_base, ld_p, hits=argmax_hits(t(patched), t(s)), ld_whole=ld_w)
    assert abs(eff.interchange_accuracy - acc) < TOL and 0 < acc < 1
    assert abs(eff.ld_patched - ld_patched_mean) < TOL
    assert abs(eff.fldd - ref_include_fractional_ld(ld_patched_mean, clean_ld)) < TOL
    assert abs(fldd(ld_base, ld_p) - eff.fldd) < TOL
    assert abs(eff.recovered - frac) < TOL
    assert eff.sign_rate == float((ld_p < 0).double().mean())  # the older, weaker rate, under its own name


def test_row_null_split_equals_the_qr_decomposition():
    """ioi_analysis.ipynb: Q, _ = qr(W_out[8]); v_row = v Q Qᵀ; v_null = v − v_row (full-rank readers)."""
    r = _rng(4)
    W, v = r.normal(size=(30, 12)), r.normal(size=30)
    row, null = ref_decompose(v, W)
    s = split_direction(torch.from_numpy(v), torch.from_numpy(W))
    assert np.abs(s.v_row.cpu().numpy() - row).max() < TOL and np.abs(s.v_null.cpu().numpy() - null).max() < TOL
    assert np.abs(null @ W).max() < 1e-5  # the reference's own check


def test_das_runs_the_notebook_schedule_and_keeps_the_final_basis():
    """ioi_interventions.ipynb: patch_training(initial_lr=0.01, n_epochs=30, batch_size=20): LinearLR(end_factor=0.1)
    with torch's default start_factor 1/3, stepped once per epoch, every epoch run, the final rotation used."""
    model = Distilled()
    base, source, _, cf = pairs(40)
    fit = train_das(model, base, source, cf, site="hook_hidden", seed=0)
    expected = ref_linear_lr(0.01, 30)
    assert len(fit.lrs) == 30 and max(abs(a - b) for a, b in zip(fit.lrs, expected)) < 1e-12
    assert len(fit.train_loss) == 30 and fit.best_epoch == 29 and not fit.stopped_early
    assert math.isclose(fit.lrs[0], 0.01 / 3, rel_tol=1e-9)
    assert math.isclose(fit.lrs[-1], 0.01 * (1 / 3 - (1 / 3 - 0.1) * 29 / 30), rel_tol=1e-9)
    plain = train_das(model, base, source, cf, site="hook_hidden", seed=0, epochs=3, start_factor=1.0)
    assert plain.lrs == pytest.approx([0.01, 0.01 * 0.7, 0.01 * 0.4])  # the 0.01 → 0.001 option (3 epochs)


def test_ioi_halves_follow_data_utils():
    """data_utils.py: names/objects/places split at len // 2, templates [:2] / [2:] of 3 (here the first ⌈T/2⌉)."""
    class Words:  # every name is one token
        unk_token_id = None

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": list(range(len(text.split())))}

    names = ioi.single_token_names(Words())
    train_ref, test_ref = ref_split(names, ioi.OBJECTS, ioi.PLACES, list(range(len(ioi.TEMPLATES))))
    assert ioi.split_templates("train") == list(range(7)) and ioi.split_templates("test") == list(range(7, 14))
    assert ref_split(["a"] * 4, [], [], [0, 1, 2])[0]["templates"] == [0, 1]  # the reference's 3 templates: 2 / 1
    for half, ref in (("train", train_ref), ("test", test_ref)):
        for p in ioi.ioi_pairs(Words(), 60, seed=1, half=half):
            io, s = p.answer.strip(), p.counterfactual.strip()
            assert io in ref["names"] and s in ref["names"]
            assert any(re.search(rf"\bthe {pl}\b", p.base.lower()) for pl in ref["places"])
            assert any(f" {ob} " in p.base + " " for ob in ref["objects"])
            assert p.template in ioi.split_templates(half)
    assert not set(train_ref["names"]) & set(test_ref["names"])
    with pytest.raises(ConfigError, match="'half'"):
        ioi.ioi_pairs(Words(), 4, half="dev")
    with pytest.raises(ConfigError, match="'templates'"):
        ioi.ioi_pairs(Words(), 4, half="test", templates=[0])
