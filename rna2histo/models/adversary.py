"""The adversarial half shared by the cGAN and the hybrid, written once: the discriminator, the
game's losses, the mode-seeking term, and the config fields that set them.

`Discriminator` returns logits of shape (B, 1 + P): column 0 judges the whole tile (the study's
D), columns 1.. judge P patches when ``d_patch`` is on (beyond the study, see `Discriminator`).
`adversarial_losses` scores the two groups separately and adds them, so the whole-tile verdict
keeps its weight however many patches there are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..nets.conv import DownStack
from ..nets.rna import RNAEncoder
from .base import ModelConfig, init_weights

LOSSES = ("bce", "hinge")


@dataclass
class AdversaryConfig(ModelConfig):
    """D's fields, the game's and the two optimisers'; the cGAN and hybrid configs add their own."""

    rna_widths: tuple[int, ...] = (256, 128)  # RNA MLPs: one in D, one in G (or the VAE)
    d_channels: tuple[int, ...] = (32, 64, 128, 128)  # 4 strided convs on the image
    d_hidden: int = 256  # width of D's head on [image features, RNA embedding]
    d_dropout: float = 0.2  # the study: 0.1-0.3
    d_norm: str = "none"  # per-batch statistics would let D compare a real batch with a fake one
    d_spectral: bool = True  # spectral normalisation of every D layer (see `Discriminator`)
    d_patch: int = 0  # 0: the study's whole-tile D; k: also a logit per position of block k's map
    loss: str = "bce"  # the study's; "hinge" (see `adversarial_losses`)
    real_label: float = 0.9  # BCE's smoothed labels (hinge has none)
    fake_label: float = 0.1
    lr_g: float = 5e-5
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    w_diverse: float = 0.0  # mode-seeking term (Mao et al. 2019); 0 = the study's loss
    g_depth: int = 1  # convs per resolution in G (the study: 1; more mix its first map's cells)

    def check_adversary(self) -> None:
        """One-line errors for a loss or patch block that does not exist."""
        if self.loss not in LOSSES:
            raise UserError(f"unknown loss {self.loss!r}; expected one of {', '.join(LOSSES)}")
        if not 0 <= self.d_patch <= len(self.d_channels):
            blocks = len(self.d_channels)
            raise UserError(f"d_patch {self.d_patch}: D has blocks 1-{blocks} (0 = off)")


def bce(logits: torch.Tensor, label: float) -> torch.Tensor:
    """Binary cross-entropy of logits against one constant (smoothed) label."""
    logits = logits.float()  # the loss in fp32 under autocast
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))


def _game(real_logit, fake_logit, cfg) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(L_D, L_G) on one group of logits (any shape); L_D is None without real logits."""
    fake_logit = fake_logit.float()  # the losses in fp32 under autocast
    hinge = cfg.loss == "hinge"
    loss_g = -fake_logit.mean() if hinge else bce(fake_logit, cfg.real_label)
    if real_logit is None:
        return None, loss_g
    if hinge:
        return F.relu(1 - real_logit.float()).mean() + F.relu(1 + fake_logit).mean(), loss_g
    return bce(real_logit, cfg.real_label) + bce(fake_logit, cfg.fake_label), loss_g


def adversarial_losses(real_logits, fake_logits, cfg) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(L_D, L_G) of the game named by ``cfg.loss`` on D's (B, 1 + P) logits; pass real_logits
    None when only L_G is wanted (L_D is then None). The whole-tile column and the patch columns
    are two groups, each a mean, added.

    "bce": the study's, with its smoothed labels. "hinge": L_D = E[relu(1 - D(x))] +
    E[relu(1 + D(G(z)))], L_G = -E[D(G(z))] (Lim & Ye 2017; Miyato et al. 2018 used it with the
    spectral norm and projection term our D has). D stops pushing a tile once its margin is met,
    so its gradient goes to the tiles it still confuses rather than to ones it already rejects.
    """
    loss_d, loss_g = None, 0.0
    for group in (slice(0, 1), slice(1, None)):
        fake = fake_logits[:, group]
        if fake.shape[1] == 0:  # no patch logits
            continue
        d, g = _game(None if real_logits is None else real_logits[:, group], fake, cfg)
        loss_g = loss_g + g
        loss_d = d if loss_d is None else loss_d + d
    return loss_d, loss_g


def p_real(logits: torch.Tensor) -> torch.Tensor:
    """D's mean whole-tile P(real), a health check of the game (either loss)."""
    return torch.sigmoid(logits[:, 0].detach().float()).mean()


