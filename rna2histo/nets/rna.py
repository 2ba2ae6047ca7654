"""The RNA encoder: an MLP from the normalised profile c (B, G) to a conditioning vector."""

from __future__ import annotations

from torch import nn


class RNAEncoder(nn.Module):
    """MLP ``G -> widths[0] -> ... -> widths[-1]`` with LayerNorm and LeakyReLU (cGAN: 2048, 1024, 512).

    Normalisation is per sample (LayerNorm), never across the batch: a batch may hold one
    patient's tiles, and batch statistics would then erase the condition.
    """

    def __init__(self, n_genes: int, widths: tuple[int, ...], dropout: float = 0.0):
        super().__init__()
        layers, width_in = [], n_genes
        for width in widths:
            layers += [nn.Linear(width_in, width), nn.LayerNorm(width), nn.LeakyReLU(0.2)]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width_in = width
        self.net = nn.Sequential(*layers)
        self.out_features = width_in

    def forward(self, c):  # (B, G) -> (B, widths[-1])
        return self.net(c)
