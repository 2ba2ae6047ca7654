"""Building blocks shared by the generators, written once: the RNA encoder, conv blocks, the U-Net."""

from .rna import RNAEncoder

__all__ = ["RNAEncoder"]
