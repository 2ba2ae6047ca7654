"""Whole-slide images (TCGA diagnostic SVS and any slide OpenSlide reads) -> 20x H&E tiles.

`tile_slide` does, for one slide:

1. Resolution. The scan's um per pixel comes from ``openslide.mpp-x`` (``-y``), or else from
   the objective power (20x = 0.5 um/px, 40x = 0.25: mpp = 10 / power); `slide_mpp`.
2. Level. The coarsest pyramid level that is still at least as fine as 20x (TARGET_MPP, within
   LEVEL_TOLERANCE), so that tiles are only ever shrunk, never enlarged (`pick_level`). For the
   usual TCGA pyramids (40x or 20x base, then /4, /16) that is also the level nearest 20x.
3. Tissue. A thumbnail (longest side THUMBNAIL_SIDE) is classified pixel by pixel with the folder
   source's test (`folder.tissue_mask`: not near-white glass, not colourless), its saturation
   threshold raised to Otsu's on the thumbnail when the glass is tinted (`tissue_mask`).
4. Grid. Non-overlapping tiles of `tile_size` pixels at 20x, i.e. tile_size * 0.5 um whatever
   the level read; a tile is a candidate when at least `min_tissue` of its thumbnail area is
   tissue.
5. Sample. The candidates are visited in a seeded random order; each is read on its own
   (`read_region`, never a whole level), brought to 20x, and dropped when flat (LOW_CONTRAST_STD)
   or out of focus (BLUR_LAPLACIAN_VAR), until `tiles_per_patient` are kept. The kept tiles are
   a uniform random sample of the good ones, without checking all of a slide's thousands.
6. Resize to `image_size` (LANCZOS); tiles come back in grid order (row by row).

A file OpenSlide cannot open or read raises `SlideError` (a `UserError`): one line naming the
file, for the caller to skip the slide and list it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import openslide
from PIL import Image
from scipy import ndimage
from skimage.filters import threshold_otsu

from ..errors import UserError
from . import folder
from .folder import MIN_SATURATION, MIN_TISSUE

TARGET_MPP = 0.5  # um per pixel of a 20x tile, the project's magnification
UM_PER_POWER = 10.0  # mpp = 10 / objective power: 20x -> 0.5, 40x -> 0.25 (Aperio's convention)
# A level up to 10% coarser than 20x still counts as 20x: scanners report 0.2527 um/px at 40x,
# so a /2 level is 0.505, and enlarging by 1% loses nothing visible.
LEVEL_TOLERANCE = 0.10
THUMBNAIL_SIDE = 2048  # px, longest side of the tissue thumbnail: ~10 px per 20x tile of 128 um
STRIP_PIXELS = 2**22  # level pixels read at once for the thumbnail (16 MB of RGBA)
# Otsu's threshold on saturation is used up to this value only: on a slide that is all tissue it
# splits pale from dark tissue (0.23-0.29 on MoNuSeg's TCGA crops) instead of tissue from glass.
MAX_OTSU_SATURATION = 0.15
# Quality, measured on the 20x tile (tile_size px) in grey levels 0-255 (ITU-R 601 luma).
# On the four TCGA crops of MoNuSeg (../shared) at 20x, every 32 um window with tissue had a grey
# std >= 23 and a Laplacian variance >= 630 (256 px tiles: 1400-3200). After a Gaussian blur of
# 0.5 um and JPEG Q70 (Aperio's) tiles fell to 170-215, after 1 um to 27-32, while their std
# stayed >= 15: the blur cut-off sits between a slight softness (kept) and 1 um (dropped).
LOW_CONTRAST_STD = 10.0  # grey std below this: a flat smear, fold or blank; noise alone is ~2
BLUR_LAPLACIAN_VAR = 100.0  # variance of the 5-point Laplacian below this: out of focus


class SlideError(UserError):
    """A slide that cannot be used (not a slide, truncated, no resolution): skip it, list it."""


def open_slide(path) -> openslide.OpenSlide:
    """The slide at `path`, or a one-line `SlideError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise SlideError(f"{path}: file not found")
    try:
        return openslide.OpenSlide(path)
    except openslide.OpenSlideError as err:  # includes the unsupported-format error
        raise _slide_error(path, err, "OpenSlide cannot open it") from None


def slide_mpp(slide, path=None) -> tuple[float, str]:
    """Level-0 um per pixel and where it came from: "mpp" or "objective-power".

    `slide` needs only `.properties`; `path` names the file in the error (default: the slide's).
    """
    props = slide.properties
    mpp = [_positive(props.get(f"openslide.mpp-{axis}")) for axis in "xy"]
    mpp = [m for m in mpp if m is not None]
    if mpp:
        return float(np.mean(mpp)), "mpp"  # square pixels in practice; average if not
    power = _positive(props.get("openslide.objective-power"))
    if power is not None:
        return UM_PER_POWER / power, "objective-power"
    name = path or getattr(slide, "_filename", None) or "slide"
    raise SlideError(f"{name}: resolution unknown (neither openslide.mpp-x nor objective power)")


def pick_level(slide, target_mpp: float = TARGET_MPP, path=None) -> tuple[int, float]:
    """(level, downsample_to_target): the level to read, and by how much to shrink what it gives.

    The coarsest level with mpp <= target (1 + LEVEL_TOLERANCE); level 0 when even that is
    coarser (then downsample_to_target < 1: the tile is enlarged). A region of
    tile_size * downsample_to_target level pixels covers tile_size target pixels.
    """
    mpp, _ = slide_mpp(slide, path)
    level_mpp = mpp * np.asarray(slide.level_downsamples, dtype=float)  # (levels,)
    fine_enough = np.flatnonzero(level_mpp <= target_mpp * (1 + LEVEL_TOLERANCE))
    level = int(fine_enough[np.argmax(level_mpp[fine_enough])]) if fine_enough.size else 0
    return level, float(target_mpp / level_mpp[level])


def thumbnail(slide, max_side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """(h, w, 3) uint8 RGB of the whole slide, longest side `max_side` (or level 0 if smaller).

    Unlike `OpenSlide.get_thumbnail`, which reads a whole level at once (gigabytes when a slide
    has no small level), the level is read in strips of about STRIP_PIXELS pixels.
    """
    w0, h0 = slide.dimensions
    scale = min(1.0, max_side / max(w0, h0))
    tw, th = max(1, round(w0 * scale)), max(1, round(h0 * scale))
    level = slide.get_best_level_for_downsample(1 / scale)
    lw, lh = slide.level_dimensions[level]
    down = slide.level_downsamples[level]
    rows_per_thumb_row = lh / th
    step = max(1, int(max(1, STRIP_PIXELS // lw) / rows_per_thumb_row))  # thumbnail rows a strip
    out = np.empty((th, tw, 3), dtype=np.uint8)
    for t0 in range(0, th, step):
        t1 = min(th, t0 + step)
        y0 = round(t0 * rows_per_thumb_row)
        y1 = max(y0 + 1, min(lh, round(t1 * rows_per_thumb_row)))
        strip = folder._on_white(slide.read_region((0, round(y0 * down)), level, (lw, y1 - y0)))
        if strip.size != (tw, t1 - t0):
            strip = strip.resize((tw, t1 - t0), Image.Resampling.BOX)  # area average
        out[t0:t1] = np.asarray(strip)
    return out


def tissue_mask(slide, max_side: int = THUMBNAIL_SIDE) -> tuple[np.ndarray, float]:
    """((h, w) bool tissue mask of a thumbnail, scale = mask pixels per level-0 pixel).

    The folder source's pixel test (glass: darkest channel > WHITE_LEVEL; colourless:
    saturation < MIN_SATURATION), with the saturation threshold raised to Otsu's on the
    thumbnail, capped at MAX_OTSU_SATURATION: tinted or dirty glass falls below it.
    """
    rgb = thumbnail(slide, max_side)
    mask = folder.tissue_mask(rgb)
    saturation = _saturation(rgb)
    if np.ptp(saturation) > 0:
        cut = min(max(float(threshold_otsu(saturation)), MIN_SATURATION), MAX_OTSU_SATURATION)
        mask &= saturation >= cut
    return mask, rgb.shape[1] / slide.dimensions[0]


def tile_defect(rgb: np.ndarray) -> str | None:
    """"low_contrast", "blurred" or None (good) for an (H, W, 3) uint8 tile at 20x."""
    grey = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32)  # (H, W)
    if grey.std() < LOW_CONTRAST_STD:
        return "low_contrast"
    # the border is left out: reflection at the edge adds no information
    if ndimage.laplace(grey)[1:-1, 1:-1].var() < BLUR_LAPLACIAN_VAR:
        return "blurred"
    return None


def tile_slide(
    path, tile_size=256, image_size=128, tiles_per_patient=64, seed=0, min_tissue=MIN_TISSUE
) -> tuple[np.ndarray, dict]:
    """Up to `tiles_per_patient` good 20x tiles of one slide: ((K, S, S, 3) uint8, record).

    `record` holds the level and resolution used, the dimensions, the counts at each step
    (candidates, tissue, checked, blurred, low_contrast, sampled) and, under "tiles", the
    level-0 `x`, `y` and `tissue_fraction` of each returned tile (lists aligned with it).
    """
    _check_params(tile_size, image_size, tiles_per_patient, min_tissue)
    path = Path(path)
    with open_slide(path) as slide:
        try:
            return _tile(slide, path, tile_size, image_size, tiles_per_patient, seed, min_tissue)
        except openslide.OpenSlideError as err:  # a broken tile deep in the file
            raise _slide_error(path, err, "OpenSlide cannot read it") from None


def _tile(slide, path, tile_size, image_size, tiles_per_patient, seed, min_tissue):
    mpp, source = slide_mpp(slide, path)
    level, down = pick_level(slide, TARGET_MPP, path)
    step = tile_size * TARGET_MPP / mpp  # level-0 pixels per tile (float)
    mask, scale = tissue_mask(slide)
    fractions = _grid_fractions(mask, scale, step, slide.dimensions)  # (ny, nx)
    tissue = np.flatnonzero(fractions.ravel() >= min_tissue)
    order = np.random.default_rng(seed).permutation(tissue)
    read = round(tile_size * down)  # level pixels per tile side
    nx = fractions.shape[1]
    kept, images, counts = [], [], {"checked": 0, "blurred": 0, "low_contrast": 0}
    for index in order:
        if len(kept) == tiles_per_patient:
            break
        x, y = round(index % nx * step), round(index // nx * step)
        tile = _read_tile(slide, (x, y), level, read, tile_size)  # (tile_size, tile_size, 3)
        counts["checked"] += 1
        defect = tile_defect(tile)
        if defect:
            counts[defect] += 1
            continue
        kept.append((int(index), x, y))
        images.append(_resized(tile, image_size))
    grid = sorted(range(len(kept)), key=lambda k: kept[k][0])  # grid order, row by row
    tiles = np.zeros((0, image_size, image_size, 3), dtype=np.uint8)
    if kept:
        tiles = np.stack([images[k] for k in grid])  # (K, S, S, 3)
    record = {
        "level": level,
        "level_mpp": mpp * float(slide.level_downsamples[level]),
        "mpp": mpp,
        "mpp_source": source,
        "downsample_to_target": down,
        "dimensions": [int(d) for d in slide.dimensions],
        "tile_um": tile_size * TARGET_MPP,
        "candidates": int(fractions.size),
        "tissue": int(tissue.size),
        **counts,
        "sampled": len(kept),
        "tiles": {
            "x": [kept[k][1] for k in grid],
            "y": [kept[k][2] for k in grid],
            "tissue_fraction": [float(fractions.flat[kept[k][0]]) for k in grid],
        },
    }
    return tiles, record


def _grid_fractions(mask: np.ndarray, scale: float, step: float, dims) -> np.ndarray:
    """(ny, nx) tissue fraction of each whole tile of `step` level-0 pixels, from the mask."""
    nx, ny = int(dims[0] // step), int(dims[1] // step)
    # summed-area table: the sum over any rectangle in four look-ups, (h + 1, w + 1)
    table = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))

    def edges(n, size):  # mask indices of the tile borders, at least one pixel per tile
        start = np.minimum(np.round(np.arange(n) * step * scale).astype(int), size - 1)
        end = np.round((np.arange(n) + 1) * step * scale).astype(int)
        return start, np.clip(end, start + 1, size)

    (x0, x1), (y0, y1) = edges(nx, mask.shape[1]), edges(ny, mask.shape[0])
    y0, y1 = y0[:, None], y1[:, None]
    inside = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]  # (ny, nx)
    return inside / ((y1 - y0) * (x1 - x0))


def _read_tile(slide, xy, level, read, tile_size) -> np.ndarray:
    """(tile_size, tile_size, 3) uint8: `read` level pixels from level-0 `xy`, brought to 20x."""
    region = folder._on_white(slide.read_region(xy, level, (read, read)))
    if read != tile_size:
        region = region.resize((tile_size, tile_size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.asarray(region)


def _resized(tile: np.ndarray, image_size: int) -> np.ndarray:
    if tile.shape[0] == image_size:
        return tile
    size = (image_size, image_size)
    return np.asarray(Image.fromarray(tile).resize(size, Image.Resampling.LANCZOS))


def _saturation(rgb: np.ndarray) -> np.ndarray:
    """(H, W) float32 HSV saturation (max - min) / max, 0 for black."""
    rgb = rgb.astype(np.float32)
    high, low = rgb.max(-1), rgb.min(-1)
    return (high - low) / np.maximum(high, 1.0)


def _positive(value) -> float | None:
    """A property as a positive finite number, or None (missing, empty, 0, garbage)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _slide_error(path: Path, err: Exception, what: str) -> SlideError:
    reason = " ".join(str(err).split()) or type(err).__name__
    return SlideError(f"{path}: {what} ({reason})")


def _check_params(tile_size, image_size, tiles_per_patient, min_tissue) -> None:
    for name, value in (
        ("tile_size", tile_size),
        ("image_size", image_size),
        ("tiles_per_patient", tiles_per_patient),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise UserError(f"{name} must be a positive whole number, got {value!r}")
    if not 0 < min_tissue <= 1:
        raise UserError(f"min_tissue must be in (0, 1], got {min_tissue!r}")
