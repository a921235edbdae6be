"""Real training checkpoints, made offline: a short supervised fine-tune of a local causal LM on (prompt, response)
pairs, saved as complete Hugging Face folders at chosen steps, so a sweep's checkpoint-vs-step figures have real data.

``finetune_checkpoints("smollm2-135m", "checkpoints")`` fine-tunes the bundled SmolLM2-135M-Instruct on the bundled
instruction pairs and writes ``checkpoints/step-00000`` (the untouched model), ``step-00010``, ``step-00020`` and
``step-00040``; a spec's ``[[models]] glob = "checkpoints/step-*"`` then takes each folder's step from its name.

Each sample is laid out as the ``gradient_spectra`` analysis lays instruct pairs out
(:func:`workbench.models.chat.sft_ids`: the chat template with the system turn and the user turn, then the response;
``prompt + "\\n" + response`` for a tokenizer without a template), and the loss is the next-token cross-entropy over
the response tokens only (prompt labels -100), averaged over every response token of the batch. The order is a
seeded permutation per epoch; the optimiser is AdamW (torch defaults but ``lr``) with gradients clipped to norm 1.
Training is in float32 on ``device``; nothing is ever fetched from a hub (``local_files_only=True``). The same seed
gives bit-identical weights on the CPU (on CUDA, atomics in the embedding backward leave round-off differences).

A fixed held-out subset of the pairs (evenly spaced through the set, the same for every seed) is never trained on; its
mean response loss is logged at every saved step next to the training loss, in ``out/training_log.jsonl``.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from workbench.atomic import replace_folder
from workbench.errors import ModelLoadError, config_error
from workbench.models import bundled
from workbench.models.chat import sft_ids
from workbench.progress import bar
from workbench.prompts import PAIR_SETS, bundled_pairs, read_pairs

CALL = "finetune_checkpoints"
DEFAULT_STEPS = (0, 10, 20, 40)
# SmolLM2-135M on the 32 training instruction pairs, batch 8, 40 steps: 1e-5 takes the batch loss from 2.83 to 1.39
# and the held-out loss down at every save (2.23 -> 2.04); 3e-5 memorises (batch 0.33, held-out back up to 2.43)
DEFAULT_LR = 1e-5
LOG_NAME = "training_log.jsonl"
MAX_GRAD_NORM = 1.0
_STEP_FOLDER = re.compile(r"step-\d+")

Sample = tuple[list[int], int]  # (token ids, number of prompt tokens: the labels before it are masked)


@dataclass(frozen=True)
class _TokenizerOnly:
    """The part of a ``LoadedModel`` that :func:`~workbench.models.chat.sft_ids` reads: the training model is a plain
    Hugging Face model, not a bridge, so only the tokenizer and the device of the ids are passed on."""

    tokenizer: object
    device: torch.device


def finetune_checkpoints(model: str | Path = "smollm2-135m", out: str | Path = "checkpoints", *,
                         pairs: str | Path | Sequence[tuple[str, str]] = "instruction",
                         steps: Sequence[int] = DEFAULT_STEPS, lr: float = DEFAULT_LR, batch_size: int = 8,
                         held_out: int | None = None, max_length: int = 512, seed: int = 0,
                         device: str | torch.device | None = None, overwrite: bool = False,
                         progress: bool = False) -> list[Path]:
    """Fine-tune ``model`` on ``pairs`` and save it at each of ``steps`` as ``out/step-{step:05d}``; return the folders.

    ``model``: a bundled name (its converted float32 folder) or a local Hugging Face folder. ``pairs``: a bundled pair
    set (``"instruction"``, ``"reasoning"``, or ``"bundled:NAME"``), a ``.jsonl`` of ``{"prompt", "response"}``
    objects, or a list of ``(prompt, response)`` tuples. ``steps``: strictly increasing optimiser-step counts >= 0
    (0 saves the untouched model). ``held_out``: how many pairs to keep out of training for the held-out loss
    (default a fifth of them; 0 for none). ``max_length``: tokens per sample after the cut (a sample must keep at
    least one response token). ``device``: where the model and every batch live (default the CPU).
    ``out`` must be empty or absent unless ``overwrite``, which replaces its ``step-*`` folders and the log only.

    Every folder is written whole or not at all (:func:`workbench.atomic.replace_folder`), with the weights
    (safetensors), config and tokenizer that :func:`workbench.load_model` needs, plus ``workbench-finetune.json``
    (how it was made). ``out/training_log.jsonl`` gets one line per saved step: ``loss`` (the last update's batch
    loss, measured before that update; at step 0 the first batch's loss on the untouched model), ``loss_avg`` (mean
    batch loss since the previous saved step), ``held_out_loss`` (mean over every held-out response token; null
    without held-out pairs), ``tokens`` (response tokens trained on so far) and ``seconds``.

    Example: ``folders = finetune_checkpoints("smollm2-135m", "checkpoints", steps=[0, 50, 100], lr=1e-5)``"""
    steps = _check_steps(steps)
    _check_hyper(lr, batch_size, max_length, seed)
    data = _pairs(pairs)
    train, held = _split(data, held_out)
    out = _check_out(out, overwrite)
    folder = _model_folder(model)
    where = _device(device)
    tokenizer, hf = _load(folder, where)
    train_s, held_s = _encode(tokenizer, train, max_length, "training"), _encode(tokenizer, held, max_length, "held-out")
    _clear_out(out)
    setup = {"base": str(model), "base_folder": str(folder), "pairs": _describe(pairs), "n_train": len(train_s),
             "n_held_out": len(held_s), "lr": lr, "batch_size": batch_size, "max_length": max_length, "seed": seed,
             "optimizer": f"AdamW, gradient norm clipped to {MAX_GRAD_NORM}"}
    trainer = _Trainer(hf, train_s, held_s, batch_size=batch_size, lr=lr, seed=seed, device=where,
                       pad=_pad_id(tokenizer))
    saved = []
    with _closing(bar(total=steps[-1], desc="fine-tune", disable=not progress, unit="step")) as steps_bar:
        for step in steps:
            trainer.run_until(step, steps_bar)
            record = trainer.record()
            path = out / f"step-{step:05d}"
            replace_folder(path, lambda tmp, rec=record: _save(hf, tokenizer, tmp, setup | {"step": rec["step"]}))
            with (out / LOG_NAME).open("a", encoding="utf-8") as log:
                log.write(json.dumps(record) + "\n")
            saved.append(path)
    return saved


class _Trainer:
    """The training loop's state between saved steps: model, optimiser, batch order, losses so far."""

    def __init__(self, hf: torch.nn.Module, train: list[Sample], held: list[Sample], *, batch_size: int, lr: float,
                 seed: int, device: torch.device, pad: int) -> None:
        self.hf, self.train, self.held, self.device, self.pad = hf, train, held, device, pad
        self.batch_size, self.seed = batch_size, seed
        torch.manual_seed(seed)
        self.order = _batches(len(train), batch_size, seed)
        self.optimizer = torch.optim.AdamW(hf.parameters(), lr=lr)
        self.step, self.tokens, self.losses = 0, 0, []
        self.last_loss: float | None = None
        self.started = time.perf_counter()

    def run_until(self, target: int, progress) -> None:
        self.hf.train()
        while self.step < target:
            batch = self._batch(next(self.order))
            loss, n = _loss(self.hf, *batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.hf.parameters(), MAX_GRAD_NORM)
            self.optimizer.step()
            self.step, self.tokens = self.step + 1, self.tokens + n
            self.last_loss = float(loss.detach())
            self.losses.append(self.last_loss)
            progress.update(1)
        self.hf.eval()

    def record(self) -> dict:
        if self.last_loss is None:  # step 0: the first training batch, measured without updating
            first = next(_batches(len(self.train), self.batch_size, self.seed))
            with torch.no_grad():
                self.last_loss = float(_loss(self.hf, *self._batch(first))[0])
            self.losses = [self.last_loss]
        record = {"step": self.step, "loss": round(self.last_loss, 5),
                  "loss_avg": round(sum(self.losses) / len(self.losses), 5), "held_out_loss": self._held_out(),
                  "tokens": self.tokens, "seconds": round(time.perf_counter() - self.started, 1)}
        self.losses = []
        return record

    def _batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _collate([self.train[i] for i in indices], self.pad, self.device)

    def _held_out(self) -> float | None:
        if not self.held:
            return None
        total = count = 0.0
        with torch.no_grad():
            for start in range(0, len(self.held), self.batch_size):
                loss, n = _loss(self.hf, *_collate(self.held[start:start + self.batch_size], self.pad, self.device))
                total, count = total + float(loss) * n, count + n
        return round(total / count, 5)


