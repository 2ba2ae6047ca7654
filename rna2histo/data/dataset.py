"""From a cohort on disk to training batches: the Dataset, the augmentations and the loader.

A sample is ``(x, c, p)``: the tile `x` as float (3, S, S) in [-1, 1], the normalised RNA
profile `c` (G,) of its patient, and `p`, the patient's position in ``cohort.patients()``.
Tiles stay uint8 in the memory-mapped ``tiles.npy`` and are converted one at a time, so a
20,000-tile cohort never exists as floats in memory. The training split's augmentations are
drawn per tile but applied to the whole batch at once, by the loader's collate step
(`TileDataset.collate`, `rna2histo.data.augment.StudyAugment`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from ..cohort import Cohort
from .augment import augmentation
from .rna import Normaliser


def to_model_range(tiles: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, S, S) in [0, 255] -> float in [-1, 1]: (x / 255 - 0.5) / 0.5."""
    return tiles.float().div(127.5).sub(1.0)


def tiles_to_model(tiles: np.ndarray) -> torch.Tensor:
    """uint8 tiles (B, S, S, 3) as an array -> float (B, 3, S, S) in [-1, 1], the models' input."""
    # A read-only memory map is copied (torch warns on a tensor it may not write), others are not.
    tiles = np.require(tiles, requirements=["C_CONTIGUOUS", "WRITEABLE"])
    return to_model_range(torch.from_numpy(tiles).permute(0, 3, 1, 2))


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Model output (B, 3, S, S) in [-1, 1] -> uint8 images (B, S, S, 3) for display and metrics."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


class TileDataset(Dataset):
    """Tiles of one split with their patients' normalised RNA; augmented on `train` by default."""

    def __init__(self, cohort: Cohort, split: str | None, normaliser: Normaliser, augment=None, latent=None):
        """`augment`: an `rna2histo.data.augment.augmentation` name; None: the study's on the training
        split, none elsewhere."""
        self.tiles_path = cohort.root / "tiles.npy"
        self.indices = cohort.tile_indices(split)
        patients = cohort.patients()
        z, self.alignment = normaliser.transform(cohort.rna)
        # (P, G) for every cohort patient, or (P, k) through a fitted RNA latent (rna2histo.data.latent)
        self.c = torch.tensor(latent.encode(z) if latent is not None else z.to_numpy(), dtype=torch.float32)
        position = {p: i for i, p in enumerate(patients)}
        ids = cohort.tiles_table["patient_id"].to_numpy()[self.indices]
        self.patient = torch.tensor([position[p] for p in ids], dtype=torch.long)
        if augment is None:
            augment = "study" if split == "train" else "none"
        self.augment = augmentation(augment, cohort.image_size)
        self._tiles = None  # opened lazily: each loader worker maps the file itself

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        if self._tiles is None:
            self._tiles = np.load(self.tiles_path, mmap_mode="r")
        tile = torch.from_numpy(np.array(self._tiles[self.indices[i]])).permute(2, 0, 1)
        p = self.patient[i]
        return to_model_range(tile), self.c[p], p

    def collate(self, samples):
        """Samples -> a batch (x, c, p), augmented here on the training split, where the colour
        jitter is one matrix product for the whole batch (`rna2histo.data.augment`)."""
        x, c, p = default_collate(samples)
        return (self.augment(x) if self.augment is not None else x), c, p

    def __getstate__(self):
        # Never pickle a memory map into worker processes (pickling copies its data).
        return {**self.__dict__, "_tiles": None}


def make_loader(dataset: TileDataset, batch_size: int, shuffle: bool, seed: int = 0, workers: int = 0, **kw):
    """A DataLoader whose shuffling order depends on `seed` alone; batches come augmented
    (`TileDataset.collate`)."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        generator=generator,
        persistent_workers=workers > 0,
        collate_fn=dataset.collate,
        **kw,
    )
