"""VAR-style multi-scale residual VQ-VAE tokenizer (issue 3)."""
from .config import TokenizerConfig
from .vqvae import MultiScaleVQVAE

__all__ = ["TokenizerConfig", "MultiScaleVQVAE"]
