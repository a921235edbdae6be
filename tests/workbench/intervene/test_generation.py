"""The KV-cached generation loop against the bridge's own ``generate`` and against an uncached forward loop: greedy
ids token for token (single prompts, left-padded batches, under steering), the same samples for the same seed, the
recorded hidden states and logits equal to a full forward at the right positions, EOS cuts, progress per token, and
hooks removed when anything raises."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from workbench.capture.hooks import count_hooks, hooks_attached, site
from workbench.errors import ConfigError
from workbench.intervene.generation import generate, hf_causal_lm, left_pad, positions_from_mask
from workbench.intervene.steer import Steer, steering
from workbench.progress import reporting

TEXTS = ["abcdef", "xy", "hello there", "q"]
SITE = "blocks.0.hook_resid_post"
FINAL = "ln_final.hook_out"


def rows(lm, texts=TEXTS) -> list[torch.Tensor]:
    return [lm.model.to_tokens(t)[0].cpu() for t in texts]


def bridge_generate(lm, ids: torch.Tensor, n: int, **kwargs) -> list[int]:
    """The bridge's own KV-cached ``generate`` of one prompt (today's path): the new ids."""
    with torch.no_grad():
        out = lm.model.generate(ids[None], max_new_tokens=n, verbose=False, return_type="tokens",
                                **({"do_sample": False} | kwargs))
    return out[0, len(ids):].tolist()


class _EosTokenizer:
    """The model's tokenizer with another EOS id (a token the random tiny model does produce)."""

    def __init__(self, inner, eos: int) -> None:
        self._inner, self.eos_token_id = inner, eos

    def __getattr__(self, name):
        return getattr(self._inner, name)


def with_eos(lm, eos: int):
    return dataclasses.replace(lm, tokenizer=_EosTokenizer(lm.tokenizer, eos))


def test_the_loop_calls_the_wrapped_hf_model_and_its_hooks_fire(tiny_model):
    assert hf_causal_lm(tiny_model) is tiny_model.model.original_model
    seen = []
    with hooks_attached(tiny_model.hook_points(), {SITE: lambda x, hook=None: seen.append(tuple(x.shape))}):
        generate(tiny_model, rows(tiny_model)[:1], max_new_tokens=3)
    n = len(rows(tiny_model)[0])
    assert seen == [(1, n, 32), (1, 1, 32), (1, 1, 32)]  # prefill, then one token per step: the cache is used


def test_greedy_equals_the_bridge_generate_and_the_uncached_loop(tiny_model):
    for ids in rows(tiny_model):
        got = generate(tiny_model, [ids], max_new_tokens=6).ids[0].tolist()
        assert got == bridge_generate(tiny_model, ids, 6)
        assert got == generate(tiny_model, [ids], max_new_tokens=6, cached=False).ids[0].tolist()


def test_left_padded_batches_equal_single_prompts_and_the_bridge_batch(tiny_model):
    batched = generate(tiny_model, rows(tiny_model), max_new_tokens=5, batch_size=3).ids
    alone = [generate(tiny_model, [r], max_new_tokens=5).ids[0] for r in rows(tiny_model)]
    assert [b.tolist() for b in batched] == [a.tolist() for a in alone]
    with torch.no_grad():
        ref = tiny_model.model.generate(TEXTS, max_new_tokens=5, do_sample=False, verbose=False,
                                        return_type="tokens", padding_side="left")
    width = tiny_model.model.to_tokens(TEXTS, padding_side="left").shape[1]
    assert [b.tolist() for b in batched] == ref[:, width:].tolist()
    uncached = generate(tiny_model, rows(tiny_model), max_new_tokens=5, cached=False).ids
    assert [b.tolist() for b in batched] == [u.tolist() for u in uncached]


def test_steering_acts_on_every_generated_token_as_under_the_bridge_generate(tiny_model):
    v = torch.randn(32, generator=torch.Generator().manual_seed(5))
    plain = generate(tiny_model, rows(tiny_model), max_new_tokens=5).ids
    for steer in (Steer(SITE, v, scale=3.0), Steer(SITE, lambda x: -x, positions=None)):
        with steering(tiny_model, [steer]):
            got = generate(tiny_model, rows(tiny_model), max_new_tokens=5, batch_size=2).ids
            uncached = generate(tiny_model, rows(tiny_model), max_new_tokens=5, cached=False).ids
            refs = [bridge_generate(tiny_model, r, 5) for r in rows(tiny_model)]
        assert [g.tolist() for g in got] == refs == [u.tolist() for u in uncached]
        assert [g.tolist() for g in got] != [p.tolist() for p in plain]
    assert count_hooks(tiny_model.hook_points()) == 0


