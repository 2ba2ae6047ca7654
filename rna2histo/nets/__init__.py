"""Building blocks shared by the generators, written once: the RNA encoder, conv blocks, the U-Net,
the tile autoencoder of latent diffusion."""

from .rna import RNAEncoder
from .unet import UNet

__all__ = ["RNAEncoder", "UNet"]
