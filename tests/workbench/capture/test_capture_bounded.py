"""The promise "capture's memory is flat in the token count", checked structurally: with ``keep="stats"`` (the
default) and with a reservoir, everything a capture holds has the same size for 2 and for 40 texts; only the kept
rows that were asked for (``full``, per-prompt vectors) grow, and ``full`` is refused before any forward when it would
pass ``memory_budget``. (Peak RSS is measured in benchmarks/bench_capture_memory.py: 0.99x from 2,000 to 20,000
tokens.)"""

from __future__ import annotations

import torch

from workbench.capture import capture

TEXTS = ["the quick brown fox jumps over the lazy dog", "pack my box with five dozen liquor jugs"]


def _held_bytes(result) -> int:
    total = 0
    for stats in result.stats.values():
        for value in vars(stats).values():
            if isinstance(value, torch.Tensor):
                total += value.numel() * value.element_size()
    return total


def test_what_a_capture_holds_does_not_grow_with_the_tokens(tiny_model):
    sites = "blocks.*.hook_resid_post"
    for keep in ("stats", ["stats", "reservoir"]):
        small = capture(tiny_model, TEXTS, sites=sites, keep=keep, reservoir_size=16)
        large = capture(tiny_model, TEXTS * 20, sites=sites, keep=keep, reservoir_size=16)
        assert large.n_tokens >= 19 * small.n_tokens
        assert _held_bytes(large) == _held_bytes(small)
    full_small = capture(tiny_model, TEXTS, sites=sites, keep="full")
    full_large = capture(tiny_model, TEXTS * 20, sites=sites, keep="full")
    assert _held_bytes(full_large) > 10 * _held_bytes(full_small)  # the control: kept rows do grow
