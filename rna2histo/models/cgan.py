"""The conditional GAN of the study: G(z, c) -> x against a conditional discriminator D(x, c).

Objectives, with BCE on logits and the study's smoothed labels r = 0.9 (real), f = 0.1 (fake):

    L_D = BCE(D(x, c), r) + BCE(D(G(z, c), c), f)
    L_G = BCE(D(G(z, c), c), r)            (non-saturating, aimed at the real label)

z ~ N(0, I) in R^z_dim. The discriminator steps first on detached fakes, then the generator.
D joins image features and the RNA embedding as in the study and adds a projection term (see
`Discriminator`); the generator is an `UpDecoder` with the condition after every BatchNorm.
Beyond the study, all off by default: a mode-seeking term for G (``w_diverse``), DiffAugment
of every tile D judges (``d_augment``, `rna2histo.nets.diffaugment`), the hinge loss (``loss``)
and patch logits in D (``d_patch``); the last three in `adversary`, shared with the hybrid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..nets.conv import UpDecoder, gaussian
from ..nets.diffaugment import diff_augment, parse_policy
from ..nets.rna import RNAEncoder
from .adversary import AdversaryConfig, Discriminator, adversarial_losses, mode_seeking, p_real
from .base import Generator, adam, count_parameters, init_weights, statistics_error


@dataclass
class CGANConfig(AdversaryConfig):
    z_dim: int = 64
    g_channels: tuple[int, ...] = (128, 64, 32, 16)  # 4 up-sampling layers: C_0 -> ... -> 3
    upsample: str = "transposed"  # the study's; "resize" draws no checkerboard (nets.conv.up)
    norm: str = "batch"  # generator norm (the study: BatchNorm; FiLM keeps c alive after it)
    d_augment: str = "none"  # DiffAugment of what D sees: "translation,cutout" (nets.diffaugment)

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


class CGANGenerator(nn.Module):
    """G(z, c): the RNA embedding e = MLP(c) and z drive an `UpDecoder` (FiLM at every size)."""

    def __init__(self, cfg: CGANConfig):
        super().__init__()
        self.rna = RNAEncoder(cfg.n_genes, cfg.rna_widths)
        e_dim = self.rna.out_features
        self.decoder = UpDecoder(cfg.image_size, cfg.z_dim, e_dim, cfg.g_channels, cfg.norm, cfg.upsample,
                                 cfg.g_depth)

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.decoder(z, self.rna(c))  # (B, z_dim), (B, G) -> (B, 3, S, S)


class CGAN(Generator):
    """The study's cGAN: `generator` and `discriminator`, optimised by "g" and "d"."""

    name = "cgan"
    Config = CGANConfig
    # Its statistics error does not see nuclei: in a 120-epoch demo run (g_depth 2) it was lowest at
    # epoch 27 (0.055, blotches), 0.059-0.068 at epochs 80-120 (nuclei); `best` is the last epoch.
    best_by_validation = False
    STUDY_PARAMETERS: ClassVar[dict[str, int]] = {
        "generator": 49_242_339,
        "discriminator": 73_551_041,
    }

    def __init__(self, cfg: CGANConfig):
        super().__init__()
        self.cfg = cfg
        self.generator = CGANGenerator(cfg)
        self.discriminator = Discriminator(cfg)
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
        loss_d, loss_g = adversarial_losses(real_logit, fake_logit, self.cfg)
        return {
            "loss_d": loss_d,
            "loss_g": loss_g,
            "d_real": p_real(real_logit),  # D's whole-tile P(real) for x
            "d_fake": p_real(fake_logit),
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
            loss_g = adversarial_losses(None, fake_logit, self.cfg)[1]
            if self.cfg.w_diverse:
                draw = lambda z2: self.generator(z2, c)  # noqa: E731
                loss_g = loss_g + self.cfg.w_diverse * mode_seeking(fake, z, draw)
        out["loss_g"] = step("g", loss_g)
        return out

    @torch.no_grad()
    def validation_step(self, batch) -> dict[str, float]:
        """Tile-statistics error on held-out patients with fixed noise, plus the game's losses.

        A GAN has no loss that falls as its images improve, so ``loss`` is `statistics_error`:
        colour, contrast and texture of each generated tile against a real tile of the same
        patient; it does not see nuclei, and does not pick ``best`` (`best_by_validation`).
        L_D + L_G are reported too, as a health check:
        they stay near the equilibrium value (D's logits 0: 3 ln 2 ~ 2.08 with BCE's smoothed
        labels, 2 with hinge; twice that with ``d_patch``, whose verdicts add a second group)
        while neither side wins.
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
