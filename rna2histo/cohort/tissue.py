"""The H&E tile renderer: a patient's tissue programs -> one RGB tile, through a stain model.

Everything is laid out in micrometres. A tile is a TILE_UM = 64 um field of view whatever its
size S in pixels (mpp = 64 / S: 0.5 um/px at 128 px, as a 20x tile), so the biology does not
change with the image size, only its sampling.

Generative model of one tile, given program levels p_k in [0, 1] of the patient:

1. Local levels. q_k = sigmoid(logit p_k + s_k(x, y) + e_k): a smooth random field s_k over the
   tile's slide position (neighbouring tiles look alike) and a tile term e_k ~ N(0, 0.35^2). The
   RNA sees only p_k; this heterogeneity is what it cannot explain.
2. Regions. Area targets f_L = 0.02 + 0.6 q_lumen^2 for lumen / air space (in a share
   0.3 + 0.7 q_lumen of the tiles, none in the others), and
   f_E = (1 - f_L) w_E / (w_E + w_S) with w = 0.05 + q^1.5 for epithelium; stroma is the rest.
   Lumen is where a smooth random field passes its (1 - f_L) quantile, epithelium where a second
   field, raised next to lumen so that it lines glands, passes the quantile that gives f_E.
3. Cells. Tumour nuclei on a jittered hexagonal lattice inside epithelium (nests and glands),
   each a mitotic figure with probability 0.002 + 0.1 q_prolif^2; lymphocytes on an 8 um
   lattice, kept with probability 0.9 q_immune^1.5 x region weight (stroma 1, epithelium 0.2,
   lumen 0.02) x a clustering field; fibroblasts in stroma, aligned with its fibres. Sizes are
   physical: tumour nuclei 10-13.5 um (up to 15% larger and more pleomorphic with q_prolif),
   lymphocytes 6-7.5 um, fibroblasts 12-18 x 2.5-3.5 um.
4. Stains. Each pixel holds amounts c = (c_H, c_E) of hematoxylin and eosin: a background per
   region (wavy collagen in stroma, amphophilic cytoplasm with cell borders in epithelium, almost
   nothing in lumen) plus the nuclei, drawn as stain stamps (`nuclei.py`). Beer-Lambert:
   OD = od0 + a_H c_H h + a_E c_E e and I = 255 exp(-OD), with the patient's stain vectors h, e,
   amounts a_H, a_E and tint od0 (`draw_stain`); then a slight optical blur and sensor noise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import ndimage

from .nuclei import KINDS, draw_nuclei, sizes_um

TILE_UM = 64.0  # field of view of every tile, micrometres
# Ruifrok's H = (0.65, 0.70, 0.29) and E = (0.07, 0.99, 0.11) moved to what a Macenko fit finds on
# TCGA slides (more blue in both), so that the colours match real H&E; unit OD vectors in RGB.
H_VECTOR = np.array([0.55, 0.74, 0.39])
E_VECTOR = np.array([0.10, 0.82, 0.56])
LEVEL_SD = 0.35  # tile-to-tile spread of the logit of each program around the slide field
SLIDE_SD = 0.45  # spread of the smooth field over slide positions
# The smooth random fields of a tile and their correlation lengths in um (`smooth_fields`).
FIELDS = {
    "lumen": 5.0,  # where lumen opens
    "epithelium": 7.0,  # where epithelium grows: nests
    "cluster": 10.0,  # where lymphocytes gather
    "wave": 8.0,  # the waviness of collagen fibres
    "dense": 8.0,  # dense versus loose stroma
    "mottle": 1.5,  # granular cytoplasm
    "secretion": 3.0,  # mucus and debris in lumen
    "thickness": 20.0,  # of the section
}


@dataclass(frozen=True)
class Stain:
    """A patient's staining and scanning: stain vectors, amounts and a neutral tint."""

    h: tuple[float, float, float]  # unit OD vector of hematoxylin (R, G, B)
    e: tuple[float, float, float]  # unit OD vector of eosin
    h_amount: float  # multiplies every hematoxylin amount
    e_amount: float
    od0: float  # OD of glass and mountant, added everywhere

    def record(self) -> dict[str, float]:
        """Flat columns for the patients table."""
        row = {f"stain_{k}": v for k, v in asdict(self).items() if not isinstance(v, tuple)}
        for name in ("h", "e"):
            row.update({f"stain_{name}_{c}": v for c, v in zip("rgb", getattr(self, name))})
        return row