def _batches(n: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Batches of ``batch_size`` indices from a stream of epochs, each a seeded permutation of ``range(n)``."""
    generator = torch.Generator().manual_seed(seed)
    stream: list[int] = []
    while True:
        while len(stream) < batch_size:
            stream += torch.randperm(n, generator=generator).tolist()
        yield stream[:batch_size]
        stream = stream[batch_size:]


def _collate(samples: list[Sample], pad: int, device: torch.device):
    """``(ids, attention mask, labels)`` ``[B, T]`` on ``device``: right-padded; labels -100 on prompt and padding."""
    width = max(len(ids) for ids, _ in samples)
    ids = torch.full((len(samples), width), pad, dtype=torch.long)
    labels = torch.full((len(samples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, (tokens, n_prompt) in enumerate(samples):
        ids[row, :len(tokens)] = torch.tensor(tokens)
        labels[row, n_prompt:len(tokens)] = torch.tensor(tokens[n_prompt:])
        mask[row, :len(tokens)] = 1
    return ids.to(device), mask.to(device), labels.to(device)


def _loss(hf: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy (float32) over the response tokens of the batch, and their count."""
    logits = hf(input_ids=ids, attention_mask=mask).logits
    target = labels[:, 1:]
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target.flatten(), ignore_index=-100)
    return loss, int((target != -100).sum())


