"""Built-in analyses, one module each; importing this package registers them all (see workbench.registry)."""

from analyses import (  # noqa: F401  (each module registers its analysis on import)
    activation_spectra,
    erank_dynamics,
    gradient_spectra,
    language_neurons,
    rankme,
    steer2edit,
    subspace_patching,
    token_maps,
    weight_spectra,
)

__all__ = ["activation_spectra", "erank_dynamics", "gradient_spectra", "language_neurons", "rankme", "steer2edit",
           "subspace_patching", "token_maps", "weight_spectra"]
