"""TAM building blocks (workbench.tam.core) against hand computations and an independent numpy transcription of the
filter's definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.errors import ConfigError, ShapeError
from workbench.tam import class_activation, estimated_causal_inference, min_max, rank_gaussian_filter


def test_window_one_to_nine_gives_the_median():
    grid = torch.arange(1.0, 10.0).reshape(3, 3)
    assert float(rank_gaussian_filter(grid)[1, 1]) == pytest.approx(5.0)


def test_constant_positive_window_gives_the_constant_not_nan():
    out = rank_gaussian_filter(torch.full((4, 4), 2.5))
    assert torch.equal(out, torch.full((4, 4), 2.5, dtype=torch.float64))
    assert torch.equal(rank_gaussian_filter(torch.full((5,), 0.7, dtype=torch.float64)),
                       torch.full((5,), 0.7, dtype=torch.float64))


def test_non_positive_window_mean_gives_zero():
    x = torch.tensor([[-1.0, -2.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 0.0]])
    assert torch.equal(rank_gaussian_filter(x), torch.zeros(3, 3, dtype=torch.float64))


def _numpy_filter(img: np.ndarray, k: int = 3) -> np.ndarray:
    """The definition written out with numpy: reflect pad, sort, σ = std/mean, Gaussian over rank offsets."""
    pad = k // 2
    padded = np.pad(img, pad, mode="reflect")
    out = np.zeros_like(img, dtype=float)
    n = k ** img.ndim
    ax = np.arange(n) - n // 2
    for idx in np.ndindex(img.shape):
        window = padded[tuple(slice(i, i + k) for i in idx)]
        s = np.sort(window.flatten())
        if s.mean() <= 0:
            continue
        sigma = s.std() / s.mean()
        g = np.exp(-(ax ** 2) / (2 * sigma ** 2))
        out[idx] = (s * g / g.sum()).sum()
    return out


@pytest.mark.parametrize("shape", [(5, 7), (11,)])
def test_filter_equals_the_numpy_definition(shape):
    rng = np.random.default_rng(0)
    img = rng.random(shape) - 0.2
    got = rank_gaussian_filter(torch.tensor(img)).cpu().numpy()
    assert np.allclose(got, _numpy_filter(img), atol=1e-12)


def test_filter_bad_inputs():
    with pytest.raises(ConfigError, match="'kernel_size'"):
        rank_gaussian_filter(torch.ones(5), kernel_size=2)
    with pytest.raises(ShapeError, match="'x'"):
        rank_gaussian_filter(torch.ones(2, 2, 2))
    with pytest.raises(ShapeError, match="'x'"):
        rank_gaussian_filter(torch.ones(1))


def test_eci_by_hand():
    a = torch.tensor([3.0, 1.0, 0.0, 2.0])
    maps = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0], [5.0, 5.0, 5.0, 5.0]])
    scores = torch.tensor([3.0, 1.0, 100.0])
    keep = torch.tensor([True, True, False])  # the third is the same word as the explained token: excluded
    w = torch.tensor([3.0, 1.0]) / (4.0 + 1e-8)
    interference = w[0] * maps[0] + w[1] * maps[1]
    s = float(a @ interference) / float(interference @ interference)
    expected = (a - s * interference).clamp_min(0)
    got = estimated_causal_inference(a, maps, scores, keep)
    assert torch.allclose(got, expected.double(), atol=1e-12)
    assert float(got.min()) >= 0


def test_eci_without_earlier_tokens_or_with_zero_interference_is_the_activation():
    a = torch.tensor([1.0, 2.0])
    assert torch.equal(estimated_causal_inference(a, torch.zeros(0, 2), torch.zeros(0)), a.double())
    assert torch.equal(estimated_causal_inference(a, torch.zeros(1, 2), torch.ones(1)), a.double())
    with pytest.raises(ShapeError, match="'earlier_maps'"):
        estimated_causal_inference(a, torch.zeros(1, 3), torch.ones(1))


def test_class_activation_and_min_max():
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    assert class_activation(h, torch.tensor([2.0, 1.0])).tolist() == [2.0, 1.0, 0.0]
    img, txt = min_max(torch.tensor([1.0, 3.0]), torch.tensor([5.0]))
    assert img.tolist() == [0.0, 0.5] and txt.tolist() == [1.0]
    img, txt = min_max(torch.tensor([1.0, 3.0]), torch.tensor([5.0]), joint=False)
    assert img.tolist() == [0.0, 1.0] and txt.tolist() == [0.0]
