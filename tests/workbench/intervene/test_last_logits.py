"""The cheaper patched forwards (last_logits: start at a layer, unembed the last row) equal the full forward."""

from __future__ import annotations

import pytest
import torch

from workbench.capture.hooks import count_hooks, hooks_attached, site
from workbench.errors import ConfigError, ShapeError
from workbench.intervene import Patch, das, illusion, patching, record
from workbench.intervene.das import _loss, train_das
from workbench.intervene.illusion import diagnose
from workbench.intervene.metrics import logit_diff
from workbench.intervene.patch import Prefix, cached_prefix, forward, last_logits, prefix_state, resume_point
from workbench.tasks.ioi import ioi_pairs
from workbench_analyses.subspace_patching import _same_length, _token_ids


def _pair_tokens(lm, n=4):
    pairs = _same_length(lm, ioi_pairs(lm.tokenizer, 8 * n, seed=1, templates=[0]), n)
    return _token_ids(lm, pairs)


def _block_calls(lm):
    """Which blocks' Hugging Face layers ran, in order (torch hooks on the wrapped layers, not HookPoints)."""
    calls: list[int] = []
    handles = [block.original_component.register_forward_hook(lambda m, a, o, i=i: calls.append(i))
               for i, block in enumerate(lm.model.blocks)]
    return calls, handles


def test_last_logits_equal_the_full_forward_and_leave_the_model_as_it_was(tiny_ioi_model):
    lm = tiny_ioi_model
    data = _pair_tokens(lm)
    with torch.no_grad():
        full = forward(lm, data["base"])
        assert torch.allclose(last_logits(lm, data["base"]), full[:, -1], atol=1e-6)
        for layer in range(lm.facts.n_layers):
            name = site("resid_pre", layer)
            acts = record(lm, data["source"], [name])
            start = resume_point(lm, data["base"], [site("resid_post", layer)])
            assert (start is None) == (layer == 0)
            for pos in (4, -1):
                with patching(lm, [Patch(name, positions=[pos])], acts):
                    want = forward(lm, data["base"])[:, -1]
                    got = last_logits(lm, data["base"], start=(layer, record(lm, data["base"], [name])[name]))
                assert torch.allclose(got, want, atol=1e-5)
        # the skipped blocks' forwards are restored: a later full forward (of another batch size) is unchanged
        assert torch.allclose(forward(lm, data["base"][:3]), full[:3], atol=1e-6)
    assert count_hooks(lm.hook_points()) == 0


def test_the_blocks_before_the_start_do_not_run_and_record_stops_after_its_sites(tiny_ioi_model):
    lm = tiny_ioi_model
    data = _pair_tokens(lm)
    calls, handles = _block_calls(lm)
    try:
        start = resume_point(lm, data["base"], [site("mlp_post", 1)])
        assert calls == [0] and start[0] == 1  # recording block 1's input runs block 0 only
        calls.clear()
        with torch.no_grad():
            last_logits(lm, data["base"], start=start)
        assert calls == [1]
        calls.clear()
        with torch.no_grad():
            forward(lm, data["base"])
        assert calls == [0, 1]
    finally:
        for handle in handles:
            handle.remove()


def test_das_loss_and_gradient_equal_the_full_forward(tiny_ioi_model):
    lm = tiny_ioi_model
    data = _pair_tokens(lm)
    das_site = site("resid_post", 1)
    acts = record(lm, data["source"], [das_site])[das_site]
    start = resume_point(lm, data["base"], [das_site])
    patch = Patch(das_site, positions=[-1])
    grads = []
    for s in (None, start):
        basis = torch.randn(lm.facts.d_model, 1, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
        loss = _loss(lm, patch, basis, data["base"], acts, data["cf"], s)
        loss.backward()
        grads.append((float(loss.detach()), basis.grad.clone()))
    assert grads[0][0] == pytest.approx(grads[1][0], abs=1e-6)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-6)


def test_the_prefix_forward_equals_the_full_forward_for_last_position_patches(tiny_ioi_model):
    """Only the last token runs, from the patched block on, attending to the unpatched prefix's keys and values."""
    lm = tiny_ioi_model
    data = _pair_tokens(lm)
    calls, handles = _block_calls(lm)
    g = torch.Generator().manual_seed(0)
    try:
        for name, basis in ((site("resid_post", 0), None), (site("mlp_post", 1), torch.randn(64, 2, generator=g)),
                            (site("resid_pre", 0), torch.randn(32, generator=g)), (site("z", 1), None)):
            acts = record(lm, data["source"], [name])[name]
            prefix = prefix_state(lm, data["base"], [name])
            assert isinstance(prefix, Prefix) and prefix.resid.shape[1] == 1
            with torch.no_grad():
                with patching(lm, [Patch(name, positions=[-1], basis=basis)], {name: acts}):
                    want = forward(lm, data["base"])[:, -1]
                calls.clear()
                rows = torch.tensor([2, 0])
                with patching(lm, [Patch(name, positions=[-1], basis=basis)], {name: acts[rows][:, -1:]}):
                    got = last_logits(lm, data["base"][rows], start=prefix.rows(rows))
            assert calls == list(range(prefix.layer, lm.facts.n_layers))
            assert torch.allclose(got, want[rows], atol=1e-5)
    finally:
        for handle in handles:
            handle.remove()
    assert count_hooks(lm.hook_points()) == 0