def _encode(tokenizer, pairs: list[tuple[str, str]], max_length: int, which: str) -> list[Sample]:
    """Each pair laid out and cut as :func:`~workbench.models.chat.sft_ids` does for ``gradient_spectra``."""
    view = _TokenizerOnly(tokenizer, torch.device("cpu"))
    samples = []
    for i, (prompt, response) in enumerate(pairs):
        ids, n_prompt = sft_ids(view, prompt, response, max_length=max_length)  # type: ignore[arg-type]
        if ids.shape[1] <= n_prompt:
            raise config_error(CALL, "max_length", f"large enough to keep a response token of every pair (the loss "
                               f"is on response tokens only); {which} pair {i} has {n_prompt} prompt tokens",
                               max_length)
        samples.append((ids[0].tolist(), n_prompt))
    return samples


def _save(hf: torch.nn.Module, tokenizer, folder: Path, setup: dict) -> None:
    hf.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    (folder / "workbench-finetune.json").write_text(json.dumps(setup, indent=1) + "\n", encoding="utf-8")


class _closing:
    """Close a progress bar however the block ends (the bar has ``close`` but is not a context manager)."""

    def __init__(self, thing) -> None:
        self.thing = thing

    def __enter__(self):
        return self.thing

    def __exit__(self, *exc) -> None:
        self.thing.close()


# ---- arguments --------------------------------------------------------------------------------------------------


def _check_steps(steps: Sequence[int]) -> tuple[int, ...]:
    allowed = "a non-empty, strictly increasing sequence of integers >= 0 (optimiser steps; 0 = the untouched model)"
    if isinstance(steps, (str, bytes)) or not isinstance(steps, Sequence) or not steps:
        raise config_error(CALL, "steps", allowed, steps)
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in steps):
        raise config_error(CALL, "steps", allowed, steps)
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise config_error(CALL, "steps", allowed, steps)
    return tuple(steps)


