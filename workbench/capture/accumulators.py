"""Streaming statistics of token rows: memory is flat in the number of tokens.

:class:`Moments` keeps the count, the mean and the *centred* co-moment ``M = Σ (x − μ)(x − μ)ᵀ`` in float64, merged
batch by batch with Chan, Golub & LeVeque's pairwise update (1979, eq. 2.1b):
``M = M_a + M_b + (n_a n_b / n)·δδᵀ`` with ``δ = μ_b − μ_a``. Keeping the centred co-moment (rather than ``XᵀX``)
avoids the cancellation ``XᵀX − nμμᵀ`` suffers when the mean is large (Gemma's residual has a dimension with
mean |x| ≈ 7,000); the uncentred Gram is recovered exactly as ``M + nμμᵀ``.

With ``product_dtype=torch.float32`` (what ``capture`` uses by default) each batch's product is a float32 matrix
product added into the float64 sums, by the *shifted-data* algorithm (Chan, Golub & LeVeque 1983, "Algorithms for
computing the sample variance: analysis and recommendations"): rows minus a fixed shift ``c`` (the mean of the first
batch, rounded to float32), so no float64 copy of the rows and no per-batch rank-one merge is needed; the shift keeps
the products centred to within the batch-to-batch drift of the mean, so a large mean never reaches the float32
products. What float32 costs is the rounding of the products themselves: the co-moment's eigenvalues move by at most
about 1e-7·λ_max (tested bound 1e-6·λ_max), which is below 1e-5·σ_max for every σ_i ≥ 0.05·σ_max and, in directions
of (near) zero variance, reads as σ up to ~1e-4·σ_max where the exact value is 0.

Either way only the lower triangle of each batch's product is computed: on CPU by column blocks of about 128
(``yᵀy[a:, a:b]``, ≈ 0.6x the flops of the full product; torch has no ``syrk``), elsewhere as one full product.
"""

from __future__ import annotations

import torch

from workbench.validation import check_choice

PRODUCT_DTYPES = (torch.float32, torch.float64)
_BLOCK = 128  # column-block width of the lower-triangle product on CPU (576 -> 4 blocks)


