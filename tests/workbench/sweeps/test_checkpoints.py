"""Checkpoints from a short fine-tune of the tiny Llama: the requested folders only, step 0 untouched, later steps
trained (the training loss falls), each loadable, reproducible from the seed, refusals, nothing half-written."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import workbench
from tests.helpers import device_under_test
from workbench.errors import ConfigError, ModelLoadError
from workbench.sweeps import checkpoints
from workbench.sweeps.checkpoints import LOG_NAME, finetune_checkpoints

PAIRS = [("Say hi.", "hi hi hi"), ("Name a cat.", "Tom the cat"), ("Count.", "one two three"),
         ("Colour?", "blue and red"), ("Greet.", "hello there"), ("Animal?", "a small dog")]
STEPS = (0, 3, 30)
FAST = dict(pairs=None, steps=STEPS, lr=1e-2, batch_size=2, held_out=1)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in PAIRS))
    return path


def finetune(tiny_model, out, pairs_file, **changes):
    kwargs = FAST | {"pairs": pairs_file, "device": device_under_test()} | changes
    return finetune_checkpoints(tiny_model.folder, out, **kwargs)


@pytest.fixture(scope="module")
def trained(tiny_model, pairs_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "checkpoints"
    return out, finetune(tiny_model, out, pairs_file)


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def train_loss(folder, pairs) -> float:
    """Mean response loss over ``pairs`` laid out as the char tokenizer has it (``prompt + "\\n" + response``),
    computed here independently of the module."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    losses = []
    with torch.no_grad():
        for prompt, response in pairs:
            ids = tok(prompt + "\n" + response)["input_ids"]
            n_prompt = len(tok(prompt + "\n")["input_ids"])
            logits = model(torch.tensor([ids])).logits[0]
            losses.append(F.cross_entropy(logits[n_prompt - 1:-1], torch.tensor(ids[n_prompt:])).item())
    return sum(losses) / len(losses)


def test_folders_for_exactly_the_requested_steps(trained):
    out, folders = trained
    assert folders == [out / f"step-{s:05d}" for s in STEPS]
    assert sorted(p.name for p in out.iterdir()) == sorted([LOG_NAME] + [f.name for f in folders])  # no temporaries
    log = [json.loads(line) for line in (out / LOG_NAME).read_text().splitlines()]
    assert [r["step"] for r in log] == list(STEPS)
    assert all(r["held_out_loss"] > 0 and r["loss"] > 0 for r in log)
    assert log[0]["tokens"] == 0 < log[1]["tokens"] < log[2]["tokens"]
    made = json.loads((folders[1] / "workbench-finetune.json").read_text())
    assert made["step"] == 3 and made["n_train"] == 5 and made["n_held_out"] == 1 and made["lr"] == 1e-2


def test_step_zero_is_the_untouched_model_and_later_steps_differ(tiny_model, trained):
    _, folders = trained
    base = weights(tiny_model.folder)
    step0 = weights(folders[0])
    assert step0.keys() == base.keys()
    assert all(torch.equal(step0[k], base[k]) for k in base)
    for folder in folders[1:]:
        assert any(not torch.equal(weights(folder)[k], base[k]) for k in base)


def test_training_loss_goes_down(trained):
    out, folders = trained
    training_pairs = [p for i, p in enumerate(PAIRS) if i != 5]  # held_out=1 keeps the last pair out
    before, after = train_loss(folders[0], training_pairs), train_loss(folders[-1], training_pairs)
    assert after < 0.6 * before, (before, after)
    log = [json.loads(line) for line in (out / LOG_NAME).read_text().splitlines()]
    assert log[-1]["loss_avg"] < log[0]["loss"]


def test_each_folder_loads_and_the_bridge_runs(trained):
    from transformers import AutoModelForCausalLM

    _, folders = trained
    for folder in folders:
        lm = workbench.load_model(folder)
        ids = lm.model.to_tokens("Say hi.")
        logits, cache = lm.model.run_with_cache(ids)
        assert logits.shape == (1, ids.shape[1], 300) and torch.isfinite(logits).all()
        assert "blocks.1.hook_resid_post" in cache
        hf = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
        with torch.no_grad():
            assert torch.allclose(hf(ids).logits, logits, atol=1e-4)