def draw_stain(rng: np.random.Generator) -> Stain:
    """Per-patient stain variation, a nuisance the RNA does not explain."""

    def vector(base):
        v = np.abs(base + rng.normal(0, 0.04, 3))
        return tuple(float(x) for x in v / np.linalg.norm(v))

    h, e = vector(H_VECTOR), vector(E_VECTOR)
    h_amount, e_amount = np.exp(rng.normal(0, 0.15, 2))
    return Stain(h, e, float(h_amount), float(e_amount), float(rng.uniform(0.01, 0.05)))


@dataclass(frozen=True)
class Slide:
    """A patient's slide: smooth offsets s_k(x) = SLIDE_SD sqrt(2/M) sum_m cos(w_m . x + phi_m)."""

    levels: dict[str, float]  # the patient's programs p_k
    waves: np.ndarray  # (K, M, 2) wave vectors, radians per um; wavelengths 0.2-1 mm
    phases: np.ndarray  # (K, M)

    def local(self, x_um: float, y_um: float, rng: np.random.Generator) -> dict[str, float]:
        """q_k = sigmoid(logit p_k + s_k(x, y) + e_k) at one tile position."""
        p = np.clip(np.array(list(self.levels.values())), 1e-4, 1 - 1e-4)
        s = np.cos(self.waves @ np.array([x_um, y_um]) + self.phases).sum(1)
        s *= SLIDE_SD * np.sqrt(2 / self.phases.shape[1])
        logit = np.log(p / (1 - p)) + s + rng.normal(0, LEVEL_SD, len(p))
        return dict(zip(self.levels, 1 / (1 + np.exp(-logit))))


def draw_slide(levels: dict[str, float], rng: np.random.Generator, modes: int = 4) -> Slide:
    """Random waves of 0.2-1 mm per program: distant tiles differ more than neighbours."""
    k = len(levels)
    angle = rng.uniform(0, 2 * np.pi, (k, modes))
    freq = 2 * np.pi / rng.uniform(200, 1000, (k, modes))
    waves = freq[..., None] * np.stack([np.cos(angle), np.sin(angle)], -1)
    return Slide(dict(levels), waves, rng.uniform(0, 2 * np.pi, (k, modes)))


def describe() -> dict:
    """The renderer's fixed numbers, for a cohort's manifest."""
    return {
        "tile_um": TILE_UM,
        "stain": {
            "model": "OD = od0 + a_H c_H h + a_E c_E e, I = 255 exp(-OD)",
            "h_vector": H_VECTOR.tolist(),
            "e_vector": E_VECTOR.tolist(),
            "per_patient": "vectors + N(0, 0.04^2) renormalised; a_H, a_E log-normal, sd 0.15",
        },
        "nuclei_um": sizes_um(),
        "tile_heterogeneity": {"slide_sd": SLIDE_SD, "tile_sd": LEVEL_SD},
    }


@dataclass
class Tile:
    """One rendered tile with its ground truth."""

    image: np.ndarray  # (S, S, 3) uint8
    truth: dict[str, float]  # gt_* columns of the tiles table
    nuclei: pd.DataFrame  # a row per nucleus: kind, x_um, y_um, area_um2, inside (centre in tile)
    labels: np.ndarray | None = None  # (S, S) int32: 1 + row of `nuclei`, 0 elsewhere (if asked)
    regions: np.ndarray | None = None  # (S, S) uint8: 0 stroma, 1 epithelium, 2 lumen (if asked)


def render_tile(
    q: dict[str, float],
    stain: Stain,
    rng: np.random.Generator,
    image_size: int,
    labels: bool = False,
) -> Tile:
    """Paint one tile from local program levels q (see the module docstring).

    `labels` adds the nucleus label map and region map (for segmentation checks); the image and
    every random draw are the same either way.
    """
    mpp = TILE_UM / image_size
    fields = smooth_fields(rng, image_size)
    layout = _layout(q, fields, rng)
    cells = _place_cells(q, layout, fields["cluster"], rng, mpp)
    tumour_cells = np.concatenate([cells["tumour"], cells["mitosis"]])
    conc = _background(layout, fields, tumour_cells, rng, mpp)  # (S, S, 2) hematoxylin, eosin
    conc, nuclei, label_map = draw_nuclei(conc, cells, q, rng, mpp, layout.theta, labels)
    image = _to_rgb(conc, stain, rng, mpp)
    kinds = nuclei["kind"].to_numpy()[nuclei["inside"].to_numpy()]
    truth = {f"gt_{name}": int(np.count_nonzero(kinds == kind)) for kind, name in KINDS.items()}
    truth.update(
        gt_epithelium_fraction=float(layout.epithelium_mask.mean()),
        gt_stroma_fraction=float(layout.stroma_mask.mean()),
        gt_lumen_fraction=float(layout.lumen_mask.mean()),
    )
    if not labels:
        return Tile(image, truth, nuclei)
    regions = np.select([layout.lumen_mask, layout.epithelium_mask], [2, 1], 0).astype(np.uint8)
    return Tile(image, truth, nuclei, label_map, regions)


