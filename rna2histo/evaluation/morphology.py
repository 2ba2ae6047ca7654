"""Classical nuclei segmentation and per-tile morphometrics of H&E tiles, real or generated.

Segmentation (`segment_nuclei`), every size in micrometres and converted with `mpp` (um per
pixel; default DEFAULT_MPP = 0.5, the project's 128 px tiles of 64 um, i.e. 20x):

1. Colour deconvolution (`skimage.color.rgb2hed`, Ruifrok's vectors) gives hematoxylin (H) and
   eosin (E) optical densities per pixel; the nucleus score is s = H - 0.5 E, since eosin-rich
   stroma also leaks into the H channel and the difference suppresses it.
2. s is smoothed by a Gaussian of 0.375 um, and thresholded at 0.7 T with T = max(Otsu(s),
   OD_FLOOR): Otsu splits nuclei from the rest when a tile holds nuclei, and the absolute floor
   (0.01 OD) keeps a tile with few or none (lumen, blank glass) from thresholding noise.
3. Holes filled (pale vesicular nuclei with dark rims), an opening of radius 0.75 um cuts thin
   strands of purple cytoplasm, and a component is kept only if its area is >= 4 um^2 and its
   peak score exceeds 1.3 T (hysteresis: faint blobs without a dark core are cytoplasm).
4. Edges are refined on a lightly smoothed score (0.175 um) at 0.8 T, since the 0.375 um blur
   widens every nucleus; holes filled again.
5. Touching nuclei are split by a watershed on the distance transform, from markers at its
   local maxima at least 2.5 um apart (about a lymphocyte's radius).

Calibrated once on the four MoNuSeg images of ../shared (0.25 um/px), not per image: mean pixel
Dice 0.754 (see `validate_segmentation`).

Morphometrics (`morphometrics`), per tile:
- density: nuclei per 100 um^2 of tissue (tile minus lumen); mean area in um^2 (px^2 when
  mpp is None), mean eccentricity;
- h_od, e_od: means of the H and E channels of rgb2hed over the tile;
- lymphocyte_fraction: share of nuclei that are lymphocyte-like: small (12-50 um^2, a
  4-8 um disc), round (eccentricity < 0.75) and dark (mean H above the tile's median nucleus);
- stroma_fraction: non-lumen, non-nucleus pixels where E > H (eosin dominant);
- lumen_fraction: near-white pixels, mean RGB optical density < LUMEN_OD = 0.15 (I > ~220).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage
from skimage.color import rgb2hed
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.measure import regionprops_table
from skimage.segmentation import watershed

from ..errors import where

DEFAULT_MPP = 0.5  # um per pixel assumed when none is given: the project's 20x tiles
OD_FLOOR = 0.01  # lowest threshold of the nucleus score, OD units
LUMEN_OD = 0.15  # mean RGB optical density below which a pixel is background / lumen
LYMPHOCYTE_UM2 = (12.0, 50.0)  # area range of lymphocyte-like nuclei
LYMPHOCYTE_ECC = 0.75  # they are round: eccentricity below this


def _disk(radius_px: float) -> np.ndarray:
    r = max(1, int(round(radius_px)))
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return x**2 + y**2 <= r**2


def _score(hed: np.ndarray) -> np.ndarray:
    """Nucleus score s = H - 0.5 E (OD units), (S, S)."""
    return hed[..., 0] - 0.5 * hed[..., 1]


def _threshold(s: np.ndarray) -> float:
    """Otsu's threshold, but never below OD_FLOOR (flat tiles have a meaningless Otsu)."""
    return max(float(threshold_otsu(s)) if np.ptp(s) > 0 else 0.0, OD_FLOOR)


def _foreground(s: np.ndarray, mpp: float) -> np.ndarray:
    """Binary nuclei mask, steps 2-4 of the module docstring."""
    smooth = ndimage.gaussian_filter(s, 0.375 / mpp)
    t = _threshold(smooth)
    fg = ndimage.binary_fill_holes(smooth > 0.7 * t)
    fg = ndimage.binary_opening(fg, _disk(0.75 / mpp))
    lab, n = ndimage.label(fg)
    if n == 0:
        return fg
    peak = ndimage.maximum(smooth, lab, np.arange(1, n + 1))
    area = np.bincount(lab.ravel(), minlength=n + 1)[1:] * mpp**2
    keep = np.r_[False, (peak > 1.3 * t) & (area >= 4.0)]
    fg = keep[lab] & (ndimage.gaussian_filter(s, 0.175 / mpp) > 0.8 * t)
    return ndimage.binary_opening(ndimage.binary_fill_holes(fg), _disk(1))


def _split(fg: np.ndarray, mpp: float) -> np.ndarray:
    """Watershed of -distance from markers >= 2.5 um apart: touching nuclei become separate."""
    dist = ndimage.distance_transform_edt(fg)
    comps, _ = ndimage.label(fg)
    peaks = peak_local_max(dist, min_distance=max(1, int(2.5 / mpp)), labels=comps)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(-dist, markers, mask=fg)
    # A component whose maxima were all suppressed keeps a label of its own.
    orphan = fg & (labels == 0)
    extra, _ = ndimage.label(orphan)
    labels[orphan] = extra[orphan] + labels.max()
    return labels.astype(np.int32)