def test_recorded_states_and_logits_equal_a_full_forward_at_the_generating_positions(tiny_model):
    record = [FINAL] + [site("resid_post", layer) for layer in range(2)]
    prompts = rows(tiny_model)
    gen = generate(tiny_model, prompts, max_new_tokens=5, record=record, logits="all", batch_size=4)
    steps = generate(tiny_model, prompts, max_new_tokens=5, logits="steps").logits
    for b, (prompt, new) in enumerate(zip(prompts, gen.ids)):
        full = torch.cat([prompt, new])[None]
        seen = {}
        hooks = {name: (lambda x, hook=None, name=name: seen.__setitem__(name, x[0].detach())) for name in record}
        with hooks_attached(tiny_model.hook_points(), hooks), torch.no_grad():
            logits = tiny_model.model(full)[0]
        n, g = len(prompt), len(new)
        for name in record:  # the state of the step that produced each new token: positions n-1 ... n+g-2
            assert gen.states[name][b].shape == (g, 32)
            assert torch.allclose(gen.states[name][b], seen[name][n - 1:n + g - 1], atol=1e-5)
        assert torch.allclose(gen.logits[b], logits, atol=1e-5)  # every position of prompt + response
        assert torch.allclose(steps[b], logits[n - 1:-1], atol=1e-5)
    assert count_hooks(tiny_model.hook_points()) == 0


def test_eos_cuts_each_row_and_stops_the_batch(tiny_model):
    prompts = rows(tiny_model)
    free = generate(tiny_model, prompts, max_new_tokens=6).ids
    eos = int(free[0][2])  # the third token of the first row becomes EOS
    lm = with_eos(tiny_model, eos)
    seen = []
    with reporting(lambda desc, done, total: seen.append(done)):
        cut = generate(lm, prompts, max_new_tokens=6).ids
    for f, c in zip(free, cut):
        hits = (f == eos).nonzero().flatten()
        expected = f[:int(hits[0]) + 1] if len(hits) else f
        assert c.tolist() == expected.tolist()
    assert cut[0].tolist() == free[0][:3].tolist()
    alone = generate(lm, prompts[:1], max_new_tokens=6).ids[0]
    assert alone.tolist() == cut[0].tolist()
    with reporting(lambda desc, done, total: seen.append(("alone", done))):
        generate(lm, prompts[:1], max_new_tokens=6)
    assert seen[-1] == ("alone", 3)  # stopped at the EOS, not after 6 steps
    assert bridge_generate(lm, prompts[0], 6, eos_token_id=eos) == alone.tolist()


def test_sampling_draws_what_the_bridge_draws_for_the_same_seed(tiny_model):
    ids = rows(tiny_model)[0]
    for temperature in (1.0, 0.7):
        torch.manual_seed(3)
        ref = bridge_generate(tiny_model, ids, 8, do_sample=True, temperature=temperature)
        torch.manual_seed(3)
        got = generate(tiny_model, [ids], max_new_tokens=8, do_sample=True, temperature=temperature).ids[0]
        assert got.tolist() == ref
        torch.manual_seed(3)
        again = generate(tiny_model, [ids], max_new_tokens=8, do_sample=True, temperature=temperature).ids[0]
        assert again.tolist() == ref


def test_sampled_first_tokens_follow_the_softmax(tiny_model):
    """Distributional sanity: the first sampled token of 400 copies of a prompt, against softmax(logits / T)."""
    ids = rows(tiny_model)[1]
    with torch.no_grad():
        p = torch.softmax(tiny_model.model(ids[None])[0, -1].double() / 0.5, -1)
    torch.manual_seed(0)
    gen = generate(tiny_model, [ids] * 400, max_new_tokens=1, do_sample=True, temperature=0.5, batch_size=200)
    counts = torch.bincount(torch.stack([g[0] for g in gen.ids]), minlength=p.numel()).double()
    top = p.argsort(descending=True)[:3]
    for t in top.tolist():
        sd = (400 * p[t] * (1 - p[t])).sqrt()
        assert abs(counts[t] - 400 * p[t]) < 5 * sd + 1
    assert counts[p < 1e-6].sum() == 0


