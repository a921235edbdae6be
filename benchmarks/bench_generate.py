"""Greedy generation through our hooks (``workbench.intervene.generation.generate``: a KV-cached loop over the Hugging
Face model inside the TransformerBridge, so every HookPoint still fires) against Hugging Face's own ``generate`` on a
separately loaded copy of the same model (no bridge, no hooks: the speed of the model), and against the bridge's
``generate`` (what the library used before). SmolLM2-135M and Gemma 3 270M (262,144-token vocabulary), one prompt and
a left-padded batch of 16, 16 new tokens each; EOS never stops a row, so every variant computes the same number of
tokens, and the three give identical ids (asserted). Seconds per generated token (batch steps: one step makes a token
for each row; the prefill is included, as a user pays it).

RESULT ratio = workbench seconds / Hugging Face seconds, the worst case over models and batch sizes (target: at most
1.3); the bridge ``generate`` ratio is printed beside it. The table also gives each ratio in process CPU seconds,
which other jobs on the machine disturb less than wall-clock seconds (run with ``OMP_NUM_THREADS=1`` for CPU seconds
free of idle worker threads' spinning).
"""

from __future__ import annotations

import copy
import time

import torch
from common import default_prompts, load_note, parse_args, result, table, times_interleaved

from workbench.intervene.generation import generate
from workbench.models import load_model


def cpu_timed(fn, into: list[float]):
    """``fn`` that also appends the process CPU seconds of each call to ``into``."""
    def timed():
        started = time.process_time()
        out = fn()
        into.append(time.process_time() - started)
        return out
    return timed


def bench_model(name: str, texts: list[str], sizes: tuple[int, ...], n_new: int, repeats: int) -> list[list]:
    """One table row per batch size: ms per generated token of HF, workbench and the bridge, and the two ratios."""
    from transformers import AutoModelForCausalLM

    lm = load_model(name)
    hf = AutoModelForCausalLM.from_pretrained(str(lm.folder), local_files_only=True,
                                              dtype=next(lm.model.original_model.parameters()).dtype).eval()
    config = copy.deepcopy(hf.generation_config)
    config.eos_token_id, config.pad_token_id = None, lm.tokenizer.pad_token_id  # never stop early
    config.do_sample, config.max_new_tokens, config.min_new_tokens = False, n_new, None
    for sampling in ("top_k", "top_p", "temperature"):
        setattr(config, sampling, None)
    rows = []
    for size in sizes:
        prompts = [lm.model.to_tokens(t)[0] for t in texts[:size]]
        padded = lm.model.to_tokens(texts[:size], padding_side="left")
        lengths = torch.tensor([len(p) for p in prompts])
        mask = (torch.arange(padded.shape[1])[None] >= padded.shape[1] - lengths[:, None]).long()

        def ours(prompts=prompts, size=size):
            return torch.stack(generate(lm, prompts, max_new_tokens=n_new, stop_at_eos=False, batch_size=size).ids)

        def hugging_face(padded=padded, mask=mask):
            with torch.no_grad():
                return hf.generate(padded, attention_mask=mask, generation_config=config)[:, padded.shape[1]:]

        def bridge(padded=padded, size=size):
            source = texts[:size] if size > 1 else padded
            with torch.no_grad():
                return lm.model.generate(source, max_new_tokens=n_new, do_sample=False, verbose=False,
                                         return_type="tokens", padding_side="left",
                                         stop_at_eos=False)[:, padded.shape[1]:]

        same = ours().tolist()
        assert same == hugging_face().tolist() == bridge().tolist(), f"{name} batch {size}: the ids differ"
        cpu: dict[str, list[float]] = {}
        fns = {"workbench": ours, "hf": hugging_face, "bridge": bridge}
        times = times_interleaved({k: cpu_timed(fn, cpu.setdefault(k, [])) for k, fn in fns.items()}, repeats=repeats)
        best = {k: min(v) / n_new for k, v in times.items()}
        ratio, bridge_ratio = best["workbench"] / best["hf"], best["bridge"] / best["hf"]
        cpu_ratio, cpu_bridge = (min(cpu["workbench"]) / min(cpu["hf"]), min(cpu["bridge"]) / min(cpu["hf"]))
        rows.append([name, size, 1e3 * best["hf"], 1e3 * best["workbench"], 1e3 * best["bridge"], ratio,
                     bridge_ratio, cpu_ratio, cpu_bridge])
        print(f"{name}, batch {size}: workbench/HF {ratio:.3f}, bridge/HF {bridge_ratio:.3f} (CPU seconds: "
              f"{cpu_ratio:.3f}, {cpu_bridge:.3f}; {load_note()})", flush=True)
    return rows


def main() -> None:
    args = parse_args(__doc__)
    n_new = 4 if args.quick else 16
    sizes = (1, 4) if args.quick else (1, 16)
    texts = [t[:160] for t in default_prompts(max(sizes))]
    rows = [row for name in ("smollm2-135m", "gemma3-270m")
            for row in bench_model(name, texts, sizes, n_new, args.repeats)]
    print(table(["model", "batch", "HF ms/token", "workbench ms/token", "bridge ms/token", "workbench/HF",
                 "bridge/HF", "workbench/HF (CPU s)", "bridge/HF (CPU s)"], rows))
    print(f"{n_new} new tokens per row; torch threads {torch.get_num_threads()}; {load_note()}")
    print(f"bridge generate vs HF: worst ratio {max(r[6] for r in rows):.3f}")
    result("generate_vs_hf", max(r[5] for r in rows), 1.3)


if __name__ == "__main__":
    main()