def _check_hyper(lr: float, batch_size: int, max_length: int, seed: int) -> None:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise config_error(CALL, "lr", "a finite number > 0", lr)
    for name, value, low in (("batch_size", batch_size, 1), ("max_length", max_length, 2), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise config_error(CALL, name, f"an integer >= {low}", value)


def _pairs(pairs: str | Path | Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    if isinstance(pairs, str) and pairs.removeprefix("bundled:") in PAIR_SETS:
        data = bundled_pairs(pairs.removeprefix("bundled:"))
    elif isinstance(pairs, (str, Path)):
        if not str(pairs).endswith(".jsonl"):
            raise config_error(CALL, "pairs", f"a bundled pair set ({', '.join(PAIR_SETS)}), a .jsonl file or a list "
                               f"of (prompt, response) tuples", pairs)
        data = read_pairs(pairs)
    else:
        data = list(pairs)
        if not all(isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(s, str) for s in p)
                   and p[1].strip() for p in data):
            raise config_error(CALL, "pairs", "(prompt, response) string tuples with non-empty responses",
                               data[:3])
        data = [(p, r) for p, r in data]
    if not data:
        raise config_error(CALL, "pairs", "a non-empty set of (prompt, response) pairs", pairs)
    return data


def _split(data: list[tuple[str, str]], held_out: int | None):
    """(training pairs, held-out pairs): ``held_out`` pairs evenly spaced through the set, the rest for training."""
    n = len(data)
    count = n // 5 if held_out is None else held_out
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count < n:
        raise config_error(CALL, "held_out", f"an integer from 0 to {n - 1} (the pairs number {n}, and at least one "
                           f"must stay for training)", held_out)
    chosen = {(i + 1) * n // count - 1 for i in range(count)} if count else set()
    return [p for i, p in enumerate(data) if i not in chosen], [data[i] for i in sorted(chosen)]


def _describe(pairs) -> str | int:
    if isinstance(pairs, str) and pairs.removeprefix("bundled:") in PAIR_SETS:
        return f"bundled:{pairs.removeprefix('bundled:')}"
    return str(Path(pairs).resolve()) if isinstance(pairs, (str, Path)) else len(pairs)


def _check_out(out: str | Path, overwrite: bool) -> Path:
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise config_error(CALL, "out", "a folder (absent or empty)", f"{out} (a file)")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise config_error(CALL, "out", "an absent or empty folder, or overwrite=True (which replaces its step-* "
                           f"folders and {LOG_NAME})", f"{out}, which holds {sorted(p.name for p in out.iterdir())[:5]}")
    return out


def _clear_out(out: Path) -> None:
    """With ``overwrite``: drop the old ``step-*`` folders and log (a glob would mix stale steps in); keep the rest."""
    out.mkdir(parents=True, exist_ok=True)
    for path in out.iterdir():
        if path.is_dir() and _STEP_FOLDER.fullmatch(path.name):
            shutil.rmtree(path)
    (out / LOG_NAME).unlink(missing_ok=True)


def _device(device: str | torch.device | None) -> torch.device:
    try:
        return torch.device("cpu" if device is None else device)
    except (RuntimeError, TypeError) as exc:
        raise config_error(CALL, "device", "a torch device such as 'cpu' or 'cuda'", device) from exc


# ---- the model ---------------------------------------------------------------------------------------------------


def _model_folder(model: str | Path) -> Path:
    """The Hugging Face folder to start from: a bundled model's converted cache folder, or a local folder."""
    spec = bundled.get_bundled(str(model))
    if spec is not None:
        return bundled.ensure_converted(spec)
    path = Path(model).expanduser()
    if not path.is_dir():
        raise ModelLoadError(f"{CALL}(): unknown model {str(model)!r}: not a bundled name (known: "
                             f"{', '.join(bundled.bundled_names())}) and not an existing folder")
    if not (path / "config.json").is_file() or not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise ModelLoadError(f"{CALL}(): {path} is not a Hugging Face model folder (config.json and *.safetensors "
                             f"or *.bin weights)")
    return path


def _load(folder: Path, device: torch.device):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"{CALL}(): could not load the model in {folder}: {type(exc).__name__}: {exc}") from exc
    return tokenizer, hf.to(device)


def _pad_id(tokenizer) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0  # padded positions are masked out of attention and loss, so any id will do


__all__ = ["DEFAULT_LR", "DEFAULT_STEPS", "LOG_NAME", "finetune_checkpoints"]
