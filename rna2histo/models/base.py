"""The one contract every generator follows, so that one loop (`rna2histo.training.loop.fit`) trains all four.

A generator is an `nn.Module` that

- is built from its config dataclass: ``Model(cfg)``; ``cfg.n_genes`` and ``cfg.image_size``
  come from the data, the rest from a preset (``small`` for a CPU, ``thesis`` for the study);
- names its optimisers and LR schedules: ``configure_optimizers(epochs, fused=False) ->
  {name: (opt, sched)}`` (the GANs have ``"g"`` and ``"d"``, the others one ``"main"``);
  schedules step once per epoch; every optimiser is built by `adam`, which takes ``fused``
  (the loop asks for fused kernels where torch has them, `rna2histo.training.fastpath`);
- takes one optimisation step per batch: ``training_step(batch, step) -> {metric: float}``,
  computing its losses under ``step.autocast()`` and handing each to ``step(name, loss)``,
  which backpropagates, clips, steps and zeroes that optimiser (and refuses non-finite losses);
- scores a validation batch: ``validation_step(batch) -> {metric: float}`` with a ``"loss"``
  entry (the loop keeps the ``best`` checkpoint by it, unless ``best_by_validation`` is False);
- generates: ``sample(c, generator) -> x`` in [-1, 1], (B, 3, S, S), all randomness drawn from
  `generator` so that a fixed generator gives fixed noise.

Models never print, plot or save: the loop does.
A batch is ``(x, c, p)``: images (B, 3, S, S) in [-1, 1], normalised RNA (B, G), patient index.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import ClassVar, get_args, get_origin, get_type_hints

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..settings import (
    ANY,
    AT_LEAST_ONE,
    NON_NEGATIVE,
    OPEN_UNIT,
    POSITIVE,
    UNIT,
    Range,
    check_number,
    number_error,
)


@dataclass
class ModelConfig:
    """Fields shared by every model's config; subclasses add their own and name their presets."""

    n_genes: int = 2000
    image_size: int = 64

    PRESETS: ClassVar[dict[str, dict]] = {}

    @classmethod
    def preset(cls, name: str, **overrides) -> ModelConfig:
        from ..errors import UserError

        if name not in cls.PRESETS:
            raise UserError(f"unknown model_size {name!r}; expected one of {', '.join(cls.PRESETS)}")
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise UserError(f"unknown {cls.__name__} fields: {', '.join(sorted(unknown))}")
        cfg = cls(**{**cls.PRESETS[name], **overrides})
        cfg.check_numbers()  # e.g. lr "2e-4" (YAML reads it as text), nan, -1, or 1.5 for a size
        return cfg

    def check_numbers(self) -> None:
        """One-line errors for a numeric field of the wrong kind or outside its range (`FIELD_RANGES`)."""
        hints = get_type_hints(type(self))
        for f in fields(self):
            label, allowed = f"{type(self).__name__}.{f.name}", FIELD_RANGES.get(f.name, ANY)
            check_field(label, getattr(self, f.name), hints[f.name], allowed)

    @classmethod
    def from_saved(cls, saved: dict) -> ModelConfig:
        """A config saved in a checkpoint. A field it lacks was added to the code after the run
        was trained and takes its default: new fields default to the behaviour before them."""
        from ..errors import UserError

        unknown = set(saved) - {f.name for f in fields(cls)}
        if unknown:
            raise UserError(f"its {cls.__name__} has fields this version does not know: "
                            f"{', '.join(sorted(unknown))}")
        return cls(**saved)

    def to_dict(self) -> dict:
        return asdict(self)


# The allowed range of every numeric config field of the four models (a tuple field: of each
# entry); a numeric field missing here need only be finite. Ranges exclude only what cannot
# work: a size of 0, a negative loss weight, a learning rate <= 0, a probability above 1.
FIELD_RANGES: dict[str, Range] = {
    **dict.fromkeys(  # sizes, widths, depths and counts
        ("n_genes", "image_size", "z_dim", "rna_widths", "d_channels", "d_hidden", "g_channels",
         "enc_channels", "dec_channels", "g_depth", "lr_step", "base_channels", "channel_mults",
         "groups", "time_dim", "timesteps", "sample_steps", "latent_widths", "latent_epochs"), AT_LEAST_ONE),
    # loss weights (0 turns a term off), indices (0 = off for d_patch), DDIM's eta, a seed;
    # blocks: 0 residual blocks per level still builds a working U-Net
    **dict.fromkeys(
        ("beta", "w_diverse", "w_adv", "w_recon", "w_perc", "w_kl", "w_feat", "weight_decay",
         "d_patch", "attention_levels", "blocks", "eta", "val_seed", "latent_channels",
         "latent_noise"), NON_NEGATIVE),
    **dict.fromkeys(("lr", "lr_g", "lr_d", "lr_gamma"), POSITIVE),  # lr_gamma 0 would stop learning
    # probabilities, BCE's target labels, the EMA's decay
    **dict.fromkeys(("d_dropout", "dropout", "cond_dropout", "real_label", "fake_label", "ema_decay"), UNIT),
    # the noise schedule's betas: 1 would make alpha_bar 0 and x_0 unrecoverable
    **dict.fromkeys(("beta_start", "beta_end"), OPEN_UNIT),
    "betas": Range(0, 1, high_open=True),  # Adam's: torch refuses 1 and above
    "guidance": ANY,  # s < 1 (even < 0) is weaker (negative) guidance, still defined
}


