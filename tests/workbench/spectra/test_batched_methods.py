"""batched_singular_values: the Gram route agrees with the SVD route, and the choice is validated."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.errors import ConfigError
from workbench.spectra import batched_singular_values


@pytest.mark.parametrize("center", [False, True])
def test_gram_route_matches_float64_svd(center, device):
    g = torch.Generator().manual_seed(0)
    mats = [torch.randn(40, 12, generator=g), torch.randn(12, 40, generator=g), torch.randn(30, 30, generator=g) * 5]
    gram = batched_singular_values([m.to(device) for m in mats], method="gram", center=center)
    for m, s in zip(mats, gram, strict=True):
        assert s.device == device
        x = m.double().cpu().numpy()
        x = x - x.mean(0) if center else x
        ref = np.linalg.svd(x, compute_uv=False)
        assert s.dtype == torch.float32 and s.shape == (min(m.shape),)
        np.testing.assert_allclose(s.double().cpu().numpy(), ref, rtol=1e-5, atol=1e-6 * ref[0])


def test_auto_uses_svd_for_float64(device):
    m = torch.diag(torch.tensor([1.0, 1e-9, 1e-12], dtype=torch.float64, device=device))
    (s,) = batched_singular_values([m])
    assert s[2].item() == pytest.approx(1e-12, rel=1e-6)  # beyond any Gram route's reach


def test_unknown_method():
    with pytest.raises(ConfigError, match="'method'"):
        batched_singular_values([torch.eye(3)], method="qr")
