"""Builders shared by the sweep tests that run on Ray (test_execute.py, test_faults.py): tiny random checkpoints and a
prompt file, made offline in code."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.helpers import tiny_llama

SHORT_PROMPTS = "the cat sat on the mat\nhello world, a short line\none more prompt\n"


def make_checkpoints(root: Path, steps) -> list[Path]:
    """``root/ckpts/step-<s>``: the tiny Llama (2 layers, d_model 32), each perturbed with its own seed, so every
    checkpoint gives different numbers; returns the folders."""
    from safetensors.torch import load_file, save_file

    folders = []
    for step in steps:
        folder = Path(root) / "ckpts" / f"step-{step}"
        tiny_llama(folder, device="cpu")
        weights = load_file(folder / "model.safetensors")
        generator = torch.Generator().manual_seed(step + 1)
        save_file({k: v + 0.05 * torch.randn(v.shape, generator=generator) for k, v in weights.items()},
                  folder / "model.safetensors", metadata={"format": "pt"})
        folders.append(folder)
    return folders
