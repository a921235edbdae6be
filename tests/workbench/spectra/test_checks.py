"""The shared input checks of workbench.spectra: one conversion and one NaN/Inf rule for every spectra module."""

import numpy as np
import pytest
import torch

from workbench.errors import ShapeError
from workbench.spectra import as_tensor, check_finite
from workbench.spectra.dynamics import erv_era
from workbench.spectra.gradients import gradient_spectrum


def test_as_tensor_keeps_tensors_converts_arrays_and_refuses_the_rest():
    t = torch.ones(2, 3)
    assert as_tensor("f", "x", t) is t
    assert torch.equal(as_tensor("f", "x", np.eye(2)), torch.eye(2, dtype=torch.float64))
    with pytest.raises(ShapeError, match=r"f\(\).*'x'"):
        as_tensor("f", "x", object())


def test_check_finite_counts_bad_entries_and_ignores_integers():
    check_finite("f", "x", torch.arange(4))
    x = torch.tensor([1.0, float("nan"), float("inf")])
    with pytest.raises(ShapeError, match=r"'x' must be finite.*2 non-finite"):
        check_finite("f", "x", x)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_check_finite_sum_shortcut_neither_misses_nor_invents(dtype):
    big = torch.finfo(dtype).max
    check_finite("f", "x", torch.full((3, 4), big, dtype=dtype))  # sum overflows: finite entries, accepted
    check_finite("f", "x", torch.tensor([big, -big], dtype=dtype))
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.zeros(5, dtype=dtype)
        x[3] = bad
        with pytest.raises(ShapeError, match="1 non-finite"):
            check_finite("f", "x", x)
    pair = torch.tensor([float("inf"), -float("inf"), 1.0], dtype=dtype)  # inf - inf: the sum is NaN, still caught
    with pytest.raises(ShapeError, match="2 non-finite"):
        check_finite("f", "x", pair)


@pytest.mark.parametrize("call", [
    lambda bad: erv_era(bad, stride=2, max_seq_len=8),
    lambda bad: gradient_spectrum(bad, torch.ones(4, 3)),
])
def test_every_spectra_module_refuses_nan_the_same_way(call):
    bad = torch.ones(4, 3)
    bad[1, 1] = float("nan")
    with pytest.raises(ShapeError, match="finite.*1 non-finite"):
        call(bad)
