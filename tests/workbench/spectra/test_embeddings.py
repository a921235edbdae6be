"""RankMe of embedding matrices (workbench.spectra.embeddings): closed forms, numpy's SVD in float64, centring,
refusals, and embedding files in the three formats."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.helpers import numpy_rankme
from workbench.errors import ConfigError, ShapeError
from workbench.spectra.embeddings import rankme_of, rankme_of_file

EPS = 1e-7


def test_identity_and_rank_one_closed_forms():
    n = 50
    ident = float(n * (1 / n + EPS) * -math.log(1 / n + EPS))
    assert rankme_of([torch.eye(n, dtype=torch.float64)])[0] == pytest.approx(math.exp(ident), rel=1e-12)
    u, v = torch.randn(n, 1, dtype=torch.float64), torch.randn(1, 30, dtype=torch.float64)
    # σ = (s, 0, ..., 0): p = (1 + ε, ε, ..., ε) over min(n, d) = 30 values
    h = -((1 + EPS) * math.log(1 + EPS) + 29 * EPS * math.log(EPS))
    assert rankme_of([u @ v])[0] == pytest.approx(math.exp(h), rel=1e-6)
    assert 1.0 < rankme_of([u @ v])[0] < 1.0001


def test_matches_numpy_and_is_scale_and_rotation_invariant(device):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(80, 40, generator=g, dtype=torch.float64) * torch.linspace(0.01, 1, 40, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(40, 40, generator=g, dtype=torch.float64))
    z, q = z.to(device), q.to(device)
    a, b, c = rankme_of([z, 3.5 * z @ q, z[:, :20]])  # two shapes: one batched call per shape
    assert a == pytest.approx(numpy_rankme(z.cpu().numpy()), rel=1e-10)
    assert b == pytest.approx(a, rel=1e-10)
    assert c == pytest.approx(numpy_rankme(z[:, :20].cpu().numpy()), rel=1e-10)


def test_centring_equals_rankme_of_centred_rows():
    z = torch.randn(60, 16, dtype=torch.float64) + 10.0
    assert rankme_of([z], center=True)[0] == pytest.approx(numpy_rankme((z - z.mean(0)).cpu().numpy()), rel=1e-9)
    assert rankme_of([z])[0] < rankme_of([z], center=True)[0]  # the mean direction dominates the uncentred spectrum


@pytest.mark.parametrize("bad", [torch.randn(1, 8), torch.randn(8)])
def test_one_row_or_1d_embeddings_are_rejected(bad):
    with pytest.raises(ConfigError, match=r"matrices\[0\]"):
        rankme_of([bad])


def test_nan_is_rejected():
    z = torch.randn(10, 4)
    z[3, 2] = float("nan")
    with pytest.raises(ShapeError, match=r"'matrices\[0\]' must be finite"):
        rankme_of([z])


def test_embedding_files_in_three_formats(tmp_path):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(30, 12, generator=g), torch.randn(30, 12, generator=g) @ torch.diag(torch.logspace(0, -3, 12))
    np.save(tmp_path / "one.npy", a.cpu().numpy())
    np.save(tmp_path / "stack.npy", torch.stack([a, b]).cpu().numpy())
    torch.save({"layer10": b, "layer2": a}, tmp_path / "named.pt")
    save_file({"x": a.contiguous(), "y": b.contiguous()}, tmp_path / "st.safetensors")
    ra, rb = numpy_rankme(a.cpu().numpy()), numpy_rankme(b.cpu().numpy())
    assert rankme_of_file(tmp_path / "one.npy") == {"one": pytest.approx(ra, rel=1e-5)}
    assert rankme_of_file(tmp_path / "stack.npy") == {"0": pytest.approx(ra, rel=1e-5), "1": pytest.approx(rb, rel=1e-4)}
    assert list(rankme_of_file(tmp_path / "named.pt")) == ["layer2", "layer10"]  # natural order
    assert rankme_of_file(tmp_path / "st.safetensors")["y"] == pytest.approx(rb, rel=1e-4)
