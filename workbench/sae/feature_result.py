"""``FeatureStats``: the result of :func:`workbench.sae.feature_stats` — per-feature numbers, top contexts, logit
effects — and its views: tables, figures, highlighted contexts, search by token.

Stored column-wise as JSON values like every result (``to_json``/``from_json`` round-trip): per-feature lists indexed
by feature id; a context holds token ids (``-1`` outside the text) and the feature's activation on each; ``vocab``
maps every token id used to its text, so the result renders without the tokenizer.
"""

from __future__ import annotations

import html
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

from workbench.results import PALETTE, Result, figures_html, fmt, table_html
from workbench.validation import check_int, check_str

_SHOWN_ROWS = 50  # features listed in the notebook view (the DataFrame has them all)


def _visible(token: str) -> str:
    """Whitespace made visible, so a context shows where a token starts and ends."""
    return token.replace("\n", "↵").replace("\t", "⇥")


@dataclass(frozen=True)
class FeatureStats(Result):
    """Per-feature statistics of an SAE over a prompt set (see :func:`workbench.sae.feature_stats`).

    ``density[f]``: share of the ``n_tokens`` tokens where feature ``f`` fired; ``mean_active``/``max_activation``
    over those tokens; ``hist[f]``: ``{bin: count}`` of its non-zero activations on the log10 bins ``hist_edges``;
    ``contexts[f]``: up to ``k`` contexts, highest first (``value``, ``text`` index, token ``position``, ``tokens``
    and ``acts`` over the window, the activating token in the middle); ``promoted[f]``/``suppressed[f]``:
    ``[token id, logit effect]`` pairs.

    Example: ``stats.contexts_frame(7)``"""

    model: str
    site: str
    sae: dict
    n_texts: int
    n_tokens: int
    k: int
    window: int
    min_activation: float
    density: list
    mean_active: list
    max_activation: list
    hist_edges: list
    hist: list
    contexts: list
    promoted: list
    suppressed: list
    vocab: dict
    seconds: float

    kind: ClassVar[str] = "feature_stats"
    title: ClassVar[str] = "SAE features"

    # --- per feature -------------------------------------------------------------------------------------------

    @property
    def n_features(self) -> int:
        return len(self.density)

    def _feature(self, f: Any, call: str) -> int:
        return check_int(call, "feature", f, low=0, high=self.n_features, high_open=True)

    def token(self, token_id: int) -> str:
        """The text of a token id seen in this result (``"∅"`` for -1, outside the text).

        Example: ``stats.token(stats.promoted[7][0][0])``"""
        return "∅" if token_id < 0 else self.vocab.get(str(token_id), f"<{token_id}>")

    def top_token(self, f: int) -> str:
        """The token that fired feature ``f`` most often among its top contexts (``""`` when it never fired).

        Example: ``stats.top_token(7)``"""
        f = self._feature(f, "FeatureStats.top_token")
        counts = Counter(c["tokens"][self.window] for c in self.contexts[f])
        return self.token(counts.most_common(1)[0][0]) if counts else ""

    def contexts_frame(self, f: int):  # -> pandas.DataFrame
        """Feature ``f``'s top contexts as a DataFrame: rank, activation, text index, position, the activating token,
        and the text before and after it within the window.

        Example: ``stats.contexts_frame(7).head()``"""
        import pandas as pd

        f = self._feature(f, "FeatureStats.contexts_frame")
        w = self.window
        rows = []
        for rank, c in enumerate(self.contexts[f], 1):
            toks = [self.token(t) for t in c["tokens"]]
            rows.append({"rank": rank, "activation": c["value"], "text": c["text"], "position": c["position"],
                         "token": toks[w], "before": "".join(t for t, i in zip(toks[:w], c["tokens"][:w]) if i >= 0),
                         "after": "".join(t for t, i in zip(toks[w + 1:], c["tokens"][w + 1:]) if i >= 0)})
        return pd.DataFrame(rows, columns=["rank", "activation", "text", "position", "token", "before", "after"])

    def context_html(self, f: int) -> str:
        """Feature ``f``'s top contexts as HTML lines: each token shaded by the feature's activation on it (relative
        to the feature's maximum), the activating token in bold; hovering a token shows its activation.

        Example: ``IPython.display.HTML(stats.context_html(7))``"""
        f = self._feature(f, "FeatureStats.context_html")
        top = max((c["value"] for c in self.contexts[f]), default=0.0) or 1.0
        lines = []
        for c in self.contexts[f]:
            spans = []
            for j, (t, a) in enumerate(zip(c["tokens"], c["acts"])):
                if t < 0:
                    continue
                alpha = max(0.0, min(1.0, a / top))
                style = f"background: rgba(255, 127, 14, {alpha:.2f});" + (" font-weight: bold;" if j == self.window
                                                                          else "")
                spans.append(f'<span style="{style}" title="{a:.4g}">{html.escape(_visible(self.token(t)))}</span>')
            lines.append(f'<div class="wb-context"><code>{fmt(c["value"])}</code> {"".join(spans)}</div>')
        return "".join(lines) or "<p>This feature never fired on these texts.</p>"

    def search(self, query: str, *, top: int = 20) -> list[int]:
        """Features related to a token: those whose top contexts fire on a token whose text matches ``query``
        (stripped, case-insensitive), ranked by how many of their contexts do, then those that promote it most.

        Example: ``stats.search("Paris")``"""
        query = check_str("FeatureStats.search", "query", query, nonempty=True).strip().lower()
        top = check_int("FeatureStats.search", "top", top, low=1)
        matches = {i for i, text in self.vocab.items() if text.strip().lower() == query}
        if not matches:
            matches = {i for i, text in self.vocab.items() if query in text.strip().lower()}
        wanted = {int(i) for i in matches}
        fired = []
        for f, contexts in enumerate(self.contexts):
            hits = sum(c["tokens"][self.window] in wanted for c in contexts)
            if hits:
                fired.append((-hits, -self.max_activation[f], f))
        promoting = [(-v, f) for f, pairs in enumerate(self.promoted) for i, v in pairs if i in wanted]
        ranked = [f for *_, f in sorted(fired)] + [f for _, f in sorted(promoting)]
        return list(dict.fromkeys(ranked))[:top]

    # --- tables ------------------------------------------------------------------------------------------------

    def table(self) -> tuple[list[str], list[list[Any]]]:
        header = ["feature", "density", "mean_active", "max_activation", "top_token", "promotes", "suppresses"]
        rows = [[f, self.density[f], self.mean_active[f], self.max_activation[f], self.top_token(f),
                 " ".join(repr(self.token(i)) for i, _ in self.promoted[f][:3]),
                 " ".join(repr(self.token(i)) for i, _ in self.suppressed[f][:3])] for f in range(self.n_features)]
        return header, rows

    def metrics(self) -> list[tuple[str, int | None, str | None, float]]:
        """``(metric, None, "<site>/f<feature>", value)`` for density, mean and max activation of every feature."""
        return [(name, None, f"{self.site}/f{f}", float(values[f]))
                for f in range(self.n_features)
                for name, values in (("density", self.density), ("mean_active", self.mean_active),
                                     ("max_activation", self.max_activation))]

    def summary(self) -> str:
        dead = sum(d == 0 for d in self.density)
        live = sorted(d for d in self.density if d > 0)
        median = live[len(live) // 2] if live else 0.0
        fit = ""
        if self.sae.get("fvu") is not None:
            fit = f" The SAE explains {100 * (1 - self.sae['fvu']):.1f} % of its training data's variance."
        if not any(self.promoted):
            fit += (f" {self.site} writes nothing to the residual stream directly, so the features have no direct "
                    f"logit effect to show.")
        return (f"{self.n_features} features of an SAE at {self.site} over {self.n_tokens} tokens of {self.n_texts} "
                f"texts: {self.n_features - dead} fired at least once ({dead} never did, so their contexts are "
                f"empty); the median density of those that fired is {median:.3g}.{fit}")

    # --- figures -----------------------------------------------------------------------------------------------

    def plot(self):
        """The feature density histogram (log10 of each feature's firing rate; dead features counted apart)."""
        import plotly.graph_objects as go

        live = [math.log10(d) for d in self.density if d > 0]
        dead = self.n_features - len(live)
        fig = go.Figure(go.Histogram(x=live, nbinsx=50, marker_color=PALETTE[0]))
        fig.update_layout(title=f"Feature density at {self.site} ({dead} of {self.n_features} never fired)",
                          xaxis_title="log10 density (share of tokens where the feature fires)",
                          yaxis_title="features", bargap=0.05)
        return fig

    def feature_figure(self, f: int):
        """Feature ``f``: the histogram of its non-zero activations (log-spaced bins) and its top promoted (right) and
        suppressed (left) tokens' logit effects.

        Example: ``stats.feature_figure(7).show()``"""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        f = self._feature(f, "FeatureStats.feature_figure")
        centres = [10 ** ((a + b) / 2) for a, b in zip(self.hist_edges, self.hist_edges[1:])]
        counts = [self.hist[f].get(str(i), 0) for i in range(len(centres))]
        used = [i for i, c in enumerate(counts) if c]
        lo, hi = (used[0], used[-1] + 1) if used else (0, 0)
        fig = make_subplots(rows=1, cols=2, column_widths=[0.55, 0.45], subplot_titles=(
            f"activations (density {self.density[f]:.3g})", "logit effect (direct, through the final norm)"))
        fig.add_trace(go.Bar(x=centres[lo:hi], y=counts[lo:hi], marker_color=PALETTE[4], name="count"), 1, 1)
        pairs = list(reversed(self.suppressed[f])) + list(reversed(self.promoted[f]))
        labels = [f"{self.token(i)!r}" for i, _ in pairs]
        fig.add_trace(go.Bar(y=labels, x=[v for _, v in pairs], orientation="h", name="logit effect",
                             marker_color=[PALETTE[1] if v < 0 else PALETTE[2] for _, v in pairs]), 1, 2)
        fig.update_xaxes(type="log", title_text="activation", row=1, col=1)
        fig.update_yaxes(title_text="tokens", row=1, col=1)
        fig.update_layout(title=f"Feature {f} at {self.site} — top token {self.top_token(f)!r}", showlegend=False,
                          height=max(380, 18 * len(pairs) + 120))
        return fig

    def densest(self, n: int = 3) -> list[int]:
        """The ``n`` features that fired most often (ties by id).

        Example: ``stats.densest(3)``"""
        n = check_int("FeatureStats.densest", "n", n, low=0)
        return sorted(range(self.n_features), key=lambda f: (-self.density[f], f))[:n]

    def figures(self) -> list:
        """The density histogram, then the figure of each of the three densest features."""
        return [self.plot()] + [self.feature_figure(f) for f in self.densest(3) if self.density[f] > 0]

    def _repr_html_(self) -> str:
        header, rows = self.table()
        shown = [rows[f] for f in self.densest(_SHOWN_ROWS)]
        return (f"<h3>{html.escape(self.title)}</h3><p>{html.escape(self.summary())}</p>{figures_html([self.plot()])}"
                f"<p>The {len(shown)} densest features (all {self.n_features} in <code>to_pandas()</code>):</p>"
                f"{table_html(header, shown)}")

