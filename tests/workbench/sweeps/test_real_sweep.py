"""A real sweep (slow): the bundled SmolLM2-135M and Gemma 3 270M × activation_spectra and weight_spectra × two short
bundled prompt categories (poetry, list; at most 1500 tokens each), on a local Ray with two workers: 6 cells
(weight_spectra reads no prompts, so one cell per model). The numbers are checked against what they can be: effective
ranks within (1, min(tokens, d_model)] at every layer of each model, WeightWatcher's α finite for most matrices with
a median in a trained model's range. Measured: 53 s wall (nice'd, 2 cores) for the sweep, the weight_spectra cells the
longest (Gemma 3 22 s, SmolLM2 9 s), the activation cells 7-8 s each."""

from __future__ import annotations

import math
import time

import pytest

from workbench.sweeps import load_spec, open_store, run_sweep

MODELS = {"smollm2-135m": (30, 576), "gemma3-270m": (18, 640)}  # layers, d_model
PROMPTS = ("bundled:poetry", "bundled:list")
SPEC = f"""
analyses = ["activation_spectra", "weight_spectra"]
prompts = {list(PROMPTS)}
max_tokens = 1500
{"".join(f'''
[[models]]
source = "{name}"
''' for name in MODELS)}"""


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_real_sweep_of_two_bundled_models(tmp_path):
    spec, out = tmp_path / "real.toml", tmp_path / "out"
    spec.write_text(SPEC)
    started = time.monotonic()
    summary = run_sweep(load_spec(spec), out, max_parallel=2, progress=False)
    print(f"real sweep: {time.monotonic() - started:.0f} s wall; {summary.line()}")
    assert summary.line() == "sweep: 6 cells, 6 done now, 0 skipped (already done), 0 failed"
    store = open_store(out)
    cells = store.cells()
    print(cells[["label", "analysis", "prompts", "seconds"]].to_string())
    metrics = store.query("SELECT c.model, c.analysis, c.prompts, m.metric, m.layer, m.site, m.value "
                          "FROM metrics m JOIN cells c ON c.id = m.cell")
    for model, (n_layers, d_model) in MODELS.items():
        mine = metrics[metrics.model == model]
        for prompts in PROMPTS:
            act = mine[(mine.analysis == "activation_spectra") & (mine.prompts == prompts)]
            erank = act[act.metric == "erank (centred)"].set_index("site").value
            tokens = act[act.metric == "tokens"].set_index("site").value
            resid = erank[erank.index.str.endswith("hook_resid_post")]
            assert len(resid) == n_layers and len(erank) == 3 * n_layers  # resid_post, attn_out, mlp_out per layer
            assert 300 <= tokens.min() <= tokens.max() <= 1500
            assert (erank > 1).all() and (erank <= tokens.reindex(erank.index).clip(upper=d_model)).all(), erank
        alpha = mine[(mine.analysis == "weight_spectra") & (mine.metric == "α")].value
        finite = alpha[alpha.map(math.isfinite)]
        assert len(alpha) >= 7 * n_layers and len(finite) >= 0.8 * len(alpha)
        assert 2 < finite.median() < 10  # a trained model's layers (measured: SmolLM2 5.5, Gemma 3 4.5)
    report = (out / "report.html").read_text(encoding="utf-8")
    assert all(name in report for name in MODELS)
    assert "activation_spectra" in report and "weight_spectra" in report
