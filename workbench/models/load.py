"""``load_model``: the only entry point that reads model weights from disk.

Accepted sources: a bundled name (converted once into the cache, see :mod:`workbench.models.bundled`), a local Hugging
Face folder, an already-built TransformerLens model (TransformerBridge or HookedTransformer), or a ``LoadedModel``.
Nothing here contacts a hub: every ``from_pretrained`` call passes ``local_files_only=True``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from workbench.errors import ModelLoadError
from workbench.models import bundled
from workbench.models.adapters import adapter_for
from workbench.models.loaded import LoadedModel

log = logging.getLogger(__name__)
_WEIGHT_GLOBS = ("*.safetensors", "*.bin")


def load_model(
    source: str | Path | torch.nn.Module | LoadedModel = "smollm2-135m",
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> LoadedModel:
    """Load a model for analysis and return it with its tokenizer and adapter.

    ``device`` is any torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``); ``None`` means ``"cpu"`` for names and
    folders, and wherever a passed-in model already lives (given explicitly, the model is moved there).
    ``dtype`` is the parameter dtype of models loaded from disk.
    Raises :class:`ModelLoadError` with what to do: the pip command for a missing package, the known names for an
    unknown one, the expected files for a folder without weights. A damaged cache is detected and rebuilt.

    Example: ``lm = load_model("smollm2-135m", device="cuda", dtype=torch.bfloat16)``"""
    if isinstance(source, LoadedModel) and device is None:
        return source
    if isinstance(source, (LoadedModel, torch.nn.Module)):
        return _from_module(source, device)
    device = _device("cpu" if device is None else device)
    if not isinstance(source, (str, Path)):
        raise ModelLoadError(f"load_model(): parameter 'source' must be a bundled name, a folder or a TransformerLens "
                             f"model; received {type(source).__name__}")
    spec = bundled.get_bundled(str(source))
    if spec is not None:
        folder = bundled.ensure_converted(spec)
        return _load_folder(folder, spec.name, device, dtype)
    path = Path(source).expanduser()
    if path.is_dir():
        return _load_folder(path, str(path), device, dtype)
    known = ", ".join(bundled.bundled_names())
    raise ModelLoadError(f"load_model(): unknown model {str(source)!r}: not a bundled name (known: {known}) and not "
                         f"an existing folder. Pass one of the bundled names or the path of a local HF model folder.")


def _device(device: str | torch.device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"load_model(): parameter 'device' must be a torch device such as 'cpu' or 'cuda'; "
                             f"received {device!r} ({exc})") from None


def _from_module(source: torch.nn.Module | LoadedModel, device: str | torch.device | None) -> LoadedModel:
    """Wrap a built model, moving it to ``device`` when one is given; record where its parameters live."""
    module = source.model if isinstance(source, LoadedModel) else source
    if device is not None:
        module.to(_device(device))
    where = next(module.parameters(), torch.empty(0)).device
    if isinstance(source, LoadedModel):
        return dataclasses.replace(source, device=where)
    return _wrap(module, getattr(module, "tokenizer", None), type(module).__name__, None, where)


def _check_folder(folder: Path) -> None:
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder} is not a Hugging Face model folder: it has no config.json")
    if not any(next(folder.glob(pattern), None) for pattern in _WEIGHT_GLOBS):
        raise ModelLoadError(f"{folder} has a config.json but no weights (*.safetensors or *.bin): copy the weight "
                             f"files into it, or point load_model at the folder that has them")


def _load_folder(folder: Path, name: str, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_folder(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
        bridge = TransformerBridge.boot_transformers(str(folder), hf_model=hf_model, tokenizer=tokenizer,
                                                     device=device, dtype=dtype)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"could not load the model in {folder}: {type(exc).__name__}: {exc}") from exc
    bridge.eval()
    return _wrap(bridge, tokenizer, name, folder, device)


def _wrap(model: torch.nn.Module, tokenizer: object, name: str, folder: Path | None,
          device: torch.device) -> LoadedModel:
    try:
        adapter = adapter_for(model)
    except Exception as exc:
        raise ModelLoadError(str(exc)) from None
    if tokenizer is None:
        raise ModelLoadError(f"load_model(): the {type(model).__name__} passed in has no tokenizer; set "
                             f"model.tokenizer before passing it")
    return LoadedModel(model=model, tokenizer=tokenizer, adapter=adapter, name=name, folder=folder, device=device)
