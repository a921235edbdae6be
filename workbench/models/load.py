"""``load_model``: the only entry point that reads model weights from disk.

Accepted sources: a bundled name (converted once into the cache, see :mod:`workbench.models.bundled`), a local Hugging
Face folder, an already-built TransformerLens model (TransformerBridge or HookedTransformer), or a ``LoadedModel``.
Nothing here contacts a hub: every ``from_pretrained`` call passes ``local_files_only=True``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import torch

from workbench.devices import check_device
from workbench.errors import ConfigError, ModelLoadError, param_message
from workbench.models import bundled
from workbench.models.adapters import adapter_for
from workbench.models.loaded import LoadedModel
from workbench.validation import is_int

log = logging.getLogger(__name__)
_WEIGHT_GLOBS = ("*.safetensors", "*.bin")


def load_model(
    source: str | Path | torch.nn.Module | LoadedModel = "smollm2-135m",
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    allow_pickle: bool = False,
) -> LoadedModel:
    """Load a model for analysis and return it with its tokenizer and adapter.

    ``device`` is any torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``); ``None`` means ``"cpu"`` for names and
    folders, and wherever a passed-in model already lives (given explicitly, the model is moved there); a device this
    machine lacks (``"cuda"`` on a CPU-only torch, ``"cuda:7"`` on one GPU) is a ModelLoadError naming it.
    ``dtype`` is the parameter dtype of models loaded from disk. ``allow_pickle``: a folder whose only weights are
    pickle files (``*.bin``) is refused unless True — unpickling a file can run code; ``*.safetensors`` are read
    whenever present, and even with True transformers unpickles with ``weights_only=True``.
    Raises :class:`ModelLoadError` with what to do: the pip command for a missing package, the known names for an
    unknown one, the expected files for a folder without weights. A damaged cache is detected and rebuilt.

    Example: ``lm = load_model("smollm2-135m", device="cuda", dtype=torch.bfloat16)``"""
    if not isinstance(allow_pickle, bool):
        raise ModelLoadError(param_message("load_model", "allow_pickle", "True or False", allow_pickle))
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
        return _load_folder(folder, spec.name, device, dtype, allow_pickle)
    path = Path(source).expanduser()
    if path.is_dir():
        return _load_folder(path, str(path), device, dtype, allow_pickle)
    known = ", ".join(bundled.bundled_names())
    raise ModelLoadError(f"load_model(): unknown model {str(source)!r}: not a bundled name (known: {known}) and not "
                         f"an existing folder. Pass one of the bundled names or the path of a local HF model folder.")


def _device(device: str | torch.device) -> torch.device:
    """``device`` parsed and present on this machine (see :func:`workbench.devices.check_device`), else
    ModelLoadError: no raw AssertionError from torch's first move of a weight to a GPU it does not have."""
    try:
        return check_device("load_model", "device", device)
    except ConfigError as exc:
        raise ModelLoadError(str(exc)) from None


def _from_module(source: torch.nn.Module | LoadedModel, device: str | torch.device | None) -> LoadedModel:
    """Wrap a built model, moving it to ``device`` when one is given; record where its parameters live."""
    module = source.model if isinstance(source, LoadedModel) else source
    if device is not None:
        module.to(_device(device))
    where = next(module.parameters(), torch.empty(0)).device
    if isinstance(source, LoadedModel):
        return dataclasses.replace(source, device=where)
    return _wrap(module, getattr(module, "tokenizer", None), type(module).__name__, None, where)


def _check_folder(folder: Path, allow_pickle: bool = False) -> None:
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder} is not a Hugging Face model folder: it has no config.json")
    if not any(next(folder.glob(pattern), None) for pattern in _WEIGHT_GLOBS):
        raise ModelLoadError(f"{folder} has a config.json but no weights (*.safetensors or *.bin): copy the weight "
                             f"files into it, or point load_model at the folder that has them")
    if not allow_pickle and next(folder.glob("*.safetensors"), None) is None:
        raise ModelLoadError(f"{folder} has only pickle weights (*.bin), and unpickling a file can run code: convert "
                             f"them to *.safetensors, or pass allow_pickle=True (CLI: --allow-pickle) if you trust "
                             f"the folder")
    _read_config(folder)


def _weights(folder: Path) -> tuple[int, int] | None:
    """(tensors, elements) in the folder's *.safetensors files, from their headers alone (None: no safetensors)."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    tensors = elements = 0
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    tensors += 1
                    elements += math.prod(handle.get_slice(key).get_shape())
        except Exception as exc:  # noqa: BLE001 - a corrupt header raises the reader's own types
            raise ModelLoadError(f"could not read the weights {path}: {type(exc).__name__}: {exc}") from None
    return tensors, elements


def _read_config(folder: Path) -> None:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelLoadError(f"{path} is not readable JSON: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path} must hold a JSON object; it holds a {type(config).__name__}")


def _check_size(folder: Path, config: object, weights: tuple[int, int] | None) -> None:
    """Refuse a config that asks for more than the weights hold, before transformers builds it: transformers would
    random-initialise every parameter missing from the files (a bare ``{"model_type": "llama"}`` beside a tiny
    checkpoint means 7 B parameters: the process is killed for memory), and a hostile ``num_hidden_layers = 10**5``
    builds layers for minutes. Each layer holds at least one tensor; the model's parameters (counted on the meta
    device, no memory) must not outnumber the files' elements."""
    from transformers import AutoModelForCausalLM

    if weights is None:  # pickle weights the user opted into: their sizes are not readable without unpickling
        return
    tensors, elements = weights
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for scope in {id(config): config, id(text): text}.values():
        layers = getattr(scope, "num_hidden_layers", None)
        if is_int(layers) and layers > tensors:
            raise ModelLoadError(f"{folder / 'config.json'} asks for {layers} layers, but the weights hold only "
                                 f"{tensors} tensors: the config does not belong to these weights")
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    wanted = sum(p.numel() for p in skeleton.parameters())
    if wanted > elements:
        raise ModelLoadError(f"{folder / 'config.json'} describes a model of {wanted:,} parameters, but the weights "
                             f"hold {elements:,} numbers: the config does not belong to these weights (transformers "
                             f"would fill the rest with random values)")


def _load_folder(folder: Path, name: str, device: torch.device, dtype: torch.dtype,
                 allow_pickle: bool = False) -> LoadedModel:
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    _check_folder(folder, allow_pickle)
    weights = _weights(folder)
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        _check_size(folder, config, weights)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        hf_model = AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=dtype, local_files_only=True,
                                                        use_safetensors=None if allow_pickle else True)
        bridge = TransformerBridge.boot_transformers(str(folder), hf_model=hf_model, tokenizer=tokenizer,
                                                     device=device, dtype=dtype)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged folder raises any type from deep inside transformers
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