def test_progress_once_per_generated_token_and_cancel_removes_every_hook(tiny_model):
    seen = []
    with reporting(lambda desc, done, total: seen.append((desc, done, total))):
        generate(tiny_model, rows(tiny_model)[:2], max_new_tokens=4, desc="gen")
    assert seen == [("gen", i, 4) for i in range(5)]

    class Cancelled(Exception):
        pass

    def cancel(desc, done, total):
        if done == 2:
            raise Cancelled

    v = torch.randn(32)
    with pytest.raises(Cancelled), reporting(cancel), steering(tiny_model, [Steer(SITE, v)]):
        generate(tiny_model, rows(tiny_model), max_new_tokens=5, record=[FINAL, SITE])
    assert count_hooks(tiny_model.hook_points()) == 0


def test_hooks_are_removed_when_a_forward_raises(tiny_model):
    calls = []

    def shift(x: torch.Tensor) -> torch.Tensor:  # fails on the second forward (the first generated token)
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return torch.zeros_like(x)

    with pytest.raises(RuntimeError, match="boom"), steering(tiny_model, [Steer(SITE, shift)]):
        generate(tiny_model, rows(tiny_model), max_new_tokens=4, record=[FINAL])
    assert count_hooks(tiny_model.hook_points()) == 0


def test_left_pad_and_positions():
    tokens, mask = left_pad([torch.tensor([5, 6, 7]), torch.tensor([8])], pad=0)
    assert tokens.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert positions_from_mask(mask).tolist() == [[0, 1, 2], [1, 1, 0]]


def test_refusals(tiny_model):
    ids = rows(tiny_model)
    for kwargs, param in (({"max_new_tokens": 0}, "max_new_tokens"), ({"batch_size": 0}, "batch_size"),
                          ({"temperature": 0.0}, "temperature"), ({"do_sample": 1}, "do_sample"),
                          ({"logits": "every"}, "logits"), ({"record": ["blocks.9.hook_nope"]}, "record")):
        with pytest.raises(ConfigError, match=f"'{param}'"):
            generate(tiny_model, ids, **({"max_new_tokens": 2} | kwargs))
    for bad in ([], [torch.tensor([], dtype=torch.long)], [torch.zeros(2, 2, dtype=torch.long)], ["abc"]):
        with pytest.raises(ConfigError, match="'prompts'"):
            generate(tiny_model, bad, max_new_tokens=2)


@pytest.mark.slow
def test_real_model_equals_the_bridge_generate(real_model, all_threads):
    texts = ["The capital of France is", "Once upon a time", "def fibonacci(n):"]
    prompts = rows(real_model, texts)
    batched = generate(real_model, prompts, max_new_tokens=12).ids
    for ids, got in zip(prompts, batched):
        assert got.tolist() == bridge_generate(real_model, ids, 12)[:len(got)]
    v = torch.randn(real_model.d_model, generator=torch.Generator().manual_seed(0))
    with steering(real_model, [Steer(site("resid_post", 10), v, scale=8.0)]):
        steered = generate(real_model, prompts, max_new_tokens=12).ids
        refs = [bridge_generate(real_model, ids, 12) for ids in prompts]
    assert [s.tolist() for s in steered] == [r[:len(s)] for s, r in zip(steered, refs)]
    assert [s.tolist() for s in steered] != [b.tolist() for b in batched]
    torch.manual_seed(1)
    ref = bridge_generate(real_model, prompts[0], 12, do_sample=True)
    torch.manual_seed(1)
    assert generate(real_model, prompts[:1], max_new_tokens=12, do_sample=True).ids[0].tolist() == ref[:12]


def test_a_bfloat16_model_greedy_and_sampled_as_the_bridge(tiny_model):
    """Logits stay in the model's dtype for the choice, as the bridge's generate takes them (sampling divides by the
    temperature in that dtype)."""
    import workbench

    lm = workbench.load_model(tiny_model.folder, dtype=torch.bfloat16)
    for ids in rows(lm)[:2]:
        assert generate(lm, [ids], max_new_tokens=5).ids[0].tolist() == bridge_generate(lm, ids, 5)
        torch.manual_seed(7)
        ref = bridge_generate(lm, ids, 5, do_sample=True, temperature=0.7)
        torch.manual_seed(7)
        assert generate(lm, [ids], max_new_tokens=5, do_sample=True, temperature=0.7).ids[0].tolist() == ref
