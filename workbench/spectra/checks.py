"""Input checks shared by the spectra modules: tensor conversion and the NaN/Inf guard, with the standard messages.

Why public: svd.py, metrics.py, esd.py, dynamics.py and gradients.py all take user tensors and must refuse the same
things the same way (a ``ShapeError`` naming the call and parameter), before LAPACK/cuSOLVER sees them.
"""

from __future__ import annotations

import torch

from workbench.errors import shape_error

__all__ = ["as_tensor", "check_finite", "has_values"]


def as_tensor(call: str, name: str, x: object) -> torch.Tensor:
    """``torch.as_tensor`` (no copy for tensors/numpy), re-raising conversion failures in the standard format.

    Example: ``x = as_tensor("effective_rank", "s", [3.0, 2.0, 1.0])``"""
    if isinstance(x, torch.Tensor):
        return x
    try:
        return torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise shape_error(call, name, "a torch tensor or numpy array of real numbers", type(x).__name__) from exc


def has_values(x: torch.Tensor) -> bool:
    """False for a ``meta`` tensor (shape and dtype without data): value checks are skipped there, so every spectra
    function also runs on ``meta`` to propagate shapes, dtypes and devices (tests/workbench/test_device.py).

    Example: ``has_values(torch.empty(4, 8, device="meta"))  # False: shapes only``"""
    return x.device.type != "meta"


def check_finite(call: str, name: str, x: torch.Tensor) -> None:
    """Reject NaN/Inf: LAPACK/cuSOLVER either fail obscurely or return garbage on them. One device-to-host read of a
    flag per call (none on ``meta``). The common case is decided by the float64 sum alone, which is finite only if
    every entry is (a NaN or Inf propagates; a sum that overflows on huge finite entries falls through to the
    elementwise check): one read pass instead of ``isfinite``'s boolean tensor (73 ms vs 5 ms for [30, 576, 576]).

    Example: ``check_finite("singular_values", "x", torch.randn(8, 4))  # None; NaN/Inf raise a ShapeError``"""
    if not (x.dtype.is_floating_point and has_values(x)) or bool(torch.isfinite(x.sum(dtype=torch.float64))):
        return
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise shape_error(call, name, "finite (no NaN or Inf)", f"{bad} non-finite entries in shape {tuple(x.shape)}")
