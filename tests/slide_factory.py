"""Small pyramidal slides that OpenSlide reads, for tests: generic tiled TIFF or Aperio SVS.

OpenSlide 4 takes a tifffile pyramid as "generic-tiff" when every level is its own top-level
page (it ignores SubIFDs), tiled, and the reduced levels are marked subfiletype=1; it reports
``openslide.mpp-x/-y`` from XResolution/YResolution in pixels per centimetre, and no objective
power. An ImageDescription that starts with "Aperio Image Library" makes it an "aperio" slide
instead (as TCGA's SVS), whose ``MPP =`` and ``AppMag =`` fields become ``openslide.mpp-x``
and ``openslide.objective-power``. Both drivers read zlib tiles (real SVS hold JPEG, which
tifffile could only write with imagecodecs, not installed).

The default layout, in fractions of the slide, on a 4 x 4 grid of 20x tiles when size * mpp is
1024 um (2048 px at 0.25 um/px, tile_size 256)::

    T T T T      T sharp tissue (8 tiles)
    T T T T      B the same tissue out of focus (2)
    B B G G      F flat pink, no texture (2)
    F F G G      G glass (4)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

# name -> (x0, y0, x1, y1) in fractions of the slide side
LAYOUT = {
    "tissue": (0.0, 0.0, 1.0, 0.5),
    "blurred": (0.0, 0.5, 0.5, 0.75),
    "flat": (0.0, 0.75, 0.5, 1.0),
}
BLUR_UM = 1.5  # Gaussian sigma of the out-of-focus region, micrometres
GLASS = (242, 241, 244)
PINK = (232, 160, 205)  # eosin-stained stroma
PURPLE = (105, 70, 160)  # hematoxylin-stained nuclei


def write_slide(
    path,
    rng: np.random.Generator,
    mpp: float | None = 0.25,
    size: int = 2048,
    levels: int = 2,
    layout: dict | None = None,
    objective_power: float | None = None,
    vendor: str = "generic",
    tile: int = 256,
    glass: tuple[int, int, int] = GLASS,
) -> dict[str, tuple[int, int, int, int]]:
    """Write a size x size slide of `levels` levels (each /2); returns the regions in level-0 px.

    `mpp` None writes no resolution; `objective_power` is only stored by vendor "aperio";
    `glass` is the background colour (tinted glass: e.g. (215, 205, 228)).
    """
    layout = LAYOUT if layout is None else layout
    regions = {k: tuple(round(f * size) for f in box) for k, box in layout.items()}
    # drawn at the stored resolution so that nuclei have their size in um; 0.25 if none is known
    scan_mpp = mpp or (10 / objective_power if objective_power else 0.25)
    image = render(size, regions, rng, scan_mpp, glass)
    pyramid = [image]
    for _ in range(levels - 1):
        h, w = pyramid[-1].shape[0] // 2, pyramid[-1].shape[1] // 2
        blocks = pyramid[-1][: 2 * h, : 2 * w].reshape(h, 2, w, 2, 3).astype(np.float32)
        pyramid.append(np.round(blocks.mean((1, 3))).astype(np.uint8))  # area average
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(path) as writer:
        for k, level in enumerate(pyramid):
            extra = _tags(vendor, k, level.shape, size, mpp, objective_power, tile)
            writer.write(
                level,
                tile=(tile, tile),
                compression="zlib",
                compressionargs={"level": 1},  # fast: the tests write many slides
                photometric="rgb",
                subfiletype=1 if k else 0,  # reduced-resolution page: a pyramid level
                metadata=None,  # no tifffile JSON in ImageDescription
                **extra,
            )
    return regions


def _tags(vendor, k, shape, size, mpp, objective_power, tile) -> dict:
    """Resolution tags (generic) or the Aperio description for level `k`."""
    if vendor == "generic":
        if mpp is None:
            return {}
        per_cm = 1e4 / (mpp * 2**k)
        return {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}
    if vendor != "aperio":
        raise ValueError(f"vendor must be 'generic' or 'aperio', got {vendor!r}")
    h, w = shape[:2]
    head = f"Aperio Image Library v12.0.15\r\n{size}x{size} [0,0 {size}x{size}] ({tile}x{tile})"
    if k:
        return {"description": f"{head} -> {w}x{h}"}
    fields = [f"AppMag = {objective_power:g}"] if objective_power else []
    fields += [f"MPP = {mpp}"] if mpp else []
    return {"description": "|".join([f"{head} zlib/RGB", *fields])}


def render(size: int, regions: dict, rng: np.random.Generator, mpp: float, glass=GLASS):
    """(size, size, 3) uint8: `glass`, with tissue / blurred tissue / flat pink in `regions`."""
    out = np.empty((size, size, 3), dtype=np.float32)
    out[:] = glass
    tissue = _tissue(size, rng, mpp)
    sigma = BLUR_UM / mpp
    for name, (x0, y0, x1, y1) in regions.items():
        if name == "tissue":
            out[y0:y1, x0:x1] = tissue[y0:y1, x0:x1]
        elif name == "blurred":  # blur a margin of 4 sigma too, so the edges blur like the rest
            m = round(4 * sigma)
            a0, b0, a1, b1 = max(0, x0 - m), max(0, y0 - m), x1 + m, y1 + m
            blurred = ndimage.gaussian_filter(tissue[b0:b1, a0:a1], (sigma, sigma, 0))
            out[y0:y1, x0:x1] = blurred[y0 - b0 : y1 - b0, x0 - a0 : x1 - a0]
        elif name == "flat":
            out[y0:y1, x0:x1] = PINK
        else:
            raise ValueError(f"unknown region {name!r}: expected tissue, blurred or flat")
    out += 1.5 * rng.standard_normal(out.shape, dtype=np.float32)  # sensor noise, glass too
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _tissue(size: int, rng: np.random.Generator, mpp: float) -> np.ndarray:
    """(size, size, 3) float32: mottled pink stroma with round purple nuclei of 6-9 um."""
    # mottling over ~2 um: smoothed noise on a grid of 1 um, enlarged (cheaper than a big blur)
    coarse = max(1, round(1 / mpp))
    n = -(-size // coarse)
    mottle = ndimage.gaussian_filter(rng.standard_normal((n, n), dtype=np.float32), 2.0)
    mottle = ndimage.zoom(mottle * (12 / max(mottle.std(), 1e-6)), coarse, order=1)[:size, :size]
    image = np.float32(PINK) + mottle[..., None]
    # one nucleus per cell of a 12 um lattice, jittered, in 70% of the cells
    spacing = round(12 / mpp)
    cells = -(-size // spacing)
    radius = rng.uniform(3, 4.5, (cells, cells)) / mpp
    centre = (np.arange(cells) + 0.5) * spacing
    jitter = rng.uniform(-1, 1, (2, cells, cells)) * (spacing / 2 - radius)
    present = rng.random((cells, cells)) < 0.7
    yy, xx = np.ogrid[0:size, 0:size]
    cy, cx = yy // spacing, xx // spacing  # (size, 1), (1, size)
    dy = yy - (centre[cy] + jitter[0, cy, cx])
    dx = xx - (centre[cx] + jitter[1, cy, cx])
    nucleus = present[cy, cx] & (dx**2 + dy**2 <= radius[cy, cx] ** 2)
    shade = 8 * rng.standard_normal((int(nucleus.sum()), 3), dtype=np.float32)
    image[nucleus] = np.float32(PURPLE) + shade  # chromatin texture
    return image