def test_same_seed_same_weights(tiny_model, pairs_file, tmp_path):
    # on the CPU: CUDA's embedding backward adds with atomics, so GPU runs agree only to round-off
    a = finetune(tiny_model, tmp_path / "a", pairs_file, steps=(4,), device="cpu")[0]
    b = finetune(tiny_model, tmp_path / "b", pairs_file, steps=(4,), device="cpu")[0]
    c = finetune(tiny_model, tmp_path / "c", pairs_file, steps=(4,), seed=1, device="cpu")[0]
    wa, wb, wc = weights(a), weights(b), weights(c)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    log = lambda f: [json.loads(x) for x in (f.parent / LOG_NAME).read_text().splitlines()]  # noqa: E731
    assert [r | {"seconds": 0} for r in log(a)] == [r | {"seconds": 0} for r in log(b)]


@pytest.mark.parametrize("changes, match", [
    ({"steps": (0, 10, 10)}, "'steps'"), ({"steps": (10, 5)}, "'steps'"), ({"steps": (-1, 2)}, "'steps'"),
    ({"steps": ()}, "'steps'"), ({"steps": "10"}, "'steps'"), ({"steps": (True,)}, "'steps'"),
    ({"lr": 0.0}, "'lr'"), ({"batch_size": 0}, "'batch_size'"), ({"held_out": 6}, "'held_out'"),
    ({"pairs": []}, "'pairs'"), ({"pairs": "nope"}, "'pairs'"), ({"pairs": [("q", "")]}, "'pairs'"),
    ({"max_length": 5}, "'max_length'.*prompt tokens"),
])
def test_bad_arguments_are_refused_before_any_work(tiny_model, pairs_file, tmp_path, changes, match):
    with pytest.raises(ConfigError, match=match):
        finetune(tiny_model, tmp_path / "out", pairs_file, **changes)
    assert not (tmp_path / "out").exists()


def test_empty_pairs_file_and_unknown_model_are_refused(tiny_model, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="empty.jsonl holds no"):
        finetune(tiny_model, tmp_path / "out", empty)
    with pytest.raises(ModelLoadError, match="unknown model 'no-such-model'.*smollm2-135m"):
        finetune_checkpoints("no-such-model", tmp_path / "out", pairs=PAIRS)
    with pytest.raises(ModelLoadError, match="not a Hugging Face model folder"):
        finetune_checkpoints(tmp_path, tmp_path / "out", pairs=PAIRS)


def test_an_out_folder_with_files_needs_overwrite(tiny_model, pairs_file, tmp_path):
    out = tmp_path / "out"
    (out / "step-00099").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="'out'.*overwrite=True"):
        finetune(tiny_model, out, pairs_file, steps=(0,))
    finetune(tiny_model, out, pairs_file, steps=(0, 1), overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == sorted([LOG_NAME, "notes.txt", "step-00000", "step-00001"])


def test_a_failure_midway_leaves_only_whole_folders(tiny_model, pairs_file, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = torch.optim.AdamW.step

    def failing_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("optimiser died")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", failing_step)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="optimiser died"):
        finetune(tiny_model, out, pairs_file)
    assert sorted(p.name for p in out.iterdir()) == sorted([LOG_NAME, "step-00000"])
    workbench.load_model(out / "step-00000")
    monkeypatch.undo()

    def failing_save(hf, tokenizer, folder, setup):
        (folder / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints, "_save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        finetune(tiny_model, tmp_path / "out2", pairs_file)
    assert list((tmp_path / "out2").iterdir()) == []


def test_progress_bar(tiny_model, pairs_file, tmp_path, capsys):
    finetune(tiny_model, tmp_path / "out", pairs_file, steps=(2,), progress=True)
    assert "fine-tune" in capsys.readouterr().err
