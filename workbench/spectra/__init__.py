"""Batched SVD engine and spectral metrics: pure tensor functions, no model (see svd.py and metrics.py)."""

from workbench.spectra.checks import as_tensor, check_finite
from workbench.spectra.embeddings import embedding_spectra, rankme_of, rankme_of_file
from workbench.spectra.esd import (
    EVALS_THRESH,
    MPFit,
    PowerLawFit,
    alpha_weighted,
    esd_eigenvalues,
    log_norm,
    log_spectral_norm,
    mp_fit,
    powerlaw_fit,
)
from workbench.spectra.metrics import (
    condition_number,
    effective_rank,
    nuclear_norm,
    numerical_rank,
    participation_ratio,
    rankme,
    spectral_entropy,
    stable_rank,
)
from workbench.spectra.svd import (
    PrecisionWarning,
    batched_singular_values,
    singular_values,
    singular_values_from_gram,
)

__all__ = [
    "as_tensor",
    "check_finite",
    "EVALS_THRESH",
    "embedding_spectra",
    "rankme_of",
    "rankme_of_file",
    "MPFit",
    "PowerLawFit",
    "alpha_weighted",
    "esd_eigenvalues",
    "log_norm",
    "log_spectral_norm",
    "mp_fit",
    "powerlaw_fit",
    "PrecisionWarning",
    "batched_singular_values",
    "condition_number",
    "effective_rank",
    "nuclear_norm",
    "numerical_rank",
    "participation_ratio",
    "rankme",
    "singular_values",
    "singular_values_from_gram",
    "spectral_entropy",
    "stable_rank",
]
