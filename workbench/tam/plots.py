"""Figures of token activation maps: heat-map strips over prompt tokens and maps overlaid on an image, each with the
raw, causal-inference and filtered stages side by side."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from workbench.tam.core import min_max

STAGE_TITLES = {"raw": "raw class activation", "eci": "after causal-inference removal", "filtered": "after the filter"}


def shown(token: str) -> str:
    """A token as a tick label: newlines and tabs visible, surrounding spaces kept readable.

    Example: ``[shown(t) for t in maps.prompt_tokens]``  (``""`` becomes ``"∅"``, a newline ``"⏎"``)"""
    return token.replace("\n", "⏎").replace("\t", "⇥") or "∅"


def text_maps_figure(maps, title: str = "") -> go.Figure:
    """One heat-map strip per generated token (rows) over the prompt tokens (columns), for the raw, ECI and filtered
    maps side by side. Each row is min–max normalised on its own (the colours compare inputs for one output); the
    hover shows the unnormalised score.

    Example: ``text_maps_figure(text_token_maps(lm, "The capital of France is"), title="France").show()``"""
    stages = ("raw", "eci", "filtered")
    fig = make_subplots(rows=1, cols=3, shared_yaxes=True, horizontal_spacing=0.02,
                        subplot_titles=[STAGE_TITLES[s] for s in stages])
    g, p = len(maps.generated_tokens), len(maps.prompt_tokens)
    ticks = [shown(t) for t in maps.prompt_tokens]
    outputs = [f"{i}: {shown(t)}" for i, t in enumerate(maps.generated_tokens)]
    for col, stage in enumerate(stages, start=1):
        values = getattr(maps, stage).double().cpu()  # figures are host data
        z = torch.stack([min_max(row)[0] for row in values]).numpy()
        text = [[f"{ticks[j]} → {outputs[i]}" for j in range(p)] for i in range(g)]
        fig.add_trace(go.Heatmap(z=z, x=list(range(p)), y=list(range(g)), customdata=values.numpy(), text=text,
                                 colorscale="Viridis", zmin=0, zmax=1, showscale=col == 3,
                                 colorbar={"title": "row min–max"},
                                 hovertemplate="%{text}: %{customdata:.3f}<extra></extra>"), row=1, col=col)
        fig.update_xaxes(tickmode="array", tickvals=list(range(p)), ticktext=ticks, tickangle=-60, row=1, col=col)
    fig.update_yaxes(tickmode="array", tickvals=list(range(g)), ticktext=outputs, autorange="reversed", row=1, col=1)
    fig.update_layout(title=title or "token activation maps: which prompt tokens explain each generated token",
                      height=200 + 22 * g, width=max(900, 3 * (60 + 14 * p)), margin={"b": 120})
    return fig


def upsample(grid_map: torch.Tensor, height: int, width: int) -> np.ndarray:
    """A ``[h, w]`` map resized to ``height × width`` (bilinear, as the reference's ``cv2.resize``).

    Example: ``upsample(maps.filtered[0, 0], 448, 448).shape  # (448, 448)``"""
    x = grid_map.double().cpu()[None, None]
    return torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()


def image_overlay_figure(image: np.ndarray, stage_maps: dict[str, torch.Tensor], title: str = "") -> go.Figure:
    """The image (``[H, W, 3]`` uint8) with each stage's ``[h, w]`` map (already normalised to [0, 1]) upsampled and
    overlaid at half opacity, stages side by side.

    Example: ``image_overlay_figure(np.asarray(image), {"raw": raw_map, "filtered": filtered_map}, title="token 0")``"""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        from workbench.errors import shape_error

        raise shape_error("image_overlay_figure", "image", "an [H, W, 3] RGB array", image.shape)
    height, width = image.shape[:2]
    stages = list(stage_maps)
    fig = make_subplots(rows=1, cols=len(stages), horizontal_spacing=0.02,
                        subplot_titles=[STAGE_TITLES.get(s, s) for s in stages])
    for col, stage in enumerate(stages, start=1):
        fig.add_trace(go.Image(z=image.astype(np.uint8)), row=1, col=col)
        fig.add_trace(go.Heatmap(z=upsample(stage_maps[stage], height, width), colorscale="Jet", zmin=0, zmax=1,
                                 opacity=0.5, showscale=col == len(stages), hoverinfo="skip"), row=1, col=col)
        fig.update_xaxes(visible=False, row=1, col=col)
        fig.update_yaxes(visible=False, autorange="reversed", scaleanchor=f"x{col if col > 1 else ''}", row=1,
                         col=col)
    fig.update_layout(title=title or "token activation map over the image", height=420, width=360 * len(stages) + 80)
    return fig