@dataclass
class _Layout:
    lumen: np.ndarray  # (S, S) soft membership in [0, 1]
    epithelium: np.ndarray  # (S, S) soft, excluding lumen
    theta: float  # direction of the stromal fibres, radians

    @property
    def lumen_mask(self):
        return self.lumen > 0.5

    @property
    def epithelium_mask(self):
        return (self.epithelium > 0.5) & ~self.lumen_mask

    @property
    def stroma_mask(self):
        return ~self.lumen_mask & ~self.epithelium_mask


def smooth_fields(rng: np.random.Generator, size: int) -> dict[str, np.ndarray]:
    """Unit-sd Gaussian random fields (size, size), one per entry of FIELDS, periodic on the tile.

    White noise on a 2 um grid is low-passed in Fourier space by a Gaussian of sd = the field's
    scale, all fields at once, and its spectrum zero-padded to `size`: band-limited
    interpolation, so the fields' look and cost hardly depend on the image size.
    """
    cells, half = int(TILE_UM / 2), int(TILE_UM / 4)
    noise = rng.standard_normal((len(FIELDS), cells, cells))
    f2 = np.fft.fftfreq(cells)[:, None] ** 2 + np.fft.rfftfreq(cells)[None, :] ** 2  # cycles/cell
    sigma = np.array(list(FIELDS.values()))[:, None, None] / 2  # in cells
    spectrum = np.fft.rfft2(noise) * np.exp(-2 * np.pi**2 * sigma**2 * f2)
    padded = np.zeros((len(FIELDS), size, size // 2 + 1), complex)  # Nyquist terms left out
    padded[:, :half, :half] = spectrum[:, :half, :half]
    padded[:, 1 - half :, :half] = spectrum[:, 1 - half :, :half]
    fields = np.fft.irfft2(padded, s=(size, size))
    fields -= fields.mean((1, 2), keepdims=True)
    fields /= fields.std((1, 2), keepdims=True) + 1e-8
    return dict(zip(FIELDS, fields))


def _soft_quantile(field: np.ndarray, fraction: float, width: float = 0.12) -> np.ndarray:
    """Soft mask of the `fraction` of pixels where field is highest; `width` softens the edge."""
    if fraction <= 0:
        return np.zeros_like(field)
    threshold = np.quantile(field, 1 - min(fraction, 1.0))
    return 1 / (1 + np.exp(-(field - threshold) / width))


def _layout(q: dict[str, float], fields: dict, rng: np.random.Generator) -> _Layout:
    """Lumen, epithelium and stroma of one tile with the area targets of step 2."""
    f_lumen = 0.02 + 0.6 * q["lumen"] ** 2 if "lumen" in q else 0.0
    f_lumen *= rng.random() < 0.3 + 0.7 * q.get("lumen", 0)  # many tiles hold no lumen at all
    w_e, w_s = 0.05 + q["epithelial"] ** 1.5, 0.05 + q["stroma"] ** 1.5
    f_epi = (1 - f_lumen) * w_e / (w_e + w_s)
    lumen = _soft_quantile(fields["lumen"], f_lumen)
    # Epithelium lines the lumen (glands) and forms nests; raising the field near lumen does both.
    near = ndimage.gaussian_filter(lumen, 6.0 * lumen.shape[0] / TILE_UM, mode="wrap")
    epi_field = fields["epithelium"] + 2.5 * near * (rng.random() < 0.7)
    epi_field[lumen > 0.5] = -np.inf  # quantile over the non-lumen area only
    epi = _soft_quantile(np.where(np.isinf(epi_field), -10, epi_field), f_epi)
    return _Layout(lumen, epi * (1 - lumen), float(rng.uniform(0, np.pi)))


def _lattice(rng: np.random.Generator, spacing: float, jitter: float, margin=8.0) -> np.ndarray:
    """(n, 2) points (um) of a randomly rotated, shifted, jittered hexagonal lattice on the tile.

    Cells are packed, not scattered: a lattice keeps nuclei from piling up, and the margin lets
    nuclei centred just outside the tile show their edge inside it.
    """
    half = TILE_UM / 2 * np.sqrt(2) + margin
    rows = np.arange(-half, half, spacing * np.sqrt(3) / 2)
    cols = np.arange(-half, half, spacing)
    gx, gy = np.meshgrid(cols, rows)
    gx = gx + (np.arange(len(rows))[:, None] % 2) * spacing / 2
    a = rng.uniform(0, np.pi)
    x = np.cos(a) * gx.ravel() - np.sin(a) * gy.ravel()
    y = np.sin(a) * gx.ravel() + np.cos(a) * gy.ravel()
    pts = np.stack([x, y], 1) + TILE_UM / 2 + rng.uniform(-spacing, spacing, 2)
    pts += rng.normal(0, jitter * spacing, pts.shape)
    keep = np.all((pts > -margin) & (pts < TILE_UM + margin), axis=1)
    return pts[keep]


def _at(mask: np.ndarray, pts: np.ndarray, mpp: float) -> np.ndarray:
    """Values of an (S, S) map at points in um: nearest pixel, clamped (regions extend outwards)."""
    idx = np.clip((pts / mpp).astype(int), 0, mask.shape[0] - 1)
    return mask[idx[:, 1], idx[:, 0]]


def _place_cells(q, layout: _Layout, cluster, rng: np.random.Generator, mpp: float) -> dict:
    """Centres (n, 2) in um of the nuclei of every class; step 3 of the module docstring."""
    tumour = _lattice(rng, rng.uniform(14.5, 17.0), 0.1)  # cells 14.5-17 um apart
    tumour = tumour[_at(layout.epithelium_mask, tumour, mpp)]
    lymph = _lattice(rng, 8.0, 0.12)
    in_epithelium = _at(layout.epithelium_mask, lymph, mpp)
    region = np.where(_at(layout.lumen_mask, lymph, mpp), 0.02, np.where(in_epithelium, 0.2, 1.0))
    # Infiltrates are patchy: a log-normal field with mean 1 gathers lymphocytes into clusters.
    gather = np.exp(0.8 * _at(cluster, lymph, mpp) - 0.32)
    chance = np.clip(0.9 * q["immune"] ** 1.5 * region * gather, 0, 0.95)
    keep = rng.random(len(lymph)) < chance
    lymph = _apart(lymph[keep], tumour, 8.0)
    fibro = _lattice(rng, 11.0, 0.2)
    fibro = fibro[_at(layout.stroma_mask, fibro, mpp) & (rng.random(len(fibro)) < 0.3)]
    fibro = _apart(fibro, lymph, 6.0)
    mitotic = rng.random(len(tumour)) < 0.002 + 0.1 * q["proliferation"] ** 2
    return {
        "tumour": tumour[~mitotic],
        "mitosis": tumour[mitotic],
        "lymphocyte": lymph,
        "fibroblast": fibro,
    }


def _apart(pts: np.ndarray, others: np.ndarray, distance: float) -> np.ndarray:
    """Drop points closer than `distance` um to any of `others` (no stacked nuclei)."""
    if len(pts) == 0 or len(others) == 0:
        return pts
    d2 = ((pts[:, None, :] - others[None, :, :]) ** 2).sum(-1)
    return pts[d2.min(1) >= distance**2]


def _cell_borders(tumour: np.ndarray, size: int, mpp: float) -> np.ndarray:
    """(S, S) 1 on the Voronoi edges between tumour cells (their membranes), else 0."""
    if len(tumour) < 2:
        return np.zeros((size, size))
    pad = int(np.ceil(8 / mpp)) + 1  # cells centred up to 8 um outside the tile count too
    seeds = np.ones((size + 2 * pad,) * 2, dtype=bool)
    idx = np.clip((tumour / mpp).astype(int) + pad, 0, size + 2 * pad - 1)
    seeds[idx[:, 1], idx[:, 0]] = False
    # Each pixel's nearest cell centre, from the distance transform; edges are where it changes.
    _, (iy, ix) = ndimage.distance_transform_edt(seeds, return_indices=True)
    owner = (iy * seeds.shape[1] + ix)[pad:-pad, pad:-pad]
    edge = np.zeros((size, size), dtype=bool)
    edge[:-1] |= owner[:-1] != owner[1:]
    edge[:, :-1] |= owner[:, :-1] != owner[:, 1:]
    return edge.astype(float)


def _collagen(theta: float, wave: np.ndarray, rng: np.random.Generator, mpp: float) -> np.ndarray:
    """(S, S) unit-sd fibre texture: noise smoothed 8 um along the fibres, 0.5 um across, waved.

    Drawn in the fibres' own frame (a 0.5 um x 2 um grid), sampled at the rotated pixel centres.
    """
    span = TILE_UM * np.sqrt(2) + 16  # the rotated tile plus the wave amplitude
    noise = rng.standard_normal((int(span / 0.5), int(span / 2.0)))  # (across, along)
    noise = ndimage.gaussian_filter(noise, (max(1.0, 1.2 * mpp), 4.0), mode="wrap")  # no aliasing
    size = wave.shape[0]
    y, x = (np.mgrid[0:size, 0:size] + 0.5) * mpp - TILE_UM / 2
    across = -np.sin(theta) * x + np.cos(theta) * y + 3.0 * wave
    along = np.cos(theta) * x + np.sin(theta) * y
    coords = np.stack([(across + span / 2) / 0.5, (along + span / 2) / 2.0])
    fibre = ndimage.map_coordinates(noise, coords, order=1, mode="wrap")
    return fibre / (fibre.std() + 1e-8)


def _background(layout: _Layout, fields: dict, tumour, rng: np.random.Generator, mpp: float):
    """(S, S, 2) stain amounts of everything but nuclei: stroma, cytoplasm, lumen."""
    size = layout.lumen.shape[0]
    fine = ndimage.gaussian_filter(rng.standard_normal((size, size)), 0.5 / mpp)
    fine /= fine.std() + 1e-8
    # Collagen bundles: denser where a smooth field is high, with pale clefts between fibres.
    fibre = _collagen(layout.theta, fields["wave"], rng, mpp)
    dense = 1 / (1 + np.exp(-1.5 * fields["dense"] - 0.8))
    strands = 1 / (1 + np.exp(-2.0 * (fibre + 1.2)))  # < 0.5 in the clefts
    stroma = np.stack([0.08 + 0.03 * fine, (0.5 + 0.6 * dense) * strands + 0.05 * fine], -1)
    mottle = fields["mottle"] + 0.8 * fine  # granular cytoplasm
    # A membrane is ~0.5 um wide: a border pixel holds 0.5 / mpp of one.
    border = ndimage.gaussian_filter(_cell_borders(tumour, size, mpp), 0.3 / mpp)
    border *= min(1.0, 0.5 / mpp)
    # Tumour cytoplasm is amphophilic: paler in eosin and bluer than collagen.
    epithelium = np.stack(
        [0.17 + 0.04 * mottle + 0.1 * border, 0.38 + 0.06 * mottle + 0.25 * border], -1
    )
    secretion = np.clip(fields["secretion"] - 1.5, 0, None)
    lumen = np.stack([0.01 + 0.05 * secretion, 0.02 + 0.3 * secretion], -1)
    w_l, w_e = layout.lumen[..., None], layout.epithelium[..., None]
    conc = w_l * lumen + w_e * epithelium + np.clip(1 - w_l - w_e, 0, 1) * stroma
    thickness = 1 + 0.06 * fields["thickness"] + rng.normal(0, 0.04)
    return np.clip(conc, 0, None) * thickness[..., None]


def _to_rgb(conc: np.ndarray, stain: Stain, rng: np.random.Generator, mpp: float) -> np.ndarray:
    """Beer-Lambert, OD = od0 + a_H c_H h + a_E c_E e and I = 255 exp(-OD); blur, sensor noise."""
    conc = ndimage.gaussian_filter(conc, (0.35 / mpp, 0.35 / mpp, 0))  # optics and focus
    h, e = np.multiply(stain.h, stain.h_amount), np.multiply(stain.e, stain.e_amount)
    od = stain.od0 + conc[..., :1] * h + conc[..., 1:] * e  # (S, S, 3)
    rgb = 255 * np.exp(-od) + rng.normal(0, 2.0, od.shape)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
