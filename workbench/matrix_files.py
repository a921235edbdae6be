"""Read embedding matrices from disk (``.npy``, ``.pt``, ``.safetensors``) for analyses of any encoder's outputs.

A file yields one or more named 2-D float matrices ``[n_samples, dim]``:

- ``.npy``: a 2-D array (one matrix, named after the file) or a 3-D array ``[L, n, d]`` (one matrix per leading index,
  named ``"0"``, ``"1"`` ...: e.g. one per layer);
- ``.pt``: a tensor (as ``.npy``) or a dict of name → 2-D tensor, loaded with ``weights_only=True`` (no pickled code);
- ``.safetensors``: every tensor in the file, by its key (2-D, or 3-D split as above).

Errors name the file, the key and what was wrong; nothing is half-read.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from workbench.errors import ConfigError

SUFFIXES = (".npy", ".pt", ".safetensors")


def read_matrices(path: str | Path, *, min_rows: int = 2) -> dict[str, torch.Tensor]:
    """Named float matrices from ``path`` (see the module docstring), each with at least ``min_rows`` rows.

    Example: ``{name: m.shape for name, m in read_matrices("embeddings.npy", min_rows=2).items()}``"""
    path = Path(path)
    call = "read_matrices"
    if path.suffix not in SUFFIXES:
        raise ConfigError(f"{call}(): parameter 'path' must end in one of {SUFFIXES}; received {path.name!r}")
    if not path.is_file():
        raise ConfigError(f"{call}(): parameter 'path' must be an existing file; received {str(path)!r}")
    try:
        raw = {name: torch.as_tensor(value) for name, value in _load(path).items()}
    except ConfigError:
        raise
    except Exception as exc:  # corrupt or foreign file: name it, whatever the reader's own exception type
        raise ConfigError(f"{call}(): could not read {path}: {type(exc).__name__}: {exc}") from None
    out: dict[str, torch.Tensor] = {}
    for name, t in raw.items():
        if t.ndim == 3:
            split = {f"{name}{'.' if name else ''}{i}": t[i] for i in range(t.shape[0])}
            clash = sorted(set(split) & (set(raw) | set(out)))
            if clash:
                raise ConfigError(f"{call}(): {path}: splitting 3-D {name!r} gives names that already exist: {clash}")
            out.update(split)
        elif t.ndim == 2:
            out[name or path.stem] = t
        else:
            raise ConfigError(f"{call}(): {path} key {name or '(array)'!r} must be 2-D [n_samples, dim] or 3-D "
                              f"[n_matrices, n_samples, dim]; received shape {tuple(t.shape)}")
    if not out:
        raise ConfigError(f"{call}(): {path} holds no matrices")
    for name, t in out.items():
        if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
            raise ConfigError(f"{call}(): {path} matrix {name!r} must hold numbers; received dtype {t.dtype}")
        if t.shape[0] < min_rows:
            raise ConfigError(f"{call}(): {path} matrix {name!r} must have at least {min_rows} rows (samples) for a "
                              f"spectrum; received shape {tuple(t.shape)}")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ConfigError(f"{call}(): {path} matrix {name!r} contains NaN or infinite values")
    return dict(sorted(out.items(), key=lambda kv: _natural_key(kv[0])))


def _load(path: Path) -> dict[str, object]:
    if path.suffix == ".npy":
        return {"": np.load(path, allow_pickle=False)}
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, torch.Tensor):
        return {"": obj}
    if isinstance(obj, dict) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return obj
    raise ConfigError(f"read_matrices(): {path} must hold a tensor or a dict of str → tensor; "
                      f"received {type(obj).__name__}")


def _natural_key(name: str) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
