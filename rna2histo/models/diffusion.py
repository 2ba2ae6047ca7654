"""Conditional diffusion: DDPM training (Ho et al. 2020), DDIM sampling (Song et al. 2021).

The network (`Denoiser`: RNA encoder, a learned null condition and the U-Net) predicts the
noise, or with ``prediction="v"`` the velocity v (Salimans & Ho 2022; see `eps_from_output`);
this module holds everything else: the linear beta schedule, ``q_sample``, the denoising loss,
classifier-free guidance (Ho & Salimans 2022) and the DDIM sampler.

Sampling and validation use an exponential moving average of the weights (``ema``, a copy of
the denoiser outside the optimiser and inside the state dict, so checkpoints keep it).

Guidance is an extension of the study, which used plain conditional sampling: training drops
the RNA condition with probability ``cond_dropout`` (replacing its embedding by the null
embedding) so that one network also learns eps(x_t, t, null); sampling then uses
eps = eps(x_t, t, null) + s (eps(x_t, t, c) - eps(x_t, t, null)). The default scale s = 1 is
exactly the plain conditional model (one network pass); s > 1 trades diversity for fidelity
to the condition.

Latent diffusion (Rombach et al. 2022), also an extension: with ``latent_channels`` k > 0 the
process runs on the latents of the cohort's tile autoencoder (`rna2histo.training.autoencoder`:
trained once per cohort on the training patients' tiles, then frozen; the loop attaches it),
(B, k, S/2, S/2) with one halving, scaled to unit variance; ``sample`` decodes them. The U-Net
then sees a quarter of the positions, which on a CPU is most of its cost. The autoencoder is a
frozen part of this module, so every checkpoint carries it; the optimiser and the EMA never see it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..nets.autoencoder import TileAutoencoder
from ..nets.rna import RNAEncoder
from ..nets.unet import UNet
from .base import Generator, ModelConfig, adam, count_parameters, init_weights


@dataclass
class DiffusionConfig(ModelConfig):
    # Three levels of 16, 32 and 64 channels: against two of 32 and 64 (the preset before
    # 2026-12-02) a 3.7x cheaper training step on a CPU and a receptive field twice as wide
    base_channels: int = 16
    channel_mults: tuple[int, ...] = (1, 2, 4)  # one entry per U-Net level
    blocks: int = 1  # residual blocks per level (the decoder has one more)
    attention_levels: tuple[int, ...] = ()  # levels with self-attention; the study names none
    groups: int = 8  # GroupNorm groups
    dropout: float = 0.0
    time_dim: int = 128  # sinusoidal time embedding, as in the study
    rna_widths: tuple[int, ...] = (256, 128)  # RNA embedding MLP (study: 512, 256)
    timesteps: int = 1000  # T
    beta_start: float = 1e-4
    beta_end: float = 0.02
    cond_dropout: float = 0.1  # P(condition replaced by the null embedding) in training
    guidance: float = 1.0  # classifier-free guidance scale s at sampling; 1 = plain conditional
    # What the network outputs: "eps", the noise (the study), or "v" = sqrt(ab) eps - sqrt(1 - ab) x_0
    # (Salimans & Ho 2022), trained on the v error. Sampling turns either into eps.
    prediction: str = "eps"
    sample_steps: int = 50  # DDIM steps
    eta: float = 0.0  # DDIM stochasticity; 0 = deterministic given x_T
    ema_decay: float = 0.99
    lr: float = 1e-4
    weight_decay: float = 0.01
    val_seed: int = 0  # fixes validation timesteps and noise, so epochs are comparable
    # 0: the process runs on pixels (the study); k > 0: on the k-channel latents of the cohort's
    # tile autoencoder of ``latent_widths`` (one halving per entry after the first), trained
    # ``latent_epochs`` epochs once per cohort
    latent_channels: int = 0
    latent_widths: tuple[int, ...] = (32, 64)
    latent_epochs: int = 15
    latent_noise: float = 0.0  # the autoencoder's decoder learns from z + this x std(z) x N(0, I)

    PRESETS: ClassVar[dict[str, dict]] = {
        "small": {},
        "thesis": {
            "base_channels": 64,
            "channel_mults": (1, 2, 2, 4),  # 64 ... 256 at the bottleneck, 16 px at 128 px
            "blocks": 2,
            "groups": 32,
            "rna_widths": (512, 256),
            "ema_decay": 0.999,
        },
    }


PREDICTIONS = ("eps", "v")


class Denoiser(nn.Module):
    """eps_theta(x_t, t, e) or v_theta: the RNA encoder c -> e, a learned null embedding, the U-Net."""

    def __init__(self, cfg: DiffusionConfig, channels: int = 3):
        super().__init__()
        self.rna = RNAEncoder(cfg.n_genes, tuple(cfg.rna_widths))
        self.null = nn.Parameter(torch.zeros(self.rna.out_features))  # the "no RNA" condition
        self.unet = UNet(
            self.rna.out_features,
            base=cfg.base_channels,
            mults=tuple(cfg.channel_mults),
            blocks=cfg.blocks,
            time_dim=cfg.time_dim,
            groups=cfg.groups,
            attention_levels=tuple(cfg.attention_levels),
            dropout=cfg.dropout,
            channels=channels,
        )

    def embed(self, c, drop=None):  # (B, G), (B,) bool or None -> (B, D)
        """RNA embedding; rows where ``drop`` is True get the null embedding instead."""
        e = self.rna(c)
        if drop is None:
            return e
        return torch.where(drop[:, None], self.null.to(e.dtype), e)

    def forward(self, x, t, e):  # (B, 3, S, S), (B,), (B, D) -> (B, 3, S, S)
        return self.unet(x, t, e)


class Diffusion(Generator):
    """Conditional DDPM with DDIM sampling, EMA weights and classifier-free guidance."""

    name = "diffusion"
    Config = DiffusionConfig
    # The study says only ">15M parameters" for the U-Net; 15M is that lower bound.
    STUDY_PARAMETERS: ClassVar[dict[str, int]] = {"unet": 15_000_000}

    def __init__(self, cfg: DiffusionConfig):
        super().__init__()
        if cfg.prediction not in PREDICTIONS:
            raise UserError(f"prediction must be one of {', '.join(PREDICTIONS)}, not {cfg.prediction!r}")
        self.cfg = cfg
        self.autoencoder = None
        channels, self.size = 3, cfg.image_size  # of the space the process runs in
        if cfg.latent_channels:
            self.autoencoder = TileAutoencoder(cfg.latent_channels, tuple(cfg.latent_widths)).requires_grad_(False)
            channels, self.size = cfg.latent_channels, self.autoencoder.latent_size(cfg.image_size)
            # set by `attach_autoencoder` from the training latents, then kept in the state dict
            self.register_buffer("latent_scale", torch.ones(()))
        if self.size % 2 ** (len(cfg.channel_mults) - 1):
            raise UserError(f"image_size {cfg.image_size} must be divisible by 2 ** (levels - 1)"
                            + (" x the autoencoder's factor" if self.autoencoder is not None else ""))
        self.channels = channels
        self.net = Denoiser(cfg, channels)
        self.ema = copy.deepcopy(self.net).requires_grad_(False)
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        # Linear schedule (DDPM sec. 4): beta_t from beta_start to beta_end; alpha_bar_t =
        # prod_{s <= t} (1 - beta_s), in float64 before rounding. Derived from cfg: not saved.
        betas = torch.linspace(cfg.beta_start, cfg.beta_end, cfg.timesteps, dtype=torch.float64)
        self.register_buffer("alpha_bar", torch.cumprod(1 - betas, 0).float(), persistent=False)
        self.initialise()

    def initialise(self) -> None:
        """The study's initialisation of the online weights; the EMA restarts as their copy."""
        self.net.apply(init_weights)
        self.ema.load_state_dict(self.net.state_dict())
        self.ema_updates.zero_()

    def attach_autoencoder(self, state: dict, scale: float) -> None:
        """Load the cohort's trained tile autoencoder (`rna2histo.training.autoencoder.prepare`)."""
        self.autoencoder.load_state_dict(state)
        self.latent_scale.fill_(scale)

    def to_space(self, x):  # tiles (B, 3, S, S) -> what the process runs on
        """The tiles themselves, or their scaled latents (no gradient reaches the autoencoder)."""
        if self.autoencoder is None:
            return x
        with torch.no_grad():
            return self.autoencoder.encode(x) * self.latent_scale.to(x.dtype)

    def from_space(self, z):  # the inverse of `to_space`: -> tiles (B, 3, S, S) in [-1, 1]
        if self.autoencoder is None:
            return z.clamp(-1, 1)
        return self.autoencoder.decode(z / self.latent_scale).clamp(-1, 1)

    @property
    def unet(self) -> UNet:
        """The online U-Net (the part the study's parameter count refers to)."""
        return self.net.unet

    def parameter_counts(self) -> dict[str, int]:
        """Trained parameters; the EMA copy doubles ``count_parameters(self)`` and is left out."""
        rna = count_parameters(self.net) - count_parameters(self.unet)  # encoder + null embedding
        counts = {"unet": count_parameters(self.unet), "rna_encoder": rna}
        if self.autoencoder is not None:  # frozen, trained once per cohort
            counts["autoencoder"] = count_parameters(self.autoencoder)
        return counts

    def train(self, mode: bool = True):
        super().train(mode)
        self.ema.eval()  # the EMA copy only ever evaluates: no dropout
        if self.autoencoder is not None:
            self.autoencoder.eval()  # frozen
        return self

    def configure_optimizers(self, epochs: int, fused: bool = False) -> dict:
        cfg = self.cfg
        opt = adam(self.net.parameters(), fused, decoupled=True, lr=cfg.lr,
                   weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
        return {"main": (opt, sched)}

    # --- forward process and loss -------------------------------------------------------

    def q_sample(self, x0, t, noise):  # (B, 3, S, S), (B,), (B, 3, S, S) -> (B, 3, S, S)
        """Sample q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I) (DDPM eq. 4)."""
        a, s = self._scales(t)
        return a * x0 + s * noise

    def _scales(self, t):  # (B,) -> sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t), each (B, 1, 1, 1)
        ab = self.alpha_bar[t].view(-1, 1, 1, 1)
        return ab.sqrt(), (1 - ab).sqrt()

    def eps_from_output(self, out, x, t):  # network output, x_t, t (B,) -> eps, all (B, 3, S, S)
        """The noise an output stands for: itself ("eps"), or sqrt(ab) v + sqrt(1 - ab) x_t ("v").

        Why v: at large t, x_0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab) multiplies an eps error by
        up to 150 (t = 999), so a briefly trained eps model draws noise; x_0 = sqrt(ab) x_t -
        sqrt(1 - ab) v does not amplify the error of v.
        """
        if self.cfg.prediction == "eps":
            return out
        a, s = self._scales(t)
        return a * out + s * x

    def denoising_loss(self, net, x0, c, t, noise, drop=None) -> torch.Tensor:
        """The training objective: L_simple = || eps - eps_theta(x_t, t, c) ||^2 (DDPM eq. 14),
        or with ``prediction="v"`` || v - v_theta ||^2, v = sqrt(ab) eps - sqrt(1 - ab) x_0."""
        out = net(self.q_sample(x0, t, noise), t, net.embed(c, drop)).float()
        if self.cfg.prediction == "eps":
            return F.mse_loss(out, noise)
        a, s = self._scales(t)
        return F.mse_loss(out, a * noise - s * x0)

    def training_step(self, batch, step) -> dict[str, float]:
        x, c, _ = batch
        x = self.to_space(x).float()
        t = torch.randint(0, self.cfg.timesteps, (len(x),), device=x.device)
        # not randn_like: it fills a channels_last x in memory order, so the layout would change the noise
        noise = torch.randn(x.shape, dtype=x.dtype, device=x.device)
        drop = torch.rand(len(x), device=x.device) < self.cfg.cond_dropout
        with step.autocast():
            loss = self.denoising_loss(self.net, x, c, t, noise, drop)
        return {"loss": step("main", loss)}

    @torch.no_grad()
    def on_step_end(self) -> None:
        """EMA: theta_ema <- d theta_ema + (1 - d) theta, warm-up d_n = min(d, (1 + n) / (10 + n)).

        The warm-up lets the average follow the fast early changes, so even a short run has a
        useful EMA; after ~1,000 updates d_n reaches 0.99 and the configured decay takes over.
        """
        n = int(self.ema_updates)
        d = min(self.cfg.ema_decay, (1 + n) / (10 + n))
        for e, p in zip(self.ema.parameters(), self.net.parameters(), strict=True):
            e.lerp_(p.detach(), 1 - d)
        self.ema_updates += 1

    @torch.no_grad()
    def validation_step(self, batch) -> dict[str, float]:
        """The objective (eps or v MSE) of the EMA weights at timesteps and noise fixed by ``val_seed``."""
        x, c, _ = batch
        x = self.to_space(x)
        g = torch.Generator().manual_seed(self.cfg.val_seed)
        t = torch.randint(0, self.cfg.timesteps, (len(x),), generator=g).to(x.device)
        noise = torch.randn(x.shape, generator=g).to(x.device)
        return {"loss": float(self.denoising_loss(self.ema, x, c, t, noise))}

    # --- sampling ---------------------------------------------------------------------

    def _randn(self, shape, generator):
        """Standard normal noise drawn from ``generator`` on its own device, moved to ours."""
        device = generator.device if generator is not None else self.alpha_bar.device
        return torch.randn(shape, generator=generator, device=device).to(self.alpha_bar.device)

    def guided_eps(self, net, x, t: int, e, guidance: float):  # -> (B, 3, S, S)
        """eps = eps(x, t, null) + s (eps(x, t, c) - eps(x, t, null)); s = 1 is one plain pass.
        (Guiding the v outputs instead is the same: eps is affine in v with x fixed.)"""
        t = torch.full((len(x),), t, device=x.device)
        if guidance == 1:
            return self.eps_from_output(net(x, t, e), x, t)
        null = net.null.expand_as(e)
        both = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([e, null]))  # (2B, 3, S, S)
        out_c, out_u = both.chunk(2)
        return self.eps_from_output(out_u + guidance * (out_c - out_u), x, t)

    def ddim_step(self, x, eps, t: int, t_prev: int, eta: float, generator):
        """x_t -> x_{t_prev} by DDIM (Song et al. 2021, eq. 12; sigma eq. 16); t_prev = -1 ends."""
        ab = self.alpha_bar[t]
        ab_prev = self.alpha_bar[t_prev] if t_prev >= 0 else torch.ones_like(ab)
        x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()  # predicted x_0
        if self.autoencoder is None:  # pixels lie in [-1, 1]; latents have no such bound
            x0 = x0.clamp(-1, 1)
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()  # the noise consistent with the clipped x_0
        sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).sqrt()
        x = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma**2).clamp(min=0).sqrt() * eps
        if eta > 0 and t_prev >= 0:
            x = x + sigma * self._randn(x.shape, generator)
        return x

    def timesteps(self, steps: int, start: int | None = None) -> list[int]:
        """DDIM's evenly spaced timesteps from ``start`` (default T - 1) down to 0."""
        start = self.cfg.timesteps - 1 if start is None else start
        return torch.linspace(start, 0, steps).round().long().tolist()

    def _ddim(self, x, e, ts: list[int], guidance: float, eta: float, generator):
        """x_{ts[0]} -> x_0 through ``ts``, then the final jump to x_0 (alpha_bar = 1)."""
        for t, t_prev in zip(ts, [*ts[1:], -1], strict=True):
            eps = self.guided_eps(self.ema, x, t, e, guidance)
            x = self.ddim_step(x, eps, t, t_prev, eta, generator)
        return self.from_space(x)

    def _sampling_options(self, steps, guidance, eta):
        cfg = self.cfg
        steps = cfg.sample_steps if steps is None else steps
        if not 1 <= steps <= cfg.timesteps:
            raise UserError(f"DDIM steps must be between 1 and {cfg.timesteps}, not {steps}")
        return steps, cfg.guidance if guidance is None else guidance, cfg.eta if eta is None else eta

    @torch.no_grad()
    def sample(self, c, generator=None, steps=None, guidance=None, eta=None) -> torch.Tensor:
        """DDIM from x_T ~ N(0, I) with the EMA weights: (B, G) -> (B, 3, S, S) in [-1, 1].

        ``steps``, ``guidance`` and ``eta`` default to the config; all noise comes from
        ``generator``, so with eta = 0 a fixed generator gives a fixed image per condition.
        """
        steps, guidance, eta = self._sampling_options(steps, guidance, eta)
        e = self.ema.embed(c)  # (B, D)
        x = self._randn((len(c), self.channels, self.size, self.size), generator)  # x_T
        return self._ddim(x, e, self.timesteps(steps), guidance, eta, generator)

    @torch.no_grad()
    def denoise(self, x0, c, t_start: int, generator=None, steps=None, guidance=None, eta=None):
        """Noise tiles to x_{t_start} ~ q(x_t | x_0) and sample back from there (as SDEdit,
        Meng et al. 2022): (B, 3, S, S) in [-1, 1], (B, G) -> (B, 3, S, S) in [-1, 1].

        A diagnostic: a denoiser that has learnt noise level t returns the tile from t_start = t,
        so the smallest t_start whose result is no longer clean says where the model fails,
        apart from the sampler. The sampler's spacing is kept: of its ``steps`` over T, the
        share below t_start (at least one).
        """
        cfg = self.cfg
        if not 0 <= t_start < cfg.timesteps:
            raise UserError(f"t_start must be between 0 and {cfg.timesteps - 1}, not {t_start}")
        steps, guidance, eta = self._sampling_options(steps, guidance, eta)
        z0 = self.to_space(x0)
        noise = self._randn(z0.shape, generator)
        x = self.q_sample(z0, torch.full((len(x0),), t_start, device=x0.device), noise)
        ts = self.timesteps(max(1, round(steps * (t_start + 1) / cfg.timesteps)), t_start)
        return self._ddim(x, self.ema.embed(c), ts, guidance, eta, generator)
