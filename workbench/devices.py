"""Devices named by users (``--device``, ``device=``), checked at the boundary.

torch parses ``"cuda"`` on a CPU-only build without complaint and fails later, deep inside the first tensor move, with
``AssertionError: Torch not compiled with CUDA enabled`` (or ``RuntimeError: CUDA error: invalid device ordinal`` for
``"cuda:7"`` on a one-GPU machine). :func:`check_device` says it up front, in the one message format of
:mod:`workbench.errors`.
"""

from __future__ import annotations

from typing import Any

from workbench.errors import config_error

__all__ = ["check_device"]


def check_device(call: str, name: str, value: Any) -> Any:
    """``value`` as a ``torch.device`` this machine has, else ConfigError naming ``call`` and ``name``: parsed
    (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``) and present — CUDA needs a CUDA build of torch with a visible GPU
    of that index, MPS ``torch.backends.mps.is_available()``, another accelerator its ``torch.<type>.is_available()``.

    Example: ``check_device(call="capture", name="device", value="cpu")  # torch.device("cpu")``"""
    import torch

    allowed = "a device this machine has, such as 'cpu'"
    if isinstance(value, str):
        if value != value.strip() or not value:
            raise config_error(call, name, allowed, value)
    elif not isinstance(value, torch.device):
        raise config_error(call, name, f"{allowed} (a str or torch.device)", value)
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise config_error(call, name, f"{allowed} or 'cuda:N' ({str(exc).splitlines()[0][:200]})", value) from None
    missing = _missing(device)
    if missing:
        raise config_error(call, name, f"{allowed} ({missing})", value)
    return device


def _missing(device: Any) -> str:
    """Why ``device`` is not on this machine ('' when it is)."""
    import torch

    if device.type in ("cpu", "meta"):
        return ""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return ("this torch is a CPU-only build" if torch.version.cuda is None else "no CUDA GPU is visible") + \
                ": CUDA is not available"
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            return f"this machine has {count} CUDA device(s): cuda:0 .. cuda:{count - 1}"
        return ""
    if device.type == "mps":
        return "" if torch.backends.mps.is_available() else "MPS (Apple GPU) is not available here"
    available = getattr(getattr(torch, device.type, None), "is_available", None)
    if callable(available) and not available():
        return f"{device.type} is not available here"
    return ""
