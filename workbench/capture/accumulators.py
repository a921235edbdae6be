"""Streaming statistics of token rows: memory is flat in the number of tokens.

:class:`Moments` keeps the count, the mean and the *centred* co-moment ``M = Σ (x − μ)(x − μ)ᵀ`` in float64, merged
batch by batch with Chan, Golub & LeVeque's pairwise update (1979, eq. 2.1b):
``M = M_a + M_b + (n_a n_b / n)·δδᵀ`` with ``δ = μ_b − μ_a``. Keeping the centred co-moment (rather than ``XᵀX``)
avoids the cancellation ``XᵀX − nμμᵀ`` suffers when the mean is large (Gemma's residual has a dimension with
mean |x| ≈ 7,000); the uncentred Gram is recovered exactly as ``M + nμμᵀ``.
"""

from __future__ import annotations

import torch


class Moments:
    """Count, mean and centred co-moment of rows ``[n, d]``, accumulated in float64 on ``device``.

    ``product_dtype`` is the dtype of each batch's ``XᵀX`` product (float64 by default; float32 halves its cost at a
    relative error of about 1e-6 of the largest eigenvalue per batch). Accumulation is always float64.
    """

    def __init__(self, d: int, device: torch.device, product_dtype: torch.dtype = torch.float64) -> None:
        self.n = 0
        self.mean = torch.zeros(d, dtype=torch.float64, device=device)
        self.comoment = torch.zeros(d, d, dtype=torch.float64, device=device)
        self.product_dtype = product_dtype

    def update(self, rows: torch.Tensor) -> None:
        m = rows.shape[0]
        if m == 0:
            return
        rows64 = rows.to(device=self.mean.device, dtype=torch.float64)
        batch_mean = rows64.mean(0)
        centred = (rows64 - batch_mean).to(self.product_dtype)
        batch_m = (centred.T @ centred).to(torch.float64)
        n = self.n + m
        delta = batch_mean - self.mean
        self.comoment += batch_m
        self.comoment.add_(torch.outer(delta, delta), alpha=self.n * m / n)
        self.mean += delta * (m / n)
        self.n = n


class Reservoir:
    """A uniform random sample of at most ``size`` rows from a stream (Vitter's Algorithm R), seeded."""

    def __init__(self, size: int, d: int, device: torch.device, dtype: torch.dtype, seed: int) -> None:
        self.rows = torch.empty(size, d, device=device, dtype=dtype)
        self.size = size
        self.seen = 0
        self.generator = torch.Generator(device="cpu").manual_seed(seed)

    def update(self, rows: torch.Tensor) -> None:
        rows = rows.to(device=self.rows.device, dtype=self.rows.dtype)
        fill = min(max(self.size - self.seen, 0), rows.shape[0])
        if fill:
            self.rows[self.seen:self.seen + fill] = rows[:fill]
        index = torch.arange(self.seen + fill, self.seen + rows.shape[0], dtype=torch.float64)
        slots = (torch.rand(index.shape[0], generator=self.generator, dtype=torch.float64) * (index + 1)).long()
        hits = torch.nonzero(slots < self.size).flatten().tolist()
        last_for_slot = {int(slots[i]): fill + i for i in hits}  # later rows win, as in the sequential algorithm
        if last_for_slot:
            targets = torch.tensor(list(last_for_slot), device=self.rows.device)
            sources = torch.tensor(list(last_for_slot.values()), device=rows.device)
            self.rows[targets] = rows[sources]
        self.seen += rows.shape[0]

    def sample(self) -> torch.Tensor:
        return self.rows[: min(self.seen, self.size)].clone()


class RowStore:
    """Rows written at given offsets (``keep="full"`` keeps text order; per-prompt vectors use one row per text).

    The caller checked the memory budget before creating it.
    """

    def __init__(self, n_rows: int, d: int, device: torch.device, dtype: torch.dtype) -> None:
        self.rows = torch.zeros(n_rows, d, device=device, dtype=dtype)

    def put(self, offset: int, rows: torch.Tensor) -> None:
        self.rows[offset:offset + rows.shape[0]] = rows.to(self.rows.device, self.rows.dtype)
