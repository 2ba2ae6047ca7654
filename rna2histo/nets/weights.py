"""Pretrained weights the models and metrics need: where they live, whether they are here, download.

Both live in torch hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``), which is where the
packages that use them look: `lpips` gets its AlexNet trunk through torchvision, and
`torch-fidelity` its InceptionV3 through ``torch.hub.load_state_dict_from_url``. Downloading here
fills the same cache (through `cohort.http.download`: resume, retries), and checks each file against
the SHA-256 prefix in its name (torch hub's convention). LPIPS's own linear layers ship inside the
`lpips` package and need no download.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm  # plain: tqdm.auto warns in a notebook without ipywidgets

from ..cohort import http
from ..errors import UserError


@dataclass(frozen=True)
class Weights:
    name: str
    url: str
    sha256_prefix: str
    used_by: str

    @property
    def path(self) -> Path:
        """Where torch hub keeps the file (follows $TORCH_HOME at every call)."""
        return Path(torch.hub.get_dir()) / "checkpoints" / self.url.rsplit("/", 1)[1]

    @property
    def present(self) -> bool:
        return self.path.is_file()


WEIGHTS = {
    "alexnet": Weights(
        "alexnet",
        "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        "7be5be79",
        "LPIPS (the hybrid's perceptual loss, the evaluation's LPIPS)",
    ),
    "inception": Weights(
        "inception",
        "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
        "6726825d",
        "FID and KID (torch-fidelity's InceptionV3)",
    ),
}
DOWNLOAD_COMMAND = "python -m rna2histo weights download"


def lpips_weights_path() -> Path:
    return WEIGHTS["alexnet"].path


def lpips_weights_present() -> bool:
    return WEIGHTS["alexnet"].present


def status() -> list[dict]:
    return [{"weights": w.name, "present": w.present, "used by": w.used_by, "path": str(w.path)} for w in WEIGHTS.values()]


def download(names: list[str] | None = None) -> list[Path]:
    """Fetch missing weights into torch hub's cache, verifying each file's SHA-256 prefix."""
    done = []
    for name in names or list(WEIGHTS):
        if name not in WEIGHTS:
            raise UserError(f"unknown weights {name!r}; expected one of {', '.join(WEIGHTS)}")
        w = WEIGHTS[name]
        if not w.present:
            try:  # writes to a .part file and renames it only after the hash matched
                with tqdm(desc=name, unit="B", unit_scale=True, disable=None) as bar:
                    http.download(w.url, w.path, sha256_prefix=w.sha256_prefix, progress=_show(bar))
            except (OSError, UserError) as err:
                raise UserError(f"could not download {name}: {err}") from None
        done.append(w.path)
    return done


def _show(bar):
    """A `download` progress callback that moves a tqdm bar."""

    def progress(done: int, total: int | None) -> None:
        bar.total = total
        bar.update(done - bar.n)

    return progress
