"""UPS, the Universal Physics Stack: PDE data, staged latent surrogates, honest evaluation."""

__version__ = "0.1.0"
