"""The paper's distilled illusion example (Makelov et al. 2024, §3) as a TransformerLens HookedRootModule (a shared
builder, imported as ``tests.workbench.intervene.distilled``).

Input x = ±1 (the feature) at one position. Hidden h = (h_dis, h_dorm) with h_dis = x (disconnected: the output
weights ignore it) and h_dorm = 0 (dormant: never varies, but the output reads it with weight 3). A skip path carries
the feature to the output: y = x + 3·h_dorm; logits = (y, −y) for the classes "positive" (0) and "negative" (1).
"""

import torch
from transformer_lens.hook_points import HookedRootModule, HookPoint

W_OUT = torch.tensor([[0.0], [3.0]])  # [d_hidden=2, 1]: reads only h_dorm


class Distilled(HookedRootModule):
    def __init__(self) -> None:
        super().__init__()
        self.hook_hidden = HookPoint()
        self.setup()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, 1] -> logits [B, 1, 2]
        hidden = self.hook_hidden(torch.stack([x, torch.zeros_like(x)], dim=-1))  # [B, 1, 2]
        y = x + (hidden @ W_OUT)[..., 0]
        return torch.stack([y, -y], dim=-1)


def pairs(n: int = 8):
    """Half the bases are x=+1 (answer 0, counterfactual 1) with source x=−1, half the reverse."""
    base = torch.tensor([[1.0], [-1.0]] * (n // 2))
    source = -base
    answer = (base[:, 0] < 0).long()
    return base, source, answer, 1 - answer
