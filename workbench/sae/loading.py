"""Getting an SAE for a site of a model: load one saved by sae-lens, or train one on activations captured there, and
check that it fits the site (width ``d_in``, and the hook name when the SAE records one).

sae-lens's on-disk format is a folder with ``cfg.json`` and ``sae_weights.safetensors`` (``SAE.save_model`` /
``SAE.load_from_disk``, also what its training runner writes as the final inference SAE); safetensors carry no code,
so loading a folder runs nothing from it. ``cfg.json``'s ``metadata.hook_name`` names the TransformerLens hook the SAE
was trained on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from workbench.capture.hooks import StopForward, hook_user, hooks_attached, resolve_sites, stoppable
from workbench.errors import ModelLoadError, SiteError, config_error
from workbench.models.loaded import LoadedModel
from workbench.sae.training import TrainedSAE, cached_sae
from workbench.validation import check_int

if TYPE_CHECKING:
    from sae_lens import SAE

_WEIGHTS = "sae_weights.safetensors"
_CONFIG = "cfg.json"


def load_sae(path: str | Path, *, device: str | torch.device = "cpu") -> SAE:
    """An SAE from a folder in sae-lens's format (``SAE.load_from_disk``), in ``eval()`` mode on ``device``.

    A missing folder or file is a ConfigError naming ``path``; a folder sae-lens cannot read is a ModelLoadError with
    sae-lens's reason.

    Example: ``sae = load_sae("runs/blocks.15.hook_resid_post", device="cpu")``"""
    from sae_lens import SAE

    call = "load_sae"
    if not isinstance(path, (str, Path)):
        raise config_error(call, "path", "a folder path (str or Path)", path)
    folder = Path(path).expanduser()
    missing = [name for name in (_CONFIG, _WEIGHTS) if not (folder / name).is_file()]
    if not folder.is_dir() or missing:
        what = "no such folder" if not folder.is_dir() else f"{folder} lacks {', '.join(missing)}"
        raise config_error(call, "path", f"a folder saved by sae-lens ({_CONFIG} + {_WEIGHTS})", what)
    try:
        sae = SAE.load_from_disk(folder, device=str(device))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ModelLoadError(f"load_sae(): sae-lens could not load the SAE in {folder}: "
                             f"{type(exc).__name__}: {exc}") from exc
    sae.eval()
    return sae


def sae_hook_name(sae: Any) -> str | None:
    """The TransformerLens hook name an SAE records (``sae.cfg.metadata.hook_name``), or None.

    Example: ``sae_hook_name(load_sae("runs/sae"))``"""
    model = sae.sae if isinstance(sae, TrainedSAE) else sae
    metadata = getattr(getattr(model, "cfg", None), "metadata", None)
    name = getattr(metadata, "hook_name", None) if metadata is not None else None
    return name if isinstance(name, str) and name else None


@hook_user("sae.site_width", exercise=lambda lm: site_width(lm, "blocks.0.hook_resid_post"))
def site_width(lm: LoadedModel, site: str) -> int:
    """The per-token width of ``site`` (trailing dimensions multiplied, as capture flattens them), from one forward of
    two tokens that stops at the site. A site that is not per-token is a SiteError.

    Example: ``site_width(lm, "blocks.15.hook_resid_post")``"""
    points = lm.hook_points()
    seen: dict[str, tuple[int, ...]] = {}

    def hook(x: torch.Tensor, hook: object = None) -> None:
        seen["shape"] = tuple(x.shape)
        raise StopForward

    ids = torch.tensor([[int(lm.tokenizer.bos_token_id or 0)] * 2], device=lm.device)
    with hooks_attached(points, {site: hook}), stoppable(), torch.inference_mode():
        lm.model(ids)
    shape = seen.get("shape")
    if shape is None or len(shape) < 3 or shape[:2] != (1, 2):
        raise SiteError(f"site {site!r} gives activations of shape {shape} for 2 tokens; an SAE reads per-token rows "
                        f"[batch, position, ...]")
    return int(torch.tensor(shape[2:]).prod())


def resolve_sae_site(lm: LoadedModel, sae: Any, site: str | None, *, call: str) -> str:
    """The site an SAE is used at: ``site`` (one exact hook name) or, when None, the hook the SAE records; checked
    against the SAE's ``d_in`` and recorded hook name (ConfigError naming ``site`` or ``sae`` otherwise).

    Example: ``resolve_sae_site(lm, sae, "blocks.15.hook_resid_post", call="feature_stats")``"""
    recorded = sae_hook_name(sae)
    if site is None:
        if recorded is None:
            raise config_error(call, "site", "a hook name (this SAE records none in cfg.metadata.hook_name)", None)
        site = recorded
    if not isinstance(site, str) or any(c in site for c in "*?["):
        raise config_error(call, "site", "one exact TransformerLens hook name (no glob)", site)
    site = resolve_sites(lm.hook_points(), site)[0]
    if recorded is not None and recorded != site:
        raise config_error(call, "site", f"the hook the SAE was trained on ({recorded!r})", site)
    model = sae.sae if isinstance(sae, TrainedSAE) else sae
    d_in, width = int(model.cfg.d_in), site_width(lm, site)
    if d_in != width:
        raise config_error(call, "sae", f"an SAE with d_in = {width} (the width of {site} in {lm.name})",
                           f"an SAE with d_in = {d_in}")
    return site


def train_site_sae(lm: LoadedModel, texts: Sequence[str], *, site: str, d_sae: int, k: int = 32,
                   architecture: str = "topk", epochs: int = 20, max_length: int = 128,
                   max_tokens: int | None = 50_000, batch_size: int = 8, seed: int = 0,
                   cache_dir: str | Path | None = None, progress: bool = False) -> TrainedSAE:
    """Capture every token's activation at ``site`` over ``texts`` (BOS excluded) and train a sae-lens SAE on them
    with :func:`~workbench.sae.cached_sae` (trained once, then loaded from the cache). The SAE records ``site`` as its
    hook name, so :func:`~workbench.sae.feature_stats` refuses it elsewhere.

    Example: ``train_site_sae(lm, default_prompts(), site="blocks.15.hook_resid_post", d_sae=2304, k=32)``"""
    from workbench.capture.capture import capture

    call = "train_site_sae"
    if not isinstance(site, str):
        raise config_error(call, "site", "one exact TransformerLens hook name", site)
    check_int(call, "epochs", epochs, low=1)
    result = capture(lm, list(texts), sites=site, keep="full", max_length=max_length, max_tokens=max_tokens,
                     batch_size=batch_size, progress=progress)
    name = next(iter(result.stats))
    rows = result.stats[name].full
    digest = hashlib.sha256(json.dumps(list(texts)).encode()).hexdigest()[:16]
    key = {"model": lm.name, "site": name, "texts_sha256": digest, "n_tokens": int(rows.shape[0]),
           "max_length": max_length}
    return cached_sae(rows, key=key, cache_dir=cache_dir, d_sae=d_sae, k=k, architecture=architecture,
                      epochs=epochs, seed=seed, progress=progress, hook_name=name)