def segment_nuclei(rgb: np.ndarray, mpp: float | None = None, hed=None) -> np.ndarray:
    """(S, S) int32 label image of nuclei, 0 background, from an (S, S, 3) uint8 H&E image."""
    mpp = DEFAULT_MPP if mpp is None else float(mpp)
    hed = rgb2hed(rgb) if hed is None else hed
    return _split(_foreground(_score(hed), mpp), mpp)


def morphometrics(rgb: np.ndarray, mpp: float | None = None) -> dict[str, float]:
    """Per-tile nuclear and tissue measurements (see the module docstring for units)."""
    scale = DEFAULT_MPP if mpp is None else float(mpp)
    hed = rgb2hed(rgb)
    labels = segment_nuclei(rgb, scale, hed)
    od = -np.log(np.maximum(rgb, 1) / 255.0).mean(-1)  # (S, S) mean RGB optical density
    lumen = od < LUMEN_OD
    stroma = ~lumen & (labels == 0) & (hed[..., 1] > hed[..., 0])
    tissue_um2 = (~lumen).sum() * scale**2
    props = regionprops_table(
        labels, hed[..., 0], properties=("area", "eccentricity", "intensity_mean")
    )
    area_um2 = props["area"] * scale**2
    unit = scale**2 if mpp is not None else 1.0  # report px^2 when the scale is unknown
    n = len(area_um2)
    return {
        "nuclei": n,
        "density_per_100um2": 100 * n / tissue_um2 if tissue_um2 > 0 else 0.0,
        "mean_area": float(props["area"].mean() * unit) if n else 0.0,
        "mean_eccentricity": float(props["eccentricity"].mean()) if n else 0.0,
        "h_od": float(hed[..., 0].mean()),
        "e_od": float(hed[..., 1].mean()),
        "lymphocyte_fraction": _lymphocyte_fraction(area_um2, props),
        "stroma_fraction": float(stroma.mean()),
        "lumen_fraction": float(lumen.mean()),
    }


def _lymphocyte_fraction(area_um2: np.ndarray, props: dict) -> float:
    """Share of nuclei that are small, round and darker than the tile's median nucleus."""
    if len(area_um2) == 0:
        return 0.0
    dark = props["intensity_mean"] > np.median(props["intensity_mean"])
    small = (area_um2 >= LYMPHOCYTE_UM2[0]) & (area_um2 <= LYMPHOCYTE_UM2[1])
    return float(np.mean(small & (props["eccentricity"] < LYMPHOCYTE_ECC) & dark))


def morphometrics_table(tiles: np.ndarray, mpp: float | None = None) -> pd.DataFrame:
    """One row of `morphometrics` per tile of an (N, S, S, 3) uint8 array."""
    return pd.DataFrame([morphometrics(tile, mpp) for tile in tiles])


def _pairs(images_dir: Path, masks_dir: Path) -> list[tuple[Path, Path]]:
    """(image, mask) paths paired by file stem; UserError when any is unpaired."""
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise where(folder, "not a folder")
    images = {p.stem: p for p in sorted(images_dir.iterdir()) if p.is_file()}
    masks = {p.stem: p for p in sorted(masks_dir.iterdir()) if p.is_file()}
    if not images:
        raise where(images_dir, "no images")
    for folder, extra in ((images_dir, images.keys() - masks), (masks_dir, masks.keys() - images)):
        if extra:
            raise where(folder, f"no partner for {', '.join(sorted(extra))}")
    return [(images[k], masks[k]) for k in sorted(images)]


def validate_segmentation(images_dir, masks_dir, mpp: float = 0.25) -> pd.DataFrame:
    """Per image: pixel Dice of predicted vs true nuclei, nuclei counts and relative count error.

    True count = connected components of the binary mask (touching nuclei merge, so it is a
    lower bound); `df.attrs["summary"]` holds the means.
    """
    rows = []
    for image_path, mask_path in _pairs(Path(images_dir), Path(masks_dir)):
        rgb = np.asarray(Image.open(image_path).convert("RGB"))
        truth = np.asarray(Image.open(mask_path).convert("L")) > 0
        if truth.shape != rgb.shape[:2]:
            raise where(mask_path, f"shape {truth.shape} differs from its image {rgb.shape[:2]}")
        labels = segment_nuclei(rgb, mpp)
        pred = labels > 0
        n_true, n_pred = ndimage.label(truth)[1], int(labels.max())
        rows.append({
            "image": image_path.stem,
            "dice": 2 * (pred & truth).sum() / max(pred.sum() + truth.sum(), 1),
            "true_count": n_true,
            "pred_count": n_pred,
            "count_error": (n_pred - n_true) / max(n_true, 1),
        })
    table = pd.DataFrame(rows)
    table.attrs["summary"] = {
        "mean_dice": float(table["dice"].mean()),
        "mean_abs_count_error": float(table["count_error"].abs().mean()),
    }
    return table
