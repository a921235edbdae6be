"""Sparse autoencoders: train them with sae-lens on captured activations (:mod:`workbench.sae.training`), load them
from sae-lens folders and check them against a model's site (:mod:`workbench.sae.loading`), and browse their features
over a prompt set (:mod:`workbench.sae.features`: top contexts, histograms, density, logit effects).

``sae_lens`` is imported lazily (it takes seconds), so importing this package stays cheap.
"""

from workbench.sae.feature_result import FeatureStats
from workbench.sae.features import feature_stats
from workbench.sae.loading import load_sae, resolve_sae_site, sae_hook_name, site_width, train_site_sae
from workbench.sae.training import (
           ARCHITECTURES,
           INFO_FILE,
           TrainedSAE,
           cached_sae,
           decoder_directions,
           encode,
           train_sae,
)

__all__ = ["ARCHITECTURES", "INFO_FILE", "FeatureStats", "TrainedSAE", "cached_sae", "decoder_directions", "encode",
           "feature_stats", "load_sae", "resolve_sae_site", "sae_hook_name", "site_width", "train_sae",
           "train_site_sae"]
