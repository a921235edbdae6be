"""``capture``: run texts through a hooked model and stream per-site statistics (memory flat in token count)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from workbench.capture import tokens as tok
from workbench.capture.accumulators import Moments, Reservoir, RowStore
from workbench.capture.hooks import StopForward, hook_user, hooks_attached, resolve_sites, stoppable
from workbench.capture.result import CaptureResult, SiteStats
from workbench.devices import check_device
from workbench.errors import BudgetError, SiteError, config_error
from workbench.models.load import load_model
from workbench.models.loaded import LoadedModel
from workbench.progress import bar as progress_bar
from workbench.validation import check_choice, check_int

KEEP_OPTIONS = ("stats", "reservoir", "per_prompt", "full")
GRAM_DTYPES = ("auto", "float32", "float64")


@dataclass(frozen=True)
class _Placed:
    """One batch's masks as the hooks use them, moved to the activations' device once per batch (not once per site):
    ``keep`` holds the flat indices of the kept rows of ``[B·T, d]``, so the hooks gather with ``index_select``,
    which needs no device-to-host read (a boolean mask does, to size its result); ``counts`` (kept rows per text)
    and ``texts`` (the batch's text indices) stay host ints for splitting and offsets."""

    keep: torch.Tensor  # [n_kept] long
    counts: list[int]
    texts: list[int]
    text_index: torch.Tensor  # [B] long: texts on the device
    ends: torch.Tensor  # [B] long: each text's last position
    pooled: torch.Tensor  # [B, T] bool
    tokens: torch.Tensor  # [B, T]


def _place(batch: tok.Batch, device: torch.device) -> _Placed:
    return _Placed(keep=batch.rows.flatten().nonzero().flatten().to(device), counts=batch.rows.sum(1).tolist(),
                   texts=list(batch.text_index), text_index=torch.tensor(batch.text_index, device=device), ends=(batch.lengths - 1).to(device),
                   pooled=batch.pooled.to(device), tokens=batch.tokens.to(device))


@dataclass
class _Site:
    """Accumulators of one site, fed by its hook."""

    name: str
    moments: Moments
    reservoir: Reservoir | None = None
    last: RowStore | None = None
    pooled: RowStore | None = None
    full: RowStore | None = None
    offsets: list[int] = field(default_factory=list)

    def feed(self, x: torch.Tensor, batch: _Placed) -> None:
        """``x`` [B, T, d] on the device ``batch`` was placed on: no device-to-host transfer happens here."""
        rows = x.reshape(-1, x.shape[-1]).index_select(0, batch.keep.to(x.device))
        self.moments.update(rows)
        if self.reservoir is not None:
            self.reservoir.update(rows)
        if self.full is not None:
            for part, i in zip(rows.split(batch.counts), batch.texts, strict=True):
                self.full.put(self.offsets[i], part)
        if self.last is not None:
            index = batch.text_index.to(self.last.rows.device)
            ends = batch.ends.to(x.device)
            self.last.rows[index] = x[torch.arange(x.shape[0], device=x.device), ends].to(
                self.last.rows.device, self.last.rows.dtype)
            weights = batch.pooled.to(x.device, x.dtype)
            means = (x * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp_min(1)
            self.pooled.rows[index] = means.to(self.pooled.rows.device, self.pooled.rows.dtype)

    def result(self) -> SiteStats:
        m = self.moments
        return SiteStats(
            site=self.name, n=m.n, mean=m.mean, comoment=m.comoment,
            reservoir=None if self.reservoir is None else self.reservoir.sample(),
            last=None if self.last is None else self.last.rows,
            mean_pooled=None if self.pooled is None else self.pooled.rows,
            full=None if self.full is None else self.full.rows,
        )


def _check_keep(keep: str | Sequence[str]) -> set[str]:
    chosen = {keep} if isinstance(keep, str) else set(keep)
    if not chosen or not chosen <= set(KEEP_OPTIONS):
        raise config_error("capture", "keep", f"one or more of {KEEP_OPTIONS}", keep)
    return chosen | {"stats"}


def _probe(lm: LoadedModel, points: dict, sites: list[str], ids: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Two tiny forwards (2 and 3 tokens) to learn each site's shape and check it is per-token.

    A site is per-token when dim 1 follows the sequence length and the trailing dims do not; probing two lengths
    catches ``[batch, heads, pos, pos]`` patterns even when ``heads`` happens to equal a probe length.
    """
    ids = ids.repeat(3)[:3]
    shapes: list[dict[str, tuple[int, ...]]] = []
    for length in (2, 3):
        seen: dict[str, tuple[int, ...]] = {}

        def record(name: str):
            def hook(x: torch.Tensor, hook: object = None) -> None:
                seen.setdefault(name, tuple(x.shape))
            return hook

        with hooks_attached(points, {s: record(s) for s in sites}), torch.inference_mode():
            lm.model(ids[None, :length].to(lm.device))
        shapes.append(seen)
    missing = [s for s in sites if s not in shapes[0]]
    if missing:
        raise SiteError(f"capture(): sites {missing} did not fire during a forward pass (backward-only or unused)")
    for site in sites:
        two, three = shapes[0][site], shapes[1][site]
        if len(two) < 3 or two[:2] != (1, 2) or three[:2] != (1, 3) or two[2:] != three[2:]:
            raise SiteError(f"capture(): site {site!r} gives activations of shape {list(two)} for 2 tokens and "
                            f"{list(three)} for 3; capture needs [batch, position, ...] rows (attention patterns "
                            f"and other per-position-pair sites are not token rows)")
    return shapes[0]


@hook_user("capture", exercise=lambda lm: capture(lm, ["ab cd", "ef"], sites="blocks.*.hook_resid_post"))
def capture(
    lm: LoadedModel | torch.nn.Module | str,
    texts: str | Sequence[str],
    *,
    sites: str | Sequence[str],
    batch_size: int = 8,
    max_tokens: int | None = None,
    max_length: int | None = None,
    positions: str | int = "all",
    keep: str | Sequence[str] = "stats",
    exclude_bos: bool = True,
    reservoir_size: int = 4096,
    memory_budget: int = 1 << 30,
    seed: int = 0,
    gram_dtype: str = "auto",
    device: str | torch.device | None = None,
    progress: bool = False,
    per_prompt_sites: str | Sequence[str] | None = None,
) -> CaptureResult:
    """Stream ``texts`` through ``lm`` (a LoadedModel, or a module or name :func:`~workbench.load_model` accepts)
    and accumulate, per hook site, the token count, mean and centred Gram.

    ``sites``: TransformerLens hook names or globs (``"blocks.*.hook_resid_post"``). Per-position activations of
    any shape ``[batch, pos, ...]`` are flattened to ``[pos, d]`` rows. ``positions``: ``"all"`` tokens (pads
    masked; the prepended BOS too when ``exclude_bos``), ``"last"``, or an int index into each text's tokens (BOS
    included, negative from the end). ``max_length`` cuts each text, ``max_tokens`` the total fed to the model.
    ``keep`` adds to the streamed ``"stats"``: ``"reservoir"`` (``reservoir_size`` uniformly sampled rows, seeded),
    ``"per_prompt"`` (last-token and mean-pooled vectors per text) and ``"full"`` (every row; refused with
    :class:`BudgetError` before any work if it would exceed ``memory_budget`` bytes). Statistics live on ``device``
    (default: where the activations are). Hooks are removed on exit, also when a hook or the forward raises.
    ``per_prompt_sites``: names or globs among ``sites`` whose per-prompt vectors are kept even when ``keep`` does not
    ask for them at every site (one run serving an analysis that reads them at a few sites).

    ``gram_dtype``: the dtype of each batch's co-moment product; sums across batches are float64 either way.
    ``"float32"`` costs about a third of ``"float64"`` on CPU and perturbs the co-moment's eigenvalues by at most
    1e-6·λ_max, so each singular value by at most min(1e-3·σ_max, 5e-7·σ_max²/σ_i) (on SmolLM2-135M's activations
    all within 2e-6·σ_max); ``"float64"`` is the exact path, see :class:`~workbench.capture.accumulators.Moments`.
    ``"auto"`` (default): float32, except at sites at least as wide as the number of rows kept (``n <= d``: the
    centred rows are rank-deficient, and float32 products would turn their exact zeros into ~1e-4·σ_max).

    Example: ``cap = capture(lm, texts, sites="blocks.*.hook_resid_post", keep="per_prompt")``"""
    started = time.perf_counter()
    lm = load_model(lm)
    texts = tok.check_texts(texts)
    check_int("capture", "batch_size", batch_size, low=1)
    check_int("capture", "reservoir_size", reservoir_size, low=1)
    check_int("capture", "memory_budget", memory_budget, low=0)
    check_choice("capture", "gram_dtype", gram_dtype, GRAM_DTYPES)
    where = check_device("capture", "device", device) if device is not None else lm.device
    chosen_keep = _check_keep(keep)
    points = lm.hook_points()
    names = resolve_sites(points, sites)
    per_prompt = set(resolve_sites(points, per_prompt_sites)) if per_prompt_sites is not None else set()
    if not per_prompt <= set(names):
        raise config_error("capture", "per_prompt_sites", "sites among 'sites'", sorted(per_prompt - set(names)))
    tokenized = tok.tokenize(lm, texts, max_length=max_length, max_tokens=max_tokens)
    tok.check_positions(positions, tokenized)
    shapes = _probe(lm, points, names, tokenized.ids[0])
    batches = list(tok.batches(tokenized, batch_size, tok.pad_id(lm), positions, exclude_bos))
    state = _allocate(names, shapes, batches, tokenized, chosen_keep, reservoir_size, memory_budget, seed,
                      where, gram_dtype)
    _keep_per_prompt(state, per_prompt, shapes, len(tokenized.ids), where)
    _run(lm, points, state, batches, tokenized.n_tokens, progress)
    return CaptureResult(
        stats={name: site.result() for name, site in state.items()}, model=lm.name, n_texts=len(tokenized.ids),
        n_tokens=tokenized.n_tokens, positions=positions, exclude_bos=exclude_bos, has_bos=tokenized.has_bos,
        batch_size=batch_size, seconds=time.perf_counter() - started,
        meta={"keep": sorted(chosen_keep), "gram_dtype": gram_dtype},
    )


def _allocate(names, shapes, batches, tokenized, keep, reservoir_size, budget, seed, device,
              gram_dtype="float64") -> dict[str, _Site]:
    widths = {n: int(torch.tensor(shapes[n][2:]).prod()) for n in names}
    n_rows = sum(int(b.rows.sum()) for b in batches)
    if "full" in keep:
        needed = sum(widths.values()) * n_rows * 4
        if needed > budget:
            raise BudgetError(f"capture(): keep='full' needs {needed / 2**20:.1f} MiB for {n_rows} rows over "
                              f"{len(names)} sites, over memory_budget={budget / 2**20:.1f} MiB; raise the budget, "
                              f"capture fewer tokens, or use keep='reservoir'")
    offsets = [0] * len(tokenized.ids)
    for b in batches:
        for row, i in enumerate(b.text_index):
            offsets[i] = int(b.rows[row].sum())
    starts = torch.tensor([0] + offsets[:-1]).cumsum(0).tolist()
    n_texts = len(tokenized.ids)
    state = {}
    for i, name in enumerate(names):
        d = widths[name]
        fast = gram_dtype == "float32" or (gram_dtype == "auto" and n_rows > d)
        site = _Site(name=name, moments=Moments(d, device, torch.float32 if fast else torch.float64), offsets=starts)
        if "reservoir" in keep:
            site.reservoir = Reservoir(reservoir_size, d, device, torch.float32, seed + i)
        if "per_prompt" in keep:
            site.last = RowStore(n_texts, d, device, torch.float32)
            site.pooled = RowStore(n_texts, d, device, torch.float32)
        if "full" in keep:
            site.full = RowStore(n_rows, d, device, torch.float32)
        state[name] = site
    return state


def _run(lm: LoadedModel, points: dict, state: dict[str, _Site], batches: list[tok.Batch], n_tokens: int,
         progress: bool) -> None:
    current: list[_Placed] = []
    fired: set[str] = set()

    def make_hook(site: _Site):
        def hook(x: torch.Tensor, hook: object = None) -> None:
            batch = current[0]
            site.feed(x.detach().reshape(x.shape[0], x.shape[1], -1), batch)
            fired.add(site.name)
            if len(fired) == len(state):
                raise StopForward  # the last site has fired: nothing after it is needed
        return hook

    bar = progress_bar(total=n_tokens, unit="tok", desc="capture", disable=not progress)
    try:
        with hooks_attached(points, {name: make_hook(site) for name, site in state.items()}), torch.inference_mode():
            for batch in batches:
                current[:] = [_place(batch, lm.device)]
                fired.clear()
                with stoppable():
                    lm.model(current[0].tokens)
                bar.update(int(batch.lengths.sum()))
    finally:
        bar.close()


def _keep_per_prompt(state: dict[str, _Site], names: set[str], shapes: dict[str, tuple[int, ...]], n_texts: int,
                     device: torch.device) -> None:
    """Per-prompt vectors (last token, mean-pooled) at ``names``, whatever ``keep`` says for the other sites."""
    for name in names:
        if state[name].last is None:
            d = int(torch.tensor(shapes[name][2:]).prod())
            state[name].last = RowStore(n_texts, d, device, torch.float32)
            state[name].pooled = RowStore(n_texts, d, device, torch.float32)
