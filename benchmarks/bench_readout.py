"""Next-token logits at chosen positions only (``workbench.intervene.readout.position_logits``) vs a full forward
that unembeds every position, side by side on Gemma 3 270M (262,144-token vocabulary), the language_neurons workload:
32 right-padded English prompts, the logits at each prompt's last token. Both give identical numbers (asserted here
and tested). RESULT ratio = readout seconds / full-forward seconds (target: at most 0.5).
"""

from __future__ import annotations

import torch
from common import best_of_interleaved, parse_args, result, table

from workbench.intervene.readout import position_logits, right_padded
from workbench.models import load_model
from workbench.tasks.language import load_en_es_pairs


def main() -> None:
    args = parse_args(__doc__)
    lm = load_model("gemma3-270m")
    prompts = [en for en, _ in load_en_es_pairs("train")][: 8 if args.quick else 32]
    tokens, last = right_padded(lm, prompts)

    def full():
        with torch.no_grad():
            return lm.model(tokens)[torch.arange(len(prompts)), last]

    def readout():
        return position_logits(lm, tokens, last, batch_size=len(prompts))

    assert torch.allclose(full().float(), readout(), atol=1e-4)
    times = best_of_interleaved({"full forward": full, "position_logits": readout}, repeats=args.repeats)
    print(table(["variant", "seconds"], [[k, v] for k, v in times.items()]))
    result("readout_vs_full_forward", times["position_logits"] / times["full forward"], 0.5)


if __name__ == "__main__":
    main()
