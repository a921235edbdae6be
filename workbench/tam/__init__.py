"""Token Activation Maps (TAM): which earlier tokens (prompt tokens, image patches) explain each generated token.

``core``: the reference's formulas (class activation, estimated causal inference, rank Gaussian filter, min–max);
``text``: maps over prompt tokens of a text model; ``vlm``: maps over the image grid of a Hugging Face
vision-language model (Qwen2-VL / LLaVA style); ``plots``: heat-map strips and image overlays.
"""

from workbench.tam.core import ECI_EPS, class_activation, estimated_causal_inference, min_max, rank_gaussian_filter
from workbench.tam.text import TextTokenMaps, maps_from_logits, text_token_maps

__all__ = ["ECI_EPS", "TextTokenMaps", "class_activation", "estimated_causal_inference", "maps_from_logits",
           "min_max", "rank_gaussian_filter", "text_token_maps"]
