"""The study's own model, a hybrid GAN-VAE, built from the cVAE's and the cGAN's parts.

The cVAE `Encoder` gives q(z | x, c), the cGAN's decoder (`UpDecoder`, the body of its generator)
decodes x_rec = Dec(z, e) with z ~ q, and the cGAN `Discriminator` judges reconstructions and
prior samples x_pri = Dec(z', e), z' ~ N(0, I) (what `sample` draws; VAE-GAN, Larsen et al. 2016).
With e = MLP(c), smoothed labels r = 0.9, f = 0.1 and D_k the discriminator's k-th feature map:

    L_D = BCE(D(x), r) + BCE(D([x_rec, x_pri]), f)
    L_G = w_adv BCE(D([x_rec, x_pri]), r) + w_recon |x - x_rec|_1 + w_perc LPIPS(x_rec, x)
          + w_kl KL(q(z | x, c) || N(0, I)) + w_feat (1/n) sum_k |D_k(x) - D_k(x_rec)|_1

with the study's weights 1, 10, 5, 0.5, 2; ``w_diverse`` > 0 adds the cGAN's mode-seeking term
on x_pri (`adversary.mode_seeking`; not the study's), and the shared `adversary` fields
(``loss`` "hinge", ``d_patch``) act here as in the cGAN. Normalisation: the L1 terms are means over
elements (per pixel value, per feature value); the KL is summed over latent dimensions and
divided by z_dim (per latent dimension), so that every term is a mean, the scale the study's
weights balance. L_G updates the RNA MLP, encoder and decoder ("g"), L_D the discriminator ("d").

The perceptual term needs LPIPS's AlexNet. ``perceptual``: "lpips" (required; a missing download
is an error), "auto" (on when the weights are present, else off), "none" (off), "lpips-random"
(LPIPS with a random AlexNet: exercises the code path offline, measures nothing perceptual).
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..errors import UserError
from ..nets import weights
from ..nets.conv import UpDecoder, gaussian
from ..nets.rna import RNAEncoder
from .adversary import AdversaryConfig, Discriminator, adversarial_losses, mode_seeking, p_real
from .base import Generator, adam, count_parameters, init_weights
from .cvae import Encoder, kl_standard_normal, reparameterise

PERCEPTUAL = ("auto", "lpips", "lpips-random", "none")


@dataclass
class HybridConfig(AdversaryConfig):
    z_dim: int = 64
    enc_channels: tuple[int, ...] = (32, 64, 128, 128)
    dec_channels: tuple[int, ...] = (128, 64, 32, 16)
    upsample: str = "transposed"  # the study's; "resize" draws no checkerboard (nets.conv.up)
    norm: str = "batch"
    w_adv: float = 1.0
    w_recon: float = 10.0
    w_perc: float = 5.0
    w_kl: float = 0.5
    w_feat: float = 2.0
    perceptual: str = "auto"  # one of PERCEPTUAL

    PRESETS: ClassVar[dict[str, dict]] = {
        "small": {},  # the defaults above
        "thesis": {  # the study at 128 px: z in R^128, the cVAE encoder and the cGAN decoder and D
            "image_size": 128,
            "z_dim": 128,
            "rna_widths": (2048, 1024, 512),
            "enc_channels": (64, 128, 256, 512),
            "dec_channels": (256, 128, 64, 32),
            "d_channels": (64, 128, 256, 512),
            "d_hidden": 1024,
        },
    }


def resolve_perceptual(mode: str) -> str:
    """"auto" -> "lpips" if the AlexNet weights are present, else "none"; checks "lpips" can run."""
    if mode not in PERCEPTUAL:
        raise UserError(f"unknown perceptual {mode!r}; expected one of {', '.join(PERCEPTUAL)}")
    present = weights.lpips_weights_present()
    if mode == "auto":
        return "lpips" if present else "none"
    if mode == "lpips" and not present:
        raise UserError(
            "perceptual='lpips' needs the pretrained AlexNet weights "
            f"({weights.lpips_weights_path()}): run `python -m rna2histo weights download`, "
            "or set perceptual='auto' or 'none'"
        )
    return mode


def build_lpips(random_trunk: bool) -> nn.Module:
    """LPIPS(AlexNet), frozen and in eval mode; its calibrated linear layers ship with `lpips`."""
    import lpips

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's deprecation notes about `pretrained=`
        net = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=random_trunk, verbose=False)
    return net.eval().requires_grad_(False)


class Hybrid(Generator):
    """VAE `rna` + `encoder` + `decoder` (optimiser "g") against a `discriminator` ("d")."""

    name = "hybrid"
    Config = HybridConfig
    STUDY_PARAMETERS: ClassVar[dict[str, int]] = {}  # the study reports no count for its hybrid

    def __init__(self, cfg: HybridConfig):
        super().__init__()
        self.cfg = cfg
        self.rna = RNAEncoder(cfg.n_genes, cfg.rna_widths)
        e_dim = self.rna.out_features
        self.encoder = Encoder(cfg.image_size, cfg.z_dim, e_dim, cfg.enc_channels, cfg.norm)
        self.decoder = UpDecoder(cfg.image_size, cfg.z_dim, e_dim, cfg.dec_channels, cfg.norm, cfg.upsample,
                                 cfg.g_depth)
        self.discriminator = Discriminator(cfg)
        self.apply(init_weights)
        self.perceptual_mode = resolve_perceptual(cfg.perceptual)  # "lpips", "lpips-random", "none"
        net = None
        if self.perceptual_mode != "none":
            net = build_lpips(random_trunk=self.perceptual_mode == "lpips-random")
        # Set past nn.Module: a fixed metric, never in state_dict(), parameters() or the optimisers.
        object.__setattr__(self, "lpips_net", net)

    @property
    def perceptual_active(self) -> bool:
        return self.lpips_net is not None

    def vae_parameters(self):
        parts = (self.rna, self.encoder, self.decoder)
        return itertools.chain.from_iterable(part.parameters() for part in parts)

    def run_notes(self) -> dict:
        return {"perceptual": self.perceptual_mode}

    def parameter_counts(self) -> dict[str, int]:
        vae = sum(p.numel() for p in self.vae_parameters())
        return {"generator": vae, "discriminator": count_parameters(self.discriminator)}

    def configure_optimizers(self, epochs: int, fused: bool = False) -> dict:
        cfg, out = self.cfg, {}
        for name, params, lr in (
            ("d", self.discriminator.parameters(), cfg.lr_d),
            ("g", self.vae_parameters(), cfg.lr_g),
        ):
            opt = adam(params, fused, lr=lr, betas=cfg.betas)
            out[name] = (opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs)))
        return out

    def perceptual(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Mean LPIPS(x_hat, x) on [-1, 1] images; 0 when the term is off."""
        if self.lpips_net is None:
            return x.new_zeros((), dtype=torch.float32)
        if next(self.lpips_net.parameters()).device != x.device:  # `.to()` never reached it
            self.lpips_net.to(x.device)
        return self.lpips_net(x_hat, x).float().mean()

    def reconstruct(self, x, c, stochastic: bool = True):
        """(x_rec, mu, log sigma^2, e): decode z ~ q(z | x, c), or z = mu when not `stochastic`."""
        e = self.rna(c)
        mu, logvar = self.encoder(x, e)
        z = reparameterise(mu, logvar) if stochastic else mu
        return self.decoder(z, e), mu, logvar, e

    def vae_terms(self, x, x_rec, mu, logvar) -> dict[str, torch.Tensor]:
        """The non-adversarial terms: L1 reconstruction, KL per latent dimension, LPIPS."""
        return {
            "recon": (x_rec.float() - x.float()).abs().mean(),
            "kl": kl_standard_normal(mu, logvar).mean() / mu.shape[1],
            "perc": self.perceptual(x_rec, x),
        }

    def generator_loss(self, x, c, x_rec, fake, mu, logvar, z_pri, e) -> dict[str, torch.Tensor]:
        """L_G and its terms; `fake` is [x_rec, x_pri] (2B, 3, S, S), x_pri = Dec(z_pri, e)."""
        cfg = self.cfg
        fake_logit, fake_feats = self.discriminator(fake, c)
        with torch.no_grad():  # targets for feature matching, from D after its step
            _, real_feats = self.discriminator(x, c)
        n = x.shape[0]
        feat = sum((f[:n].float() - r.float()).abs().mean() for f, r in zip(fake_feats, real_feats))
        terms = {"adv": adversarial_losses(None, fake_logit, cfg)[1], "feat": feat / len(real_feats)}
        terms.update(self.vae_terms(x, x_rec, mu, logvar))
        weight = {"adv": cfg.w_adv, "recon": cfg.w_recon, "perc": cfg.w_perc, "kl": cfg.w_kl}
        weight["feat"] = cfg.w_feat
        if cfg.w_diverse:
            terms["diverse"] = mode_seeking(fake[len(x):], z_pri, lambda z2: self.decoder(z2, e))
            weight["diverse"] = cfg.w_diverse
        terms["loss_g"] = sum(weight[k] * terms[k] for k in weight)
        return terms

    def training_step(self, batch, step) -> dict[str, float]:
        x, c, _ = batch
        cfg = self.cfg
        with step.autocast():
            x_rec, mu, logvar, e = self.reconstruct(x, c)
            z_pri = torch.randn_like(mu)  # z' ~ N(0, I): what `sample` draws
            x_pri = self.decoder(z_pri, e)
            fake = torch.cat([x_rec, x_pri])  # (2B, 3, S, S)
            logits, _ = self.discriminator(torch.cat([x, fake.detach()]), c)  # x, x_rec, x_pri
            real_logit, fake_logit = logits[: len(x)], logits[len(x) :]
            loss_d = adversarial_losses(real_logit, fake_logit, cfg)[0]
        out = {"loss_d": step("d", loss_d)}
        out.update(d_real=float(p_real(real_logit)), d_fake=float(p_real(fake_logit)))
        with step.autocast():
            terms = self.generator_loss(x, c, x_rec, fake, mu, logvar, z_pri, e)
        out["loss_g"] = step("g", terms.pop("loss_g"))
        return {**out, **{k: float(v.detach()) for k, v in terms.items()}}

    @torch.no_grad()
    def validation_step(self, batch) -> dict[str, float]:
        """The weighted reconstruction, KL and perceptual terms on held-out patients, z = mu.

        The adversarial terms are left out: they measure the D-G balance, not the model, and
        would make the best checkpoint depend on how strong D happens to be.
        """
        x, c, _ = batch
        x_rec, mu, logvar, _ = self.reconstruct(x, c, stochastic=False)
        terms = self.vae_terms(x, x_rec, mu, logvar)
        cfg = self.cfg
        loss = cfg.w_recon * terms["recon"] + cfg.w_kl * terms["kl"] + cfg.w_perc * terms["perc"]
        return {"loss": float(loss), **{k: float(v) for k, v in terms.items()}}

    @torch.no_grad()
    def sample(self, c: torch.Tensor, generator: torch.Generator | None = None, **kw):
        z = gaussian((c.shape[0], self.cfg.z_dim), generator, c.device)  # z ~ N(0, I), (B, z_dim)
        return self.decoder(z, self.rna(c))
