"""Sparse autoencoders trained with sae-lens directly on an in-memory activation matrix, with a disk cache.

Why this module exists: sae-lens's own runners (``LanguageModelSAETrainingRunner``) pull activations from a language
model and a dataset. Here the activations were already captured elsewhere (e.g. last-token residuals, ``[N, d]``), so
we train on the tensor itself and still use sae-lens for everything that is an SAE:

* the architecture and its training loss: ``TopKTrainingSAE`` (TopK, plus sae-lens's aux-k loss for dead latents) or
  ``StandardTrainingSAE`` (ReLU, MSE + ``l1_coefficient`` · L1 weighted by decoder norms), via their own
  ``training_forward_pass``;
* the optimisation step: ``SAETrainer.step`` (Adam, gradient clipping, LR and coefficient schedulers, dead-latent
  bookkeeping), driven batch by batch over shuffled epochs of the matrix, the way sae-lens's ``MultiSAETrainer``
  drives its per-SAE trainers;
* the conversion to an inference SAE: ``TrainingSAE.save_inference_model`` then ``SAE.load_from_disk`` (the route
  the sae-lens runners use); TopK folds decoder norms on that save, and the standard SAE is folded with sae-lens's
  ``fold_W_dec_norm``, so in both cases ``W_dec`` rows are unit norm and the model computes the same function;
* the on-disk format: ``SAE.save_model`` / ``SAE.load_from_disk`` (``cfg.json`` + ``sae_weights.safetensors``).

Nothing here touches the network, a model runner or a dataset. ``sae_lens`` is imported lazily (it takes seconds),
so importing this module and validating arguments stay cheap.

Batches: each epoch is one random permutation of the rows cut into ``N // batch_size`` full batches (the remainder
rows sit out that epoch, and others next epoch), because sae-lens's sparsity statistics assume every batch holds
``train_batch_size_samples`` rows. ``batch_size`` larger than ``N`` is clamped to ``N``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from workbench.atomic import folder_lock, replace_folder
from workbench.devices import check_device
from workbench.errors import config_error, shape_error
from workbench.validation import check_bool, check_int, check_number

if TYPE_CHECKING:
    from sae_lens import SAE

__all__ = ["ARCHITECTURES", "TrainedSAE", "cached_sae", "decoder_directions", "encode", "train_sae"]

ARCHITECTURES = ("topk", "standard")
INFO_FILE = "workbench-sae.json"
_FORMAT = 1  # bump when the cache layout or the meaning of a trained SAE changes
_EVAL_CHUNK = 4096  # rows per chunk when measuring FVU / L0, so [N, d_sae] never has to exist at once


@dataclass(frozen=True)
class TrainedSAE:
    """A trained sae-lens SAE (inference class, ``eval()`` mode) and how well it fits its training data.

    ``fvu``: fraction of variance unexplained on the training matrix, ``Σ‖x − x̂‖² / Σ‖x − x̄‖²``.
    ``l0``: mean number of non-zero features per training row.
    ``history``: mean training loss per epoch (sae-lens's total loss: MSE summed over ``d`` plus the
    architecture's auxiliary terms).
    ``path``: the cache folder it was saved to or loaded from (``None`` when not cached).
    ``key``: the ``key`` given to :func:`cached_sae` (``None`` from :func:`train_sae`).

    Example: ``sae = train_sae(x, d_sae=64, k=4); sae.fvu, sae.l0, TrainedSAE.__name__``
    """

    sae: SAE
    fvu: float
    l0: float
    history: tuple[float, ...]
    path: Path | None = None
    key: dict[str, Any] | None = None

    @property
    def architecture(self) -> str:
        return self.sae.cfg.architecture()

    @property
    def d_in(self) -> int:
        return int(self.sae.cfg.d_in)

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    def __repr__(self) -> str:
        return (f"TrainedSAE(architecture={self.architecture!r}, d_in={self.d_in}, d_sae={self.d_sae}, "
                f"fvu={self.fvu:.4g}, l0={self.l0:.4g}, epochs={len(self.history)}, path={self.path!r})")

    def _repr_html_(self) -> str:
        """Notebook summary of what is stored (no pass over data): shape, architecture, FVU, L0, training, origin."""
        import html

        from workbench.results import table_html

        cfg = self.sae.cfg
        rows: list[list[Any]] = [["architecture", self.architecture], ["d_in", self.d_in], ["d_sae", self.d_sae]]
        if getattr(cfg, "k", None) is not None:
            rows.append(["k", int(cfg.k)])
        rows += [["FVU", self.fvu], ["L0", self.l0], ["epochs", len(self.history)],
                 ["final loss", self.history[-1] if self.history else "-"],
                 ["dtype / device", f"{cfg.dtype} / {self.sae.device}"]]
        hook = getattr(getattr(cfg, "metadata", None), "hook_name", None)
        if hook:
            rows.append(["hook", hook])
        if self.key is not None:
            rows.append(["key", json.dumps(self.key, sort_keys=True)])
        rows.append(["path", "-" if self.path is None else str(self.path)])
        title = f"SAE ({self.architecture}, {self.d_in} → {self.d_sae})"
        return f"<h4>{html.escape(title)}</h4>{table_html(['', 'value'], rows)}"


# ---------------------------------------------------------------------------------------------------------------------
# argument checking


def _check_activations(call: str, activations: Any) -> torch.Tensor:
    if not isinstance(activations, torch.Tensor):
        try:
            activations = torch.as_tensor(activations)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise shape_error(call, "activations", "a 2-D torch tensor [N, d]", type(activations).__name__) from exc
    if activations.dtype.is_complex or activations.dtype == torch.bool:
        raise shape_error(call, "activations", "a real floating or integer tensor", activations.dtype)
    if activations.ndim != 2:
        raise shape_error(call, "activations", "a 2-D tensor [N, d]", f"shape {tuple(activations.shape)}")
    if activations.shape[0] < 2 or activations.shape[1] < 1:
        raise shape_error(call, "activations", "at least 2 rows and 1 column", f"shape {tuple(activations.shape)}")
    if activations.dtype.is_floating_point and not bool(torch.isfinite(activations).all()):
        bad = int((~torch.isfinite(activations)).sum())
        raise shape_error(call, "activations", "finite (no NaN or Inf)",
                          f"{bad} non-finite entries in shape {tuple(activations.shape)}")
    return activations


def _check_device(call: str, device: Any, default: torch.device) -> torch.device:
    """``default`` for None, else a device this machine has (:func:`workbench.devices.check_device`)."""
    return default if device is None else check_device(call, "device", device)


@dataclass(frozen=True)
class _Spec:
    """The checked training arguments; ``identity()`` is the part that decides what gets trained."""

    architecture: str
    d_sae: int
    k: int
    l1_coefficient: float
    epochs: int
    lr: float
    batch_size: int
    seed: int

    def identity(self) -> dict[str, Any]:
        out = {"architecture": self.architecture, "d_sae": self.d_sae, "epochs": self.epochs, "lr": self.lr,
               "batch_size": self.batch_size, "seed": self.seed}
        if self.architecture == "topk":
            out["k"] = self.k
        else:
            out["l1_coefficient"] = self.l1_coefficient
        return out


def _check_spec(call: str, n_rows: int, *, d_sae: Any, k: Any, architecture: Any, epochs: Any, lr: Any,
                batch_size: Any, seed: Any, l1_coefficient: Any) -> _Spec:
    if architecture not in ARCHITECTURES:
        raise config_error(call, "architecture", f"one of {ARCHITECTURES}", architecture)
    d_sae = check_int(call, "d_sae", d_sae, low=1)
    if architecture == "topk":
        k = check_int(call, "k", k, low=1, high=d_sae)
    else:
        k = check_int(call, "k", k, allowed="an int (unused by the standard architecture)")
    epochs = check_int(call, "epochs", epochs, low=1)
    lr = check_number(call, "lr", lr, low=0, low_open=True)
    batch_size = check_int(call, "batch_size", batch_size, low=1)
    seed = check_int(call, "seed", seed)
    l1_coefficient = check_number(call, "l1_coefficient", l1_coefficient, low=0)
    return _Spec(architecture=architecture, d_sae=d_sae, k=int(k), l1_coefficient=l1_coefficient, epochs=epochs,
                 lr=lr, batch_size=min(batch_size, n_rows), seed=int(seed))


# ---------------------------------------------------------------------------------------------------------------------
# training


def train_sae(activations: torch.Tensor, *, d_sae: int, k: int = 32, architecture: str = "topk", epochs: int = 50,
              lr: float = 5e-4, batch_size: int = 256, seed: int = 0, l1_coefficient: float = 5e-3,
              device: str | torch.device | None = None, progress: bool = False,
              hook_name: str | None = None) -> TrainedSAE:
    """Train a sae-lens SAE on the rows of ``activations`` ``[N, d]`` and return it ready for inference.

    ``architecture``: ``"topk"`` (``TopKTrainingSAE`` with ``k`` active features per row) or ``"standard"``
    (``StandardTrainingSAE``: ReLU, loss MSE + ``l1_coefficient`` · L1; ``k`` is ignored). ``device``: where to train
    (default: the device of ``activations``). ``seed`` fixes the initialisation and the batch order without touching
    the caller's global RNG state. The SAE trains in float32 whatever the input dtype. ``hook_name``: the TransformerLens
    hook the rows came from, recorded in the SAE's metadata (``sae.cfg.metadata.hook_name``, saved in its
    ``cfg.json``) so that :func:`workbench.sae.feature_stats` can refuse the SAE at another site.

    Example: ``train_sae(cap.stats["blocks.3.hook_resid_post"].full, d_sae=2304, k=32, epochs=20)``
    """
    call = "train_sae"
    activations = _check_activations(call, activations)
    spec = _check_spec(call, activations.shape[0], d_sae=d_sae, k=k, architecture=architecture, epochs=epochs, lr=lr,
                       batch_size=batch_size, seed=seed, l1_coefficient=l1_coefficient)
    target = _check_device(call, device, activations.device)
    check_bool(call, "progress", progress)
    return _train(activations, spec, target, progress, _check_hook_name(call, hook_name))


def _check_hook_name(call: str, hook_name: Any) -> str | None:
    if hook_name is not None and (not isinstance(hook_name, str) or not hook_name):
        raise config_error(call, "hook_name", "None or a TransformerLens hook name (a non-empty str)", hook_name)
    return hook_name


def _train(activations: torch.Tensor, spec: _Spec, device: torch.device, progress: bool,
           hook_name: str | None = None) -> TrainedSAE:
    from sae_lens import (
        SAE,
        LoggingConfig,
        SAETrainer,
        StandardTrainingSAE,
        StandardTrainingSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )
    from sae_lens.config import SAETrainerConfig

    from workbench.progress import bar as progress_bar

    x = activations.detach().to(device=device, dtype=torch.float32).contiguous()
    n, d = x.shape
    steps_per_epoch = n // spec.batch_size

    # Build on the CPU inside a forked RNG: the initialisation depends on the seed only (not on the device or on
    # what the caller did with the global generator), and the caller's RNG state is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        if spec.architecture == "topk":
            training_sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=spec.d_sae, k=spec.k, device="cpu"))
        else:
            training_sae = StandardTrainingSAE(StandardTrainingSAEConfig(
                d_in=d, d_sae=spec.d_sae, l1_coefficient=spec.l1_coefficient, device="cpu"))
    training_sae.to(device)

    trainer_cfg = SAETrainerConfig(
        total_training_samples=spec.epochs * steps_per_epoch * spec.batch_size,
        train_batch_size_samples=spec.batch_size,
        lr=spec.lr,
        lr_end=spec.lr,
        lr_scheduler_name="constant",
        device=str(device),
        # A latent that fired on no row for a whole epoch is dead (sae-lens's default window is 1000 steps, longer
        # than most in-memory runs); dead latents feed TopK's aux-k loss. Sparsity statistics reset once an epoch.
        dead_feature_window=min(1000, steps_per_epoch),
        feature_sampling_window=steps_per_epoch,
        logger=LoggingConfig(log_to_wandb=False),
    )
    # The data provider is never consumed: we feed SAETrainer.step ourselves (as sae-lens's MultiSAETrainer does).
    trainer = SAETrainer(cfg=trainer_cfg, sae=training_sae, data_provider=iter(()))

    order = torch.Generator().manual_seed(spec.seed)
    history: list[float] = []
    for _ in progress_bar(range(spec.epochs), desc="Training SAE", disable=not progress):
        perm = torch.randperm(n, generator=order).to(device)
        total = torch.zeros((), device=device)
        for step in range(steps_per_epoch):
            trainer.maybe_reset_sparsity()
            out = trainer.step(x[perm[step * spec.batch_size:(step + 1) * spec.batch_size]])
            trainer.n_training_steps += 1
            total += out.loss.detach()
        history.append(float(total) / steps_per_epoch)
    trainer.set_final_sae_metadata()

    with tempfile.TemporaryDirectory(prefix="workbench-sae-") as tmp:
        training_sae.save_inference_model(tmp)
        sae = SAE.load_from_disk(tmp, device=str(device), fold_W_dec_norm=spec.architecture == "standard")
    sae.eval()
    if hook_name is not None:
        sae.cfg.metadata.hook_name = hook_name
    fvu, l0 = _fit_stats(sae, x)
    return TrainedSAE(sae=sae, fvu=fvu, l0=l0, history=tuple(history))


@torch.no_grad()
def _fit_stats(sae: SAE, x: torch.Tensor) -> tuple[float, float]:
    """(FVU, mean L0) of ``sae`` on ``x``, accumulated in float64 over row chunks."""
    mean = x.double().mean(0)
    residual = torch.zeros((), dtype=torch.float64, device=x.device)
    spread = torch.zeros((), dtype=torch.float64, device=x.device)
    active = torch.zeros((), dtype=torch.float64, device=x.device)
    for chunk in x.split(_EVAL_CHUNK):
        acts = sae.encode(chunk)
        recon = sae.decode(acts)
        residual += (chunk.double() - recon.double()).pow(2).sum()
        spread += (chunk.double() - mean).pow(2).sum()
        active += (acts != 0).sum()
    fvu = float(residual / spread) if float(spread) > 0 else (0.0 if float(residual) == 0 else math.inf)
    return fvu, float(active) / x.shape[0]


# ---------------------------------------------------------------------------------------------------------------------
# using a trained SAE


def _unwrap(call: str, sae: Any) -> SAE:
    from sae_lens import SAE

    if isinstance(sae, TrainedSAE):
        return sae.sae
    if isinstance(sae, SAE):
        return sae
    raise config_error(call, "sae", "a TrainedSAE or a sae_lens SAE", type(sae).__name__)


@torch.no_grad()
def encode(sae: TrainedSAE | SAE, x: torch.Tensor) -> torch.Tensor:
    """Feature activations ``[N, d_sae]`` of the rows of ``x`` ``[N, d]`` (float32, on the device of ``x``).

    Example: ``encode(sae, z).shape``"""
    call = "encode"
    model = _unwrap(call, sae)
    x = _check_activations_for(call, x, int(model.cfg.d_in))
    out = [model.encode(chunk.to(device=model.device, dtype=model.dtype)) for chunk in x.split(_EVAL_CHUNK)]
    return torch.cat(out).to(x.device)


def _check_activations_for(call: str, x: Any, d_in: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise shape_error(call, "x", f"a 2-D torch tensor [N, {d_in}]", type(x).__name__)
    if x.ndim != 2 or x.shape[1] != d_in:
        raise shape_error(call, "x", f"a 2-D tensor [N, {d_in}]", f"shape {tuple(x.shape)}")
    if x.dtype.is_complex or x.dtype == torch.bool:
        raise shape_error(call, "x", "a real floating or integer tensor", x.dtype)
    return x.detach()


def decoder_directions(sae: TrainedSAE | SAE) -> torch.Tensor:
    """The decoder matrix ``W_dec`` ``[d_sae, d]`` (a detached copy); rows are unit norm for SAEs from this module.

    Example: ``decoder_directions(sae).shape``"""
    return _unwrap("decoder_directions", sae).W_dec.detach().clone()


# ---------------------------------------------------------------------------------------------------------------------
# disk cache


def _tensor_digest(x: torch.Tensor) -> str:
    """SHA-256 of the tensor's shape, dtype and raw bytes (row-major)."""
    data = x.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{tuple(data.shape)}|{data.dtype}|".encode())
    if data.numel():
        digest.update(memoryview(data.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def _sae_lens_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sae-lens")
    except PackageNotFoundError:  # pragma: no cover - sae-lens is a dependency
        return "unknown"


def _load_cached(folder: Path, identity: dict[str, Any], device: torch.device) -> TrainedSAE | None:
    """The cached SAE in ``folder`` if it is complete and was trained for ``identity``, else ``None``."""
    from sae_lens import SAE

    try:
        info = json.loads((folder / INFO_FILE).read_text())
        if info.get("identity") != identity:
            return None
        sae = SAE.load_from_disk(folder, device=str(device))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError):
        return None
    sae.eval()
    return TrainedSAE(sae=sae, fvu=float(info["fvu"]), l0=float(info["l0"]),
                      history=tuple(float(v) for v in info["history"]), path=folder, key=identity["key"])


def cached_sae(activations: torch.Tensor, *, key: dict[str, Any], cache_dir: Path | str | None = None,
               **train_kwargs: Any) -> TrainedSAE:
    """:func:`train_sae` once, then load from disk: the cache folder is named by a hash of ``key``, the bytes of
    ``activations`` and the training arguments that change the result (not ``device`` or ``progress``).

    ``key``: a JSON-serialisable dict describing where the activations came from (model, layer, data, ...); it is
    stored with the SAE. ``cache_dir``: default ``workbench.models.cache.cache_root() / "sae"``. A folder that is
    incomplete, unreadable or trained for other arguments is retrained and replaced; the folder is written atomically
    (:func:`workbench.atomic.replace_folder`), so an interrupted save leaves nothing behind. Processes asking for the
    same folder at once take turns (:func:`workbench.atomic.folder_lock`): the first trains and writes, the others
    wait and load its SAE.

    Example: ``cached_sae(z, key={"model": "gemma3-270m", "layer": 15}, d_sae=1024, k=32)``
    """
    call = "cached_sae"
    if not isinstance(key, dict):
        raise config_error(call, "key", "a dict describing the activations (model, layer, data, ...)", key)
    try:
        key_json = json.loads(json.dumps(key, sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise config_error(call, "key", "a JSON-serialisable dict (str keys; str/number/bool/None/list/dict values)",
                           key) from exc
    signature = inspect.signature(train_sae)
    try:
        bound = signature.bind(activations, **train_kwargs)
    except TypeError as exc:
        unknown = sorted(set(train_kwargs) - set(signature.parameters))
        name = unknown[0] if unknown else "train_kwargs"
        raise config_error(call, name, f"a keyword argument of train_sae ({', '.join(list(signature.parameters)[1:])})",
                           train_kwargs.get(name, train_kwargs)) from exc
    bound.apply_defaults()
    args = dict(bound.arguments)
    activations = _check_activations(call, args.pop("activations"))
    device = _check_device(call, args.pop("device"), activations.device)
    progress = check_bool(call, "progress", args.pop("progress"))
    hook_name = _check_hook_name(call, args.pop("hook_name"))
    spec = _check_spec(call, activations.shape[0], **args)
    if cache_dir is None:
        from workbench.models.cache import cache_root

        cache_dir = cache_root() / "sae"
    elif not isinstance(cache_dir, (str, Path)):
        raise config_error(call, "cache_dir", "None or a folder path", cache_dir)

    identity = {
        "format": _FORMAT,
        "key": key_json,
        "data": {"sha256": _tensor_digest(activations), "shape": list(activations.shape),
                 "dtype": str(activations.dtype)},
        "train": spec.identity(),
        "sae_lens": _sae_lens_version(),
    }
    if hook_name is not None:  # only when given, so the cache names of SAEs trained without one stay as they were
        identity["hook_name"] = hook_name
    name = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]
    folder = Path(cache_dir) / f"{spec.architecture}-{spec.d_sae}-{name}"
    with folder_lock(folder, timeout=None):  # a second process training the same SAE waits, then loads this one
        if folder.is_dir():
            hit = _load_cached(folder, identity, device)
            if hit is not None:
                return hit

        trained = _train(activations, spec, device, progress, hook_name)

        def fill(tmp: Path) -> None:
            trained.sae.save_model(tmp)
            info = {"identity": identity, "fvu": trained.fvu, "l0": trained.l0, "history": list(trained.history)}
            (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))  # written last: marks completion

        replace_folder(folder, fill, locked=True)
    return TrainedSAE(sae=trained.sae, fvu=trained.fvu, l0=trained.l0, history=trained.history, path=folder,
                      key=key_json)
