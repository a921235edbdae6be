"""Fixtures of the fault tests."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


class ForkServer:
    """tests/faults/child.py's fork server: ``run(job, root, n, *args)`` forks a run of ``job`` writing under
    ``root``, killed at its n-th event there (0: never); ``race(job, root, *args)`` forks two at once. Both return
    ``[(pid, exit code), ...]`` (``-9``: killed)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", "from tests.faults.child import main; main()"], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def _ask(self, request: dict) -> list[tuple[int, int]]:
        request["count_file"] = str(Path(request["root"]).parent / f"{request['job']}.count")
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        numbers = list(map(int, self.proc.stdout.readline().split()))
        return list(zip(numbers[::2], numbers[1::2]))

    def run(self, job: str, root: Path, kill_at: int, *args: str, kill_at_offset: int = 0) -> list[tuple[int, int]]:
        """``kill_at_offset``: also killed once a file under ``root`` is written up to that byte (0: never)."""
        return self._ask({"job": job, "root": str(root), "args": list(args), "kill_at": kill_at,
                          "kill_at_offset": kill_at_offset})

    def race(self, job: str, root: Path, *args: str) -> list[tuple[int, int]]:
        return self._ask({"job": job, "root": str(root), "args": list(args), "kill_at": 0, "race": True})

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="session")
def fork_server():
    """One fork server for the fault tests (an interpreter with everything imported: 10-20 s to start on 2 cores)."""
    server = ForkServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def tiny_model_folder(tmp_path_factory):
    """A random 2-layer tiny Llama saved as a Hugging Face folder (as tests.helpers.tiny_llama saves it), not loaded
    here: the processes under test load it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.helpers import char_tokenizer

    folder = tmp_path_factory.mktemp("tiny-llama-faults")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder
