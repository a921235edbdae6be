"""Built-in analyses, one module each; importing this package registers them all (see workbench.registry)."""

from analyses import activation_spectra, weight_spectra  # noqa: F401
from analyses import erank_dynamics, gradient_spectra, rankme, subspace_patching  # noqa: F401
from analyses import language_neurons, steer2edit, token_maps  # noqa: F401

__all__ = ["activation_spectra", "erank_dynamics", "gradient_spectra", "language_neurons", "rankme", "steer2edit",
           "subspace_patching", "token_maps", "weight_spectra"]
