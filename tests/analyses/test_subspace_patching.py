"""subspace_patching: the analysis end to end on the tiny word-level model, and on the bundled model (slow)."""

from __future__ import annotations

import math

import pytest
import torch

from workbench.capture.hooks import count_hooks, site
from workbench.errors import ConfigError
from workbench.intervene import Patch, patching, record
from workbench.intervene.metrics import fldd, logit_diff
from workbench.intervene.patch import forward
from workbench.runner import run_analysis
from workbench.tasks.ioi import ioi_pairs
from workbench_analyses.subspace_patching import (
    EFFECTS,
    SubspacePatchingConfig,
    SubspacePatchingResult,
    _heatmap,
    _same_length,
    _token_ids,
)

SMALL = dict(n_pairs=24, heatmap_pairs=4, epochs=3, batch_size=8, layer=0)


def test_runs_end_to_end_and_round_trips(tiny_ioi_model):
    result = run_analysis(tiny_ioi_model, "subspace_patching", SubspacePatchingConfig(**SMALL))
    assert [e["kind"] for e in result.das] == ["resid", "mlp"]
    for entry in result.das:
        assert set(entry["effects"]) == set(EFFECTS)
        assert 0 <= entry["row_fraction"] <= 1 and entry["null_leak"] < 1e-5
        assert len(entry["train_loss"]) == len(entry["val_loss"]) <= 3
    assert len(result.heatmap) == tiny_ioi_model.n_layers and len(result.heatmap[0]) == len(result.heatmap_tokens)
    assert all(math.isfinite(v) for row in result.heatmap for v in row)
    assert result.heatmap[0][0] == 0.0  # BOS is identical in base and source: patching it is a no-op
    assert SubspacePatchingResult.from_json(result.to_json()) == result
    assert "task:" in result.summary() and len(result.figures()) == 4
    assert result.split == "paper" and "unseen in DAS training" in result.summary()
    assert "this project's heuristic thresholds" in result.summary()
    assert all(len(e["lrs"]) == 3 and e["best_epoch"] == 2 for e in result.das)  # all epochs, the final basis
    assert result.n_train + result.n_test == result.n_pairs
    assert count_hooks(tiny_ioi_model.hook_points()) == 0


def test_metrics_key_each_patch_kind_under_its_das_site():
    """The table repeats each DAS site for every patch kind; the default metrics() folds the kind into the site."""
    effects = {kind: {"fldd": k / 4, "interchange_accuracy": 0.5, "sign_rate": 0.25, "recovered": 1.0,
                      "ld_patched": -1.0, "ld_base": 2.0} for k, kind in enumerate(EFFECTS)}
    das = [{"site": name, "effects": effects} for name in ("blocks.3.hook_resid_post", "blocks.3.mlp.hook_post")]
    result = SubspacePatchingResult(model="m", n_pairs=8, n_test=2, task_logit_diff=1.0, task_accuracy=1.0,
                                    templates=[0], template_logit_diff=[1.0], template_accuracy=[1.0],
                                    heatmap_layers=[0], heatmap_tokens=["a"], heatmap=[[0.0]], das=das, verdict="v")
    metrics = {(metric, layer, site): value for metric, layer, site, value in result.metrics()}
    assert len(metrics) == len(result.metrics()) == 2 * len(EFFECTS) * 6
    assert metrics[("FLDD", 3, "blocks.3.mlp.hook_post/v_null")] == 0.5
    assert metrics[("fraction recovered", 3, "blocks.3.hook_resid_post/whole site")] == 1.0


def test_the_paper_split_shares_no_name_template_place_or_object(tiny_ioi_model):
    from workbench.tasks.ioi import split_templates
    from workbench_analyses.subspace_patching import _pairs

    train, test = _pairs(tiny_ioi_model, SubspacePatchingConfig(**SMALL))
    names = lambda ps: {p.answer for p in ps} | {p.counterfactual for p in ps}  # noqa: E731
    assert not names(train) & names(test)
    assert {p.template for p in train} <= set(split_templates("train"))
    assert {p.template for p in test} <= set(split_templates("test"))
    rand_train, rand_test = _pairs(tiny_ioi_model, SubspacePatchingConfig(**(SMALL | {"split": "random"})))
    assert len(rand_test) == round(0.3 * 24) and not {p.base for p in rand_train} & {p.base for p in rand_test}


def test_random_split_option_runs_and_says_so(tiny_ioi_model):
    result = run_analysis(tiny_ioi_model, "subspace_patching", SubspacePatchingConfig(**(SMALL | {"split": "random"})))
    assert result.split == "random" and "in distribution" in result.summary()


def test_bad_layer_and_fields(tiny_ioi_model):
    with pytest.raises(ConfigError, match="'layer'"):
        run_analysis(tiny_ioi_model, "subspace_patching", SubspacePatchingConfig(**(SMALL | {"layer": 1})))
    for field, value in [("n_pairs", 2), ("test_fraction", 1.0), ("heatmap_template", 99), ("lr", 0),
                         ("split", "halves")]:
        with pytest.raises(ConfigError, match=repr(field)):
            SubspacePatchingConfig(**{field: value})


def test_char_tokenizer_cannot_make_ioi_pairs(tiny_model):
    with pytest.raises(ConfigError, match="single token"):
        run_analysis(tiny_model, "subspace_patching", SubspacePatchingConfig(**SMALL))


def test_the_heatmap_equals_full_forward_patching(tiny_ioi_model):
    """The analysis' fast heat map against the plain definition: patch hook_resid_pre at (layer, position) in a full
    forward of the base prompts, FLDD of the last position's logit difference."""
    lm = tiny_ioi_model
    pairs = _same_length(lm, ioi_pairs(lm.tokenizer, 32, seed=1, templates=[0]), 4)
    data = _token_ids(lm, pairs)
    got = _heatmap(lm, data, progress=False)
    with torch.no_grad():
        ld_base = logit_diff(forward(lm, data["base"]), data["answer"], data["cf"])
        for layer in range(lm.facts.n_layers):
            name = site("resid_pre", layer)
            acts = record(lm, data["source"], [name])
            for pos in range(data["base"].shape[1]):
                with patching(lm, [Patch(name, positions=[pos])], acts):
                    ld = logit_diff(forward(lm, data["base"]), data["answer"], data["cf"])
                assert got[layer][pos] == pytest.approx(fldd(ld_base, ld), abs=1e-5)
    assert any(v != 0 for row in got for v in row)


@pytest.mark.slow
def test_bundled_model_does_ioi_and_the_position_feature_sits_on_the_names_early(real_model):
    config = SubspacePatchingConfig(n_pairs=40, heatmap_pairs=4, epochs=4, patience=0)
    result = run_analysis(real_model, "subspace_patching", config)
    assert result.task_logit_diff > 2 and result.task_accuracy > 0.9  # the model really does the task
    # patching the whole residual stream at a name position in the first layers moves the answer: that is where
    # base and source differ; positions before the first name are identical (exactly 0)
    early = [max(row) for row in result.heatmap[:4]]
    assert max(early) > 0.5
    assert all(row[0] == 0.0 for row in result.heatmap)
    assert {e["kind"] for e in result.das} == {"resid", "mlp"}
    assert all(e["null_leak"] < 1e-6 for e in result.das)
    assert result.split == "paper" and all(0 <= e["effects"]["v"]["interchange_accuracy"] <= 1 for e in result.das)