def _no_shortcuts(monkeypatch):
    """train_das and diagnose as before the shortcuts: every forward is the model's full forward."""
    for module in (das, illusion):
        monkeypatch.setattr(module, "prefix_state", lambda *a, **k: None)
        monkeypatch.setattr(module, "resume_point", lambda *a, **k: None)
    monkeypatch.setattr(das, "last_logits", lambda lm, x, start=None: forward(lm, x)[:, -1])
    monkeypatch.setattr(illusion, "last_logits", lambda lm, x, start=None: forward(lm, x)[:, -1])


def test_das_and_the_diagnostics_equal_their_full_forward_versions(tiny_ioi_model, monkeypatch):
    lm = tiny_ioi_model
    data = _pair_tokens(lm, 8)
    readers = torch.randn(lm.facts.d_model, 3, generator=torch.Generator().manual_seed(1))
    direction = readers[:, 0] + torch.ones(lm.facts.d_model)  # partly outside the readers' span: both parts patch
    runs = []
    for shortcuts in (True, False):
        if not shortcuts:
            _no_shortcuts(monkeypatch)
        fit = train_das(lm, data["base"], data["source"], data["cf"], site=site("resid_post", 1), epochs=3,
                        batch_size=3, seed=0)
        diag = diagnose(lm, site=site("resid_post", 1), position=-1, direction=direction, readers=readers,
                        base=data["base"], source=data["source"], answer=data["answer"], counterfactual=data["cf"],
                        baseline_site=site("resid_post", 0), batch_size=3)
        runs.append((fit, diag))
    (fast_fit, fast), (full_fit, full) = runs
    assert fast_fit.train_loss == pytest.approx(full_fit.train_loss, abs=1e-6)
    assert torch.allclose(fast_fit.basis, full_fit.basis, atol=1e-5)
    for name, effect in fast.effects.items():  # the tiny model's logit differences are ~1e-4: ratios of them are
        for key, value in effect.to_dict().items():  # compared relatively, the differences themselves absolutely
            want = full.effects[name].to_dict()[key]
            close = pytest.approx(want, abs=1e-7) if key.startswith("ld_") or key in ("n", "interchange_accuracy",
                                                                                       "sign_rate") else \
                pytest.approx(want, rel=1e-3, nan_ok=True)
            assert value == close, (name, key)
    assert fast.null_feature_corr == pytest.approx(full.null_feature_corr, abs=1e-6)


def test_refusals(tiny_ioi_model):
    lm = tiny_ioi_model
    data = _pair_tokens(lm)
    start = resume_point(lm, data["base"], [site("resid_pre", 1)])
    with pytest.raises(ShapeError, match=r"start\[1\]"):
        last_logits(lm, data["base"][:2], start=start)
    with pytest.raises(ConfigError, match=r"start\[0\]"):
        last_logits(lm, data["base"], start=(5, start[1]))
    # a hook in a skipped block would silently not fire: refused
    with hooks_attached(lm.hook_points(), {site("resid_post", 0): lambda x, hook=None: x}):
        with pytest.raises(ConfigError, match="would not fire"):
            last_logits(lm, data["base"], start=start)
    assert count_hooks(lm.hook_points()) == 0


@pytest.mark.slow
def test_fast_heatmap_cells_equal_the_full_forward_on_the_bundled_model(real_model):
    lm = real_model
    data = _pair_tokens(lm, 4)
    differs = int((data["base"] != data["source"]).any(0).nonzero()[0])
    with torch.no_grad():
        for layer, pos in ((3, differs), (17, -1), (lm.facts.n_layers - 1, differs + 1)):
            name = site("resid_pre", layer)
            acts = record(lm, data["source"], [name])
            with patching(lm, [Patch(name, positions=[pos])], acts):
                want = forward(lm, data["base"])[:, -1]
                got = last_logits(lm, data["base"], start=(layer, record(lm, data["base"], [name])[name]))
            # as the heat map does it: the patched row in the residual block `layer` starts from, the base run's
            # keys and values before c, positions c.. recomputed
            resid = record(lm, data["base"], [name])[name]
            resid[:, pos] = acts[name][:, pos]
            c = differs - 1
            cut = last_logits(lm, data["base"], start=Prefix(layer=layer, resid=resid[:, c:],
                                                             entries=cached_prefix(lm, data["base"], c)))
            for fast in (got, cut):
                assert torch.allclose(fast, want, atol=1e-4, rtol=1e-5)
                assert torch.allclose(logit_diff(fast, data["answer"], data["cf"]),
                                      logit_diff(want, data["answer"], data["cf"]), atol=1e-4)
    das_site = site("mlp_post", 12)
    acts = record(lm, data["source"], [das_site])[das_site]
    basis = torch.randn(acts.shape[-1], 1, generator=torch.Generator().manual_seed(0))
    full = _loss(lm, Patch(das_site, positions=[-1]), basis, data["base"], acts, data["cf"])
    fast = _loss(lm, Patch(das_site, positions=[-1]), basis, data["base"], acts, data["cf"],
                 resume_point(lm, data["base"], [das_site]))
    last = _loss(lm, Patch(das_site, positions=[-1]), basis, data["base"], acts[:, -1:], data["cf"],
                 prefix_state(lm, data["base"], [das_site]))
    assert float(fast.detach()) == pytest.approx(float(full.detach()), abs=1e-5)
    assert float(last.detach()) == pytest.approx(float(full.detach()), abs=1e-5)
