"""capture(per_prompt_sites=...): per-prompt vectors at some sites only, equal to keep='per_prompt' there."""

from __future__ import annotations

import pytest
import torch

from workbench.capture import capture
from workbench.errors import ConfigError

TEXTS = ["The cat sat on the mat.", "Rivers run to the sea", "x = 3 + 4 * 2", "Hello there, friend!", "abc"]


def test_per_prompt_vectors_at_the_named_sites_only(tiny_model):
    sites = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.1.hook_mlp_out"]
    some = capture(tiny_model, TEXTS, sites=sites, batch_size=2, per_prompt_sites="blocks.*.hook_resid_post")
    every = capture(tiny_model, TEXTS, sites=sites, batch_size=2, keep="per_prompt")
    for name in sites[:2]:
        assert torch.equal(some[name].last, every[name].last)
        assert torch.equal(some[name].mean_pooled, every[name].mean_pooled)
    assert some["blocks.1.hook_mlp_out"].last is None and some["blocks.1.hook_mlp_out"].mean_pooled is None
    assert torch.equal(some[sites[2]].comoment, every[sites[2]].comoment)  # the streamed statistics are unchanged


def test_per_prompt_sites_must_be_captured_sites(tiny_model):
    with pytest.raises(ConfigError, match="'per_prompt_sites'"):
        capture(tiny_model, TEXTS, sites=["blocks.0.hook_resid_post"], per_prompt_sites=["blocks.1.hook_resid_post"])