def _block_edges(d: int, device: torch.device) -> list[int]:
    """Column-block boundaries of the lower-triangle product: one block off-CPU (one kernel launch per product)."""
    k = max(1, round(d / _BLOCK)) if device.type == "cpu" else 1
    return [d * i // k for i in range(k + 1)]


def _add_lower_product(acc: torch.Tensor, y: torch.Tensor, edges: list[int]) -> None:
    """``acc[i, j] += (yᵀy)[i, j]`` for ``i >= j`` (in ``y``'s dtype, added into ``acc``'s); above it ``acc`` is stale."""
    for a, b in zip(edges[:-1], edges[1:], strict=False):
        acc[a:, a:b] += y[:, a:].T @ y[:, a:b]


def _symmetric(lower: torch.Tensor) -> torch.Tensor:
    """The symmetric matrix whose lower triangle (diagonal included) is ``lower``'s."""
    return torch.tril(lower) + torch.tril(lower, -1).mT


class Moments:
    """Count, mean and centred co-moment of rows ``[n, d]``, accumulated in float64 on ``device``.

    ``product_dtype``: ``torch.float64`` (default, the exact path) centres each batch on its own mean in float64 and
    merges it with the pairwise update; ``torch.float32`` (the fast path) uses the shifted-data algorithm with
    float32 products, about 3x cheaper on CPU. Bounds of the fast path against a float64 SVD of the same rows, tested
    in tests/workbench/capture/test_gram_precision.py: eigenvalues of the co-moment within 1e-6·λ_max (measured
    ≤ 1.1e-7 at d = 8, ≤ 6e-9 at d ≥ 64, with or without a mean 1e4 times the spread); singular values within
    1e-5·σ_max on SmolLM2-135M's residual, attention and MLP outputs (measured ≤ 2e-6) and for every σ_i ≥ 0.01·σ_max
    of the synthetic rows. ``mean`` and ``comoment`` are float64 whatever the path.

    Example: ``m = Moments(576, torch.device("cpu")); m.update(torch.randn(32, 576)); m.mean, m.comoment``"""

    def __init__(self, d: int, device: torch.device, product_dtype: torch.dtype = torch.float64) -> None:
        check_choice("Moments", "product_dtype", product_dtype, PRODUCT_DTYPES)
        self.n = 0
        self.product_dtype = product_dtype
        self._edges = _block_edges(d, torch.device(device))
        self._lower = torch.zeros(d, d, dtype=torch.float64, device=device)  # lower triangle valid
        self._mean = torch.zeros(d, dtype=torch.float64, device=device)  # exact path: the running mean
        self._sum = torch.zeros(d, dtype=torch.float64, device=device)  # fast path: Σ (x − c)
        self._shift: torch.Tensor | None = None  # fast path: c
        self._final: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def mean(self) -> torch.Tensor:
        return self._finalised()[0]

    @property
    def comoment(self) -> torch.Tensor:
        return self._finalised()[1]

    def update(self, rows: torch.Tensor) -> None:
        """Add a batch of rows ``[m, d]`` to the count, mean and centred co-moment (exact float64 pairwise merge, or the
        fast float32 shifted-data path per ``product_dtype``).

        Example: ``m.update(torch.randn(32, 576))  # a [rows, d] batch``"""
        m = rows.shape[0]
        if m == 0:
            return
        self._final = None
        if self.product_dtype == torch.float64:
            self._update_exact(rows.to(device=self._lower.device, dtype=torch.float64), m)
        else:
            self._update_shifted(rows.to(device=self._lower.device, dtype=torch.float32), m)
        self.n += m

    def _update_exact(self, rows64: torch.Tensor, m: int) -> None:
        """Chan, Golub & LeVeque (1979, eq. 2.1b): M += M_batch + (n_a m / n)·δδᵀ, δ = μ_batch − μ."""
        batch_mean = rows64.mean(0)
        _add_lower_product(self._lower, rows64 - batch_mean, self._edges)
        n = self.n + m
        delta = batch_mean - self._mean
        self._lower.addr_(delta, delta, alpha=self.n * m / n)
        self._mean += delta * (m / n)

    def _update_shifted(self, rows32: torch.Tensor, m: int) -> None:
        """Σ (x − c)(x − c)ᵀ (float32 products, float64 sums) and Σ (x − c), c fixed at the first batch's mean."""
        if self._shift is None:  # the mean summed in float64, so a huge mean leaves no large offset in y
            self._shift = rows32.mean(0, dtype=torch.float64).to(torch.float32)
        y = rows32 - self._shift
        self._sum += y.sum(0, dtype=torch.float64)
        _add_lower_product(self._lower, y, self._edges)

    def _finalised(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, comoment), recomputed after an update: M = Σ(x−c)(x−c)ᵀ − s sᵀ/n and μ = c + s/n on the fast path."""
        if self._final is None:
            if self.product_dtype == torch.float64 or self._shift is None:
                mean, lower = self._mean.clone(), self._lower
            else:
                mean = self._shift.to(torch.float64) + self._sum / self.n
                lower = self._lower.addr(self._sum, self._sum, alpha=-1.0 / self.n)
            self._final = (mean, _symmetric(lower))
        return self._final


class Reservoir:
    """A uniform random sample of at most ``size`` rows from a stream (Vitter's Algorithm R), seeded.

    Example: ``r = Reservoir(4096, 576, torch.device("cpu"), torch.float32, seed=0); r.update(rows); r.sample()``"""

    def __init__(self, size: int, d: int, device: torch.device, dtype: torch.dtype, seed: int) -> None:
        self.rows = torch.empty(size, d, device=device, dtype=dtype)
        self.size = size
        self.seen = 0
        self.generator = torch.Generator(device="cpu").manual_seed(seed)

    def update(self, rows: torch.Tensor) -> None:
        """Offer a batch of rows ``[m, d]`` to the sample: each stream row ends up kept with equal probability
        (Algorithm R).

        Example: ``r.update(torch.randn(32, 576))``"""
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
        """A copy of the rows kept so far (fewer than ``size`` while the stream is shorter).

        Example: ``r.sample().shape  # [min(seen, size), d]``"""
        return self.rows[: min(self.seen, self.size)].clone()


class RowStore:
    """Rows written at given offsets (``keep="full"`` keeps text order; per-prompt vectors use one row per text).

    The caller checked the memory budget before creating it.

    Example: ``store = RowStore(100, 576, torch.device("cpu"), torch.float32); store.put(0, torch.randn(10, 576))``"""

    def __init__(self, n_rows: int, d: int, device: torch.device, dtype: torch.dtype) -> None:
        self.rows = torch.zeros(n_rows, d, device=device, dtype=dtype)

    def put(self, offset: int, rows: torch.Tensor) -> None:
        """Write ``rows`` at ``offset`` (cast to the store's device and dtype).

        Example: ``store.put(10, torch.randn(5, 576))  # rows 10..14``"""
        self.rows[offset:offset + rows.shape[0]] = rows.to(self.rows.device, self.rows.dtype)