def mode_seeking(fake: torch.Tensor, z: torch.Tensor, draw) -> torch.Tensor:
    """1 / (|G(z1, c) - G(z2, c)| / |z1 - z2|): small when other noise gives other tiles.

    Mao et al. (2019): a conditional generator tends to ignore z (one tile per condition);
    penalising the inverse ratio of image to noise distance keeps the noise meaningful.
    `fake` = G(z, c) and `draw(z2)` = G(z2, c) for the same conditions.
    """
    z2 = torch.randn_like(z)
    ratio = (fake - draw(z2)).abs().mean() / (z - z2).abs().mean()
    return 1.0 / (ratio + 1e-5)


class Discriminator(nn.Module):
    """D(x, c) -> (logits (B, 1 + P), feature maps): strided convs on x, flattened, joined with
    e = MLP(c).

    Whole-tile logit = w^T h + (V e)^T h with h = MLP([phi(x), e]): the study's concatenation plus
    the projection term of Miyato & Koyama (2018), which scores how well x agrees with c directly.
    With concatenation alone D learnt the pairing slowly and G often ignored c.

    ``d_patch`` = k > 0 adds a logit per position of block k's map, u^T f + (W e)^T f with the same
    projection (PatchGAN, Isola et al. 2017): each judges only its receptive field (22 px for
    block 3 of 4x4 stride-2 convs), about one nucleus with its neighbours, so G is told where a
    tile looks wrong, not only that it does. The whole-tile verdict reads a flattened 4x4 map
    and said little about nuclei: demo samples had H&E colours and layout but no single nuclei.

    ``d_spectral``: every linear and conv layer of D is spectrally normalised (Miyato et al. 2018,
    the companion of the projection term). Without a norm in D, the study's N(0, 0.02) init
    shrinks the signal ~7x per conv layer, and D could not tell checkerboard fakes from real
    tiles after 1,200 steps (measured: P(real) 0.53 on real, 0.46 on fake); spectral
    normalisation fixes every layer's gain at ~1 whatever the init and keeps D Lipschitz.
    """

    def __init__(self, cfg: AdversaryConfig):
        super().__init__()
        cfg.check_adversary()
        self.rna = RNAEncoder(cfg.n_genes, cfg.rna_widths)
        e_dim = self.rna.out_features
        self.trunk = DownStack(cfg.d_channels, cfg.d_norm)
        joined = self.trunk.out_features(cfg.image_size) + e_dim
        hidden = cfg.d_hidden
        self.head = nn.Sequential(nn.Linear(joined, hidden), nn.LeakyReLU(0.2), nn.Dropout(cfg.d_dropout))
        self.logit = nn.Linear(hidden, 1)
        self.project = nn.Linear(e_dim, hidden, bias=False)
        self.patch = cfg.d_patch
        if self.patch:  # its map's size: the trunk's check covers every block up to the last
            width = cfg.d_channels[self.patch - 1]
            self.patch_logit = nn.Conv2d(width, 1, 1)
            self.patch_project = nn.Linear(e_dim, width, bias=False)
        if cfg.d_spectral:  # after the init: the power iteration starts from the final weights
            self.apply(init_weights)
            for layer in self.modules():
                if isinstance(layer, (nn.Linear, nn.Conv2d)):
                    nn.utils.parametrizations.spectral_norm(layer)

    def forward(self, x: torch.Tensor, c: torch.Tensor):
        """x (kB, 3, S, S) in k blocks of B images that share the conditions c (B, G): real and fake
        tiles go through D in one pass (one spectral normalisation of every weight, not one per
        call) and the RNA MLP, D's widest layer at the study's size, runs once per condition."""
        features = self.trunk(x)  # [(kB, C_k, S/2^k, S/2^k)]
        e = self.rna(c)  # (B, E)
        e = e.repeat(len(x) // len(e), 1) if len(x) != len(e) else e  # (kB, E)
        h = self.head(torch.cat([features[-1].flatten(1), e], dim=1))  # (kB, hidden)
        logits = self.logit(h) + (self.project(e) * h).sum(dim=1, keepdim=True)  # (kB, 1)
        if self.patch:
            f = features[self.patch - 1]  # (kB, C, H, W)
            agree = (self.patch_project(e)[:, :, None, None] * f).sum(1, keepdim=True)
            local = self.patch_logit(f) + agree  # (kB, 1, H, W)
            logits = torch.cat([logits, local.flatten(1)], dim=1)  # (kB, 1 + H W)
        return logits, features
