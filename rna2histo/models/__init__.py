"""The registry: one name per model, used for the module, chapter, params file and run folder."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from ..errors import UserError
from .base import Generator, ModelConfig, count_parameters, init_weights

if TYPE_CHECKING:  # pandas is imported where the table is built, not on every model import
    import pandas as pd

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


STUDY_GENES = 16_383  # genes the reference study kept after cleaning
STUDY_IMAGE_SIZE = 128


def architecture_table(name: str, n_genes: int, image_size: int) -> pd.DataFrame:
    """Parameter counts of both presets next to the study's (thesis at the study's 16,383 genes, 128 px).

    Models are built on the meta device: counting a 70M-parameter network allocates nothing.
    """
    import pandas as pd
    import torch

    cls = model_class(name)
    extra = {"perceptual": "none"} if "perceptual" in cls.Config.__dataclass_fields__ else {}
    with torch.device("meta"):
        small = build_model(name, "small", n_genes=n_genes, image_size=image_size, **extra)
        thesis = build_model(name, "thesis", n_genes=STUDY_GENES, image_size=STUDY_IMAGE_SIZE, **extra)
    rows = {
        f"small ({n_genes} genes, {image_size} px)": small.parameter_counts(),
        f"thesis ({STUDY_GENES} genes, {STUDY_IMAGE_SIZE} px)": thesis.parameter_counts(),
        "the study": cls.STUDY_PARAMETERS,
    }
    table = pd.DataFrame(rows).T
    return table.map(lambda v: "-" if pd.isna(v) else f"{int(v):,}")