def check_field(label: str, value, hint, allowed: Range) -> None:
    """A number field (int or float) or a tuple of them; other fields (text, bools) pass."""
    if hint in (int, float):
        check_number(label, value, hint, allowed)
    elif get_origin(hint) is tuple and get_args(hint)[0] in (int, float):
        _check_tuple(label, value, get_args(hint), allowed)


def _check_tuple(label: str, value, args: tuple, allowed: Range) -> None:
    """``tuple[int, ...]`` (any length) or ``tuple[float, float]`` (that many); YAML gives lists."""
    kind, length = args[0], None if Ellipsis in args else len(args)
    entries_ok = isinstance(value, (list, tuple)) and (length is None or len(value) == length)
    if entries_ok and not any(number_error(label, v, kind, allowed) for v in value):
        return
    count = "a list of" if length is None else str(length)
    what = "whole numbers" if kind is int else "finite numbers"
    from ..errors import UserError

    raise UserError(f"{label}: expected {count} {what}{allowed.describe()}, got {value!r}")


class Generator(nn.Module):
    """Base class of the four generators: see the module docstring for the contract."""

    name: ClassVar[str]
    Config: ClassVar[type[ModelConfig]]
    # Whether the validation ``loss`` tracks the samples' quality. If not (the cGAN's), the loop's
    # ``best`` checkpoint is the latest epoch instead of the one of lowest loss.
    best_by_validation: ClassVar[bool] = True

    def configure_optimizers(self, epochs: int, fused: bool = False) -> dict:
        raise NotImplementedError

    def training_step(self, batch, step) -> dict[str, float]:
        raise NotImplementedError

    @torch.no_grad()
    def validation_step(self, batch) -> dict[str, float]:
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, c: torch.Tensor, generator: torch.Generator | None = None, **kw) -> torch.Tensor:
        raise NotImplementedError

    def initialise(self) -> None:
        """The study's initialisation (the loop calls it once, on a fresh model)."""
        self.apply(init_weights)

    def run_notes(self) -> dict:
        """Facts about this model that the machine decided (e.g. an optional loss term left off);
        the loop records them in the run's params.json and checkpoints."""
        return {}

    def on_step_end(self) -> None:
        """Called after every training step (the diffusion model updates its EMA here)."""


def init_weights(module: nn.Module) -> None:
    """The study's initialisation: conv weights ~ N(0, 0.02), norm layers ~ N(1, 0.02), biases 0."""
    if parametrize.is_parametrized(module):
        return  # spectrally normalised: initialised before its power iteration was set up
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)) and module.weight is not None:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def adam(params, fused: bool = False, decoupled: bool = False, **kw) -> torch.optim.Optimizer:
    """Adam, or AdamW when `decoupled` (weight decay apart from the gradient), for every model.

    ``fused``: one kernel updates all parameters (the loop's default wherever torch has one,
    `rna2histo.training.fastpath`). Unfused, torch chooses its default implementation (fused=None).
    """
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    return cls(params, fused=True if fused else None, **kw)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tile_statistics(x: torch.Tensor) -> torch.Tensor:
    """Per-tile summary (B, 12): channel means and stds, and mean |gradient| per channel at 1x and 1/2x.

    Colour, contrast and texture scale: cheap, weight-free, and comparable between a generated
    tile and a real tile of the same patient, which pixels are not.
    """
    feats = [x.mean((2, 3)), x.std((2, 3))]
    for image in (x, torch.nn.functional.avg_pool2d(x, 2)):
        dx = (image[..., :, 1:] - image[..., :, :-1]).abs().mean((2, 3))
        dy = (image[..., 1:, :] - image[..., :-1, :]).abs().mean((2, 3))
        feats.append((dx + dy) / 2)
    return torch.cat(feats, dim=1)


def statistics_error(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean |s(fake_i) - s(real_i)| over tiles and statistics, pairing each fake with a real tile
    of the same patient: the validation score of generators without a likelihood (the GANs)."""
    return (tile_statistics(fake.float()) - tile_statistics(real.float())).abs().mean()
