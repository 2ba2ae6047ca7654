"""The conditional GAN of the study: G(z, c) -> x against a conditional discriminator D(x, c).

Objectives, with BCE on logits and the study's smoothed labels r = 0.9 (real), f = 0.1 (fake):

    L_D = BCE(D(x, c), r) + BCE(D(G(z, c), c), f)
    L_G = BCE(D(G(z, c), c), r)            (non-saturating, aimed at the real label)

z ~ N(0, I) in R^z_dim. The discriminator steps first on detached fakes, then the generator.
D joins image features and the RNA embedding as in the study and adds a projection term (see
`Discriminator`); the generator is an `UpDecoder` with the condition after every BatchNorm.
Beyond the study, both off by default: a mode-seeking term for G (``w_diverse``) and DiffAugment
of every tile D judges (``d_augment``, `rna2histo.nets.diffaugment`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..nets.conv import DownStack, UpDecoder, gaussian
from ..nets.diffaugment import diff_augment, parse_policy
from ..nets.rna import RNAEncoder
from .base import Generator, ModelConfig, adam, count_parameters, init_weights, statistics_error


@dataclass
class CGANConfig(ModelConfig):
    z_dim: int = 64
    rna_widths: tuple[int, ...] = (256, 128)  # RNA MLP, one in G and one in D
    g_channels: tuple[int, ...] = (128, 64, 32, 16)  # 4 up-sampling layers: C_0 -> ... -> 3
    upsample: str = "transposed"  # the study's; "resize" draws no checkerboard (nets.conv.up)
    norm: str = "batch"  # generator norm (the study: BatchNorm; FiLM keeps c alive after it)
    d_channels: tuple[int, ...] = (32, 64, 128, 128)  # 4 strided convs on the image
    d_hidden: int = 256  # width of D's head on [image features, RNA embedding]
    d_dropout: float = 0.2  # the study: 0.1-0.3
    d_norm: str = "none"  # per-batch statistics would let D compare a real batch with a fake one
    d_spectral: bool = True  # spectral normalisation of every D layer (see `Discriminator`)
    d_augment: str = "none"  # DiffAugment of what D sees: "translation,cutout" (nets.diffaugment)
    real_label: float = 0.9
    fake_label: float = 0.1
    lr_g: float = 5e-5
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    w_diverse: float = 0.0  # mode-seeking term (Mao et al. 2019); 0 = the study's loss

    PRESETS: ClassVar[dict[str, dict]] = {
        "small": {},  # the defaults above: ~1-2M parameters, fast on a CPU at 32-64 px
        "thesis": {  # the study at 128 px: G starts from (256, 8, 8), D flattens (512, 8, 8)
            "image_size": 128,
            "z_dim": 128,
            "rna_widths": (2048, 1024, 512),
            "g_channels": (256, 128, 64, 32),
            "d_channels": (64, 128, 256, 512),
            "d_hidden": 1024,
        },
    }


def bce(logits: torch.Tensor, label: float) -> torch.Tensor:
    """Binary cross-entropy of logits against one constant (smoothed) label."""
    logits = logits.float()  # the loss in fp32 under autocast
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))


def mode_seeking(fake: torch.Tensor, z: torch.Tensor, draw) -> torch.Tensor:
    """1 / (|G(z1, c) - G(z2, c)| / |z1 - z2|): small when other noise gives other tiles.

    Mao et al. (2019): a conditional generator tends to ignore z (one tile per condition);
    penalising the inverse ratio of image to noise distance keeps the noise meaningful.
    `fake` = G(z, c) and `draw(z2)` = G(z2, c) for the same conditions.
    """
    z2 = torch.randn_like(z)
    ratio = (fake - draw(z2)).abs().mean() / (z - z2).abs().mean()
    return 1.0 / (ratio + 1e-5)


class CGANGenerator(nn.Module):
    """G(z, c): the RNA embedding e = MLP(c) and z drive an `UpDecoder` (FiLM at every size)."""

    def __init__(self, cfg: CGANConfig):
        super().__init__()
        self.rna = RNAEncoder(cfg.n_genes, cfg.rna_widths)
        e_dim = self.rna.out_features
        self.decoder = UpDecoder(cfg.image_size, cfg.z_dim, e_dim, cfg.g_channels, cfg.norm, cfg.upsample)

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.decoder(z, self.rna(c))  # (B, z_dim), (B, G) -> (B, 3, S, S)


class Discriminator(nn.Module):
    """D(x, c) -> (logit (B,), feature maps): strided convs on x, flattened, joined with e = MLP(c).

    logit = w^T h + (V e)^T h with h = MLP([phi(x), e]): the study's concatenation plus the
    projection term of Miyato & Koyama (2018), which scores how well x agrees with c directly.
    With concatenation alone D learnt the pairing slowly and G often ignored c.

    ``spectral``: every linear and conv layer of D is spectrally normalised (Miyato et al. 2018,
    the companion of the projection term). Without a norm in D, the study's N(0, 0.02) init
    shrinks the signal ~7x per conv layer, and D could not tell checkerboard fakes from real
    tiles after 1,200 steps (measured: P(real) 0.53 on real, 0.46 on fake); spectral
    normalisation fixes every layer's gain at ~1 whatever the init and keeps D Lipschitz.
    """

    def __init__(
        self,
        n_genes: int,
        image_size: int,
        rna_widths: tuple[int, ...],
        channels: tuple[int, ...],
        hidden: int,
        dropout: float,
        norm: str,
        spectral: bool = False,
    ):
        super().__init__()
        self.rna = RNAEncoder(n_genes, rna_widths)
        self.trunk = DownStack(channels, norm)
        joined = self.trunk.out_features(image_size) + self.rna.out_features
        self.head = nn.Sequential(nn.Linear(joined, hidden), nn.LeakyReLU(0.2), nn.Dropout(dropout))
        self.logit = nn.Linear(hidden, 1)
        self.project = nn.Linear(self.rna.out_features, hidden, bias=False)
        if spectral:  # after the init: the power iteration starts from the final weights
            self.apply(init_weights)
            for layer in self.modules():
                if isinstance(layer, (nn.Linear, nn.Conv2d)):
                    nn.utils.parametrizations.spectral_norm(layer)

    @classmethod
    def from_config(cls, cfg) -> Discriminator:
        """From any config with the cGAN's ``d_*`` and ``rna_widths`` fields (the hybrid's too)."""
        return cls(
            cfg.n_genes,
            cfg.image_size,
            cfg.rna_widths,
            cfg.d_channels,
            cfg.d_hidden,
            cfg.d_dropout,
            cfg.d_norm,
            cfg.d_spectral,
        )

    def forward(self, x: torch.Tensor, c: torch.Tensor):
        """x (kB, 3, S, S) in k blocks of B images that share the conditions c (B, G): real and fake
        tiles go through D in one pass (one spectral normalisation of every weight, not one per
        call) and the RNA MLP, D's widest layer at the study's size, runs once per condition."""
        features = self.trunk(x)  # [(kB, C_k, S/2^k, S/2^k)]
        e = self.rna(c)  # (B, E)
        e = e.repeat(len(x) // len(e), 1) if len(x) != len(e) else e  # (kB, E)
        h = self.head(torch.cat([features[-1].flatten(1), e], dim=1))  # (B, hidden)
        logit = self.logit(h).squeeze(1) + (self.project(e) * h).sum(dim=1)  # + projection term
        return logit, features


class CGAN(Generator):
    """The study's cGAN: `generator` and `discriminator`, optimised by "g" and "d"."""

    name = "cgan"
    Config = CGANConfig
    STUDY_PARAMETERS: ClassVar[dict[str, int]] = {
        "generator": 49_242_339,
        "discriminator": 73_551_041,
    }

    def __init__(self, cfg: CGANConfig):
        super().__init__()
        self.cfg = cfg
        self.generator = CGANGenerator(cfg)
        self.discriminator = Discriminator.from_config(cfg)
        self.apply(init_weights)
        self.d_augment = parse_policy(cfg.d_augment)

    def parameter_counts(self) -> dict[str, int]:
        return {
            "generator": count_parameters(self.generator),
            "discriminator": count_parameters(self.discriminator),
        }

    def configure_optimizers(self, epochs: int, fused: bool = False) -> dict:
        cfg, out = self.cfg, {}
        for name, net, lr in (("d", self.discriminator, cfg.lr_d), ("g", self.generator, cfg.lr_g)):
            opt = adam(net.parameters(), fused, lr=lr, betas=cfg.betas)
            out[name] = (opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs)))
        return out

    def judge(self, x, c) -> torch.Tensor:
        """D's logits for x, through the DiffAugment policy while training (never at validation)."""
        if self.training and self.d_augment:
            x = diff_augment(x, self.d_augment)
        return self.discriminator(x, c)[0]

    def losses(self, x, fake, c) -> dict[str, torch.Tensor]:
        """L_D on (x, fake) and L_G on fake; pass a detached fake when only L_D is wanted."""
        real_logit, fake_logit = self.judge(torch.cat([x, fake]), c).chunk(2)
        cfg = self.cfg
        return {
            "loss_d": bce(real_logit, cfg.real_label) + bce(fake_logit, cfg.fake_label),
            "loss_g": bce(fake_logit, cfg.real_label),
            "d_real": torch.sigmoid(real_logit.detach().float()).mean(),  # D's P(real) for x
            "d_fake": torch.sigmoid(fake_logit.detach().float()).mean(),
        }

    def training_step(self, batch, step) -> dict[str, float]:
        x, c, _ = batch
        z = torch.randn(x.shape[0], self.cfg.z_dim, device=x.device)  # the loop seeds this RNG
        with step.autocast():
            fake = self.generator(z, c)  # (B, 3, S, S)
            d = self.losses(x, fake.detach(), c)  # no gradient into G from L_D
        out = {k: float(d[k]) for k in ("d_real", "d_fake")}
        out["loss_d"] = step("d", d["loss_d"])
        with step.autocast():
            fake_logit = self.judge(fake, c)  # D after its step, as in DCGAN
            loss_g = bce(fake_logit, self.cfg.real_label)
            if self.cfg.w_diverse:
                draw = lambda z2: self.generator(z2, c)  # noqa: E731
                loss_g = loss_g + self.cfg.w_diverse * mode_seeking(fake, z, draw)
        out["loss_g"] = step("g", loss_g)
        return out

    @torch.no_grad()
    def validation_step(self, batch) -> dict[str, float]:
        """Tile-statistics error on held-out patients with fixed noise, plus the game's losses.

        A GAN has no loss that falls as its images improve, so ``loss`` (which picks the ``best``
        checkpoint) is `statistics_error`: colour, contrast and texture of each generated tile
        against a real tile of the same patient. L_D + L_G are reported too, as a health check:
        they stay near the equilibrium value (D = 1/2: 3 ln 2 ~ 2.08 with these labels) while
        neither side wins.
        """
        x, c, _ = batch
        fixed = torch.Generator(device=c.device).manual_seed(0)
        fake = self.generator(gaussian((x.shape[0], self.cfg.z_dim), fixed, c.device), c)
        d = {k: float(v) for k, v in self.losses(x, fake, c).items()}
        return {"loss": float(statistics_error(fake, x)), "game": d["loss_d"] + d["loss_g"], **d}

    @torch.no_grad()
    def sample(self, c: torch.Tensor, generator: torch.Generator | None = None, **kw):
        z = gaussian((c.shape[0], self.cfg.z_dim), generator, c.device)  # z ~ N(0, I), (B, z_dim)
        return self.generator(z, c)
