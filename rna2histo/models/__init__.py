"""The registry: one name per model, used for the module, chapter, params file and run folder."""

from __future__ import annotations

from importlib import import_module

from ..errors import UserError
from .base import Generator, ModelConfig, count_parameters, init_weights

# name -> (module, class); chapters are book/01_cgan, 02_cvae, 03_diffusion, 04_hybrid
MODELS = {
    "cgan": ("cgan", "CGAN"),
    "cvae": ("cvae", "CVAE"),
    "diffusion": ("diffusion", "Diffusion"),
    "hybrid": ("hybrid", "Hybrid"),
}

__all__ = ["MODELS", "Generator", "ModelConfig", "build_model", "count_parameters", "init_weights", "model_class"]


def model_class(name: str) -> type[Generator]:
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    module, cls = MODELS[name]
    return getattr(import_module(f"{__name__}.{module}"), cls)


def build_model(name: str, model_size: str = "small", **config) -> Generator:
    """A freshly initialised model from a preset, with config fields overridden by `config`."""
    cls = model_class(name)
    return cls(cls.Config.preset(model_size, **config))
